//! `snapshot`: health check, stream, verify, store atomically (packed if configured), copy
//! off-site, prune locally and remotely, show what remains; then metrics and failure notification.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use talos_dr::offsite::Target;
use talos_dr::pack::{self, Packing};
use talos_dr::profile::Profile;
use talos_dr::snapshot::retention::KeepPolicy;
use talos_dr::snapshot::store::{self, Packed, Sidecar};
use talos_dr::snapshot::take::{self, TakeOptions};
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
    // Configuration problems surface before a snapshot is taken, not after.
    let backup = &profile.file.backup;
    let recipients = pack::parse_recipients(&backup.recipients)
        .map_err(|e| UserError::usage(format!("backup.recipients: {e}")))?;
    let one_off = args.output_file.is_some();
    let local_packing = Packing {
        compress: backup.compress && !one_off,
        recipients: if backup.encrypt && !one_off {
            recipients.clone()
        } else {
            Vec::new()
        },
    };
    let offsite_packing = Packing {
        compress: backup.compress,
        recipients,
    };
    let target = if args.no_offsite || one_off {
        None
    } else {
        Target::from_profile(profile).map_err(|e| {
            UserError::usage(format!("[offsite] in profile {}: {e}", profile.name()))
        })?
    };
    if target.is_some() && offsite_packing.recipients.is_empty() {
        ctx.reporter.warn(
            "off-site copies are not encrypted: set backup.recipients to encrypt them with age",
        );
    }

    // With local packing the plain snapshot only lives under a hidden name (never listed, never
    // counted by retention) until it is packed and uploaded; leftovers of a crashed run go now.
    let hidden_plain = if local_packing.is_plain() {
        None
    } else {
        let dir = profile.backup_dir();
        remove_stale_plain(&dir);
        Some(dir.join(format!(
            ".{}.plain",
            store::file_name(jiff::Timestamp::now())
        )))
    };
    let opts = TakeOptions {
        node: args.node.clone(),
        output: args.output_file.clone().or_else(|| hidden_plain.clone()),
        skip_health: args.skip_health,
        health_timeout: args.health_timeout,
        ..TakeOptions::default()
    };
    let mut taken = take::take(profile, &talos, &opts, ctx.reporter.as_ref()).await?;
    if hidden_plain.is_some() {
        // The stored (packed) file carries the scheduled name of the moment it was taken.
        taken.sidecar.file = store::file_name(taken.sidecar.taken_at);
    }
    let plain = taken.path.clone();
    let s = &taken.sidecar;
    let mut stored = plain.clone();
    outcome.stored_size = Some(s.size);
    if !local_packing.is_plain() {
        stored = store_packed(&plain, s, &local_packing).await?;
        outcome.stored_size = Some(std::fs::metadata(&stored).map_or(s.size, |m| m.len()));
    }
    let mut text = format!("snapshot saved: {}\n", stored.display());
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
    if stored != plain {
        text.push_str(&format!(
            "  stored {} ({})\n",
            pack::describe(&local_packing.layers()),
            human_bytes(outcome.stored_size.unwrap_or(0))
        ));
    }

    let policy = KeepPolicy {
        retention_days: backup.retention_days,
        keep_last: backup.keep_last,
    };
    let uploaded = match &target {
        Some(t) => Some(
            t.upload(&plain, s, &offsite_packing, ctx.reporter.as_ref())
                .await,
        ),
        None => None,
    };
    // The plain file only lived to be packed and uploaded.
    if stored != plain {
        store::remove(&plain).map_err(|e| {
            UserError::failed(format!(
                "cannot remove the unencrypted copy {}: {e}",
                plain.display()
            ))
        })?;
    }
    let uploaded = match uploaded {
        Some(Ok(u)) => {
            text.push_str(&format!(
                "off-site copy: {} ({}, {}, confirmed)\n",
                u.url,
                pack::describe(&u.manifest.layers),
                human_bytes(u.manifest.size)
            ));
            Some(u)
        }
        Some(Err(e)) => {
            ctx.printer.text(&text);
            return Err(UserError::failed(format!(
                "the snapshot is saved at {}, but the off-site copy failed: {e}",
                stored.display()
            ))
            .hint("check the [offsite] settings, the credentials and the network; the next run uploads again")
            .into());
        }
        None => None,
    };

    // Retention runs only after a good snapshot, and only in the backup directory.
    let pruned = if args.no_prune || one_off {
        None
    } else {
        Some(prune::apply(profile, policy, false)?)
    };
    if let Some(p) = &pruned {
        text.push_str(&format!(
            "retention: {} deleted, {} kept (retention_days = {}, keep_last = {})\n",
            p.deleted.len(),
            p.decisions.iter().filter(|d| d.keep).count(),
            backup.retention_days,
            backup.keep_last
        ));
        for d in &p.deleted {
            text.push_str(&format!("  deleted {}\n", d.display()));
        }
        for e in &p.errors {
            text.push_str(&format!("  error: could not delete {e}\n"));
        }
    }
    let remote_pruned = match (&target, &uploaded) {
        (Some(t), Some(_)) if !args.no_prune => {
            let r = t
                .prune(policy, jiff::Timestamp::now(), false)
                .await
                .map_err(|e| UserError::failed(format!("off-site retention failed: {e}")))?;
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
            outcome.offsite_count = Some(r.decisions.iter().filter(|d| d.keep).count());
            Some(r)
        }
        _ => None,
    };
    ctx.printer.text(&text);
    ctx.printer.json(&json!({
        "snapshot": { "path": stored, "metadata": taken.sidecar },
        "pruned": pruned,
        "offsite": uploaded,
        "offsite_pruned": remote_pruned,
    }));
    let errors = pruned.as_ref().map_or(0, |p| p.errors.len())
        + remote_pruned.as_ref().map_or(0, |p| p.errors.len());
    if errors > 0 {
        outcome.problem = Some(format!("retention could not delete {errors} snapshot(s)"));
        return Ok(Exit::Failed);
    }
    Ok(Exit::Success)
}

/// Packs the verified plain snapshot beside itself and writes the packed file's sidecar.
/// Removes hidden plain copies a crashed run left behind (the profile lock is held, so none is
/// in use). They are unencrypted, so they must not linger.
fn remove_stale_plain(dir: &Path) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    for e in read.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".etcd-") && (name.ends_with(".plain") || name.ends_with(".plain.json"))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

async fn store_packed(
    plain: &Path,
    sidecar: &Sidecar,
    packing: &Packing,
) -> anyhow::Result<PathBuf> {
    let name = packing.file_name(&sidecar.file);
    let dst = plain.with_file_name(&name);
    let (src, to, p) = (plain.to_path_buf(), dst.clone(), packing.clone());
    let packed = tokio::task::spawn_blocking(move || pack::pack_file(&src, &to, &p))
        .await?
        .map_err(|e| UserError::failed(format!("cannot write {}: {e}", dst.display())))?;
    let mut sc = sidecar.clone();
    sc.file = name;
    sc.packed = Some(Packed {
        layers: packing.layers(),
        size: packed.size,
        sha256: packed.sha256,
    });
    store::write_sidecar(&dst, &sc).map_err(|e| {
        UserError::failed(format!(
            "snapshot stored at {} but its metadata could not be written: {e}",
            dst.display()
        ))
    })?;
    Ok(dst)
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
            ctx.reporter.warn(&e);
        }
    }
}

fn prune_valid(e: &store::Entry) -> bool {
    talos_dr::snapshot::prune::is_valid(e)
}
