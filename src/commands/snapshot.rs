//! `snapshot`: health check, stream, verify, store atomically (packed if configured), copy
//! off-site, prune locally and remotely, show what remains; then metrics and failure notification.

use std::time::{Duration, Instant};

use serde_json::json;
use talos_dr::backup::{self, BackupOptions, BackupOutcome, Destination, OffsitePolicy, Problem};
use talos_dr::pack;
use talos_dr::profile::Profile;
use talos_dr::snapshot::store;
use talos_dr::{Exit, UserError, metrics};

use super::{Ctx, human_bytes, prune};

/// What monitoring needs to know about a run, filled in as it goes.
#[derive(Default)]
struct Outcome {
    stored_size: Option<u64>,
    offsite_count: Option<usize>,
    /// Why the run exits non-zero without an error (e.g. retention could not delete a file).
    problem: Option<String>,
}

pub async fn run(ctx: &Ctx, args: crate::cli::SnapshotArgs) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let profile = ctx.profile()?;
    let mut outcome = Outcome::default();
    let result = snapshot(ctx, &profile, &args, &mut outcome).await;
    monitor(ctx, &profile, &result, started.elapsed(), &outcome).await;
    result
}

async fn snapshot(
    ctx: &Ctx,
    profile: &Profile,
    args: &crate::cli::SnapshotArgs,
    outcome: &mut Outcome,
) -> anyhow::Result<Exit> {
    let talos = ctx.talosctl(profile)?;
    let _lock = prune::lock(profile, "snapshot")?;
    if args.skip_health {
        ctx.reporter
            .warn("skipping the cluster health check (--skip-health)");
    }
    // A one-off file is plain, is not copied off-site and leaves retention alone.
    let one_off = args.output_file.is_some();
    let opts = BackupOptions {
        destination: match &args.output_file {
            Some(p) => Destination::File(p.clone()),
            None => Destination::Scheduled,
        },
        node: args.node.clone(),
        skip_health: args.skip_health,
        health_timeout: args.health_timeout,
        offsite: if args.no_offsite || one_off {
            OffsitePolicy::Skip
        } else {
            OffsitePolicy::Copy
        },
        prune: !args.no_prune && !one_off,
    };
    let done = backup::run(profile, &talos, &opts, ctx.reporter.as_ref()).await?;
    outcome.stored_size = Some(done.stored_size);
    outcome.offsite_count = done
        .remote_pruned
        .as_ref()
        .map(|r| r.decisions.iter().filter(|d| d.keep).count());
    ctx.printer.text(&render(&done, profile));
    let problems = done.problems();
    // No off-site copy is an error (what was stored is printed above); nothing was pruned.
    if let Some(error) = problems.iter().find_map(|p| match p {
        Problem::Offsite { error } => Some(error),
        Problem::Retention { .. } => None,
    }) {
        return Err(UserError::failed(format!(
            "the snapshot is saved at {}, but the off-site copy failed: {error}",
            done.path.display()
        ))
        .hint("check the [offsite] settings, the credentials and the network; the next run uploads again")
        .into());
    }
    ctx.printer.json(&json!({
        "snapshot": {
            "path": done.path,
            "metadata": done.sidecar,
            "packed_during_stream": done.packed_during_stream,
        },
        "pruned": done.pruned,
        "offsite": done.uploaded(),
        "offsite_pruned": done.remote_pruned,
    }));
    if let Some(p) = problems.first() {
        outcome.problem = Some(p.to_string());
        return Ok(Exit::Failed);
    }
    Ok(Exit::Success)
}

