//! Exit codes and the user-facing error type.
//!
//! Library modules have their own error enums; anything that should end the program with a
//! specific exit code or carry a hint for the user is wrapped in [`UserError`]. The binary walks the
//! error chain for the first `UserError` to pick the exit code (ripgrep/uv style).

use std::fmt;

/// Process exit codes, as documented in the README and `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    Success,
    /// The operation failed (a stage failed; its checkpoint is saved).
    Failed,
    /// Usage or configuration error.
    Usage,
    /// A snapshot file is invalid.
    InvalidSnapshot,
    /// A precondition is not met (unhealthy cluster, VM locked, lock held).
    Precondition,
    /// Stopped at a confirmation that was declined or needs a TTY / `--yes`.
    Declined,
    /// Interrupted (Ctrl-C); the checkpoint is saved.
    Interrupted,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::InvalidSnapshot => 3,
            Exit::Precondition => 4,
            Exit::Declined => 5,
            Exit::Interrupted => 130,
        }
    }
}

/// An error with an exit code and optional hints ("what to do next").
#[derive(Debug)]
pub struct UserError {
    pub exit: Exit,
    pub message: String,
    pub hints: Vec<String>,
}

impl UserError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            hints: Vec::new(),
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(Exit::Precondition, message)
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Exit::Failed, message)
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

/// Finds the exit code and hints for an error chain: the outermost [`UserError`] decides the
/// code; hints are collected from every level, innermost (most specific) first.
pub fn classify(err: &anyhow::Error) -> (Exit, Vec<String>) {
    let mut exit = None;
    let mut hints: Vec<String> = Vec::new();
    // `downcast_ref` on the anyhow error also sees a UserError attached with `.context(…)`,
    // which the chain's items do not expose.
    let top = err.downcast_ref::<UserError>();
    for u in top
        .into_iter()
        .chain(err.chain().filter_map(|c| c.downcast_ref::<UserError>()))
    {
        exit.get_or_insert(u.exit);
        for h in u.hints.iter().rev() {
            if !hints.contains(h) {
                hints.insert(0, h.clone());
            }
        }
    }
    (exit.unwrap_or(Exit::Failed), hints)
}
