//! Backup monitoring: Prometheus textfile-collector metrics and a failure notification hook.
//!
//! After every `snapshot`, [`write`] replaces `backup.metrics_file` atomically (node_exporter's
//! textfile collector must never read half a file). The last-success values survive a failed
//! run: they are read back from the previous file, so an alert on
//! `time() - talos_dr_snapshot_last_success_timestamp_seconds` keeps working after failures.

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;

/// What one `snapshot` run left behind.
#[derive(Debug, Clone, PartialEq)]
pub struct RunMetrics {
    pub profile: String,
    pub finished_at: Timestamp,
    pub exit_code: u8,
    pub duration: Duration,
    /// Size of the new snapshot as stored, on success.
    pub size: Option<u64>,
    /// Valid snapshots in the backup directory after the run.
    pub local_count: usize,
    /// Snapshots at the off-site target after the run, when one is configured and was listed.
    pub offsite_count: Option<usize>,
}

/// Values carried over from the previous file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Previous {
    pub last_success: Option<f64>,
    pub last_size: Option<f64>,
}

const PREFIX: &str = "talos_dr_snapshot_";

/// Renders the textfile. Pure, for tests.
pub fn render(m: &RunMetrics, prev: Previous) -> String {
    let ok = m.exit_code == 0;
    let last_success = if ok {
        Some(m.finished_at.as_millisecond() as f64 / 1000.0)
    } else {
        prev.last_success
    };
    let last_size = if ok {
        m.size.map(|s| s as f64).or(prev.last_size)
    } else {
        prev.last_size
    };
    let label = format!("{{profile=\"{}\"}}", escape_label(&m.profile));
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            out.push_str(&format!(
                "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} {kind}\n{PREFIX}{name}{label} {v}\n"
            ));
        }
    };
    metric(
        "last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful talos-dr snapshot.",
        last_success,
    );
    metric(
        "last_size_bytes",
        "gauge",
        "Size of the last successful snapshot as stored.",
        last_size,
    );
    metric(
        "last_duration_seconds",
        "gauge",
        "Wall time of the last snapshot run, successful or not.",
        Some(m.duration.as_secs_f64()),
    );
    metric(
        "last_exit_code",
        "gauge",
        "Exit code of the last snapshot run (0 = success).",
        Some(f64::from(m.exit_code)),
    );
    metric(
        "last_run_timestamp_seconds",
        "gauge",
        "Unix time the last snapshot run finished, successful or not.",
        Some(m.finished_at.as_millisecond() as f64 / 1000.0),
    );
    metric(
        "count",
        "gauge",
        "Valid snapshots in the local backup directory.",
        Some(m.local_count as f64),
    );
    metric(
        "offsite_count",
        "gauge",
        "Snapshots at the off-site target.",
        m.offsite_count.map(|c| c as f64),
    );
    out
}

/// Reads the carried-over values from an earlier file (missing or foreign lines are ignored).
pub fn parse_previous(text: &str) -> Previous {
    let mut p = Previous::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name);
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        match name.strip_prefix(PREFIX) {
            Some("last_success_timestamp_seconds") => p.last_success = Some(v),
            Some("last_size_bytes") => p.last_size = Some(v),
            _ => {}
        }
    }
    p
}

/// Writes the metrics file atomically (mode 0644: the collector runs as another user). Other
/// commands' metrics in the same file (`talos_dr_check_*`) are kept.
pub fn write(path: &Path, m: &RunMetrics) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let prev = parse_previous(&old);
    write_family(path, &old, PREFIX, &render(m, prev))
}

/// Replaces the lines of one metric family (names starting with `prefix`, with their HELP and
/// TYPE lines) in the file's text `old` by `new`, and writes the result atomically, mode 0644.
fn write_family(path: &Path, old: &str, prefix: &str, new: &str) -> std::io::Result<()> {
    replace(path, &merge(old, prefix, new))
}

/// `old` without the lines of family `prefix`, then `new`. Pure, for tests.
pub fn merge(old: &str, prefix: &str, new: &str) -> String {
    let mut out = keep_families(old, |name| !name.starts_with(prefix));
    out.push_str(new);
    out
}

const CHECK_PREFIX: &str = "talos_dr_check_";

/// What one `check` run found, for the textfile.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckMetrics {
    pub profile: String,
    pub finished_at: Timestamp,
    pub remote: bool,
    pub checked: usize,
    pub damaged: usize,
    pub errors: usize,
}

