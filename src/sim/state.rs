//! The simulated cluster's state file.

use std::fs::OpenOptions;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod machine;
mod pve;
pub mod pve_config;
mod pve_storage;
mod talos;
pub use machine::{Secrets, maintenance_node};
pub use pve::{Disk, Effect, Interface, Pve, Snapshot, Task, Violation, Vm};
pub use pve_storage::{Backup, BootImage, Storage, default_storages};
pub use talos::{
    CORRUPT_EVENT, DialError, EtcdViolation, EtcdVolume, ViolationKind, minor_version,
};

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
    /// etcd state of every control-plane node at the moment of each accepted bootstrap.
    #[serde(default)]
    pub bootstrap_saw: Vec<std::collections::BTreeMap<String, String>>,
    /// What the simulated Kubernetes API serves; optional in the file (defaults apply).
    #[serde(default)]
    pub kube: Kube,
    /// What the simulated Proxmox VE API serves; absent in older files (then empty).
    #[serde(default)]
    pub pve: Pve,
    /// A Talos VIP (an address that is not a node's) the talosconfig may use as its endpoint. It
    /// answers only while etcd has quorum: the owner campaigns through an etcd election.
    #[serde(default)]
    pub vip: Option<String>,
    /// The newest etcd cluster: 0 is the original one, each accepted bootstrap makes a new one.
    /// A node's data belongs to one of them ([`Etcd::generation`]).
    #[serde(default)]
    pub etcd_generation: u32,
    /// Who joined each cluster generation (addresses); generation 0 defaults to every
    /// control-plane node.
    #[serde(default)]
    pub etcd_members: std::collections::BTreeMap<u32, Vec<String>>,
    /// Split clusters the simulator saw happen (a second accepted bootstrap, a node that started
    /// etcd on old data while a newer cluster existed). Anything here is a failed recovery.
    #[serde(default)]
    pub etcd_violations: Vec<EtcdViolation>,
    /// The cluster's secrets, shared by every node's machine config ([`Cluster::machine_config`]).
    #[serde(default)]
    pub secrets: Secrets,
    /// The role of the talosconfig's client certificate (`os:admin`, `os:operator`,
    /// `os:reader`, `os:etcd:backup`). Reading the machine config (`get machineconfig`) and
    /// `etcd remove-member` need `os:admin`; others get `PermissionDenied desc = not authorized`.
    #[serde(default = "default_role")]
    pub talosconfig_role: String,
    /// etcd member IDs that differ from the default (a member that joined anew gets a new one):
    /// address → ID.
    #[serde(default)]
    pub member_ids: std::collections::BTreeMap<String, u64>,
    /// The hostname each member registered with, where it differs from the node now at that
    /// address: address → hostname.
    #[serde(default)]
    pub member_names: std::collections::BTreeMap<String, String>,
    /// Nodes whose etcd started on old data of a member that was removed from the cluster: it
    /// restarts forever (`the member has been permanently removed`) until the node is reset.
    #[serde(default)]
    pub etcd_restart_loops: Vec<String>,
    /// Every scheduled etcd state change as it happened (the newest [`ETCD_LOG_MAX`]): what a
    /// benchmark compares the tool's calls with (`benches/restore_lag.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_log: Vec<EtcdChange>,
}

/// How many [`Cluster::etcd_log`] entries are kept.
pub const ETCD_LOG_MAX: usize = 500;

/// One etcd state change of a node, at the time it was due (Unix ms).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdChange {
    pub at_ms: i64,
    pub node: String,
    pub state: String,
    pub health: String,
}

fn default_role() -> String {
    "os:admin".into()
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
    /// A call to an unreachable node or an unowned VIP on the same L2 fails with `no route to
    /// host` after this long (the ARP timeout; a few seconds in reality).
    #[serde(default = "default_no_route_ms")]
    pub no_route_ms: u64,
    /// A call to a lost host fails with `i/o timeout` after this long.
    #[serde(default = "default_dial_timeout_ms")]
    pub dial_timeout_ms: u64,
    /// `etcd snapshot` on a member whose etcd restarted without quorum hangs this long, then fails
    /// (the real call hangs until the caller gives up).
    #[serde(default = "default_snapshot_hang_ms")]
    pub snapshot_hang_ms: u64,
    /// `apply-config --insecure` → the install to disk ends and the node reboots.
    #[serde(default = "default_install_ms")]
    pub install_ms: u64,
    /// The reboot after the install (the node does not answer) → running with its config.
    #[serde(default = "default_install_ms")]
    pub reboot_ms: u64,
    /// A member that joined as a learner is promoted to a voting member this long after it
    /// joined (0: at once, LEARNER never shows `true`).
    #[serde(default)]
    pub promote_ms: u64,
    /// `etcd snapshot` writes its file in chunks at this many bytes per second, like a network
    /// stream (0: all at once).
    #[serde(default)]
    pub snapshot_bytes_per_s: u64,
}

