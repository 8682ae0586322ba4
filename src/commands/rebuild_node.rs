//! `rebuild-node NODE`: start playbook `rebuild-node`.

use talos_dr::stages::Inputs;
use talos_dr::{Exit, UserError};

use super::Ctx;
use super::playbook_run::start;
use crate::cli::RebuildNodeArgs;

pub async fn run(ctx: &Ctx, args: RebuildNodeArgs) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    if !profile.file.nodes.iter().any(|n| n.address == args.node) {
        return Err(UserError::usage(format!(
            "node {} is not in profile {}",
            args.node,
            profile.name()
        ))
        .hint(format!("`{} profile show` lists the nodes", profile.cli()))
        .into());
    }
    if profile.file.proxmox.is_none() {
        return Err(UserError::usage(format!(
            "rebuild-node re-creates VMs through the Proxmox VE API, but profile {} has no [proxmox] section",
            profile.name()
        ))
        .into());
    }
    let inputs = Inputs {
        rebuild_node: Some(args.node),
        rebuild_from: args.from,
        target_node: args.target_node,
        maintenance_timeout_s: Some(args.maintenance_timeout.as_secs()),
        wait_timeout_s: Some(args.wait_timeout.as_secs()),
        health_timeout_s: Some(args.wait_timeout.as_secs()),
        poll_max_ms: Some(u64::try_from(args.poll_max.as_millis()).unwrap_or(5_000)),
        ..Inputs::default()
    };
    start(ctx, &profile, "rebuild-node", inputs, args.dry_run).await
}
