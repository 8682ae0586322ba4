//! `rebuild-vms`: inside a restore (`restore --rebuild NODE`), re-create the VMs of control-plane
//! nodes that were lost with their hosts, before `etcd-recover`. There is no quorum to join, so
//! nothing is removed from etcd: a rebuilt node gets its saved config (template) or boots its
//! restored disk (backup), answers, and is then reset and brought in by the usual recovery
//! procedure with the others. Each node's steps are journaled like `recreate-vm`'s.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::error::UserError;
use crate::machine_config;
use crate::profile::Role;
use crate::rebuild::RebuildPlan;
use crate::stages::recreate_vm::{self, Journal, RecreateOutputs};
use crate::stages::rejoin_node::{self, RejoinOutputs};

pub struct RebuildVms;

/// One node's rebuild inside the restore.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeRebuild {
    pub plan: Option<RebuildPlan>,
    pub recreate: RecreateOutputs,
    pub rejoin: RejoinOutputs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RebuildVmsOutputs {
    pub nodes: BTreeMap<String, NodeRebuild>,
}

impl StageData for RebuildVmsOutputs {
    const KIND: &'static str = "rebuild-vms";
}

impl Stage for RebuildVms {
    fn kind(&self) -> &'static str {
        "rebuild-vms"
    }
    fn title(&self) -> &'static str {
        "re-create the VMs of --rebuild nodes (backup or template) with their saved configs"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        if plan.inputs.rebuild.is_empty() {
            return vec!["nothing to rebuild (no --rebuild)".into()];
        }
        plan.inputs
            .rebuild
            .iter()
            .map(|n| {
                format!("{n}: new VM from its newest backup or the template (GET /cluster/nextid, POST …/qemu or …/clone, start); template: apply-config --insecure with its saved config")
            })
            .collect()
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

/// The journal of one node's `recreate` or `rejoin` steps inside this stage's outputs.
struct Entry<'a> {
    ctx: &'a StageCtx<'a>,
    node: String,
}

impl Journal<RecreateOutputs> for Entry<'_> {
    fn get(&self) -> anyhow::Result<RecreateOutputs> {
        Ok(self
            .ctx
            .own::<RebuildVmsOutputs>()?
            .nodes
            .get(&self.node)
            .map(|n| n.recreate.clone())
            .unwrap_or_default())
    }
    fn set(&self, f: &mut dyn FnMut(&mut RecreateOutputs)) -> anyhow::Result<()> {
        self.ctx.update(|o: &mut RebuildVmsOutputs| {
            f(&mut o.nodes.entry(self.node.clone()).or_default().recreate);
        })
    }
}

impl Journal<RejoinOutputs> for Entry<'_> {
    fn get(&self) -> anyhow::Result<RejoinOutputs> {
        Ok(self
            .ctx
            .own::<RebuildVmsOutputs>()?
            .nodes
            .get(&self.node)
            .map(|n| n.rejoin.clone())
            .unwrap_or_default())
    }
    fn set(&self, f: &mut dyn FnMut(&mut RejoinOutputs)) -> anyhow::Result<()> {
        self.ctx.update(|o: &mut RebuildVmsOutputs| {
            f(&mut o.nodes.entry(self.node.clone()).or_default().rejoin);
        })
    }
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    if ctx.inputs.rebuild.is_empty() {
        return Ok(StageOutcome::Skipped("no --rebuild node".into()));
    }
    let talos = ctx.talos().clone().direct();
    for node in &ctx.inputs.rebuild {
        let prior = ctx
            .own::<RebuildVmsOutputs>()?
            .nodes
            .get(node)
            .and_then(|n| n.plan.clone());
        let plan = match prior {
            Some(p) => p,
            None => {
                let plan = plan_for(ctx, node, &talos).await?;
                let p = plan.clone();
                ctx.update(|o: &mut RebuildVmsOutputs| {
                    o.nodes.entry(node.clone()).or_default().plan = Some(p);
                })?;
                plan
            }
        };
        let entry = Entry {
            ctx,
            node: node.clone(),
        };
        let created = recreate_vm::recreate(ctx, &plan, &entry).await?;
        rejoin_node::bring_up(ctx, &plan, created.new_vm.as_ref(), &entry, false).await?;
        ctx.reporter.info(&format!(
            "{node} is back on VM {} with its saved config; etcd-recover resets it and brings it in with the others",
            created.new_vm.as_ref().map_or(0, |v| v.vmid)
        ));
    }
    StageOutcome::done(&ctx.own::<RebuildVmsOutputs>()?)
}

