//! Pre-upgrade snapshot sets: one etcd snapshot plus a Proxmox snapshot of every cluster VM,
//! under one label.
//!
//! A set lives in `<config_dir>/sets/`: the manifest `<label>.json` (mode 0600, written
//! atomically) and the etcd snapshot `<label>.snapshot` with its `.json` sidecar. That name is
//! outside the scheduled-snapshot pattern, so `prune` never touches it; it goes only with its set.
//!
//! The manifest is written while the set is being made (status `incomplete`) and lists only VM
//! snapshots that exist, so a failed or interrupted run still leaves a truthful record that
//! `sets delete` can clean up. Retention is a pure function ([`retention`]); deleting a set
//! ([`delete_set`]) removes only VM snapshots whose name talos-dr made for that label.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::pve::{PveClient, PveError, SnapshotName, VmRef};
use crate::snapshot::retention::human_age;
use crate::snapshot::store;
use crate::ui::Reporter;

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetStatus {
    /// Being made, or the run failed part-way: some VM snapshots may be missing.
    Incomplete,
    /// The etcd snapshot and every VM snapshot exist.
    Complete,
}

/// The etcd snapshot of a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetEtcd {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    #[serde(default)]
    pub revision: Option<i64>,
    #[serde(default)]
    pub node: Option<String>,
}

/// One VM snapshot that exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetVm {
    /// The cluster node's address.
    pub address: String,
    /// `controlplane` or `worker`.
    pub role: String,
    /// The Proxmox node.
    pub node: String,
    pub vmid: u32,
    pub snapname: String,
    /// The task's `exitstatus` (`OK`, `WARNINGS: n`), or `recovered` when the snapshot was
    /// found by listing after its task could not be followed.
    pub exitstatus: String,
    #[serde(default)]
    pub upid: Option<String>,
    /// What the VM looked like (name, MAC, size), so a lost VM can be re-created like it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<VmSpec>,
}

/// The parts of a VM's config a re-created VM copies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: Option<String>,
    /// MAC of `net0`.
    pub mac: Option<String>,
    pub cores: Option<u32>,
    pub memory_mib: Option<u64>,
}

impl VmSpec {
    pub fn from_config(cfg: &crate::pve::types::VmConfig) -> Self {
        let num = |k: &str| -> Option<u64> {
            match cfg.other.get(k)? {
                serde_json::Value::Number(n) => n.as_u64(),
                // `memory` may be a property string (`current=8192`) on PVE 8.
                serde_json::Value::String(s) => s
                    .trim_start_matches("current=")
                    .split(',')
                    .next()?
                    .parse()
                    .ok(),
                _ => None,
            }
        };
        Self {
            name: cfg.name.clone(),
            mac: cfg
                .other
                .get("net0")
                .and_then(|v| v.as_str())
                .and_then(crate::pve::mac_of),
            cores: num("cores").and_then(|c| u32::try_from(c).ok()),
            memory_mib: num("memory"),
        }
    }
}

impl SetVm {
    pub fn vm_ref(&self) -> VmRef {
        VmRef::new(self.node.clone(), self.vmid)
    }
}

/// A VM whose snapshot is missing from the set, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetFailure {
    pub node: String,
    pub vmid: u32,
    pub error: String,
}

/// `<config_dir>/sets/<label>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetManifest {
    pub schema: u32,
    pub label: String,
    pub created_at: Timestamp,
    pub profile: String,
    pub status: SetStatus,
    /// The common VM snapshot name, `talosdr-<label>-<yymmddhhmm>`.
    pub snapname: String,
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub control_plane_only: bool,
    #[serde(default)]
    pub vmstate: bool,
    #[serde(default)]
    pub etcd: Option<SetEtcd>,
    #[serde(default)]
    pub vms: Vec<SetVm>,
    /// VMs that should be in the set but whose snapshot does not exist.
    #[serde(default)]
    pub missing: Vec<SetFailure>,
    pub tool_version: String,
}

