//! `pre-restore-snapshot`: if any control-plane etcd still answers, save its current state first,
//! so the restore itself can be undone. Best effort: a failure is recorded, not fatal.

use serde_json::json;

use super::{StageCtx, StageOutcome};
use crate::engine::playbook::StageKind;
use crate::snapshot::take::{self, TakeOptions};
use crate::snapshot::verify;

pub async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let target = ctx.journal.dir().join("pre-restore.snapshot");
    // A previous attempt may have finished the file before being interrupted.
    if ctx.resumed && verify::verify_file(&target).is_ok_and(|r| r.valid) {
        return Ok(StageOutcome::Done(
            json!({ "path": target, "reused": true }),
        ));
    }
    let _ = std::fs::remove_file(&target);
    let preflight = ctx.outputs_of(StageKind::Preflight);
    let answering: Vec<String> = preflight["etcd"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v["state"] == "Running" && v["health"] == "OK")
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    let Some(node) = answering.first() else {
        return Ok(StageOutcome::Skipped(
            "no control-plane etcd answers, so there is no current state to save".into(),
        ));
    };
    let opts = TakeOptions {
        node: Some(node.clone()),
        output: Some(target.clone()),
        skip_health: true,
        ..TakeOptions::default()
    };
    let taken = take::take(ctx.profile(), ctx.talos(), &opts, ctx.reporter).await?;
    Ok(StageOutcome::Done(json!({
        "path": taken.path,
        "node": node,
        "sha256": taken.sidecar.sha256,
        "status": taken.sidecar.status,
    })))
}
