//! Verifies snapshot files and prints each JSON report on stdout; exits 1 if any is invalid.
//!
//! Stand-in for `talos-dr verify FILE` until the CLI lands, so `benches/verify.sh` can run:
//! `VERIFY_CMD="target/release/examples/verify_file" benches/verify.sh`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::process::ExitCode;

use talos_dr::snapshot::verify::verify_file;

fn main() -> ExitCode {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        eprintln!("usage: verify_file SNAPSHOT...");
        return ExitCode::from(2);
    }
    let mut all_valid = true;
    for p in &paths {
        match verify_file(Path::new(p)) {
            Ok(report) => {
                all_valid &= report.valid;
                match serde_json::to_string_pretty(&report) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("{p}: cannot render report: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            Err(e) => {
                eprintln!("{p}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
