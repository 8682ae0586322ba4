//! `preflight`: the snapshot verifies, every control-plane node answers, no node is `init`, and
//! the current etcd state is recorded. If etcd is still healthy on a quorum, say plainly that a
//! restore discards every change since the snapshot and ask for the profile name.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{StageCtx, StageOutcome, confirmation_result};
use crate::error::{Exit, UserError};
use crate::snapshot::verify::{self, Trailer};

pub async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
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
    let cp = ctx.profile().control_plane_addresses();
    let mut problems = Vec::new();
    let mut etcd = Map::new();
    let mut healthy = 0usize;
    for node in &cp {
        if let Err(e) = talos.server_version(node).await {
            problems.push(format!(
                "control-plane node {node} does not answer ({}); bring it back or replace it with a node built from the same machine configuration",
                first_line(&e.to_string())
            ));
            continue;
        }
        match talos.service_etcd(node).await {
            Ok(s) => {
                if s.is_running_ok() {
                    healthy += 1;
                }
                etcd.insert(
                    node.clone(),
                    json!({ "state": s.state, "health": s.health, "last_event": s.last_event() }),
                );
            }
            Err(e) => {
                etcd.insert(
                    node.clone(),
                    json!({ "state": "unknown", "error": e.to_string() }),
                );
            }
        }
    }
    if problems.is_empty() {
        match talos.machine_types(&cp).await {
            Ok(types) => {
                for (node, t) in types.iter().filter(|(_, t)| t == "init") {
                    let _ = t;
                    problems.push(format!(
                        "node {node} has machine type `init`, which etcd recovery does not support: convert it to `controlplane` first (`talosctl -n {node} edit mc --mode=staged`, then reboot)"
                    ));
                }
            }
            Err(e) => problems.push(format!("cannot read machine types: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(UserError::precondition(format!(
            "the cluster is not ready for a restore:\n  - {}",
            problems.join("\n  - ")
        ))
        .into());
    }

    // For information only: during a disaster this is expected to fail.
    let health = match talos
        .health(
            &cp[0],
            &cp,
            &ctx.profile().worker_addresses(),
            Duration::from_secs(30),
        )
        .await
    {
        Ok(()) => json!({ "ok": true }),
        Err(e) => json!({ "ok": false, "detail": last_line(e.stderr()) }),
    };

    let quorum = healthy > cp.len() / 2;
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

    Ok(StageOutcome::Done(json!({
        "snapshot": {
            "path": path,
            "size": report.size,
            "sha256": report.sha256,
            "trailer": report.trailer,
            "status": report.status,
        },
        "skip_hash_check": skip_hash_check,
        "etcd": Value::Object(etcd),
        "healthy_members": healthy,
        "healthy_quorum": quorum,
        "health": health,
    })))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn last_line(s: &str) -> &str {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
}
