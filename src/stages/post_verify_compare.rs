//! The comparison half of `post-verify`: the live cluster (one real `kubectl get … -A -o json`)
//! against the snapshot file that was restored, read with the X-ray ([`crate::snapshot::compare`]
//! holds the kinds and the policy).

use std::path::PathBuf;

use super::StageCtx;
use super::etcd_recover::EtcdRecoverRecord;
use crate::error::UserError;
use crate::kube::Kubectl;
use crate::snapshot::compare::{self, Comparison};
use crate::snapshot::xray;

/// The file the bootstrap uploaded (the local file, the unpacked copy of a packed or off-site
/// one, or the salvaged survivor), else the run's `--snapshot`.
fn restored_file(ctx: &StageCtx<'_>) -> Option<PathBuf> {
    ctx.output_if::<EtcdRecoverRecord>()
        .ok()
        .flatten()
        .and_then(|r| r.bootstrap.map(|b| b.file))
        .or_else(|| ctx.inputs.snapshot.clone())
}

/// Compares; `None` (with a warning) when the restored file cannot be read any more. A failed
/// kubectl call is the stage's error.
pub async fn run(ctx: &StageCtx<'_>, kubectl: &Kubectl) -> anyhow::Result<Option<Comparison>> {
    let Some(file) = restored_file(ctx) else {
        return Ok(None);
    };
    let read = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || xray::read(&file)).await?
    };
    let contents = match read {
        Ok((_, Some(c))) => c,
        Ok((report, None)) => {
            ctx.reporter.warn(&format!(
                "the live cluster was not compared with {}: it no longer verifies ({})",
                file.display(),
                report.problems.join("; ")
            ));
            return Ok(None);
        }
        Err(e) => {
            ctx.reporter.warn(&format!(
                "the live cluster was not compared with {}: {e}",
                file.display()
            ));
            return Ok(None);
        }
    };
    let snapshot = compare::snapshot_objects(&contents);
    let items = kubectl
        .objects(&compare::kubectl_resources())
        .await
        .map_err(|e| {
            UserError::failed(format!(
                "cannot list the cluster's objects to compare them with the snapshot: {e}"
            ))
            .hint("etcd is restored; `talos-dr resume` compares again")
        })?;
    let live = compare::live_objects(
        items
            .iter()
            .map(|o| (o.kind.as_str(), o.namespace.as_deref(), o.name.as_str())),
    );
    Ok(Some(compare::compare(
        file,
        contents.revision,
        &snapshot,
        &live,
    )))
}
