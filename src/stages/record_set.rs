//! `record-set`: the set is complete; write its manifest (`sets/<label>.json`, 0600, atomic)
//! with the etcd snapshot (path, sha256) and every VM snapshot (node, vmid, snapname, task
//! exit status).

use std::collections::BTreeMap;

use serde_json::json;

use super::upgrade_preflight::{identity, manifest};
use super::vm_snapshots::{VmEntry, VmState};
use super::{StageCtx, StageOutcome};
use crate::engine::playbook::StageKind;
use crate::error::UserError;
use crate::sets::{self, SetStatus};

pub fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let id = identity(ctx)?;
    let mut m = manifest(ctx, &id)?;
    let vms: BTreeMap<String, VmEntry> =
        serde_json::from_value(ctx.outputs_of(StageKind::VmSnapshots)["vms"].clone())
            .unwrap_or_default();
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
    Ok(StageOutcome::Done(json!({
        "manifest": path,
        "label": id.label,
        "vms": m.vms.len(),
    })))
}
