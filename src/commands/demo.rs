//! `demo`: the whole product on a simulated cluster, in under a minute, with nothing installed.
//!
//! Every step runs the real `talos-dr` binary as a child process against the simulator, so what
//! the user sees is exactly what a real run prints.

use std::path::Path;
use std::process::Stdio;

use serde_json::{Value, json};
use talos_dr::sim::{self, demo};
use talos_dr::{Exit, UserError, exec};

use super::Ctx;
use crate::cli::DemoArgs;

struct Step {
    title: String,
    args: Vec<String>,
}

pub async fn run(ctx: &Ctx, args: DemoArgs) -> anyhow::Result<Exit> {
    let exe = std::env::current_exe()?;
    let dir = match &args.dir {
        Some(d) => {
            if d.join("profile").exists() {
                return Err(UserError::usage(format!(
                    "{} already holds a demo; pass a new or empty --dir",
                    d.display()
                ))
                .into());
            }
            std::fs::create_dir_all(d)?;
            std::path::absolute(d)?
        }
        None => tempfile::Builder::new()
            .prefix("talos-dr-demo-")
            .tempdir()?
            .keep(),
    };
    let real_kubectl = exec::resolve_tool("kubectl", exec::ENV_KUBECTL).is_ok();
    let env = demo::setup(&dir, &exe, real_kubectl, &args.fault)?;
    if let Some(d) = args.disaster {
        d.prepare(&env)?;
    }
    let (kube_addr, kube_server) = sim::kube_api::serve(env.state.clone()).await?;
    sim::kube_api::write_kubeconfig(&env.config_dir.join("kubeconfig"), kube_addr)?;
    let pve = sim::pve_api::serve(env.state.clone()).await?;
    demo::attach_pve(&env, &pve)?;

    let say = |text: &str| ctx.printer.text(&format!("{text}\n"));
    say(
        "talos-dr demo — a SIMULATED cluster: 3 control-plane VMs and 2 workers. Nothing real is touched.",
    );
    say(&format!("  files:   {}", dir.display()));
    say(&format!(
        "  proxmox: a simulated Proxmox VE API at {} (HTTPS, certificate pinned: {})",
        pve.endpoint(),
        pve.fingerprint
    ));
    say(&format!(
        "  kubectl: {}",
        if real_kubectl {
            "the real kubectl, against a simulated Kubernetes API on 127.0.0.1"
        } else {
            "not installed here, so a simulated kubectl answers"
        }
    ));
    if !args.fault.is_empty() {
        say(&format!(
            "  faults:  {}",
            args.fault
                .iter()
                .map(|f| serde_json::to_value(f)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    let mut results = Vec::new();
    let mut exit = Exit::Success;
    let steps_before = vec![
        Step {
            title: "1/5 find the VM behind each node: `talos-dr profile discover --write`".into(),
            args: vec!["profile".into(), "discover".into(), "--write".into()],
        },
        Step {
            title: "2/5 a scheduled backup: `talos-dr snapshot`".into(),
            args: vec!["snapshot".into()],
        },
        Step {
            title:
                "3/5 before an upgrade, snapshot everything: `talos-dr pre-upgrade --label demo`"
                    .into(),
            args: vec!["pre-upgrade".into(), "--label".into(), "demo".into()],
        },
    ];
    for step in &steps_before {
        let (code, out) = run_step(ctx, &exe, &env, step).await?;
        results.push(json!({ "step": step.title, "args": step.args, "exit": code, "output": out }));
        if code != 0 {
            exit = exit_from(code);
            break;
        }
    }
    let mut run_id = None;
    if exit == Exit::Success {
        let mut restore_args: Vec<String> = Vec::new();
        let mut rebuild: Option<String> = None;
        match args.disaster {
            None => {
                say(
                    "\n== 4/5 disaster: etcd's data is lost on every control-plane node (simulated)",
                );
                demo::disaster(&env.state)?;
            }
            Some(d) => {
                say(&format!(
                    "\n== 4/5 disaster: {} (simulated)",
                    disaster_text(d)
                ));
                match d {
                    // Only talos-cp-3's host dies; the other two keep quorum, so the node is
                    // rebuilt while the cluster runs instead of restoring etcd.
                    demo::Disaster::HostLost => {
                        sim::state::Cluster::update(&env.state, demo::host_lost_only)?;
                        let lost = sim::state::Cluster::load(&env.state)?
                            .nodes
                            .iter()
                            .find(|n| n.hostname == "talos-cp-3")
                            .map(|n| n.address.clone())
                            .ok_or_else(|| UserError::failed("the demo's talos-cp-3 is missing"))?;
                        rebuild = Some(lost);
                    }
                    _ => sim::state::Cluster::update(&env.state, |c| d.apply(c))?,
                }
                if d == demo::Disaster::QuorumLoss {
                    restore_args.push("--from-survivor".into());
                }
            }
        }
        let latest = talos_dr::snapshot::store::list(&env.config_dir.join("etcd-backups"))?
            .into_iter()
            .next()
            .map(|e| e.path)
            .ok_or_else(|| UserError::failed("the demo's snapshot is missing"))?;
        if !restore_args.contains(&"--from-survivor".to_owned()) {
            restore_args.extend(["--snapshot".into(), latest.display().to_string()]);
        }
        let shown = restore_args
            .iter()
            .map(|a| {
                if a == &latest.display().to_string() {
                    "<newest>"
                } else {
                    a.as_str()
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        let mut argv: Vec<String> = vec!["--yes".into(), "restore".into()];
        argv.extend(restore_args.iter().cloned());
        let mut title = format!(
            "5/5 recovery: `talos-dr restore {shown}` (--yes implied: the demo answers the confirmations)"
        );
        if let Some(node) = &rebuild {
            argv = vec!["--yes".into(), "rebuild-node".into(), node.clone()];
            title = format!(
                "5/5 recovery: `talos-dr rebuild-node {node}`: a new VM from its newest backup, its stale etcd data wiped, and it joins (--yes implied)"
            );
        }
        let step = Step {
            title,
            args: argv
                .into_iter()
                .chain(["--poll-max".into(), "500ms".into()])
                .chain(if rebuild.is_some() {
                    [
                        "--wait-timeout".into(),
                        "60s".into(),
                        "--maintenance-timeout".into(),
                        "60s".into(),
                    ]
                } else {
                    [
                        "--wait-timeout".into(),
                        "12s".into(),
                        "--health-timeout".into(),
                        "60s".into(),
                    ]
                })
                .collect(),
        };
        let (code, out) = run_step(ctx, &exe, &env, &step).await?;
        results.push(json!({ "step": step.title, "args": step.args, "exit": code, "output": out }));
        if code != 0 {
            exit = exit_from(code);
        }
        run_id = newest_run(&env.config_dir);
    }
    // The doctor's view of the restored cluster. Its red checks (no timer, no drill yet) are
    // advice for a real profile, not a demo failure.
    let mut status_doc = Value::Null;
    if exit == Exit::Success {
        let step = Step {
            title: "after: could it be recovered again? `talos-dr status`".into(),
            args: vec!["status".into()],
        };
        status_doc = run_step(ctx, &exe, &env, &step).await?.1;
    }
    kube_server.abort();
    pve.handle.abort();
    // An invalid request to the Proxmox API is a demo failure, even if everything else worked.
    let violations = talos_dr::sim::state::Cluster::load(&env.state)
        .map(|c| c.pve.violations)
        .unwrap_or_default();
    // So is a split etcd cluster (two bootstraps, or a node that started on stale data).
    let etcd_violations = talos_dr::sim::state::Cluster::load(&env.state)
        .map(|c| c.etcd_violations)
        .unwrap_or_default();
    if (!violations.is_empty() || !etcd_violations.is_empty()) && exit == Exit::Success {
        exit = Exit::Failed;
    }

    let report = run_id.as_ref().and_then(|id| {
        std::fs::read(env.config_dir.join("runs").join(id).join("report.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    });
    let cd = env.config_dir.display();
    let mut text = String::from("\n== demo summary\n");
    if let Some(r) = &report {
        for s in r["stages"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "  {:<22}{:<11}{}\n",
                s["id"].as_str().unwrap_or("?"),
                s["status"].as_str().unwrap_or("?"),
                s["elapsed_ms"]
                    .as_u64()
                    .map_or("-".into(), talos_dr::stages::report::secs)
            ));
        }
        text.push_str(&format!(
            "  recovery time: {}\n",
            r["total_ms"]
                .as_u64()
                .map_or("-".into(), talos_dr::stages::report::secs)
        ));
        if let Some(c) = r.get("comparison").filter(|c| c.is_object()) {
            text.push_str(&format!("  {}\n", comparison_line(c)));
        }
    }
    text.push_str(&format!(
        "  result: {}\n  files: {}\n\ntry next (the simulator needs its state file):\n  export TALOS_DR_SIM_STATE={} TALOS_DR_TALOSCTL={}\n  talos-dr --config-dir {cd} list\n  talos-dr --config-dir {cd} runs\n  talos-dr --config-dir {cd} runs show {}\n  talos-dr --config-dir {cd} playbooks show restore\n",
        if exit == Exit::Success { "everything worked".to_owned() } else { format!("stopped with exit code {} (see above)", exit.code()) },
        dir.display(),
        env.state.display(),
        env.bin_dir.join("talosctl").display(),
        run_id.as_deref().unwrap_or("<run-id>"),
    ));
    for v in &violations {
        text.push_str(&format!(
            "  INVALID Proxmox API request: {} {} {:?}\n",
            v.method, v.path, v.errors
        ));
    }
    for v in &etcd_violations {
        text.push_str(&format!(
            "  SPLIT etcd cluster: {:?} on {}: {}\n",
            v.kind, v.node, v.detail
        ));
    }
    ctx.printer.text(&text);
    ctx.printer.json(&json!({
        "pve_violations": violations.len(),
        "etcd_violations": etcd_violations.len(),
        "disaster": args.disaster,
        "dir": dir,
        "kubectl": if real_kubectl { "real" } else { "simulated" },
        "faults": args.fault,
        "steps": results,
        "run_id": run_id,
        "report": report,
        "status": status_doc,
        "exit": exit.code(),
    }));
    Ok(exit)
}

/// `post-restore comparison: passed (27 objects of the checked kinds, 0 missing, 0 extra)`.
fn comparison_line(c: &Value) -> String {
    let sum = |field: &str| -> u64 {
        c["kinds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|k| k["churn"] != true)
            .filter_map(|k| k[field].as_u64())
            .sum()
    };
    format!(
        "post-restore comparison: {} ({} objects of the checked kinds in the snapshot, {} missing, {} extra)",
        if c["passed"] == true {
            "passed"
        } else {
            "FAILED"
        },
        sum("snapshot"),
        sum("missing"),
        sum("extra")
    )
}

fn disaster_text(d: demo::Disaster) -> &'static str {
    match d {
        demo::Disaster::VipEndpoint => {
            "etcd's data is lost everywhere, and the talosconfig's endpoint is a VIP that died with it"
        }
        demo::Disaster::QuorumLoss => {
            "two control-plane nodes lost their data; talos-cp-1 still runs without quorum and holds newer data than the last backup"
        }
        demo::Disaster::HostLost => {
            "a Proxmox host died with talos-cp-3's VM; the other two control-plane nodes keep etcd's quorum"
        }
        demo::Disaster::EtcdVolume => {
            "Talos 1.14 with etcd on its own ETCD partition lost etcd's data on every control-plane node"
        }
        demo::Disaster::StalePreparing => {
            "etcd's data is damaged everywhere; talos-cp-2 shows Preparing but still has its old data"
        }
    }
}

async fn run_step(
    ctx: &Ctx,
    exe: &Path,
    env: &demo::DemoEnv,
    step: &Step,
) -> anyhow::Result<(i32, Value)> {
    ctx.printer.text(&format!("\n== {}\n", step.title));
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--config-dir")
        .arg(&env.config_dir)
        .args(&step.args)
        .env(sim::ENV_STATE, &env.state)
        .env(exec::ENV_TALOSCTL, env.bin_dir.join("talosctl"))
        .env_remove("TALOS_DR_PROFILE")
        .env_remove("TALOS_DR_CONFIG_DIR")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(k) = &env.kubectl_shim {
        cmd.env(exec::ENV_KUBECTL, k);
    }
    if ctx.global.quiet {
        cmd.arg("-q");
    }
    if ctx.printer.is_json() {
        // Keep stdout one JSON document: collect each step's own JSON into ours.
        let out = cmd
            .arg("-o")
            .arg("json")
            .stdout(Stdio::piped())
            .output()
            .await?;
        let doc = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        Ok((out.status.code().unwrap_or(1), doc))
    } else {
        let status = cmd.status().await?;
        Ok((status.code().unwrap_or(1), Value::Null))
    }
}

fn exit_from(code: i32) -> Exit {
    match code {
        2 => Exit::Usage,
        3 => Exit::InvalidSnapshot,
        4 => Exit::Precondition,
        5 => Exit::Declined,
        130 => Exit::Interrupted,
        _ => Exit::Failed,
    }
}

fn newest_run(config_dir: &Path) -> Option<String> {
    talos_dr::engine::checkpoint::list_runs(&config_dir.join("runs"))
        .into_iter()
        .next()
        .and_then(|(d, _)| d.file_name().map(|n| n.to_string_lossy().into_owned()))
}
