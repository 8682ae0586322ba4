//! `rebuild-preflight`: decide, read-only, whether and how a lost node's VM can be re-created.
//! The node must not answer; the rest of the control plane must hold etcd quorum; the profile
//! must say which VM it was; a saved machine config must exist and belong to this cluster (same
//! name and CA as a live node's config); and there must be a backup of the VM or a template.
//! Every refusal is exit 4 before anything changes, and names what would make it possible.

use futures::future::BoxFuture;

use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::error::UserError;
use crate::machine_config;
use crate::profile::{Profile, Role};
use crate::pve::VmRef;
use crate::rebuild::{self, RebuildPlan, Strategy};

pub struct RebuildPreflight;

impl StageData for RebuildPlan {
    const KIND: &'static str = "rebuild-preflight";
}

impl Stage for RebuildPreflight {
    fn kind(&self) -> &'static str {
        "rebuild-preflight"
    }
    fn title(&self) -> &'static str {
        "check the node is gone, etcd has quorum, and a config and a backup or template exist"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        let node = plan.inputs.rebuild_node.as_deref().unwrap_or("<node>");
        vec![
            format!("{} (must fail: the node is gone)", plan.talos.render(Some(node), &["version"])),
            "talosctl service etcd / etcd members on the other control-plane nodes (quorum)".into(),
            format!("the newest machine config saved for {node} (configs list) against a live node's config"),
            "GET /nodes, /nodes/{n}/storage?content=backup, …/content?content=backup&vmid=V, /cluster/resources (template)".into(),
        ]
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

fn refuse(msg: impl Into<String>) -> UserError {
    UserError::precondition(msg)
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let profile = ctx.profile();
    let node = ctx
        .inputs
        .rebuild_node
        .clone()
        .ok_or_else(|| UserError::usage("rebuild-node needs the node's address"))?;
    let plan = check(ctx, profile, &node).await?;
    ctx.reporter.info(&format!(
        "rebuild {node} from {}: new VM on {}{}",
        match plan.strategy {
            Strategy::Backup => format!(
                "backup {}",
                plan.backup.as_ref().map_or("?", |b| b.volid.as_str())
            ),
            Strategy::Template => format!(
                "template VM {}",
                plan.template.as_ref().map_or(0, |t| t.vmid)
            ),
        },
        plan.target_node,
        plan.member_id
            .as_ref()
            .map(|m| format!("; etcd member {m} will be removed first"))
            .unwrap_or_default()
    ));
    StageOutcome::done(&plan)
}

