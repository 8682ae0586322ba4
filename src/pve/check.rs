//! Per-VM preflight (`vm-check`): exists on the expected node, running, not locked, and every
//! disk supports snapshots.
//!
//! A check collects every problem instead of stopping at the first, and [`check_vms`] checks
//! several VMs in parallel, so one run tells the operator everything to fix.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::pve::client::PveClient;
use crate::pve::error::PveError;
use crate::pve::types::VmRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOptions {
    /// The VM must be running (QMP state `running`).
    pub require_running: bool,
    /// Every disk must support snapshots (`feature?feature=snapshot`).
    pub require_snapshot_feature: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            require_running: true,
            require_snapshot_feature: true,
        }
    }
}

/// The result for one VM. `ok` is `problems.is_empty()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmCheck {
    pub vm: VmRef,
    pub ok: bool,
    pub name: Option<String>,
    pub status: Option<String>,
    pub qmpstatus: Option<String>,
    pub lock: Option<String>,
    pub snapshot_feature: Option<bool>,
    /// Each one names the VMID and the reason.
    pub problems: Vec<String>,
}

/// Checks one VM; API failures become problems, never panics or early errors.
pub async fn check_vm(client: &PveClient, vm: &VmRef, opts: CheckOptions) -> VmCheck {
    let mut check = VmCheck {
        vm: vm.clone(),
        ok: false,
        name: None,
        status: None,
        qmpstatus: None,
        lock: None,
        snapshot_feature: None,
        problems: Vec::new(),
    };
    let id = vm.vmid;
    match client.vm_status(vm).await {
        Ok(s) => {
            if s.template {
                check
                    .problems
                    .push(format!("VM {id} is a template, not a cluster node"));
            }
            if opts.require_running && !s.is_running() {
                check.problems.push(format!(
                    "VM {id} is not running (status {}, QMP state {})",
                    s.status,
                    s.qmpstatus.as_deref().unwrap_or("unknown")
                ));
            }
            if let Some(lock) = &s.lock {
                check.problems.push(format!(
                    "VM {id} is locked ({lock}); wait for the {lock} job to finish, or clear a \
                     stale lock with `qm unlock {id}` on node {}",
                    vm.node
                ));
            }
            check.name = s.name;
            check.status = Some(s.status);
            check.qmpstatus = s.qmpstatus;
            check.lock = s.lock;
        }
        Err(e)
            if e.server_message()
                .is_some_and(|m| m.contains("does not exist")) =>
        {
            check.problems.push(where_is(client, vm).await);
            return finish(check);
        }
        Err(e) => {
            check.problems.push(format!(
                "VM {id} on node {}: cannot read status: {e}",
                vm.node
            ));
            return finish(check);
        }
    }
    if opts.require_snapshot_feature {
        match client.snapshot_feature(vm).await {
            Ok(f) => {
                check.snapshot_feature = Some(f.has_feature);
                if !f.has_feature {
                    let disks = match client.vm_config(vm).await {
                        Ok(cfg) => cfg
                            .disks()
                            .into_iter()
                            .map(|(k, v)| format!("{k}={}", v.split(',').next().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(", "),
                        Err(_) => String::new(),
                    };
                    check.problems.push(format!(
                        "VM {id}: snapshot feature not available for every disk{} (raw images on \
                         directory/NFS storage or thick LVM cannot be snapshotted)",
                        if disks.is_empty() {
                            String::new()
                        } else {
                            format!(" ({disks})")
                        }
                    ));
                }
            }
            Err(e) => check
                .problems
                .push(format!("VM {id}: cannot check the snapshot feature: {e}")),
        }
    }
    finish(check)
}

fn finish(mut check: VmCheck) -> VmCheck {
    check.ok = check.problems.is_empty();
    check
}

/// "VM 101 does not exist on node pve1", plus where it is if the cluster knows.
async fn where_is(client: &PveClient, vm: &VmRef) -> String {
    let base = format!("VM {} does not exist on node {}", vm.vmid, vm.node);
    match client.cluster_vms().await {
        Ok(vms) => match vms.iter().find(|v| v.vmid == vm.vmid) {
            Some(v) if v.is_qemu() => format!(
                "{base}: it is on node {} (update the profile or run `profile discover`)",
                v.node
            ),
            Some(v) => format!(
                "{base}: {} is a {} guest on node {}",
                vm.vmid, v.kind, v.node
            ),
            None => format!("{base}, nor anywhere else in the cluster"),
        },
        Err(_) => base,
    }
}

/// Checks several VMs, at most `max_parallel` at a time; results in the order of `vms`.
pub async fn check_vms(
    client: &PveClient,
    vms: &[VmRef],
    opts: CheckOptions,
    max_parallel: usize,
) -> Vec<VmCheck> {
    let sem = Arc::new(Semaphore::new(max_parallel.max(1)));
    let mut set = JoinSet::new();
    for (i, vm) in vms.iter().enumerate() {
        let (client, vm, sem) = (client.clone(), vm.clone(), Arc::clone(&sem));
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            (i, check_vm(&client, &vm, opts).await)
        });
    }
    let mut out: Vec<Option<VmCheck>> = vec![None; vms.len()];
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, c)) => out[i] = Some(c),
            Err(e) => tracing::error!(error = %e, "vm check task failed"),
        }
    }
    out.into_iter()
        .zip(vms)
        .map(|(c, vm)| {
            c.unwrap_or_else(|| VmCheck {
                vm: vm.clone(),
                ok: false,
                name: None,
                status: None,
                qmpstatus: None,
                lock: None,
                snapshot_feature: None,
                problems: vec![format!("VM {}: check did not complete", vm.vmid)],
            })
        })
        .collect()
}

/// `Ok` when every check passed, else one error listing every problem of every VM.
pub fn ensure_ok(checks: &[VmCheck]) -> Result<(), PveError> {
    let problems: Vec<String> = checks.iter().flat_map(|c| c.problems.clone()).collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PveError::VmCheckFailed { problems })
    }
}
