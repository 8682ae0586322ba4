//! Scheduled snapshots: the text of a systemd service + timer pair, or of a crontab line.
//!
//! Pure functions of a [`Spec`]; `talos-dr schedule` prints them or installs them. The timer
//! uses `OnCalendar=` with `Persistent=true`, so a run missed while the machine was off happens
//! at the next boot. Intervals must divide an hour or a day evenly (or be one week), so that the
//! same wall-clock times come round every day in both systemd and cron.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    /// Every N minutes, N dividing 60.
    Minutes(u32),
    /// Every N hours, N dividing 24.
    Hours(u32),
    Daily,
    Weekly,
}

/// An interval that would not bring the same wall-clock times round every day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot run every {}: use a number of minutes that divides 60 (5m, 15m, 30m), \
     of hours that divides 24 (1h, 6h, 12h), 1d or 7d",
    crate::snapshot::retention::human_age(jiff::SignedDuration::from_secs(
        i64::try_from(.every.as_secs()).unwrap_or(i64::MAX)
    ))
)]
pub struct UnevenInterval {
    pub every: Duration,
}

impl Every {
    pub fn from_duration(d: Duration) -> Result<Self, UnevenInterval> {
        let secs = d.as_secs();
        let bad = || UnevenInterval { every: d };
        if secs == 0 || !secs.is_multiple_of(60) {
            return Err(bad());
        }
        let mins = secs / 60;
        Ok(match mins {
            m if m < 60 && 60u64.is_multiple_of(m) => Every::Minutes(m as u32),
            m if m % 60 == 0 && m < 24 * 60 && (24 * 60) % m == 0 => Every::Hours((m / 60) as u32),
            m if m == 24 * 60 => Every::Daily,
            m if m == 7 * 24 * 60 => Every::Weekly,
            _ => return Err(bad()),
        })
    }

    /// systemd `OnCalendar=` expression.
    pub fn on_calendar(self) -> String {
        match self {
            Every::Minutes(1) => "*-*-* *:*:00".into(),
            Every::Minutes(n) => format!("*-*-* *:00/{n}:00"),
            Every::Hours(1) => "*-*-* *:00:00".into(),
            Every::Hours(n) => format!("*-*-* 00/{n}:00:00"),
            Every::Daily => "*-*-* 00:00:00".into(),
            Every::Weekly => "Mon *-*-* 00:00:00".into(),
        }
    }

    /// The five time fields of a crontab line.
    pub fn cron_fields(self) -> String {
        match self {
            Every::Minutes(1) => "* * * * *".into(),
            Every::Minutes(n) => format!("*/{n} * * * *"),
            Every::Hours(1) => "0 * * * *".into(),
            Every::Hours(n) => format!("0 */{n} * * *"),
            Every::Daily => "0 0 * * *".into(),
            Every::Weekly => "0 0 * * 1".into(),
        }
    }
}

impl fmt::Display for Every {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Every::Minutes(n) => write!(f, "every {n} min"),
            Every::Hours(n) => write!(f, "every {n} h"),
            Every::Daily => f.write_str("daily"),
            Every::Weekly => f.write_str("weekly"),
        }
    }
}

/// What to schedule.
#[derive(Debug, Clone)]
pub struct Spec {
    pub every: Every,
    /// Absolute path of the talos-dr binary.
    pub binary: PathBuf,
    pub profile_name: String,
    /// The profile directory, passed as `--config-dir` so the job does not depend on $HOME.
    /// For a fleet job, the profiles' home (its `env` file and cron log live there).
    pub config_dir: PathBuf,
    /// One job for several profiles (`schedule --all-profiles` or `-p a,b,c`).
    pub fleet: Option<FleetJob>,
}

/// A job that backs up several profiles in one run: `snapshot --all-profiles` (profiles added
/// later are included) or `-p a,b,c snapshot`, with `TALOS_DR_HOME` set to the profiles' home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetJob {
    /// `None`: every profile under the home at the time of each run.
    pub profiles: Option<Vec<String>>,
    /// `--jobs` for the run, when not the default.
    pub jobs: Option<usize>,
}

impl FleetJob {
    /// The label that names the job's units: `all-profiles`, or `fleet-a-b-c`.
    pub fn label(&self) -> String {
        match &self.profiles {
            None => "all-profiles".into(),
            Some(names) => format!("fleet-{}", names.join("-")),
        }
    }
}

impl Spec {
    /// `talos-dr-snapshot-<profile>`; the profile name is already restricted to `[A-Za-z0-9._-]`.
    pub fn unit_name(&self) -> String {
        let safe: String = self
            .profile_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("talos-dr-snapshot-{safe}")
    }

