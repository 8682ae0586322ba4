//! `proxmox-check`: every control-plane VM exists on its node, runs, is not locked and can be
//! snapshotted; then (unless `--no-vm-snapshot`) a snapshot of each, in parallel.
//!
//! Snapshots are journaled per VM. On resume a VM whose snapshot already exists is not
//! snapshotted again: the list of snapshots decides, never a blind second POST.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::error::UserError;
use crate::pve::check::{self, CheckOptions, VmCheck};
use crate::pve::{SnapshotName, SnapshotRequest, VmRef};

pub struct ProxmoxCheck;

impl Stage for ProxmoxCheck {
    fn kind(&self) -> &'static str {
        "proxmox-check"
    }
    fn title(&self) -> &'static str {
        "check the control-plane VMs and snapshot them"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        let profile = plan.profile;
        let Some(px) = &profile.file.proxmox else {
            return vec!["nothing: the profile has no [proxmox] section".into()];
        };
        let snapshot = plan
            .inputs
            .vm_snapshot
            .unwrap_or(px.snapshot_before_restore);
        let mut v = Vec::new();
        for n in profile
            .control_plane()
            .filter(|n| !plan.inputs.exclude.contains(&n.address))
            .filter(|n| !plan.inputs.rebuild.contains(&n.address))
        {
            match &n.vm {
                Some(vm) => {
                    v.push(format!(
                        "GET /nodes/{}/qemu/{}/status/current, /config, /feature?feature=snapshot",
                        vm.node, vm.vmid
                    ));
                    if snapshot {
                        v.push(format!("POST /nodes/{}/qemu/{}/snapshot snapname=talosdr-restore-<yymmddhhmm>, then poll the task", vm.node, vm.vmid));
                    }
                }
                None => v.push(format!(
                    "node {}: no vm mapping in the profile (the stage will fail)",
                    n.address
                )),
            }
        }
        v
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

/// The VM checks and the VM snapshots taken before the restore, keyed by VMID. The snapshot
/// name is journaled before the first POST, so a resume reuses it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxmoxCheckRecord {
    pub checks: Vec<VmCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapname: Option<String>,
    /// Older releases wrote `[]` when no snapshot was taken.
    #[serde(deserialize_with = "map_or_empty_list")]
    pub vm_snapshots: BTreeMap<String, VmSnapshotDone>,
}

impl StageData for ProxmoxCheckRecord {
    const KIND: &'static str = "proxmox-check";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmSnapshotDone {
    pub node: String,
    pub vmid: u32,
    pub snapname: String,
    pub exitstatus: String,
}

fn map_or_empty_list<'de, D, T>(d: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Map(BTreeMap<String, T>),
        List(Vec<serde::de::IgnoredAny>),
    }
    match Either::<T>::deserialize(d)? {
        Either::Map(m) => Ok(m),
        Either::List(l) if l.is_empty() => Ok(BTreeMap::new()),
        Either::List(_) => Err(serde::de::Error::custom("expected a map of VM snapshots")),
    }
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let Some(client) = ctx.services.pve.clone() else {
        return Ok(StageOutcome::Skipped(
            "the profile has no [proxmox] section".into(),
        ));
    };
    let cfg = ctx.profile().file.proxmox.clone().unwrap_or_default();
    let mut missing = Vec::new();
    let mut vms: Vec<(String, VmRef)> = Vec::new();
    // A node left out (--exclude) is usually lost with its host: its VM is not checked.
    for n in ctx
        .profile()
        .control_plane()
        .filter(|n| !ctx.inputs.exclude.contains(&n.address))
        .filter(|n| !ctx.inputs.rebuild.contains(&n.address))
    {
        match &n.vm {
            Some(vm) => vms.push((n.address.clone(), vm.clone())),
            None => missing.push(n.address.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(UserError::usage(format!(
            "control-plane nodes without a Proxmox VM in the profile: {}",
            missing.join(", ")
        ))
        .hint("add `vm = { node = \"pve1\", vmid = 101 }` to each [[nodes]] entry, or pass --no-vm-snapshot and remove [proxmox]")
        .into());
    }
    let refs: Vec<VmRef> = vms.iter().map(|(_, v)| v.clone()).collect();
    let checks = check::check_vms(&client, &refs, CheckOptions::default(), cfg.max_parallel).await;
    let problems: Vec<String> = checks.iter().flat_map(|c| c.problems.clone()).collect();
    if !problems.is_empty() {
        return Err(UserError::precondition(format!(
            "the control-plane VMs are not ready:\n  - {}",
            problems.join("\n  - ")
        ))
        .into());
    }
    let want_snapshot = ctx
        .inputs
        .vm_snapshot
        .unwrap_or(cfg.snapshot_before_restore);
    if !want_snapshot {
        return StageOutcome::done(&ProxmoxCheckRecord {
            checks,
            ..ProxmoxCheckRecord::default()
        });
    }

    // One name for the whole set, chosen once and journaled so a resume reuses it.
    let name = match ctx.own::<ProxmoxCheckRecord>()?.snapname {
        Some(n) => SnapshotName::parse(&n)?,
        None => {
            let n = SnapshotName::for_label("restore", jiff::Timestamp::now())?;
            ctx.update(|r: &mut ProxmoxCheckRecord| r.snapname = Some(n.to_string()))?;
            n
        }
    };
    let description = format!(
        "talos-dr {}: before restoring etcd of {} (run {})",
        env!("CARGO_PKG_VERSION"),
        ctx.profile().name(),
        ctx.run_id()
    );
    let sem = Arc::new(Semaphore::new(cfg.max_parallel.max(1)));
    let mut set = JoinSet::new();
    for (_, vm) in &vms {
        let (client, vm, sem, name, description) = (
            client.clone(),
            vm.clone(),
            Arc::clone(&sem),
            name.clone(),
            description.clone(),
        );
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            // Resume: the list of snapshots decides whether this VM is done.
            if let Ok(list) = client.list_snapshots(&vm).await
                && list.iter().any(|s| s.name == name.to_string())
            {
                return (vm, Ok("exists".to_owned()));
            }
            let req = SnapshotRequest {
                name,
                description: Some(description),
                vmstate: false,
            };
            let r = client.snapshot_and_wait(&vm, &req).await.map(|d| {
                d.task
                    .map_or_else(|| "OK (recovered)".to_owned(), |t| t.exitstatus)
            });
            (vm, r)
        });
    }
    let mut done = BTreeMap::new();
    let mut failures = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (vm, r) = joined?;
        match r {
            Ok(status) => {
                done.insert(
                    vm.vmid.to_string(),
                    VmSnapshotDone {
                        node: vm.node.clone(),
                        vmid: vm.vmid,
                        snapname: name.to_string(),
                        exitstatus: status,
                    },
                );
            }
            Err(e) => failures.push(format!("VM {} on {}: {e}", vm.vmid, vm.node)),
        }
    }
    ctx.update(|r: &mut ProxmoxCheckRecord| r.vm_snapshots = done.clone())?;
    if !failures.is_empty() {
        return Err(UserError::failed(format!(
            "VM snapshots failed (nothing destructive has happened yet):\n  - {}",
            failures.join("\n  - ")
        ))
        .hint("fix the cause and run `talos-dr resume`; existing snapshots are kept and not taken twice")
        .into());
    }
    StageOutcome::done(&ProxmoxCheckRecord {
        checks,
        snapname: Some(name.to_string()),
        vm_snapshots: done,
    })
}
