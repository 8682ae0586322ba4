//! `set-retention`: after a successful new set, delete complete sets beyond
//! `proxmox.keep_sets` (newest kept). Only snapshots talos-dr made for a set's label are
//! deleted; a VM's other snapshots are never touched. Best effort in the playbook: a failure
//! here is a warning, the new set stands.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::upgrade_preflight::{UpgradePreflightOutputs, identity};
use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::error::UserError;
use crate::sets::{self, RetentionCandidate, RetentionDecision};

pub struct SetRetention;

impl Stage for SetRetention {
    fn kind(&self) -> &'static str {
        "set-retention"
    }
    fn title(&self) -> &'static str {
        "delete sets beyond proxmox.keep_sets"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        vec![format!(
            "delete complete sets beyond proxmox.keep_sets = {} (DELETE …/snapshot/talosdr-<old label>-… only)",
            plan.profile
                .file
                .proxmox
                .as_ref()
                .map_or(3, |p| p.keep_sets)
        )]
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
pub struct SetRetentionOutputs {
    pub keep_sets: usize,
    pub decisions: Vec<RetentionDecision>,
    pub deleted: Vec<DeletedSet>,
}

impl StageData for SetRetentionOutputs {
    const KIND: &'static str = "set-retention";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedSet {
    pub label: String,
    pub report: sets::DeleteReport,
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let id = identity(ctx)?;
    let cfg = ctx.profile().file.proxmox.clone().unwrap_or_default();
    let dir = ctx.profile().sets_dir();
    let manifests: Vec<sets::SetManifest> = sets::list(&dir)
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    let candidates: Vec<RetentionCandidate> = manifests
        .iter()
        .map(|m| RetentionCandidate {
            label: m.label.clone(),
            created_at: m.created_at,
            status: m.status,
        })
        .collect();
    let decisions = sets::retention(&candidates, cfg.keep_sets, Some(&id.label));
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for d in decisions.iter().filter(|d| !d.keep) {
        let Some(m) = manifests.iter().find(|m| m.label == d.label) else {
            continue;
        };
        ctx.reporter.info(&format!(
            "retention: deleting set {} ({})",
            d.label, d.reason
        ));
        match sets::delete_set(
            ctx.services.pve.as_ref(),
            &dir,
            m,
            cfg.max_parallel,
            ctx.reporter,
        )
        .await
        {
            Ok(r) if r.errors.is_empty() => deleted.push(DeletedSet {
                label: d.label.clone(),
                report: r,
            }),
            Ok(r) => errors.extend(r.errors.iter().map(|e| format!("set {}: {e}", d.label))),
            Err(e) => errors.push(format!("set {}: {e}", d.label)),
        }
    }
    if !errors.is_empty() {
        return Err(UserError::failed(format!(
            "retention could not delete every old set:\n  - {}",
            errors.join("\n  - ")
        ))
        .hint("see `talos-dr sets list`; `talos-dr sets delete LABEL` retries one set")
        .into());
    }
    StageOutcome::done(&SetRetentionOutputs {
        keep_sets: cfg.keep_sets,
        decisions,
        deleted,
    })
}
