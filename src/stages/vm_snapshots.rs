//! `vm-snapshots`: one Proxmox snapshot of every VM of the set, in parallel, at most
//! `proxmox.max_parallel` at a time (PVE hosts serialise some storage work), one spinner per VM.
//! All share the name `talosdr-<label>-<yymmddhhmm>`.
//!
//! Each VM's progress is journaled in the checkpoint before each side effect: `posting` before
//! the POST, `started` with the UPID as soon as PVE answers, then `done` or `failed`. A resumed
//! run waits for the tasks it had started instead of starting new ones, and asks the snapshot
//! list (never a blind second POST) about a VM whose POST was in flight. Only missing snapshots
//! are created.
//!
//! When some snapshots fail, the manifest lists only those that exist, the run fails (exit 1),
//! and the error names each failed VM with PVE's message and the commands to retry or clean up.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::set_etcd_snapshot::SetEtcdOutputs;
use super::upgrade_preflight::{
    SetTarget, UpgradePreflightOutputs, identity, manifest, plan_label, recorded_targets, targets,
};
use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::error::UserError;
use crate::poll::Batch;
use crate::pve::client::spinner_key;
use crate::pve::{PveClient, PveError, SnapshotName, SnapshotRequest, Target, Upid};
use crate::sets::{self, SetFailure, SetVm};

pub struct VmSnapshots;

impl Stage for VmSnapshots {
    fn kind(&self) -> &'static str {
        "vm-snapshots"
    }
    fn title(&self) -> &'static str {
        "snapshot every VM of the set, in parallel"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        let (profile, inputs) = (plan.profile, plan.inputs);
        let snap = format!("talosdr-{}-<yymmddhhmm>", plan_label(plan));
        let par = profile.file.proxmox.as_ref().map_or(4, |p| p.max_parallel);
        let mut v: Vec<String> = targets(profile, inputs.control_plane_only)
            .0
            .iter()
            .map(|t| {
                format!(
                    "POST /nodes/{}/qemu/{}/snapshot snapname={snap} vmstate={}, then poll the task",
                    t.vm.node,
                    t.vm.vmid,
                    u8::from(inputs.vmstate)
                )
            })
            .collect();
        v.push(format!("at most {par} at a time (proxmox.max_parallel)"));
        v
    }
    fn requires(&self) -> &'static [&'static str] {
        &[UpgradePreflightOutputs::KIND]
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

/// The stage's journal and outputs: one entry per VM, keyed by VMID.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct VmSnapshotsRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapname: Option<SnapshotName>,
    pub vms: BTreeMap<String, VmEntry>,
    /// Task-status polls of all VMs (for the benchmark).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_polls: Option<u32>,
}

impl StageData for VmSnapshotsRecord {
    const KIND: &'static str = "vm-snapshots";
}

/// A stage that journals one Proxmox task per VM (`vm-snapshots`, `rollback-vms`).
pub trait VmJournal: StageData {
    fn vms_mut(&mut self) -> &mut BTreeMap<String, VmEntry>;
}

impl VmJournal for VmSnapshotsRecord {
    fn vms_mut(&mut self) -> &mut BTreeMap<String, VmEntry> {
        &mut self.vms
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// The POST is about to be sent (or was, and its answer was lost).
    Posting,
    /// PVE answered with a UPID; the task may still run.
    Started,
    Done,
    Failed,
}

/// One VM's journal entry, `outputs.vms.<vmid>` in the checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmEntry {
    pub address: String,
    pub role: String,
    pub node: String,
    pub vmid: u32,
    pub state: VmState,
    #[serde(default)]
    pub upid: Option<String>,
    #[serde(default)]
    pub exitstatus: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// Task-status polls made (for the benchmark and diagnostics).
    #[serde(default)]
    pub polls: Option<u32>,
}

impl VmEntry {
    /// The manifest's record of this VM's snapshot.
    pub fn to_set_vm(&self, snapname: &str) -> SetVm {
        SetVm {
            address: self.address.clone(),
            role: self.role.clone(),
            node: self.node.clone(),
            vmid: self.vmid,
            snapname: snapname.to_owned(),
            exitstatus: self.exitstatus.clone().unwrap_or_else(|| "OK".into()),
            upid: self.upid.clone(),
            spec: None,
        }
    }
}