    fn argv(&self) -> Vec<String> {
        let bin = self.binary.display().to_string();
        let Some(fleet) = &self.fleet else {
            return vec![
                bin,
                "--config-dir".into(),
                self.config_dir.display().to_string(),
                "snapshot".into(),
            ];
        };
        let mut argv = vec![bin];
        match &fleet.profiles {
            None => argv.extend(["snapshot".into(), "--all-profiles".into()]),
            Some(names) => argv.extend(["-p".into(), names.join(","), "snapshot".into()]),
        }
        if let Some(j) = fleet.jobs {
            argv.extend(["--jobs".into(), j.to_string()]);
        }
        argv
    }

    /// What the units back up, for their descriptions.
    fn what(&self) -> String {
        match self.fleet.as_ref().map(|f| &f.profiles) {
            None => format!("etcd snapshot of Talos cluster {}", self.profile_name),
            Some(None) => "etcd snapshots of every talos-dr profile".into(),
            Some(Some(names)) => format!("etcd snapshots of profiles {}", names.join(", ")),
        }
    }

    /// Optional `KEY=VALUE` file for S3 credentials and the like, so no secret sits in a unit.
    pub fn env_file(&self) -> PathBuf {
        self.config_dir.join("env")
    }
}

pub fn systemd_service(spec: &Spec) -> String {
    let exec = spec
        .argv()
        .iter()
        .map(|a| systemd_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "[Unit]
Description=talos-dr: {what}
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
{home}ExecStart={exec}
# Optional KEY=VALUE lines (AWS_ACCESS_KEY_ID=…, AWS_SECRET_ACCESS_KEY=…), mode 0600.
EnvironmentFile=-{env}
Nice=10
IOSchedulingClass=best-effort
IOSchedulingPriority=7
TimeoutStartSec=2h
",
        what = spec.what(),
        // A fleet job finds its profiles through TALOS_DR_HOME, whatever $HOME the unit has.
        home = match &spec.fleet {
            Some(_) => format!(
                "Environment={}\n",
                systemd_quote(&format!("TALOS_DR_HOME={}", spec.config_dir.display()))
            ),
            None => String::new(),
        },
        env = systemd_quote(&spec.env_file().display().to_string()),
    )
}

pub fn systemd_timer(spec: &Spec) -> String {
    format!(
        "[Unit]
Description=talos-dr: {what}, {every}

[Timer]
OnCalendar={cal}
# Catch up at boot on a run missed while the machine was off.
Persistent=true
RandomizedDelaySec=60
AccuracySec=1min
Unit={unit}.service

[Install]
WantedBy=timers.target
",
        what = spec.what(),
        every = spec.every,
        cal = spec.every.on_calendar(),
        unit = spec.unit_name(),
    )
}

/// One crontab line. Output goes to `<config_dir>/snapshot.log` so cron mails nothing on success;
/// failures are still visible there, in the metrics file and through `notify_command`.
pub fn crontab_line(spec: &Spec) -> String {
    let cmd = spec
        .argv()
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let log = shell_quote(&spec.config_dir.join("snapshot.log").display().to_string());
    let home = match &spec.fleet {
        Some(_) => format!(
            "TALOS_DR_HOME={} ",
            shell_quote(&spec.config_dir.display().to_string())
        ),
        None => String::new(),
    };
    format!(
        "{} {home}{cmd} >>{log} 2>&1  # {}\n",
        spec.every.cron_fields(),
        spec.unit_name()
    )
}

/// What `schedule --install` left behind, recorded as `schedule.json` in the profile directory
/// (or, for a fleet job, the profiles' home) so `status` can check it is still there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Installed {
    pub schema: u32,
    /// `systemd` or `cron`.
    pub kind: String,
    pub unit: String,
    /// The unit files written (systemd); empty for cron.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    pub every_seconds: u64,
    pub installed_at: jiff::Timestamp,
    /// A job for several profiles (recorded in the profiles' home).
    #[serde(default)]
    pub fleet: bool,
    /// The fleet job's profiles (directory names); none means every profile in the home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Vec<String>>,
}

pub const RECORD_FILE: &str = "schedule.json";

impl Installed {
    /// Whether this job backs up the profile called `name`.
    pub fn covers(&self, name: &str) -> bool {
        match &self.profiles {
            None => true,
            Some(names) => names.iter().any(|n| n == name),
        }
    }
}

pub fn write_record(dir: &Path, record: &Installed) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(record).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&dir.join(RECORD_FILE), text.as_bytes(), 0o600)
}

