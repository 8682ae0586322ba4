//! `set-etcd-snapshot`: the set's etcd snapshot, taken as `snapshot` takes one (stream, verify,
//! atomic rename, sidecar) but stored as `sets/<label>.snapshot`, outside the scheduled naming
//! pattern, so `prune` never deletes it while the set exists.
//!
//! The manifest is written here first (status `incomplete`), so even a run that stops later
//! leaves a set that `sets list` shows and `sets delete` can remove.

use serde_json::json;

use super::upgrade_preflight::{identity, manifest};
use super::{StageCtx, StageOutcome};
use crate::backup::{self, BackupOptions, Destination, OffsiteOutcome, OffsitePolicy};
use crate::error::UserError;
use crate::sets::{self, SetEtcd};
use crate::snapshot::store;
use crate::snapshot::verify::{self, Trailer};

pub async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let id = identity(ctx)?;
    let sets_dir = ctx.profile().sets_dir();
    let path = sets::etcd_path(&sets_dir, &id.label);
    let mut m = manifest(ctx, &id)?;

    // A previous attempt of this run may have stored it before being interrupted.
    let reused = ctx.resumed
        && verify::verify_file(&path).is_ok_and(|r| r.valid && r.trailer == Trailer::Ok)
        && store::read_sidecar(&path).is_some();
    if !reused && path.exists() {
        if ctx.resumed {
            store::remove(&path)?;
        } else {
            return Err(UserError::usage(format!(
                "{} already exists but belongs to no set of this run",
                path.display()
            ))
            .hint("move it away or delete it, then run pre-upgrade again")
            .into());
        }
    }
    let (sha256, size, revision, node) = if reused {
        let sc = store::read_sidecar(&path).expect("checked above");
        (sc.sha256, sc.size, sc.status.map(|s| s.revision), sc.node)
    } else {
        // Stored plain and never pruned; the copy off-site waits until the manifest records it.
        let opts = BackupOptions {
            destination: Destination::File(path.clone()),
            // The preflight has just run `talosctl health`.
            skip_health: true,
            offsite: OffsitePolicy::Skip,
            prune: false,
            ..BackupOptions::default()
        };
        crate::fsutil::create_private_dir(&sets_dir)?;
        let taken = backup::run(ctx.profile(), ctx.talos(), &opts, ctx.reporter).await?;
        (
            taken.sidecar.sha256,
            taken.sidecar.size,
            taken.sidecar.status.map(|s| s.revision),
            taken.sidecar.node,
        )
    };
    let etcd = SetEtcd {
        path: path.clone(),
        sha256,
        size,
        revision,
        node,
    };
    m.etcd = Some(etcd.clone());
    sets::save(&sets_dir, &m)?;
    ctx.reporter.info(&format!(
        "etcd snapshot of set {} stored at {}",
        id.label,
        path.display()
    ));
    let offsite = upload(ctx, &path).await;
    Ok(StageOutcome::Done(json!({
        "etcd": etcd,
        "offsite": offsite,
        "reused": reused,
        "manifest": sets::manifest_path(&sets_dir, &id.label),
    })))
}

/// With `[offsite]`, a copy of the set's etcd snapshot goes off the cluster too (packed as the
/// profile says). Its name is outside the scheduled pattern, so remote retention never deletes it.
/// A failed upload is a warning: the set is complete locally and the VM snapshots matter more now.
async fn upload(ctx: &StageCtx<'_>, path: &std::path::Path) -> serde_json::Value {
    if let Some(url) = ctx.own_outputs()["offsite"]["url"].as_str() {
        return json!({ "url": url, "reused": true });
    }
    let opts = BackupOptions {
        destination: Destination::Stored(path.to_path_buf()),
        offsite: OffsitePolicy::BestEffort,
        prune: false,
        ..BackupOptions::default()
    };
    let done = match backup::run(ctx.profile(), ctx.talos(), &opts, ctx.reporter).await {
        Ok(done) => done,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    match done.offsite {
        None => serde_json::Value::Null,
        Some(OffsiteOutcome::Uploaded(u)) => json!({ "url": u.url, "elapsed_ms": u.elapsed_ms }),
        Some(OffsiteOutcome::Unavailable(e)) => {
            ctx.reporter.warn(&format!(
                "no off-site copy of the set's etcd snapshot: [offsite]: {e}"
            ));
            json!({ "error": e.to_string() })
        }
        Some(OffsiteOutcome::Failed(e)) => {
            ctx.reporter.warn(&format!(
                "the off-site copy of the set's etcd snapshot failed ({e}); the set is complete locally"
            ));
            json!({ "error": e.to_string() })
        }
    }
}
