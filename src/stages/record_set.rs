//! `record-set`: the set is complete; write its manifest (`sets/<label>.json`, 0600, atomic)
//! with the etcd snapshot (path, sha256) and every VM snapshot (node, vmid, snapname, task
//! exit status).

use std::path::PathBuf;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::upgrade_preflight::{UpgradePreflightOutputs, identity, manifest, plan_label};
use super::vm_snapshots::{VmSnapshotsRecord, VmState};
use super::{Plan, Stage, StageCtx, StageData, StageOutcome};
use crate::error::UserError;
use crate::sets::{self, SetStatus};

pub struct RecordSet;

impl Stage for RecordSet {
    fn kind(&self) -> &'static str {
        "record-set"
    }
    fn title(&self) -> &'static str {
        "write the set manifest"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        vec![format!(
            "write {}",
            sets::manifest_path(&plan.profile.sets_dir(), &plan_label(plan)).display()
        )]
    }
    fn requires(&self) -> &'static [&'static str] {
        &[UpgradePreflightOutputs::KIND, VmSnapshotsRecord::KIND]
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RecordSetOutputs {
    pub manifest: PathBuf,
    pub label: String,
    pub vms: usize,
}

impl StageData for RecordSetOutputs {
    const KIND: &'static str = "record-set";
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let id = identity(ctx)?;
    let mut m = manifest(ctx, &id)?;
    let vms = ctx.output::<VmSnapshotsRecord>()?.vms;
    let not_done: Vec<String> = vms
        .values()
        .filter(|e| e.state != VmState::Done)
        .map(|e| format!("VM {} on node {}", e.vmid, e.node))
        .collect();
    if vms.is_empty() || !not_done.is_empty() {
        return Err(UserError::failed(format!(
            "set {} cannot be recorded as complete: VM snapshots missing for {}",
            id.label,
            if not_done.is_empty() {
                "every VM".to_owned()
            } else {
                not_done.join(", ")
            }
        ))
        .into());
    }
    if m.etcd.is_none() {
        return Err(
            UserError::failed(format!("set {} has no etcd snapshot recorded", id.label)).into(),
        );
    }
    m.vms = vms
        .values()
        .map(|e| e.to_set_vm(id.snapname.as_ref()))
        .collect();
    // What each VM looks like, so `rebuild-node --from template` can re-create a lost one with
    // the same MAC (and so the same DHCP address). Best effort: the snapshots matter more.
    if let Ok(pve) = ctx.pve() {
        for v in &mut m.vms {
            if let Ok(cfg) = pve.vm_config(&v.vm_ref()).await {
                v.spec = Some(sets::VmSpec::from_config(&cfg));
            }
        }
    }
    m.missing.clear();
    m.status = SetStatus::Complete;
    let dir = ctx.profile().sets_dir();
    sets::save(&dir, &m)?;
    let path = sets::manifest_path(&dir, &id.label);
    ctx.reporter.info(&format!(
        "set {} recorded: etcd snapshot and {} VM snapshots ({})",
        id.label,
        m.vms.len(),
        path.display()
    ));
    StageOutcome::done(&RecordSetOutputs {
        manifest: path,
        label: id.label,
        vms: m.vms.len(),
    })
}
