//! `rollback --label L`: start playbook `rollback` for a snapshot set.

use talos_dr::stages::Inputs;
use talos_dr::{Exit, UserError, sets};

use super::Ctx;
use super::playbook_run::start;
use crate::cli::RollbackArgs;

pub async fn run(ctx: &Ctx, args: RollbackArgs) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    sets::load(&profile.sets_dir(), &args.label).map_err(|e| {
        UserError::usage(e.to_string())
            .hint(format!("list the sets with `{} sets list`", profile.cli()))
    })?;
    let inputs = Inputs {
        label: Some(args.label),
        no_start: args.no_start,
        health_timeout_s: Some(args.health_timeout.as_secs()),
        poll_max_ms: Some(u64::try_from(args.poll_max.as_millis()).unwrap_or(5_000)),
        ..Inputs::default()
    };
    start(ctx, &profile, "rollback", inputs, args.dry_run).await
}
