//! `post-verify`: `talosctl health` with the expected nodes pinned, then Kubernetes itself:
//! every node Ready (real kubectl) and a summary of pods that are not running.

use std::time::Instant;

use serde_json::json;

use super::{StageCtx, StageOutcome};
use crate::error::UserError;
use crate::ui::{self, Event};

pub async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
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
            json!({ "checked": false })
        }
    };
    Ok(StageOutcome::Done(json!({
        "health": { "ok": true, "elapsed_ms": ui::ms(started.elapsed()) },
        "kubernetes": kube,
    })))
}