/// The record in `dir`, if there is a readable one.
pub fn read_record(dir: &Path) -> Option<Installed> {
    let text = std::fs::read_to_string(dir.join(RECORD_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Where units go: the system directory as root, else the user's.
pub fn default_unit_dir(is_root: bool, home: Option<&Path>) -> Option<PathBuf> {
    if is_root {
        Some(PathBuf::from("/etc/systemd/system"))
    } else {
        home.map(|h| h.join(".config/systemd/user"))
    }
}

/// systemd command-line quoting: plain words stay, anything else is double-quoted with `\` escapes.
/// `%` is doubled because systemd expands specifiers in ExecStart.
fn systemd_quote(s: &str) -> String {
    let s = s.replace('%', "%%");
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.,:=+@%".contains(c))
    {
        s
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// POSIX shell quoting; `%` is escaped because cron turns a bare `%` into a newline.
fn shell_quote(s: &str) -> String {
    let q = if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.,:=+@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    };
    q.replace('%', "\\%")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(every: Every) -> Spec {
        Spec {
            every,
            binary: "/usr/local/bin/talos-dr".into(),
            profile_name: "lab".into(),
            config_dir: "/root/.config/talos-dr/lab dir".into(),
            fleet: None,
        }
    }

    #[test]
    fn intervals_map_to_calendar_and_cron() {
        let h = |n: u64| Duration::from_secs(3600 * n);
        assert_eq!(Every::from_duration(h(24)).unwrap(), Every::Daily);
        assert_eq!(Every::from_duration(h(6)).unwrap(), Every::Hours(6));
        assert_eq!(Every::from_duration(h(168)).unwrap(), Every::Weekly);
        assert_eq!(
            Every::from_duration(Duration::from_secs(900)).unwrap(),
            Every::Minutes(15)
        );
        let e = Every::from_duration(h(5)).unwrap_err().to_string();
        assert!(e.contains("divides 24"), "{e}");
        assert!(Every::from_duration(Duration::from_secs(90)).is_err());
        assert_eq!(Every::Hours(6).on_calendar(), "*-*-* 00/6:00:00");
        assert_eq!(Every::Hours(6).cron_fields(), "0 */6 * * *");
        assert_eq!(Every::Minutes(15).cron_fields(), "*/15 * * * *");
        assert_eq!(Every::Daily.cron_fields(), "0 0 * * *");
    }

    #[test]
    fn units_are_persistent_and_quote_paths() {
        let s = spec(Every::Daily);
        let timer = systemd_timer(&s);
        assert!(timer.contains("Persistent=true"));
        assert!(timer.contains("Unit=talos-dr-snapshot-lab.service"));
        let service = systemd_service(&s);
        assert!(service.contains(
            "ExecStart=/usr/local/bin/talos-dr --config-dir \"/root/.config/talos-dr/lab dir\" snapshot"
        ));
        let cron = crontab_line(&s);
        assert!(
            cron.starts_with(
                "0 0 * * * /usr/local/bin/talos-dr --config-dir '/root/.config/talos-dr/lab dir' snapshot"
            ),
            "{cron}"
        );
        assert_eq!(shell_quote("50%"), "'50\\%'");
    }

    #[test]
    fn a_fleet_job_backs_up_every_profile_under_its_home() {
        let mut s = spec(Every::Hours(6));
        s.config_dir = "/srv/talos dr".into();
        s.fleet = Some(FleetJob {
            profiles: None,
            jobs: Some(3),
        });
        s.profile_name = s.fleet.as_ref().unwrap().label();
        assert_eq!(s.unit_name(), "talos-dr-snapshot-all-profiles");
        let service = systemd_service(&s);
        assert!(
            service.contains("Environment=\"TALOS_DR_HOME=/srv/talos dr\"\n"),
            "{service}"
        );
        assert!(
            service
                .contains("ExecStart=/usr/local/bin/talos-dr snapshot --all-profiles --jobs 3\n"),
            "{service}"
        );
        assert!(service.contains("every talos-dr profile"));
        assert!(!service.contains("--config-dir"));
        let cron = crontab_line(&s);
        assert!(
            cron.starts_with(
                "0 */6 * * * TALOS_DR_HOME='/srv/talos dr' /usr/local/bin/talos-dr snapshot --all-profiles --jobs 3 >>'/srv/talos dr/snapshot.log'"
            ),
            "{cron}"
        );
        s.fleet = Some(FleetJob {
            profiles: Some(vec!["a".into(), "b".into()]),
            jobs: None,
        });
        s.profile_name = s.fleet.as_ref().unwrap().label();
        assert_eq!(s.unit_name(), "talos-dr-snapshot-fleet-a-b");
        assert!(
            systemd_service(&s).contains("ExecStart=/usr/local/bin/talos-dr -p a,b snapshot\n")
        );
        let rec = Installed {
            schema: 1,
            kind: "systemd".into(),
            unit: s.unit_name(),
            files: vec![],
            every_seconds: 6 * 3600,
            installed_at: jiff::Timestamp::UNIX_EPOCH,
            fleet: true,
            profiles: Some(vec!["a".into(), "b".into()]),
        };
        assert!(rec.covers("a") && !rec.covers("c"));
        // An --all-profiles record reads back as one (no `null` lost on the way).
        let all = Installed {
            profiles: None,
            ..rec
        };
        let back: Installed = serde_json::from_str(&serde_json::to_string(&all).unwrap()).unwrap();
        assert_eq!(back, all);
        assert!(back.fleet && back.covers("c"));
    }
}
