//! `upgrade-preflight`: before a pre-upgrade set is made, the cluster must be healthy
//! (`talosctl health`), the Proxmox VE API must answer, every node must be mapped to a VM, and
//! every VM must pass the vm-check (running or stopped, not locked, snapshot feature). Every
//! problem is collected and reported at once (exit 4), so one run tells the operator everything.
//!
//! It also fixes the set's identity (label, snapshot name, time) in the checkpoint, so a resumed
//! run uses the same names. Helpers shared by the other set stages live here too.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Inputs, StageCtx, StageOutcome};
use crate::engine::playbook::StageKind;
use crate::error::UserError;
use crate::profile::{Profile, Role};
use crate::pve::check::{self, CheckOptions};
use crate::pve::{SnapshotName, VmRef};
use crate::sets::{self, SetManifest};
use crate::snapshot::take;
use crate::talos::Talosctl;

/// Label, common snapshot name and time of the set being made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetIdentity {
    pub label: String,
    pub snapname: SnapshotName,
    pub created_at: Timestamp,
}

/// One VM of the set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetTarget {
    pub address: String,
    pub role: String,
    pub vm: VmRef,
}

/// The set's identity: from the preflight's outputs, else this stage's, else made now and
/// journaled (stages run on their own, as the benchmark does, still agree on one name).
pub fn identity(ctx: &StageCtx<'_>) -> anyhow::Result<SetIdentity> {
    for v in [
        ctx.outputs_of(StageKind::UpgradePreflight)["set"].clone(),
        ctx.own_outputs()["set"].clone(),
    ] {
        if let Ok(id) = serde_json::from_value::<SetIdentity>(v) {
            return Ok(id);
        }
    }
    let label = ctx.label()?;
    let created_at = Timestamp::now();
    let id = SetIdentity {
        snapname: SnapshotName::for_label(&label, created_at)
            .map_err(|e| UserError::usage(e.to_string()))?,
        label,
        created_at,
    };
    ctx.record("set", serde_json::to_value(&id)?)?;
    Ok(id)
}

/// The nodes whose VMs belong in the set, and the addresses of nodes without a VM mapping.
pub fn targets(profile: &Profile, control_plane_only: bool) -> (Vec<SetTarget>, Vec<String>) {
    let mut out = Vec::new();
    let mut unmapped = Vec::new();
    for n in &profile.file.nodes {
        if control_plane_only && n.role != Role::ControlPlane {
            continue;
        }
        let role = if n.role == Role::ControlPlane {
            "controlplane"
        } else {
            "worker"
        };
        match &n.vm {
            Some(vm) => out.push(SetTarget {
                address: n.address.clone(),
                role: role.to_owned(),
                vm: vm.clone(),
            }),
            None => unmapped.push(n.address.clone()),
        }
    }
    (out, unmapped)
}

/// The targets as the preflight recorded them, else from the profile.
pub fn recorded_targets(ctx: &StageCtx<'_>) -> Vec<SetTarget> {
    serde_json::from_value(ctx.outputs_of(StageKind::UpgradePreflight)["targets"].clone())
        .unwrap_or_else(|_| targets(ctx.profile(), ctx.inputs.control_plane_only).0)
}

/// The set's manifest as written so far, or a fresh one for this run.
pub fn manifest(ctx: &StageCtx<'_>, id: &SetIdentity) -> anyhow::Result<SetManifest> {
    let dir = ctx.profile().sets_dir();
    let run_id = ctx.journal.snapshot().run_id;
    let mut m = if sets::exists(&dir, &id.label) {
        let m = sets::load(&dir, &id.label)?;
        if m.run_id.as_deref() != Some(run_id.as_str()) {
            return Err(set_exists(ctx, &id.label));
        }
        m
    } else {
        SetManifest::new(&id.label, &id.snapname, id.created_at, ctx.profile().name())
    };
    m.run_id = Some(run_id);
    m.control_plane_only = ctx.inputs.control_plane_only;
    m.vmstate = ctx.inputs.vmstate;
    Ok(m)
}

fn set_exists(ctx: &StageCtx<'_>, label: &str) -> anyhow::Error {
    UserError::usage(format!(
        "snapshot set {label:?} already exists in {}",
        ctx.profile().sets_dir().display()
    ))
    .hint(format!(
        "choose another --label, or remove the old set with `{} sets delete {label}`",
        ctx.profile().cli()
    ))
    .into()
}

