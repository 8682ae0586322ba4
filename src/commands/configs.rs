//! `configs list`, `configs show NODE`: the machine configs saved with the snapshots.

use serde_json::json;
use talos_dr::machine_config::{self, ConfigRef};
use talos_dr::profile::Profile;
use talos_dr::{Exit, UserError};

use super::Ctx;
use crate::cli::ConfigsCommand;

pub async fn run(ctx: &Ctx, command: ConfigsCommand) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    match command {
        ConfigsCommand::List { at } => list(ctx, &profile, at.as_deref()),
        ConfigsCommand::Show {
            node,
            at,
            reveal,
            identity,
        } => show(ctx, &profile, &node, at.as_deref(), reveal, identity),
    }
}

fn list(ctx: &Ctx, profile: &Profile, at: Option<&str>) -> anyhow::Result<Exit> {
    let snaps = machine_config::snapshots_with_configs(profile);
    let Some(sc) = snaps
        .iter()
        .find(|sc| at.is_none_or(|a| sc.file.starts_with(a) || a.ends_with(&sc.file)))
    else {
        let what = at.map_or("no snapshot records machine configs yet".to_owned(), |a| {
            format!("no snapshot named {a} records machine configs")
        });
        return Err(UserError::precondition(what)
            .hint(format!(
                "every `{0} snapshot` saves them; `{0} list` shows the snapshots",
                profile.cli()
            ))
            .into());
    };
    let mut rows = vec![
        ["NODE", "HOSTNAME", "TYPE", "READ AT (UTC)", "FILE"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for n in &profile.file.nodes {
        match sc.machine_configs.get(&n.address) {
            Some(r) => rows.push(vec![
                n.address.clone(),
                r.hostname.clone().unwrap_or_else(|| "-".into()),
                r.machine_type.clone().unwrap_or_else(|| "-".into()),
                format!(
                    "{}{}",
                    r.read_at.strftime("%Y-%m-%d %H:%M:%S"),
                    if r.carried { " (carried)" } else { "" }
                ),
                r.file.clone(),
            ]),
            None => rows.push(vec![
                n.address.clone(),
                "-".into(),
                "-".into(),
                "MISSING".into(),
                "-".into(),
            ]),
        }
    }
    ctx.printer.text(&format!(
        "machine configs recorded with snapshot {} (taken {} UTC)\n{}",
        sc.file,
        sc.taken_at.strftime("%Y-%m-%d %H:%M:%S"),
        talos_dr::table::render(&rows)
    ));
    let missing: Vec<&str> = profile
        .file
        .nodes
        .iter()
        .filter(|n| !sc.machine_configs.contains_key(&n.address))
        .map(|n| n.address.as_str())
        .collect();
    ctx.printer.json(&json!({
        "snapshot": sc.file, "taken_at": sc.taken_at,
        "configs": sc.machine_configs, "missing": missing,
    }));
    Ok(Exit::Success)
}

fn show(
    ctx: &Ctx,
    profile: &Profile,
    node: &str,
    at: Option<&str>,
    reveal: bool,
    identity: Option<std::path::PathBuf>,
) -> anyhow::Result<Exit> {
    let Some(found) = machine_config::locate(profile, node, at) else {
        return Err(UserError::precondition(format!(
            "no saved machine config for node {node}{}",
            at.map(|a| format!(" in snapshot {a}")).unwrap_or_default()
        ))
        .hint(format!(
            "`{} configs list` shows what is saved",
            profile.cli()
        ))
        .into());
    };
    let text = read(profile, &found.config, identity)?;
    let shown = if reveal {
        text
    } else {
        machine_config::redact(&text)
            .map_err(|e| UserError::failed(format!("{}: {e}", found.config.file)))?
    };
    ctx.printer.text(&shown);
    ctx.printer.json(&json!({
        "node": node, "snapshot": found.snapshot, "config": found.config,
        "revealed": reveal, "text": shown,
    }));
    Ok(Exit::Success)
}

fn read(
    profile: &Profile,
    r: &ConfigRef,
    identity: Option<std::path::PathBuf>,
) -> anyhow::Result<String> {
    Ok(machine_config::read(profile, r, identity)?)
}