impl SetManifest {
    pub fn new(label: &str, snapname: &SnapshotName, created_at: Timestamp, profile: &str) -> Self {
        Self {
            schema: SCHEMA,
            label: label.to_owned(),
            created_at,
            profile: profile.to_owned(),
            status: SetStatus::Incomplete,
            snapname: snapname.to_string(),
            run_id: None,
            control_plane_only: false,
            vmstate: false,
            etcd: None,
            vms: Vec::new(),
            missing: Vec::new(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// `3d 4h` since the set was made.
    pub fn age(&self, now: Timestamp) -> String {
        human_age(now.duration_since(self.created_at))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("no snapshot set {label:?} in {dir}")]
    NotFound { label: String, dir: PathBuf },
    #[error("cannot read the set manifest {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write the set manifest {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Label(#[from] PveError),
}

/// Labels are what fits in a PVE snapshot name (see [`crate::pve::names::validate_label`]).
pub fn validate_label(label: &str) -> Result<(), SetError> {
    crate::pve::names::validate_label(label).map_err(SetError::Label)
}

pub fn manifest_path(sets_dir: &Path, label: &str) -> PathBuf {
    sets_dir.join(format!("{label}.json"))
}

/// Where the set's etcd snapshot is stored.
pub fn etcd_path(sets_dir: &Path, label: &str) -> PathBuf {
    sets_dir.join(format!("{label}.snapshot"))
}

/// Writes the manifest atomically with mode 0600 (creating `sets/` with 0700).
pub fn save(sets_dir: &Path, manifest: &SetManifest) -> Result<(), SetError> {
    let path = manifest_path(sets_dir, &manifest.label);
    let write = |source| SetError::Write {
        path: path.clone(),
        source,
    };
    crate::fsutil::create_private_dir(sets_dir).map_err(write)?;
    let text = serde_json::to_vec_pretty(manifest).map_err(|e| write(std::io::Error::other(e)))?;
    crate::fsutil::write_atomic(&path, &text, 0o600).map_err(write)
}

pub fn exists(sets_dir: &Path, label: &str) -> bool {
    manifest_path(sets_dir, label).is_file()
}

pub fn load(sets_dir: &Path, label: &str) -> Result<SetManifest, SetError> {
    validate_label(label)?;
    let path = manifest_path(sets_dir, label);
    if !path.is_file() {
        return Err(SetError::NotFound {
            label: label.to_owned(),
            dir: sets_dir.to_path_buf(),
        });
    }
    read(&path)
}

fn read(path: &Path) -> Result<SetManifest, SetError> {
    let err = |message: String| SetError::Read {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let m: SetManifest = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    if m.schema > SCHEMA {
        return Err(err(format!(
            "schema {} is newer than this talos-dr understands ({SCHEMA}); upgrade talos-dr",
            m.schema
        )));
    }
    Ok(m)
}

/// Every manifest in `sets_dir`, newest first; unreadable ones are returned as errors so the
/// caller can show them. Other files (the etcd snapshots, sidecars) are ignored.
pub fn list(sets_dir: &Path) -> Vec<Result<SetManifest, SetError>> {
    let Ok(read_dir) = std::fs::read_dir(sets_dir) else {
        return Vec::new();
    };
    let mut out: Vec<Result<SetManifest, SetError>> = read_dir
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && p.file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| !s.ends_with(".snapshot") && validate_label(s).is_ok())
        })
        .map(|p| read(&p))
        .collect();
    out.sort_by(|a, b| match (a, b) {
        (Ok(a), Ok(b)) => b.created_at.cmp(&a.created_at).then(b.label.cmp(&a.label)),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => std::cmp::Ordering::Equal,
    });
    out
}

// ---- retention ---------------------------------------------------------------------------------

/// What retention needs to know about a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionCandidate {
    pub label: String,
    pub created_at: Timestamp,
    pub status: SetStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionDecision {
    pub label: String,
    pub keep: bool,
    pub reason: String,
}

/// Keeps the newest `keep_sets` complete sets (always including `protect`, the set just made).
/// Incomplete sets are never deleted here: a run may still resume them, and `sets delete` is
/// the explicit way out. Result: newest first.
pub fn retention(
    sets: &[RetentionCandidate],
    keep_sets: usize,
    protect: Option<&str>,
) -> Vec<RetentionDecision> {
    let mut sorted: Vec<&RetentionCandidate> = sets.iter().collect();
    sorted.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.label.cmp(&a.label)));
    let keep_sets = keep_sets.max(1);
    // The protected set takes one of the places whatever its age.
    let mut complete_seen = usize::from(protect.is_some_and(|p| {
        sorted
            .iter()
            .any(|s| s.label == p && s.status == SetStatus::Complete)
    }));
    sorted
        .into_iter()
        .map(|s| {
            let (keep, reason) = if Some(s.label.as_str()) == protect {
                (true, "the set just made".to_owned())
            } else if s.status == SetStatus::Incomplete {
                (
                    true,
                    "incomplete: finish it with `resume` or remove it with `sets delete`".into(),
                )
            } else {
                complete_seen += 1;
                if complete_seen <= keep_sets {
                    (
                        true,
                        format!("newest complete #{complete_seen} (keep_sets = {keep_sets})"),
                    )
                } else {
                    (
                        false,
                        format!("older than the newest {keep_sets} complete sets (keep_sets)"),
                    )
                }
            };
            RetentionDecision {
                label: s.label.clone(),
                keep,
                reason,
            }
        })
        .collect()
}

