//! `set-retention`: after a successful new set, delete complete sets beyond
//! `proxmox.keep_sets` (newest kept). Only snapshots talos-dr made for a set's label are
//! deleted; a VM's other snapshots are never touched. Best effort in the playbook: a failure
//! here is a warning, the new set stands.

use serde_json::json;

use super::upgrade_preflight::identity;
use super::{StageCtx, StageOutcome};
use crate::error::UserError;
use crate::sets::{self, RetentionCandidate};

pub async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
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
            Ok(r) if r.errors.is_empty() => deleted.push(json!({ "label": d.label, "report": r })),
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
    Ok(StageOutcome::Done(json!({
        "keep_sets": cfg.keep_sets,
        "decisions": decisions,
        "deleted": deleted,
    })))
}
