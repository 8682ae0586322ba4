//! `restore`, `drill` and `resume`: start or continue a playbook run, then summarise it.

use std::path::Path;

use serde_json::{Value, json};
use talos_dr::engine::checkpoint::{self, Journal, RunState, RunStatus};
use talos_dr::engine::playbook::{self, Playbook};
use talos_dr::engine::run::Runner;
use talos_dr::exec;
use talos_dr::kube::Kubectl;
use talos_dr::profile::Profile;
use talos_dr::pve::PveClient;
use talos_dr::stages::record_set::RecordSetOutputs;
use talos_dr::stages::report::RunReport;
use talos_dr::stages::{self, Inputs, Plan, Services};
use talos_dr::{Exit, UserError};

use super::{Ctx, prune};
use crate::cli::{RestoreArgs, ResumeArgs};

pub async fn restore(ctx: &Ctx, name: &str, args: RestoreArgs) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    check_excluded(&profile, &args.exclude)?;
    check_rebuild(&profile, &args.rebuild, &args.exclude)?;
    if name == "drill" && !args.rebuild.is_empty() {
        return Err(UserError::usage(
            "--rebuild is for a real restore; a drill restores the cluster as it is",
        )
        .into());
    }
    let name = if args.rebuild.is_empty() || name != "restore" {
        name
    } else {
        "restore-rebuild"
    };
    let snapshot = match &args.snapshot {
        // Downloads, decrypts and decompresses (then verifies) before anything else happens.
        Some(s) => super::prepare::snapshot(ctx, &profile, s, &args).await?,
        None if args.dry_run => std::path::PathBuf::from("<best salvaged copy>"),
        None => super::salvage::best_survivor(ctx, &profile, &args.exclude).await?,
    };
    let inputs = Inputs {
        exclude: args.exclude.clone(),
        rebuild: args.rebuild.clone(),
        snapshot: Some(snapshot),
        vm_snapshot: if args.vm_snapshot {
            Some(true)
        } else if args.no_vm_snapshot {
            Some(false)
        } else {
            None
        },
        health_timeout_s: Some(args.health_timeout.as_secs()),
        wait_timeout_s: Some(args.wait_timeout.as_secs()),
        poll_max_ms: Some(u64::try_from(args.poll_max.as_millis()).unwrap_or(5_000)),
        ..Inputs::default()
    };
    start(ctx, &profile, name, inputs, args.dry_run).await
}

/// For a plan with `etcd-recover`: the `--system-labels-to-wipe` of each included node, read
/// (read-only) from its ETCD volume; a node that does not answer says so.
async fn planned_wipes(
    pb: &Playbook,
    services: &Services,
    inputs: &Inputs,
) -> Vec<(String, String)> {
    if !pb.stages.iter().any(|s| s.kind.as_str() == "etcd-recover") {
        return Vec::new();
    }
    let nodes = inputs.control_plane(&services.profile);
    futures::future::join_all(nodes.into_iter().map(|n| async move {
        let labels = match services.talos.etcd_volume(&n).await {
            Ok(v) => v.labels_to_wipe().to_owned(),
            Err(e) => format!("unknown: {}", e.message()),
        };
        (n, labels)
    }))
    .await
}

/// `--rebuild` names control-plane nodes of the profile, not also `--exclude`d, and needs the
/// Proxmox API; only `restore` takes it (exit 2 otherwise).
fn check_rebuild(profile: &Profile, rebuild: &[String], exclude: &[String]) -> anyhow::Result<()> {
    if rebuild.is_empty() {
        return Ok(());
    }
    let cp = profile.control_plane_addresses();
    for n in rebuild {
        if !cp.contains(n) {
            return Err(UserError::usage(format!(
                "--rebuild {n}: not a control-plane node of profile {} (its control-plane nodes: {})",
                profile.name(),
                cp.join(", ")
            ))
            .into());
        }
        if exclude.contains(n) {
            return Err(UserError::usage(format!(
                "--rebuild {n} and --exclude {n}: a node is either rebuilt or left out"
            ))
            .into());
        }
    }
    if profile.file.proxmox.is_none() {
        return Err(UserError::usage(format!(
            "--rebuild re-creates VMs through the Proxmox VE API, but profile {} has no [proxmox] section",
            profile.name()
        ))
        .into());
    }
    Ok(())
}

