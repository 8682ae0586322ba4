//! The throwaway environment of `talos-dr demo`: a simulated cluster (3 control-plane VMs,
//! 2 workers), its state file, a profile that points at it, and `talosctl`/`kubectl` shims.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::state::{Cluster, Timing};

/// A real etcd snapshot (made by etcd 3.4; see fixtures/snapshots/README.md) that the
/// simulated cluster serves as its current data.
const CLUSTER_DATA: &[u8] = include_bytes!("../../fixtures/snapshots/small.snapshot");

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

    let mut cluster = Cluster::example(Some(data));
    // Slow enough to watch, fast enough for a demo under a minute.
    cluster.timing = Timing {
        reset_ms: 3000,
        bootstrap_ms: 2500,
        join_ms: 2000,
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
        for n in c.nodes.iter_mut().filter(|n| n.machine_type != "worker") {
            n.etcd.pending.clear();
            n.etcd.set(
                "Failed",
                "Fail",
                "Failed to run: etcd: failed to load the database: invalid page type",
            );
        }
    })
}
