//! Storages, backups and what a VM's disk boots: the parts of the simulated Proxmox VE a
//! rebuild of a lost VM needs (`reference/proxmox.md` §12).
//!
//! A backup keeps the whole [`Vm`] as it was (name, cores, memory, `net0` MAC, disks) and what
//! its disk boots ([`BootImage`]); a restore copies it back, a clone of a template copies the
//! template's. When such a VM runs, [`super::Cluster::sync_guests`] brings its Talos node up at
//! the address the DHCP reservation of its MAC gives ([`Pve::dhcp`]).

use serde::{Deserialize, Serialize};

use super::{Node, Pve, Vm};

/// One entry of `storage.cfg`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Storage {
    pub id: String,
    /// `dir`, `nfs`, `pbs` or `lvmthin`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Every node sees the same content (NFS, PBS). A storage that is not shared (`local`,
    /// `local-lvm`) exists on every node, each with its own content.
    #[serde(default)]
    pub shared: bool,
    /// Content types it may hold (`backup`, `images`, `iso`, …).
    pub content: Vec<String>,
    /// `nodes=` in storage.cfg: only these nodes may use it (`None`: all).
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    /// `disable` in storage.cfg.
    #[serde(default)]
    pub disabled: bool,
    /// Fault: listing its content fails with this message (PBS unreachable:
    /// `error listing snapshots - …`).
    #[serde(default)]
    pub list_error: Option<String>,
}

impl Storage {
    fn new(id: &str, kind: &str, shared: bool, content: &[&str]) -> Self {
        Self {
            id: id.into(),
            kind: kind.into(),
            shared,
            content: content.iter().map(|c| (*c).to_owned()).collect(),
            nodes: None,
            disabled: false,
            list_error: None,
        }
    }

    /// Whether `node` may use it (`nodes=` restriction).
    pub fn available_on(&self, node: &str) -> bool {
        self.nodes
            .as_ref()
            .is_none_or(|n| n.iter().any(|x| x == node))
    }

    pub fn allows(&self, content: &str) -> bool {
        self.content.iter().any(|c| c == content)
    }
}

/// The two storages every PVE node has: `local` (a directory) and `local-lvm` (LVM-thin), both
/// node-local.
pub fn default_storages() -> Vec<Storage> {
    vec![
        Storage::new("local", "dir", false, &["iso", "vztmpl", "backup"]),
        Storage::new("local-lvm", "lvmthin", false, &["images", "rootdir"]),
    ]
}

/// One backup (vzdump archive, or PBS snapshot) of a VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backup {
    pub storage: String,
    /// The host whose disk holds it, for a storage that is not shared (`local`): gone with it.
    #[serde(default)]
    pub node: Option<String>,
    pub vmid: u32,
    /// Backup time, epoch seconds.
    pub ctime: i64,
    pub size: u64,
    /// File storages: `vma.zst`, `vma.lzo`, `vma.gz` or `vma` (PBS is always `pbs-vm`).
    #[serde(default = "default_format")]
    pub format: String,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default)]
    pub protected: bool,
    /// PBS: `ok` or `failed` once verified.
    #[serde(default)]
    pub verification: Option<String>,
    /// The VM as it was backed up: config and what its disk boots.
    pub vm: Vm,
}

fn default_format() -> String {
    "vma.zst".into()
}

/// What a VM's disk boots.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BootImage {
    /// The Talos ISO (a template made for rebuilds): maintenance mode, no config.
    TalosIso,
    /// Talos installed on the disk: the node as it was when the disk was written (its machine
    /// config, its etcd data and member).
    Installed { node: Box<Node> },
}

impl Backup {
    /// The volume id, in the real formats: PBS `pbs:backup/vm/103/2025-01-01T02:00:05Z` (UTC),
    /// file storages `nfs:backup/vzdump-qemu-103-2025_01_01-02_00_05.vma.zst` (the node's local
    /// time; the simulated nodes run in UTC).
    pub fn volid(&self, pve: &Pve) -> String {
        let t = jiff::Timestamp::from_second(self.ctime).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        if self.is_pbs(pve) {
            format!(
                "{}:backup/vm/{}/{}",
                self.storage,
                self.vmid,
                t.strftime("%Y-%m-%dT%H:%M:%SZ")
            )
        } else {
            format!(
                "{}:backup/vzdump-qemu-{}-{}.{}",
                self.storage,
                self.vmid,
                t.strftime("%Y_%m_%d-%H_%M_%S"),
                self.format
            )
        }
    }

    pub fn is_pbs(&self, pve: &Pve) -> bool {
        pve.storage(&self.storage).is_some_and(|s| s.kind == "pbs")
    }

    /// The `format` the content listing shows.
    pub fn shown_format(&self, pve: &Pve) -> String {
        if self.is_pbs(pve) {
            "pbs-vm".into()
        } else {
            self.format.clone()
        }
    }

    /// Whether `node` can read it: shared storages from every node that may use them, a
    /// node-local one only on its own node (and only while that node is up).
    pub fn visible_from(&self, pve: &Pve, node: &str) -> bool {
        let Some(s) = pve.storage(&self.storage) else {
            return false;
        };
        s.available_on(node)
            && !s.disabled
            && (s.shared || self.node.as_deref() == Some(node))
            && !self.node.as_deref().is_some_and(|n| pve.is_offline(n))
    }
}

impl Pve {
    pub fn storage(&self, id: &str) -> Option<&Storage> {
        self.storages.iter().find(|s| s.id == id)
    }

    /// The backup behind a volume id.
    pub fn backup_by_volid(&self, volid: &str) -> Option<&Backup> {
        self.backups.iter().find(|b| b.volid(self) == volid)
    }

    /// A random unicast MAC with Proxmox's prefix `BC:24:11` (datacenter `mac_prefix`),
    /// different from every MAC in use; `seed` varies it (pve-common `random_ether_addr`).
    pub fn random_mac(&self, seed: u64) -> String {
        let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
        loop {
            h = h
                .wrapping_mul(0x5851_f42d_4c95_7f2d)
                .wrapping_add(0x1405_7b7e_f767_814f);
            let mac = format!(
                "BC:24:11:{:02X}:{:02X}:{:02X}",
                (h >> 40) & 0xff,
                (h >> 32) & 0xff,
                (h >> 24) & 0xff
            );
            let used = self.vms.iter().any(|v| v.mac == mac)
                || self.dhcp.keys().any(|m| m.eq_ignore_ascii_case(&mac));
            if !used {
                return mac;
            }
        }
    }

    /// Every VMID the cluster knows, offline nodes' VMs included (their configs stay in the
    /// cluster file system).
    pub fn vmid_taken(&self, vmid: u32) -> Option<&Vm> {
        self.vms.iter().find(|v| v.vmid == vmid)
    }

    /// `/cluster/nextid`: the lowest free VMID from 100.
    pub fn next_free_vmid(&self) -> u32 {
        (100..)
            .find(|id| self.vmid_taken(*id).is_none())
            .unwrap_or(100)
    }
}