/// The plan for one node without a running cluster: it must be gone, mapped, have a saved
/// config (of the same cluster as the other rebuilt or live nodes' saved configs), and a backup
/// or the template.
async fn plan_for(
    ctx: &StageCtx<'_>,
    node: &str,
    talos: &crate::talos::Talosctl,
) -> anyhow::Result<RebuildPlan> {
    let profile = ctx.profile();
    let entry = profile
        .file
        .nodes
        .iter()
        .find(|n| n.address == node && n.role == Role::ControlPlane)
        .ok_or_else(|| {
            UserError::usage(format!(
                "--rebuild {node}: not a control-plane node of the profile"
            ))
        })?;
    let old_vm = entry.vm.clone().ok_or_else(|| {
        UserError::precondition(format!(
            "--rebuild {node}: the profile does not say which VM it was"
        ))
        .hint("set `vm = { node = \"pve2\", vmid = 102 }` on its [[nodes]] entry")
    })?;
    if let Ok(v) = talos.server_version(node).await {
        return Err(UserError::precondition(format!(
            "--rebuild {node}: the node answers (Talos {v}); restore it in place instead of rebuilding its VM"
        ))
        .into());
    }
    let found =
        machine_config::locate(profile, node, None).ok_or_else(|| {
            UserError::precondition(format!(
            "--rebuild {node}: no saved machine config for it: without one the new VM cannot join"
        ))
        .hint(format!("`{} configs list` shows what is saved", profile.cli()))
        })?;
    let text = machine_config::read(profile, &found.config, None)?;
    let saved = machine_config::identity(&text)
        .map_err(|e| UserError::precondition(format!("--rebuild {node}: its saved config: {e}")))?;
    if saved.machine_type.as_deref() == Some("init") {
        return Err(UserError::precondition(format!(
            "--rebuild {node}: its saved config has machine type `init`, which etcd recovery does not support"
        ))
        .hint("change `machine.type` to `controlplane` in the saved config and apply it by hand")
        .into());
    }
    // Compare with another node's saved config of the same cluster (a live one may not exist).
    for other in profile.control_plane().filter(|n| n.address != node) {
        if let Some(o) = machine_config::locate(profile, &other.address, None)
            && let Ok(t) = machine_config::read(profile, &o.config, None)
            && let Ok(id) = machine_config::identity(&t)
            && let Some(why) = saved.mismatch(&id)
        {
            return Err(UserError::precondition(format!(
                "--rebuild {node}: its saved config ({}) does not fit the cluster of {}: {why}",
                found.config.file, other.address
            ))
            .into());
        }
    }
    let vm = super::rebuild_preflight::choose_vm(ctx, profile, node, &old_vm).await?;
    let hostname = saved.hostname.clone().or_else(|| entry.hostname.clone());
    Ok(RebuildPlan {
        node: node.to_owned(),
        control_plane: true,
        vm_name: hostname
            .clone()
            .unwrap_or_else(|| format!("talos-{}", node.replace(['.', ':'], "-"))),
        hostname,
        old_vm: Some(old_vm),
        strategy: vm.strategy,
        backup: vm.backup,
        template: vm.template,
        target_node: vm.target_node,
        config: Some(found.config),
        config_snapshot: found.snapshot,
        member_id: None,
        healthy: None,
        mac: vm.mac,
        cores: vm.cores,
        memory_mib: vm.memory_mib,
    })
}