pub async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let label = ctx.label()?;
    let run_id = ctx.journal.snapshot().run_id;
    let sets_dir = ctx.profile().sets_dir();
    if sets::exists(&sets_dir, &label)
        && sets::load(&sets_dir, &label)
            .ok()
            .and_then(|m| m.run_id)
            .as_deref()
            != Some(run_id.as_str())
    {
        return Err(set_exists(ctx, &label));
    }
    let client = ctx.pve()?;
    let cfg = ctx.profile().file.proxmox.clone().unwrap_or_default();
    let profile = ctx.profile();
    let mut problems = Vec::new();

    // Health first: an unstable cluster is not worth snapshotting.
    let health_node = match take::pick_node(profile, ctx.talos(), None, ctx.reporter).await {
        Ok((node, _)) => {
            let result = ctx
                .talos()
                .health(
                    &node,
                    &profile.control_plane_addresses(),
                    &profile.worker_addresses(),
                    ctx.inputs.health_timeout(),
                )
                .await;
            if let Err(e) = result {
                let detail: Vec<&str> = e
                    .stderr()
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .collect();
                let tail = detail[detail.len().saturating_sub(3)..].join(" / ");
                problems.push(format!(
                    "the cluster is not healthy (`talosctl -n {node} health`): {tail}; an unstable cluster is not snapshotted"
                ));
            }
            Some(node)
        }
        Err(e) => {
            problems.push(format!("{e:#}"));
            None
        }
    };

    let pve_version = match client.version().await {
        Ok(v) => Some(v.version),
        Err(e) => {
            problems.push(format!("the Proxmox VE API does not answer: {e}"));
            None
        }
    };

    let (targets, unmapped) = targets(profile, ctx.inputs.control_plane_only);
    for a in &unmapped {
        problems.push(format!(
            "node {a} has no Proxmox VM in the profile (add `vm = {{ node = \"pve1\", vmid = 101 }}` to its [[nodes]] entry)"
        ));
    }
    if targets.is_empty() && unmapped.is_empty() {
        problems.push(format!("profile {} lists no nodes", profile.name()));
    }
    let refs: Vec<VmRef> = targets.iter().map(|t| t.vm.clone()).collect();
    let opts = CheckOptions {
        require_running: false,
        require_snapshot_feature: true,
    };
    let checks = check::check_vms(client, &refs, opts, cfg.max_parallel).await;
    for c in &checks {
        problems.extend(c.problems.iter().cloned());
        // Running or stopped only: a paused or crashed guest gives an odd snapshot.
        if let Some(q) = c.qmpstatus.as_deref().or(c.status.as_deref())
            && q != "running"
            && q != "stopped"
        {
            problems.push(format!(
                "VM {} on node {} is {q}; only running or stopped VMs are snapshotted",
                c.vm.vmid, c.vm.node
            ));
        }
    }
    if !problems.is_empty() {
        return Err(UserError::precondition(format!(
            "not ready to make snapshot set {label:?} ({} problem{}):\n  - {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  - ")
        ))
        .hint("fix these and run the same `pre-upgrade` again; nothing was snapshotted")
        .into());
    }

    let created_at = Timestamp::now();
    let id = SetIdentity {
        snapname: SnapshotName::for_label(&label, created_at)
            .map_err(|e| UserError::usage(e.to_string()))?,
        label,
        created_at,
    };
    ctx.reporter.info(&format!(
        "cluster healthy; {} VMs to snapshot as {}",
        targets.len(),
        id.snapname
    ));
    Ok(StageOutcome::Done(json!({
        "set": id,
        "targets": targets,
        "checks": checks,
        "health": { "ok": true, "node": health_node },
        "pve_version": pve_version,
    })))
}

/// `playbooks show pre-upgrade` / `--dry-run`.
pub fn describe(
    kind: StageKind,
    profile: &Profile,
    talos: &Talosctl,
    inputs: &Inputs,
) -> Vec<String> {
    let label = inputs.label.as_deref().unwrap_or("<label>");
    let (targets, unmapped) = targets(profile, inputs.control_plane_only);
    let snap = format!("talosdr-{label}-<yymmddhhmm>");
    let vms = |f: &dyn Fn(&SetTarget) -> String| -> Vec<String> { targets.iter().map(f).collect() };
    match kind {
        StageKind::UpgradePreflight => {
            let cp = profile.control_plane_addresses();
            let mut args = vec!["health".to_owned(), "--wait-timeout".into()];
            args.push(format!("{}s", inputs.health_timeout().as_secs()));
            let mut v = vec![
                talos.render(
                    cp.first().map(String::as_str),
                    &args.iter().map(String::as_str).collect::<Vec<_>>(),
                ) + "   (must pass)",
            ];
            v.push("GET /version".into());
            v.extend(vms(&|t| {
                format!(
                    "GET /nodes/{}/qemu/{}/status/current, /feature?feature=snapshot",
                    t.vm.node, t.vm.vmid
                )
            }));
            v.extend(
                unmapped.iter().map(|a| {
                    format!("node {a}: no vm mapping in the profile (the stage will fail)")
                }),
            );
            v
        }
        StageKind::SetEtcdSnapshot => vec![
            talos.render(
                Some("<first CP that answers>"),
                &[
                    "etcd",
                    "snapshot",
                    &sets::etcd_path(&profile.sets_dir(), label)
                        .display()
                        .to_string(),
                ],
            ) + "   (verified, then renamed into place)",
        ],
        StageKind::VmSnapshots => {
            let par = profile.file.proxmox.as_ref().map_or(4, |p| p.max_parallel);
            let mut v = vms(&|t| {
                format!(
                    "POST /nodes/{}/qemu/{}/snapshot snapname={snap} vmstate={}, then poll the task",
                    t.vm.node,
                    t.vm.vmid,
                    u8::from(inputs.vmstate)
                )
            });
            v.push(format!("at most {par} at a time (proxmox.max_parallel)"));
            v
        }
        StageKind::RecordSet => vec![format!(
            "write {}",
            sets::manifest_path(&profile.sets_dir(), label).display()
        )],
        _ => vec![format!(
            "delete complete sets beyond proxmox.keep_sets = {} (DELETE …/snapshot/talosdr-<old label>-… only)",
            profile.file.proxmox.as_ref().map_or(3, |p| p.keep_sets)
        )],
    }
}
