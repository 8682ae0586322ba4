//! `runs [list]`, `runs show ID`, `runs abandon ID`.

use serde_json::json;
use talos_dr::Exit;
use talos_dr::engine::checkpoint::{self, Journal, RunStatus, StageStatus};

use super::Ctx;
use super::playbook_run::run_dir;
use crate::cli::RunsCommand;

pub fn run(ctx: &Ctx, command: Option<RunsCommand>) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    match command.unwrap_or(RunsCommand::List) {
        RunsCommand::List => {
            let runs = checkpoint::list_runs(&profile.runs_dir());
            let mut rows = vec![
                ["RUN", "PLAYBOOK", "STATUS", "STARTED (UTC)", "AT STAGE"]
                    .map(str::to_owned)
                    .to_vec(),
            ];
            let mut items = Vec::new();
            for (dir, st) in &runs {
                match st {
                    Ok(st) => {
                        let at = st
                            .stages
                            .iter()
                            .find(|s| {
                                !matches!(s.status, StageStatus::Succeeded | StageStatus::Skipped)
                            })
                            .map_or("-".to_owned(), |s| s.id.clone());
                        rows.push(vec![
                            st.run_id.clone(),
                            st.playbook.clone(),
                            format!("{:?}", st.status).to_lowercase(),
                            st.created_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                            at.clone(),
                        ]);
                        items.push(json!({ "run_id": st.run_id, "playbook": st.playbook, "status": st.status, "created_at": st.created_at, "at_stage": at }));
                    }
                    Err(e) => {
                        rows.push(vec![
                            dir.file_name()
                                .unwrap_or_default()
                                .to_string_lossy()
                                .into_owned(),
                            "?".into(),
                            "unreadable".into(),
                            "-".into(),
                            e.to_string(),
                        ]);
                        items.push(json!({ "dir": dir, "error": e.to_string() }));
                    }
                }
            }
            if runs.is_empty() {
                ctx.printer.text("no runs yet\n");
            } else {
                ctx.printer.text(&talos_dr::table::render(&rows));
            }
            ctx.printer.json(&json!({ "runs": items }));
            Ok(Exit::Success)
        }
        RunsCommand::Show { run_id } => {
            let dir = run_dir(&profile, &run_id)?;
            let st = Journal::open(&dir)?.snapshot();
            let mut text = format!(
                "run {} — playbook {}, profile {}, {:?}\ncheckpoint {}\n",
                st.run_id,
                st.playbook,
                st.profile,
                st.status,
                dir.join("state.json").display()
            );
            if let Some(e) = &st.error {
                text.push_str(&format!("error: {e}\n"));
            }
            for s in &st.stages {
                text.push_str(&format!(
                    "\n{} ({}): {:?}, attempt {}, {}\n",
                    s.id,
                    s.kind.as_str(),
                    s.status,
                    s.attempt,
                    s.elapsed_ms()
                        .map_or("-".into(), talos_dr::stages::report::secs)
                ));
                if let Some(e) = &s.error {
                    text.push_str(&format!("  error: {e}\n"));
                }
                if s.outputs.as_object().is_some_and(|o| !o.is_empty()) {
                    let pretty = serde_json::to_string_pretty(&s.outputs)?;
                    for l in pretty.lines() {
                        text.push_str(&format!("  {l}\n"));
                    }
                }
            }
            ctx.printer.text(&text);
            ctx.printer.json(&json!({ "run": st }));
            Ok(Exit::Success)
        }
        RunsCommand::Abandon { run_id } => {
            let dir = run_dir(&profile, &run_id)?;
            let _lock = super::prune::lock(&profile, "runs abandon")?;
            let j = Journal::open(&dir)?;
            j.update(|st| st.status = RunStatus::Abandoned)?;
            j.event("run_abandoned", json!({}));
            ctx.printer.text(&format!(
                "run {run_id} abandoned; `resume` will not pick it\n"
            ));
            ctx.printer
                .json(&json!({ "run_id": run_id, "status": "abandoned" }));
            Ok(Exit::Success)
        }
    }
}
