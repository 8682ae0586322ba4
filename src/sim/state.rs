//! The simulated cluster's state file.

use std::fs::OpenOptions;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cluster {
    #[serde(default = "default_version")]
    pub talos_version: String,
    pub nodes: Vec<Node>,
    /// A real etcd snapshot that `etcd snapshot` streams.
    #[serde(default)]
    pub snapshot_source: Option<PathBuf>,
    #[serde(default)]
    pub faults: Faults,
    #[serde(default)]
    pub timing: Timing,
    /// Every node `bootstrap` was accepted on, in order (more than one = split cluster).
    #[serde(default)]
    pub bootstrapped: Vec<String>,
}

/// How long simulated transitions take.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timing {
    /// reset → etcd `Preparing` (the node reboots).
    pub reset_ms: u64,
    /// bootstrap → etcd `Running` on the bootstrap node.
    pub bootstrap_ms: u64,
    /// then → the other control-plane nodes join.
    pub join_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            reset_ms: 300,
            bootstrap_ms: 300,
            join_ms: 300,
        }
    }
}

/// A state change that happens by itself at `at_ms` (Unix milliseconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: i64,
    pub state: String,
    pub health: String,
    pub event: String,
    #[serde(default)]
    pub data_empty: Option<bool>,
}

fn default_version() -> String {
    "v1.9.5".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub address: String,
    pub hostname: String,
    /// `controlplane`, `worker` or `init`.
    pub machine_type: String,
    #[serde(default = "yes")]
    pub reachable: bool,
    #[serde(default)]
    pub etcd: Etcd,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Etcd {
    pub state: String,
    pub health: String,
    /// Newest first: `(state, message)`.
    #[serde(default)]
    pub events: Vec<(String, String)>,
    /// `/var/lib/etcd` is empty (after an EPHEMERAL wipe); bootstrap needs this.
    #[serde(default)]
    pub data_empty: bool,
    #[serde(default)]
    pub pending: Vec<Transition>,
}

impl Etcd {
    pub fn set(&mut self, state: &str, health: &str, event: &str) {
        self.state = state.into();
        self.health = health.into();
        self.events.insert(0, (state.into(), event.into()));
        self.events.truncate(6);
    }
}

impl Default for Etcd {
    fn default() -> Self {
        Self {
            state: "Running".into(),
            health: "OK".into(),
            events: vec![
                ("Running".into(), "Health check successful".into()),
                (
                    "Running".into(),
                    "Started task etcd (PID 2345) for container etcd".into(),
                ),
            ],
            data_empty: false,
            pending: Vec::new(),
        }
    }
}

/// Injected faults. Each is off by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Faults {
    /// `talosctl health` fails with this error text.
    #[serde(default)]
    pub health_error: Option<String>,
    /// The snapshot stream breaks after this many bytes (`error reading: …`).
    #[serde(default)]
    pub snapshot_cut_after: Option<u64>,
    /// The node sends an empty stream (talosctl then fails: `sha256 checksum not found (size 0)`).
    #[serde(default)]
    pub snapshot_empty: bool,
    /// One bit of the body is flipped in transit; talosctl does not notice (it checks only the size).
    #[serde(default)]
    pub snapshot_bitflip: bool,
    /// Milliseconds the snapshot stream takes (for overlap tests).
    #[serde(default)]
    pub snapshot_delay_ms: u64,
    /// These nodes never reach `Preparing` after a reset.
    #[serde(default)]
    pub never_preparing: Vec<String>,
    /// The restore fails on the node after `bootstrap` returned 0 (etcd goes `Failed`).
    #[serde(default)]
    pub bootstrap_failure: Option<String>,
    /// Milliseconds `bootstrap` takes before it returns (for crash-in-flight tests).
    #[serde(default)]
    pub bootstrap_delay_ms: u64,
}

impl Cluster {
    pub fn node(&self, address: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.address == address)
    }

    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(path, text.as_bytes(), 0o644)
    }

    /// A three control-plane, two worker cluster as the tests and the demo use it.
    pub fn example(snapshot_source: Option<PathBuf>) -> Self {
        let mut nodes = Vec::new();
        for i in 1..=3 {
            nodes.push(Node {
                address: format!("10.5.0.{}", 10 + i),
                hostname: format!("talos-cp-{i}"),
                machine_type: "controlplane".into(),
                reachable: true,
                etcd: Etcd::default(),
            });
        }
        for i in 1..=2 {
            nodes.push(Node {
                address: format!("10.5.0.{}", 20 + i),
                hostname: format!("talos-worker-{i}"),
                machine_type: "worker".into(),
                reachable: true,
                etcd: Etcd::default(),
            });
        }
        Self {
            talos_version: default_version(),
            nodes,
            snapshot_source,
            faults: Faults::default(),
            timing: Timing::default(),
            bootstrapped: Vec::new(),
        }
    }

    pub fn node_mut(&mut self, address: &str) -> Option<&mut Node> {
        self.nodes.iter_mut().find(|n| n.address == address)
    }

    /// Applies every transition that is due; returns whether anything changed.
    pub fn advance(&mut self, now_ms: i64) -> bool {
        let mut changed = false;
        for node in &mut self.nodes {
            node.etcd.pending.sort_by_key(|t| t.at_ms);
            while node.etcd.pending.first().is_some_and(|t| t.at_ms <= now_ms) {
                let t = node.etcd.pending.remove(0);
                node.etcd.set(&t.state, &t.health, &t.event);
                if let Some(e) = t.data_empty {
                    node.etcd.data_empty = e;
                }
                changed = true;
            }
        }
        changed
    }

    /// Load, advance the clock, let `f` change the cluster, save — under an exclusive lock, as
    /// several simulated calls may run at once.
    pub fn update<T>(path: &Path, f: impl FnOnce(&mut Cluster) -> T) -> std::io::Result<T> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path(path))?;
        lock.lock()?;
        let mut c = Cluster::load(path)?;
        c.advance(jiff::Timestamp::now().as_millisecond());
        let out = f(&mut c);
        c.save(path)?;
        lock.unlock()?;
        Ok(out)
    }
}

fn lock_path(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// A transition `after_ms` from now.
pub fn later(after_ms: u64, state: &str, health: &str, event: &str) -> Transition {
    Transition {
        at_ms: jiff::Timestamp::now().as_millisecond() + i64::try_from(after_ms).unwrap_or(0),
        state: state.into(),
        health: health.into(),
        event: event.into(),
        data_empty: None,
    }
}

/// Appends one call to `<state>.calls.jsonl` (under an advisory lock: calls may overlap).
pub fn log_call(state: &Path, argv: &[String]) -> std::io::Result<()> {
    let path = calls_path(state);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&path)?;
    f.lock()?;
    let line = serde_json::json!({
        "argv": argv,
        "at_ms": jiff::Timestamp::now().as_millisecond(),
    });
    writeln!(f, "{line}")?;
    f.unlock()
}

pub fn calls_path(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".calls.jsonl");
    PathBuf::from(p)
}

/// Reads back every logged call's argv.
pub fn read_calls(state: &Path) -> std::io::Result<Vec<Vec<String>>> {
    let mut text = String::new();
    match std::fs::File::open(calls_path(state)) {
        Ok(mut f) => {
            f.rewind()?;
            f.read_to_string(&mut text)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            v["argv"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect())
}
