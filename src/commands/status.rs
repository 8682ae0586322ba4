//! `status`: the recoverability doctor. One row of checks per profile (this profile, or a fleet
//! with `--all-profiles` / `-p a,b,c`), the reasons for what is not green, metrics, and exit 1
//! when anything is red.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use talos_dr::profile::{self as prof, Profile};
use talos_dr::status::{self, CHECKS, Check, Level, ProfileStatus};
use talos_dr::{Exit, fleet};

use super::Ctx;
use super::fleet as fleet_cmd;
use crate::cli::StatusArgs;

pub async fn run(ctx: &Ctx, args: &StatusArgs) -> anyhow::Result<Exit> {
    let selection = fleet_cmd::selection(ctx, &args.fleet)?;
    let many = selection.is_some();
    let targets: Vec<Result<Profile, (String, String)>> = match &selection {
        Some(sel) => fleet_cmd::names(sel)?
            .into_iter()
            .map(|name| {
                prof::locate(Some(&name), None)
                    .and_then(|loc| Profile::load(&loc))
                    .map_err(|e| (name, e.to_string()))
            })
            .collect(),
        None => vec![Ok(ctx.profile()?)],
    };
    let home = prof::profiles_home().ok();
    let unit_dirs = unit_dirs();
    let statuses: Vec<ProfileStatus> = fleet::run_bounded(
        targets,
        usize::from(args.fleet.jobs),
        |target| {
            let opts = match &target {
                Ok(p) => Some(status::Options {
                    now: jiff::Timestamp::now(),
                    talos: ctx
                        .talosctl(p)
                        .map(|mut t| {
                            // Read-only calls that should answer at once; each node directly.
                            t.timeout = Duration::from_secs(15);
                            t.direct()
                        })
                        .map_err(|e| e.to_string()),
                    home: home.clone(),
                    unit_dirs: unit_dirs.clone(),
                    offsite_timeout: Duration::from_secs(60),
                }),
                Err(_) => None,
            };
            let reporter = ctx.reporter.clone();
            async move {
                match (target, opts) {
                    (Ok(p), Some(opts)) => {
                        let s = status::gather(&p, &opts).await;
                        if let Some(path) = p.metrics_file()
                            && let Err(e) = talos_dr::metrics::write_status(&path, &s.metrics())
                        {
                            reporter.warn(&format!(
                                "[{}] cannot write the metrics file {}: {e}",
                                p.name(),
                                path.display()
                            ));
                        }
                        s
                    }
                    (Err((name, e)), _) => unloadable(&name, e),
                    (Ok(p), None) => unloadable(p.name(), "not checked".into()),
                }
            }
        },
        |t| {
            let name = match t {
                Ok(p) => p.name().to_owned(),
                Err((n, _)) => n.clone(),
            };
            unloadable(&name, "the checks stopped on an internal error".into())
        },
    )
    .await;
    ctx.printer.text(&render(&statuses, many));
    let worst = statuses
        .iter()
        .map(|s| s.level)
        .max()
        .unwrap_or(Level::Green);
    ctx.printer.json(&json!({
        "level": worst,
        "profiles": statuses,
    }));
    Ok(if worst == Level::Red {
        Exit::Failed
    } else {
        Exit::Success
    })
}

/// A profile that cannot be loaded is one red row.
fn unloadable(name: &str, reason: String) -> ProfileStatus {
    ProfileStatus {
        profile: name.to_owned(),
        config_dir: PathBuf::new(),
        level: Level::Red,
        checks: vec![Check {
            check: "profile",
            level: Level::Red,
            reason,
        }],
        rpo_seconds: 0,
        recovery_point_age_seconds: None,
        last_drill: None,
    }
}

/// Where `schedule --install` puts timers by default, for timers installed without a record.
fn unit_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/etc/systemd/system")];
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        dirs.push(PathBuf::from(h).join(".config/systemd/user"));
    }
    dirs
}

const HEADERS: [&str; 9] = [
    "RPO", "OFFSITE", "KEY", "SIZE", "SCHEDULE", "CONFIGS", "CHECK", "DRILL", "TALOS",
];

/// One table row per profile, then the reasons: every check for one profile, the ones that are
/// not green for a fleet.
fn render(statuses: &[ProfileStatus], many: bool) -> String {
    let mut rows = vec![
        ["PROFILE", "STATUS"]
            .iter()
            .chain(HEADERS.iter())
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>(),
    ];
    for s in statuses {
        let mut row = vec![s.profile.clone(), s.level.as_str().to_owned()];
        for name in CHECKS {
            row.push(
                s.get(name)
                    .map_or("-".into(), |c| c.level.as_str().to_owned()),
            );
        }
        rows.push(row);
    }
    let mut text = talos_dr::table::render(&rows);
    for s in statuses {
        let shown: Vec<&Check> = s
            .checks
            .iter()
            .filter(|c| !many || c.level != Level::Green)
            .collect();
        if shown.is_empty() {
            continue;
        }
        text.push_str(&format!("\n{}:\n", s.profile));
        for c in shown {
            text.push_str(&format!(
                "  {} {:<16}{}\n",
                paint(c.level),
                c.check,
                c.reason
            ));
        }
    }
    text
}

/// The level word, padded, then coloured (when colours are on).
fn paint(level: Level) -> String {
    let word = format!("{:<7}", level.as_str());
    let style = console::Style::new();
    match level {
        Level::Green => style.green(),
        Level::Yellow => style.yellow(),
        Level::Red => style.red().bold(),
    }
    .apply_to(word)
    .to_string()
}
