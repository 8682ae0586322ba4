//! `status`, the recoverability doctor: could this profile's cluster be recovered right now?
//!
//! One [`ProfileStatus`] per profile: a list of checks, each green, yellow or red with the reason.
//! Red means a recovery would fail or lose more than the profile allows; yellow means something
//! to look at that does not stop a recovery today. Checks that do not apply (no off-site target,
//! unencrypted copies) are left out rather than shown green. Everything is read-only: local files,
//! a listing and one ranged read of the off-site target, and read-only `talosctl` calls.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::engine::checkpoint::{self, RunStatus};
use crate::offsite::Target;
use crate::pack::{self, Identities, Layer, PackError};
use crate::profile::{Profile, Role};
use crate::schedule::{self, Installed};
use crate::snapshot::prune::is_valid;
use crate::snapshot::retention::human_age;
use crate::snapshot::store::{self, Entry};
use crate::talos::Talosctl;

/// etcd's default backend quota (`--quota-backend-bytes`), which Talos keeps.
pub const DEFAULT_QUOTA: u64 = 2 << 30;
/// Without `[backup] rpo` or a known schedule.
pub const DEFAULT_RPO: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_DRILL_EVERY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Snapshots looked at for the size trend.
pub const GROWTH_WINDOW: usize = 5;
/// Share of the quota from which the size check is yellow, and red.
const SIZE_YELLOW: f64 = 0.5;
const SIZE_RED: f64 = 0.8;
/// Growth that reaches [`SIZE_RED`] within this many days is yellow.
const GROWTH_HORIZON_DAYS: f64 = 30.0;
/// What `snapshot` writes after every run in the profile directory, for the schedule check.
pub const LAST_RUN_FILE: &str = "last-snapshot.json";
/// What `check` writes (deep verification of what is stored).
pub const CHECK_FILE: &str = "check.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Green,
    Yellow,
    Red,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Green => "green",
            Level::Yellow => "yellow",
            Level::Red => "red",
        }
    }
    /// The value of `talos_dr_status{check=…}`.
    pub fn metric(self) -> u8 {
        match self {
            Level::Green => 0,
            Level::Yellow => 1,
            Level::Red => 2,
        }
    }
}

/// The checks, in the order they are shown.
pub const CHECKS: [&str; 9] = [
    "recovery-point",
    "offsite",
    "offsite-key",
    "size",
    "schedule",
    "machine-configs",
    "deep-check",
    "drill",
    "talos-version",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub level: Level,
    pub reason: String,
}

fn check(name: &'static str, level: Level, reason: impl Into<String>) -> Check {
    Check {
        check: name,
        level,
        reason: reason.into(),
    }
}

/// Everything `status` found for one profile.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileStatus {
    pub profile: String,
    pub config_dir: PathBuf,
    /// The worst level of the checks.
    pub level: Level,
    pub checks: Vec<Check>,
    pub rpo_seconds: u64,
    /// Age of the newest valid local snapshot.
    pub recovery_point_age_seconds: Option<u64>,
    pub last_drill: Option<Timestamp>,
}

impl ProfileStatus {
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.check == name)
    }

    pub fn metrics(&self) -> crate::metrics::StatusMetrics {
        crate::metrics::StatusMetrics {
            profile: self.profile.clone(),
            recovery_point_age: self.recovery_point_age_seconds.map(Duration::from_secs),
            last_drill: self.last_drill,
            checks: self
                .checks
                .iter()
                .map(|c| (c.check.to_owned(), c.level.metric()))
                .collect(),
        }
    }
}

/// What the checks need besides the profile.
pub struct Options {
    pub now: Timestamp,
    /// talosctl for the profile, or why there is none (not installed, no talosconfig).
    pub talos: Result<Talosctl, String>,
    /// The profiles' home, where a fleet job's `schedule.json` lives.
    pub home: Option<PathBuf>,
    /// Where to look for timer units that were installed without a record.
    pub unit_dirs: Vec<PathBuf>,
    /// How long the off-site checks may take together.
    pub offsite_timeout: Duration,
}