// ---- deleting a set ----------------------------------------------------------------------------

/// Whether `name` is a snapshot name talos-dr made for `label`. Anything else is never deleted
/// or rolled back, whatever a manifest says.
pub fn is_ours(name: &str, label: &str) -> bool {
    SnapshotName::parse(name)
        .ok()
        .and_then(|n| n.label_and_time().map(|(l, _)| l == label))
        .unwrap_or(false)
}

/// What [`delete_set`] did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeleteReport {
    /// `VM 101 on node pve1: talosdr-x-2405241418`.
    pub deleted: Vec<String>,
    /// VM snapshots already gone.
    pub absent: Vec<String>,
    /// Entries refused because the name is not one talos-dr made for this label.
    pub refused: Vec<String>,
    pub errors: Vec<String>,
    pub etcd_removed: bool,
    /// The manifest is gone (everything else succeeded).
    pub manifest_removed: bool,
}

/// Deletes a set: its VM snapshots (through the API, only names we made for this label), then
/// the etcd snapshot, then the manifest. On partial failure the manifest is rewritten with what
/// is left, so a second `sets delete` finishes the job.
pub async fn delete_set(
    client: Option<&PveClient>,
    sets_dir: &Path,
    manifest: &SetManifest,
    max_parallel: usize,
    reporter: &dyn Reporter,
) -> Result<DeleteReport, SetError> {
    let mut report = DeleteReport::default();
    let mut left = Vec::new();
    let mut todo = Vec::new();
    for vm in &manifest.vms {
        let what = format!("VM {} on node {}: {}", vm.vmid, vm.node, vm.snapname);
        if !is_ours(&vm.snapname, &manifest.label) {
            report.refused.push(format!(
                "{what}: not a name talos-dr made for set {}; left alone",
                manifest.label
            ));
            continue;
        }
        todo.push((vm.clone(), what));
    }
    if !todo.is_empty() {
        match client {
            None => {
                report.errors.push(format!(
                    "set {} has {} VM snapshots but the profile has no [proxmox] section",
                    manifest.label,
                    todo.len()
                ));
                left.extend(todo.iter().map(|(vm, _)| vm.clone()));
            }
            Some(client) => {
                let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(max_parallel.max(1)));
                let mut set = tokio::task::JoinSet::new();
                for (vm, what) in todo {
                    let (client, sem) = (client.clone(), sem.clone());
                    set.spawn(async move {
                        let _permit = sem.acquire_owned().await;
                        let r = delete_one(&client, &vm).await;
                        (vm, what, r)
                    });
                }
                while let Some(joined) = set.join_next().await {
                    let Ok((vm, what, r)) = joined else {
                        continue;
                    };
                    match r {
                        Ok(true) => {
                            reporter.info(&format!("deleted {what}"));
                            report.deleted.push(what);
                        }
                        Ok(false) => report.absent.push(what),
                        Err(e) => {
                            report.errors.push(format!("{what}: {e}"));
                            left.push(vm);
                        }
                    }
                }
            }
        }
    }
    let etcd = manifest
        .etcd
        .as_ref()
        .map_or_else(|| etcd_path(sets_dir, &manifest.label), |e| e.path.clone());
    // Only the file this set owns: `<sets_dir>/<label>.snapshot`.
    if etcd == etcd_path(sets_dir, &manifest.label) && etcd.exists() {
        match store::remove(&etcd) {
            Ok(()) => report.etcd_removed = true,
            Err(e) => report
                .errors
                .push(format!("cannot remove {}: {e}", etcd.display())),
        }
    }
    if report.errors.is_empty() {
        let path = manifest_path(sets_dir, &manifest.label);
        match std::fs::remove_file(&path) {
            Ok(()) => report.manifest_removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => report.manifest_removed = true,
            Err(e) => report
                .errors
                .push(format!("cannot remove {}: {e}", path.display())),
        }
    } else {
        let mut rest = manifest.clone();
        rest.vms = left;
        rest.status = SetStatus::Incomplete;
        if report.etcd_removed {
            rest.etcd = None;
        }
        save(sets_dir, &rest)?;
    }
    Ok(report)
}

