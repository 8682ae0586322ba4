//! The throwaway environment of `talos-dr demo`: a simulated cluster (3 control-plane VMs,
//! 2 workers), its state file, a profile that points at it, and `talosctl`/`kubectl` shims.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::state::{CORRUPT_EVENT, Cluster, DialError, EtcdVolume, Timing};

/// A real etcd snapshot (made by etcd 3.4; see fixtures/snapshots/README.md) that the
/// simulated cluster serves as its current data.
const CLUSTER_DATA: &[u8] = include_bytes!("../../fixtures/snapshots/small.snapshot");
/// What a member that kept running after the last backup holds: a real etcd snapshot with a
/// higher revision than [`CLUSTER_DATA`] (fixtures/snapshots/README.md).
const SURVIVOR_DATA: &[u8] = include_bytes!("../../fixtures/snapshots/survivor.snapshot");
/// [`SURVIVOR_DATA`]'s file name, next to the cluster's data file.
const SURVIVOR_FILE: &str = "survivor-etcd.snapshot";

/// Faults the demo can inject (`demo --fault NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// `talosctl health` fails: the scheduled snapshot is refused (exit 4).
    Unhealthy,
    /// The snapshot stream breaks mid-way: nothing is stored (exit 1).
    StreamCut,
    /// The restore fails on the bootstrap node after `bootstrap` returned (exit 1).
    EtcdFails,
    /// One control-plane node never reaches etcd `Preparing` after its reset (exit 1).
    NeverPrepares,
    /// VM 101 is locked by a running backup: Proxmox checks refuse to go on (exit 4).
    VmLocked,
    /// The Kubernetes API does not list namespace monitoring's deployments after the restore:
    /// post-verify's comparison with the snapshot fails (exit 1).
    ObjectsLost,
}

impl Fault {
    pub fn apply(self, c: &mut Cluster) {
        match self {
            Fault::Unhealthy => {
                c.faults.health_error =
                    Some("kubelet is not healthy on 10.5.0.21: connection refused".into());
            }
            Fault::StreamCut => c.faults.snapshot_cut_after = Some(50_000),
            Fault::EtcdFails => {
                c.faults.bootstrap_failure =
                    Some("expected sha256 [221 7 90 …], got [18 77 3 …]".into());
            }
            Fault::NeverPrepares => c.faults.never_preparing = vec!["10.5.0.12".into()],
            Fault::VmLocked => {
                c.pve.locked.insert(101, "backup".into());
            }
            Fault::ObjectsLost => c.faults.objects_vanish = vec!["deployments/monitoring".into()],
        }
    }
}

pub struct DemoEnv {
    pub dir: PathBuf,
    pub config_dir: PathBuf,
    pub state: PathBuf,
    pub bin_dir: PathBuf,
    /// `None` when the real kubectl is used.
    pub kubectl_shim: Option<PathBuf>,
}

/// Lays out the demo under `dir`. `exe` is the talos-dr binary the shims call.
pub fn setup(dir: &Path, exe: &Path, real_kubectl: bool, faults: &[Fault]) -> io::Result<DemoEnv> {
    let config_dir = dir.join("profile");
    let bin_dir = dir.join("bin");
    crate::fsutil::create_private_dir(&config_dir)?;
    crate::fsutil::create_private_dir(&bin_dir)?;
    let data = dir.join("cluster-etcd.snapshot");
    std::fs::write(&data, CLUSTER_DATA)?;
    std::fs::write(dir.join(SURVIVOR_FILE), SURVIVOR_DATA)?;

    let mut cluster = Cluster::example(Some(data));
    // Slow enough to watch, fast enough for a demo under a minute.
    cluster.timing = Timing {
        reset_ms: 3000,
        bootstrap_ms: 2500,
        join_ms: 2000,
        no_route_ms: 1500,
        dial_timeout_ms: 2000,
        snapshot_hang_ms: 3000,
        install_ms: 3000,
        reboot_ms: 2000,
        promote_ms: 0,
        snapshot_bytes_per_s: 0,
    };
    for f in faults {
        f.apply(&mut cluster);
    }
    let state = dir.join("cluster.json");
    cluster.save(&state)?;

    let endpoints: Vec<&str> = cluster
        .nodes
        .iter()
        .filter(|n| n.machine_type == "controlplane")
        .map(|n| n.address.as_str())
        .collect();
    let talosconfig = serde_json::json!({
        "context": "demo",
        "contexts": { "demo": { "endpoints": endpoints, "ca": "c2ltdWxhdGVk", "crt": "c2ltdWxhdGVk", "key": "c2ltdWxhdGVk" } }
    });
    crate::fsutil::write_atomic(
        &config_dir.join("talosconfig"),
        serde_json::to_string_pretty(&talosconfig)?.as_bytes(),
        0o600,
    )?;
    let mut profile = String::from(
        "# A simulated cluster made by `talos-dr demo`: nothing here is real.\nname = \"demo\"\n",
    );
    for n in &cluster.nodes {
        profile.push_str(&format!(
            "\n[[nodes]]\naddress = \"{}\"\nrole = \"{}\"\nhostname = \"{}\"\n",
            n.address, n.machine_type, n.hostname
        ));
    }
    std::fs::write(config_dir.join("profile.toml"), profile)?;

    shim(&bin_dir.join("talosctl"), exe, "talosctl")?;
    let kubectl_shim = if real_kubectl {
        None
    } else {
        let p = bin_dir.join("kubectl");
        shim(&p, exe, "kubectl")?;
        Some(p)
    };
    Ok(DemoEnv {
        dir: dir.to_path_buf(),
        config_dir,
        state,
        bin_dir,
        kubectl_shim,
    })
}

