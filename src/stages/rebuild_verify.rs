//! `rebuild-verify`: the cluster is whole again: `talosctl health` with every node, the etcd
//! members are exactly the control plane, and the new node is Ready in Kubernetes. A Node
//! object left under the old name (the new node registered under another one) is deleted after
//! asking; one with the same name is simply the node, re-registered.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::error::UserError;
use crate::rebuild::RebuildPlan;

pub struct RebuildVerify;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RebuildVerifyOutputs {
    pub members: Vec<String>,
    pub node_ready: Option<bool>,
    pub deleted_node_objects: Vec<String>,
}

impl StageData for RebuildVerifyOutputs {
    const KIND: &'static str = "rebuild-verify";
}

impl Stage for RebuildVerify {
    fn kind(&self) -> &'static str {
        "rebuild-verify"
    }
    fn title(&self) -> &'static str {
        "etcd members, the node Ready in Kubernetes, talosctl health"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        let cp = plan.profile.control_plane_addresses();
        vec![
            plan.talos.render(
                cp.first().map(String::as_str),
                &[
                    "health",
                    "--control-plane-nodes",
                    &cp.join(","),
                    "--worker-nodes",
                    &plan.profile.worker_addresses().join(","),
                ],
            ),
            "talosctl etcd members; kubectl get nodes -o json".into(),
        ]
    }
    fn requires(&self) -> &'static [&'static str] {
        &["rebuild-preflight"]
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let plan = ctx.output::<RebuildPlan>()?;
    let profile = ctx.profile();
    let talos = ctx.talos().clone().direct();
    let cp = profile.control_plane_addresses();
    let through = plan.healthy.clone().unwrap_or_else(|| cp[0].clone());
    let mut out = RebuildVerifyOutputs::default();

    let members = talos.etcd_members(&through).await.map_err(|e| {
        UserError::failed(format!(
            "cannot list etcd members through {through}: {}",
            e.message()
        ))
    })?;
    out.members = members.iter().map(|m| m.hostname.clone()).collect();
    if members.len() != cp.len() || members.iter().any(|m| m.learner) {
        return Err(UserError::failed(format!(
            "etcd has {} member(s) ({}) for {} control-plane node(s)",
            members.len(),
            out.members.join(", "),
            cp.len()
        ))
        .hint("a stale member must be removed (`talosctl etcd remove-member ID`); a learner needs more time: `talos-dr resume`")
        .into());
    }

    if let Some(kubectl) = &ctx.services.kubectl {
        let nodes = kubectl
            .wait_nodes_ready(&cp, ctx.inputs.health_timeout(), ctx.reporter)
            .await
            .map_err(|e| UserError::failed(format!("Kubernetes nodes are not Ready: {e}")))?;
        let new = nodes.iter().find(|n| n.addresses.contains(&plan.node));
        out.node_ready = Some(new.is_some_and(|n| n.ready));
        let new_name = new.map(|n| n.name.clone());
        let old_name = profile
            .file
            .nodes
            .iter()
            .find(|n| n.address == plan.node)
            .and_then(|n| n.hostname.clone())
            .or_else(|| plan.hostname.clone());
        if let (Some(old), Some(newn)) = (old_name, new_name)
            && old != newn
            && nodes.iter().any(|n| n.name == old)
        {
            let answer = ctx.prompter.confirm(&format!(
                "The rebuilt node registered as {newn}; Kubernetes still has the old Node object {old}. Delete it (`kubectl delete node {old}`)?"
            ))?;
            if answer == Some(true) {
                kubectl
                    .delete_node(&old)
                    .await
                    .map_err(|e| UserError::failed(format!("cannot delete Node {old}: {e}")))?;
                out.deleted_node_objects.push(old);
            }
        }
    }
    talos
        .health(
            &through,
            &cp,
            &profile.worker_addresses(),
            ctx.inputs.health_timeout(),
        )
        .await
        .map_err(|e| UserError::failed(format!("talosctl health failed: {}", e.message())))?;
    ctx.reporter
        .info(&format!("cluster healthy: {} etcd members", members.len()));
    StageOutcome::done(&out)
}
