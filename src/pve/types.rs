//! Response shapes of the endpoints we use, deserialised leniently.
//!
//! PVE is written in Perl: booleans arrive as `0`/`1` (sometimes as strings), some numbers arrive
//! as strings, and optional keys are absent or `null`. The `lenient` helpers accept all of these,
//! and every struct ignores unknown keys so newer servers (PVE 9) keep working.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A VM: the node its config lives on and its VMID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VmRef {
    pub node: String,
    pub vmid: u32,
}

impl VmRef {
    pub fn new(node: impl Into<String>, vmid: u32) -> Self {
        Self {
            node: node.into(),
            vmid,
        }
    }
}

impl fmt::Display for VmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VM {} on {}", self.vmid, self.node)
    }
}

pub(crate) mod lenient {
    //! Deserialisers that accept Perl's loose JSON typing.
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    fn value_to_bool(v: &Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            Value::Number(n) => n.as_f64().map(|f| f != 0.0),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Some(true),
                "0" | "false" | "no" | "off" | "" => Some(false),
                // Property strings like "enabled=1,fstrim_cloned_disks=1".
                other => other
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("enabled="))
                    .map(|v| v == "1"),
            },
            _ => None,
        }
    }

    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(v.as_ref().and_then(value_to_bool).unwrap_or(false))
    }

    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(v.as_ref().and_then(value_to_bool))
    }

    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(match v {
            Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        })
    }

    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(match v {
            Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        })
    }

    /// A VMID as a number or a string (task status has `"id":"101"`).
    pub fn u32_from_any<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let v = Value::deserialize(d)?;
        match &v {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| serde::de::Error::custom(format!("expected an integer, got {v}")))
    }

    /// Any scalar as a string; absent and null as `None`.
    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(match v {
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(u8::from(b).to_string()),
            _ => None,
        })
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(opt_string(d)?.unwrap_or_default())
    }
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    #[serde(default, deserialize_with = "lenient::string")]
    pub version: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub release: String,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub repoid: Option<String>,
}

/// One entry of `GET /cluster/resources?type=vm` (QEMU and LXC guests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterVm {
    #[serde(default, deserialize_with = "lenient::string")]
    pub id: String,
    #[serde(deserialize_with = "lenient::u32_from_any")]
    pub vmid: u32,
    /// `qemu` or `lxc`.
    #[serde(rename = "type", default, deserialize_with = "lenient::string")]
    pub kind: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub node: String,
    /// `running`, `stopped`, … or `unknown` when the owning node is not reporting.
    #[serde(default, deserialize_with = "lenient::string")]
    pub status: String,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub template: bool,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub lock: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub tags: Option<String>,
}

impl ClusterVm {
    pub fn vm_ref(&self) -> VmRef {
        VmRef::new(self.node.clone(), self.vmid)
    }
    pub fn is_qemu(&self) -> bool {
        self.kind == "qemu"
    }
}

/// One entry of `GET /nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    #[serde(default, deserialize_with = "lenient::string")]
    pub node: String,
    /// `online`, `offline` or `unknown`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub status: String,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub ssl_fingerprint: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub uptime: Option<u64>,
    /// Memory in use and in all, bytes (absent while the node is offline).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub mem: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub maxmem: Option<u64>,
}

/// `GET /nodes/{node}/qemu/{vmid}/status/current`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub name: Option<String>,
    /// `running` or `stopped`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub status: String,
    /// QMP run state (`running`, `paused`, `prelaunch`, …).
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub qmpstatus: Option<String>,
    /// Config lock (`backup`, `snapshot`, …), only while held.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub lock: Option<String>,
    /// Whether the config enables the guest agent (not whether it runs).
    #[serde(default, deserialize_with = "lenient::bool")]
    pub agent: bool,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub template: bool,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub uptime: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub tags: Option<String>,
}

impl VmStatus {
    /// Running in the QMP sense (not paused, not migrating).
    pub fn is_running(&self) -> bool {
        self.status == "running" && self.qmpstatus.as_deref().is_none_or(|q| q == "running")
    }
}

/// `GET /nodes/{node}/qemu/{vmid}/config`: the keys we read plus everything else raw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub lock: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub parent: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub digest: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub agent: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Disk keys that must support snapshots (QemuServer/Drive.pm valid_drive_names).
fn is_disk_key(key: &str) -> bool {
    if matches!(key, "efidisk0" | "tpmstate0") {
        return true;
    }
    ["ide", "sata", "scsi", "virtio"].iter().any(|p| {
        key.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    })
}

