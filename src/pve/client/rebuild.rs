//! The API calls that re-create a lost VM (proxmox.md §12): find a backup, pick a node, get a
//! free VMID, restore or clone, set the lost VM's identity, start it.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::{PveClient, bool01};
use crate::pve::error::{PveError, Target};
use crate::pve::task::Upid;
use crate::pve::types::{VmRef, lenient};

/// One storage of `GET /nodes/{node}/storage`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageInfo {
    #[serde(deserialize_with = "lenient::string")]
    pub storage: String,
    #[serde(rename = "type", default, deserialize_with = "lenient::string")]
    pub kind: String,
    /// Content types, a comma list in no fixed order (`images,backup,iso`).
    #[serde(default, deserialize_with = "lenient::string")]
    pub content: String,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub shared: bool,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub active: bool,
    #[serde(default = "yes", deserialize_with = "lenient::bool")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl StorageInfo {
    pub fn holds(&self, content: &str) -> bool {
        self.content.split(',').any(|c| c.trim() == content)
    }
}

/// One backup of `GET /nodes/{node}/storage/{storage}/content?content=backup&vmid=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupVolume {
    /// `pbs:backup/vm/103/2025-01-01T02:00:05Z`, `nfs:backup/vzdump-qemu-103-….vma.zst`.
    #[serde(deserialize_with = "lenient::string")]
    pub volid: String,
    /// Creation time, epoch seconds.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub ctime: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub size: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub format: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub vmid: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub notes: Option<String>,
    /// PBS: `{"state": "ok"|"failed", …}`.
    #[serde(default)]
    pub verification: Option<serde_json::Value>,
}

impl BackupVolume {
    /// PBS verified this backup as damaged.
    pub fn verification_failed(&self) -> bool {
        self.verification
            .as_ref()
            .and_then(|v| v["state"].as_str())
            .is_some_and(|s| s == "failed")
    }
}

/// A restore of a backup archive into a new VMID (`POST /nodes/{node}/qemu`).
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub vmid: u32,
    pub archive: String,
    /// Where the disks go; `None` keeps each disk's original storage.
    pub storage: Option<String>,
    /// New MACs and SMBIOS uuid. A DHCP reservation keyed by MAC needs `false`.
    pub unique: bool,
}

/// A full clone of a template (`POST /nodes/{node}/qemu/{vmid}/clone`).
#[derive(Debug, Clone)]
pub struct CloneRequest {
    pub newid: u32,
    pub name: String,
    /// Another node; only when every template disk is on shared storage.
    pub target: Option<String>,
    pub storage: Option<String>,
    pub description: Option<String>,
}

impl PveClient {
    /// `GET /cluster/nextid`: the lowest free VMID (dead hosts' VMs count as taken).
    pub async fn next_vmid(&self) -> Result<u32, PveError> {
        let v: serde_json::Value = self
            .get(&["cluster", "nextid"], &[], &Target::none())
            .await?;
        let n = match &v {
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            _ => None,
        };
        n.ok_or_else(|| PveError::Decode {
            target: Box::new(Target::none()),
            method: "GET",
            path: "/cluster/nextid".into(),
            detail: format!("expected a VMID, got {v}"),
        })
    }

    /// `GET /nodes/{node}/storage[?content=…]`.
    pub async fn storages(
        &self,
        node: &str,
        content: Option<&str>,
    ) -> Result<Vec<StorageInfo>, PveError> {
        let query: Vec<(&str, String)> = content
            .map(|c| ("content", c.to_owned()))
            .into_iter()
            .collect();
        self.get(&["nodes", node, "storage"], &query, &Target::node(node))
            .await
    }

    /// Backups of `vmid` on one storage, as `node` sees it (sorted by volid, not by time).
    pub async fn backups(
        &self,
        node: &str,
        storage: &str,
        vmid: u32,
    ) -> Result<Vec<BackupVolume>, PveError> {
        self.get(
            &["nodes", node, "storage", storage, "content"],
            &[("content", "backup".into()), ("vmid", vmid.to_string())],
            &Target::node(node),
        )
        .await
    }