/// `--exclude` names control-plane nodes of the profile and leaves at least one (exit 2 otherwise).
pub fn check_excluded(profile: &Profile, exclude: &[String]) -> anyhow::Result<()> {
    let cp = profile.control_plane_addresses();
    for n in exclude {
        if !cp.contains(n) {
            return Err(UserError::usage(format!(
                "--exclude {n}: not a control-plane node of profile {} (its control-plane nodes: {})",
                profile.name(),
                cp.join(", ")
            ))
            .into());
        }
    }
    if cp.iter().all(|n| exclude.contains(n)) {
        return Err(UserError::usage(
            "--exclude leaves no control-plane node to restore onto: keep at least one",
        )
        .hint("rebuild a control-plane VM first, or restore onto the nodes that are left")
        .into());
    }
    Ok(())
}

/// Starts a new run of playbook `name` (or prints its plan with `dry_run`).
pub async fn start(
    ctx: &Ctx,
    profile: &Profile,
    name: &str,
    inputs: Inputs,
    dry_run: bool,
) -> anyhow::Result<Exit> {
    let pb = load_playbook(name, profile)?;
    let services = services(ctx, profile)?;
    if dry_run {
        let wipes = planned_wipes(&pb, &services, &inputs).await;
        let mut text = render_plan(&pb, profile, &services, &inputs, true);
        if !wipes.is_empty() {
            text.push_str(
                "\nwhat each reset will wipe (read now with `get volumestatus ETCD`; nothing is changed):\n",
            );
            for (node, labels) in &wipes {
                text.push_str(&format!("   {node}   {labels}\n"));
            }
        }
        ctx.printer.text(&text);
        ctx.printer.json(&json!({
            "dry_run": true,
            "plan": plan_json(&pb, profile, &services, &inputs),
            "wipes": wipes.iter().map(|(n, l)| json!({ "node": n, "labels": l })).collect::<Vec<_>>(),
        }));
        return Ok(Exit::Success);
    }
    let _lock = prune::lock(profile, name)?;
    let journal = Journal::create(
        &profile.runs_dir(),
        &pb,
        profile.name(),
        serde_json::to_value(&inputs)?,
    )?;
    ctx.reporter.info(&format!(
        "run {} started; checkpoint {}",
        journal.snapshot().run_id,
        journal.dir().join("state.json").display()
    ));
    execute(ctx, profile, &pb, &services, &journal).await
}

pub async fn resume(ctx: &Ctx, args: ResumeArgs) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    let runs_dir = profile.runs_dir();
    let dir = match &args.run_id {
        Some(id) => {
            let d = runs_dir.join(id);
            if !d.join("state.json").is_file() {
                return Err(
                    UserError::usage(format!("no run {id:?} in {}", runs_dir.display()))
                        .hint("list runs with `talos-dr runs`")
                        .into(),
                );
            }
            d
        }
        None => checkpoint::list_runs(&runs_dir)
            .into_iter()
            .find(|(_, st)| st.as_ref().is_ok_and(|s| !s.status.is_finished()))
            .map(|(d, _)| d)
            .ok_or_else(|| {
                UserError::usage("there is no unfinished run to resume")
                    .hint("list runs with `talos-dr runs`")
            })?,
    };
    let _lock = prune::lock(&profile, "resume")?;
    let journal = Journal::open(&dir)?;
    let st = journal.snapshot();
    if st.status.is_finished() {
        return Err(UserError::usage(format!(
            "run {} is {:?} and cannot be resumed",
            st.run_id, st.status
        ))
        .into());
    }
    let pb = load_playbook(&st.playbook, &profile)?;
    if pb.fingerprint() != st.plan_fingerprint && !args.force {
        return Err(UserError::usage(format!(
            "playbook {} changed since run {} started, so its stages may not line up with the checkpoint",
            st.playbook, st.run_id
        ))
        .hint("check `talos-dr playbooks show` and pass --force to resume anyway")
        .into());
    }
    let services = services(ctx, &profile)?;
    ctx.reporter
        .info(&format!("resuming run {} ({})", st.run_id, dir.display()));
    execute(ctx, &profile, &pb, &services, &journal).await
}

