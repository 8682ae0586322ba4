//! `wait-healthy`: after the rollback, wait until a control-plane node answers and
//! `talosctl health` passes. Skipped with `--no-start` (the VMs stay stopped).

use std::time::Instant;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Plan, Poller, Stage, StageCtx, StageData, StageOutcome};
use crate::error::UserError;
use crate::snapshot::take;
use crate::ui::{self, Event, NoopReporter};

pub struct WaitHealthy;

impl Stage for WaitHealthy {
    fn kind(&self) -> &'static str {
        "wait-healthy"
    }
    fn title(&self) -> &'static str {
        "wait for talosctl health"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        if plan.inputs.no_start {
            return vec!["skipped: --no-start leaves the VMs stopped".into()];
        }
        let cp = plan.profile.control_plane_addresses();
        let wait = format!("{}s", plan.inputs.health_timeout().as_secs());
        vec![plan.talos.render(
            cp.first().map(String::as_str),
            &["health", "--wait-timeout", &wait],
        )]
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WaitHealthyOutputs {
    pub node: Option<String>,
    pub elapsed_ms: u64,
}

impl StageData for WaitHealthyOutputs {
    const KIND: &'static str = "wait-healthy";
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    if ctx.inputs.no_start {
        return Ok(StageOutcome::Skipped(
            "--no-start: the VMs were left stopped".into(),
        ));
    }
    let profile = ctx.profile();
    let budget = ctx.inputs.health_timeout();
    let started = Instant::now();
    ctx.reporter.report(Event::WaitStarted {
        key: "health".into(),
        message: "waiting for the rolled-back VMs to boot and the cluster to be healthy".into(),
    });
    // The VMs are booting: keep asking until one control-plane node answers.
    let mut poller = Poller::new(budget, ctx.inputs.poll_max());
    let node = loop {
        if let Ok((n, _)) = take::pick_node(profile, ctx.talos(), None, &NoopReporter).await {
            break Some(n);
        }
        if !poller.wait().await {
            break None;
        }
    };
    let result = match &node {
        None => Err("no control-plane node answered".to_owned()),
        Some(n) => ctx
            .talos()
            .health(
                n,
                &profile.control_plane_addresses(),
                &profile.worker_addresses(),
                budget.saturating_sub(started.elapsed()),
            )
            .await
            .map_err(|e| {
                e.stderr()
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("talosctl health failed")
                    .to_owned()
            }),
    };
    ctx.reporter.report(Event::WaitFinished {
        key: "health".into(),
        ok: result.is_ok(),
        message: match &result {
            Ok(()) => "cluster is healthy".into(),
            Err(e) => format!("cluster is not healthy: {e}"),
        },
        elapsed_ms: ui::ms(started.elapsed()),
    });
    match result {
        Ok(()) => StageOutcome::done(&WaitHealthyOutputs {
            node,
            elapsed_ms: ui::ms(started.elapsed()),
        }),
        Err(e) => Err(UserError::failed(format!(
            "the cluster is not healthy {}s after the rollback: {e}",
            started.elapsed().as_secs()
        ))
        .hint("check the VM consoles; `talos-dr resume` waits again")
        .into()),
    }
}
