//! `post-verify`: `talosctl health` with the expected nodes pinned, then Kubernetes itself:
//! every node Ready (real kubectl), a summary of pods that are not running, and the live objects
//! compared with the restored snapshot (`post_verify_compare`): an object of a checked kind that
//! the snapshot holds and the cluster does not list fails the stage.

use std::time::Instant;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::post_verify_kube::KubeCheck;
use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::error::UserError;
use crate::snapshot::compare::Comparison;
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
        let cp = plan.inputs.control_plane(profile);
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
            format!(
                "kubectl --kubeconfig {} get namespaces,deployments.apps,… -A -o json   (compared with the restored snapshot)",
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
    /// The live objects against the restored snapshot; `None` without a kubeconfig or when the
    /// file could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// `--exclude`d control-plane nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
    /// Their Kubernetes Node objects, deleted after a confirmation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deleted_node_objects: Vec<String>,
    /// Why `talosctl health` was not run (the Node objects were kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_skipped: Option<String>,
    /// How to bring each left-out node back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bring_back: Vec<String>,
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
    let cp = ctx.control_plane();
    let workers = p.worker_addresses();
    let wait = ctx.inputs.health_timeout();
    let started = Instant::now();
    // A node left out comes back as a Kubernetes Node object from the snapshot, and `talosctl
    // health` cannot pass while it exists (talos.md §13.8).
    let stale = stale_node_objects(ctx).await?;
    let mut health_skipped = None;
    if !stale.is_empty() {
        health_skipped = remove_stale_nodes(ctx, &stale).await?;
    }
    if let Some(why) = &health_skipped {
        ctx.reporter.warn(why);
    } else {
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
    }
    let (kube, comparison) = match &ctx.services.kubectl {
        Some(k) => (
            super::post_verify_kube::check(ctx, k).await?,
            super::post_verify_compare::run(ctx, k).await?,
        ),
        None => {
            ctx.reporter.warn(&format!(
                "no kubeconfig at {}: Kubernetes nodes, pods and objects were not checked",
                p.kubeconfig().display()
            ));
            (KubeCheck::default(), None)
        }
    };
    let bring_back: Vec<String> = ctx
        .inputs
        .exclude
        .iter()
        .map(|n| bring_back_advice(ctx, n))
        .collect();
    for b in &bring_back {
        ctx.reporter.info(b);
    }
    let outputs = PostVerifyOutputs {
        health: HealthPassed {
            ok: health_skipped.is_none(),
            elapsed_ms: ui::ms(started.elapsed()),
        },
        kubernetes: kube,
        comparison,
        excluded: ctx.inputs.exclude.clone(),
        deleted_node_objects: stale
            .iter()
            .filter(|_| health_skipped.is_none())
            .cloned()
            .collect(),
        health_skipped,
        bring_back,
    };
    if let Some(c) = &outputs.comparison {
        if !c.passed {
            // Kept in the failed stage's record, for `runs show` and the report.
            ctx.update(|o: &mut PostVerifyOutputs| *o = outputs.clone())?;
            return Err(UserError::failed(c.failure())
                .hint("etcd is restored, but the API server does not list these objects: check that kube-apiserver restarted after the restore (an old one serves its cache) and what deleted them; `talos-dr resume` compares again")
                .into());
        }
        ctx.reporter
            .info(&format!("compared with the snapshot: {}", c.one_line()));
    }
    StageOutcome::done(&outputs)
}

/// Kubernetes Node objects of `--exclude`d nodes (by hostname or address).
async fn stale_node_objects(ctx: &StageCtx<'_>) -> anyhow::Result<Vec<String>> {
    let (Some(kubectl), false) = (&ctx.services.kubectl, ctx.inputs.exclude.is_empty()) else {
        return Ok(Vec::new());
    };
    let wanted: Vec<(String, Option<String>)> = ctx
        .profile()
        .file
        .nodes
        .iter()
        .filter(|n| ctx.inputs.exclude.contains(&n.address))
        .map(|n| (n.address.clone(), n.hostname.clone()))
        .collect();
    // The API server may still be starting: a failure here is retried by waiting for nodes.
    let nodes = match kubectl.nodes().await {
        Ok(n) => n,
        Err(_) => {
            let cp = ctx.control_plane();
            kubectl
                .wait_nodes_ready(&cp, ctx.inputs.health_timeout(), ctx.reporter)
                .await
                .map_err(|e| UserError::failed(format!("Kubernetes is not back yet: {e}")))?
        }
    };
    Ok(nodes
        .into_iter()
        .filter(|k| {
            wanted.iter().any(|(addr, host)| {
                k.addresses.contains(addr) || host.as_deref() == Some(k.name.as_str())
            })
        })
        .map(|k| k.name)
        .collect())
}

/// Asks before deleting the Node objects; `Some(reason)` when they stay (then `talosctl health`
/// is skipped, said so, and etcd plus the other nodes are checked instead).
async fn remove_stale_nodes(
    ctx: &StageCtx<'_>,
    stale: &[String],
) -> anyhow::Result<Option<String>> {
    let names = stale.join(", ");
    let answer = ctx.prompter.confirm(&format!(
        "Kubernetes still has Node object(s) {names} for the node(s) left out (restored from the snapshot; their VMs are gone). `talosctl health` cannot pass while they exist. Delete them (`kubectl delete node`)?"
    ))?;
    if answer != Some(true) {
        return Ok(Some(format!(
            "`talosctl health` was not run: it cannot pass while Node object(s) {names} of the left-out node(s) exist. Delete them with `kubectl delete node {names}` when you are ready; etcd membership and the other nodes were checked instead"
        )));
    }
    let kubectl = ctx
        .services
        .kubectl
        .as_ref()
        .expect("checked by the caller");
    for name in stale {
        kubectl.delete_node(name).await.map_err(|e| {
            UserError::failed(format!("cannot delete Node object {name}: {e}"))
                .hint("delete it by hand (`kubectl delete node NAME`), then `talos-dr resume`")
        })?;
        ctx.reporter
            .info(&format!("deleted Kubernetes Node object {name}"));
    }
    Ok(None)
}

/// How to bring a left-out node back after the restore.
fn bring_back_advice(ctx: &StageCtx<'_>, node: &str) -> String {
    let vm = ctx
        .profile()
        .file
        .nodes
        .iter()
        .find(|n| n.address == node)
        .and_then(|n| n.vm.as_ref())
        .map_or_else(String::new, |vm| {
            format!(" (VM {} on {})", vm.vmid, vm.node)
        });
    format!(
        "node {node}{vm} was left out: it is no etcd member of the restored cluster. To bring it back, recreate its VM (from a backup, or a template with the same MAC so it keeps its IP), boot it into Talos maintenance mode and apply its saved machine config (`talosctl apply-config --insecure -n {node} --file <its controlplane config>`); it then joins the restored cluster as a new member"
    )
}