/// `Ok(true)` deleted, `Ok(false)` it was not there.
async fn delete_one(client: &PveClient, vm: &SetVm) -> Result<bool, PveError> {
    let r = vm.vm_ref();
    let name = SnapshotName::parse(&vm.snapname)?;
    let list = client.list_snapshots(&r).await?;
    if !list.iter().any(|s| s.name == name.as_str()) {
        return Ok(false);
    }
    // No `force`: a replication or lock problem must be seen, not papered over.
    client.delete_snapshot_and_wait(&r, &name, false).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn at(h: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + h * 3600).unwrap()
    }

    fn cand(label: &str, h: i64, complete: bool) -> RetentionCandidate {
        RetentionCandidate {
            label: label.into(),
            created_at: at(h),
            status: if complete {
                SetStatus::Complete
            } else {
                SetStatus::Incomplete
            },
        }
    }

    /// (sets as (label, hour, complete), keep_sets, protect) → labels deleted, oldest last.
    #[rstest]
    #[case(&[], 3, None, &[])]
    #[case(&[("a", 1, true), ("b", 2, true), ("c", 3, true)], 3, Some("c"), &[])]
    #[case(&[("a", 1, true), ("b", 2, true), ("c", 3, true), ("d", 4, true)], 3, Some("d"), &["a"])]
    #[case(&[("a", 1, true), ("b", 2, true), ("c", 3, true), ("d", 4, true)], 1, Some("d"), &["c", "b", "a"])]
    // keep_sets = 0 is treated as 1: the set just made always stays.
    #[case(&[("a", 1, true), ("b", 2, true)], 0, Some("b"), &["a"])]
    // Incomplete sets are never deleted and do not take a place.
    #[case(&[("a", 1, false), ("b", 2, true), ("c", 3, true), ("d", 4, false), ("e", 5, true)], 2, Some("e"), &["b"])]
    // A protected set older than others (clock skew) still stays and still counts.
    #[case(&[("a", 1, true), ("b", 9, true), ("c", 8, true)], 2, Some("a"), &["c"])]
    // No protected set (plain `sets` retention).
    #[case(&[("a", 1, true), ("b", 2, true), ("c", 3, true)], 2, None, &["a"])]
    fn retention_table(
        #[case] sets: &[(&str, i64, bool)],
        #[case] keep: usize,
        #[case] protect: Option<&str>,
        #[case] deleted: &[&str],
    ) {
        let c: Vec<_> = sets.iter().map(|(l, h, ok)| cand(l, *h, *ok)).collect();
        let d = retention(&c, keep, protect);
        assert_eq!(d.len(), sets.len());
        let got: Vec<&str> = d
            .iter()
            .filter(|d| !d.keep)
            .map(|d| d.label.as_str())
            .collect();
        assert_eq!(got, deleted);
        assert!(d.iter().all(|d| !d.reason.is_empty()));
    }

    #[test]
    fn ours_only_for_the_same_label() {
        assert!(is_ours("talosdr-up-1-2405241418", "up-1"));
        assert!(!is_ours("talosdr-up-1-2405241418", "up"));
        assert!(!is_ours("talosdr-up-2405241418", "up-1"));
        assert!(!is_ours("autodaily240525020000", "up"));
        assert!(!is_ours("pre-dr-20240524", "pre"));
        assert!(!is_ours("talosdr-up-24052414", "up"));
        assert!(!is_ours("Bad Name", "up"));
    }

    #[test]
    fn save_list_load_round_trip_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sets = dir.path().join("sets");
        for (label, h) in [("old", 1), ("new", 5), ("mid", 3)] {
            let name = SnapshotName::for_label(label, at(h)).unwrap();
            let mut m = SetManifest::new(label, &name, at(h), "lab");
            m.status = SetStatus::Complete;
            save(&sets, &m).unwrap();
        }
        // Not manifests: an etcd sidecar and a stray file.
        std::fs::write(sets.join("new.snapshot.json"), "{}").unwrap();
        std::fs::write(sets.join("notes.txt"), "x").unwrap();
        std::fs::write(sets.join("Broken Name.json"), "{").unwrap();
        let labels: Vec<String> = list(&sets).into_iter().map(|m| m.unwrap().label).collect();
        assert_eq!(labels, ["new", "mid", "old"]);
        let mode = std::fs::metadata(manifest_path(&sets, "new"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let m = load(&sets, "mid").unwrap();
        assert_eq!(m.snapname, "talosdr-mid-2701151100");
        assert!(matches!(
            load(&sets, "nope"),
            Err(SetError::NotFound { .. })
        ));
        assert!(matches!(load(&sets, "../x"), Err(SetError::Label(_))));
    }
}
