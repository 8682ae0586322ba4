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

/// Prefixes every event with a label (`[prod] …`) and keys waits by it, so that the events of
/// several profiles running at once stay apart.
pub struct Prefixed {
    pub inner: std::sync::Arc<dyn Reporter>,
    pub label: String,
}

impl Reporter for Prefixed {
    fn report(&self, event: Event) {
        let p = |s: String| format!("[{}] {s}", self.label);
        self.inner.report(match event {
            Event::StageStarted { stage, title } => Event::StageStarted {
                stage,
                title: p(title),
            },
            Event::StageFinished {
                stage,
                status,
                elapsed_ms,
                message,
            } => Event::StageFinished {
                stage: p(stage),
                status,
                elapsed_ms,
                message,
            },
            Event::WaitStarted { key, message } => Event::WaitStarted {
                key: p(key),
                message: p(message),
            },
            Event::WaitProgress {
                key,
                message,
                elapsed_ms,
            } => Event::WaitProgress {
                key: p(key),
                message: p(message),
                elapsed_ms,
            },
            Event::WaitFinished {
                key,
                ok,
                message,
                elapsed_ms,
            } => Event::WaitFinished {
                key: p(key),
                ok,
                message: p(message),
                elapsed_ms,
            },
            Event::Progress {
                key,
                message,
                done,
                total,
            } => Event::Progress {
                key: p(key),
                message: p(message),
                done,
                total,
            },
            Event::Retry {
                what,
                error,
                delay_ms,
            } => Event::Retry {
                what: p(what),
                error,
                delay_ms,
            },
            Event::Info { message } => Event::Info {
                message: p(message),
            },
            Event::Warning { message } => Event::Warning {
                message: p(message),
            },
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_labels_messages_and_keys() {
        let rec = std::sync::Arc::new(RecordingReporter::default());
        let p = Prefixed {
            inner: rec.clone(),
            label: "prod".into(),
        };
        p.warn("disk full");
        p.report(Event::WaitStarted {
            key: "10.0.0.1".into(),
            message: "waiting".into(),
        });
        assert_eq!(
            rec.events(),
            vec![
                Event::Warning {
                    message: "[prod] disk full".into()
                },
                Event::WaitStarted {
                    key: "[prod] 10.0.0.1".into(),
                    message: "[prod] waiting".into()
                }
            ]
        );
    }
}