async fn execute(
    ctx: &Ctx,
    profile: &Profile,
    pb: &Playbook,
    services: &Services,
    journal: &Journal,
) -> anyhow::Result<Exit> {
    // Every talosctl call of the run goes to its event log.
    let mut services = services.clone();
    let dir = journal.dir().to_path_buf();
    services.talos.observer = Some(talos_dr::talos::CallObserver(std::sync::Arc::new(
        move |call| {
            checkpoint::append_event(
                &dir,
                "external_call",
                serde_json::to_value(call).unwrap_or_default(),
            );
        },
    )));
    let services = &services;
    let runner = Runner {
        services,
        reporter: ctx.reporter.clone(),
        prompter: ctx.prompter.as_ref(),
        playbook: pb,
    };
    let result = runner.execute(journal).await;
    let st = journal.snapshot();
    // A checkpoint record that cannot be read must not hide the run's own result.
    let report = match stages::report::build(&st, profile.name()) {
        Ok(r) => Some(r),
        Err(e) => {
            ctx.reporter
                .warn(&format!("cannot summarise run {}: {e:#}", st.run_id));
            None
        }
    };
    ctx.printer.text(&summary(&st, report.as_ref(), profile));
    ctx.printer
        .json(&json!({ "run_id": st.run_id, "status": st.status, "report": report }));
    result.map(|()| Exit::Success).map_err(|e| {
        let hint = format!(
            "the checkpoint is saved: `{} resume {}` continues from the failed stage",
            profile.cli(),
            st.run_id
        );
        let (exit, _) = talos_dr::error::classify(&e);
        if exit == Exit::Failed {
            e.context(UserError::failed(format!("run {} failed", st.run_id)).hint(hint))
        } else {
            e
        }
    })
}

fn summary(st: &RunState, report: Option<&RunReport>, profile: &Profile) -> String {
    let mut out = format!(
        "run {} ({}): {}\n",
        st.run_id,
        st.playbook,
        status_word(st.status)
    );
    if let Some(report) = report {
        let mut rows = vec![vec!["STAGE".to_owned(), "STATUS".into(), "TIME".into()]];
        for s in &report.stages {
            rows.push(vec![
                s.id.clone(),
                stages::report::status_text(s.status),
                s.elapsed_ms.map_or("-".into(), stages::report::secs),
            ]);
        }
        out.push_str(&talos_dr::table::render(&rows));
        if st.status == RunStatus::Succeeded && matches!(st.playbook.as_str(), "restore" | "drill")
        {
            out.push_str(&format!(
                "recovery time: {}\n",
                stages::report::secs(report.total_ms)
            ));
        }
        if let Some(p) = &report.pre_restore_snapshot {
            out.push_str(&format!("state before the restore: {}\n", p.display()));
        }
        for u in &report.undo {
            out.push_str(&format!("undo: {u}\n"));
        }
        if let Some(c) = &report.comparison {
            out.push_str(&c.render_text());
        }
    }
    if st.status == RunStatus::Succeeded
        && let Ok(Some(set)) = st.data::<RecordSetOutputs>()
    {
        let label = &set.label;
        out.push_str(&format!(
            "set {label} recorded: {}\nroll back to it with: {} rollback --label {label}\n",
            talos_dr::sets::manifest_path(&profile.sets_dir(), label).display(),
            profile.cli()
        ));
    }
    let dir = profile.runs_dir().join(&st.run_id);
    if dir.join("report.md").is_file() {
        out.push_str(&format!("report: {}\n", dir.join("report.md").display()));
    }
    out
}

fn status_word(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Running => "running",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "FAILED",
        RunStatus::Interrupted => "interrupted",
        RunStatus::Abandoned => "abandoned",
    }
}