fn default_install_ms() -> u64 {
    300
}

fn default_no_route_ms() -> u64 {
    50
}

fn default_dial_timeout_ms() -> u64 {
    100
}

fn default_snapshot_hang_ms() -> u64 {
    200
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            reset_ms: 300,
            bootstrap_ms: 300,
            join_ms: 300,
            no_route_ms: default_no_route_ms(),
            dial_timeout_ms: default_dial_timeout_ms(),
            snapshot_hang_ms: default_snapshot_hang_ms(),
            install_ms: default_install_ms(),
            reboot_ms: default_install_ms(),
            promote_ms: 0,
            snapshot_bytes_per_s: 0,
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
    /// On arrival etcd starts on the node's own data and membership ([`Cluster::advance`] records
    /// a split cluster if a newer cluster exists by then).
    #[serde(default)]
    pub old_data: bool,
    /// On arrival the node has joined this cluster generation (its data is that cluster's).
    #[serde(default)]
    pub joins: Option<u32>,
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
    /// How calls to it fail while it is not reachable.
    #[serde(default)]
    pub dial_error: DialError,
    #[serde(default)]
    pub etcd: Etcd,
    /// Where `/var/lib/etcd` lives (Talos ≥ 1.10 reports it as VolumeStatus `ETCD`).
    #[serde(default)]
    pub etcd_volume: EtcdVolume,
    /// Fault: the node's clock is not synchronised (`bootstrap` is refused).
    #[serde(default)]
    pub time_unsynced: bool,
    /// Fault (Talos 1.14): the machine config has no etcd CA (`bootstrap` is refused for good).
    #[serde(default)]
    pub etcd_unconfigured: bool,
    /// Its machine config (YAML, one or more documents); `None`: the one
    /// [`Cluster::machine_config`] generates for it from the cluster's secrets.
    #[serde(default)]
    pub machine_config: Option<String>,
    /// Booted without a config (the Talos ISO, or STATE wiped): only the maintenance API
    /// (`--insecure`) answers.
    #[serde(default)]
    pub maintenance: bool,
    /// The machine stage `get machinestatus` reports (`None`: `running`, or `maintenance` in
    /// maintenance mode): `installing`, `rebooting`, … while an install runs.
    #[serde(default)]
    pub stage: Option<String>,
    /// Stage changes to come: `(at_ms, stage)`; reaching `running` ends the install.
    #[serde(default)]
    pub stage_pending: Vec<(i64, String)>,
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
    /// The node's own data while it has any: a real etcd snapshot file (with or without the
    /// sha256 trailer). `None`: the cluster's [`Cluster::snapshot_source`].
    #[serde(default)]
    pub data: Option<PathBuf>,
    /// Which cluster the data belongs to ([`Cluster::etcd_generation`]).
    #[serde(default)]
    pub generation: u32,
    /// The data is damaged (etcd fails to load it); a raw copy of it fails verification.
    #[serde(default)]
    pub data_corrupt: bool,
    /// etcd (re)started while quorum was lost: it does not serve clients, so `etcd snapshot`
    /// hangs. A member that kept running through the loss still serves it.
    #[serde(default)]
    pub restarted_without_quorum: bool,
    /// HEALTH follows whether a majority of the node's own cluster is up (set when etcd started
    /// on old data and membership).
    #[serde(default)]
    pub health_from_quorum: bool,
    /// A learner (non-voting) member, as a node that just joined is.
    #[serde(default)]
    pub learner: bool,
    /// When the learner is promoted (Unix ms).
    #[serde(default)]
    pub promote_at_ms: Option<i64>,
    /// Talos's join loop runs for this node against the live cluster (a node installed by
    /// `apply-config`, or one restored from a backup): with empty data it joins the newest
    /// cluster while that has quorum, even before any bootstrap by talos-dr.
    #[serde(default)]
    pub join_loop: bool,
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
            data: None,
            generation: 0,
            data_corrupt: false,
            restarted_without_quorum: false,
            health_from_quorum: false,
            learner: false,
            promote_at_ms: None,
            join_loop: false,
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
    /// The next N `bootstrap` calls are refused with "bootstrap is not available yet".
    #[serde(default)]
    pub bootstrap_refusals: u32,
    /// `reset` fails on these nodes before it takes effect.
    #[serde(default)]
    pub reset_fails: Vec<String>,
    /// These nodes never reach `Preparing` after a reset.
    #[serde(default)]
    pub never_preparing: Vec<String>,
    /// The restore fails on the node after `bootstrap` returned 0 (etcd goes `Failed`).
    #[serde(default)]
    pub bootstrap_failure: Option<String>,
    /// Milliseconds `bootstrap` takes before it returns (for crash-in-flight tests).
    #[serde(default)]
    pub bootstrap_delay_ms: u64,
    /// These nodes (addresses) never leave maintenance mode after `apply-config`: the install
    /// hangs (`get machinestatus --insecure` keeps saying `installing`).
    #[serde(default)]
    pub install_hangs: Vec<String>,
    /// The Kubernetes API does not list these objects of etcd's data, as if they were lost
    /// after the restore: `RESOURCE`, `RESOURCE/NAMESPACE` or `RESOURCE/NAMESPACE/NAME`
    /// (cluster-scoped: `RESOURCE//NAME`), e.g. `deployments/team-03`.
    #[serde(default)]
    pub objects_vanish: Vec<String>,
}