/// Runs every check for one profile.
pub async fn gather(profile: &Profile, opts: &Options) -> ProfileStatus {
    let now = opts.now;
    let entries = store::list(&profile.backup_dir()).unwrap_or_default();
    let valid: Vec<&Entry> = entries.iter().filter(|e| is_valid(e)).collect();
    let installed = find_installed(profile, opts.home.as_deref());
    let (rpo, rpo_source) = rpo(profile, installed.as_ref());
    let mut checks = Vec::new();

    let (rp, rp_age) = recovery_point(&valid, rpo, &rpo_source, now);
    checks.push(rp);
    checks.extend(offsite(profile, rpo, now, opts.offsite_timeout).await);

    let talos = opts.talos.as_ref().ok();
    let mut db_size = None;
    let mut server = Err("no control-plane node in the profile".to_owned());
    if let Some(t) = talos {
        for node in profile.control_plane() {
            match t.server_version(&node.address).await {
                Ok(v) => {
                    server = Ok(v);
                    db_size = t.etcd_db_size(&node.address).await.ok();
                    break;
                }
                Err(e) => server = Err(format!("{}: {}", node.address, e.message())),
            }
        }
    }
    let (quota, quota_source) = match profile.file.backup.etcd_quota {
        Some(q) => (q.0, "backup.etcd_quota"),
        None => (DEFAULT_QUOTA, "etcd's default quota"),
    };
    checks.extend(size(&valid, db_size, quota, quota_source));
    checks.push(schedule_check(profile, installed.as_ref(), opts, now).await);
    checks.extend(machine_configs(profile, valid.first().copied()));
    checks.push(deep_check(&profile.config_dir, now));
    let runs: Vec<checkpoint::RunState> = checkpoint::list_runs(&profile.runs_dir())
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .collect();
    let drill_every = profile
        .file
        .backup
        .drill_every
        .as_ref()
        .map_or(DEFAULT_DRILL_EVERY, |d| d.get());
    let (dr, last_drill) = drill(&runs, drill_every, now);
    checks.push(dr);
    let client = match &opts.talos {
        Ok(t) => t.client_version().await.map_err(|e| e.message()),
        Err(e) => Err(e.clone()),
    };
    checks.push(talos_version(client, server));

    ProfileStatus {
        profile: profile.name().to_owned(),
        config_dir: profile.config_dir.clone(),
        level: checks.iter().map(|c| c.level).max().unwrap_or(Level::Green),
        checks,
        rpo_seconds: rpo.as_secs(),
        recovery_point_age_seconds: rp_age.map(|a| a.as_secs()),
        last_drill,
    }
}

/// The schedule record that covers the profile: its own, else a fleet job's in the home.
fn find_installed(profile: &Profile, home: Option<&Path>) -> Option<Installed> {
    schedule::read_record(&profile.config_dir).or_else(|| {
        let fleet = schedule::read_record(home?)?;
        // A fleet job runs the profiles in its home, by directory name (`-p a,b` names them).
        let dir_name = profile.config_dir.file_name()?.to_str()?;
        let in_home = profile.config_dir.parent() == home;
        (fleet.fleet && in_home && fleet.covers(dir_name)).then_some(fleet)
    })
}

/// `[backup] rpo`, else twice the installed schedule's interval, else 24h.
fn rpo(profile: &Profile, installed: Option<&Installed>) -> (Duration, String) {
    if let Some(r) = &profile.file.backup.rpo {
        return (r.get(), format!("backup.rpo = {r}"));
    }
    if let Some(i) = installed.filter(|i| i.every_seconds > 0) {
        let d = Duration::from_secs(2 * i.every_seconds);
        return (d, format!("rpo {} (twice the schedule)", age_text(d)));
    }
    (DEFAULT_RPO, "rpo 24h (default)".into())
}

