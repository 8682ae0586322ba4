//! `recreate-vm`: re-create the lost node's VM under a fresh VMID: restore its newest backup
//! (MACs kept: `unique=0`) or full-clone the template and give the clone the lost VM's MAC,
//! cores and memory; start it; point the profile's mapping at it.
//!
//! Crash safety: the new VMID is written to the checkpoint before the POST that creates it. A
//! resumed run looks for that VMID in `/cluster/resources` and never creates a second VM: a VM
//! still locked by its task is waited for; one that is absent was never created (PVE removes
//! a failed clone itself). A failed create is reported with its VMID and how to remove it;
//! nothing is ever destroyed here, and the old VMID (on the dead host) is left for the user.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Plan, Poller, Stage, StageCtx, StageData, StageOutcome};
use crate::error::UserError;
use crate::profile::NodeUpdate;
use crate::pve::{CloneRequest, PveClient, RestoreRequest, Target, Upid, VmRef};
use crate::rebuild::{self, RebuildPlan, Strategy};

pub struct RecreateVm;

/// The journal of one VM re-creation (`outputs` of the stage, updated step by step).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RecreateOutputs {
    /// Reserved before the create POST.
    pub newid: Option<u32>,
    pub new_vm: Option<VmRef>,
    /// The create POST was (about to be) sent.
    pub posted: bool,
    pub upid: Option<String>,
    pub created: bool,
    /// Template clone: MAC, cores and memory set.
    pub configured: bool,
    pub started: bool,
    pub profile_updated: bool,
    /// The lost VM, left for the user to remove once its host is back.
    pub old_vm: Option<VmRef>,
    /// PVE API calls this stage made (for the report).
    pub api_calls: u32,
}

impl StageData for RecreateOutputs {
    const KIND: &'static str = "recreate-vm";
}

impl Stage for RecreateVm {
    fn kind(&self) -> &'static str {
        "recreate-vm"
    }
    fn title(&self) -> &'static str {
        "re-create the VM (backup restore or template clone) under a new VMID and start it"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        let from = plan
            .inputs
            .rebuild_from
            .as_deref()
            .unwrap_or("backup when one exists, else template");
        vec![
            "GET /cluster/nextid (the VMID is recorded before the create)".into(),
            format!(
                "POST /nodes/<target>/qemu (archive=<newest backup>, unique=0) or POST /nodes/<n>/qemu/<template>/clone (full=1) — from: {from}"
            ),
            "template: GET/PUT …/config net0=<lost VM's MAC>, cores, memory".into(),
            "POST …/status/start; profile.toml: vm = { node, vmid } of the new VM".into(),
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
    let out = recreate(ctx, &plan, &Own(ctx)).await?;
    StageOutcome::done(&out)
}

/// A stage's journal of one step: read it, and change it (written to the checkpoint at once).
pub trait Journal<T> {
    fn get(&self) -> anyhow::Result<T>;
    fn set(&self, f: &mut dyn FnMut(&mut T)) -> anyhow::Result<()>;
}

/// The journal is the stage's own outputs.
pub struct Own<'a>(pub &'a StageCtx<'a>);

impl<T: StageData> Journal<T> for Own<'_> {
    fn get(&self) -> anyhow::Result<T> {
        self.0.own::<T>()
    }
    fn set(&self, f: &mut dyn FnMut(&mut T)) -> anyhow::Result<()> {
        self.0.update(|o: &mut T| f(o))
    }
}