/// Where a VM stands after a failed call, so that `resume` never repeats a task that may have
/// run: a task that ended badly, or a request PVE answered with an error, or one that never left,
/// can be sent again (`Failed`); a task whose end we did not see is waited for (`Started`); a POST
/// whose answer was lost is left for the operator to check (`Posting`).
pub fn state_after_error(err: &PveError, had_upid: bool) -> VmState {
    match err {
        PveError::TaskFailed { .. } => VmState::Failed,
        _ if had_upid => VmState::Started,
        PveError::Transport { not_sent: true, .. } => VmState::Failed,
        PveError::Api { status, .. } if !matches!(status, 502..=504 | 595 | 596) => VmState::Failed,
        PveError::Api { .. } | PveError::Transport { .. } => VmState::Posting,
        _ => VmState::Failed,
    }
}

/// Entries keyed by VMID, as the checkpoint outputs hold them.
pub fn by_vmid(entries: Vec<VmEntry>) -> BTreeMap<String, VmEntry> {
    entries
        .into_iter()
        .map(|e| (e.vmid.to_string(), e))
        .collect()
}

/// `VM 101 on node pve1: <error>` lines, one per failed VM, for error messages.
pub fn failure_list(failed: &[&VmEntry]) -> String {
    failed
        .iter()
        .map(|e| {
            format!(
                "VM {} on node {}: {}",
                e.vmid,
                e.node,
                e.error.as_deref().unwrap_or("unknown error")
            )
        })
        .collect::<Vec<_>>()
        .join("\n  - ")
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let client = ctx.pve()?.clone();
    let id = identity(ctx)?;
    let targets = recorded_targets(ctx)?;
    if targets.is_empty() {
        return Err(UserError::usage(format!(
            "profile {} maps no node to a Proxmox VM",
            ctx.profile().name()
        ))
        .into());
    }
    let max_parallel = ctx
        .profile()
        .file
        .proxmox
        .as_ref()
        .map_or(4, |p| p.max_parallel)
        .max(1);
    let etcd_file = ctx
        .output_if::<SetEtcdOutputs>()?
        .and_then(|o| o.etcd)
        .and_then(|e| e.path.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "none".to_owned());
    let req = SnapshotRequest {
        name: id.snapname.clone(),
        description: Some(format!(
            "talos-dr {} pre-upgrade set {}; etcd snapshot {etcd_file}",
            env!("CARGO_PKG_VERSION"),
            id.label
        )),
        vmstate: ctx.inputs.vmstate,
    };
    let prior = ctx.own::<VmSnapshotsRecord>()?.vms;

    // Concurrent futures on this task (not spawned), so each can journal through `ctx`. One
    // batch: the first snapshot to finish times the polls of the others.
    let sem = Semaphore::new(max_parallel);
    let batch = Batch::new(max_parallel.min(targets.len()));
    let results: Vec<VmEntry> = futures::future::join_all(targets.iter().map(|t| {
        let prior = prior.get(&t.vm.vmid.to_string()).cloned();
        let (sem, client, req, batch) = (&sem, &client, &req, &batch);
        async move {
            let _permit = sem.acquire().await.ok();
            snapshot_one(ctx, client, t, prior, req, batch).await
        }
    }))
    .await;

    let mut m = manifest(ctx, &id)?;
    m.vms = results
        .iter()
        .filter(|e| e.state == VmState::Done)
        .map(|e| e.to_set_vm(id.snapname.as_ref()))
        .collect();
    let failed: Vec<&VmEntry> = results
        .iter()
        .filter(|e| e.state != VmState::Done)
        .collect();
    m.missing = failed
        .iter()
        .map(|e| SetFailure {
            node: e.node.clone(),
            vmid: e.vmid,
            error: e.error.clone().unwrap_or_default(),
        })
        .collect();
    m.status = sets::SetStatus::Incomplete;
    sets::save(&ctx.profile().sets_dir(), &m)?;

    if !failed.is_empty() {
        let profile = ctx.profile().cli();
        let run_id = ctx.run_id();
        return Err(UserError::failed(format!(
            "{} of {} VM snapshots of set {} failed; the set is incomplete (its manifest lists the {} that exist):\n  - {}",
            failed.len(),
            results.len(),
            id.label,
            m.vms.len(),
            failure_list(&failed)
        ))
        .hint(format!(
            "fix the cause, then create only the missing snapshots: `{profile} resume {run_id}`"
        ))
        .hint(format!(
            "or remove the partial set (VM snapshots and etcd snapshot): `{profile} sets delete {}`",
            id.label
        ))
        .into());
    }
    let polls: u32 = results.iter().filter_map(|e| e.polls).sum();
    StageOutcome::done(&VmSnapshotsRecord {
        snapname: Some(id.snapname),
        vms: by_vmid(results),
        task_polls: Some(polls),
    })
}