/// Works out the plan, or the first reason it cannot be made.
pub async fn check(
    ctx: &StageCtx<'_>,
    profile: &Profile,
    node: &str,
) -> anyhow::Result<RebuildPlan> {
    let entry = profile
        .file
        .nodes
        .iter()
        .find(|n| n.address == node)
        .ok_or_else(|| {
            UserError::usage(format!("node {node} is not in profile {}", profile.name()))
                .hint(format!("`{} profile show` lists the nodes", profile.cli()))
        })?;
    ctx.pve()?;
    let old_vm = entry.vm.clone().ok_or_else(|| {
        refuse(format!("the profile does not say which VM node {node} was"))
            .hint("set `vm = { node = \"pve2\", vmid = 102 }` on its [[nodes]] entry (or `profile discover --write` while it still runs)")
    })?;
    let talos = ctx.talos().clone().direct();
    if let Ok(v) = talos.server_version(node).await {
        return Err(refuse(format!(
            "node {node} answers (Talos {v}): rebuild-node replaces a node that is gone"
        ))
        .hint("if its etcd is broken but the VM is fine, a reset brings it back: `talosctl -n NODE reset --graceful=false --reboot --system-labels-to-wipe=EPHEMERAL`")
        .into());
    }

    // The saved config: exists, and belongs to this cluster.
    let found = machine_config::locate(profile, node, None).ok_or_else(|| {
        let newest = machine_config::all_sidecars(profile)
            .into_iter()
            .max_by_key(|s| s.taken_at)
            .map(|s| format!(" (the newest snapshot, {}, has none for it)", s.file))
            .unwrap_or_default();
        refuse(format!(
            "no saved machine config for node {node}{newest}: without it the new VM cannot join this cluster"
        ))
        .hint(format!(
            "every `{0} snapshot` saves the configs of the nodes that answer; if you still have the config file, apply it by hand with `talosctl apply-config --insecure -n {node} --file FILE`",
            profile.cli()
        ))
    })?;
    let text = machine_config::read(profile, &found.config, None)?;
    let saved = machine_config::identity(&text).map_err(|e| {
        refuse(format!(
            "the saved config of {node} ({}): {e}",
            found.config.file
        ))
    })?;

    let control_plane = entry.role == Role::ControlPlane;
    let others: Vec<String> = profile
        .control_plane_addresses()
        .into_iter()
        .filter(|a| a != node)
        .collect();
    let mut healthy = Vec::new();
    for cp in &others {
        if let Ok(s) = talos.service_etcd(cp).await
            && s.is_running_ok()
        {
            healthy.push(cp.clone());
        }
    }
    let through = healthy.first().cloned().ok_or_else(|| {
        refuse("no other control-plane node has a running etcd: there is no cluster to join")
            .hint(format!(
                "with quorum gone, rebuild inside a restore: `{} restore --snapshot FILE --rebuild {node}`",
                profile.cli()
            ))
    })?;
    let members = talos.etcd_members(&through).await.map_err(|e| {
        refuse(format!(
            "cannot list etcd members through {through}: {}",
            e.message()
        ))
    })?;
    let voters = members.iter().filter(|m| !m.learner).count().max(1);
    if healthy.len() < voters / 2 + 1 {
        return Err(refuse(format!(
            "etcd has no quorum: {} of {voters} members run ({})",
            healthy.len(),
            healthy.join(", ")
        ))
        .hint(format!(
            "rebuild inside a restore instead: `{} restore --snapshot FILE --rebuild {node}`",
            profile.cli()
        ))
        .into());
    }
    let live_text = talos.machine_config(&through).await.map_err(|e| {
        refuse(format!(
            "cannot read the running cluster's config from {through} to check the saved one: {}",
            e.message()
        ))
        .hint("the talosconfig needs the os:admin role")
    })?;
    let live = machine_config::identity(&live_text)
        .map_err(|e| refuse(format!("the config of {through}: {e}")))?;
    if let Some(why) = saved.mismatch(&live) {
        return Err(refuse(format!(
            "the saved config of {node} ({}, from snapshot {}) does not fit this cluster: {why}",
            found.config.file, found.snapshot
        ))
        .hint("refusing: a node with another cluster's config would not join, or would join the wrong cluster")
        .into());
    }
    let hostname = saved.hostname.clone().or_else(|| entry.hostname.clone());
    let member_id = if control_plane {
        members
            .iter()
            .find(|m| Some(&m.hostname) == hostname.as_ref())
            .map(|m| m.id.clone())
    } else {
        None
    };

    let vm = choose_vm(ctx, profile, node, &old_vm).await?;
    Ok(RebuildPlan {
        node: node.to_owned(),
        control_plane,
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
        member_id,
        healthy: Some(through),
        mac: vm.mac,
        cores: vm.cores,
        memory_mib: vm.memory_mib,
    })
}

/// Where a re-created VM comes from and where it goes.
pub struct VmChoice {
    pub strategy: Strategy,
    pub backup: Option<rebuild::FoundBackup>,
    pub template: Option<VmRef>,
    pub target_node: String,
    pub mac: Option<String>,
    pub cores: Option<u32>,
    pub memory_mib: Option<u64>,
}