    /// Restores a backup into a new VM on `node` (task `qmrestore`, id = the new VMID).
    pub async fn restore_vm(&self, node: &str, req: &RestoreRequest) -> Result<Upid, PveError> {
        let mut form = vec![
            ("vmid", req.vmid.to_string()),
            ("archive", req.archive.clone()),
            ("unique", bool01(req.unique)),
        ];
        if let Some(s) = &req.storage {
            form.push(("storage", s.clone()));
        }
        let target = Target::vm(&VmRef::new(node, req.vmid));
        self.post_task(&["nodes", node, "qemu"], &form, &target)
            .await
    }

    /// Full clone of `template` (task `qmclone`, whose UPID id is the template's VMID).
    pub async fn clone_vm(&self, template: &VmRef, req: &CloneRequest) -> Result<Upid, PveError> {
        let id = template.vmid.to_string();
        let mut form = vec![
            ("newid", req.newid.to_string()),
            ("name", req.name.clone()),
            ("full", bool01(true)),
        ];
        if let Some(t) = &req.target {
            form.push(("target", t.clone()));
        }
        if let Some(s) = &req.storage {
            form.push(("storage", s.clone()));
        }
        if let Some(d) = &req.description {
            form.push(("description", d.clone()));
        }
        self.post_task(
            &["nodes", &template.node, "qemu", &id, "clone"],
            &form,
            &Target::vm(template),
        )
        .await
    }

    /// `PUT …/config` (synchronous): sets `params`, guarded by the config `digest` read before.
    pub async fn update_vm_config(
        &self,
        vm: &VmRef,
        params: &[(&str, String)],
        digest: Option<&str>,
    ) -> Result<(), PveError> {
        let id = vm.vmid.to_string();
        let mut form: Vec<(&str, String)> = params.to_vec();
        if let Some(d) = digest {
            form.push(("digest", d.to_owned()));
        }
        self.send_once(
            Method::PUT,
            &["nodes", &vm.node, "qemu", &id, "config"],
            &[],
            Some(&form),
            &Target::vm(vm),
        )
        .await
        .map(|_| ())
    }
}

/// The MAC address inside a `netN` value (`virtio=BC:24:11:2A:6C:9E,bridge=vmbr0`).
pub fn mac_of(net: &str) -> Option<String> {
    let first = net.split(',').next()?;
    let (model, mac) = first.split_once('=')?;
    let known = [
        "virtio",
        "e1000",
        "e1000e",
        "rtl8139",
        "vmxnet3",
        "i82551",
        "i82557b",
        "i82559er",
        "ne2k_isa",
        "ne2k_pci",
        "pcnet",
        "e1000-82540em",
        "e1000-82544gc",
        "e1000-82545em",
    ];
    (known.contains(&model) || model == "macaddr").then(|| mac.to_ascii_uppercase())
}

/// `net` with its MAC replaced by `mac` (model and every other option kept).
pub fn with_mac(net: &str, mac: &str) -> String {
    let mut parts: Vec<String> = net.split(',').map(str::to_owned).collect();
    if let Some(first) = parts.first_mut()
        && let Some((model, _)) = first.split_once('=')
    {
        *first = format!("{model}={mac}");
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_in_net_values() {
        assert_eq!(
            mac_of("virtio=bc:24:11:2a:6c:9e,bridge=vmbr0,firewall=1").as_deref(),
            Some("BC:24:11:2A:6C:9E")
        );
        assert_eq!(mac_of("bridge=vmbr0"), None);
        assert_eq!(
            with_mac(
                "virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=20",
                "BC:24:11:2A:6C:9E"
            ),
            "virtio=BC:24:11:2A:6C:9E,bridge=vmbr0,tag=20"
        );
    }

    #[test]
    fn backup_listing_decodes_pbs_and_vzdump_entries() {
        let v: Vec<BackupVolume> = serde_json::from_str(
            r#"[{"volid":"pbs:backup/vm/103/2025-01-01T02:00:05Z","ctime":1735696805,"size":"123","format":"pbs-vm","vmid":103,"verification":{"state":"failed","upid":"x"}},
               {"volid":"nfs:backup/vzdump-qemu-103-2025_01_02-02_00_05.vma.zst","ctime":1735783205,"format":"vma.zst","vmid":"103","content":"backup","subtype":"qemu"}]"#,
        )
        .unwrap();
        assert!(v[0].verification_failed());
        assert!(!v[1].verification_failed());
        assert_eq!(v[1].vmid, Some(103));
    }
}
