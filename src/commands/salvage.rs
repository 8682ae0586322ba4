//! `salvage`: save what every reachable control-plane node still holds, changing nothing, and
//! (for `restore --from-survivor`) pick the copy to restore from.

use std::path::PathBuf;

use serde_json::json;
use talos_dr::profile::Profile;
use talos_dr::salvage::{self, SalvageOptions, Salvaged};
use talos_dr::stages::pre_restore_snapshot::table;
use talos_dr::{Exit, UserError};

use super::Ctx;
use crate::cli::SalvageArgs;

pub async fn run(ctx: &Ctx, args: SalvageArgs) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    super::playbook_run::check_excluded(&profile, &args.exclude)?;
    let (dir, all) = salvage_into_profile(ctx, &profile, &args.exclude).await?;
    ctx.printer.text(&table(&all));
    ctx.printer
        .json(&json!({ "dir": dir, "salvaged": all, "best": salvage::best(&all) }));
    match salvage::best(&all) {
        Some(b) => {
            ctx.reporter.info(&format!(
                "best copy: {} (revision {}); restore from it with `{} restore --snapshot {}` or `{} restore --from-survivor`",
                b.node,
                b.revision.unwrap_or_default(),
                profile.cli(),
                b.path.as_ref().map_or_else(String::new, |p| p.display().to_string()),
                profile.cli()
            ));
            Ok(Exit::Success)
        }
        None => Err(none_valid(&dir)),
    }
}

/// `restore --from-survivor`: salvages, shows the table, and returns the best copy's path.
pub async fn best_survivor(
    ctx: &Ctx,
    profile: &Profile,
    exclude: &[String],
) -> anyhow::Result<PathBuf> {
    let (dir, all) = salvage_into_profile(ctx, profile, exclude).await?;
    ctx.reporter
        .info(&format!("salvaged from the survivors:\n{}", table(&all)));
    let best = salvage::best(&all).ok_or_else(|| none_valid(&dir))?;
    let path = best.path.clone().expect("best() has a path");
    ctx.reporter.info(&format!(
        "restoring from {} ({} copy from {}, revision {})",
        path.display(),
        best.method.map_or("?", |m| m.as_str()),
        best.node,
        best.revision.unwrap_or_default()
    ));
    Ok(path)
}

async fn salvage_into_profile(
    ctx: &Ctx,
    profile: &Profile,
    exclude: &[String],
) -> anyhow::Result<(PathBuf, Vec<Salvaged>)> {
    let talos = ctx.talosctl(profile)?.direct();
    let nodes: Vec<String> = profile
        .control_plane_addresses()
        .into_iter()
        .filter(|n| !exclude.contains(n))
        .collect();
    // Which etcds run decides whether a raw copy may be inconsistent; a node that does not
    // answer is still tried (the copy tells).
    let mut running = Vec::new();
    for n in &nodes {
        if talos
            .service_etcd(n)
            .await
            .is_ok_and(|s| s.state == "Running")
        {
            running.push(n.clone());
        }
    }
    let dir = profile
        .config_dir
        .join("salvage")
        .join(jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string());
    let all = salvage::salvage(
        &talos,
        &nodes,
        &running,
        &dir,
        &SalvageOptions::default(),
        ctx.reporter.as_ref(),
    )
    .await
    .map_err(|e| UserError::usage(format!("cannot create {}: {e}", dir.display())))?;
    Ok((dir, all))
}

fn none_valid(dir: &std::path::Path) -> anyhow::Error {
    UserError::precondition(format!(
        "no valid copy could be salvaged from any control-plane node (see {}); nothing was reset",
        dir.display()
    ))
    .hint("restore from your newest backup instead: `talos-dr list`, then `talos-dr restore --snapshot FILE`")
    .into()
}
