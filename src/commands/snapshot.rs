//! `snapshot`: health check, stream, verify, store atomically, prune, show what remains.

use serde_json::json;
use talos_dr::Exit;
use talos_dr::snapshot::retention::KeepPolicy;
use talos_dr::snapshot::take::{self, TakeOptions};

use super::{Ctx, human_bytes, prune};

pub async fn run(ctx: &Ctx, args: crate::cli::SnapshotArgs) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
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
        Some(p) if !p.errors.is_empty() => Exit::Failed,
        _ => Exit::Success,
    })
}
