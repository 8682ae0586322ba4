//! `playbooks [list]`, `playbooks show NAME`.

use serde_json::json;
use talos_dr::Exit;
use talos_dr::engine::playbook::{self, BUILT_IN};
use talos_dr::stages::Inputs;

use super::Ctx;
use super::playbook_run::{load_playbook, plan_json, render_plan, services};
use crate::cli::PlaybooksCommand;

pub fn run(ctx: &Ctx, command: Option<PlaybooksCommand>) -> anyhow::Result<Exit> {
    match command.unwrap_or(PlaybooksCommand::List) {
        PlaybooksCommand::List => {
            let dir = ctx.location().ok().map(|l| l.config_dir);
            let mut rows = vec![
                ["NAME", "STAGES", "DESTRUCTIVE", "SOURCE", "SUMMARY"]
                    .map(str::to_owned)
                    .to_vec(),
            ];
            let mut items = Vec::new();
            for (name, _) in BUILT_IN {
                let d = dir.clone().unwrap_or_default();
                let (origin, _) = playbook::origin(name, &d);
                match talos_dr::stages::load_playbook(name, &d) {
                    Ok(pb) => {
                        rows.push(vec![
                            name.into(),
                            pb.stages.len().to_string(),
                            if pb.destructive { "yes" } else { "no" }.into(),
                            origin.clone(),
                            pb.summary.clone(),
                        ]);
                        items.push(json!({ "name": name, "summary": pb.summary, "destructive": pb.destructive, "stages": pb.stages.len(), "source": origin }));
                    }
                    Err(e) => {
                        rows.push(vec![
                            name.into(),
                            "-".into(),
                            "-".into(),
                            origin.clone(),
                            format!("INVALID: {e}"),
                        ]);
                        items.push(json!({ "name": name, "error": e.to_string() }));
                    }
                }
            }
            ctx.printer.text(&talos_dr::table::render(&rows));
            ctx.printer.json(&json!({ "playbooks": items }));
            Ok(Exit::Success)
        }
        PlaybooksCommand::Show { name } => {
            let profile = ctx.profile()?;
            let pb = load_playbook(&name, &profile)?;
            let svc = services(ctx, &profile)?;
            let inputs = Inputs::default();
            ctx.printer
                .text(&render_plan(&pb, &profile, &svc, &inputs, false));
            ctx.printer.json(&plan_json(&pb, &profile, &svc, &inputs));
            Ok(Exit::Success)
        }
    }
}
