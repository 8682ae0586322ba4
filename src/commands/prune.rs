//! `prune`: apply retention, printing keep/delete with the reason for each snapshot.

use serde_json::json;
use talos_dr::lock::ProfileLock;
use talos_dr::profile::Profile;
use talos_dr::snapshot::prune::{self, PruneOutcome};
use talos_dr::snapshot::retention::KeepPolicy;
use talos_dr::{Exit, UserError};

use super::Ctx;

pub fn run(ctx: &Ctx, args: &crate::cli::PruneArgs) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    let backup = &profile.file.backup;
    let policy = KeepPolicy {
        retention_days: args.retention_days.unwrap_or(backup.retention_days),
        keep_last: args.keep_last.unwrap_or(backup.keep_last),
        ..KeepPolicy::from_backup(backup)
    };
    // A dry run changes nothing, so it may run beside a snapshot in progress.
    let _lock = if args.dry_run {
        None
    } else {
        Some(lock(&profile, "prune")?)
    };
    let outcome = apply(&profile, policy, args.dry_run)?;
    ctx.printer.text(&render(&outcome, args.dry_run));
    ctx.printer.json(&json!({
        "dry_run": args.dry_run,
        "policy": policy,
        "decisions": outcome.decisions,
        "deleted": outcome.deleted,
        "errors": outcome.errors,
    }));
    Ok(if outcome.errors.is_empty() {
        Exit::Success
    } else {
        Exit::Failed
    })
}

pub fn lock(profile: &Profile, what: &str) -> anyhow::Result<ProfileLock> {
    ProfileLock::acquire(&profile.config_dir, what).map_err(|e| {
        UserError::precondition(e.to_string())
            .hint("wait for the other run to finish; the lock is released when it exits")
            .into()
    })
}

pub fn apply(profile: &Profile, policy: KeepPolicy, dry_run: bool) -> anyhow::Result<PruneOutcome> {
    let dir = profile.backup_dir();
    prune::prune(&dir, policy, jiff::Timestamp::now(), dry_run).map_err(|e| {
        UserError::failed(format!("cannot apply retention in {}: {e}", dir.display())).into()
    })
}

pub fn render(outcome: &PruneOutcome, dry_run: bool) -> String {
    let mut rows = Vec::new();
    for d in &outcome.decisions {
        let action = match (d.keep, dry_run) {
            (true, _) => "keep",
            (false, true) => "would delete",
            (false, false) => "delete",
        };
        rows.push(vec![
            action.to_owned(),
            d.name.clone(),
            d.reasons.join("; "),
        ]);
    }
    let mut s = talos_dr::table::render(&rows);
    let deleting = outcome.decisions.iter().filter(|d| !d.keep).count();
    let kept = outcome.decisions.len() - deleting;
    if dry_run {
        s.push_str(&format!(
            "dry run: {deleting} would be deleted, {kept} kept; nothing was changed\n"
        ));
    } else {
        s.push_str(&format!("{} deleted, {kept} kept\n", outcome.deleted.len()));
    }
    for e in &outcome.errors {
        s.push_str(&format!("error: could not delete {e}\n"));
    }
    s
}