/// Saves this VM's entry in the checkpoint; `false` if it could not be written (then no task
/// may be started for it: a crash would leave no trace of the request).
pub(super) fn journal<T: VmJournal>(ctx: &StageCtx<'_>, e: &VmEntry) -> bool {
    let saved = ctx.update(|r: &mut T| {
        r.vms_mut().insert(e.vmid.to_string(), e.clone());
    });
    if let Err(err) = &saved {
        ctx.reporter.warn(&format!(
            "VM {} on node {}: could not save the checkpoint: {err}",
            e.vmid, e.node
        ));
    }
    saved.is_ok()
}

/// PVE's own words where there are some (task exit status, API message), else our error text.
pub fn pve_message(e: &PveError) -> String {
    match e {
        PveError::TaskFailed { exitstatus, .. } => exitstatus.clone(),
        PveError::Api { status, .. } if *status >= 595 => e.to_string(),
        _ => e
            .server_message()
            .map_or_else(|| e.to_string(), str::to_owned),
    }
}

async fn snapshot_one(
    ctx: &StageCtx<'_>,
    client: &PveClient,
    t: &SetTarget,
    prior: Option<VmEntry>,
    req: &SnapshotRequest,
    batch: &Batch,
) -> VmEntry {
    let vm = &t.vm;
    let mut member = batch.join();
    let mut e = VmEntry {
        address: t.address.clone(),
        role: t.role.clone(),
        node: vm.node.clone(),
        vmid: vm.vmid,
        state: VmState::Posting,
        upid: None,
        exitstatus: None,
        error: None,
        polls: None,
    };
    let finish = |mut e: VmEntry, r: Result<(String, Option<u32>), String>| {
        match r {
            Ok((status, polls)) => {
                e.state = VmState::Done;
                e.exitstatus = Some(status);
                e.error = None;
                e.polls = polls;
            }
            Err(msg) => {
                e.state = VmState::Failed;
                e.error = Some(msg);
            }
        }
        journal::<VmSnapshotsRecord>(ctx, &e);
        e
    };

    if let Some(p) = prior {
        match (p.state, p.upid.as_deref().map(str::parse::<Upid>)) {
            (VmState::Done, _) => return p,
            (VmState::Started, Some(Ok(upid))) => {
                // Interrupted while this task ran: wait for it, never start a second one.
                ctx.reporter.info(&format!(
                    "VM {} on node {}: waiting for snapshot task {upid} started before the interruption",
                    vm.vmid, vm.node
                ));
                e.upid = Some(upid.to_string());
                let r = match client
                    .wait_for_task_in(&upid, &spinner_key(vm), &Target::vm(vm), &mut member)
                    .await
                {
                    Ok(o) => Ok((o.exitstatus, Some(o.polls))),
                    Err(err @ PveError::TaskFailed { .. }) => Err(pve_message(&err)),
                    // The task cannot be followed (log rotated, node rebooted): the list decides.
                    Err(err) => match listed(client, vm, &req.name).await {
                        Listed::Complete => Ok(("recovered".to_owned(), None)),
                        _ => return still_running(ctx, e, &err),
                    },
                };
                return finish(e, r);
            }
            _ => match listed(client, vm, &req.name).await {
                // The earlier POST took effect after all.
                Listed::Complete => return finish(e, Ok(("recovered".into(), None))),
                Listed::Incomplete(state) => {
                    return finish(
                        e,
                        Err(format!(
                            "snapshot {} exists but is unfinished (snapstate {state}); check the task log, then remove it with `qm delsnapshot {} {} --force` on node {}",
                            req.name, vm.vmid, req.name, vm.node
                        )),
                    );
                }
                Listed::Error(msg) => return finish(e, Err(msg)),
                Listed::Absent => {}
            },
        }
    }

    if !journal::<VmSnapshotsRecord>(ctx, &e) {
        return finish(
            e,
            Err("the checkpoint could not be saved, so the snapshot was not requested".into()),
        );
    }
    let upid = match client.create_snapshot(vm, req).await {
        Ok(upid) => upid,
        Err(err) if err.is_transient() => match listed(client, vm, &req.name).await {
            Listed::Complete => return finish(e, Ok(("recovered".into(), None))),
            Listed::Absent if matches!(err, PveError::Transport { not_sent: true, .. }) => {
                match client.create_snapshot(vm, req).await {
                    Ok(upid) => upid,
                    Err(err) => return finish(e, Err(pve_message(&err))),
                }
            }
            _ => return finish(e, Err(pve_message(&err))),
        },
        Err(err) => return finish(e, Err(pve_message(&err))),
    };
    e.state = VmState::Started;
    e.upid = Some(upid.to_string());
    journal::<VmSnapshotsRecord>(ctx, &e);
    match client
        .wait_for_task_in(&upid, &spinner_key(vm), &Target::vm(vm), &mut member)
        .await
    {
        Ok(o) => finish(e, Ok((o.exitstatus, Some(o.polls)))),
        Err(err @ PveError::TaskFailed { .. }) => finish(e, Err(pve_message(&err))),
        Err(err) => still_running(ctx, e, &err),
    }
}

