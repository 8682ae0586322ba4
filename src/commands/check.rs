//! `check [--remote] [--read-data[=N%]]`: re-verify stored snapshots and off-site copies.

use serde_json::json;
use talos_dr::check::{self, CheckError, CheckOptions, CheckReport, ReadData};
use talos_dr::{Exit, UserError, metrics};

use super::Ctx;

pub async fn run(ctx: &Ctx, args: &crate::cli::CheckArgs) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    let read_data = match &args.read_data {
        None => ReadData::Off,
        Some(s) => ReadData::parse(s).map_err(|e| UserError::usage(format!("--read-data {e}")))?,
    };
    let sampled = matches!(read_data, ReadData::Sample(_));
    let seed = args.seed.unwrap_or_else(random_seed);
    if sampled && args.seed.is_none() {
        ctx.reporter.info(&format!(
            "sampling with seed {seed}; repeat this check with --seed {seed}"
        ));
    }
    let identity = args.identity.clone().or_else(|| profile.identity_file());
    let opts = CheckOptions {
        remote: args.remote,
        read_data,
        seed,
    };
    let report = check::run(&profile, &opts, identity.as_deref(), ctx.reporter.as_ref())
        .await
        .map_err(|e| match e {
            CheckError::Config(m) => UserError::usage(m),
            CheckError::Failed(m) => UserError::failed(m),
        })?;
    let path = check::write_report(&profile, &report).map_err(|e| {
        UserError::failed(format!(
            "cannot write {}: {e}",
            profile.config_dir.join(check::CHECK_FILE).display()
        ))
    })?;
    if let Some(mf) = profile.metrics_file() {
        let m = metrics::CheckMetrics {
            profile: profile.name().to_owned(),
            finished_at: report.finished_at,
            remote: report.remote,
            checked: report.checked,
            damaged: report.damaged.len(),
            errors: report.errors.len(),
        };
        if let Err(e) = metrics::write_check(&mf, &m) {
            ctx.reporter
                .warn(&format!("cannot write metrics to {}: {e}", mf.display()));
        }
    }
    ctx.printer.text(&render(&report, sampled));
    let mut doc = serde_json::to_value(&report)?;
    doc["written_to"] = json!(path);
    ctx.printer.json(&doc);
    Ok(if !report.damaged.is_empty() {
        Exit::InvalidSnapshot
    } else if !report.errors.is_empty() {
        Exit::Failed
    } else {
        Exit::Success
    })
}

/// Different per run without a random-number crate: the clock's nanoseconds and the pid.
fn random_seed() -> u64 {
    let t = jiff::Timestamp::now().as_nanosecond() as u64;
    t ^ (u64::from(std::process::id()) << 32) ^ (t >> 29)
}

fn render(r: &CheckReport, sampled: bool) -> String {
    let mut rows = Vec::new();
    for (where_, items) in [("local", &r.local), ("off-site", &r.offsite)] {
        for i in items {
            rows.push(vec![
                if i.ok { "ok" } else { "DAMAGED" }.to_owned(),
                where_.to_owned(),
                i.location.clone(),
                i.detail.clone(),
            ]);
        }
    }
    // Unreadable copies are not damaged: mark them apart.
    for row in rows.iter_mut() {
        if row[0] == "DAMAGED" && r.errors.iter().any(|e| e == &row[3]) {
            row[0] = "ERROR".into();
        }
    }
    let mut s = talos_dr::table::render(&rows);
    s.push_str(&format!(
        "checked {} snapshot(s) ({}{}), {} damaged, {} unreadable\n",
        r.checked,
        r.describe_read_data(),
        if sampled {
            format!(", seed {}", r.seed)
        } else {
            String::new()
        },
        r.damaged.len(),
        r.errors.len()
    ));
    for d in &r.damaged {
        s.push_str(&format!(
            "\ndamaged: {}\n  problem: {}\n  what to do: {}\n",
            d.location, d.problem, d.action
        ));
    }
    s
}
