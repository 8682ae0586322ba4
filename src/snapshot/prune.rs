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

/// Re-reads a snapshot the floor depends on: a plain one is verified in full and must still match
/// its sidecar's sha256; a packed one (no identity here) must still match its packed sha256.
/// Catches bit rot that kept the file size, which the sidecar alone cannot.
pub fn recheck(entry: &store::Entry) -> bool {
    let Some(sidecar) = &entry.sidecar else {
        return is_valid(entry);
    };
    match &sidecar.packed {
        Some(p) => sha256_file(&entry.path).is_ok_and(|h| h == p.sha256),
        None => {
            verify::verify_file(&entry.path).is_ok_and(|r| r.valid && r.sha256 == sidecar.sha256)
        }
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

pub fn prune(
    dir: &Path,
    policy: KeepPolicy,
    now: Timestamp,
    dry_run: bool,
) -> std::io::Result<PruneOutcome> {
    let entries = store::list(dir)?;
    let mut candidates: Vec<Candidate> = entries
        .iter()
        .map(|e| Candidate {
            name: e.name.clone(),
            taken_at: e.taken_at,
            valid: is_valid(e),
        })
        .collect();
    // Nothing that fails verification is pruned in favour of: before anything is deleted, the
    // snapshots that fill the keep_last floor or a calendar rule are re-read, and any that no longer verify give up
    // their place (then the decision is made again).
    let mut rechecked = std::collections::HashSet::new();
    let decisions = loop {
        let decisions = retention::apply(policy, &candidates, now);
        if decisions.iter().all(|d| d.keep) {
            break decisions;
        }
        let floor: Vec<String> = decisions
            .iter()
            .filter(|d| d.keep && d.reasons.iter().any(|r| retention::is_counted_reason(r)))
            .map(|d| d.name.clone())
            .filter(|n| rechecked.insert(n.clone()))
            .collect();
        let mut demoted = false;
        for name in floor {
            let entry = entries.iter().find(|e| e.name == name);
            if !entry.is_some_and(recheck)
                && let Some(c) = candidates.iter_mut().find(|c| c.name == name)
            {
                c.valid = false;
                demoted = true;
            }
        }
        if !demoted {
            break decisions;
        }
    };
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
