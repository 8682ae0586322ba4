//! Benchmark of a fleet run: wall time of `talos-dr snapshot --all-profiles` over three
//! simulated clusters (three profiles) against three sequential `talos-dr -p NAME snapshot`
//! runs, as three cron lines or a shell loop would do it.
//!
//! The simulated talosctl answers at once; a real one waits on the network and the node (a
//! health check, a snapshot stream). So each configuration runs twice: with no added latency,
//! and with every talosctl call delayed by `LATENCY` (0.5 s), which is where running profiles
//! side by side pays. Prints the median of 5 rounds of each. Run with
//! `cargo bench --bench fleet` (add `--profile dev` to skip the release build).

#![allow(clippy::print_stdout)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_talos-dr");
const PROFILES: [&str; 3] = ["alpha", "bravo", "charlie"];
const ROUNDS: usize = 5;
const LATENCY: &str = "0.5";

struct Fleet {
    home: PathBuf,
    bin_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Three simulated clusters under one home; `talosctl` on PATH picks the cluster of the
/// profile whose talosconfig it is given, after sleeping `$BENCH_LATENCY` seconds.
fn setup() -> Fleet {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::create_dir_all(&bin_dir).expect("bin");
    for name in PROFILES {
        let dir = tmp.path().join(format!("sim-{name}"));
        let env = talos_dr::sim::demo::setup(&dir, Path::new(BIN), true, &[]).expect("setup");
        let mut cluster = talos_dr::sim::state::Cluster::load(&env.state).expect("state");
        cluster.timing = talos_dr::sim::state::Timing::default();
        cluster.save(&env.state).expect("save");
        std::fs::write(
            env.config_dir.join("sim-state"),
            env.state.display().to_string(),
        )
        .expect("sim-state");
        let p = env.config_dir.join("profile.toml");
        let text = std::fs::read_to_string(&p).expect("profile");
        std::fs::write(
            &p,
            text.replace("name = \"demo\"", &format!("name = \"{name}\"")),
        )
        .expect("profile");
        std::os::unix::fs::symlink(&env.config_dir, home.join(name)).expect("symlink");
    }
    let shim = bin_dir.join("talosctl");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\nsleep \"${{BENCH_LATENCY:-0}}\"\nprev=; tc=\nfor a in \"$@\"; do [ \"$prev\" = --talosconfig ] && tc=$a; prev=$a; done\n# `version --client` names no talosconfig: a state of its own (the default version).\nif [ -n \"$tc\" ]; then st=$(cat \"$(dirname \"$tc\")/sim-state\"); else st=\"$(dirname \"$0\")/client.json\"; fi\nTALOS_DR_SIM_STATE=$st exec '{BIN}' __sim talosctl \"$@\"\n"
        ),
    )
    .expect("shim");
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    Fleet {
        home,
        bin_dir,
        _tmp: tmp,
    }
}

impl Fleet {
    fn run(&self, args: &[&str], latency: &str) {
        let out = Command::new(BIN)
            .args(args)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.bin_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("TALOS_DR_HOME", &self.home)
            .env("BENCH_LATENCY", latency)
            .env("NO_COLOR", "1")
            .env_remove("TALOS_DR_CONFIG_DIR")
            .env_remove("TALOS_DR_PROFILE")
            .env_remove("TALOS_DR_TALOSCTL")
            .env_remove("TALOS_DR_SIM_STATE")
            .output()
            .expect("run talos-dr");
        assert!(
            out.status.success(),
            "talos-dr {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Each round starts from empty backup directories (names have one-second resolution).
    fn clear(&self) {
        for name in PROFILES {
            let dir = self.home.join(name).join("etcd-backups");
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let fleet = setup();
    println!(
        "snapshot of {} simulated profiles, median of {ROUNDS} rounds ({BIN})",
        PROFILES.len()
    );
    for latency in ["0", LATENCY] {
        let mut seq = Vec::new();
        let mut par = Vec::new();
        let mut par3 = Vec::new();
        for _ in 0..ROUNDS {
            fleet.clear();
            let t = Instant::now();
            for name in PROFILES {
                fleet.run(&["-q", "-p", name, "snapshot"], latency);
            }
            seq.push(t.elapsed());
            fleet.clear();
            let t = Instant::now();
            fleet.run(&["-q", "snapshot", "--all-profiles"], latency);
            par.push(t.elapsed());
            fleet.clear();
            let t = Instant::now();
            fleet.run(
                &["-q", "snapshot", "--all-profiles", "--jobs", "3"],
                latency,
            );
            par3.push(t.elapsed());
        }
        let (s, p, p3) = (median(seq), median(par), median(par3));
        println!(
            "talosctl latency {latency}s: 3 sequential runs {:.2}s · --all-profiles (--jobs 2) {:.2}s ({:.2}x) · --jobs 3 {:.2}s ({:.2}x)",
            s.as_secs_f64(),
            p.as_secs_f64(),
            s.as_secs_f64() / p.as_secs_f64(),
            p3.as_secs_f64(),
            s.as_secs_f64() / p3.as_secs_f64(),
        );
    }
}
