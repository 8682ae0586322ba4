//! `schedule` (systemd units checked by `systemd-analyze verify`, crontab), Prometheus metrics
//! after `snapshot`, and `notify_command` on failure.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use predicates::prelude::*;

use crate::common::*;

fn append_profile(env: &Env, toml: &str) {
    let p = env.config_dir.join("profile.toml");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str(toml);
    std::fs::write(p, text).unwrap();
}

/// A fake tool that appends its argv (one line per call) to `<name>.log` and runs `body`.
fn fake_tool(env: &Env, name: &str, body: &str) -> (PathBuf, PathBuf) {
    let log = env.tmp.path().join(format!("{name}.log"));
    let bin = env.tmp.path().join(format!("fake-{name}"));
    std::fs::write(
        &bin,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n{body}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (bin, log)
}

#[test]
fn schedule_prints_units_that_systemd_analyze_accepts() {
    let env = Env::new();
    let out = env
        .cmd()
        .args(["-o", "json", "schedule", "--every", "6h"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = stdout_json(&out);
    let unit = doc["unit"].as_str().unwrap();
    assert_eq!(unit, "talos-dr-snapshot-lab");
    let timer = doc["timer"].as_str().unwrap();
    let service = doc["service"].as_str().unwrap();
    assert!(timer.contains("OnCalendar=*-*-* 00/6:00:00"), "{timer}");
    assert!(timer.contains("Persistent=true"), "{timer}");
    assert!(service.contains(&format!(
        "ExecStart={BIN} --config-dir {} snapshot",
        env.config_dir.display()
    )));

    let dir = env.tmp.path().join("units");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{unit}.service")), service).unwrap();
    std::fs::write(dir.join(format!("{unit}.timer")), timer).unwrap();
    let analyze = which("systemd-analyze").unwrap_or_else(|()| {
        panic!(
            "systemd-analyze is not installed (Debian package systemd; `scripts/test` installs it)"
        )
    });
    let out = std::process::Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(dir.join(format!("{unit}.service")))
        .arg(dir.join(format!("{unit}.timer")))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify rejected the units:\n{stderr}"
    );
}

fn which(tool: &str) -> Result<PathBuf, ()> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn schedule_text_and_cron_and_bad_intervals() {
    let env = Env::new();
    env.cmd()
        .args(["schedule", "--every", "1d"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("talos-dr-snapshot-lab.timer"))
        .stdout(predicate::str::contains("OnCalendar=*-*-* 00:00:00"));
    env.cmd()
        .args(["schedule", "--every", "30m", "--cron"])
        .assert()
        .code(0)
        .stdout(predicate::str::starts_with("*/30 * * * * "))
        .stdout(predicate::str::contains(" snapshot >>"));
    env.cmd()
        .args(["schedule", "--every", "5h"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("divides 24"));
}

#[test]
fn schedule_install_writes_units_and_enables_the_timer() {
    let env = Env::new();
    let (systemctl, log) = fake_tool(&env, "systemctl", "exit 0");
    let dir = env.tmp.path().join("systemd");
    env.cmd()
        .env("TALOS_DR_SYSTEMCTL", &systemctl)
        .args(["schedule", "--every", "1d", "--install", "--unit-dir"])
        .arg(&dir)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("installed and enabled"));
    assert!(dir.join("talos-dr-snapshot-lab.service").is_file());
    let timer = std::fs::read_to_string(dir.join("talos-dr-snapshot-lab.timer")).unwrap();
    assert!(timer.contains("Persistent=true"));
    let calls = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert!(lines[0].ends_with("daemon-reload"), "{calls}");
    assert!(
        lines[1].ends_with("enable --now talos-dr-snapshot-lab.timer"),
        "{calls}"
    );
}

#[test]
fn cron_install_adds_the_line_once() {
    let env = Env::new();
    let table = env.tmp.path().join("crontab.txt");
    std::fs::write(&table, "0 3 * * * /usr/bin/other-job\n").unwrap();
    // `crontab -l` prints the table; `crontab FILE` replaces it.
    let body = format!(
        "if [ \"$1\" = -l ]; then cat '{t}'; else cp \"$1\" '{t}'; fi",
        t = table.display()
    );
    let (crontab, _) = fake_tool(&env, "crontab", &body);
    for _ in 0..2 {
        env.cmd()
            .env("TALOS_DR_CRONTAB", &crontab)
            .args(["schedule", "--every", "12h", "--cron", "--install"])
            .assert()
            .code(0);
    }
    let text = std::fs::read_to_string(&table).unwrap();
    assert!(text.starts_with("0 3 * * * /usr/bin/other-job\n"), "{text}");
    assert_eq!(text.matches("talos-dr-snapshot-lab").count(), 1, "{text}");
    assert!(text.contains("0 */12 * * * "), "{text}");
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse().unwrap())
}

#[test]
fn metrics_after_success_and_failure_and_notify_gets_the_error() {
    let env = Env::new();
    let metrics = env.tmp.path().join("textfile/talos-dr.prom");
    let notified = env.tmp.path().join("notified.txt");
    append_profile(
        &env,
        &format!(
            "\n[backup]\nmetrics_file = {:?}\nnotify_command = 'env | grep ^TALOS_DR_ | sort > {}'\n",
            metrics.display().to_string(),
            notified.display()
        ),
    );
    env.cmd().args(["snapshot"]).assert().code(0);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let mode = std::fs::metadata(&metrics).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "node_exporter must be able to read it");
    let success = metric(&text, "talos_dr_snapshot_last_success_timestamp_seconds").unwrap();
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!((now - success).abs() < 120.0, "{text}");
    assert_eq!(metric(&text, "talos_dr_snapshot_last_exit_code"), Some(0.0));
    assert_eq!(metric(&text, "talos_dr_snapshot_count"), Some(1.0));
    assert_eq!(
        metric(&text, "talos_dr_snapshot_last_size_bytes"),
        Some(
            std::fs::metadata(fixture("snapshots/small.snapshot"))
                .unwrap()
                .len() as f64
        )
    );
    assert!(metric(&text, "talos_dr_snapshot_last_duration_seconds").is_some());
    assert!(!notified.exists(), "no notification on success");

    env.edit_cluster(|c| c.faults.health_error = Some("kubelet is not healthy".into()));
    env.cmd().args(["snapshot"]).assert().code(4);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(metric(&text, "talos_dr_snapshot_last_exit_code"), Some(4.0));
    assert_eq!(
        metric(&text, "talos_dr_snapshot_last_success_timestamp_seconds"),
        Some(success),
        "a failure keeps the last success time"
    );
    let env_dump = std::fs::read_to_string(&notified).unwrap();
    assert!(env_dump.contains("TALOS_DR_EXIT_CODE=4"), "{env_dump}");
    assert!(env_dump.contains("TALOS_DR_COMMAND=snapshot"), "{env_dump}");
    assert!(env_dump.contains("TALOS_DR_PROFILE=lab"), "{env_dump}");
    assert!(
        env_dump.contains("TALOS_DR_ERROR=the cluster is not healthy"),
        "{env_dump}"
    );
}

#[test]
fn a_failing_notify_command_is_a_warning_not_a_new_exit_code() {
    let env = Env::new();
    append_profile(
        &env,
        "\n[backup]\nnotify_command = 'echo boom >&2; exit 7'\n",
    );
    env.edit_cluster(|c| c.faults.health_error = Some("kubelet is not healthy".into()));
    env.cmd()
        .args(["snapshot"])
        .assert()
        .code(4)
        .stderr(predicate::str::contains(
            "notify_command exited with 7: boom",
        ));
}