/// The Kubernetes side of the simulated cluster ([`crate::sim::kube_api`]).
///
/// Nodes are not listed here: they follow [`Cluster::nodes`] (name = hostname, InternalIP =
/// address). A node is Ready unless it is unreachable, its etcd is not Running (control planes),
/// or it is named in `nodes_not_ready`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kube {
    /// Kubelet and API server version.
    #[serde(default = "default_kube_version")]
    pub version: String,
    /// The pods to serve; `None` means the standard set ([`Kube::standard_pods`]).
    #[serde(default)]
    pub pods: Option<Vec<Pod>>,
    /// Fault: these pods (`namespace/name` or bare `name`) are Pending in `ContainerCreating`.
    #[serde(default)]
    pub pods_pending: Vec<String>,
    /// Fault: these pods are Running but crash-looping (`CrashLoopBackOff`, not ready).
    #[serde(default)]
    pub pods_crashloop: Vec<String>,
    /// Fault: these nodes (hostname or address) report `Ready=False` (`KubeletNotReady`).
    #[serde(default)]
    pub nodes_not_ready: Vec<String>,
    /// Node objects deleted through the API (hostnames); they are no longer listed. A restore
    /// brings them back (they are in the snapshot).
    #[serde(default)]
    pub deleted_nodes: Vec<String>,
}

fn default_kube_version() -> String {
    "v1.32.3".into()
}

impl Default for Kube {
    fn default() -> Self {
        Self {
            version: default_kube_version(),
            pods: None,
            pods_pending: Vec::new(),
            pods_crashloop: Vec::new(),
            nodes_not_ready: Vec::new(),
            deleted_nodes: Vec::new(),
        }
    }
}

/// One simulated pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// Hostname of the node it runs on; `None` while unscheduled.
    #[serde(default)]
    pub node: Option<String>,
    /// `Running`, `Pending`, `Succeeded` or `Failed`.
    #[serde(default = "default_phase")]
    pub phase: String,
    #[serde(default)]
    pub restarts: u32,
}

fn default_phase() -> String {
    "Running".into()
}

impl Kube {
    /// What a fresh Talos cluster runs: control-plane static pods, flannel and kube-proxy on
    /// every node, CoreDNS, plus a small app and a finished Job so summaries have something to
    /// count.
    pub fn standard_pods(nodes: &[Node]) -> Vec<Pod> {
        let pod = |ns: &str, name: String, node: &str| Pod {
            namespace: ns.into(),
            name,
            node: Some(node.to_owned()),
            phase: default_phase(),
            restarts: 0,
        };
        let mut pods = Vec::new();
        for n in nodes {
            if n.is_control_plane() {
                for c in [
                    "kube-apiserver",
                    "kube-controller-manager",
                    "kube-scheduler",
                ] {
                    pods.push(pod(
                        "kube-system",
                        format!("{c}-{}", n.hostname),
                        &n.hostname,
                    ));
                }
            }
        }
        for (i, n) in nodes.iter().enumerate() {
            // Stable five-letter suffixes, like a DaemonSet's, so names stay the same per run.
            pods.push(pod(
                "kube-system",
                format!("kube-flannel-{}", suffix(i, 0)),
                &n.hostname,
            ));
            pods.push(pod(
                "kube-system",
                format!("kube-proxy-{}", suffix(i, 1)),
                &n.hostname,
            ));
        }
        // Deployments land on workers when there are any.
        let workers: Vec<&Node> = nodes
            .iter()
            .filter(|n| n.machine_type == "worker")
            .collect();
        let pool: Vec<&Node> = if workers.is_empty() {
            nodes.iter().collect()
        } else {
            workers
        };
        if let Some(first) = pool.first() {
            let at = |i: usize| pool[i % pool.len()].hostname.as_str();
            for i in 0..2 {
                pods.push(pod(
                    "kube-system",
                    format!("coredns-578d4f8ffc-{}", suffix(i, 2)),
                    at(i),
                ));
                pods.push(pod(
                    "default",
                    format!("web-7c5ddbdf54-{}", suffix(i, 3)),
                    at(i + 1),
                ));
            }
            let mut job = pod(
                "default",
                format!("db-migrate-{}", suffix(0, 4)),
                &first.hostname,
            );
            job.phase = "Succeeded".into();
            pods.push(job);
        }
        pods
    }

