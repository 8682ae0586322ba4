//! `pre-restore-snapshot`: if any control-plane etcd still answers, save its current state first,
//! so the restore itself can be undone. Best effort: a failure is recorded, not fatal.

use std::path::PathBuf;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::preflight::PreflightOutputs;
use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::snapshot::take::{self, TakeOptions};
use crate::snapshot::verify::{self, Status};

pub struct PreRestoreSnapshot;

impl Stage for PreRestoreSnapshot {
    fn kind(&self) -> &'static str {
        "pre-restore-snapshot"
    }
    fn title(&self) -> &'static str {
        "save the current etcd state, if any node still serves it"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        vec![
            plan.talos.render(
                Some("<first CP whose etcd answers>"),
                &["etcd", "snapshot", "runs/<run-id>/pre-restore.snapshot"],
            ),
            "skipped when no control-plane etcd answers".into(),
        ]
    }
    fn requires(&self) -> &'static [&'static str] {
        &[PreflightOutputs::KIND]
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

/// Where the state before the restore was saved.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PreRestoreOutputs {
    pub path: Option<PathBuf>,
    /// An interrupted attempt had already finished the file.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl StageData for PreRestoreOutputs {
    const KIND: &'static str = "pre-restore-snapshot";
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let target = ctx.journal.dir().join("pre-restore.snapshot");
    // A previous attempt may have finished the file before being interrupted.
    if ctx.resumed && verify::verify_file(&target).is_ok_and(|r| r.valid) {
        return StageOutcome::done(&PreRestoreOutputs {
            path: Some(target),
            reused: true,
            ..PreRestoreOutputs::default()
        });
    }
    let _ = std::fs::remove_file(&target);
    let preflight = ctx.output::<PreflightOutputs>()?;
    let Some(node) = preflight.serving().into_iter().next() else {
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
    StageOutcome::done(&PreRestoreOutputs {
        path: Some(taken.path),
        reused: false,
        node: Some(node),
        sha256: Some(taken.sidecar.sha256),
        status: taken.sidecar.status,
    })
}