/// Re-creates one VM as `plan` says, step by step through `j`.
pub async fn recreate(
    ctx: &StageCtx<'_>,
    plan: &RebuildPlan,
    j: &(dyn Journal<RecreateOutputs> + Sync),
) -> anyhow::Result<RecreateOutputs> {
    let pve = ctx.pve()?;
    j.set(&mut |o: &mut RecreateOutputs| o.old_vm = plan.old_vm.clone())?;
    let mut calls = 0u32;

    let newid = match j.get()?.newid {
        Some(id) => id,
        None => {
            calls += 1;
            let id = pve.next_vmid().await?;
            j.set(&mut |o: &mut RecreateOutputs| o.newid = Some(id))?;
            id
        }
    };
    let home = match plan.strategy {
        Strategy::Backup => plan.target_node.clone(),
        Strategy::Template => plan
            .template
            .as_ref()
            .map_or_else(String::new, |t| t.node.clone()),
    };
    let mut new_vm = VmRef::new(plan.target_node.clone(), newid);

    if !j.get()?.created {
        let prior = j.get()?;
        let mut exists = false;
        if prior.posted {
            // Interrupted after the POST may have gone out: look before creating anything.
            calls += 1;
            if let Some(vm) = pve
                .cluster_vms()
                .await?
                .into_iter()
                .find(|v| v.vmid == newid)
            {
                exists = true;
                new_vm = vm.vm_ref();
                if vm.lock.is_some() {
                    calls += wait_unlocked(ctx, pve, newid, prior.upid.as_deref(), &new_vm).await?;
                }
            }
        }
        if !exists {
            j.set(&mut |o: &mut RecreateOutputs| {
                o.posted = true;
                o.upid = None;
            })?;
            calls += 1;
            let upid = match plan.strategy {
                Strategy::Backup => {
                    let b = plan
                        .backup
                        .as_ref()
                        .ok_or_else(|| UserError::failed("the plan has no backup to restore"))?;
                    pve.restore_vm(
                        &plan.target_node,
                        &RestoreRequest {
                            vmid: newid,
                            archive: b.volid.clone(),
                            storage: None,
                            unique: false,
                        },
                    )
                    .await
                }
                Strategy::Template => {
                    let t = plan
                        .template
                        .as_ref()
                        .ok_or_else(|| UserError::failed("the plan has no template to clone"))?;
                    pve.clone_vm(
                        t,
                        &CloneRequest {
                            newid,
                            name: plan.vm_name.clone(),
                            target: (plan.target_node != t.node).then(|| plan.target_node.clone()),
                            storage: None,
                            description: Some(format!(
                                "talos-dr rebuild-node {} (replaces VM {})",
                                plan.node,
                                plan.old_vm.as_ref().map_or(0, |v| v.vmid)
                            )),
                        },
                    )
                    .await
                }
            }
            .map_err(|e| create_failed(plan, &new_vm, &e.to_string(), false))?;
            j.set(&mut |o: &mut RecreateOutputs| o.upid = Some(upid.as_str().to_owned()))?;
            let key = format!("vm {newid}");
            let target = Target::vm(&VmRef::new(home.clone(), newid));
            let (polled, result) = wait_counted(pve, &upid, &key, &target).await;
            calls += polled;
            if let Err(e) = result {
                return Err(create_failed(plan, &new_vm, &e.to_string(), true).into());
            }
        }
        j.set(&mut |o: &mut RecreateOutputs| {
            o.created = true;
            o.new_vm = Some(new_vm.clone());
        })?;
        ctx.reporter.info(&format!(
            "VM {newid} created on {} ({})",
            new_vm.node, plan.strategy
        ));
    }

    if plan.strategy == Strategy::Template && !j.get()?.configured {
        calls += 2;
        let cfg = pve.vm_config(&new_vm).await?;
        let net0 = cfg
            .other
            .get("net0")
            .and_then(|v| v.as_str())
            .unwrap_or("virtio,bridge=vmbr0")
            .to_owned();
        let mac = plan.mac.clone().unwrap_or_default();
        let mut params = vec![("net0", crate::pve::with_mac(&net0, &mac))];
        if let Some(c) = plan.cores {
            params.push(("cores", c.to_string()));
        }
        if let Some(m) = plan.memory_mib {
            params.push(("memory", m.to_string()));
        }
        pve.update_vm_config(&new_vm, &params, cfg.digest.as_deref())
            .await
            .map_err(|e| {
                UserError::failed(format!(
                    "VM {newid} was cloned but its MAC could not be set: {e}"
                ))
                .hint(format!(
                    "set net0 to MAC {mac} in the web UI and run `talos-dr resume`, or {}",
                    rebuild::cleanup_hint(&new_vm)
                ))
            })?;
        j.set(&mut |o: &mut RecreateOutputs| o.configured = true)?;
    }

    if !j.get()?.started {
        calls += 1;
        let status = pve.vm_status(&new_vm).await?;
        if status.status != "running" {
            calls += 1;
            let upid = pve.start_vm(&new_vm).await?;
            let (polled, result) =
                wait_counted(pve, &upid, &format!("vm {newid}"), &Target::vm(&new_vm)).await;
            calls += polled;
            result.map_err(|e| {
                UserError::failed(format!("VM {newid} on {} did not start: {e}", new_vm.node))
            })?;
        }
        j.set(&mut |o: &mut RecreateOutputs| o.started = true)?;
    }

    if !j.get()?.profile_updated {
        let path = ctx.profile().config_dir.join(crate::profile::PROFILE_FILE);
        crate::profile::update_nodes(
            &path,
            &[NodeUpdate {
                address: plan.node.clone(),
                vm: Some(new_vm.clone()),
                mac: plan.mac.clone(),
            }],
        )
        .map_err(|e| {
            UserError::failed(format!(
                "the new VM {newid} runs, but the profile could not be updated: {e}"
            ))
            .hint(format!(
                "set `vm = {{ node = \"{}\", vmid = {newid} }}` on node {}'s [[nodes]] entry by hand",
                new_vm.node, plan.node
            ))
        })?;
        j.set(&mut |o: &mut RecreateOutputs| o.profile_updated = true)?;
    }
    j.set(&mut |o: &mut RecreateOutputs| o.api_calls += calls)?;
    if let Some(old) = &plan.old_vm {
        ctx.reporter.warn(&format!(
            "the lost VM {} on {} stays registered (its host is down); once the host is back, remove it there — never start it: `qm destroy {} --purge`",
            old.vmid, old.node, old.vmid
        ));
    }
    j.get()
}

