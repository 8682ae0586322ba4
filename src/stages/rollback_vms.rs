//! `rollback-vms`: roll every VM of the set back to its snapshot, in parallel (at most
//! `proxmox.max_parallel`), with `start=1` unless `--no-start`, and wait for the tasks.
//!
//! A rollback is never sent twice blindly: each VM is journaled `posting` before the POST and
//! `started` with the UPID after it. A resumed run waits for started tasks; a VM left `posting`
//! (the answer was lost) cannot be told apart from outside, so it is reported for the operator to
//! check instead of being rolled back again. ZFS's "is not most recent snapshot" refusal is
//! explained.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::rollback_preflight::{load_set, plan_vms};
use super::vm_snapshots::{VmEntry, VmJournal, VmState, journal, pve_message};
use super::{Inputs, Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::engine::playbook::Confirm;
use crate::error::UserError;
use crate::poll::Batch;
use crate::profile::Profile;
use crate::pve::client::spinner_key;
use crate::pve::{PveClient, PveError, SnapshotName, Target, Upid};
use crate::sets::{self, SetVm};

pub struct RollbackVms;

impl Stage for RollbackVms {
    fn kind(&self) -> &'static str {
        "rollback-vms"
    }
    fn title(&self) -> &'static str {
        "roll every VM of the set back to its snapshot"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        let mut v = vec![format!(
            "typed confirmation ({:?}): running VMs are hard-stopped",
            plan.profile.name()
        )];
        v.extend(plan_vms(plan, |vm, snap| {
            format!(
                "POST /nodes/{}/qemu/{}/snapshot/{snap}/rollback start={}, then poll the task",
                vm.node,
                vm.vmid,
                u8::from(!plan.inputs.no_start)
            )
        }));
        v
    }
    fn min_confirm(&self) -> Confirm {
        Confirm::Typed
    }
    fn typed_warning(&self, profile: &Profile, inputs: &Inputs, stage: &str) -> String {
        format!(
            "Stage {stage} is destructive: it hard-stops every VM of set {} of cluster {:?} and rolls its disks back, discarding everything written since the set was made.",
            inputs.label.as_deref().unwrap_or("?"),
            profile.name()
        )
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

/// The stage's journal and outputs: one entry per VM, keyed by VMID.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RollbackVmsRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<bool>,
    pub vms: BTreeMap<String, VmEntry>,
}

impl StageData for RollbackVmsRecord {
    const KIND: &'static str = "rollback-vms";
}

impl VmJournal for RollbackVmsRecord {
    fn vms_mut(&mut self) -> &mut BTreeMap<String, VmEntry> {
        &mut self.vms
    }
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let m = load_set(ctx)?;
    let client = ctx.pve()?.clone();
    let max_parallel = ctx
        .profile()
        .file
        .proxmox
        .as_ref()
        .map_or(4, |p| p.max_parallel)
        .max(1);
    let start = !ctx.inputs.no_start;
    let prior = ctx.own::<RollbackVmsRecord>()?.vms;
    let sem = Semaphore::new(max_parallel);
    // One batch: the first rollback to finish times the polls of the others.
    let batch = Batch::new(max_parallel.min(m.vms.len()));
    let results: Vec<VmEntry> = futures::future::join_all(m.vms.iter().map(|v| {
        let prior = prior.get(&v.vmid.to_string()).cloned();
        let (sem, client, label, batch) = (&sem, &client, m.label.as_str(), &batch);
        async move {
            let _permit = sem.acquire().await.ok();
            rollback_one(ctx, client, v, label, prior, start, batch).await
        }
    }))
    .await;
    let failed: Vec<&VmEntry> = results
        .iter()
        .filter(|e| e.state != VmState::Done)
        .collect();
    if !failed.is_empty() {
        let done: Vec<String> = results
            .iter()
            .filter(|e| e.state == VmState::Done)
            .map(|e| e.vmid.to_string())
            .collect();
        let zfs = failed.iter().any(|e| {
            e.error
                .as_deref()
                .is_some_and(|m| m.contains("is not most recent snapshot"))
        });
        let mut err = UserError::failed(format!(
            "{} of {} VMs of set {} were not rolled back{}:\n  - {}",
            failed.len(),
            results.len(),
            m.label,
            if done.is_empty() {
                String::new()
            } else {
                format!(" (rolled back: {})", done.join(", "))
            },
            super::vm_snapshots::failure_list(&failed)
        ));
        if zfs {
            err = err.hint(
                "ZFS rolls back only to a VM's newest snapshot: delete the snapshots taken after the set's on those VMs (talos-dr never deletes snapshots it did not make), then `talos-dr resume`",
            );
        }
        if !done.is_empty() {
            err = err.hint(
                "the cluster is now mixed (some VMs rolled back, some not): finish the rollback with `talos-dr resume` before using it",
            );
        }
        return Err(err.into());
    }
    StageOutcome::done(&RollbackVmsRecord {
        label: Some(m.label),
        started: Some(start),
        vms: super::vm_snapshots::by_vmid(results),
    })
}

