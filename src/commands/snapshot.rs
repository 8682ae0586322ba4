//! `snapshot`: health check, stream, verify, store atomically, prune, show what remains; then
//! metrics and failure notification.

use std::time::{Duration, Instant};

use serde_json::json;
use talos_dr::profile::Profile;
use talos_dr::snapshot::retention::KeepPolicy;
use talos_dr::snapshot::store;
use talos_dr::snapshot::take::{self, TakeOptions};
use talos_dr::{Exit, metrics};

use super::{Ctx, human_bytes, prune};

/// What monitoring needs to know about a run, filled in as it goes.
#[derive(Default)]
struct Outcome {
    stored_size: Option<u64>,
    /// Why the run exits non-zero without an error (e.g. retention could not delete a file).
    problem: Option<String>,
}

pub async fn run(ctx: &Ctx, args: crate::cli::SnapshotArgs) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let profile = ctx.profile()?;
    let mut outcome = Outcome::default();
    let result = snapshot(ctx, &profile, args, &mut outcome).await;
    monitor(ctx, &profile, &result, started.elapsed(), &outcome).await;
    result
}

async fn snapshot(
    ctx: &Ctx,
    profile: &Profile,
    args: crate::cli::SnapshotArgs,
    outcome: &mut Outcome,
) -> anyhow::Result<Exit> {
    let profile = profile.clone();
    let talos = ctx.talosctl(&profile)?;
    let _lock = prune::lock(&profile, "snapshot")?;
    if args.skip_health {
        ctx.reporter
            .warn("skipping the cluster health check (--skip-health)");
    }
    let opts = TakeOptions {
        node: args.node.clone(),
        output: args.output_file.clone(),
        skip_health: args.skip_health,
        health_timeout: args.health_timeout,
        ..TakeOptions::default()
    };
    let taken = take::take(&profile, &talos, &opts, ctx.reporter.as_ref()).await?;
    let s = &taken.sidecar;
    outcome.stored_size = Some(s.size);
    let mut text = format!("snapshot saved: {}\n", taken.path.display());
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

    // Retention runs only after a good snapshot, and only in the backup directory.
    let pruned = if args.no_prune || args.output_file.is_some() {
        None
    } else {
        let policy = KeepPolicy {
            retention_days: profile.file.backup.retention_days,
            keep_last: profile.file.backup.keep_last,
        };
        Some(prune::apply(&profile, policy, false)?)
    };
    if let Some(p) = &pruned {
        text.push_str(&format!(
            "retention: {} deleted, {} kept (retention_days = {}, keep_last = {})\n",
            p.deleted.len(),
            p.decisions.iter().filter(|d| d.keep).count(),
            profile.file.backup.retention_days,
            profile.file.backup.keep_last
        ));
        for d in &p.deleted {
            text.push_str(&format!("  deleted {}\n", d.display()));
        }
        for e in &p.errors {
            text.push_str(&format!("  error: could not delete {e}\n"));
        }
    }
    ctx.printer.text(&text);
    ctx.printer.json(&json!({
        "snapshot": { "path": taken.path, "metadata": taken.sidecar },
        "pruned": pruned,
    }));
    Ok(match pruned {
        Some(p) if !p.errors.is_empty() => {
            outcome.problem = Some(format!(
                "retention could not delete {} snapshot(s)",
                p.errors.len()
            ));
            Exit::Failed
        }
        _ => Exit::Success,
    })
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
            offsite_count: None,
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
            ctx.reporter.warn(&e);
        }
    }
}

fn prune_valid(e: &store::Entry) -> bool {
    talos_dr::snapshot::prune::is_valid(e)
}
