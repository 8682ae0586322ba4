//! The only place that writes to stdout and stderr (uv's printer split).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::cli::OutputFormat;

/// Writes command results to stdout: text, or one JSON document with `-o json`. A capturing
/// printer keeps them instead, for a fleet run to print one profile's output at a time.
#[derive(Debug, Clone)]
pub struct Printer {
    pub format: OutputFormat,
    capture: Option<Arc<Mutex<Captured>>>,
}

/// What a capturing printer kept.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    pub text: String,
    pub json: Option<serde_json::Value>,
}

impl Printer {
    pub fn new(format: OutputFormat) -> Self {
        Self {
            format,
            capture: None,
        }
    }

    pub fn capturing(format: OutputFormat) -> Self {
        Self {
            format,
            capture: Some(Arc::default()),
        }
    }

    /// What was captured so far (empty for a printer that writes to stdout).
    pub fn captured(&self) -> Captured {
        self.capture
            .as_ref()
            .map(|c| c.lock().map(|c| c.clone()).unwrap_or_default())
            .unwrap_or_default()
    }

    pub fn is_json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Text for the user; ignored in JSON mode.
    pub fn text(&self, text: &str) {
        if !self.is_json() {
            match &self.capture {
                Some(c) => {
                    if let Ok(mut c) = c.lock() {
                        c.text.push_str(text);
                    }
                }
                None => write_stdout(text.as_bytes()),
            }
        }
    }

    /// The JSON document (with `"schema": 1` first); ignored in text mode.
    pub fn json(&self, value: &serde_json::Value) {
        if let (true, Some(c)) = (self.is_json(), &self.capture) {
            if let Ok(mut c) = c.lock() {
                c.json = Some(value.clone());
            }
            return;
        }
        if self.is_json() {
            let mut doc = serde_json::Map::new();
            doc.insert("schema".into(), 1.into());
            if let serde_json::Value::Object(map) = value {
                doc.extend(map.clone());
            }
            let mut text =
                serde_json::to_string_pretty(&serde_json::Value::Object(doc)).unwrap_or_default();
            text.push('\n');
            write_stdout(text.as_bytes());
        }
    }
}

/// A closed pipe (`talos-dr list | head`) is not an error worth a message.
fn write_stdout(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write to stdout: {e}");
    }
}

pub fn eprint_line(line: &str) {
    eprintln!("{line}");
}
