//! Salvage: before anything is wiped, save what every reachable control-plane node still holds.
//!
//! A survivor may hold newer data than the last backup (talos.md §13.1–13.2). Per node, in
//! parallel: `talosctl etcd snapshot` first (it reads the local member and works without quorum
//! on a member whose etcd kept running; it fails or hangs on one that restarted after quorum was
//! lost, so it gets a bounded time), else a copy of the raw database (`talosctl cp`, no sha256
//! trailer, possibly inconsistent when copied from a running etcd). Every file is verified
//! natively; nothing here changes the cluster.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::snapshot::verify::{self, Trailer};
use crate::talos::Talosctl;
use crate::ui::{self, Event, Reporter};

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// A raw copy of `member/snap/db` (`talosctl cp`): needs `--recover-skip-hash-check`.
    RawCopy,
    /// `talosctl etcd snapshot`: etcd's own consistent snapshot with its sha256 trailer.
    Stream,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::RawCopy => "raw-copy",
            Method::Stream => "stream",
        }
    }
}

/// What was saved from one node (or why nothing was).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Salvaged {
    pub node: String,
    /// `None` when nothing could be saved from this node.
    pub method: Option<Method>,
    pub path: Option<PathBuf>,
    /// It verified: a restorable etcd database.
    pub valid: bool,
    pub revision: Option<i64>,
    pub keys: Option<u64>,
    pub size: Option<u64>,
    /// e.g. "copied while etcd was running: may be inconsistent", or why a copy is invalid.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Why each method failed, when it did.
    #[serde(default)]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct SalvageOptions {
    /// Bound on `etcd snapshot` per node (it can hang on a member without quorum).
    pub snapshot_timeout: Duration,
    pub copy_timeout: Duration,
}

impl Default for SalvageOptions {
    fn default() -> Self {
        Self {
            snapshot_timeout: Duration::from_secs(60),
            copy_timeout: Duration::from_secs(5 * 60),
        }
    }
}

/// Salvages from every node in `nodes` into `dir` (created 0700), in parallel. `etcd_running`
/// says which nodes' etcd was running (their raw copies are marked possibly inconsistent).
pub async fn salvage(
    talos: &Talosctl,
    nodes: &[String],
    etcd_running: &[String],
    dir: &Path,
    opts: &SalvageOptions,
    reporter: &dyn Reporter,
) -> std::io::Result<Vec<Salvaged>> {
    crate::fsutil::create_private_dir(dir)?;
    let started = Instant::now();
    let all = futures::future::join_all(nodes.iter().map(|node| async move {
        let key = format!("salvage {node}");
        reporter.report(Event::WaitStarted {
            key: key.clone(),
            message: format!("saving what {node} still holds"),
        });
        let s = one(talos, node, etcd_running.contains(node), dir, opts).await;
        reporter.report(Event::WaitFinished {
            key,
            ok: s.valid,
            message: match (&s.method, s.valid) {
                (Some(m), true) => format!(
                    "{node}: saved ({}), revision {}",
                    m.as_str(),
                    s.revision.map_or("?".into(), |r| r.to_string())
                ),
                _ => format!("{node}: nothing restorable saved"),
            },
            elapsed_ms: ui::ms(started.elapsed()),
        });
        s
    }))
    .await;
    Ok(all)
}

async fn one(
    talos: &Talosctl,
    node: &str,
    etcd_running: bool,
    dir: &Path,
    opts: &SalvageOptions,
) -> Salvaged {
    let mut s = Salvaged {
        node: node.to_owned(),
        method: None,
        path: None,
        valid: false,
        revision: None,
        keys: None,
        size: None,
        notes: Vec::new(),
        errors: Vec::new(),
    };
    let streamed = dir.join(format!("{node}.snapshot"));
    let _ = std::fs::remove_file(&streamed);
    match talos
        .etcd_snapshot(node, &streamed, opts.snapshot_timeout)
        .await
    {
        Ok(_) => {
            record(&mut s, Method::Stream, &streamed);
            if s.valid {
                return s;
            }
            // Kept on disk for inspection; the raw copy may still be good.
            s.errors.push(format!(
                "etcd snapshot: {} does not verify",
                streamed.display()
            ));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&streamed);
            s.errors.push(format!("etcd snapshot: {}", e.message()));
        }
    }
    // `cp` refuses a directory that already holds `db`: every attempt gets a fresh one.
    let copy_dir = fresh_dir(dir, &format!("{node}-db"));
    if let Err(e) = crate::fsutil::create_private_dir(&copy_dir) {
        s.errors.push(format!("cp: {}: {e}", copy_dir.display()));
        return s;
    }
    match talos.copy_etcd_db(node, &copy_dir, opts.copy_timeout).await {
        Ok(db) if db.is_file() => {
            record(&mut s, Method::RawCopy, &db);
            if etcd_running {
                s.notes.push(
                    "copied while etcd was running: it may be inconsistent (prefer a streamed copy)"
                        .into(),
                );
            }
        }
        Ok(db) => s
            .errors
            .push(format!("cp: talosctl left no {}", db.display())),
        Err(e) => s.errors.push(format!("cp: {}", e.message())),
    }
    s
}

/// Verifies `path` natively and records the result (mode 0600 first: it holds every Secret).
fn record(s: &mut Salvaged, method: Method, path: &Path) {
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    s.method = Some(method);
    s.path = Some(path.to_path_buf());
    match verify::verify_file(path) {
        Ok(r) => {
            s.valid = r.valid;
            s.size = Some(r.size);
            s.revision = r.status.map(|st| st.revision);
            s.keys = r.status.map(|st| st.total_key);
            s.notes.clear();
            if !r.valid {
                s.notes.push(format!("invalid: {}", r.problems.join("; ")));
            } else if method == Method::Stream && r.trailer != Trailer::Ok {
                s.notes
                    .push("streamed but without a matching sha256 trailer".into());
            }
        }
        Err(e) => {
            s.valid = false;
            s.notes.push(format!("invalid: cannot read it: {e}"));
        }
    }
}

fn fresh_dir(dir: &Path, stem: &str) -> PathBuf {
    (1..)
        .map(|n| dir.join(format!("{stem}-{n}")))
        .find(|p| !p.exists())
        .expect("an unused name")
}

/// The copy to restore from: valid only, highest revision, a streamed copy before a raw one at
/// equal revision.
pub fn best(all: &[Salvaged]) -> Option<&Salvaged> {
    all.iter()
        .filter(|s| s.valid && s.path.is_some())
        .max_by_key(|s| (s.revision.unwrap_or(i64::MIN), s.method))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(node: &str, method: Method, revision: i64, valid: bool) -> Salvaged {
        Salvaged {
            node: node.into(),
            method: Some(method),
            path: Some(PathBuf::from(format!("/x/{node}"))),
            valid,
            revision: Some(revision),
            keys: Some(1),
            size: Some(1),
            notes: Vec::new(),
            errors: Vec::new(),
        }
    }

    #[test]
    fn best_is_the_highest_valid_revision_and_a_stream_wins_a_tie() {
        let all = vec![
            s("a", Method::Stream, 10, true),
            s("b", Method::RawCopy, 12, true),
            s("c", Method::Stream, 99, false),
            s("d", Method::Stream, 12, true),
        ];
        assert_eq!(best(&all).unwrap().node, "d");
        let raw_only = vec![
            s("b", Method::RawCopy, 12, true),
            s("a", Method::Stream, 10, true),
        ];
        assert_eq!(best(&raw_only).unwrap().node, "b");
        assert!(best(&[s("c", Method::Stream, 99, false)]).is_none());
        assert!(best(&[]).is_none());
    }
}