async fn rollback_one(
    ctx: &StageCtx<'_>,
    client: &PveClient,
    v: &SetVm,
    label: &str,
    prior: Option<VmEntry>,
    start: bool,
    batch: &Batch,
) -> VmEntry {
    let vm = v.vm_ref();
    let mut member = batch.join();
    let mut e = VmEntry {
        address: v.address.clone(),
        role: v.role.clone(),
        node: v.node.clone(),
        vmid: v.vmid,
        state: VmState::Posting,
        upid: None,
        exitstatus: None,
        error: None,
        polls: None,
    };
    let finish = |mut e: VmEntry, r: Result<(String, u32), PveError>| {
        match r {
            Ok((status, polls)) => {
                e.state = VmState::Done;
                e.exitstatus = Some(status);
                e.error = None;
                e.polls = Some(polls);
            }
            Err(err) => {
                e.state = super::vm_snapshots::state_after_error(&err, e.upid.is_some());
                e.error = Some(explain(&err, &vm, &v.snapname));
            }
        }
        journal::<RollbackVmsRecord>(ctx, &e);
        e
    };
    // The manifest could have been edited: never roll back to a name that is not ours.
    let name = match SnapshotName::parse(&v.snapname) {
        Ok(n) if sets::is_ours(n.as_str(), label) => n,
        _ => {
            e.state = VmState::Failed;
            e.error = Some(format!(
                "{} is not a snapshot talos-dr made for set {label}; refused",
                v.snapname
            ));
            journal::<RollbackVmsRecord>(ctx, &e);
            return e;
        }
    };
    if let Some(p) = prior {
        match (p.state, p.upid.as_deref().map(str::parse::<Upid>)) {
            (VmState::Done, _) => return p,
            (VmState::Started, Some(Ok(upid))) => {
                e.upid = Some(upid.to_string());
                let r = client
                    .wait_for_task_in(&upid, &spinner_key(&vm), &Target::vm(&vm), &mut member)
                    .await
                    .map(|o| (o.exitstatus, o.polls));
                return finish(e, r);
            }
            (VmState::Posting, _) | (VmState::Started, _) => {
                e.error = Some(format!(
                    "a rollback of VM {} was being sent when the run stopped and its task is unknown; check the VM's task log in the Proxmox VE UI (node {}), then roll it back by hand if needed, or `runs abandon` this run",
                    v.vmid, v.node
                ));
                e.state = VmState::Failed;
                return e;
            }
            // A failed rollback task changed nothing that a second attempt would repeat.
            (VmState::Failed, _) => {}
        }
    }
    if !journal::<RollbackVmsRecord>(ctx, &e) {
        e.state = VmState::Failed;
        e.error = Some("the checkpoint could not be saved, so the rollback was not sent".into());
        return e;
    }
    let upid = match client.rollback_snapshot(&vm, &name, start).await {
        Ok(u) => u,
        Err(err) => return finish(e, Err(err)),
    };
    e.state = VmState::Started;
    e.upid = Some(upid.to_string());
    journal::<RollbackVmsRecord>(ctx, &e);
    let r = client
        .wait_for_task_in(&upid, &spinner_key(&vm), &Target::vm(&vm), &mut member)
        .await
        .map(|o| (o.exitstatus, o.polls));
    finish(e, r)
}

/// PVE's message, with what it means for the operator where we know.
fn explain(err: &PveError, vm: &crate::pve::VmRef, snap: &str) -> String {
    let msg = pve_message(err);
    if msg.contains("is not most recent snapshot") {
        format!(
            "{msg} — VM {} is on ZFS storage, which rolls back only to the newest snapshot; newer snapshots than {snap} must be deleted first",
            vm.vmid
        )
    } else {
        msg
    }
}
