//! `upgrade-preflight`: before a pre-upgrade set is made, the cluster must be healthy
//! (`talosctl health`), the Proxmox VE API must answer, every node must be mapped to a VM, and
//! every VM must pass the vm-check (running or stopped, not locked, snapshot feature). Every
//! problem is collected and reported at once (exit 4), so one run tells the operator everything.
//!
//! It also fixes the set's identity (label, snapshot name, time) in the checkpoint, so a resumed
//! run uses the same names. Helpers shared by the other set stages live here too.

use futures::future::BoxFuture;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::error::UserError;
use crate::profile::{Profile, Role};
use crate::pve::check::{self, CheckOptions, VmCheck};
use crate::pve::{SnapshotName, VmRef};
use crate::sets::{self, SetManifest};
use crate::snapshot::take;

pub struct UpgradePreflight;

impl Stage for UpgradePreflight {
    fn kind(&self) -> &'static str {
        "upgrade-preflight"
    }
    fn title(&self) -> &'static str {
        "check cluster health, the Proxmox API and every VM of the set"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        let (profile, inputs) = (plan.profile, plan.inputs);
        let (targets, unmapped) = targets(profile, inputs.control_plane_only);
        let cp = profile.control_plane_addresses();
        let wait = format!("{}s", inputs.health_timeout().as_secs());
        let mut v = vec![
            plan.talos.render(
                cp.first().map(String::as_str),
                &["health", "--wait-timeout", &wait],
            ) + "   (must pass)",
        ];
        v.push("GET /version".into());
        v.extend(targets.iter().map(|t| {
            format!(
                "GET /nodes/{}/qemu/{}/status/current, /feature?feature=snapshot",
                t.vm.node, t.vm.vmid
            )
        }));
        v.extend(
            unmapped
                .iter()
                .map(|a| format!("node {a}: no vm mapping in the profile (the stage will fail)")),
        );
        v
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

/// The set's identity and members, fixed here so that every later stage (and a resume) uses the
/// same names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UpgradePreflightOutputs {
    pub set: Option<SetIdentity>,
    pub targets: Vec<SetTarget>,
    pub checks: Vec<VmCheck>,
    pub health: SetHealth,
    pub pve_version: Option<String>,
}

impl StageData for UpgradePreflightOutputs {
    const KIND: &'static str = "upgrade-preflight";
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetHealth {
    pub ok: bool,
    pub node: Option<String>,
}

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

/// The set's identity, as the preflight fixed it.
pub fn identity(ctx: &StageCtx<'_>) -> anyhow::Result<SetIdentity> {
    ctx.output::<UpgradePreflightOutputs>()?.set.ok_or_else(|| {
        anyhow::anyhow!(
            "stage {}: the upgrade-preflight stage recorded no set identity",
            ctx.spec.id
        )
    })
}

/// `--label`, or a placeholder, for plans.
pub fn plan_label(plan: &Plan<'_>) -> String {
    plan.inputs
        .label
        .clone()
        .unwrap_or_else(|| "<label>".into())
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

/// The VMs of the set, as the preflight recorded them.
pub fn recorded_targets(ctx: &StageCtx<'_>) -> anyhow::Result<Vec<SetTarget>> {
    Ok(ctx.output::<UpgradePreflightOutputs>()?.targets)
}

/// The set's manifest as written so far, or a fresh one for this run.
pub fn manifest(ctx: &StageCtx<'_>, id: &SetIdentity) -> anyhow::Result<SetManifest> {
    let dir = ctx.profile().sets_dir();
    let run_id = ctx.run_id();
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

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let label = ctx.label()?;
    let run_id = ctx.run_id();
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
    StageOutcome::done(&UpgradePreflightOutputs {
        set: Some(id),
        targets,
        checks,
        health: SetHealth {
            ok: true,
            node: health_node,
        },
        pve_version,
    })
}
