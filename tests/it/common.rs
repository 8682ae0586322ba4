//! Test environment: a temp profile, the simulated cluster, and a `talosctl` shim on PATH.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use talos_dr::sim::state::{self, Cluster};

pub const BIN: &str = env!("CARGO_BIN_EXE_talos-dr");

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

pub struct Env {
    /// Runs the simulated Kubernetes API, when started with [`Env::with_kube`].
    pub runtime: Option<tokio::runtime::Runtime>,
    pub tmp: tempfile::TempDir,
    pub bin_dir: PathBuf,
    pub config_dir: PathBuf,
    pub state: PathBuf,
}

impl Env {
    /// Three control-plane nodes and two workers, all healthy, streaming `small.snapshot`: the
    /// demo's own environment (one simulator setup for both), with fast transitions.
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let env =
            talos_dr::sim::demo::setup(tmp.path(), std::path::Path::new(BIN), true, &[]).unwrap();
        let mut cluster = Cluster::load(&env.state).unwrap();
        cluster.timing = talos_dr::sim::state::Timing::default();
        cluster.save(&env.state).unwrap();
        let profile = env.config_dir.join("profile.toml");
        let text = std::fs::read_to_string(&profile).unwrap();
        std::fs::write(&profile, text.replace("name = \"demo\"", "name = \"lab\"")).unwrap();
        Self {
            runtime: None,
            tmp,
            bin_dir: env.bin_dir,
            config_dir: env.config_dir,
            state: env.state,
        }
    }

    fn runtime(&mut self) -> &tokio::runtime::Runtime {
        self.runtime.get_or_insert_with(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        })
    }

    /// Also serves the simulated Proxmox VE API (HTTPS, pinned) and adds `[proxmox]` to the
    /// profile; `map` also writes each node's `vm` into the profile.
    pub fn with_pve(map: bool) -> Self {
        let mut env = Self::new();
        let state = env.state.clone();
        let pve = env
            .runtime()
            .block_on(talos_dr::sim::pve_api::serve(state))
            .unwrap();
        let demo_env = talos_dr::sim::demo::DemoEnv {
            dir: env.tmp.path().to_path_buf(),
            config_dir: env.config_dir.clone(),
            state: env.state.clone(),
            bin_dir: env.bin_dir.clone(),
            kubectl_shim: None,
        };
        talos_dr::sim::demo::attach_pve(&demo_env, &pve).unwrap();
        if map {
            let p = env.config_dir.join("profile.toml");
            let mut text = std::fs::read_to_string(&p).unwrap();
            for vm in &env.cluster().pve.vms {
                text = text.replace(
                    &format!("hostname = \"{}\"\n", vm.name),
                    &format!(
                        "hostname = \"{}\"\nvm = {{ node = \"{}\", vmid = {} }}\n",
                        vm.name, vm.node, vm.vmid
                    ),
                );
            }
            std::fs::write(p, text).unwrap();
        }
        env
    }

    /// Also serves the simulated Kubernetes API and writes the profile's kubeconfig for it, so
    /// the real kubectl runs in `post-verify`.
    pub fn with_kube() -> Self {
        let mut env = Self::new();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = env.state.clone();
        let (addr, _handle) = rt.block_on(talos_dr::sim::kube_api::serve(state)).unwrap();
        talos_dr::sim::kube_api::write_kubeconfig(&env.config_dir.join("kubeconfig"), addr)
            .unwrap();
        env.runtime = Some(rt);
        env
    }

    /// etcd is lost on every control-plane node (the data directory is damaged: etcd fails).
    pub fn disaster(&self) {
        self.edit_cluster(|c| {
            for n in c.nodes.iter_mut().filter(|n| n.machine_type != "worker") {
                // The data is damaged, so a raw copy of it does not verify either.
                n.etcd.data_corrupt = true;
                n.etcd.set(
                    "Failed",
                    "Fail",
                    "Failed to run: etcd: failed to load the database (panic: invalid page type)",
                );
            }
        });
    }

    pub fn cluster(&self) -> Cluster {
        Cluster::load(&self.state).unwrap()
    }

    pub fn cmd(&self) -> assert_cmd::Command {
        assert_cmd::Command::from_std(self.std_cmd())
    }

    pub fn std_cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(BIN);
        let path = format!(
            "{}:{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("PATH", path)
            .env("TALOS_DR_SIM_STATE", &self.state)
            .env("TALOS_DR_CONFIG_DIR", &self.config_dir)
            .env("HOME", self.tmp.path())
            .env("NO_COLOR", "1")
            .env_remove("TALOS_DR_PROFILE")
            .env_remove("TALOS_DR_HOME")
            .env_remove("TALOS_DR_TALOSCTL")
            .env_remove("TALOSCONFIG")
            .env_remove("RUST_LOG");
        c
    }

    pub fn backups(&self) -> PathBuf {
        self.config_dir.join("etcd-backups")
    }

    /// Every file name in the backup directory, sorted.
    pub fn backup_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.backups())
            .map(|r| {
                // Files only: machine configs live in the `configs` subdirectory.
                r.filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn edit_cluster(&self, f: impl FnOnce(&mut Cluster)) {
        let mut c = Cluster::load(&self.state).unwrap();
        f(&mut c);
        c.save(&self.state).unwrap();
    }

    /// The argv of every simulated talosctl call so far.
    pub fn calls(&self) -> Vec<Vec<String>> {
        state::read_calls(&self.state).unwrap()
    }

    /// Calls whose words (after the global flags) start with `words`.
    pub fn calls_of(&self, words: &[&str]) -> Vec<Vec<String>> {
        self.calls()
            .into_iter()
            .filter(|argv| {
                let rest = strip_globals(argv);
                rest.len() >= words.len() && rest.iter().zip(words).all(|(a, b)| a == b)
            })
            .collect()
    }
}

/// Drops `--talosconfig X`, `--context X`, `-n X` so tests can match the command words.
pub fn strip_globals(argv: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if matches!(
            a.as_str(),
            "--talosconfig" | "--context" | "-n" | "--nodes" | "-e" | "--endpoints"
        ) {
            it.next();
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// The value after `-n` (all of them).
pub fn node_args(argv: &[String]) -> Vec<String> {
    argv.windows(2)
        .filter(|w| w[0] == "-n" || w[0] == "--nodes")
        .map(|w| w[1].clone())
        .collect()
}

/// Writes a copy of `src` into the backup dir under a scheduled name, with a sidecar.
pub fn plant_snapshot(env: &Env, src: &Path, taken_at: jiff::Timestamp, valid: bool) -> PathBuf {
    use talos_dr::snapshot::{store, verify};
    let dir = env.backups();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(store::file_name(taken_at));
    std::fs::copy(src, &path).unwrap();
    let report = verify::verify_file(&path).unwrap();
    let mut sc = store::Sidecar::from_report(&report, taken_at, &store::file_name(taken_at));
    sc.valid = valid && report.valid;
    store::write_sidecar(&path, &sc).unwrap();
    path
}

/// Plants valid copies of `small.snapshot` taken that many whole days ago; returns their paths.
pub fn plant_days_ago(env: &Env, days: &[i64]) -> Vec<PathBuf> {
    let now = jiff::Timestamp::now();
    days.iter()
        .map(|d| {
            plant_snapshot(
                env,
                &fixture("snapshots/small.snapshot"),
                now - jiff::SignedDuration::from_hours(24 * d),
                true,
            )
        })
        .collect()
}

pub fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

pub fn stdout_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs the simulated talosctl (`talos-dr __sim talosctl`) with the env's talosconfig and state.
pub fn sim_talosctl(env: &Env, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["__sim", "talosctl", "--talosconfig"])
        .arg(env.config_dir.join("talosconfig"))
        .args(args)
        .env("TALOS_DR_SIM_STATE", &env.state)
        .output()
        .unwrap()
}
