//! `rejoin-node`: bring the re-created VM back into the cluster.
//!
//! - Template clone: wait for Talos maintenance mode (`get machinestatus --insecure`; `version
//!   --insecure` is not served there before 1.14), then `apply-config --insecure` with the saved
//!   config; the node installs, reboots into it and joins etcd as a learner.
//! - Backup restore: the disk holds the old config and old etcd data; once the node answers, its
//!   etcd data is wiped (reset EPHEMERAL, and ETCD on Talos ≥ 1.14 where etcd has its own
//!   volume) so it joins fresh instead of starting on stale data.
//!
//! Then wait until etcd lists it as a voting member and its etcd runs. Each destructive step is
//! recorded before it is sent; a resumed run checks the node instead of repeating it.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Plan, Poller, Stage, StageCtx, StageData, StageOutcome};
use crate::engine::playbook::Confirm;
use crate::error::UserError;
use crate::pve::VmRef;
use crate::rebuild::{RebuildPlan, Strategy};
use crate::stages::recreate_vm::{Journal, Own, RecreateOutputs};

pub struct RejoinNode;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RejoinOutputs {
    /// Template: `apply-config` was (about to be) sent.
    pub config_applied: bool,
    /// Backup: the reset of the stale etcd data was (about to be) sent.
    pub reset_issued: bool,
    pub wiped_labels: Option<String>,
    /// etcd lists the node as a voting member.
    pub joined: bool,
    pub member_id: Option<String>,
    pub talos_version: Option<String>,
}

impl StageData for RejoinOutputs {
    const KIND: &'static str = "rejoin-node";
}

impl Stage for RejoinNode {
    fn kind(&self) -> &'static str {
        "rejoin-node"
    }
    fn title(&self) -> &'static str {
        "put the saved config on the new VM (or wipe its stale etcd data) and wait for it to join"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        let node = plan.inputs.rebuild_node.as_deref().unwrap_or("<node>");
        vec![
            format!(
                "template: talosctl -n {node} get machinestatus --insecure until maintenance, then talosctl apply-config --insecure -n {node} --file <saved config>"
            ),
            format!(
                "backup: {}",
                plan.talos.render(
                    Some(node),
                    &[
                        "reset",
                        "--graceful=false",
                        "--reboot",
                        "--system-labels-to-wipe=EPHEMERAL[,ETCD]"
                    ]
                )
            ),
            "wait for etcd members to list it (learner, then promoted) and service etcd Running"
                .into(),
        ]
    }
    fn min_confirm(&self) -> Confirm {
        // The backup path wipes the new VM's stale etcd data.
        Confirm::Yes
    }
    fn requires(&self) -> &'static [&'static str] {
        &["rebuild-preflight", "recreate-vm"]
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let plan = ctx.output::<RebuildPlan>()?;
    let vm = ctx.output::<RecreateOutputs>()?.new_vm;
    let out = bring_up(ctx, &plan, vm.as_ref(), &Own(ctx), true).await?;
    StageOutcome::done(&out)
}

/// Puts the config on the new VM (template) and waits for it to answer. With `join` (the
/// cluster runs): also wipes a restored VM's stale etcd data and waits for it to join etcd.
/// Without (inside a restore): etcd-recover resets it and it joins with the others.
pub async fn bring_up(
    ctx: &StageCtx<'_>,
    plan: &RebuildPlan,
    vm: Option<&VmRef>,
    j: &(dyn Journal<RejoinOutputs> + Sync),
    join: bool,
) -> anyhow::Result<RejoinOutputs> {
    let node = plan.node.clone();
    let talos = ctx.talos().clone().direct();
    let console = format!(
        "open the console of VM {} in the Proxmox web UI: is the Talos ISO booting, and does net0 carry MAC {} (the DHCP reservation for {node})?",
        vm.as_ref().map_or(0, |v| v.vmid),
        plan.mac.as_deref().unwrap_or("?")
    );
    match plan.strategy {
        Strategy::Template => {
            let prior = j.get()?;
            let configured = prior.config_applied && talos.server_version(&node).await.is_ok();
            if !configured {
                wait_maintenance(ctx, &node, &console).await?;
                let text = crate::machine_config::read(
                    ctx.profile(),
                    plan.config
                        .as_ref()
                        .ok_or_else(|| UserError::failed("the plan has no saved config"))?,
                    None,
                )?;
                let dir = ctx.profile().runs_dir().join(ctx.run_id());
                crate::fsutil::create_private_dir(&dir)?;
                // The config holds the cluster's keys: a private file, removed right after.
                let file = tempfile::Builder::new()
                    .prefix(".machine-config-")
                    .suffix(".yaml")
                    .tempfile_in(&dir)?;
                std::fs::write(file.path(), text.as_bytes())?;
                j.set(&mut |o: &mut RejoinOutputs| o.config_applied = true)?;
                talos
                    .apply_config_insecure(&node, file.path(), Duration::from_secs(120))
                    .await
                    .map_err(|e| {
                        UserError::failed(format!(
                            "apply-config to {node} in maintenance mode failed: {}",
                            e.message()
                        ))
                        .hint(console.clone())
                    })?;
                ctx.reporter.info(&format!(
                    "applied the saved config ({}) to {node}: it installs Talos and reboots",
                    plan.config.as_ref().map_or("", |c| c.file.as_str())
                ));
            }
            let v = wait_answers(ctx, &node, &console).await?;
            j.set(&mut |o: &mut RejoinOutputs| o.talos_version = Some(v.clone()))?;
        }
        Strategy::Backup => {
            let v = wait_answers(ctx, &node, &console).await?;
            j.set(&mut |o: &mut RejoinOutputs| o.talos_version = Some(v.clone()))?;
            if join && plan.control_plane && !j.get()?.reset_issued {
                let labels = talos
                    .etcd_volume(&node)
                    .await
                    .map(|v| v.labels_to_wipe().to_owned())
                    .unwrap_or_else(|_| "EPHEMERAL".into());
                j.set(&mut |o: &mut RejoinOutputs| {
                    o.reset_issued = true;
                    o.wiped_labels = Some(labels.clone());
                })?;
                talos
                    .reset_labels(&node, &labels, Duration::from_secs(300))
                    .await
                    .map_err(|e| {
                        UserError::failed(format!(
                            "cannot wipe the restored VM's stale etcd data on {node}: {}",
                            e.message()
                        ))
                    })?;
                ctx.reporter.info(&format!(
                    "wiped {labels} on {node}: its etcd data came from the backup and is stale"
                ));
                wait_answers(ctx, &node, &console).await?;
            }
        }
    }
    if join && plan.control_plane {
        let id = wait_joined(ctx, plan).await?;
        j.set(&mut |o: &mut RejoinOutputs| {
            o.joined = true;
            o.member_id = Some(id.clone());
        })?;
    }
    j.get()
}

