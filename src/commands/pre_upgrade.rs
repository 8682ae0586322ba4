//! `pre-upgrade`: start playbook `pre-upgrade` for a labelled snapshot set.

use talos_dr::stages::Inputs;
use talos_dr::{Exit, UserError, sets};

use super::Ctx;
use super::playbook_run::start;
use crate::cli::PreUpgradeArgs;

pub async fn run(ctx: &Ctx, args: PreUpgradeArgs) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    let label = args
        .label
        .unwrap_or_else(|| format!("up-{}", jiff::Timestamp::now().strftime("%y%m%d-%H%M")));
    sets::validate_label(&label).map_err(|e| {
        UserError::usage(e.to_string())
            .hint("a label is 1-21 characters of a-z, 0-9, '-' and '_', e.g. --label talos-1-10")
    })?;
    if !args.dry_run && sets::exists(&profile.sets_dir(), &label) {
        return Err(
            UserError::usage(format!("snapshot set {label:?} already exists"))
                .hint(format!(
                    "choose another --label, or remove the old set with `{} sets delete {label}`",
                    profile.cli()
                ))
                .into(),
        );
    }
    let inputs = Inputs {
        label: Some(label),
        control_plane_only: args.control_plane_only,
        vmstate: args.vmstate,
        health_timeout_s: Some(args.health_timeout.as_secs()),
        ..Inputs::default()
    };
    start(ctx, &profile, "pre-upgrade", inputs, args.dry_run).await
}