/// Picks the strategy (`--from`, else a backup when one exists, else the template), the
/// target node and, for a clone, the lost VM's MAC and size.
pub async fn choose_vm(
    ctx: &StageCtx<'_>,
    profile: &Profile,
    node: &str,
    old_vm: &VmRef,
) -> anyhow::Result<VmChoice> {
    let pve = ctx.pve()?;
    let entry = profile
        .file
        .nodes
        .iter()
        .find(|n| n.address == node)
        .ok_or_else(|| UserError::usage(format!("node {node} is not in the profile")))?;
    // Where the new VM comes from, and where it goes.
    let online = rebuild::online_nodes(pve).await?;
    let online: Vec<String> = online.into_iter().filter(|n| *n != old_vm.node).collect();
    if online.is_empty() {
        return Err(refuse("no other Proxmox node is online to run the new VM").into());
    }
    let wanted: Option<Strategy> = match ctx.inputs.rebuild_from.as_deref() {
        Some(s) => Some(s.parse().map_err(UserError::usage)?),
        None => None,
    };
    let backup = if wanted != Some(Strategy::Template) {
        rebuild::newest_backup(pve, &online, old_vm.vmid).await?
    } else {
        None
    };
    let template_id = profile.file.proxmox.as_ref().and_then(|p| p.template);
    let template = match template_id {
        Some(id) if wanted != Some(Strategy::Backup) || backup.is_none() => pve
            .cluster_vms()
            .await?
            .into_iter()
            .find(|v| v.vmid == id)
            .map(|v| (v.vm_ref(), v.template, v.status)),
        _ => None,
    };
    let strategy = match (wanted, &backup, &template) {
        (Some(Strategy::Backup), None, _) => {
            return Err(refuse(format!(
                "no backup of VM {} found on the storages of {}",
                old_vm.vmid,
                online.join(", ")
            ))
            .hint("use --from template with a [proxmox] template, or check the backup storage is online")
            .into());
        }
        (Some(Strategy::Backup), Some(_), _) => Strategy::Backup,
        (None, Some(_), _) => Strategy::Backup,
        (_, _, Some((t, is_template, status))) => {
            if !is_template {
                return Err(refuse(format!(
                    "[proxmox] template = {} is not a template VM",
                    t.vmid
                ))
                .hint("convert the VM with the Talos ISO to a template (`qm template VMID`)")
                .into());
            }
            if status == "unknown" || !online.contains(&t.node) {
                return Err(refuse(format!(
                    "template VM {} lives on {}, which is not online",
                    t.vmid, t.node
                ))
                .hint("keep a template on shared storage or one per node")
                .into());
            }
            Strategy::Template
        }
        (Some(Strategy::Template), _, None) => {
            return Err(refuse(match template_id {
                None => "no [proxmox] template is set".to_owned(),
                Some(id) => format!("template VM {id} does not exist"),
            })
            .hint("set `template = VMID` in [proxmox]: a template VM that boots the Talos ISO")
            .into());
        }
        (None, None, None) => {
            return Err(refuse(format!(
                "no backup of VM {} on any storage and no [proxmox] template: nothing to rebuild the VM from",
                old_vm.vmid
            ))
            .hint("set `template = VMID` in [proxmox] (a template VM with the Talos ISO), or restore a backup of the VM by hand")
            .into());
        }
    };
    let template_ref: Option<VmRef> = template.map(|(t, _, _)| t);
    let backup = if strategy == Strategy::Backup {
        backup
    } else {
        None
    };
    let target_node = match (
        &ctx.inputs.target_node,
        backup.as_ref().and_then(|b| b.only_on.clone()),
    ) {
        (Some(t), Some(only)) if *t != only => {
            return Err(UserError::usage(format!(
                "the backup is on node-local storage of {only}; it can only be restored there, not on {t}"
            ))
            .into());
        }
        (Some(t), _) if !online.contains(t) => {
            return Err(UserError::usage(format!(
                "--target-node {t} is not an online Proxmox node (online: {})",
                online.join(", ")
            ))
            .into());
        }
        (Some(t), _) => t.clone(),
        (None, Some(only)) => only,
        (None, None) => online[0].clone(),
    };

    // A template clone gets new random MACs: the lost VM's must be put back for its DHCP
    // reservation (and so its address) to follow.
    let mac = entry.mac.clone().or_else(|| recorded_mac(profile, node));
    if strategy == Strategy::Template && mac.is_none() {
        return Err(refuse(format!(
            "the MAC address of node {node}'s VM is not recorded: a clone would get a new one and another IP"
        ))
        .hint(format!(
            "set `mac = \"BC:24:11:…\"` on the node's [[nodes]] entry (`{} profile discover --write` records it while the VM exists)",
            profile.cli()
        ))
        .into());
    }
    let spec = recorded_spec(profile, node);
    Ok(VmChoice {
        strategy,
        backup,
        template: template_ref,
        target_node,
        mac,
        cores: spec.as_ref().and_then(|s| s.cores),
        memory_mib: spec.and_then(|s| s.memory_mib),
    })
}

/// The MAC a pre-upgrade set recorded for the node's VM.
fn recorded_mac(profile: &Profile, node: &str) -> Option<String> {
    recorded_spec(profile, node).and_then(|s| s.mac)
}

fn recorded_spec(profile: &Profile, node: &str) -> Option<crate::sets::VmSpec> {
    let mut sets: Vec<_> = crate::sets::list(&profile.sets_dir())
        .into_iter()
        .flatten()
        .collect();
    sets.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    sets.into_iter().find_map(|s| {
        s.vms
            .into_iter()
            .find(|v| v.address == node)
            .and_then(|v| v.spec)
    })
}
