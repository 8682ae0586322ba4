//! `report`: what happened and how long each stage took (the recovery time), written to
//! `runs/<run-id>/report.json` and `report.md`.

use std::path::PathBuf;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::etcd_recover::EtcdRecoverRecord;
use super::post_verify::PostVerifyOutputs;
use super::pre_restore_snapshot::PreRestoreOutputs;
use super::proxmox_check::{ProxmoxCheckRecord, VmSnapshotDone};
use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::engine::checkpoint::{RunState, RunStatus, StageStatus};
use crate::snapshot::compare::Comparison;
use crate::talos::EtcdMember;

pub struct Report;

impl Stage for Report {
    fn kind(&self) -> &'static str {
        "report"
    }
    fn title(&self) -> &'static str {
        "summarise the run"
    }
    fn describe(&self, _plan: &Plan<'_>) -> Vec<String> {
        vec!["write runs/<run-id>/report.md and report.json".into()]
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(async move { run(ctx) })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportOutputs {
    pub report_json: PathBuf,
    pub report_md: PathBuf,
    pub total_ms: u64,
}

impl StageData for ReportOutputs {
    const KIND: &'static str = "report";
}

fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let state = ctx.journal.snapshot();
    let report = build(&state, ctx.profile().name())?;
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
    StageOutcome::done(&ReportOutputs {
        report_json: dir.join("report.json"),
        report_md: dir.join("report.md"),
        total_ms: report.total_ms,
    })
}

/// The run as a report: per-stage durations, resets, snapshots, how to undo. `report.json` is
/// this, serialised.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub playbook: String,
    pub profile: String,
    pub status: RunStatus,
    pub snapshot: Option<PathBuf>,
    pub stages: Vec<StageLine>,
    /// The sum of the stages' times: the recovery time of a restore.
    pub total_ms: u64,
    pub reset_nodes: Vec<String>,
    pub bootstrap_node: Option<String>,
    pub members: Vec<EtcdMember>,
    pub pre_restore_snapshot: Option<PathBuf>,
    pub vm_snapshots: Vec<VmSnapshotDone>,
    /// One `qm rollback` line per VM snapshot taken before the restore.
    pub undo: Vec<String>,
    /// The live cluster against the restored snapshot (`post-verify`), also when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageLine {
    pub id: String,
    pub status: StageStatus,
    pub elapsed_ms: Option<u64>,
    pub attempts: u32,
    pub error: Option<String>,
}

pub fn build(state: &RunState, profile: &str) -> anyhow::Result<RunReport> {
    let stages = state
        .stages
        .iter()
        .filter(|s| s.kind != ReportOutputs::KIND)
        .map(|s| StageLine {
            id: s.id.clone(),
            status: s.status,
            elapsed_ms: s.elapsed_ms(),
            attempts: s.attempt,
            error: s.error.clone(),
        })
        .collect();
    let total_ms: u64 = state
        .stages
        .iter()
        .filter(|s| s.status != StageStatus::Pending)
        .filter_map(crate::engine::checkpoint::StageRecord::elapsed_ms)
        .sum();
    let recover = state.data::<EtcdRecoverRecord>()?.unwrap_or_default();
    let pre = state.data::<PreRestoreOutputs>()?.unwrap_or_default();
    let px = state.data::<ProxmoxCheckRecord>()?.unwrap_or_default();
    let vm_snapshots: Vec<VmSnapshotDone> = px.vm_snapshots.into_values().collect();
    let undo = vm_snapshots
        .iter()
        .map(|v| {
            format!(
                "on Proxmox node {}: qm rollback {} {}",
                v.node, v.vmid, v.snapname
            )
        })
        .collect();
    let snapshot = state
        .inputs
        .get("snapshot")
        .and_then(|v| v.as_str())
        .map(PathBuf::from);
    Ok(RunReport {
        run_id: state.run_id.clone(),
        playbook: state.playbook.clone(),
        profile: profile.to_owned(),
        status: state.status,
        snapshot,
        stages,
        total_ms,
        reset_nodes: recover.resets.keys().cloned().collect(),
        bootstrap_node: recover.bootstrap.map(|b| b.node),
        members: recover.members,
        pre_restore_snapshot: pre.path,
        vm_snapshots,
        undo,
        comparison: comparison(state),
    })
}

/// The comparison of the last `post-verify` stage that made one, whatever its status (a failed
/// comparison fails the stage, and is what the user most needs to see).
fn comparison(state: &RunState) -> Option<Comparison> {
    state
        .stages
        .iter()
        .rev()
        .filter(|s| s.kind.as_str() == PostVerifyOutputs::KIND)
        .find_map(|s| {
            serde_json::from_value::<PostVerifyOutputs>(s.outputs.clone())
                .ok()?
                .comparison
        })
}

pub fn render_markdown(r: &RunReport) -> String {
    let snapshot = r
        .snapshot
        .as_ref()
        .map_or_else(|| "?".to_owned(), |p| p.display().to_string());
    let mut s = format!(
        "# talos-dr {} report — {}\n\nRun `{}` of profile `{}`, snapshot `{snapshot}`.\n\n| stage | status | time |\n|---|---|---|\n",
        r.playbook, r.run_id, r.run_id, r.profile,
    );
    for st in &r.stages {
        s.push_str(&format!(
            "| {} | {} | {} |\n",
            st.id,
            status_text(st.status),
            st.elapsed_ms.map_or("-".into(), secs)
        ));
    }
    s.push_str(&format!("\n**Recovery time:** {}\n\n", secs(r.total_ms)));
    if !r.reset_nodes.is_empty() {
        s.push_str(&format!(
            "- Reset (EPHEMERAL wiped): {}\n",
            r.reset_nodes.join(", ")
        ));
    }
    if let Some(n) = &r.bootstrap_node {
        s.push_str(&format!("- Bootstrapped from the snapshot: {n}\n"));
    }
    if let Some(p) = &r.pre_restore_snapshot {
        s.push_str(&format!(
            "- State before the restore saved to: {}\n",
            p.display()
        ));
    }
    for u in &r.undo {
        s.push_str(&format!("- To roll a VM back: {u}\n"));
    }
    if let Some(c) = &r.comparison {
        s.push_str(&c.render_markdown());
    }
    s
}

/// The word the checkpoint uses for a stage status (`succeeded`, `failed`, …).
pub fn status_text(s: StageStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn secs(ms: u64) -> String {
    let total = ms / 1000;
    if total >= 60 {
        format!("{}m {:02}s", total / 60, total % 60)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}