/// The task's end was not seen (timeout, status unreadable): it stays `Started` with its UPID, so
/// `resume` waits for it instead of starting a second one.
fn still_running(ctx: &StageCtx<'_>, mut e: VmEntry, err: &PveError) -> VmEntry {
    e.state = VmState::Started;
    e.error = Some(format!(
        "{} (the task may still be running; `talos-dr resume` waits for it)",
        pve_message(err)
    ));
    journal::<VmSnapshotsRecord>(ctx, &e);
    e
}

enum Listed {
    Complete,
    Incomplete(String),
    Absent,
    Error(String),
}

async fn listed(client: &PveClient, vm: &crate::pve::VmRef, name: &SnapshotName) -> Listed {
    match client.list_snapshots(vm).await {
        Ok(list) => match list.into_iter().find(|s| s.name == name.as_str()) {
            Some(s) if s.is_complete() => Listed::Complete,
            Some(s) => Listed::Incomplete(s.snapstate.unwrap_or_default()),
            None => Listed::Absent,
        },
        Err(e) => Listed::Error(pve_message(&e)),
    }
}

#[cfg(test)]
mod state_tests {
    use std::time::Duration;

    use super::{VmState, state_after_error};
    use crate::pve::{PveError, Target};

    fn api(status: u16) -> PveError {
        PveError::Api {
            target: Box::new(Target::none()),
            method: "POST",
            path: "/nodes/pve1/qemu/101/snapshot".into(),
            status,
            message: "x".into(),
            errors: Default::default(),
        }
    }

    fn transport(not_sent: bool) -> PveError {
        PveError::Transport {
            target: Box::new(Target::none()),
            method: "POST",
            path: "/nodes/pve1/qemu/101/snapshot".into(),
            detail: "reset".into(),
            transient: true,
            not_sent,
            source: None,
        }
    }

    #[test]
    fn only_proven_outcomes_allow_sending_the_task_again() {
        let failed = PveError::TaskFailed {
            target: Box::new(Target::none()),
            upid: "u".into(),
            task_type: "qmrollback".into(),
            exitstatus: "VM is locked (backup)".into(),
            log_tail: Vec::new(),
        };
        let timeout = PveError::TaskTimeout {
            target: Box::new(Target::none()),
            upid: "u".into(),
            task_type: "qmrollback".into(),
            elapsed: Duration::from_secs(600),
        };
        // The task ended badly: nothing to repeat by accident.
        assert_eq!(state_after_error(&failed, true), VmState::Failed);
        // The task's end was not seen: wait for it on resume.
        assert_eq!(state_after_error(&timeout, true), VmState::Started);
        assert_eq!(state_after_error(&transport(false), true), VmState::Started);
        // A POST PVE refused, or that never left: safe to send again.
        assert_eq!(state_after_error(&api(500), false), VmState::Failed);
        assert_eq!(state_after_error(&transport(true), false), VmState::Failed);
        // A POST whose answer was lost: the operator must check.
        assert_eq!(state_after_error(&api(596), false), VmState::Posting);
        assert_eq!(
            state_after_error(&transport(false), false),
            VmState::Posting
        );
    }
}