/// Points the demo profile at a running simulated Proxmox VE API: the API token goes to a 0600
/// file, and the profile pins the server's certificate fingerprint.
pub fn attach_pve(env: &DemoEnv, pve: &super::pve_api::PveSim) -> io::Result<()> {
    crate::fsutil::write_atomic(
        &env.config_dir.join("pve-token"),
        super::pve_api::DEMO_TOKEN.as_bytes(),
        0o600,
    )?;
    let path = env.config_dir.join("profile.toml");
    let mut text = std::fs::read_to_string(&path)?;
    text.push('\n');
    text.push_str(&pve.profile_section("pve-token"));
    text.push_str("snapshot_before_restore = true\nmax_parallel = 5\n");
    std::fs::write(path, text)
}

fn shim(path: &Path, exe: &Path, tool: &str) -> io::Result<()> {
    let quoted = exe.display().to_string().replace('\'', "'\\''");
    std::fs::write(
        path,
        format!(
            "#!/bin/sh\n# talos-dr demo: the simulated {tool}\nexec '{quoted}' __sim {tool} \"$@\"\n"
        ),
    )?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// The disaster: etcd's data is lost on every control-plane node.
pub fn disaster(state: &Path) -> io::Result<()> {
    Cluster::update(state, |c| {
        for n in c.nodes.iter_mut().filter(|n| n.is_control_plane()) {
            n.etcd.pending.clear();
            n.etcd.data_corrupt = true;
            n.etcd.set(
                "Failed",
                "Fail",
                "Failed to run: etcd: failed to load the database: invalid page type",
            );
        }
    })
}

/// The disasters that actually happen (`reference/talos.md` §13), for `demo --disaster NAME`.
/// Each turns the demo's healthy cluster into that disaster; etcd is lost on every control
/// plane except where said otherwise, so a restore is the right answer in each. What lets
/// talos-dr get through them is in each variant's doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Disaster {
    /// The talosconfig's endpoint is a Talos VIP ([`VIP`]), and etcd lost quorum, so the VIP
    /// is gone (`no route to host`). A correct recovery talks to every node directly
    /// (`-e NODE -n NODE`); the VIP answers again once the restored cluster has quorum.
    /// Call [`Disaster::prepare`] at setup: the talosconfig must use the VIP from the start.
    VipEndpoint,
    /// One survivor (talos-cp-1) still runs etcd without quorum (Running, HEALTH Fail) and
    /// holds a newer revision than the last backup; the other two fail on damaged data. A
    /// correct recovery saves the survivor's data first (`etcd snapshot` works on a member that
    /// kept running; `cp /var/lib/etcd/member/snap/db` is the fallback) and restores from the
    /// newest valid copy instead of the older backup.
    QuorumLoss,
    /// talos-cp-3's Proxmox host (pve3) is gone: every call to it times out (`i/o timeout`) and
    /// every `/nodes/pve3/…` request answers 595 (`No route to host`). A correct recovery stops
    /// at the unreachable node unless the user leaves it out; restored without it, its
    /// Kubernetes Node object (back from the snapshot) makes `talosctl health` fail
    /// `unexpected nodes with IPs` until it is deleted. [`Disaster::prepare`] also lays out
    /// what a rebuild of the lost VM needs ([`Cluster::add_rebuild_fixtures`]: backups of every
    /// VM on a shared NFS and a PBS storage, template VM 9000 booting the Talos ISO on the
    /// spare host pve4, DHCP reservations); [`host_lost_only`] is the same loss with etcd
    /// left alone (quorum kept: the `rebuild-node` case).
    HostLost,
    /// Talos 1.14 whose etcd lives on its own `ETCD` partition (`get volumestatus ETCD` says
    /// `type: partition`). A correct recovery resets with `EPHEMERAL,ETCD`: an EPHEMERAL-only
    /// reset keeps `/var/lib/etcd/member`, the node restarts etcd on its old data (here it fails
    /// again on the damage), never waits for bootstrap and refuses one (`AlreadyExists`).
    EtcdVolume,
    /// talos-cp-2's etcd shows `Preparing` but its data is still there (an unclean reboot while
    /// the etcd image is pulled). A correct recovery does not trust `Preparing`: it checks
    /// `ls /var/lib/etcd/member` and resets that node too. Bootstrapping it is refused
    /// (`AlreadyExists`); left to "join", it starts on its old data and membership once the
    /// restored cluster exists: a split cluster, recorded in `etcd_violations`.
    StalePreparing,
}

