//! Benchmark of `talos-dr snapshot` against the raw `talosctl etcd snapshot` it wraps, on the
//! same ~200 MB real etcd snapshot (64k keys of 2 KiB, made once by the project's own maker,
//! `examples/make_etcd_snapshot.rs`, which needs etcd) served by the simulated talosctl as a
//! paced stream (`timing.snapshot_bytes_per_s`, default 100 MB/s, about a 1 Gbit/s link).
//!
//! Interleaved per round, in one run:
//!
//! * raw: `talosctl -n NODE etcd snapshot PATH` (the simulator's talosctl directly: stream into
//!   `PATH.part`, rename, then its own `snapshot info` pass, like the real one);
//! * talos-dr: `talos-dr snapshot` on the simulated cluster (health gate, stream, verify,
//!   sidecar, machine configs), release build.
//!
//! Prints the median of each, the ratio and the overhead in ms, against the issue-16 target
//! (≤ 10 % + 100 ms; goal ≤ 5 % + 50 ms). `cargo bench --bench snapshot`; environment:
//! `BENCH_SNAPSHOT` (an existing snapshot to use), `BENCH_RATE_MB_S` (0: unpaced),
//! `BENCH_ROUNDS` (default 9), `BENCH_PROFILE_APPEND` (TOML appended to the profile, e.g.
//! `[backup]` packing and an `[offsite]` target such as a local moto server, to time the
//! packing and upload too), `BENCH_BIN` (another talos-dr binary to time, e.g. an older build).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use talos_dr::sim::state::{Cluster, Timing};