pub fn render_check(m: &CheckMetrics) -> String {
    let label = format!(
        "{{profile=\"{}\",remote=\"{}\"}}",
        escape_label(&m.profile),
        m.remote
    );
    let mut out = String::new();
    for (name, help, value) in [
        (
            "last_run_timestamp_seconds",
            "Unix time the last talos-dr check finished.",
            m.finished_at.as_millisecond() as f64 / 1000.0,
        ),
        (
            "checked",
            "Snapshots the last check looked at (local and off-site).",
            m.checked as f64,
        ),
        (
            "damaged",
            "Snapshots the last check found damaged (0 = all good).",
            m.damaged as f64,
        ),
        (
            "errors",
            "Copies the last check could not read (network, permissions).",
            m.errors as f64,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {CHECK_PREFIX}{name} {help}\n# TYPE {CHECK_PREFIX}{name} gauge\n{CHECK_PREFIX}{name}{label} {value}\n"
        ));
    }
    out
}

/// Writes the `check` metrics into the metrics file, keeping the `snapshot` ones.
pub fn write_check(path: &Path, m: &CheckMetrics) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    write_family(path, &old, CHECK_PREFIX, &render_check(m))
}

/// The lines of `text` (HELP, TYPE and samples) whose metric name `keep` accepts, so `snapshot`
/// and `status` can share one textfile, each replacing only its own families.
fn keep_families(text: &str, keep: impl Fn(&str) -> bool) -> String {
    text.lines()
        .filter(|l| {
            let name = match l.strip_prefix("# ") {
                Some(rest) => rest.split_whitespace().nth(1).unwrap_or(""),
                None => l.split(['{', ' ']).next().unwrap_or(""),
            };
            !name.is_empty() && keep(name)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// What `status` found for one profile, for the textfile.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusMetrics {
    pub profile: String,
    /// Age of the newest valid local snapshot.
    pub recovery_point_age: Option<Duration>,
    /// When the last drill succeeded.
    pub last_drill: Option<Timestamp>,
    /// Each check's name and level: 0 green, 1 yellow, 2 red.
    pub checks: Vec<(String, u8)>,
}

const STATUS_FAMILIES: [&str; 3] = [
    "talos_dr_recovery_point_age_seconds",
    "talos_dr_last_drill_timestamp_seconds",
    "talos_dr_status",
];

/// Renders the `status` families. Pure, for tests.
pub fn render_status(m: &StatusMetrics) -> String {
    let profile = escape_label(&m.profile);
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: Vec<(String, f64)>| {
        if samples.is_empty() {
            return;
        }
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, v) in samples {
            out.push_str(&format!("{name}{{profile=\"{profile}\"{labels}}} {v}\n"));
        }
    };
    family(
        STATUS_FAMILIES[0],
        "Age of the newest valid local etcd snapshot (the recovery point).",
        m.recovery_point_age
            .map(|d| (String::new(), d.as_secs_f64().round()))
            .into_iter()
            .collect(),
    );
    family(
        STATUS_FAMILIES[1],
        "Unix time of the last successful restore drill.",
        m.last_drill
            .map(|t| (String::new(), t.as_second() as f64))
            .into_iter()
            .collect(),
    );
    family(
        STATUS_FAMILIES[2],
        "talos-dr status per check: 0 green, 1 yellow, 2 red.",
        m.checks
            .iter()
            .map(|(c, l)| (format!(",check=\"{}\"", escape_label(c)), f64::from(*l)))
            .collect(),
    );
    out
}

/// Replaces the `status` families in the textfile, keeping everything else (the `snapshot`
/// families) as it is.
pub fn write_status(path: &Path, m: &StatusMetrics) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut text = keep_families(&old, |name| !STATUS_FAMILIES.contains(&name));
    text.push_str(&render_status(m));
    replace(path, &text)
}

fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o644)
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What a failed run tells `notify_command`, through environment variables (never argv).
#[derive(Debug, Clone)]
pub struct Failure {
    pub profile: String,
    pub command: String,
    pub exit_code: u8,
    pub error: String,
    pub hints: Vec<String>,
}

/// Why `notify_command` did not succeed; the caller warns with it.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notify_command could not run: {0}")]
    Spawn(#[source] crate::exec::ExecError),
    #[error("notify_command exited with {}: {stderr}", code.map_or("a signal".into(), |c| c.to_string()))]
    Exit { code: Option<i32>, stderr: String },
}