    /// The configured pods, or the standard set for `nodes`.
    pub fn effective_pods(&self, nodes: &[Node]) -> Vec<Pod> {
        self.pods
            .clone()
            .unwrap_or_else(|| Self::standard_pods(nodes))
    }
}

fn suffix(i: usize, salt: usize) -> String {
    const LETTERS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    // FNV-1a over (i, salt): cheap, stable, and different for every pair we use.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in [i as u8, salt as u8] {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (0..5)
        .map(|k| LETTERS[((h >> (k * 8)) % LETTERS.len() as u64) as usize] as char)
        .collect()
}

/// Whether `pattern` (`namespace/name` or bare `name`) names this pod.
pub fn pod_matches(pattern: &str, pod: &Pod) -> bool {
    match pattern.split_once('/') {
        Some((ns, name)) => ns == pod.namespace && name == pod.name,
        None => pattern == pod.name,
    }
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
                dial_error: DialError::default(),
                etcd: Etcd::default(),
                etcd_volume: EtcdVolume::default(),
                time_unsynced: false,
                etcd_unconfigured: false,
                machine_config: None,
                maintenance: false,
                stage: None,
                stage_pending: Vec::new(),
            });
        }
        for i in 1..=2 {
            nodes.push(Node {
                address: format!("10.5.0.{}", 20 + i),
                hostname: format!("talos-worker-{i}"),
                machine_type: "worker".into(),
                reachable: true,
                dial_error: DialError::default(),
                etcd: Etcd::default(),
                etcd_volume: EtcdVolume::default(),
                time_unsynced: false,
                etcd_unconfigured: false,
                machine_config: None,
                maintenance: false,
                stage: None,
                stage_pending: Vec::new(),
            });
        }
        let pve = Pve::example(&nodes);
        Self {
            talos_version: default_version(),
            nodes,
            snapshot_source,
            faults: Faults::default(),
            timing: Timing::default(),
            bootstrapped: Vec::new(),
            bootstrap_saw: Vec::new(),
            kube: Kube::default(),
            pve,
            vip: None,
            etcd_generation: 0,
            etcd_members: std::collections::BTreeMap::new(),
            etcd_violations: Vec::new(),
            secrets: Secrets::default(),
            talosconfig_role: default_role(),
            member_ids: std::collections::BTreeMap::new(),
            member_names: std::collections::BTreeMap::new(),
            etcd_restart_loops: Vec::new(),
            etcd_log: Vec::new(),
        }
    }

    pub fn node_mut(&mut self, address: &str) -> Option<&mut Node> {
        self.nodes.iter_mut().find(|n| n.address == address)
    }

    /// Applies every transition that is due, in time order across nodes (a node starting on old
    /// data must see what the others did before); then lets the etcd pre-stages that finish by
    /// themselves go on. Returns whether anything changed.
    pub fn advance(&mut self, now_ms: i64) -> bool {
        let mut changed = false;
        loop {
            let next = self
                .nodes
                .iter()
                .enumerate()
                .flat_map(|(i, n)| {
                    n.etcd
                        .pending
                        .iter()
                        .enumerate()
                        .map(move |(j, t)| (t.at_ms, i, j))
                })
                .filter(|(at, _, _)| *at <= now_ms)
                .min();
            let Some((at, i, j)) = next else { break };
            let t = self.nodes[i].etcd.pending.remove(j);
            self.arrive(i, t, at);
            changed = true;
        }
        changed |= self.pve.advance(now_ms);
        changed |= self.sync_guests(now_ms);
        changed |= self.advance_stages(now_ms);
        changed |= self.promote_learners(now_ms);
        changed |= self.follow_quorum();
        changed |= self.schedule_starts(now_ms);
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
        old_data: false,
        joins: None,
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
