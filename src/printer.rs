//! The only place that writes to stdout and stderr (uv's printer split).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;

use crate::cli::OutputFormat;

/// Writes command results to stdout: text, or one JSON document with `-o json`.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: OutputFormat,
}

impl Printer {
    pub fn is_json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Text for the user; ignored in JSON mode.
    pub fn text(&self, text: &str) {
        if !self.is_json() {
            write_stdout(text.as_bytes());
        }
    }

    /// The JSON document (with `"schema": 1` first); ignored in text mode.
    pub fn json(&self, value: &serde_json::Value) {
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