/// Waits for a task, counting the status polls (reported in the closing numbers).
async fn wait_counted(
    pve: &PveClient,
    upid: &Upid,
    key: &str,
    target: &Target,
) -> (u32, Result<(), crate::pve::PveError>) {
    match pve.wait_for_task(upid, key, target).await {
        Ok(o) => (o.polls, Ok(())),
        Err(e) => (1, Err(e)),
    }
}

/// A resumed run found the VM still locked by its create task: wait for the task (when its
/// UPID was recorded) or for the lock to go.
async fn wait_unlocked(
    ctx: &StageCtx<'_>,
    pve: &PveClient,
    newid: u32,
    upid: Option<&str>,
    vm: &VmRef,
) -> anyhow::Result<u32> {
    if let Some(u) = upid.and_then(|u| u.parse::<Upid>().ok()) {
        let (polled, r) = wait_counted(pve, &u, &format!("vm {newid}"), &Target::vm(vm)).await;
        r.map_err(|e| UserError::failed(format!("the create task of VM {newid} failed: {e}")))?;
        return Ok(polled);
    }
    let mut poller = Poller::new(ctx.inputs.wait_timeout(), ctx.inputs.poll_max());
    let mut calls = 0;
    loop {
        calls += 1;
        match pve
            .cluster_vms()
            .await?
            .into_iter()
            .find(|v| v.vmid == newid)
        {
            Some(v) if v.lock.is_none() => return Ok(calls),
            None => {
                return Err(UserError::failed(format!(
                    "VM {newid} disappeared while its create task ran (the task failed and PVE removed it)"
                ))
                .hint("run `talos-dr resume` to create it again")
                .into());
            }
            Some(v) => {
                if !poller.wait().await {
                    return Err(UserError::failed(format!(
                        "VM {newid} on {} is still locked ({}) after the wait",
                        v.node,
                        v.lock.unwrap_or_default()
                    ))
                    .hint(rebuild::cleanup_hint(vm))
                    .into());
                }
            }
        }
    }
}

fn create_failed(plan: &RebuildPlan, vm: &VmRef, error: &str, may_exist: bool) -> UserError {
    let what = match plan.strategy {
        Strategy::Backup => "restore of the backup",
        Strategy::Template => "clone of the template",
    };
    let e = UserError::failed(format!("the {what} into VM {} failed: {error}", vm.vmid));
    if may_exist {
        e.hint(format!(
            "a partial VM {} may be left on {} (nothing was deleted): {}",
            vm.vmid,
            vm.node,
            rebuild::cleanup_hint(vm)
        ))
    } else {
        e.hint("nothing was created; fix the cause and run `talos-dr resume`")
    }
}
