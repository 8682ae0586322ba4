//! `rollback-preflight`: load the set, show it (age, VMs), and check before anything is stopped
//! that every VM can be rolled back: the set is complete, every snapshot name is one talos-dr
//! made for this label, each snapshot exists and is finished, and no VM is locked. Every problem
//! is reported at once (exit 4). Snapshots newer than the set's are a warning: ZFS storage rolls
//! back only to the newest snapshot and PVE will refuse those VMs.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::error::UserError;
use crate::pve::VmRef;
use crate::sets::{self, SetEtcd, SetManifest, SetStatus, SetVm};

pub struct RollbackPreflight;

impl Stage for RollbackPreflight {
    fn kind(&self) -> &'static str {
        "rollback-preflight"
    }
    fn title(&self) -> &'static str {
        "show the set and check every VM can be rolled back"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        let label = plan.inputs.label.as_deref().unwrap_or("<label>");
        let mut v = vec![format!(
            "read {}",
            sets::manifest_path(&plan.profile.sets_dir(), label).display()
        )];
        v.extend(plan_vms(plan, |vm, _| {
            format!(
                "GET /nodes/{}/qemu/{}/status/current, /snapshot",
                vm.node, vm.vmid
            )
        }));
        v
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

/// The set as it was checked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RollbackPreflightOutputs {
    pub label: String,
    pub snapname: String,
    pub created_at: Option<jiff::Timestamp>,
    pub age: String,
    pub vms: Vec<SetVm>,
    pub etcd: Option<SetEtcd>,
    pub warnings: Vec<String>,
}

impl StageData for RollbackPreflightOutputs {
    const KIND: &'static str = "rollback-preflight";
}

/// One plan line per VM of the set named by `--label` (or a line saying it is not found).
pub fn plan_vms(plan: &Plan<'_>, line: impl Fn(&VmRef, &str) -> String) -> Vec<String> {
    let label = plan.inputs.label.as_deref().unwrap_or("<label>");
    match sets::load(&plan.profile.sets_dir(), label) {
        Ok(m) if !m.vms.is_empty() => m
            .vms
            .iter()
            .map(|v| line(&v.vm_ref(), &v.snapname))
            .collect(),
        _ => vec![format!("(set {label} not found: `talos-dr sets list`)")],
    }
}

/// Loads the set named by `--label`; a missing set is a usage error.
pub fn load_set(ctx: &StageCtx<'_>) -> anyhow::Result<SetManifest> {
    let label = ctx.label()?;
    sets::load(&ctx.profile().sets_dir(), &label).map_err(|e| {
        UserError::usage(e.to_string())
            .hint(format!(
                "list the sets with `{} sets list`",
                ctx.profile().cli()
            ))
            .into()
    })
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let m = load_set(ctx)?;
    let client = ctx.pve()?;
    let now = jiff::Timestamp::now();
    ctx.reporter.info(&format!(
        "set {}: made {} UTC ({} ago), snapshot {}, {} VMs: {}",
        m.label,
        m.created_at.strftime("%Y-%m-%d %H:%M"),
        m.age(now),
        m.snapname,
        m.vms.len(),
        m.vms
            .iter()
            .map(|v| format!("{} ({} {} on {})", v.vmid, v.role, v.address, v.node))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut problems = Vec::new();
    if m.status != SetStatus::Complete {
        problems.push(format!(
            "set {} is incomplete ({} VM snapshots missing); rolling back only part of the cluster would mix old and new state",
            m.label,
            m.missing.len()
        ));
    }
    if m.vms.is_empty() {
        problems.push(format!("set {} has no VM snapshots", m.label));
    }
    let mut warnings = Vec::new();
    let label = m.label.as_str();
    let checks = futures::future::join_all(m.vms.iter().map(|v| async move {
        let vm = v.vm_ref();
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        if !sets::is_ours(&v.snapname, label) {
            problems.push(format!(
                "VM {} on node {}: {} is not a snapshot name talos-dr made for set {label}; refusing to roll back to it",
                v.vmid, v.node, v.snapname
            ));
            return (problems, warnings);
        }
        match client.vm_status(&vm).await {
            Ok(s) => {
                if let Some(lock) = s.lock {
                    problems.push(format!(
                        "VM {} on node {} is locked ({lock}); wait for that job, or clear a stale lock with `qm unlock {}`",
                        v.vmid, v.node, v.vmid
                    ));
                }
            }
            Err(e) => problems.push(format!("VM {} on node {}: {e}", v.vmid, v.node)),
        }
        match client.list_snapshots(&vm).await {
            Ok(list) => match list.iter().find(|s| s.name == v.snapname) {
                None => problems.push(format!(
                    "VM {} on node {}: snapshot {} no longer exists",
                    v.vmid, v.node, v.snapname
                )),
                Some(s) if !s.is_complete() => problems.push(format!(
                    "VM {} on node {}: snapshot {} is unfinished (snapstate {})",
                    v.vmid,
                    v.node,
                    v.snapname,
                    s.snapstate.as_deref().unwrap_or("?")
                )),
                Some(s) => {
                    let ours = s.snaptime.unwrap_or(0);
                    let newer: Vec<&str> = list
                        .iter()
                        .filter(|x| !x.is_current() && x.snaptime.unwrap_or(0) > ours)
                        .map(|x| x.name.as_str())
                        .collect();
                    if !newer.is_empty() {
                        warnings.push(newer_warning(&vm, &v.snapname, &newer));
                    }
                }
            },
            Err(e) => problems.push(format!("VM {} on node {}: {e}", v.vmid, v.node)),
        }
        (problems, warnings)
    }))
    .await;
    for (p, w) in checks {
        problems.extend(p);
        warnings.extend(w);
    }
    for w in &warnings {
        ctx.reporter.warn(w);
    }
    if !problems.is_empty() {
        return Err(UserError::precondition(format!(
            "set {} cannot be rolled back:\n  - {}",
            m.label,
            problems.join("\n  - ")
        ))
        .hint("nothing was stopped or rolled back")
        .into());
    }
    StageOutcome::done(&RollbackPreflightOutputs {
        age: m.age(now),
        label: m.label,
        snapname: m.snapname,
        created_at: Some(m.created_at),
        vms: m.vms,
        etcd: m.etcd,
        warnings,
    })
}

fn newer_warning(vm: &VmRef, snap: &str, newer: &[&str]) -> String {
    format!(
        "VM {} on node {} has snapshots newer than {snap}: {}. On ZFS storage Proxmox VE rolls back only to the newest snapshot and will refuse this VM; talos-dr never deletes snapshots it did not make",
        vm.vmid,
        vm.node,
        newer.join(", ")
    )
}