impl VmConfig {
    fn str_value(&self, key: &str) -> Option<String> {
        match self.other.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// `(key, value)` of every disk, CD-ROMs excluded.
    pub fn disks(&self) -> Vec<(String, String)> {
        self.other
            .keys()
            .filter(|k| is_disk_key(k))
            .filter_map(|k| Some((k.clone(), self.str_value(k)?)))
            .filter(|(_, v)| !v.split(',').any(|p| p == "media=cdrom"))
            .collect()
    }

    /// Static addresses from cloud-init `ipconfigN` (`ip=10.0.0.11/24,gw=…`, `ip6=…`).
    pub fn cloud_init_addresses(&self) -> Vec<std::net::IpAddr> {
        let mut out = Vec::new();
        for (key, _) in self.other.iter() {
            let Some(n) = key.strip_prefix("ipconfig") else {
                continue;
            };
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            let Some(v) = self.str_value(key) else {
                continue;
            };
            for part in v.split(',') {
                let Some((k, val)) = part.split_once('=') else {
                    continue;
                };
                if k != "ip" && k != "ip6" {
                    continue;
                }
                let addr = val.split('/').next().unwrap_or_default();
                if let Ok(ip) = addr.parse() {
                    out.push(ip);
                }
            }
        }
        out
    }

    /// MAC addresses of `netN` (`virtio=BC:24:…,bridge=vmbr0`), lower-case.
    pub fn macs(&self) -> Vec<String> {
        let mut out = Vec::new();
        for key in self.other.keys().filter(|k| k.starts_with("net")) {
            if let Some(v) = self.str_value(key)
                && let Some((_, mac)) = v.split(',').next().and_then(|m| m.split_once('='))
            {
                out.push(mac.to_ascii_lowercase());
            }
        }
        out
    }
}

/// `GET …/feature?feature=snapshot`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    #[serde(rename = "hasFeature", default, deserialize_with = "lenient::bool")]
    pub has_feature: bool,
    #[serde(default)]
    pub nodes: Vec<String>,
}

/// `GET …/agent/network-get-interfaces` → `{"result": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReply {
    #[serde(default)]
    pub result: Vec<AgentInterface>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInterface {
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(
        rename = "hardware-address",
        default,
        deserialize_with = "lenient::opt_string"
    )]
    pub hardware_address: Option<String>,
    /// Missing early in boot.
    #[serde(rename = "ip-addresses", default)]
    pub ip_addresses: Vec<AgentIp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentIp {
    #[serde(rename = "ip-address", default, deserialize_with = "lenient::string")]
    pub ip_address: String,
    #[serde(
        rename = "ip-address-type",
        default,
        deserialize_with = "lenient::string"
    )]
    pub ip_address_type: String,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub prefix: Option<u64>,
}

/// One entry of `GET …/snapshot`, including the final pseudo entry `current`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub description: String,
    /// Epoch seconds; absent for `current`, `0` if unknown.
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub snaptime: Option<i64>,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub vmstate: bool,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub parent: Option<String>,
    /// `prepare` / `delete` for an unfinished snapshot (not in the schema).
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub snapstate: Option<String>,
    /// Only on `current`.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub running: Option<bool>,
}

impl Snapshot {
    /// The pseudo entry "You are here!".
    pub fn is_current(&self) -> bool {
        self.name == "current"
    }
    /// A finished snapshot (no `snapstate` left behind).
    pub fn is_complete(&self) -> bool {
        self.snapstate.is_none()
    }
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    #[serde(default, deserialize_with = "lenient::string")]
    pub upid: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub node: String,
    /// `running` or `stopped`.
    #[serde(default, deserialize_with = "lenient::string")]
    pub status: String,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub exitstatus: Option<String>,
    #[serde(rename = "type", default, deserialize_with = "lenient::string")]
    pub task_type: String,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub user: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub tokenid: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub starttime: Option<i64>,
}

impl TaskStatus {
    pub fn is_running(&self) -> bool {
        self.status != "stopped"
    }
}

/// One line of `GET /nodes/{node}/tasks/{upid}/log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLogLine {
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub n: Option<u64>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub t: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_status() {
        let s: VmStatus = serde_json::from_str(
            r#"{"status":"running","qmpstatus":"running","agent":"1","template":0,"uptime":"86400","clipboard":null}"#,
        )
        .unwrap();
        assert!(s.agent && !s.template && s.is_running());
        assert_eq!(s.uptime, Some(86400));
        let s: VmStatus =
            serde_json::from_str(r#"{"status":"running","qmpstatus":"paused"}"#).unwrap();
        assert!(!s.is_running());
    }

    #[test]
    fn config_helpers() {
        let c: VmConfig = serde_json::from_str(
            r#"{"name":"talos-cp-1","agent":"enabled=1,type=virtio","memory":"8192","cores":4,
            "scsi0":"local-lvm:vm-101-disk-0,iothread=1,size=32G","ide2":"none,media=cdrom",
            "efidisk0":"local-lvm:vm-101-disk-1,size=4M","unused0":"local-lvm:vm-101-disk-9",
            "net0":"virtio=BC:24:11:2A:6C:9E,bridge=vmbr0,firewall=1",
            "ipconfig0":"ip=10.0.0.11/24,gw=10.0.0.1","ipconfig1":"ip=dhcp,ip6=fd00::11/64",
            "digest":"11f6"}"#,
        )
        .unwrap();
        let disks: Vec<_> = c.disks().into_iter().map(|(k, _)| k).collect();
        assert_eq!(disks, ["efidisk0", "scsi0"]);
        let ips: Vec<String> = c
            .cloud_init_addresses()
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(ips, ["10.0.0.11", "fd00::11"]);
        assert_eq!(c.macs(), ["bc:24:11:2a:6c:9e"]);
    }
}
