//! Applying retention to a backup directory: decide with [`retention::apply`], then delete.

use std::path::{Path, PathBuf};

use jiff::Timestamp;

use super::retention::{self, Candidate, Decision, KeepPolicy};
use super::{store, verify};

#[derive(Debug, Clone, serde::Serialize)]
pub struct PruneOutcome {
    pub decisions: Vec<Decision>,
    pub deleted: Vec<PathBuf>,
    /// Files that should have been deleted but could not be.
    pub errors: Vec<String>,
}

/// Whether a stored snapshot is valid: its sidecar says so (if it still describes the file),
/// else a fresh verification decides.
pub fn is_valid(entry: &store::Entry) -> bool {
    match &entry.sidecar {
        Some(s) if s.stored_size() == entry.size => s.valid,
        // A packed file cannot be re-verified without its identity: no sidecar, no trust.
        _ if !crate::pack::split_name(&entry.name).1.is_empty() => false,
        _ => verify::verify_file(&entry.path).is_ok_and(|r| r.valid),
    }
}

pub fn prune(
    dir: &Path,
    policy: KeepPolicy,
    now: Timestamp,
    dry_run: bool,
) -> std::io::Result<PruneOutcome> {
    let entries = store::list(dir)?;
    let candidates: Vec<Candidate> = entries
        .iter()
        .map(|e| Candidate {
            name: e.name.clone(),
            taken_at: e.taken_at,
            valid: is_valid(e),
        })
        .collect();
    let decisions = retention::apply(policy, &candidates, now);
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    if !dry_run {
        for d in decisions.iter().filter(|d| !d.keep) {
            let path = dir.join(&d.name);
            match store::remove(&path) {
                Ok(()) => deleted.push(path),
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            }
        }
    }
    Ok(PruneOutcome {
        decisions,
        deleted,
        errors,
    })
}