/// `90d`, `12h`, `30m` for whole units (settings read back as written), else `1d 2h`.
fn age_text(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => "0s".into(),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s < 3600 => format!("{}m", s / 60),
        s => human_age(SignedDuration::from_secs(
            i64::try_from(s).unwrap_or(i64::MAX),
        )),
    }
}

fn ago(now: Timestamp, t: Timestamp) -> String {
    format!("{} ago", human_age(now.duration_since(t)))
}

/// Newest valid local snapshot against the recovery point objective.
pub fn recovery_point(
    valid: &[&Entry],
    rpo: Duration,
    rpo_source: &str,
    now: Timestamp,
) -> (Check, Option<Duration>) {
    const NAME: &str = "recovery-point";
    let Some(newest) = valid.first() else {
        return (
            check(
                NAME,
                Level::Red,
                "no valid local snapshot: take one with `talos-dr snapshot`",
            ),
            None,
        );
    };
    let age = Duration::try_from(now.duration_since(newest.taken_at)).unwrap_or_default();
    let level = if age <= rpo { Level::Green } else { Level::Red };
    let reason = format!(
        "newest valid snapshot {} old ({}; {rpo_source})",
        age_text(age),
        newest.name
    );
    (check(NAME, level, reason), Some(age))
}

/// Off-site copies (count and newest age) and whether the identity opens the newest one.
async fn offsite(
    profile: &Profile,
    rpo: Duration,
    now: Timestamp,
    timeout: Duration,
) -> Vec<Check> {
    let Some(cfg) = &profile.file.offsite else {
        return vec![check(
            "offsite",
            Level::Yellow,
            "no [offsite] target: every copy is on this machine",
        )];
    };
    let url = cfg.url.to_string();
    // Opening a file:// target creates its directory; status must not (an unmounted NFS share).
    if let crate::config::TargetUrl::File { root } = &cfg.url
        && !root.is_dir()
    {
        return vec![check(
            "offsite",
            Level::Red,
            format!("{url}: {} does not exist (not mounted?)", root.display()),
        )];
    }
    let target = match Target::from_profile(profile) {
        Ok(Some(t)) => t,
        Ok(None) => return Vec::new(),
        Err(e) => {
            return vec![check(
                "offsite",
                Level::Red,
                format!("cannot use [offsite] {url}: {}", chain(&e)),
            )];
        }
    };
    let listed = match tokio::time::timeout(timeout, target.list()).await {
        Ok(r) => r.map_err(|e| chain(&e)),
        Err(_) => Err(format!("{url}: no answer within {}", age_text(timeout))),
    };
    let entries = match listed {
        Ok(e) => e,
        Err(e) => {
            return vec![
                check(
                    "offsite",
                    Level::Red,
                    format!("cannot list the copies: {e}"),
                ),
                check(
                    "offsite-key",
                    Level::Yellow,
                    "not checked: the off-site target did not answer",
                ),
            ];
        }
    };
    let good: Vec<_> = entries.iter().filter(|e| e.is_good()).collect();
    let Some(newest) = good.first() else {
        return vec![check(
            "offsite",
            Level::Red,
            format!(
                "no confirmed copy at {url} ({} objects without a valid manifest)",
                entries.len()
            ),
        )];
    };
    let age = Duration::try_from(now.duration_since(newest.taken_at)).unwrap_or_default();
    let mut out = vec![check(
        "offsite",
        if age <= rpo {
            Level::Green
        } else {
            Level::Yellow
        },
        format!(
            "{} confirmed copies at {url}, newest {} old{}",
            good.len(),
            age_text(age),
            if age <= rpo {
                ""
            } else {
                " (older than the rpo)"
            }
        ),
    )];
    out.extend(key_check(profile, &target, newest, timeout).await);
    out
}

