//! `preflight`: the snapshot verifies, every control-plane node answers, no node is `init`, and
//! the current etcd state is recorded. If etcd is still healthy on a quorum, say plainly that a
//! restore discards every change since the snapshot and ask for the profile name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Plan, Stage, StageCtx, StageData, StageOutcome, confirmation_result, on_each_cp};
use crate::error::{Exit, UserError};
use crate::snapshot::verify::{self, Status, Trailer};

pub struct Preflight;

impl Stage for Preflight {
    fn kind(&self) -> &'static str {
        "preflight"
    }
    fn title(&self) -> &'static str {
        "check the snapshot and the control-plane nodes"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        let (profile, talos) = (plan.profile, plan.talos);
        let cp = profile.control_plane_addresses();
        let first = cp.first().cloned().unwrap_or_default();
        let snap = plan
            .inputs
            .snapshot
            .as_ref()
            .map_or_else(|| "<snapshot>".to_owned(), |p| p.display().to_string());
        let mut v = vec![format!(
            "verify {snap} (sha256 trailer, bbolt structure, etcd status)"
        )];
        v.extend(on_each_cp(plan, &["version"]));
        v.extend(on_each_cp(plan, &["service", "etcd"]));
        v.push(talos.render(Some(&cp.join(",")), &["get", "machinetype", "-o", "json"]));
        v.push(
            talos.render(Some(&first), &["health", "--wait-timeout", "30s"])
                + "   (for information)",
        );
        v.push(format!(
            "if etcd is healthy on a quorum: typed confirmation ({:?})",
            profile.name()
        ));
        v
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

/// What the preflight found; later stages read it with `ctx.output::<PreflightOutputs>()`.
/// Every field has a default, so checkpoints of older releases read too.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PreflightOutputs {
    pub snapshot: Option<SnapshotFacts>,
    /// The file is a raw `db` copy: bootstrap needs `--recover-skip-hash-check`.
    pub skip_hash_check: bool,
    /// etcd's state per control-plane node, before anything was changed.
    pub etcd: BTreeMap<String, NodeEtcd>,
    pub healthy_members: usize,
    pub healthy_quorum: bool,
    pub health: Option<HealthNote>,
}

impl StageData for PreflightOutputs {
    const KIND: &'static str = "preflight";
}

