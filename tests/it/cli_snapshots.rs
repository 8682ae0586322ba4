//! Snapshot tests (insta) of output people read: `--help`, a restore plan, a prune dry run.
//! Temporary paths and times are filtered so the snapshots are stable.

use jiff::{SignedDuration, Timestamp};

use crate::common::*;

fn stdout(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn filters(env: &Env) -> Vec<(String, String)> {
    vec![
        (
            regex_escape(&env.tmp.path().display().to_string()),
            "[TMP]".to_owned(),
        ),
        (
            regex_escape(env!("CARGO_MANIFEST_DIR")),
            "[REPO]".to_owned(),
        ),
        (r"etcd-\d{8}-\d{6}".to_owned(), "etcd-[TIME]".to_owned()),
    ]
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '-' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

#[test]
fn help_lists_every_command_and_the_exit_codes() {
    let env = Env::new();
    let out = stdout(env.cmd().arg("--help").output().unwrap());
    insta::assert_snapshot!("help", out);
}

#[test]
fn restore_plan_shows_the_exact_calls() {
    let env = Env::new();
    let out = stdout(
        env.cmd()
            .args(["restore", "--dry-run", "--snapshot"])
            .arg(fixture("snapshots/small.snapshot"))
            .output()
            .unwrap(),
    );
    let f = filters(&env);
    insta::with_settings!({ filters => f.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect::<Vec<_>>() }, {
        insta::assert_snapshot!("restore_dry_run", out);
    });
}

#[test]
fn prune_dry_run_explains_every_decision() {
    let env = Env::new();
    // Whole days before a fixed moment of today, so ages render the same on every run.
    let now = Timestamp::now();
    for days in [1, 2, 9, 10, 30] {
        plant_snapshot(
            &env,
            &fixture("snapshots/small.snapshot"),
            now - SignedDuration::from_hours(24 * days) + SignedDuration::from_mins(1),
            true,
        );
    }
    let out = stdout(
        env.cmd()
            .args(["prune", "--dry-run", "--keep-last", "2"])
            .output()
            .unwrap(),
    );
    let f = filters(&env);
    insta::with_settings!({ filters => f.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect::<Vec<_>>() }, {
        insta::assert_snapshot!("prune_dry_run", out);
    });
}
