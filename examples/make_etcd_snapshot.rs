//! Makes a real etcd snapshot with the project's own maker (the same code the verify tests run)
//! and prints `etcdctl snapshot status -w json` on stdout.
//!
//! ```sh
//! cargo run --example make_etcd_snapshot -- OUTPUT [--keys N] [--value-bytes B] [--fixed-size]
//!     [--updates F] [--deletes F] [--compact] [--defrag] [--no-leases] [--seed S]
//!     [--status-json PATH]
//! ```
//!
//! Used to remake `fixtures/snapshots/` and by `benches/verify.sh` / `benches/offsite.sh`. Needs
//! Debian's `etcd-server` and `etcd-client` (`scripts/test` installs them).

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../tests/it/etcd_maker.rs"]
mod etcd_maker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("make_etcd_snapshot: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        anyhow::bail!(
            "usage: make_etcd_snapshot OUTPUT [--keys N] [--value-bytes B] [--fixed-size] \
             [--updates F] [--deletes F] [--compact] [--defrag] [--no-leases] [--seed S] \
             [--status-json PATH]"
        );
    }
    let out = PathBuf::from(args.remove(0));
    let mut status_json = None;
    if let Some(i) = args.iter().position(|a| a == "--status-json") {
        let path = args
            .get(i + 1)
            .ok_or_else(|| anyhow::anyhow!("--status-json needs a path"))?;
        status_json = Some(PathBuf::from(path));
        args.drain(i..=i + 1);
    }
    let recipe = etcd_maker::Recipe::from_args(&args)?;
    let t0 = Instant::now();
    let made = etcd_maker::make_snapshot(&out, &recipe)?;
    let status = etcd_maker::etcdctl_status_json(&out)?;
    if let Some(p) = status_json {
        std::fs::write(&p, format!("{status}\n"))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
    }
    eprintln!(
        "make_etcd_snapshot: {} ({} bytes) from etcd {}: {} keys put, {} updated, {} deleted, \
         {} live, revision {}, in {:.1} s",
        out.display(),
        std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0),
        made.etcd_version,
        made.put,
        made.updated,
        made.deleted,
        made.live,
        made.revision,
        t0.elapsed().as_secs_f64()
    );
    println!("{status}");
    Ok(())
}