impl PreflightOutputs {
    /// Control-plane nodes whose etcd was Running and healthy.
    pub fn serving(&self) -> Vec<String> {
        self.etcd
            .iter()
            .filter(|(_, e)| e.state == "Running" && e.health.as_deref() == Some("OK"))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotFacts {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub trailer: Trailer,
    pub status: Option<Status>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeEtcd {
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HealthNote {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let path = ctx.snapshot_path()?;
    let report = verify::verify_file(&path).map_err(|e| {
        UserError::new(
            Exit::InvalidSnapshot,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if !report.valid {
        return Err(UserError::new(
            Exit::InvalidSnapshot,
            format!(
                "{} cannot be restored:\n  {}",
                path.display(),
                report.problems.join("\n  ")
            ),
        )
        .hint("run `talos-dr verify FILE` on your other snapshots and pick a valid one")
        .into());
    }
    let skip_hash_check = report.trailer == Trailer::Missing;
    if skip_hash_check {
        ctx.reporter.warn(&format!(
            "{} has no sha256 trailer (a raw db copy): bootstrap will use --recover-skip-hash-check",
            path.display()
        ));
    }

    let talos = ctx.talos();
    // Nodes whose VMs `--rebuild` re-creates answer only after the rebuild-vms stage.
    let cp = ctx.inputs.present_control_plane(ctx.profile());
    if !ctx.inputs.exclude.is_empty() {
        ctx.reporter.warn(&format!(
            "left out of this restore (--exclude): {}; they will not be etcd members afterwards",
            ctx.inputs.exclude.join(", ")
        ));
    }
    warn_about_endpoints(ctx).await;

    // Every node at once: a lost host costs one dial timeout, not one per node in turn.
    let answers = futures::future::join_all(cp.iter().map(|node| async move {
        let version = talos.server_version(node).await;
        let status = match &version {
            Ok(_) => Some(talos.service_etcd(node).await),
            Err(_) => None,
        };
        (node, version, status)
    }))
    .await;
    let mut problems = Vec::new();
    let mut unreachable = Vec::new();
    let mut etcd = BTreeMap::new();
    let mut healthy = 0usize;
    for (node, version, status) in answers {
        if let Err(e) = version {
            // A dial error or timeout means the node (or its host) is gone; anything else is the
            // node answering with an error, which leaving it out would not fix.
            if e.is_unreachable() {
                problems.push(format!(
                    "control-plane node {node} does not answer ({}); bring it back, or leave it out with --exclude {node} and rebuild it afterwards",
                    e.message()
                ));
                unreachable.push(node.clone());
            } else {
                problems.push(format!(
                    "control-plane node {node} answers with an error: {}",
                    e.message()
                ));
            }
            continue;
        }
        match status {
            Some(Ok(s)) => {
                if s.is_running_ok() {
                    healthy += 1;
                }
                etcd.insert(
                    node.clone(),
                    NodeEtcd {
                        last_event: s.last_event().map(str::to_owned),
                        state: s.state,
                        health: Some(s.health),
                        error: None,
                    },
                );
            }
            Some(Err(e)) => {
                etcd.insert(
                    node.clone(),
                    NodeEtcd {
                        state: "unknown".into(),
                        error: Some(e.to_string()),
                        ..NodeEtcd::default()
                    },
                );
            }
            None => {}
        }
    }
    // With every node being rebuilt there is nobody to ask; rebuild-vms checks the saved configs.
    if problems.is_empty() && !cp.is_empty() {
        match talos.machine_types(&cp).await {
            Ok(types) => {
                for (node, _) in types.iter().filter(|(_, t)| t == "init") {
                    problems.push(format!(
                        "node {node} has machine type `init`, which etcd recovery does not support: convert it to `controlplane` first (`talosctl -n {node} edit mc --mode=staged`, then reboot)"
                    ));
                }
            }
            Err(e) => problems.push(format!("cannot read machine types: {e}")),
        }
    }
    if !problems.is_empty() {
        let mut err = UserError::precondition(format!(
            "the cluster is not ready for a restore; nothing was changed:\n  - {}",
            problems.join("\n  - ")
        ));
        if !unreachable.is_empty() {
            let flags: Vec<String> = unreachable
                .iter()
                .map(|n| format!("--exclude {n}"))
                .collect();
            err = err.hint(format!(
                "if {} lost with its Proxmox host, restore without it: add {} (the restored cluster starts without it; rebuild it afterwards)",
                if unreachable.len() == 1 { "that node was" } else { "those nodes were" },
                flags.join(" ")
            ));
        }
        return Err(err.into());
    }

    // For information only: during a disaster this is expected to fail.
    let health = match cp.first() {
        None => HealthNote {
            ok: false,
            detail: Some("every control-plane node is being rebuilt".into()),
        },
        Some(_) => match talos
            .health(
                &cp[0],
                &cp,
                &ctx.profile().worker_addresses(),
                Duration::from_secs(30),
            )
            .await
        {
            Ok(()) => HealthNote {
                ok: true,
                detail: None,
            },
            Err(e) => HealthNote {
                ok: false,
                detail: Some(last_line(e.stderr()).to_owned()),
            },
        },
    };

    let quorum = !cp.is_empty() && healthy > cp.len() / 2;
    if quorum {
        let taken = report
            .status
            .map(|s| format!("revision {}", s.revision))
            .unwrap_or_default();
        ctx.reporter.warn(&format!(
            "etcd is healthy on {healthy} of {} control-plane nodes. Restoring will discard every change made to the cluster since the snapshot ({}, {taken}) was taken.",
            cp.len(),
            path.display()
        ));
        let answer = ctx.prompter.confirm_typed(
            "etcd still has quorum. Restore anyway and lose everything since the snapshot?",
            ctx.profile().name(),
        )?;
        confirmation_result(answer, &ctx.spec.id)?;
    }

    StageOutcome::done(&PreflightOutputs {
        snapshot: Some(SnapshotFacts {
            path,
            size: report.size,
            sha256: report.sha256,
            trailer: report.trailer,
            status: report.status,
        }),
        skip_hash_check,
        etcd,
        healthy_members: healthy,
        healthy_quorum: quorum,
        health: Some(health),
    })
}

/// `10.0.0.1:50000` → `10.0.0.1`, `[fd00::1]:50000` → `fd00::1`; a bare address stays.
fn endpoint_host(e: &str) -> &str {
    if let Some(rest) = e.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match e.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => e,
    }
}

/// Warns once when the talosconfig's endpoints are not control-plane node addresses (a VIP or a
/// load balancer): talos-dr talks to each node directly, but the user's own talosctl will not work
/// through such an endpoint until etcd is back.
async fn warn_about_endpoints(ctx: &StageCtx<'_>) {
    let Ok(info) = ctx.talos().config_info().await else {
        return;
    };
    let cp = ctx.profile().control_plane_addresses();
    let other: Vec<&String> = info
        .endpoints
        .iter()
        .filter(|e| !cp.iter().any(|a| a == endpoint_host(e)))
        .collect();
    if !other.is_empty() {
        ctx.reporter.warn(&format!(
            "the talosconfig's endpoints ({}) are not control-plane node addresses. talos-dr talks to every node directly (-e NODE -n NODE), so this restore does not need them; but a Talos VIP answers only while etcd has quorum, so your own `talosctl` will fail through it until the restore is done: use `talosctl -e NODE -n NODE …` meanwhile",
            other.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
}

fn last_line(s: &str) -> &str {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
}
