//! The Kubernetes half of `post-verify`: every node of the profile Ready (real kubectl), and a
//! summary of the pods that are not running. Pods still starting are reported, not fatal: the
//! control plane is back, and workloads catch up at their own pace.

use serde::{Deserialize, Serialize};

use super::StageCtx;
use crate::error::UserError;
use crate::kube::{self, Kubectl, NodeSummary, PodSummary};

/// What Kubernetes looked like after the restore; `checked` is false without a kubeconfig.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KubeCheck {
    pub checked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodSummary>,
}

pub async fn check(ctx: &StageCtx<'_>, kubectl: &Kubectl) -> anyhow::Result<KubeCheck> {
    let expected: Vec<String> = ctx
        .profile()
        .file
        .nodes
        .iter()
        .filter(|n| !ctx.inputs.exclude.contains(&n.address))
        .map(|n| n.hostname.clone().unwrap_or_else(|| n.address.clone()))
        .collect();
    let nodes = kubectl
        .wait_nodes_ready(&expected, ctx.inputs.health_timeout(), ctx.reporter)
        .await
        .map_err(|e| {
            UserError::failed(format!("Kubernetes is not back yet: {e}"))
                .hint("etcd is restored; `talos-dr resume` checks again")
        })?;
    let pods = kubectl
        .pods_all()
        .await
        .map_err(|e| UserError::failed(format!("cannot list pods: {e}")))?;
    let summary = kube::summarize_pods(&pods);
    if !summary.not_running.is_empty() {
        let list: Vec<String> = summary
            .not_running
            .iter()
            .take(10)
            .map(|p| format!("{} ({}: {})", p.pod, p.phase, p.reason))
            .collect();
        ctx.reporter.warn(&format!(
            "{} of {} pods are not running yet: {}{}",
            summary.not_running.len(),
            summary.total,
            list.join(", "),
            if summary.not_running.len() > 10 {
                ", …"
            } else {
                ""
            }
        ));
    }
    Ok(KubeCheck {
        checked: true,
        nodes: Some(kube::summarize_nodes(&nodes)),
        pods: Some(summary),
    })
}