/// Opens the newest off-site copy's age header and first chunk with the profile's identity.
async fn key_check(
    profile: &Profile,
    target: &Target,
    newest: &crate::offsite::RemoteEntry,
    timeout: Duration,
) -> Option<Check> {
    const NAME: &str = "offsite-key";
    let layers = newest
        .manifest
        .as_ref()
        .map_or(&newest.layers, |m| &m.layers);
    if !layers.contains(&Layer::Age) {
        return None;
    }
    let Some(path) = profile.identity_file() else {
        return Some(check(
            NAME,
            Level::Red,
            format!(
                "{} is encrypted but backup.identity_file is not set: a restore could not decrypt it",
                newest.name
            ),
        ));
    };
    let ids = match Identities::load(&path) {
        Ok(i) => i,
        Err(e) => return Some(check(NAME, Level::Red, e.to_string())),
    };
    let head = match tokio::time::timeout(
        timeout,
        target.read_head(&newest.name, newest.size, pack::HEAD_LEN),
    )
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            return Some(check(
                NAME,
                Level::Yellow,
                format!(
                    "not checked: cannot read the start of {}: {}",
                    newest.url,
                    chain(&e)
                ),
            ));
        }
        Err(_) => {
            return Some(check(
                NAME,
                Level::Yellow,
                format!("not checked: no answer reading {}", newest.url),
            ));
        }
    };
    Some(match pack::open_head(&head, Some(&ids)) {
        Ok(h) if h.bolt => check(
            NAME,
            Level::Green,
            format!(
                "{} opens {} ({} of {} bytes read: age header and first chunk)",
                path.display(),
                newest.name,
                head.len(),
                newest.size
            ),
        ),
        Ok(_) => check(
            NAME,
            Level::Red,
            format!(
                "{} decrypts {}, but what is inside does not start like an etcd snapshot",
                path.display(),
                newest.name
            ),
        ),
        Err(e @ PackError::WrongIdentity { .. }) => check(
            NAME,
            Level::Red,
            format!("{}: {e}; a restore from it would fail", newest.url),
        ),
        Err(e) => check(
            NAME,
            Level::Red,
            format!("{}: the copy is damaged at its start: {e}", newest.url),
        ),
    })
}

/// An error with its causes, `a: b: c`, so a dead endpoint says "connection refused".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        cur = s.source();
    }
    text
}

/// The plain size of a snapshot (the sidecar's when it has one: a packed file is smaller).
fn plain_size(e: &Entry) -> u64 {
    e.sidecar.as_ref().map_or(e.size, |s| s.size)
}

/// The newest snapshot (or etcd's database, when the cluster says) against the quota, and the
/// trend over the last [`GROWTH_WINDOW`] valid snapshots.
pub fn size(
    valid: &[&Entry],
    db_size: Option<u64>,
    quota: u64,
    quota_source: &str,
) -> Option<Check> {
    const NAME: &str = "size";
    let snap = valid.first().map(|e| plain_size(e));
    let (biggest, what) = match (snap, db_size) {
        (Some(s), Some(d)) if d > s => (d, "etcd's database"),
        (Some(s), _) => (s, "the newest snapshot"),
        (None, Some(d)) => (d, "etcd's database"),
        (None, None) => return None,
    };
    let share = biggest as f64 / quota as f64;
    let mut level = if share >= SIZE_RED {
        Level::Red
    } else if share >= SIZE_YELLOW {
        Level::Yellow
    } else {
        Level::Green
    };
    let percent = if share < 0.01 {
        "<1%".to_owned()
    } else {
        format!("{:.0}%", share * 100.0)
    };
    let mut reason = format!(
        "{what} is {} = {percent} of {} ({quota_source})",
        human_bytes(biggest),
        human_bytes(quota)
    );
    if level == Level::Red {
        reason.push_str(
            ": etcd stops taking writes (alarm NOSPACE) at the quota; defragment or raise quota-backend-bytes",
        );
    }
    let window: Vec<&&Entry> = valid.iter().take(GROWTH_WINDOW).collect();
    if let (Some(newest), Some(oldest)) = (window.first(), window.last())
        && window.len() >= 2
    {
        let grown = plain_size(newest) as f64 - plain_size(oldest) as f64;
        let days = newest
            .taken_at
            .duration_since(oldest.taken_at)
            .as_secs_f64()
            / 86400.0;
        reason.push_str(&format!(
            "; {}{} over the last {} snapshots",
            if grown >= 0.0 { "+" } else { "-" },
            human_bytes(grown.abs() as u64),
            window.len()
        ));
        if grown > 0.0 && days > 0.0 && level == Level::Green {
            let per_day = grown / days;
            let left = SIZE_RED * quota as f64 - biggest as f64;
            let eta = left / per_day;
            if eta < GROWTH_HORIZON_DAYS {
                level = Level::Yellow;
                reason.push_str(&format!(
                    "; at this rate it reaches {:.0}% of the quota in {:.0} days",
                    SIZE_RED * 100.0,
                    eta.max(0.0)
                ));
            }
        }
    }
    Some(check(NAME, level, reason))
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// What `snapshot` leaves after every run, scheduled or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    pub schema: u32,
    pub finished_at: Timestamp,
    pub exit_code: u8,
    #[serde(default)]
    pub error: Option<String>,
}

