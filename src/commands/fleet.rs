//! Fleet runs of `snapshot`, `list` and `prune`: every selected profile in parallel (at most
//! `--jobs` at once), each with its own lock, captured output and `[profile]`-prefixed events;
//! then each profile's output, one summary table (or one JSON document) and the worst exit code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use talos_dr::fleet::{self, Selection};
use talos_dr::profile;
use talos_dr::ui::{AssumeYes, NoPrompt, Prefixed, Prompter};
use talos_dr::{Exit, UserError};
use tracing::Instrument;

use super::Ctx;
use crate::cli::{FleetArgs, ListArgs, PruneArgs, SnapshotArgs};
use crate::printer::{Captured, Printer, eprint_line};

/// The command each profile runs.
#[derive(Clone)]
pub enum Action {
    Snapshot(SnapshotArgs),
    List(ListArgs),
    Prune(PruneArgs),
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Snapshot(_) => "snapshot",
            Action::List(_) => "list",
            Action::Prune(_) => "prune",
        }
    }
}

/// The fleet selection of the flags, if any (`--all-profiles`, `-p a,b,c`).
pub fn selection(ctx: &Ctx, args: &FleetArgs) -> anyhow::Result<Option<Selection>> {
    fleet::select(
        ctx.global.profile.as_deref(),
        args.all_profiles,
        ctx.global.config_dir.is_some(),
    )
    .map_err(|e| {
        UserError::usage(e.to_string())
            .hint("TALOS_DR_PROFILE and TALOS_DR_CONFIG_DIR count as -p and --config-dir")
            .into()
    })
}

/// The profile names of a selection (every profile directory for `--all-profiles`).
pub fn names(selection: &Selection) -> anyhow::Result<Vec<String>> {
    let home = profile::profiles_home().map_err(|e| UserError::usage(e.to_string()))?;
    fleet::resolve(selection, &home).map_err(|e| {
        UserError::usage(e.to_string())
            .hint("create one with `talos-dr profile init NAME`")
            .into()
    })
}

impl Ctx {
    /// The context one profile of a fleet runs in: that profile, output captured, events
    /// prefixed. Nobody is asked anything while profiles run side by side: `--yes` or no.
    pub fn for_profile(&self, name: &str) -> Ctx {
        let mut global = self.global.clone();
        global.profile = Some(name.to_owned());
        global.config_dir = None;
        let prompter: Box<dyn Prompter> = if global.yes {
            Box::new(AssumeYes)
        } else {
            Box::new(NoPrompt)
        };
        Ctx {
            printer: Printer::capturing(global.output),
            global,
            reporter: Arc::new(Prefixed {
                inner: self.reporter.clone(),
                label: name.to_owned(),
            }),
            prompter,
        }
    }
}

/// How one profile's run ended.
pub struct Outcome {
    pub profile: String,
    pub exit: Exit,
    pub elapsed: Duration,
    pub captured: Captured,
    pub error: Option<String>,
    pub hints: Vec<String>,
}

