//! `report`: what happened and how long each stage took (the recovery time), written to
//! `runs/<run-id>/report.json` and `report.md`.

use serde_json::{Value, json};

use super::{StageCtx, StageOutcome};
use crate::engine::checkpoint::{RunState, StageStatus};
use crate::engine::playbook::StageKind;

pub fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let state = ctx.journal.snapshot();
    let report = build(&state, ctx.profile().name());
    let dir = ctx.journal.dir();
    crate::fsutil::write_atomic(
        &dir.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
        0o600,
    )?;
    crate::fsutil::write_atomic(
        &dir.join("report.md"),
        render_markdown(&report).as_bytes(),
        0o600,
    )?;
    Ok(StageOutcome::Done(json!({
        "report_json": dir.join("report.json"),
        "report_md": dir.join("report.md"),
        "total_ms": report["total_ms"],
    })))
}

/// The report as data: per-stage durations, resets, snapshots, how to undo.
pub fn build(state: &RunState, profile: &str) -> Value {
    let stages: Vec<Value> = state
        .stages
        .iter()
        .filter(|s| s.kind != StageKind::Report)
        .map(|s| {
            json!({
                "id": s.id,
                "status": s.status,
                "elapsed_ms": s.elapsed_ms(),
                "attempts": s.attempt,
                "error": s.error,
            })
        })
        .collect();
    let total_ms: u64 = state
        .stages
        .iter()
        .filter(|s| s.status != StageStatus::Pending)
        .filter_map(super::super::engine::checkpoint::StageRecord::elapsed_ms)
        .sum();
    let recover = state.outputs_of(StageKind::EtcdRecover);
    let pre = state.outputs_of(StageKind::PreRestoreSnapshot);
    let px = state.outputs_of(StageKind::ProxmoxCheck);
    let vm_snapshots: Vec<Value> = px["vm_snapshots"]
        .as_object()
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    let undo: Vec<String> = vm_snapshots
        .iter()
        .map(|v| {
            format!(
                "on Proxmox node {}: qm rollback {} {}",
                v["node"].as_str().unwrap_or("?"),
                v["vmid"],
                v["snapname"].as_str().unwrap_or("?")
            )
        })
        .collect();
    json!({
        "run_id": state.run_id,
        "playbook": state.playbook,
        "profile": profile,
        "status": state.status,
        "snapshot": state.inputs["snapshot"],
        "stages": stages,
        "total_ms": total_ms,
        "reset_nodes": recover["resets"].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
        "bootstrap_node": recover["bootstrap"]["node"],
        "members": recover["members"],
        "pre_restore_snapshot": pre["path"],
        "vm_snapshots": vm_snapshots,
        "undo": undo,
    })
}

pub fn render_markdown(r: &Value) -> String {
    let mut s = format!(
        "# talos-dr {} report — {}\n\nRun `{}` of profile `{}`, snapshot `{}`.\n\n| stage | status | time |\n|---|---|---|\n",
        r["playbook"].as_str().unwrap_or("?"),
        r["run_id"].as_str().unwrap_or("?"),
        r["run_id"].as_str().unwrap_or("?"),
        r["profile"].as_str().unwrap_or("?"),
        r["snapshot"].as_str().unwrap_or("?"),
    );
    for st in r["stages"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {} | {} |\n",
            st["id"].as_str().unwrap_or("?"),
            st["status"].as_str().unwrap_or("?"),
            st["elapsed_ms"].as_u64().map_or("-".into(), secs)
        ));
    }
    s.push_str(&format!(
        "\n**Recovery time:** {}\n\n",
        r["total_ms"].as_u64().map_or("-".into(), secs)
    ));
    if let Some(nodes) = r["reset_nodes"].as_array().filter(|a| !a.is_empty()) {
        s.push_str(&format!(
            "- Reset (EPHEMERAL wiped): {}\n",
            nodes
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(n) = r["bootstrap_node"].as_str() {
        s.push_str(&format!("- Bootstrapped from the snapshot: {n}\n"));
    }
    if let Some(p) = r["pre_restore_snapshot"].as_str() {
        s.push_str(&format!("- State before the restore saved to: {p}\n"));
    }
    for u in r["undo"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        s.push_str(&format!("- To roll a VM back: {u}\n"));
    }
    s
}

pub fn secs(ms: u64) -> String {
    let total = ms / 1000;
    if total >= 60 {
        format!("{}m {:02}s", total / 60, total % 60)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}
