//! `restore --snapshot` arguments that need work first: off-site URLs and packed files.

use std::path::{Path, PathBuf};

use talos_dr::offsite::{self, PrepareError};
use talos_dr::pack;
use talos_dr::profile::Profile;
use talos_dr::{Exit, UserError};

use super::Ctx;
use crate::cli::RestoreArgs;

/// The plain, verified local snapshot to restore from.
pub async fn snapshot(
    ctx: &Ctx,
    profile: &Profile,
    snapshot: &Path,
    args: &RestoreArgs,
) -> anyhow::Result<PathBuf> {
    let arg = snapshot.to_string_lossy();
    let identity = args.identity.clone().or_else(|| profile.identity_file());
    let prepared =
        offsite::prepare_snapshot(&arg, profile, identity.as_deref(), ctx.reporter.as_ref())
            .await
            .map_err(|e| match e {
                PrepareError::Usage(m) => UserError::usage(m)
                    .hint("list snapshots with `talos-dr list` or `talos-dr list --remote`"),
                PrepareError::Invalid(m) => UserError::new(Exit::InvalidSnapshot, m)
                    .hint("nothing was changed on the cluster; pick another snapshot"),
                PrepareError::Failed(m) => UserError::failed(m),
            })?;
    if let Some(src) = &prepared.source {
        ctx.reporter.info(&format!(
            "{src}: unpacked {} to {} and verified it",
            pack::describe(&prepared.layers),
            prepared.path.display()
        ));
    }
    Ok(prepared.path)
}
