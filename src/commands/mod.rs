//! One file per subcommand; each is a thin adapter: arguments → library call → printer.

mod check;
mod completions;
mod configs;
#[cfg(feature = "demo")]
mod demo;
mod diff;
mod find;
mod fleet;
mod inspect;
mod list;
mod playbook_run;
mod playbooks;
mod pre_upgrade;
mod prepare;
mod profile;
mod prune;
mod rebuild_node;
mod remote;
mod rollback;
mod runs;
mod salvage;
mod schedule;
mod sets;
mod snapshot;
mod status;
mod verify;

use std::sync::Arc;

use talos_dr::exec;
use talos_dr::profile::{self as prof, Profile};
use talos_dr::talos::Talosctl;
use talos_dr::ui::{AssumeYes, NoPrompt, Prompter, Reporter};
use talos_dr::{Exit, UserError};

use crate::cli::{Cli, Command, GlobalArgs, ProfileCommand};
use crate::printer::Printer;
use crate::term::{TermPrompter, TermReporter};

/// What every command gets: the global flags, where to print, and how to report and ask.
pub struct Ctx {
    pub global: GlobalArgs,
    pub printer: Printer,
    pub reporter: Arc<dyn Reporter>,
    pub prompter: Box<dyn Prompter>,
}

impl Ctx {
    fn new(global: GlobalArgs) -> Self {
        let printer = Printer::new(global.output);
        let reporter: Arc<dyn Reporter> =
            Arc::new(TermReporter::detect(printer.is_json(), global.quiet));
        let prompter: Box<dyn Prompter> = if global.yes {
            Box::new(AssumeYes)
        } else if global.non_interactive || printer.is_json() || !TermPrompter::available() {
            Box::new(NoPrompt)
        } else {
            Box::new(TermPrompter)
        };
        Self {
            global,
            printer,
            reporter,
            prompter,
        }
    }

    pub fn location(&self) -> anyhow::Result<prof::Location> {
        prof::locate(
            self.global.profile.as_deref(),
            self.global.config_dir.as_deref(),
        )
        .map_err(config_error)
    }

    pub fn profile(&self) -> anyhow::Result<Profile> {
        let loc = self.location()?;
        Profile::load(&loc).map_err(config_error)
    }

    pub fn talosctl(&self, profile: &Profile) -> anyhow::Result<Talosctl> {
        let bin = exec::resolve_tool("talosctl", exec::ENV_TALOSCTL)
            .map_err(|e| UserError::usage(e.to_string()))?;
        let talosconfig = profile.talosconfig();
        if !talosconfig.is_file() {
            return Err(UserError::usage(format!(
                "talosconfig {} does not exist (profile {}, key `talosconfig`)",
                talosconfig.display(),
                profile.name()
            ))
            .hint("copy it there, or point `talosconfig` in profile.toml at it")
            .into());
        }
        Ok(Talosctl::new(
            bin,
            talosconfig,
            profile.file.context.clone(),
        ))
    }
}

/// Profile problems are configuration errors (exit 2), with a hint where one helps.
fn config_error(e: prof::ProfileError) -> anyhow::Error {
    let hint = match &e {
        prof::ProfileError::NotFound { name, .. } => Some(format!(
            "create it with `talos-dr profile init {name}`, or pass --config-dir"
        )),
        prof::ProfileError::NoneSelected => {
            Some("list profiles with `ls ~/.config/talos-dr`".to_owned())
        }
        _ => None,
    };
    let mut u = UserError::usage(e.to_string());
    if let Some(h) = hint {
        u = u.hint(h);
    }
    u.into()
}

pub async fn run(cli: Cli) -> anyhow::Result<Exit> {
    let ctx = Ctx::new(cli.global);
    match cli.command {
        Command::Snapshot(args) => match fleet::selection(&ctx, &args.fleet)? {
            Some(sel) => {
                let jobs = args.fleet.jobs;
                fleet::run(
                    &ctx,
                    fleet::names(&sel)?,
                    jobs,
                    fleet::Action::Snapshot(args),
                )
                .await
            }
            None => snapshot::run(&ctx, args).await,
        },
        Command::Verify(args) => verify::run(&ctx, &args),
        Command::Inspect(args) => inspect::run(&ctx, &args).await,
        Command::Diff(args) => diff::run(&ctx, &args).await,
        Command::Find(args) => find::run(&ctx, &args).await,
        Command::List(args) => match fleet::selection(&ctx, &args.fleet)? {
            Some(sel) => {
                let jobs = args.fleet.jobs;
                fleet::run(&ctx, fleet::names(&sel)?, jobs, fleet::Action::List(args)).await
            }
            None if args.remote => remote::list(&ctx).await,
            None => list::run(&ctx, &args),
        },
        Command::Prune(args) => match fleet::selection(&ctx, &args.fleet)? {
            Some(sel) => {
                let jobs = args.fleet.jobs;
                fleet::run(&ctx, fleet::names(&sel)?, jobs, fleet::Action::Prune(args)).await
            }
            None => prune::run(&ctx, &args),
        },
        Command::Status(args) => status::run(&ctx, &args).await,
        Command::Check(args) => check::run(&ctx, &args).await,
        Command::Restore(args) => playbook_run::restore(&ctx, "restore", args).await,
        Command::Drill(args) => playbook_run::restore(&ctx, "drill", args).await,
        Command::Resume(args) => playbook_run::resume(&ctx, args).await,
        Command::Salvage(args) => salvage::run(&ctx, args).await,
        Command::PreUpgrade(args) => pre_upgrade::run(&ctx, args).await,
        Command::Rollback(args) => rollback::run(&ctx, args).await,
        Command::RebuildNode(args) => rebuild_node::run(&ctx, args).await,
        Command::Sets { command } => sets::run(&ctx, command).await,
        Command::Configs(command) => configs::run(&ctx, command).await,
        Command::Runs { command } => runs::run(&ctx, command),
        Command::Playbooks { command } => playbooks::run(&ctx, command),
        Command::Profile(ProfileCommand::Init(args)) => profile::init(&ctx, args).await,
        Command::Profile(ProfileCommand::Show) => profile::show(&ctx),
        Command::Profile(ProfileCommand::Check) => profile::check(&ctx).await,
        Command::Profile(ProfileCommand::Discover { write }) => {
            profile::discover_vms(&ctx, write).await
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(&ctx, args).await,
        Command::Schedule(args) => schedule::run(&ctx, &args).await,
        Command::Completions { shell } => completions::run(shell),
        #[cfg(feature = "demo")]
        Command::Sim { .. } => unreachable!("handled before the runtime starts"),
    }
}

/// `12.3 MiB`
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
