//! Terminal implementations of the library's `Reporter` and `Prompter`.
//!
//! On a TTY, waits are indicatif spinners; otherwise every event is one timestamped line (cron
//! logs stay readable), or one JSON line with `-o json`. All of it goes to stderr.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use talos_dr::ui::{Event, Prompter, Reporter};

use crate::printer::eprint_line;

pub enum Mode {
    Tty,
    Plain,
    Json,
}

pub struct TermReporter {
    mode: Mode,
    quiet: bool,
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    /// Last progress message per key: plain logs print a line only when it changes.
    last: Mutex<HashMap<String, String>>,
}

impl TermReporter {
    pub fn new(mode: Mode, quiet: bool) -> Self {
        Self {
            mode,
            quiet,
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
            last: Mutex::new(HashMap::new()),
        }
    }

    pub fn detect(json: bool, quiet: bool) -> Self {
        let mode = if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Tty
        } else {
            Mode::Plain
        };
        Self::new(mode, quiet)
    }

    fn line(&self, text: &str) {
        match self.mode {
            Mode::Tty => {
                let _ = self.multi.println(text);
            }
            _ => eprint_line(&format!(
                "{} {text}",
                jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ")
            )),
        }
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", Duration::from_millis(ms).as_secs_f64())
}

impl Reporter for TermReporter {
    fn report(&self, event: Event) {
        if let Mode::Json = self.mode {
            if let Ok(text) = serde_json::to_string(&event) {
                eprint_line(&text);
            }
            return;
        }
        let important = matches!(event, Event::Warning { .. });
        if self.quiet && !important {
            return;
        }
        match event {
            Event::StageStarted { stage, title } => self.line(&format!("▶ {stage}: {title}")),
            Event::StageFinished {
                stage,
                status,
                elapsed_ms,
                message,
            } => self.line(&format!(
                "{} {stage} {status} in {}{}",
                if status == "succeeded" || status == "skipped" {
                    "✓"
                } else {
                    "✗"
                },
                secs(elapsed_ms),
                message.map(|m| format!(": {m}")).unwrap_or_default()
            )),
            Event::WaitStarted { key, message } => match self.mode {
                Mode::Tty => {
                    let bar = self.multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_message(message);
                    bar.enable_steady_tick(Duration::from_millis(120));
                    self.bars.lock().expect("bars").insert(key, bar);
                }
                _ => self.line(&format!("… {message}")),
            },
            Event::WaitProgress {
                key,
                message,
                elapsed_ms,
            } => match self.mode {
                Mode::Tty => {
                    if let Some(bar) = self.bars.lock().expect("bars").get(&key) {
                        bar.set_message(message);
                    }
                }
                // Plain logs: one line per change is enough.
                _ => {
                    let changed = self
                        .last
                        .lock()
                        .expect("last")
                        .insert(key, message.clone())
                        .is_none_or(|old| old != message);
                    if changed {
                        self.line(&format!("… {message} ({})", secs(elapsed_ms)));
                    }
                }
            },
            Event::Progress {
                key,
                message,
                done,
                total,
            } => {
                // Plain logs get the summary line at WaitFinished instead of a stream of numbers.
                if let Mode::Tty = self.mode
                    && let Some(bar) = self.bars.lock().expect("bars").get(&key)
                {
                    if bar.length() != total {
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                        match total {
                            Some(t) => bar.set_length(t),
                            None => bar.unset_length(),
                        }
                    }
                    bar.set_message(message);
                    bar.set_position(done);
                }
            }
            Event::WaitFinished {
                key,
                ok,
                message,
                elapsed_ms,
            } => {
                let text = format!(
                    "{} {message} ({})",
                    if ok { "✓" } else { "✗" },
                    secs(elapsed_ms)
                );
                let bar = self.bars.lock().expect("bars").remove(&key);
                match bar {
                    Some(bar) => {
                        bar.finish_and_clear();
                        self.line(&text);
                    }
                    None => self.line(&text),
                }
            }
            Event::Retry {
                what,
                error,
                delay_ms,
            } => self.line(&format!(
                "↻ {what}: {error}; retrying in {}",
                secs(delay_ms)
            )),
            Event::Info { message } => self.line(&message),
            Event::Warning { message } => self.line(&format!("warning: {message}")),
        }
    }
}

/// Confirmations on a terminal, with dialoguer.
pub struct TermPrompter;

impl TermPrompter {
    /// Whether a person can be asked at all.
    pub fn available() -> bool {
        std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
    }
}

impl Prompter for TermPrompter {
    fn confirm(&self, question: &str) -> std::io::Result<Option<bool>> {
        dialoguer::Confirm::new()
            .with_prompt(question)
            .default(false)
            .interact()
            .map(Some)
            .map_err(std::io::Error::other)
    }

    fn confirm_typed(&self, question: &str, expected: &str) -> std::io::Result<Option<bool>> {
        let answer: String = dialoguer::Input::new()
            .with_prompt(format!("{question}\nType {expected:?} to continue"))
            .allow_empty(true)
            .interact_text()
            .map_err(std::io::Error::other)?;
        Ok(Some(answer.trim() == expected))
    }
}
