//! `proxmox-check`: every control-plane VM exists on its node, runs, is not locked and can be
//! snapshotted; then (unless `--no-vm-snapshot`) a snapshot of each, in parallel.
//!
//! Snapshots are journaled per VM. On resume a VM whose snapshot already exists is not
//! snapshotted again: the list of snapshots decides, never a blind second POST.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{StageCtx, StageOutcome};
use crate::error::UserError;
use crate::pve::check::{self, CheckOptions};
use crate::pve::{SnapshotName, SnapshotRequest, VmRef};

pub async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let Some(client) = ctx.services.pve.clone() else {
        return Ok(StageOutcome::Skipped(
            "the profile has no [proxmox] section".into(),
        ));
    };
    let cfg = ctx.profile().file.proxmox.clone().unwrap_or_default();
    let mut missing = Vec::new();
    let mut vms: Vec<(String, VmRef)> = Vec::new();
    for n in ctx.profile().control_plane() {
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
        return Ok(StageOutcome::Done(
            json!({ "checks": checks, "vm_snapshots": [] }),
        ));
    }

    // One name for the whole set, chosen once and journaled so a resume reuses it.
    let own = ctx.own_outputs();
    let name = match own["snapname"].as_str() {
        Some(n) => SnapshotName::parse(n)?,
        None => {
            let n = SnapshotName::for_label("restore", jiff::Timestamp::now())?;
            ctx.record("snapname", json!(n.to_string()))?;
            n
        }
    };
    let description = format!(
        "talos-dr {}: before restoring etcd of {} (run {})",
        env!("CARGO_PKG_VERSION"),
        ctx.profile().name(),
        ctx.journal.snapshot().run_id
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
    let mut done = Map::new();
    let mut failures = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (vm, r) = joined?;
        match r {
            Ok(status) => {
                done.insert(vm.vmid.to_string(), json!({ "node": vm.node, "vmid": vm.vmid, "snapname": name.to_string(), "exitstatus": status }));
            }
            Err(e) => failures.push(format!("VM {} on {}: {e}", vm.vmid, vm.node)),
        }
    }
    ctx.record("vm_snapshots", Value::Object(done.clone()))?;
    if !failures.is_empty() {
        return Err(UserError::failed(format!(
            "VM snapshots failed (nothing destructive has happened yet):\n  - {}",
            failures.join("\n  - ")
        ))
        .hint("fix the cause and run `talos-dr resume`; existing snapshots are kept and not taken twice")
        .into());
    }
    Ok(StageOutcome::Done(json!({
        "checks": checks,
        "snapname": name.to_string(),
        "vm_snapshots": Value::Object(done),
    })))
}