pub fn record_last_run(config_dir: &Path, run: &LastRun) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(run).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&config_dir.join(LAST_RUN_FILE), text.as_bytes(), 0o600)
}

/// The last `snapshot` run: its record, else the metrics textfile's exit code and time.
fn last_run(profile: &Profile) -> Option<LastRun> {
    if let Some(r) = std::fs::read_to_string(profile.config_dir.join(LAST_RUN_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        return Some(r);
    }
    let text = std::fs::read_to_string(profile.metrics_file()?).ok()?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok())
    };
    let code = value("talos_dr_snapshot_last_exit_code")?;
    let at = value("talos_dr_snapshot_last_run_timestamp_seconds")?;
    Some(LastRun {
        schema: 1,
        finished_at: Timestamp::from_millisecond((at * 1000.0) as i64).ok()?,
        exit_code: code as u8,
        error: None,
    })
}

/// The timer or cron entry that runs `snapshot`, and how its last run ended.
async fn schedule_check(
    profile: &Profile,
    installed: Option<&Installed>,
    opts: &Options,
    now: Timestamp,
) -> Check {
    const NAME: &str = "schedule";
    let job = match installed {
        Some(i) if i.kind == "cron" => match crontab().await {
            Some(text) if text.contains(&format!("# {}", i.unit)) => {
                Ok(format!("crontab entry {}", i.unit))
            }
            Some(_) => Err(format!(
                "the crontab line {} (installed {}) is gone; reinstall with `talos-dr schedule --cron --install`",
                i.unit,
                ago(now, i.installed_at)
            )),
            None => Ok(format!(
                "crontab entry {} (crontab not readable here)",
                i.unit
            )),
        },
        Some(i) => match i.files.iter().find(|f| !f.exists()) {
            Some(gone) => Err(format!(
                "the timer file {} (installed {}) is gone; reinstall with `talos-dr schedule --install`",
                gone.display(),
                ago(now, i.installed_at)
            )),
            None => Ok(format!("timer {}.timer", i.unit)),
        },
        None => {
            let names = [
                format!("talos-dr-snapshot-{}.timer", profile.name()),
                "talos-dr-snapshot-all-profiles.timer".to_owned(),
            ];
            match opts
                .unit_dirs
                .iter()
                .flat_map(|d| names.iter().map(move |n| d.join(n)))
                .find(|p| p.exists())
            {
                Some(p) => Ok(format!("timer {}", p.display())),
                None => Err(format!(
                    "no timer or cron entry runs `snapshot` for {}: install one with `{} schedule --every 1d --install`",
                    profile.name(),
                    profile.cli()
                )),
            }
        }
    };
    let job = match job {
        Ok(j) => j,
        Err(e) => return check(NAME, Level::Red, e),
    };
    match last_run(profile) {
        None => check(NAME, Level::Yellow, format!("{job}; no run recorded yet")),
        Some(r) if r.exit_code != 0 => check(
            NAME,
            Level::Red,
            format!(
                "{job}; the last run ({}) exited {}{}",
                ago(now, r.finished_at),
                r.exit_code,
                r.error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
        ),
        Some(r) => check(
            NAME,
            Level::Green,
            format!("{job}; last run {} succeeded", ago(now, r.finished_at)),
        ),
    }
}

/// `crontab -l`, or `None` when it cannot be read (no crontab tool, no permission).
async fn crontab() -> Option<String> {
    let bin = crate::exec::resolve_tool("crontab", "TALOS_DR_CRONTAB").ok()?;
    let out = crate::exec::run(&bin, &["-l".into()], &[], Duration::from_secs(30))
        .await
        .ok()?;
    // "no crontab for USER" (exit 1) is an empty table.
    Some(if out.success() {
        out.stdout
    } else {
        String::new()
    })
}

/// Machine configs recorded in the newest valid snapshot's sidecar (`machine_configs`, keyed by
/// node address), read leniently: sidecars from before they were saved have none.
pub fn machine_configs(profile: &Profile, newest: Option<&Entry>) -> Option<Check> {
    const NAME: &str = "machine-configs";
    let newest = newest?;
    let raw: Option<serde_json::Value> = std::fs::read_to_string(store::sidecar_path(&newest.path))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let Some(configs) = raw
        .as_ref()
        .and_then(|v| v.get("machine_configs"))
        .and_then(|v| v.as_object())
    else {
        return Some(check(
            NAME,
            Level::Yellow,
            format!("no machine configs recorded with {}", newest.name),
        ));
    };
    let missing = |role: Role| -> Vec<String> {
        profile
            .file
            .nodes
            .iter()
            .filter(|n| n.role == role && !configs.contains_key(&n.address))
            .map(|n| n.address.clone())
            .collect()
    };
    let (cp, wk) = (missing(Role::ControlPlane), missing(Role::Worker));
    Some(if !cp.is_empty() {
        check(
            NAME,
            Level::Red,
            format!(
                "no machine config saved for control-plane node {} with {}",
                cp.join(", "),
                newest.name
            ),
        )
    } else if !wk.is_empty() {
        check(
            NAME,
            Level::Yellow,
            format!(
                "no machine config saved for worker {} with {}",
                wk.join(", "),
                newest.name
            ),
        )
    } else {
        check(
            NAME,
            Level::Green,
            format!(
                "saved for all {} nodes with {}",
                profile.file.nodes.len(),
                newest.name
            ),
        )
    })
}

/// The last `talos-dr check` (`check.json`), read leniently.
pub fn deep_check(config_dir: &Path, now: Timestamp) -> Check {
    const NAME: &str = "deep-check";
    let path = config_dir.join(CHECK_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return check(
            NAME,
            Level::Yellow,
            "never checked: `talos-dr check` re-verifies what is stored",
        );
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return check(
            NAME,
            Level::Yellow,
            format!("{} is not readable JSON", path.display()),
        );
    };
    let when = v
        .get("finished_at")
        .and_then(|t| t.as_str())
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map_or_else(|| "at an unknown time".to_owned(), |t| ago(now, t));
    let remote = v.get("remote").and_then(|r| r.as_bool()).unwrap_or(false);
    let checked = v.get("checked").and_then(|c| c.as_u64()).unwrap_or(0);
    let damaged: Vec<String> = v
        .get("damaged")
        .and_then(|d| d.as_array())
        .map(|a| {
            a.iter()
                .map(|d| {
                    format!(
                        "{}: {}",
                        d.get("location").and_then(|x| x.as_str()).unwrap_or("?"),
                        d.get("problem")
                            .and_then(|x| x.as_str())
                            .unwrap_or("damaged")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let scope = if remote {
        "local and off-site"
    } else {
        "local"
    };
    if damaged.is_empty() {
        check(
            NAME,
            Level::Green,
            format!("{checked} {scope} copies checked {when}, none damaged"),
        )
    } else {
        check(
            NAME,
            Level::Red,
            format!(
                "{} of {checked} {scope} copies damaged ({when}): {}",
                damaged.len(),
                damaged.join("; ")
            ),
        )
    }
}

/// The last successful run of playbook `drill` against `drill_every`.
pub fn drill(
    runs: &[checkpoint::RunState],
    every: Duration,
    now: Timestamp,
) -> (Check, Option<Timestamp>) {
    const NAME: &str = "drill";
    let last = runs
        .iter()
        .filter(|r| r.playbook == "drill" && r.status == RunStatus::Succeeded)
        .map(|r| r.updated_at.unwrap_or(r.created_at))
        .max();
    let Some(at) = last else {
        return (
            check(
                NAME,
                Level::Red,
                format!(
                    "no successful drill: a restore that was never rehearsed is a guess (`talos-dr drill`, due every {})",
                    age_text(every)
                ),
            ),
            None,
        );
    };
    let age = Duration::try_from(now.duration_since(at)).unwrap_or_default();
    let c = if age <= every {
        check(
            NAME,
            Level::Green,
            format!(
                "last drill {} (due every {})",
                ago(now, at),
                age_text(every)
            ),
        )
    } else {
        check(
            NAME,
            Level::Yellow,
            format!(
                "last drill {}: overdue (due every {})",
                ago(now, at),
                age_text(every)
            ),
        )
    };
    (c, Some(at))
}

/// `v1.9.5` → (1, 9).
fn minor(tag: &str) -> Option<(u64, u64)> {
    let mut it = tag.trim().trim_start_matches('v').split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// talosctl's version against the cluster's: the restore procedure talos-dr runs assumes the
/// client speaks the cluster's version (Talos supports one minor version apart).
pub fn talos_version(client: Result<String, String>, server: Result<String, String>) -> Check {
    const NAME: &str = "talos-version";
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            return check(
                NAME,
                Level::Red,
                format!("talosctl does not run: {e}; a restore needs it"),
            );
        }
    };
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            return check(
                NAME,
                Level::Yellow,
                format!("talosctl {client}; the cluster did not answer `talosctl version`: {e}"),
            );
        }
    };
    let text = format!("talosctl {client}, cluster {server}");
    match (minor(&client), minor(&server)) {
        (Some((a, b)), Some((c, d))) if a == c && b == d => check(NAME, Level::Green, text),
        (Some((a, b)), Some((c, d))) if a == c && b.abs_diff(d) == 1 => check(
            NAME,
            Level::Yellow,
            format!("{text}: one minor version apart; use the cluster's talosctl for a restore"),
        ),
        (Some(_), Some(_)) => check(
            NAME,
            Level::Red,
            format!(
                "{text}: more than one minor version apart, which Talos does not support; install talosctl {server}"
            ),
        ),
        _ => check(
            NAME,
            Level::Yellow,
            format!("{text}: cannot compare these versions"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn entry(dir: &Path, taken: &str, size: u64) -> Entry {
        let taken_at = at(taken);
        let name = store::file_name(taken_at);
        Entry {
            path: dir.join(&name),
            name,
            taken_at,
            size,
            sidecar: None,
        }
    }

    #[test]
    fn recovery_point_is_red_past_the_rpo_or_without_a_snapshot() {
        let now = at("2026-12-02T12:00:00Z");
        let d = Path::new("/b");
        let fresh = entry(d, "2026-12-02T02:00:00Z", 10);
        let (c, age) = recovery_point(&[&fresh], DEFAULT_RPO, "rpo 24h (default)", now);
        assert_eq!(c.level, Level::Green, "{c:?}");
        assert_eq!(age, Some(Duration::from_secs(10 * 3600)));
        assert!(
            c.reason.contains("10h") && c.reason.contains("24h"),
            "{}",
            c.reason
        );
        let old = entry(d, "2026-11-30T12:00:00Z", 10);
        assert_eq!(
            recovery_point(&[&old], DEFAULT_RPO, "", now).0.level,
            Level::Red
        );
        assert_eq!(
            recovery_point(&[], DEFAULT_RPO, "", now).0.level,
            Level::Red
        );
    }

    #[test]
    fn size_against_quota_and_growth() {
        let d = Path::new("/b");
        let mib = 1 << 20;
        let small = entry(d, "2026-12-02T00:00:00Z", 10 * mib);
        let c = size(&[&small], None, DEFAULT_QUOTA, "q").unwrap();
        assert_eq!(c.level, Level::Green, "{c:?}");
        let c = size(&[&small], Some(1800 * mib), DEFAULT_QUOTA, "q").unwrap();
        assert_eq!(c.level, Level::Red, "{c:?}");
        assert!(
            c.reason.starts_with("etcd's database is 1.8 GiB = 88%"),
            "{}",
            c.reason
        );
        let c = size(&[&small], None, 16 * mib, "backup.etcd_quota").unwrap();
        assert_eq!(c.level, Level::Yellow, "{c:?}");
        assert!(size(&[], None, DEFAULT_QUOTA, "q").is_none());
        // +100 MiB a day from 1000 MiB: 80% of 2 GiB (1638 MiB) in about 6 days.
        let grow: Vec<Entry> = (0..5)
            .map(|i| {
                entry(
                    d,
                    &format!("2026-12-0{}T00:00:00Z", 5 - i),
                    (1000 - 100 * i) * mib,
                )
            })
            .collect();
        let refs: Vec<&Entry> = grow.iter().collect();
        let c = size(&refs, None, DEFAULT_QUOTA, "q").unwrap();
        assert_eq!(c.level, Level::Yellow, "{c:?}");
        assert!(
            c.reason.contains("+400.0 MiB over the last 5 snapshots"),
            "{}",
            c.reason
        );
        assert!(c.reason.contains("in 6 days"), "{}", c.reason);
    }

    #[test]
    fn versions_one_minor_apart_are_yellow_more_is_red() {
        let v = |c: &str, s: &str| talos_version(Ok(c.into()), Ok(s.into())).level;
        assert_eq!(v("v1.9.5", "v1.9.1"), Level::Green);
        assert_eq!(v("v1.10.0", "v1.9.5"), Level::Yellow);
        assert_eq!(v("v1.12.0", "v1.9.5"), Level::Red);
        assert_eq!(
            talos_version(Err("not found".into()), Ok("v1.9.5".into())).level,
            Level::Red
        );
        assert_eq!(
            talos_version(Ok("v1.9.5".into()), Err("timeout".into())).level,
            Level::Yellow
        );
    }

    #[test]
    fn deep_check_reads_check_json_leniently() {
        let now = at("2026-12-02T12:00:00Z");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(deep_check(dir.path(), now).level, Level::Yellow);
        std::fs::write(dir.path().join(CHECK_FILE), "{").unwrap();
        assert_eq!(deep_check(dir.path(), now).level, Level::Yellow);
        std::fs::write(
            dir.path().join(CHECK_FILE),
            r#"{"schema":1,"finished_at":"2026-12-02T11:00:00Z","remote":true,"checked":4,"damaged":[]}"#,
        )
        .unwrap();
        let c = deep_check(dir.path(), now);
        assert_eq!(c.level, Level::Green);
        assert!(
            c.reason
                .contains("4 local and off-site copies checked 1h 0m ago"),
            "{}",
            c.reason
        );
        std::fs::write(
            dir.path().join(CHECK_FILE),
            r#"{"schema":1,"finished_at":"2026-12-02T11:00:00Z","remote":false,"checked":4,"damaged":[{"location":"etcd-1.snapshot","problem":"sha256 differs"}],"extra":1}"#,
        )
        .unwrap();
        let c = deep_check(dir.path(), now);
        assert_eq!(c.level, Level::Red);
        assert!(
            c.reason.contains("etcd-1.snapshot: sha256 differs"),
            "{}",
            c.reason
        );
    }
}
