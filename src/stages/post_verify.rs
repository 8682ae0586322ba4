//! `post-verify`: `talosctl health` with the expected nodes pinned, then Kubernetes itself:
//! every node Ready (real kubectl) and a summary of pods that are not running.

use std::time::Instant;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::post_verify_kube::KubeCheck;
use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::error::UserError;
use crate::ui::{self, Event};

pub struct PostVerify;

impl Stage for PostVerify {
    fn kind(&self) -> &'static str {
        "post-verify"
    }
    fn title(&self) -> &'static str {
        "verify the cluster with talosctl and kubectl"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        let profile = plan.profile;
        let cp = profile.control_plane_addresses();
        let first = cp.first().cloned().unwrap_or_default();
        let wait = format!("{}s", plan.inputs.health_timeout().as_secs());
        let mut args = vec!["health", "--wait-timeout", &wait];
        let cps = cp.join(",");
        let wk = profile.worker_addresses().join(",");
        if !cps.is_empty() {
            args.extend(["--control-plane-nodes", &cps]);
        }
        if !wk.is_empty() {
            args.extend(["--worker-nodes", &wk]);
        }
        vec![
            plan.talos.render(Some(&first), &args),
            format!(
                "kubectl --kubeconfig {} get nodes -o json   (all Ready)",
                profile.kubeconfig().display()
            ),
            format!(
                "kubectl --kubeconfig {} get pods -A -o json   (summary)",
                profile.kubeconfig().display()
            ),
        ]
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PostVerifyOutputs {
    pub health: HealthPassed,
    pub kubernetes: KubeCheck,
}

impl StageData for PostVerifyOutputs {
    const KIND: &'static str = "post-verify";
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HealthPassed {
    pub ok: bool,
    pub elapsed_ms: u64,
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let p = ctx.profile();
    let cp = p.control_plane_addresses();
    let workers = p.worker_addresses();
    let wait = ctx.inputs.health_timeout();
    let started = Instant::now();
    ctx.reporter.report(Event::WaitStarted {
        key: "health".into(),
        message: format!(
            "waiting for `talosctl health` on {} (up to {}s)",
            cp[0],
            wait.as_secs()
        ),
    });
    let r = ctx.talos().health(&cp[0], &cp, &workers, wait).await;
    ctx.reporter.report(Event::WaitFinished {
        key: "health".into(),
        ok: r.is_ok(),
        message: if r.is_ok() {
            "talosctl health passed".into()
        } else {
            "talosctl health failed".into()
        },
        elapsed_ms: ui::ms(started.elapsed()),
    });
    if let Err(e) = r {
        return Err(UserError::failed(format!(
            "the restored cluster is not healthy yet:\n  {}",
            e.stderr().lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n  ")
        ))
        .hint("etcd is restored; give the cluster a few minutes and run `talos-dr resume` to check again")
        .into());
    }
    let kube = match &ctx.services.kubectl {
        Some(k) => super::post_verify_kube::check(ctx, k).await?,
        None => {
            ctx.reporter.warn(&format!(
                "no kubeconfig at {}: Kubernetes nodes and pods were not checked",
                p.kubeconfig().display()
            ));
            KubeCheck::default()
        }
    };
    StageOutcome::done(&PostVerifyOutputs {
        health: HealthPassed {
            ok: true,
            elapsed_ms: ui::ms(started.elapsed()),
        },
        kubernetes: kube,
    })
}
