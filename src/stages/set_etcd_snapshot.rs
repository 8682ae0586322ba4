//! `set-etcd-snapshot`: the set's etcd snapshot, taken as `snapshot` takes one (stream, verify,
//! atomic rename, sidecar) but stored as `sets/<label>.snapshot`, outside the scheduled naming
//! pattern, so `prune` never deletes it while the set exists.
//!
//! The manifest is written here first (status `incomplete`), so even a run that stops later
//! leaves a set that `sets list` shows and `sets delete` can remove.

use std::path::PathBuf;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::upgrade_preflight::{UpgradePreflightOutputs, identity, manifest, plan_label};
use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::backup::{self, BackupOptions, Destination, OffsiteOutcome, OffsitePolicy};
use crate::error::UserError;
use crate::sets::{self, SetEtcd};
use crate::snapshot::store;
use crate::snapshot::verify::{self, Trailer};

pub struct SetEtcdSnapshot;

impl Stage for SetEtcdSnapshot {
    fn kind(&self) -> &'static str {
        "set-etcd-snapshot"
    }
    fn title(&self) -> &'static str {
        "take a verified etcd snapshot for the set"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        let path = sets::etcd_path(&plan.profile.sets_dir(), &plan_label(plan));
        vec![
            plan.talos.render(
                Some("<first CP that answers>"),
                &["etcd", "snapshot", &path.display().to_string()],
            ) + "   (verified, then renamed into place)",
        ]
    }
    fn requires(&self) -> &'static [&'static str] {
        &[UpgradePreflightOutputs::KIND]
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SetEtcdOutputs {
    pub etcd: Option<SetEtcd>,
    /// `None` without `[offsite]`.
    pub offsite: Option<OffsiteCopy>,
    /// An interrupted attempt had already stored the snapshot.
    pub reused: bool,
    pub manifest: Option<PathBuf>,
}

impl StageData for SetEtcdOutputs {
    const KIND: &'static str = "set-etcd-snapshot";
}

/// The off-site copy of the set's etcd snapshot; a failure is recorded, not fatal.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OffsiteCopy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl OffsiteCopy {
    fn failed(e: impl ToString) -> Option<Self> {
        Some(Self {
            error: Some(e.to_string()),
            ..Self::default()
        })
    }
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
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
    let offsite = upload(ctx, &path).await?;
    StageOutcome::done(&SetEtcdOutputs {
        etcd: Some(etcd),
        offsite,
        reused,
        manifest: Some(sets::manifest_path(&sets_dir, &id.label)),
    })
}

/// With `[offsite]`, a copy of the set's etcd snapshot goes off the cluster too (packed as the
/// profile says). Its name is outside the scheduled pattern, so remote retention never deletes it.
/// A failed upload is a warning: the set is complete locally and the VM snapshots matter more now.
async fn upload(ctx: &StageCtx<'_>, path: &std::path::Path) -> anyhow::Result<Option<OffsiteCopy>> {
    if let Some(url) = ctx.own::<SetEtcdOutputs>()?.offsite.and_then(|o| o.url) {
        return Ok(Some(OffsiteCopy {
            url: Some(url),
            reused: true,
            ..OffsiteCopy::default()
        }));
    }
    let opts = BackupOptions {
        destination: Destination::Stored(path.to_path_buf()),
        offsite: OffsitePolicy::BestEffort,
        prune: false,
        ..BackupOptions::default()
    };
    let done = match backup::run(ctx.profile(), ctx.talos(), &opts, ctx.reporter).await {
        Ok(done) => done,
        Err(e) => return Ok(OffsiteCopy::failed(e)),
    };
    Ok(match done.offsite {
        None => None,
        Some(OffsiteOutcome::Uploaded(u)) => Some(OffsiteCopy {
            url: Some(u.url),
            elapsed_ms: Some(u.elapsed_ms),
            ..OffsiteCopy::default()
        }),
        Some(OffsiteOutcome::Unavailable(e)) => {
            ctx.reporter.warn(&format!(
                "no off-site copy of the set's etcd snapshot: [offsite]: {e}"
            ));
            OffsiteCopy::failed(e)
        }
        Some(OffsiteOutcome::Failed(e)) => {
            ctx.reporter.warn(&format!(
                "the off-site copy of the set's etcd snapshot failed ({e}); the set is complete locally"
            ));
            OffsiteCopy::failed(e)
        }
    })
}
