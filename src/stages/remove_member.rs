//! `remove-member`: remove the lost node's etcd member, through a healthy control-plane node,
//! **before** any VM is started: a VM restored from a backup starts etcd on its old data as soon
//! as it boots, and a stale member with its name blocks a clean join (talos.md §14.3).
//! The member ID is checked again right before the call; "member not found" on a resumed run
//! means the removal already happened.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Inputs, Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::engine::playbook::Confirm;
use crate::error::UserError;
use crate::profile::Profile;
use crate::rebuild::RebuildPlan;

pub struct RemoveMember;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RemoveMemberOutputs {
    /// The member removed (or already gone), `None` when there was none to remove.
    pub member_id: Option<String>,
    pub through: Option<String>,
    pub already_gone: bool,
}

impl StageData for RemoveMemberOutputs {
    const KIND: &'static str = "remove-member";
}

impl Stage for RemoveMember {
    fn kind(&self) -> &'static str {
        "remove-member"
    }
    fn title(&self) -> &'static str {
        "remove the lost node's etcd member (before any VM starts)"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        vec![format!(
            "{} (through a healthy control-plane node, after checking the ID is {}'s)",
            plan.talos
                .render(Some("<healthy node>"), &["etcd", "remove-member", "<ID>"]),
            plan.inputs.rebuild_node.as_deref().unwrap_or("<node>")
        )]
    }
    fn min_confirm(&self) -> Confirm {
        Confirm::Typed
    }
    fn typed_warning(&self, profile: &Profile, inputs: &Inputs, _stage: &str) -> String {
        format!(
            "This removes node {}'s etcd member from cluster {:?} and re-creates its VM on Proxmox. Do it only if the node is really gone: a member that comes back after its removal cannot rejoin with its old data.",
            inputs.rebuild_node.as_deref().unwrap_or("?"),
            profile.name()
        )
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
    let Some(id) = plan.member_id.clone() else {
        return Ok(StageOutcome::Skipped(if plan.control_plane {
            "the lost node has no etcd member left to remove".into()
        } else {
            "a worker has no etcd member".into()
        }));
    };
    let through = plan.healthy.clone().unwrap_or_default();
    let talos = ctx.talos().clone().direct();
    // Check the ID still belongs to the lost node: etcd may have changed since the preflight.
    let members = talos.etcd_members(&through).await.map_err(|e| {
        UserError::failed(format!(
            "cannot list etcd members through {through}: {}",
            e.message()
        ))
    })?;
    let mut out = RemoveMemberOutputs {
        member_id: Some(id.clone()),
        through: Some(through.clone()),
        already_gone: false,
    };
    match members.iter().find(|m| m.id == id) {
        None => {
            out.already_gone = true;
            ctx.reporter
                .info(&format!("etcd member {id} is already gone"));
            return StageOutcome::done(&out);
        }
        Some(m) if Some(&m.hostname) != plan.hostname.as_ref() => {
            return Err(UserError::failed(format!(
                "etcd member {id} is now {:?}, not the lost node's {:?}: refusing to remove it",
                m.hostname,
                plan.hostname.as_deref().unwrap_or("?")
            ))
            .hint("run rebuild-node again to look at the cluster afresh")
            .into());
        }
        Some(_) => {}
    }
    match talos.etcd_remove_member(&through, &id).await {
        Ok(()) => {}
        Err(e) if e.stderr().contains("member not found") => out.already_gone = true,
        Err(e) => {
            return Err(UserError::failed(format!(
                "etcd refused to remove member {id} through {through}: {}",
                e.message()
            ))
            .hint("`unhealthy cluster` means another member is down too: bring it back first, or restore with --rebuild")
            .into());
        }
    }
    ctx.reporter.info(&format!(
        "removed etcd member {id} ({}) through {through}",
        plan.hostname.as_deref().unwrap_or("?")
    ));
    StageOutcome::done(&out)
}