const BIN: &str = env!("CARGO_BIN_EXE_talos-dr");
const NODE: &str = "10.5.0.11";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The snapshot to serve: `$BENCH_SNAPSHOT`, or one made once under the target directory.
fn big_snapshot() -> PathBuf {
    if let Ok(p) = std::env::var("BENCH_SNAPSHOT") {
        return PathBuf::from(p);
    }
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-200mb.snapshot");
    if !path.exists() {
        eprintln!("making {} (~200 MB) with a real etcd...", path.display());
        let ok = Command::new(env!("CARGO"))
            .args([
                "run",
                "--release",
                "--quiet",
                "--example",
                "make_etcd_snapshot",
                "--",
            ])
            .arg(&path)
            .args(["--keys", "64000", "--value-bytes", "2048"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run the snapshot maker")
            .success();
        assert!(ok, "the snapshot maker failed (it needs etcd)");
    }
    path
}

struct Bench {
    dir: tempfile::TempDir,
    env: talos_dr::sim::demo::DemoEnv,
}

fn setup(snapshot: &Path, bytes_per_s: u64) -> Bench {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = talos_dr::sim::demo::setup(&dir.path().join("sim"), Path::new(BIN), true, &[])
        .expect("demo setup");
    let mut cluster = Cluster::load(&env.state).expect("state");
    cluster.timing = Timing {
        snapshot_bytes_per_s: bytes_per_s,
        ..Timing::default()
    };
    cluster.snapshot_source = Some(snapshot.to_path_buf());
    for n in &mut cluster.nodes {
        n.etcd.data = None;
    }
    cluster.save(&env.state).expect("save state");
    if let Ok(extra) = std::env::var("BENCH_PROFILE_APPEND") {
        let profile = env.config_dir.join("profile.toml");
        let mut text = std::fs::read_to_string(&profile).expect("profile");
        text.push('\n');
        text.push_str(&extra);
        std::fs::write(&profile, text).expect("profile");
    }
    Bench { dir, env }
}

impl Bench {
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env(
            "PATH",
            format!(
                "{}:{}",
                self.env.bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("TALOS_DR_SIM_STATE", &self.env.state)
        .env("TALOS_DR_CONFIG_DIR", &self.env.config_dir)
        .env("NO_COLOR", "1")
        .env_remove("TALOS_DR_PROFILE")
        .env_remove("TALOS_DR_HOME")
        .env_remove("TALOS_DR_TALOSCTL")
        .env_remove("TALOSCONFIG");
        c
    }

    fn raw(&self) -> Duration {
        let out = self.dir.path().join("raw.snapshot");
        let _ = std::fs::remove_file(&out);
        let talosconfig = self.env.config_dir.join("talosconfig");
        let t = Instant::now();
        let o = self
            .command(&self.env.bin_dir.join("talosctl"))
            .arg("--talosconfig")
            .arg(&talosconfig)
            .args(["-n", NODE, "etcd", "snapshot"])
            .arg(&out)
            .output()
            .expect("run talosctl");
        let elapsed = t.elapsed();
        assert!(
            o.status.success(),
            "talosctl failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::remove_file(&out).expect("raw snapshot written");
        elapsed
    }

    fn talos_dr(&self) -> Duration {
        let backups = self.env.config_dir.join("etcd-backups");
        let _ = std::fs::remove_dir_all(&backups);
        let bin = std::env::var_os("BENCH_BIN").map_or_else(|| PathBuf::from(BIN), PathBuf::from);
        let t = Instant::now();
        let o = self
            .command(&bin)
            .args(["-q", "snapshot"])
            .output()
            .expect("run talos-dr");
        let elapsed = t.elapsed();
        assert!(
            o.status.success(),
            "talos-dr snapshot failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let stored = std::fs::read_dir(&backups)
            .expect("backup dir")
            .filter_map(Result::ok)
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("etcd-") && !name.ends_with(".json")
            });
        assert!(stored, "no snapshot stored");
        elapsed
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let snapshot = big_snapshot();
    let size = std::fs::metadata(&snapshot).expect("snapshot").len();
    let rate_mb_s: u64 = env_or("BENCH_RATE_MB_S", 100);
    let rounds: usize = env_or("BENCH_ROUNDS", 9);
    let bench = setup(&snapshot, rate_mb_s * 1_000_000);
    // Once each to warm the page cache and the binaries.
    bench.raw();
    bench.talos_dr();
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        raw.push(bench.raw());
        ours.push(bench.talos_dr());
    }
    let (r, o) = (median(raw.clone()), median(ours.clone()));
    let overhead = o.as_secs_f64() - r.as_secs_f64();
    // Each round's own difference: steadier than the difference of medians on a busy machine.
    let mut paired: Vec<f64> = raw
        .iter()
        .zip(&ours)
        .map(|(r, o)| o.as_secs_f64() - r.as_secs_f64())
        .collect();
    paired.sort_by(f64::total_cmp);
    let limit = r.as_secs_f64() * 0.10 + 0.100;
    let goal = r.as_secs_f64() * 0.05 + 0.050;
    let verdict = if overhead <= goal {
        "meets the goal"
    } else if overhead <= limit {
        "within the limit, not the goal"
    } else {
        "OVER the limit"
    };
    let pace = if rate_mb_s == 0 {
        "unpaced".to_owned()
    } else {
        format!("{rate_mb_s} MB/s")
    };
    println!(
        "snapshot of {size} bytes ({}), stream {pace}, median of {rounds} rounds, {} CPUs",
        snapshot.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let ms = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "raw talosctl etcd snapshot  {:>6.0} ms   (rounds: {})",
        r.as_secs_f64() * 1000.0,
        ms(&raw)
    );
    println!(
        "talos-dr snapshot           {:>6.0} ms   (rounds: {})",
        o.as_secs_f64() * 1000.0,
        ms(&ours)
    );
    println!(
        "per-round overhead (talos-dr − raw), sorted: {} ms; median {:+.0} ms",
        paired
            .iter()
            .map(|d| format!("{:+.0}", d * 1000.0))
            .collect::<Vec<_>>()
            .join(" "),
        paired[paired.len() / 2] * 1000.0
    );
    println!(
        "ratio {:.3}x, overhead {:+.0} ms; limit {:.0} ms (10 % + 100 ms), goal {:.0} ms (5 % + 50 ms): {verdict}",
        o.as_secs_f64() / r.as_secs_f64(),
        overhead * 1000.0,
        limit * 1000.0,
        goal * 1000.0
    );
}
