//! `schedule --every 1d [--cron] [--install]`: run `snapshot` from systemd or cron.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use talos_dr::fleet::Selection;
use talos_dr::schedule::{self, Every, FleetJob, Spec};
use talos_dr::{Exit, UserError, exec};

use super::Ctx;
use crate::cli::ScheduleArgs;

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(ctx: &Ctx, args: &ScheduleArgs) -> anyhow::Result<Exit> {
    let every = Every::from_duration(args.every).map_err(|e| UserError::usage(e.to_string()))?;
    let binary = std::env::current_exe()
        .map_err(|e| UserError::failed(format!("cannot find the talos-dr binary: {e}")))?;
    // A fleet gets one job that runs `snapshot` for all of its profiles.
    let spec = match super::fleet::selection(ctx, &args.fleet)? {
        Some(sel) => {
            // At least one profile must exist (for --all-profiles: now).
            super::fleet::names(&sel)?;
            let home =
                talos_dr::profile::profiles_home().map_err(|e| UserError::usage(e.to_string()))?;
            let job = FleetJob {
                profiles: match sel {
                    Selection::All => None,
                    Selection::Named(names) => Some(names),
                },
                jobs: (args.fleet.jobs != 2).then_some(usize::from(args.fleet.jobs)),
            };
            Spec {
                every,
                binary,
                profile_name: job.label(),
                config_dir: std::path::absolute(home)?,
                fleet: Some(job),
            }
        }
        None => {
            let profile = ctx.profile()?;
            Spec {
                every,
                binary,
                profile_name: profile.name().to_owned(),
                config_dir: std::path::absolute(&profile.config_dir)?,
                fleet: None,
            }
        }
    };
    let unit = spec.unit_name();
    if args.cron {
        let line = schedule::crontab_line(&spec);
        if args.install {
            install_cron(&unit, &line).await?;
            record(ctx, &spec, "cron", Vec::new(), args.every);
            ctx.printer
                .text(&format!("added to the crontab ({every}):\n{line}"));
        } else {
            ctx.printer.text(&line);
        }
        ctx.printer
            .json(&json!({ "crontab": line, "installed": args.install }));
        return Ok(Exit::Success);
    }
    let service = schedule::systemd_service(&spec);
    let timer = schedule::systemd_timer(&spec);
    let root = is_root();
    if args.install {
        let dir = match &args.unit_dir {
            Some(d) => d.clone(),
            None => schedule::default_unit_dir(
                root,
                std::env::var_os("HOME").map(PathBuf::from).as_deref(),
            )
            .ok_or_else(|| {
                UserError::usage(
                    "cannot find the systemd unit directory: set HOME or pass --unit-dir",
                )
            })?,
        };
        let files = install_systemd(&dir, &unit, &service, &timer, root).await?;
        record(ctx, &spec, "systemd", files.clone(), args.every);
        ctx.printer.text(&format!(
            "installed and enabled {unit}.timer ({every}):\n  {}\n  {}\ncheck it with: systemctl {}list-timers {unit}.timer\n",
            files[0].display(),
            files[1].display(),
            if root { "" } else { "--user " }
        ));
        ctx.printer.json(&json!({
            "unit": unit, "installed": true, "files": files,
            "service": service, "timer": timer,
        }));
    } else {
        let dir = schedule::default_unit_dir(root, Some(Path::new("~")))
            .unwrap_or_else(|| PathBuf::from("/etc/systemd/system"));
        ctx.printer.text(&format!(
            "# {dir}/{unit}.service\n{service}\n# {dir}/{unit}.timer\n{timer}\n# install with: talos-dr {}schedule --every {} --install{}\n",
            match spec.fleet.as_ref().map(|f| &f.profiles) {
                Some(Some(names)) => format!("-p {} ", names.join(",")),
                _ => String::new(),
            },
            humantime(args.every),
            match spec.fleet.as_ref().map(|f| &f.profiles) {
                Some(None) => " --all-profiles",
                _ => "",
            },
            dir = dir.display(),
        ));
        ctx.printer.json(&json!({
            "unit": unit, "installed": false, "service": service, "timer": timer,
        }));
    }
    Ok(Exit::Success)
}

/// Leaves `schedule.json` where `status` looks for it (the profile, or the fleet's home). Its
/// failure is a warning: the job itself is installed.
fn record(ctx: &Ctx, spec: &Spec, kind: &str, files: Vec<PathBuf>, every: Duration) {
    let rec = schedule::Installed {
        schema: 1,
        kind: kind.to_owned(),
        unit: spec.unit_name(),
        files,
        every_seconds: every.as_secs(),
        installed_at: jiff::Timestamp::now(),
        fleet: spec.fleet.is_some(),
        profiles: spec.fleet.as_ref().and_then(|f| f.profiles.clone()),
    };
    if let Err(e) = schedule::write_record(&spec.config_dir, &rec) {
        ctx.reporter.warn(&format!(
            "cannot record the schedule in {}: {e} (`status` will not find it)",
            spec.config_dir.display()
        ));
    }
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86400) {
        format!("{}d", s / 86400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{}m", s / 60)
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

async fn install_systemd(
    dir: &Path,
    unit: &str,
    service: &str,
    timer: &str,
    root: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| UserError::failed(format!("cannot create {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for (ext, text) in [("service", service), ("timer", timer)] {
        let p = dir.join(format!("{unit}.{ext}"));
        talos_dr::fsutil::write_atomic(&p, text.as_bytes(), 0o644)
            .map_err(|e| UserError::failed(format!("cannot write {}: {e}", p.display())))?;
        files.push(p);
    }
    let systemctl = exec::resolve_tool("systemctl", "TALOS_DR_SYSTEMCTL")
        .map_err(|e| UserError::usage(e.to_string()))?;
    let user: Vec<String> = if root { vec![] } else { vec!["--user".into()] };
    for words in [
        vec!["daemon-reload".to_owned()],
        vec!["enable".into(), "--now".into(), format!("{unit}.timer")],
    ] {
        let argv: Vec<String> = user.iter().cloned().chain(words).collect();
        let out = exec::run(&systemctl, &argv, &[], TOOL_TIMEOUT).await?;
        if !out.success() {
            return Err(UserError::failed(format!(
                "systemctl {} failed: {}",
                argv.join(" "),
                out.stderr.trim()
            ))
            .hint(format!("the unit files are in {}", dir.display()))
            .into());
        }
    }
    Ok(files)
}

/// Adds the line to the user's crontab, replacing an earlier line for the same profile.
async fn install_cron(unit: &str, line: &str) -> anyhow::Result<()> {
    let crontab = exec::resolve_tool("crontab", "TALOS_DR_CRONTAB")
        .map_err(|e| UserError::usage(e.to_string()))?;
    let current = exec::run(&crontab, &["-l".into()], &[], TOOL_TIMEOUT).await?;
    // `crontab -l` exits 1 with "no crontab for USER" when there is none yet.
    let existing = if current.success() {
        current.stdout
    } else {
        String::new()
    };
    let marker = format!("# {unit}");
    let mut text: String = existing
        .lines()
        .filter(|l| !l.trim_end().ends_with(&marker))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(line);
    let tmp = tempfile::NamedTempFile::new()?;
    std::fs::write(tmp.path(), text)?;
    let out = exec::run(
        &crontab,
        &[tmp.path().display().to_string()],
        &[],
        TOOL_TIMEOUT,
    )
    .await?;
    if !out.success() {
        return Err(UserError::failed(format!(
            "crontab refused the new table: {}",
            out.stderr.trim()
        ))
        .into());
    }
    Ok(())
}
