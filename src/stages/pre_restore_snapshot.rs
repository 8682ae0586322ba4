//! `pre-restore-snapshot`: before anything is wiped, salvage what every reachable control-plane
//! node still holds (`crate::salvage`: a streamed snapshot, else a raw copy of the database),
//! into `runs/<run-id>/salvage/`, verified, so the restore itself can be undone and a survivor's
//! newer data is never thrown away unnoticed. When a salvaged copy is newer than the snapshot
//! being restored, the user is asked (or, with `--yes`, warned) before going on.

use std::path::PathBuf;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::preflight::PreflightOutputs;
use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::error::{Exit, UserError};
use crate::salvage::{self, SalvageOptions, Salvaged};
use crate::snapshot::verify::Status;

pub struct PreRestoreSnapshot;

impl Stage for PreRestoreSnapshot {
    fn kind(&self) -> &'static str {
        "pre-restore-snapshot"
    }
    fn title(&self) -> &'static str {
        "salvage what every reachable control-plane node still holds"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        let mut v = Vec::new();
        for n in plan.inputs.control_plane(plan.profile) {
            v.push(
                plan.talos.render(
                    Some(&n),
                    &[
                        "etcd",
                        "snapshot",
                        &format!("runs/<run-id>/salvage/{n}.snapshot"),
                    ],
                ) + "   (at most 60s)",
            );
            v.push(
                plan.talos.render(
                    Some(&n),
                    &[
                        "cp",
                        crate::talos::ETCD_DB,
                        &format!("runs/<run-id>/salvage/{n}-db-1"),
                    ],
                ) + "   (only if the snapshot fails)",
            );
        }
        v.push("verify every copy; if one is newer than the snapshot: ask before going on".into());
        v
    }
    fn requires(&self) -> &'static [&'static str] {
        &[PreflightOutputs::KIND]
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

/// What was salvaged. `path` is the best valid copy (the field older releases wrote for their
/// single pre-restore snapshot).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PreRestoreOutputs {
    pub path: Option<PathBuf>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// One entry per reachable control-plane node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub salvaged: Vec<Salvaged>,
    /// The best salvaged copy holds a newer revision than the snapshot being restored.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub newer_than_snapshot: bool,
}

impl StageData for PreRestoreOutputs {
    const KIND: &'static str = "pre-restore-snapshot";
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let preflight = ctx.output::<PreflightOutputs>()?;
    // The nodes that answered in the preflight (unreachable ones stopped the run there).
    let nodes: Vec<String> = ctx
        .control_plane()
        .into_iter()
        .filter(|n| preflight.etcd.contains_key(n))
        .collect();
    if nodes.is_empty() {
        return Ok(StageOutcome::Skipped(
            "no control-plane node answers, so there is nothing to save".into(),
        ));
    }
    let running: Vec<String> = preflight
        .etcd
        .iter()
        .filter(|(_, e)| e.state == "Running")
        .map(|(n, _)| n.clone())
        .collect();
    let dir = ctx.journal.dir().join("salvage");
    let all = salvage::salvage(
        ctx.talos(),
        &nodes,
        &running,
        &dir,
        &SalvageOptions::default(),
        ctx.reporter,
    )
    .await
    .map_err(|e| UserError::failed(format!("cannot create {}: {e}", dir.display())))?;
    ctx.reporter.info(&format!(
        "salvaged before the restore (in {}):\n{}",
        dir.display(),
        table(&all)
    ));
    let best = salvage::best(&all).cloned();
    let restoring = preflight
        .snapshot
        .as_ref()
        .and_then(|s| s.status)
        .map(|s| s.revision);
    let newer = match (&best, restoring) {
        (Some(b), Some(r)) => b.revision.is_some_and(|b| b > r),
        _ => false,
    };
    // Recorded before asking: a declined run still shows what was saved.
    let record = PreRestoreOutputs {
        path: best.as_ref().and_then(|b| b.path.clone()),
        node: best.as_ref().map(|b| b.node.clone()),
        salvaged: all,
        newer_than_snapshot: newer,
        ..PreRestoreOutputs::default()
    };
    ctx.update(|r: &mut PreRestoreOutputs| *r = record.clone())?;
    if let (true, Some(b)) = (newer, &best) {
        ask_about_newer_data(ctx, b, restoring.unwrap_or_default())?;
    }
    if best.is_none() {
        ctx.reporter.warn(
            "nothing restorable could be saved from any control-plane node before the restore",
        );
    }
    StageOutcome::done(&record)
}

fn ask_about_newer_data(ctx: &StageCtx<'_>, best: &Salvaged, restoring: i64) -> anyhow::Result<()> {
    let path = best
        .path
        .as_ref()
        .map_or_else(String::new, |p| p.display().to_string());
    let cli = ctx.profile().cli();
    let method = best.method.map_or("?", |m| m.as_str());
    ctx.reporter.warn(&format!(
        "node {} still holds revision {} ({method} copy, {path}), newer than the snapshot being restored (revision {restoring}). Restoring the snapshot discards every change in between.",
        best.node,
        best.revision.unwrap_or_default(),
    ));
    let instead = format!(
        "restore from the survivor instead: `{cli} restore --snapshot {path}` (or `{cli} restore --from-survivor`)"
    );
    match ctx
        .prompter
        .confirm("A survivor holds newer data. Restore the older snapshot anyway?")?
    {
        Some(true) => Ok(()),
        answer => Err(UserError::new(
            Exit::Declined,
            if answer.is_none() {
                format!(
                    "stage {} needs a confirmation (a survivor holds newer data than the snapshot), but there is no terminal to ask on",
                    ctx.spec.id
                )
            } else {
                format!(
                    "declined at stage {}: nothing was reset; the salvaged copies are kept",
                    ctx.spec.id
                )
            },
        )
        .hint(instead)
        .hint("or pass --yes to restore the older snapshot anyway")
        .into()),
    }
}

/// NODE METHOD REVISION KEYS VALID PATH, for messages and `talos-dr salvage`.
pub fn table(all: &[Salvaged]) -> String {
    let mut rows = vec![
        ["NODE", "METHOD", "REVISION", "KEYS", "VALID", "PATH"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for s in all {
        rows.push(vec![
            s.node.clone(),
            s.method.map_or("-".into(), |m| m.as_str().to_owned()),
            s.revision.map_or("-".into(), |r| r.to_string()),
            s.keys.map_or("-".into(), |k| k.to_string()),
            if s.valid { "yes" } else { "no" }.into(),
            s.path
                .as_ref()
                .map_or_else(|| s.errors.join("; "), |p| p.display().to_string()),
        ]);
    }
    crate::table::render(&rows)
}