/// The demo cluster's VIP (an address no node has).
pub const VIP: &str = "10.5.0.10";

impl Disaster {
    /// What the cluster looked like before the disaster, set up with the demo: the VIP as the
    /// talosconfig's endpoint, or Talos 1.14 with ETCD partitions (chosen when a cluster is
    /// created). Call it right after [`setup`].
    pub fn prepare(self, env: &DemoEnv) -> io::Result<()> {
        match self {
            Disaster::VipEndpoint => {
                Cluster::update(&env.state, |c| c.vip = Some(VIP.into()))?;
                let path = env.config_dir.join("talosconfig");
                let mut tc: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&path)?).map_err(io::Error::other)?;
                tc["contexts"]["demo"]["endpoints"] = serde_json::json!([VIP]);
                crate::fsutil::write_atomic(
                    &path,
                    serde_json::to_string_pretty(&tc)?.as_bytes(),
                    0o600,
                )
            }
            Disaster::EtcdVolume => Cluster::update(&env.state, etcd_partitions),
            Disaster::HostLost => Cluster::update(&env.state, |c| {
                c.add_rebuild_fixtures(jiff::Timestamp::now().as_second() - 6 * 3600);
            }),
            _ => Ok(()),
        }
    }

    /// Turns the healthy cluster into this disaster.
    pub fn apply(self, c: &mut Cluster) {
        let cp: Vec<String> = c
            .nodes
            .iter()
            .filter(|n| n.is_control_plane())
            .map(|n| n.address.clone())
            .collect();
        for a in &cp {
            if let Some(n) = c.node_mut(a) {
                n.etcd.pending.clear();
                n.etcd.data_corrupt = true;
                n.etcd.set("Failed", "Fail", CORRUPT_EVENT);
            }
        }
        match self {
            Disaster::VipEndpoint => {
                c.vip.get_or_insert_with(|| VIP.into());
            }
            Disaster::QuorumLoss => {
                let survivor_data = c
                    .snapshot_source
                    .as_deref()
                    .and_then(Path::parent)
                    .map(|d| d.join(SURVIVOR_FILE));
                if let Some(n) = cp.first().and_then(|a| c.node_mut(a)) {
                    n.etcd.data_corrupt = false;
                    n.etcd.data = survivor_data;
                    n.etcd.set(
                        "Running",
                        "Fail",
                        "Health check failed: context deadline exceeded",
                    );
                }
            }
            Disaster::HostLost => {
                if let Some(a) = cp.last() {
                    if let Some(n) = c.node_mut(a) {
                        n.reachable = false;
                        n.dial_error = DialError::Timeout;
                    }
                    let hostname = c.node(a).map(|n| n.hostname.clone());
                    let pve_node = c
                        .pve
                        .vms
                        .iter()
                        .find(|vm| Some(&vm.name) == hostname.as_ref())
                        .map(|vm| vm.node.clone());
                    if let Some(p) = pve_node
                        && !c.pve.offline_nodes.contains(&p)
                    {
                        c.pve.offline_nodes.push(p);
                    }
                }
            }
            Disaster::EtcdVolume => etcd_partitions(c),
            Disaster::StalePreparing => {
                if let Some(n) = cp.get(1).and_then(|a| c.node_mut(a)) {
                    n.etcd.data_corrupt = false;
                    n.etcd.set(
                        "Waiting",
                        "?",
                        "Waiting for service \"cri\" to be \"up\", time sync",
                    );
                    n.etcd.set("Preparing", "?", "Running pre state");
                }
            }
        }
    }
}

/// The host of talos-cp-3's VM dies and takes only that VM with it: the two other control
/// planes keep etcd's quorum (what `rebuild-node` is for). Call [`Disaster::prepare`] with
/// [`Disaster::HostLost`] first for the backups and the template.
pub fn host_lost_only(c: &mut Cluster) {
    let host = c.pve.vm_named("talos-cp-3").map(|vm| vm.node.clone());
    if let Some(h) = host {
        c.lose_host(&h);
    }
}

/// Every control plane's VM is lost with its host (pve1–pve3 die; the spare pve4 and the
/// shared storages remain): what `restore --rebuild` is for. Call [`Disaster::prepare`] with
/// [`Disaster::HostLost`] first for the backups and the template.
pub fn all_hosts_lost(c: &mut Cluster) {
    c.lose_all_control_plane_hosts();
}

/// Talos 1.14 with `/var/lib/etcd` on its own partition on every control plane.
fn etcd_partitions(c: &mut Cluster) {
    c.talos_version = "v1.14.0".into();
    for n in c.nodes.iter_mut().filter(|n| n.is_control_plane()) {
        n.etcd_volume = EtcdVolume::Partition {
            location: "/dev/sda7".into(),
        };
    }
}