fn maintenance_timeout(ctx: &StageCtx<'_>) -> Duration {
    Duration::from_secs(ctx.inputs.maintenance_timeout_s.unwrap_or(600))
}

/// Waits until the node serves the maintenance API.
async fn wait_maintenance(ctx: &StageCtx<'_>, node: &str, console: &str) -> anyhow::Result<()> {
    let talos = ctx.talos();
    let budget = maintenance_timeout(ctx);
    let mut poller = Poller::new(budget, ctx.inputs.poll_max().min(Duration::from_secs(2)));
    loop {
        let last = match talos.maintenance_stage(node).await {
            Ok(s) if s.stage == "maintenance" => return Ok(()),
            Ok(s) => format!("stage {}", s.stage),
            Err(e) => e.message(),
        };
        if !poller.wait().await {
            return Err(UserError::failed(format!(
                "node {node} did not reach Talos maintenance mode within {}s (last: {last})",
                budget.as_secs()
            ))
            .hint(console.to_owned())
            .into());
        }
    }
}

/// Waits until the node answers with its config (the normal, authenticated API).
async fn wait_answers(ctx: &StageCtx<'_>, node: &str, console: &str) -> anyhow::Result<String> {
    let talos = ctx.talos().clone().direct();
    let budget = maintenance_timeout(ctx).max(ctx.inputs.wait_timeout());
    let mut poller = Poller::new(budget, ctx.inputs.poll_max().min(Duration::from_secs(2)));
    loop {
        let last = match talos.server_version(node).await {
            Ok(v) => return Ok(v),
            Err(e) => e.message(),
        };
        if !poller.wait().await {
            let stuck = talos
                .maintenance_stage(node)
                .await
                .map(|s| format!(" (it is in stage {} — the install did not finish)", s.stage))
                .unwrap_or_default();
            return Err(UserError::failed(format!(
                "node {node} did not come up with its config within {}s{stuck} (last: {last})",
                budget.as_secs()
            ))
            .hint(console.to_owned())
            .into());
        }
    }
}

/// Waits until etcd lists the node as a voting member (joining starts as a learner) and its
/// etcd runs. Returns its member ID.
async fn wait_joined(ctx: &StageCtx<'_>, plan: &RebuildPlan) -> anyhow::Result<String> {
    let talos = ctx.talos().clone().direct();
    let through = plan.healthy.clone().unwrap_or_else(|| plan.node.clone());
    let host = plan.hostname.clone().unwrap_or_default();
    let budget = ctx.inputs.wait_timeout();
    let mut poller = Poller::new(budget, ctx.inputs.poll_max().min(Duration::from_secs(2)));
    let mut last = String::from("not listed yet");
    loop {
        if let Ok(members) = talos.etcd_members(&through).await {
            match members.iter().find(|m| m.hostname == host) {
                Some(m) if !m.learner => {
                    if let Ok(s) = talos.service_etcd(&plan.node).await
                        && s.is_running_ok()
                    {
                        ctx.reporter.info(&format!(
                            "{} joined etcd as member {} (voting)",
                            plan.node, m.id
                        ));
                        return Ok(m.id.clone());
                    }
                    last = "member, etcd not running yet".into();
                }
                Some(_) => last = "learner (catching up)".into(),
                None => {}
            }
        }
        if !poller.wait().await {
            return Err(UserError::failed(format!(
                "node {} did not become a voting etcd member within {}s (last: {last})",
                plan.node,
                budget.as_secs()
            ))
            .hint(format!(
                "look at `talosctl -n {} service etcd` and `talosctl -n {through} etcd members`; `talos-dr resume` continues waiting",
                plan.node
            ))
            .into());
        }
    }
}
