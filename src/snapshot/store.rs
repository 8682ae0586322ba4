//! Where snapshots live: file naming, the `.json` sidecar with verification results, and listing.
//!
//! Scheduled snapshots are named `etcd-YYYYmmdd-HHMMSS.snapshot` (UTC), with `.zst` / `.age`
//! appended when stored compressed or encrypted. Only names of exactly this shape are listed or
//! pruned, so other files in the directory are never touched. The age of
//! a snapshot comes from its name, not its mtime (a copy or restore from backup changes mtimes).

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::verify::{Report, Status, Trailer};

const PREFIX: &str = "etcd-";
const SUFFIX: &str = ".snapshot";
const STAMP: &str = "%Y%m%d-%H%M%S";

/// `etcd-YYYYmmdd-HHMMSS.snapshot` for a moment, in UTC.
pub fn file_name(at: Timestamp) -> String {
    format!("{PREFIX}{}{SUFFIX}", at.strftime(STAMP))
}

/// The time encoded in a scheduled snapshot's name (also `….snapshot.zst.age`), or `None` if it
/// is not one of ours.
pub fn parse_name(name: &str) -> Option<Timestamp> {
    let (name, _layers) = crate::pack::split_name(name);
    let stamp = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if stamp.len() != 15
        || !stamp.bytes().enumerate().all(|(i, b)| {
            if i == 8 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
    {
        return None;
    }
    let dt = jiff::civil::DateTime::strptime(STAMP, stamp).ok()?;
    dt.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// Metadata written beside each snapshot as `<snapshot>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sidecar {
    pub schema: u32,
    pub file: String,
    pub taken_at: Timestamp,
    pub size: u64,
    pub sha256: String,
    pub valid: bool,
    pub trailer: Trailer,
    pub status: Option<Status>,
    #[serde(default)]
    pub problems: Vec<String>,
    /// The control-plane node the snapshot was streamed from.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub talos_version: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    pub tool_version: String,
    /// Set when the stored file is compressed and/or encrypted: `size`, `sha256` and `status`
    /// then describe the plain snapshot inside, and this describes the file as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<Packed>,
    /// Each node's machine config at the time, by node address (files in `<backup dir>/configs`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub machine_configs: std::collections::BTreeMap<String, crate::machine_config::ConfigRef>,
    /// What the snapshot holds (live objects, namespaces, value bytes), read in the verifying
    /// pass by `snapshot`; sidecars written before it existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<super::xray::ObjectSummary>,
}

/// The stored form of a packed snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packed {
    pub layers: Vec<crate::pack::Layer>,
    pub size: u64,
    pub sha256: String,
}

impl Sidecar {
    pub fn from_report(report: &Report, taken_at: Timestamp, file: &str) -> Self {
        Self {
            schema: 1,
            file: file.to_owned(),
            taken_at,
            size: report.size,
            sha256: report.sha256.clone(),
            valid: report.valid,
            trailer: report.trailer,
            status: report.status,
            problems: report.problems.clone(),
            node: None,
            talos_version: None,
            duration_ms: None,
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            packed: None,
            machine_configs: Default::default(),
            objects: None,
        }
    }

    /// The size of the file as stored (packed or plain), to tell whether the sidecar still
    /// describes it.
    pub fn stored_size(&self) -> u64 {
        self.packed.as_ref().map_or(self.size, |p| p.size)
    }
}

pub fn sidecar_path(snapshot: &Path) -> PathBuf {
    let mut s = snapshot.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

pub fn write_sidecar(snapshot: &Path, sidecar: &Sidecar) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(sidecar).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&sidecar_path(snapshot), text.as_bytes(), 0o600)
}

/// Reads a sidecar; a missing or unreadable one is `None` (the snapshot is then "unverified").
pub fn read_sidecar(snapshot: &Path) -> Option<Sidecar> {
    let text = std::fs::read_to_string(sidecar_path(snapshot)).ok()?;
    serde_json::from_str(&text).ok()
}

/// One scheduled snapshot found in the backup directory.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub name: String,
    pub taken_at: Timestamp,
    pub size: u64,
    pub sidecar: Option<Sidecar>,
}

/// Scheduled snapshots in `dir`, newest first. A missing directory is an empty list.
pub fn list(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut entries = Vec::new();
    for item in read {
        let item = item?;
        let name = item.file_name().to_string_lossy().into_owned();
        let Some(taken_at) = parse_name(&name) else {
            continue;
        };
        let meta = item.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let path = item.path();
        entries.push(Entry {
            sidecar: read_sidecar(&path),
            path,
            name,
            taken_at,
            size: meta.len(),
        });
    }
    entries.sort_by(|a, b| b.taken_at.cmp(&a.taken_at).then(b.name.cmp(&a.name)));
    Ok(entries)
}

/// Removes a snapshot and its sidecar.
pub fn remove(snapshot: &Path) -> std::io::Result<()> {
    std::fs::remove_file(snapshot)?;
    match std::fs::remove_file(sidecar_path(snapshot)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_utc() {
        let t: Timestamp = "2026-11-30T02:00:07Z".parse().unwrap();
        let n = file_name(t);
        assert_eq!(n, "etcd-20261130-020007.snapshot");
        assert_eq!(parse_name(&n), Some(t));
        assert_eq!(parse_name(&format!("{n}.zst.age")), Some(t));
        assert_eq!(parse_name(&format!("{n}.age")), Some(t));
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for n in [
            "etcd-20261130-020007.snapshot.json",
            "etcd-20261130-020007.snapshot.part",
            ".etcd-20261130-020007.snapshot.tmp",
            "etcd-2026113-020007.snapshot",
            "etcd-20261330-020007.snapshot",
            "db.snapshot",
            "etcd-20261130x020007.snapshot",
            "etcd-20261130-020007.snapshot.zst.json",
            "etcd-20261130-020007.snapshot.age.age",
        ] {
            assert_eq!(parse_name(n), None, "{n}");
        }
    }
}