/// Runs `action` for every profile in `names` and reports them together.
pub async fn run(ctx: &Ctx, names: Vec<String>, jobs: u16, action: Action) -> anyhow::Result<Exit> {
    let command = action.name();
    ctx.reporter.info(&format!(
        "{command} for {} profile{}, {jobs} at a time: {}",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        names.join(", ")
    ));
    let outcomes = fleet::run_bounded(
        names,
        usize::from(jobs),
        |name| {
            let sub = ctx.for_profile(&name);
            let action = action.clone();
            // Library log lines (tracing) name the profile too: `profile{name=prod}: …`.
            let span = tracing::info_span!("profile", name = %name);
            async move {
                let started = Instant::now();
                let result = match action {
                    Action::Snapshot(a) => super::snapshot::run(&sub, a).await,
                    Action::List(a) if a.remote => super::remote::list(&sub).await,
                    Action::List(a) => super::list::run(&sub, &a),
                    Action::Prune(a) => super::prune::run(&sub, &a),
                };
                let (exit, error, hints) = match result {
                    Ok(exit) => (exit, None, Vec::new()),
                    Err(e) => {
                        let (exit, hints) = talos_dr::error::classify(&e);
                        (exit, Some(format!("{e:#}")), hints)
                    }
                };
                sub.reporter.info(&format!(
                    "{command} finished: {} (exit {})",
                    result_word(exit),
                    exit.code()
                ));
                Outcome {
                    profile: name,
                    exit,
                    elapsed: started.elapsed(),
                    captured: sub.printer.captured(),
                    error,
                    hints,
                }
            }
            .instrument(span)
        },
        |name| Outcome {
            profile: name.clone(),
            exit: Exit::Failed,
            elapsed: Duration::ZERO,
            captured: Captured::default(),
            error: Some(format!(
                "{command} for profile {name} stopped on an internal error"
            )),
            hints: Vec::new(),
        },
    )
    .await;
    let worst = fleet::worst(outcomes.iter().map(|o| o.exit));
    report(ctx, command, &outcomes, worst);
    Ok(worst)
}

fn result_word(exit: Exit) -> &'static str {
    match exit {
        Exit::Success => "ok",
        Exit::Failed => "failed",
        Exit::Usage => "config error",
        Exit::InvalidSnapshot => "invalid snapshot",
        Exit::Precondition => "precondition",
        Exit::Declined => "declined",
        Exit::Interrupted => "interrupted",
    }
}

fn report(ctx: &Ctx, command: &str, outcomes: &[Outcome], worst: Exit) {
    for o in outcomes {
        if let Some(e) = &o.error {
            eprint_line(&format!("[{}] error: {e}", o.profile));
            for h in &o.hints {
                eprint_line(&format!("[{}] hint: {h}", o.profile));
            }
        }
    }
    let mut text = String::new();
    for o in outcomes.iter().filter(|o| !o.captured.text.is_empty()) {
        text.push_str(&format!("== {} ==\n{}", o.profile, o.captured.text));
        if !o.captured.text.ends_with('\n') {
            text.push('\n');
        }
        text.push('\n');
    }
    let mut rows = vec![
        ["PROFILE", "RESULT", "EXIT", "TIME", "DETAIL"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for o in outcomes {
        let detail = o
            .error
            .as_deref()
            .or_else(|| o.captured.text.lines().find(|l| !l.trim().is_empty()))
            .unwrap_or("-");
        rows.push(vec![
            o.profile.clone(),
            result_word(o.exit).to_owned(),
            o.exit.code().to_string(),
            format!("{:.1}s", o.elapsed.as_secs_f64()),
            first_line(detail, 120),
        ]);
    }
    text.push_str(&talos_dr::table::render(&rows));
    let ok = outcomes.iter().filter(|o| o.exit == Exit::Success).count();
    text.push_str(&format!(
        "{command}: {} profile{}, {ok} ok, {} not (exit {})\n",
        outcomes.len(),
        if outcomes.len() == 1 { "" } else { "s" },
        outcomes.len() - ok,
        worst.code()
    ));
    ctx.printer.text(&text);
    ctx.printer.json(&json!({
        "command": command,
        "exit_code": worst.code(),
        "profiles": outcomes.iter().map(|o| json!({
            "profile": o.profile,
            "result": result_word(o.exit),
            "exit_code": o.exit.code(),
            "elapsed_ms": talos_dr::ui::ms(o.elapsed),
            "output": o.captured.json,
            "error": o.error,
            "hints": o.hints,
        })).collect::<Vec<_>>(),
    }));
}

/// The text on one line (an error's own lines joined), cut at `max` characters.
fn first_line(s: &str, max: usize) -> String {
    let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > max {
        let cut: String = line.chars().take(max - 1).collect();
        format!("{cut}…")
    } else {
        line.to_owned()
    }
}