/// The text report: what was stored, copied and pruned.
fn render(done: &BackupOutcome, profile: &Profile) -> String {
    let s = &done.sidecar;
    let mut text = format!("snapshot saved: {}\n", done.path.display());
    if let Some(st) = &s.status {
        text.push_str(&format!(
            "  from {} · {} · revision {} · {} keys · hash {:08x}\n  sha256 {}\n",
            s.node.as_deref().unwrap_or("?"),
            human_bytes(s.size),
            st.revision,
            st.total_key,
            st.hash,
            s.sha256
        ));
    }
    if !done.layers.is_empty() {
        text.push_str(&format!(
            "  stored {} ({}{})\n",
            pack::describe(&done.layers),
            human_bytes(done.stored_size),
            if done.packed_during_stream {
                ", packed while the snapshot streamed"
            } else {
                ""
            }
        ));
    }
    if let Some(u) = done.uploaded() {
        text.push_str(&format!(
            "off-site copy: {} ({}, {}, confirmed{})\n",
            u.url,
            pack::describe(&u.manifest.layers),
            human_bytes(u.manifest.size),
            if u.during_stream {
                ", sent while the snapshot streamed"
            } else {
                ""
            }
        ));
    }
    if let Some(p) = &done.pruned {
        text.push_str(&format!(
            "retention: {} deleted, {} kept ({})\n",
            p.deleted.len(),
            p.decisions.iter().filter(|d| d.keep).count(),
            talos_dr::snapshot::retention::KeepPolicy::from_backup(&profile.file.backup).describe()
        ));
        for d in &p.deleted {
            text.push_str(&format!("  deleted {}\n", d.display()));
        }
        for e in &p.errors {
            text.push_str(&format!("  error: could not delete {e}\n"));
        }
    }
    if let Some(r) = &done.remote_pruned {
        text.push_str(&format!(
            "off-site retention: {} deleted, {} kept\n",
            r.deleted.len(),
            r.decisions.iter().filter(|d| d.keep).count()
        ));
        for d in &r.deleted {
            text.push_str(&format!("  deleted {d}\n"));
        }
        for e in &r.errors {
            text.push_str(&format!("  error: could not delete {e}\n"));
        }
    }
    text
}

/// Metrics file and failure notification. Their own failures are warnings: they must never
/// hide the run's real result.
async fn monitor(
    ctx: &Ctx,
    profile: &Profile,
    result: &anyhow::Result<Exit>,
    elapsed: Duration,
    outcome: &Outcome,
) {
    let (exit, error, hints) = match result {
        Ok(exit) => (*exit, outcome.problem.clone(), Vec::new()),
        Err(e) => {
            let (exit, hints) = talos_dr::error::classify(e);
            (exit, Some(format!("{e:#}")), hints)
        }
    };
    // For `status`: how the last run ended, scheduled or not, with or without a metrics file.
    let last = talos_dr::status::LastRun {
        schema: 1,
        finished_at: jiff::Timestamp::now(),
        exit_code: exit.code(),
        error: error.clone(),
    };
    if let Err(e) = talos_dr::status::record_last_run(&profile.config_dir, &last) {
        ctx.reporter.warn(&format!(
            "cannot record the run in {}: {e}",
            profile.config_dir.display()
        ));
    }
    if let Some(path) = profile.metrics_file() {
        let local_count = store::list(&profile.backup_dir())
            .map(|v| v.iter().filter(|e| prune_valid(e)).count())
            .unwrap_or(0);
        let m = metrics::RunMetrics {
            profile: profile.name().to_owned(),
            finished_at: jiff::Timestamp::now(),
            exit_code: exit.code(),
            duration: elapsed,
            size: if exit == Exit::Success {
                outcome.stored_size
            } else {
                None
            },
            local_count,
            offsite_count: outcome.offsite_count,
        };
        if let Err(e) = metrics::write(&path, &m) {
            ctx.reporter.warn(&format!(
                "cannot write the metrics file {}: {e}",
                path.display()
            ));
        }
    }
    if exit != Exit::Success
        && let Some(cmd) = &profile.file.backup.notify_command
    {
        let f = metrics::Failure {
            profile: profile.name().to_owned(),
            command: "snapshot".into(),
            exit_code: exit.code(),
            error: error.unwrap_or_else(|| "the snapshot run failed".into()),
            hints,
        };
        if let Err(e) = metrics::notify(cmd, &f, Duration::from_secs(60)).await {
            ctx.reporter.warn(&e.to_string());
        }
    }
}

fn prune_valid(e: &store::Entry) -> bool {
    talos_dr::snapshot::prune::is_valid(e)
}
