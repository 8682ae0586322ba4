//! Benchmark of the restore's detection lag: how long after each simulated etcd state change the
//! tool's next call to that node comes.
//!
//! The demo's simulated cluster (three control planes, two workers; reset → `Preparing` 3 s,
//! bootstrap → `Running`/`OK` 2.5 s, the others join 2 s later) loses etcd on every control
//! plane, and `talos-dr --yes restore` runs against it with production poll timing. The
//! simulator records when each state change was due (`Cluster::etcd_log`) and when each talosctl
//! call started (`<state>.calls.jsonl`); the lag of a change the restore waits for (`Preparing`,
//! `Running`/`OK`) is the start of the first later call that names that node.
//!
//! Target (issue 16): every such change acted on within 1 s. Prints the lag per change, the
//! worst, and the restore's wall time for each of `ROUNDS` runs. Before issue 16 (backon, 0.1 s
//! doubling up to 5 s): worst 2.7 s, median restore 10.9 s; after: worst 0.72 s, 8.7 s (debug
//! build).
//! Run with `cargo bench --bench restore_lag` (add `--profile dev` to skip the release build).

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use talos_dr::sim::state::{Cluster, calls_path};

const BIN: &str = env!("CARGO_BIN_EXE_talos-dr");
const ROUNDS: usize = 3;
const TARGET: Duration = Duration::from_secs(1);

struct Lag {
    node: String,
    state: String,
    lag_ms: i64,
}

fn talos_dr(env: &talos_dr::sim::demo::DemoEnv, home: &Path, args: &[&str]) -> Duration {
    let t0 = Instant::now();
    let out = Command::new(BIN)
        .args(args)
        .env(
            "PATH",
            format!(
                "{}:{}",
                env.bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("TALOS_DR_SIM_STATE", &env.state)
        .env("TALOS_DR_CONFIG_DIR", &env.config_dir)
        .env("HOME", home)
        .env("NO_COLOR", "1")
        .env_remove("TALOS_DR_PROFILE")
        .env_remove("TALOS_DR_HOME")
        .env_remove("TALOS_DR_TALOSCTL")
        .env_remove("TALOSCONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("talos-dr runs");
    assert!(
        out.status.success(),
        "talos-dr {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t0.elapsed()
}

/// The newest snapshot file in the profile's backup directory.
fn newest_backup(config_dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(config_dir.join("etcd-backups"))
        .expect("backup dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "snapshot"))
        .collect();
    files.sort();
    files.pop().expect("a backup")
}

/// `(start ms, node)` of every talosctl call since `from_ms`.
fn calls_since(state: &Path, from_ms: i64) -> Vec<(i64, Vec<String>)> {
    std::fs::read_to_string(calls_path(state))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let at = v["at_ms"].as_i64()?;
            let argv: Vec<String> = v["argv"]
                .as_array()?
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            // The nodes a call names (`-n A,B`, `-e A`).
            let mut nodes = Vec::new();
            for w in argv.windows(2) {
                if matches!(w[0].as_str(), "-n" | "--nodes" | "-e" | "--endpoints") {
                    nodes.extend(w[1].split(',').map(str::to_owned));
                }
            }
            (at >= from_ms).then_some((at, nodes))
        })
        .collect()
}

fn run_once() -> (Duration, Vec<Lag>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let env = talos_dr::sim::demo::setup(tmp.path(), Path::new(BIN), true, &[]).expect("setup");
    talos_dr(&env, tmp.path(), &["snapshot"]);
    let snapshot = newest_backup(&env.config_dir);
    talos_dr_sim_disaster(&env.state);
    let from_ms = jiff::Timestamp::now().as_millisecond();
    let snap = snapshot.display().to_string();
    let elapsed = talos_dr(&env, tmp.path(), &["--yes", "restore", "--snapshot", &snap]);
    let cluster = Cluster::load(&env.state).expect("state");
    assert!(
        cluster.etcd_violations.is_empty(),
        "{:?}",
        cluster.etcd_violations
    );
    assert_eq!(cluster.bootstrapped.len(), 1, "exactly one bootstrap");
    let calls = calls_since(&env.state, from_ms);
    let lags = cluster
        .etcd_log
        .iter()
        .filter(|c| c.at_ms >= from_ms)
        .filter(|c| c.state == "Preparing" || (c.state == "Running" && c.health == "OK"))
        .map(|c| {
            let next = calls
                .iter()
                .find(|(at, nodes)| *at >= c.at_ms && nodes.contains(&c.node))
                .map(|(at, _)| *at);
            Lag {
                node: c.node.clone(),
                state: format!("{} {}", c.state, c.health),
                // Never followed up: counts as the rest of the run.
                lag_ms: next.unwrap_or(from_ms + i64::try_from(elapsed.as_millis()).unwrap_or(0))
                    - c.at_ms,
            }
        })
        .collect();
    (elapsed, lags)
}

fn talos_dr_sim_disaster(state: &Path) {
    talos_dr::sim::demo::disaster(state).expect("disaster");
}

fn main() {
    println!(
        "restore lag: 3 control planes, simulated reset 3 s, bootstrap 2.5 s, join 2 s; production poll timing"
    );
    let mut worst = 0i64;
    let mut times = Vec::new();
    for round in 1..=ROUNDS {
        let (elapsed, lags) = run_once();
        let max = lags.iter().map(|l| l.lag_ms).max().unwrap_or(0);
        let text: Vec<String> = lags
            .iter()
            .map(|l| format!("{} {} +{} ms", l.node, l.state, l.lag_ms))
            .collect();
        println!(
            "  run {round}: restore {:.2} s; worst lag {max} ms; {}",
            elapsed.as_secs_f64(),
            text.join(", ")
        );
        worst = worst.max(max);
        times.push(elapsed);
    }
    times.sort();
    let ok = worst <= i64::try_from(TARGET.as_millis()).unwrap_or(0);
    println!(
        "worst lag {worst} ms vs {} ms: {}; median restore {:.2} s",
        TARGET.as_millis(),
        if ok { "OK" } else { "OVER" },
        times[times.len() / 2].as_secs_f64()
    );
    if !ok {
        std::process::exit(1);
    }
}
