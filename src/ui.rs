//! Progress events and confirmations, as traits the library calls and the binary renders.
//!
//! The library never prints: it emits [`Event`]s to a [`Reporter`] and asks a [`Prompter`] before
//! destructive steps. The binary renders events with indicatif on a TTY, as plain lines otherwise,
//! or as JSON lines with `-o json` (uv's printer/reporter split).

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// One thing worth telling the user about, while it happens.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    StageStarted {
        stage: String,
        title: String,
    },
    StageFinished {
        stage: String,
        status: String,
        elapsed_ms: u64,
        message: Option<String>,
    },
    /// A long wait begins (a spinner keyed by `key`, e.g. a node address or a VMID).
    WaitStarted {
        key: String,
        message: String,
    },
    WaitProgress {
        key: String,
        message: String,
        elapsed_ms: u64,
    },
    WaitFinished {
        key: String,
        ok: bool,
        message: String,
        elapsed_ms: u64,
    },
    /// Bytes moved so far by a transfer started with `WaitStarted` under the same key
    /// (an upload or a download): a bar with bytes and speed on a TTY.
    Progress {
        key: String,
        message: String,
        done: u64,
        total: Option<u64>,
    },
    Retry {
        what: String,
        error: String,
        delay_ms: u64,
    },
    Info {
        message: String,
    },
    Warning {
        message: String,
    },
}

pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Receives progress events. Implementations must be cheap and never fail.
pub trait Reporter: Send + Sync {
    fn report(&self, event: Event);

    fn info(&self, message: &str) {
        self.report(Event::Info {
            message: message.to_owned(),
        });
    }
    fn warn(&self, message: &str) {
        self.report(Event::Warning {
            message: message.to_owned(),
        });
    }
}

/// Drops every event.
pub struct NoopReporter;

impl Reporter for NoopReporter {
    fn report(&self, _event: Event) {}
}

/// Keeps every event, for tests.
#[derive(Default)]
pub struct RecordingReporter {
    events: Mutex<Vec<Event>>,
}

impl RecordingReporter {
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("reporter lock").clone()
    }
}

impl Reporter for RecordingReporter {
    fn report(&self, event: Event) {
        self.events.lock().expect("reporter lock").push(event);
    }
}

/// Asks the user before destructive steps.
///
/// Each method returns `Ok(None)` when nobody can be asked (no TTY, `--non-interactive`, JSON
/// output); the caller then stops with exit code 5 and a hint to pass `--yes`.
pub trait Prompter: Send + Sync {
    /// A yes/no question.
    fn confirm(&self, question: &str) -> std::io::Result<Option<bool>>;
    /// The user must type `expected` exactly (for steps that discard data).
    fn confirm_typed(&self, question: &str, expected: &str) -> std::io::Result<Option<bool>>;
}

/// Answers yes to everything (`--yes`).
pub struct AssumeYes;

impl Prompter for AssumeYes {
    fn confirm(&self, _q: &str) -> std::io::Result<Option<bool>> {
        Ok(Some(true))
    }
    fn confirm_typed(&self, _q: &str, _e: &str) -> std::io::Result<Option<bool>> {
        Ok(Some(true))
    }
}

/// Nobody to ask (no TTY, `--non-interactive`).
pub struct NoPrompt;

impl Prompter for NoPrompt {
    fn confirm(&self, _q: &str) -> std::io::Result<Option<bool>> {
        Ok(None)
    }
    fn confirm_typed(&self, _q: &str, _e: &str) -> std::io::Result<Option<bool>> {
        Ok(None)
    }
}