pub fn load_playbook(name: &str, profile: &Profile) -> anyhow::Result<Playbook> {
    stages::load_playbook(name, &profile.config_dir)
        .map_err(|e| UserError::usage(e.to_string()).into())
}

pub fn services(ctx: &Ctx, profile: &Profile) -> anyhow::Result<Services> {
    // Runs talk to each node directly: in a disaster the talosconfig's endpoint may be a VIP
    // that died with etcd.
    let talos = ctx.talosctl(profile)?.direct();
    let pve = match &profile.file.proxmox {
        Some(cfg) => Some(
            PveClient::from_config(cfg, &profile.config_dir, ctx.reporter.clone()).map_err(
                |e| UserError::usage(format!("[proxmox] in profile {}: {e}", profile.name())),
            )?,
        ),
        None => None,
    };
    let kubectl = if profile.kubeconfig().is_file() {
        exec::resolve_tool("kubectl", exec::ENV_KUBECTL)
            .ok()
            .map(|bin| Kubectl::new(bin, profile.kubeconfig()))
    } else {
        None
    };
    Ok(Services {
        profile: profile.clone(),
        talos,
        pve,
        kubectl,
    })
}

pub fn render_plan(
    pb: &Playbook,
    profile: &Profile,
    services: &Services,
    inputs: &Inputs,
    dry_run: bool,
) -> String {
    let mut out = format!(
        "{}playbook {}: {}{}\n",
        if dry_run {
            "dry run — nothing will be changed\n"
        } else {
            ""
        },
        pb.name,
        pb.summary,
        if pb.destructive { " (destructive)" } else { "" }
    );
    for (i, s) in pb.stages.iter().enumerate() {
        let mut flags = Vec::new();
        if s.confirm() != playbook::Confirm::No {
            flags.push(format!("confirm: {:?}", s.confirm()).to_lowercase());
        }
        if s.best_effort {
            flags.push("best effort".into());
        }
        if let Some(t) = &s.timeout {
            flags.push(format!("timeout {t}"));
        }
        if s.when == Some(playbook::When::Proxmox) {
            flags.push(if profile.file.proxmox.is_some() {
                "runs: profile has [proxmox]".into()
            } else {
                "skipped: no [proxmox] in the profile".to_owned()
            });
        }
        out.push_str(&format!(
            "\n{}. {} ({}){}\n   {}\n",
            i + 1,
            s.id,
            s.kind.as_str(),
            if flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", flags.join(", "))
            },
            s.stage().title()
        ));
        for line in s.stage().describe(&plan(profile, services, inputs)) {
            out.push_str(&format!("   $ {line}\n"));
        }
    }
    out
}

pub fn plan_json(pb: &Playbook, profile: &Profile, services: &Services, inputs: &Inputs) -> Value {
    json!({
        "playbook": pb.name,
        "summary": pb.summary,
        "destructive": pb.destructive,
        "fingerprint": pb.fingerprint(),
        "stages": pb.stages.iter().map(|s| json!({
            "id": s.id,
            "kind": s.kind,
            "confirm": s.confirm(),
            "timeout": s.timeout,
            "best_effort": s.best_effort,
            "when": s.when,
            "calls": s.stage().describe(&plan(profile, services, inputs)),
        })).collect::<Vec<_>>(),
    })
}

fn plan<'a>(profile: &'a Profile, services: &'a Services, inputs: &'a Inputs) -> Plan<'a> {
    Plan {
        profile,
        talos: &services.talos,
        inputs,
    }
}

pub fn run_dir(profile: &Profile, id: &str) -> anyhow::Result<std::path::PathBuf> {
    let d = profile.runs_dir().join(id);
    if d.join("state.json").is_file() && Path::new(id).components().count() == 1 {
        Ok(d)
    } else {
        Err(
            UserError::usage(format!("no run {id:?} in {}", profile.runs_dir().display()))
                .hint("list runs with `talos-dr runs`")
                .into(),
        )
    }
}