/// Runs `sh -c <command>` with `TALOS_DR_PROFILE`, `TALOS_DR_COMMAND`, `TALOS_DR_EXIT_CODE`,
/// `TALOS_DR_ERROR` and `TALOS_DR_HINT` set. Returns what went wrong, if anything, so the caller
/// can warn; the hook's own failure never changes the run's exit code.
pub async fn notify(command: &str, f: &Failure, timeout: Duration) -> Result<(), NotifyError> {
    let env = [
        ("TALOS_DR_PROFILE".to_owned(), f.profile.clone()),
        ("TALOS_DR_COMMAND".to_owned(), f.command.clone()),
        ("TALOS_DR_EXIT_CODE".to_owned(), f.exit_code.to_string()),
        ("TALOS_DR_ERROR".to_owned(), f.error.clone()),
        ("TALOS_DR_HINT".to_owned(), f.hints.join("\n")),
    ];
    let out = crate::exec::run(
        Path::new("/bin/sh"),
        &["-c".to_owned(), command.to_owned()],
        &env,
        timeout,
    )
    .await
    .map_err(NotifyError::Spawn)?;
    if out.success() {
        Ok(())
    } else {
        Err(NotifyError::Exit {
            code: out.code,
            stderr: out.stderr.trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(code: u8) -> RunMetrics {
        RunMetrics {
            profile: "lab".into(),
            finished_at: "2026-11-30T02:00:00Z".parse().unwrap(),
            exit_code: code,
            duration: Duration::from_millis(1500),
            size: Some(4096),
            local_count: 3,
            offsite_count: None,
        }
    }

    #[test]
    fn success_then_failure_keeps_the_last_success() {
        let first = render(&run(0), Previous::default());
        assert!(first.contains(
            "talos_dr_snapshot_last_success_timestamp_seconds{profile=\"lab\"} 1796004000\n"
        ));
        assert!(first.contains("talos_dr_snapshot_last_size_bytes{profile=\"lab\"} 4096\n"));
        assert!(first.contains("talos_dr_snapshot_last_exit_code{profile=\"lab\"} 0\n"));
        assert!(first.contains("talos_dr_snapshot_count{profile=\"lab\"} 3\n"));
        assert!(!first.contains("offsite_count"));

        let mut failed = run(4);
        failed.finished_at = "2026-11-30T03:00:00Z".parse().unwrap();
        failed.size = None;
        let second = render(&failed, parse_previous(&first));
        assert!(second.contains(
            "talos_dr_snapshot_last_success_timestamp_seconds{profile=\"lab\"} 1796004000\n"
        ));
        assert!(second.contains("talos_dr_snapshot_last_exit_code{profile=\"lab\"} 4\n"));
        assert!(second.contains("talos_dr_snapshot_last_size_bytes{profile=\"lab\"} 4096\n"));
    }

    #[test]
    fn snapshot_and_status_share_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("talos-dr.prom");
        let status = StatusMetrics {
            profile: "lab".into(),
            recovery_point_age: Some(Duration::from_secs(3600)),
            last_drill: None,
            checks: vec![("drill".into(), 2), ("offsite".into(), 0)],
        };
        write_status(&path, &status).unwrap();
        write(&path, &run(0)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("talos_dr_recovery_point_age_seconds{profile=\"lab\"} 3600\n"));
        assert!(text.contains("talos_dr_status{profile=\"lab\",check=\"drill\"} 2\n"));
        assert!(text.contains("talos_dr_snapshot_last_exit_code{profile=\"lab\"} 0\n"));
        assert!(!text.contains("last_drill"));
        // A second status run replaces its own lines only, once.
        let mut again = status.clone();
        again.checks = vec![("drill".into(), 0)];
        again.last_drill = Some("2026-11-30T02:00:00Z".parse().unwrap());
        write_status(&path, &again).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("# TYPE talos_dr_status gauge").count(), 1);
        assert!(text.contains("talos_dr_status{profile=\"lab\",check=\"drill\"} 0\n"));
        assert!(!text.contains("check=\"offsite\""));
        assert!(
            text.contains("talos_dr_last_drill_timestamp_seconds{profile=\"lab\"} 1796004000\n")
        );
        assert_eq!(
            text.matches("# TYPE talos_dr_snapshot_count gauge").count(),
            1
        );
    }

    #[test]
    fn check_and_snapshot_metrics_share_the_file() {
        let snap = render(&run(0), Previous::default());
        let check = render_check(&CheckMetrics {
            profile: "lab".into(),
            finished_at: "2026-11-30T04:00:00Z".parse().unwrap(),
            remote: true,
            checked: 5,
            damaged: 1,
            errors: 0,
        });
        let both = merge(&snap, CHECK_PREFIX, &check);
        assert!(both.starts_with(&snap));
        assert!(both.contains("talos_dr_check_damaged{profile=\"lab\",remote=\"true\"} 1\n"));
        // A later snapshot run replaces its own lines and keeps the check's.
        let again = merge(&both, PREFIX, &snap);
        assert!(again.contains(&check), "{again}");
        assert_eq!(again.matches("talos_dr_snapshot_count{").count(), 1);
        // A later check replaces the check's lines only.
        let twice = merge(&again, CHECK_PREFIX, &check);
        assert_eq!(twice.matches("talos_dr_check_damaged{").count(), 1);
        assert_eq!(twice.matches("talos_dr_snapshot_count{").count(), 1);
    }

    #[test]
    fn never_succeeded_has_no_success_line() {
        let text = render(&run(1), Previous::default());
        assert!(!text.contains("last_success"));
        assert!(text.contains("# TYPE talos_dr_snapshot_last_exit_code gauge"));
    }
}
