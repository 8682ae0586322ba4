//! Replacing a lost node's VM on Proxmox VE (talos.md §14, proxmox.md §12): the plan the
//! `rebuild-preflight` stage works out, and the read-only look-ups it needs.
//!
//! A dead host's VM configs stay in the cluster file system, so the lost VMID stays taken: the
//! new VM always gets a fresh VMID (`/cluster/nextid`), the profile's mapping follows it, and
//! the old VMID is reported for the user to remove once the host is back — never destroyed here.

use serde::{Deserialize, Serialize};

use crate::machine_config::ConfigRef;
use crate::pve::{BackupVolume, PveClient, PveError, VmRef};

/// How the VM comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Restore the newest vzdump/PBS backup of the lost VMID (its disk holds its config).
    #[default]
    Backup,
    /// Full clone of `[proxmox] template` (Talos ISO, maintenance mode), then `apply-config`.
    Template,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "backup" => Ok(Self::Backup),
            "template" => Ok(Self::Template),
            other => Err(format!("expected backup or template, got {other:?}")),
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Backup => "backup",
            Strategy::Template => "template",
        })
    }
}

/// A backup found on a storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundBackup {
    pub volid: String,
    pub storage: String,
    pub ctime: Option<u64>,
    /// Set for a node-local storage: the archive can only be restored on this node.
    pub only_on: Option<String>,
}

/// Everything a rebuild needs, decided once by the preflight and kept in the checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RebuildPlan {
    /// The node's address (as the profile lists it).
    pub node: String,
    pub control_plane: bool,
    /// Hostname in the saved config (the etcd member and Kubernetes Node are named after it).
    pub hostname: Option<String>,
    pub old_vm: Option<VmRef>,
    pub strategy: Strategy,
    pub backup: Option<FoundBackup>,
    pub template: Option<VmRef>,
    /// The Proxmox node the new VM goes to.
    pub target_node: String,
    /// The saved machine config and the snapshot that recorded it.
    pub config: Option<ConfigRef>,
    pub config_snapshot: String,
    /// The dead etcd member to remove (`%016x`), if it is still listed.
    pub member_id: Option<String>,
    /// A healthy control-plane node to talk to etcd through.
    pub healthy: Option<String>,
    /// For a template clone: the lost VM's name, net0 MAC, cores and memory (MiB).
    pub vm_name: String,
    pub mac: Option<String>,
    pub cores: Option<u32>,
    pub memory_mib: Option<u64>,
}

/// The newest usable backup of `vmid` visible from the online `nodes` (PBS-verified failures
/// skipped). Listing is sorted by volid, not time, so every storage is read and compared.
pub async fn newest_backup(
    pve: &PveClient,
    online: &[String],
    vmid: u32,
) -> Result<Option<FoundBackup>, PveError> {
    let mut best: Option<(u64, FoundBackup)> = None;
    let mut seen_shared = std::collections::BTreeSet::new();
    for node in online {
        let storages = pve.storages(node, Some("backup")).await?;
        for st in storages
            .iter()
            .filter(|s| s.enabled && s.active && s.holds("backup"))
        {
            if st.shared && !seen_shared.insert(st.storage.clone()) {
                continue;
            }
            let list: Vec<BackupVolume> = match pve.backups(node, &st.storage, vmid).await {
                Ok(l) => l,
                // One unreachable storage (a PBS that is down) must not hide the others.
                Err(e) => {
                    tracing::warn!(storage = %st.storage, error = %e, "cannot list backups");
                    continue;
                }
            };
            for b in list.into_iter().filter(|b| !b.verification_failed()) {
                let t = b.ctime.unwrap_or(0);
                if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                    best = Some((
                        t,
                        FoundBackup {
                            volid: b.volid,
                            storage: st.storage.clone(),
                            ctime: b.ctime,
                            only_on: (!st.shared).then(|| node.clone()),
                        },
                    ));
                }
            }
        }
    }
    Ok(best.map(|(_, b)| b))
}

/// Online Proxmox nodes, the one with the most free memory first.
pub async fn online_nodes(pve: &PveClient) -> Result<Vec<String>, PveError> {
    let mut nodes: Vec<_> = pve
        .nodes()
        .await?
        .into_iter()
        .filter(|n| n.status == "online")
        .collect();
    nodes.sort_by_key(|n| {
        std::cmp::Reverse(n.maxmem.unwrap_or(0).saturating_sub(n.mem.unwrap_or(0)))
    });
    Ok(nodes.into_iter().map(|n| n.node).collect())
}

/// How to remove the VM a failed create left behind (never done automatically).
pub fn cleanup_hint(vm: &VmRef) -> String {
    format!(
        "remove it once you have looked at it: `qm destroy {0} --purge` on {1}, or `pvesh delete /nodes/{1}/qemu/{0}` (if it is locked, `qm unlock {0}` first)",
        vm.vmid, vm.node
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_parses_and_prints() {
        assert_eq!("backup".parse::<Strategy>().unwrap(), Strategy::Backup);
        assert_eq!("template".parse::<Strategy>().unwrap(), Strategy::Template);
        assert!("clone".parse::<Strategy>().is_err());
        assert_eq!(Strategy::Template.to_string(), "template");
    }
}
