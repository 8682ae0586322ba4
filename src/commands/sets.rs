//! `sets [list]`, `sets show L`, `sets delete L`.

use serde_json::json;
use talos_dr::sets::{self, SetManifest, SetStatus};
use talos_dr::stages::confirmation_result;
use talos_dr::{Exit, UserError};

use super::playbook_run::services;
use super::{Ctx, human_bytes, prune};
use crate::cli::SetsCommand;

pub async fn run(ctx: &Ctx, command: Option<SetsCommand>) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    let dir = profile.sets_dir();
    let now = jiff::Timestamp::now();
    match command.unwrap_or(SetsCommand::List) {
        SetsCommand::List => {
            let all = sets::list(&dir);
            let mut rows = vec![
                ["LABEL", "CREATED (UTC)", "AGE", "VMS", "ETCD", "STATUS"]
                    .map(str::to_owned)
                    .to_vec(),
            ];
            let mut items = Vec::new();
            for m in &all {
                match m {
                    Ok(m) => {
                        rows.push(vec![
                            m.label.clone(),
                            m.created_at.strftime("%Y-%m-%d %H:%M").to_string(),
                            m.age(now),
                            m.vms.len().to_string(),
                            m.etcd.as_ref().map_or("-".into(), |e| human_bytes(e.size)),
                            status_word(m),
                        ]);
                        items.push(json!({
                            "label": m.label, "created_at": m.created_at, "status": m.status,
                            "vms": m.vms.len(), "missing": m.missing.len(), "snapname": m.snapname,
                            "etcd": m.etcd,
                        }));
                    }
                    Err(e) => {
                        rows.push(vec![
                            "?".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            format!("unreadable: {e}"),
                        ]);
                        items.push(json!({ "error": e.to_string() }));
                    }
                }
            }
            if all.is_empty() {
                ctx.printer.text(&format!(
                    "no snapshot sets yet; make one with `{} pre-upgrade --label L`\n",
                    profile.cli()
                ));
            } else {
                ctx.printer.text(&talos_dr::table::render(&rows));
            }
            ctx.printer.json(&json!({
                "keep_sets": profile.file.proxmox.as_ref().map(|p| p.keep_sets),
                "sets": items,
            }));
            Ok(Exit::Success)
        }
        SetsCommand::Show { label } => {
            let m = load(&profile, &label)?;
            ctx.printer.text(&render(&m, now));
            ctx.printer.json(&json!({ "set": m }));
            Ok(Exit::Success)
        }
        SetsCommand::Delete { label } => {
            let m = load(&profile, &label)?;
            let _lock = prune::lock(&profile, "sets delete")?;
            ctx.printer.text(&render(&m, now));
            let answer = ctx.prompter.confirm(&format!(
                "Delete set {label}: {} VM snapshots through the Proxmox VE API and its etcd snapshot?",
                m.vms.len()
            ))?;
            confirmation_result(answer, "sets delete")?;
            let svc = services(ctx, &profile)?;
            let max_parallel = profile.file.proxmox.as_ref().map_or(4, |p| p.max_parallel);
            let report = sets::delete_set(
                svc.pve.as_ref(),
                &dir,
                &m,
                max_parallel,
                ctx.reporter.as_ref(),
            )
            .await?;
            let mut text = String::new();
            for d in &report.deleted {
                text.push_str(&format!("deleted {d}\n"));
            }
            for d in &report.absent {
                text.push_str(&format!("already gone: {d}\n"));
            }
            for d in &report.refused {
                text.push_str(&format!("left alone: {d}\n"));
            }
            if report.etcd_removed {
                text.push_str("deleted the set's etcd snapshot\n");
            }
            for e in &report.errors {
                text.push_str(&format!("error: {e}\n"));
            }
            ctx.printer.text(&text);
            ctx.printer
                .json(&json!({ "label": label, "report": report }));
            if report.errors.is_empty() {
                Ok(Exit::Success)
            } else {
                Err(UserError::failed(format!(
                    "set {label} was only partly deleted; its manifest now lists what is left"
                ))
                .hint(format!(
                    "fix the cause and run `{} sets delete {label}` again",
                    profile.cli()
                ))
                .into())
            }
        }
    }
}

fn load(profile: &talos_dr::profile::Profile, label: &str) -> anyhow::Result<SetManifest> {
    sets::load(&profile.sets_dir(), label).map_err(|e| {
        UserError::usage(e.to_string())
            .hint(format!("list the sets with `{} sets list`", profile.cli()))
            .into()
    })
}

fn status_word(m: &SetManifest) -> String {
    match m.status {
        SetStatus::Complete => "complete".into(),
        SetStatus::Incomplete => format!("INCOMPLETE ({} missing)", m.missing.len()),
    }
}

fn render(m: &SetManifest, now: jiff::Timestamp) -> String {
    let mut out = format!(
        "set {} — {}, made {} UTC ({} ago) by run {}\nVM snapshot name: {}\n",
        m.label,
        status_word(m),
        m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        m.age(now),
        m.run_id.as_deref().unwrap_or("-"),
        m.snapname
    );
    match &m.etcd {
        Some(e) => out.push_str(&format!(
            "etcd snapshot: {} ({}, sha256 {})\n",
            e.path.display(),
            human_bytes(e.size),
            e.sha256
        )),
        None => out.push_str("etcd snapshot: none\n"),
    }
    let mut rows = vec![
        ["VMID", "PVE NODE", "ROLE", "ADDRESS", "SNAPSHOT", "TASK"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for v in &m.vms {
        rows.push(vec![
            v.vmid.to_string(),
            v.node.clone(),
            v.role.clone(),
            v.address.clone(),
            v.snapname.clone(),
            v.exitstatus.clone(),
        ]);
    }
    for f in &m.missing {
        rows.push(vec![
            f.vmid.to_string(),
            f.node.clone(),
            "-".into(),
            "-".into(),
            "MISSING".into(),
            f.error.clone(),
        ]);
    }
    out.push_str(&talos_dr::table::render(&rows));
    out
}
