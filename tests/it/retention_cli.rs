//! Calendar retention from the command line: `prune --dry-run` prints each rule that keeps a
//! snapshot, and `snapshot` applies the same rules locally and at the off-site target.

use predicates::prelude::*;

use crate::common::*;
use crate::offsite::plant_remote;
use crate::pack::{append_profile, keygen, ok};

const TIMES: [&str; 5] = [
    "2026-11-30T02:00:00Z",
    "2026-11-29T02:00:00Z",
    "2026-11-28T02:00:00Z",
    "2026-10-31T02:00:00Z",
    "2026-10-15T02:00:00Z",
];

fn name(t: &str) -> String {
    talos_dr::snapshot::store::file_name(t.parse().unwrap())
}

#[test]
fn prune_dry_run_prints_the_calendar_reasons() {
    let env = Env::new();
    append_profile(
        &env,
        "\n[backup]\nretention_days = 0\nkeep_last = 1\nkeep_daily = 2\nkeep_monthly = 2\n",
    );
    for t in TIMES {
        plant_snapshot(&env, &small_fixture(), t.parse().unwrap(), true);
    }
    let before = env.backup_files();
    // Counted back from the newest snapshot (11-30), not from today: the result does not depend
    // on when the test runs.
    env.cmd()
        .args(["prune", "--dry-run"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "newest valid #1 (keep_last = 1); daily 2026-11-30; monthly 2026-11",
        ))
        .stdout(predicate::str::contains("daily 2026-11-29"))
        .stdout(predicate::str::contains("monthly 2026-10"))
        .stdout(predicate::str::contains(format!(
            "would delete   {}",
            name("2026-11-28T02:00:00Z")
        )))
        .stdout(predicate::str::contains("2 would be deleted, 3 kept"));
    assert_eq!(env.backup_files(), before);

    let out = env
        .cmd()
        .args(["-o", "json", "prune", "--dry-run"])
        .output()
        .unwrap();
    ok(&out);
    let doc = stdout_json(&out);
    assert_eq!(doc["policy"]["keep_daily"], 2, "{doc}");
    assert_eq!(doc["policy"]["keep_monthly"], 2, "{doc}");
    let decisions = doc["decisions"].as_array().unwrap();
    let find = |t: &str| {
        decisions
            .iter()
            .find(|d| d["name"] == name(t).as_str())
            .unwrap_or_else(|| panic!("{t}: {doc}"))
    };
    assert_eq!(find("2026-10-31T02:00:00Z")["keep"], true);
    assert_eq!(
        find("2026-10-31T02:00:00Z")["reasons"],
        serde_json::json!(["monthly 2026-10"])
    );
    assert_eq!(find("2026-10-15T02:00:00Z")["keep"], false);
    assert_eq!(find("2026-11-28T02:00:00Z")["keep"], false);
}

#[test]
fn snapshot_applies_calendar_retention_locally_and_off_site() {
    let env = Env::new();
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    let target = env.tmp.path().join("nfs/talos");
    append_profile(
        &env,
        &format!(
            "\n[backup]\nretention_days = 0\nkeep_last = 1\nkeep_daily = 2\nkeep_monthly = 2\nrecipients = [\"{recipient}\"]\nidentity_file = {:?}\n\n[offsite]\nurl = \"file://{}\"\n",
            key.display().to_string(),
            target.display()
        ),
    );
    for t in TIMES {
        plant_snapshot(&env, &small_fixture(), t.parse().unwrap(), true);
        plant_remote(&target, &format!("{}.zst.age", name(t)), &recipient);
    }
    let out = env.cmd().args(["-o", "json", "snapshot"]).output().unwrap();
    ok(&out);
    // The new snapshot is the newest day and month; 11-30 is the second day and month.
    let local = env.backup_files();
    let kept_old: Vec<&str> = TIMES
        .iter()
        .copied()
        .filter(|t| local.contains(&name(t)))
        .collect();
    assert_eq!(kept_old, ["2026-11-30T02:00:00Z"], "{local:?}");
    let remote: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".age"))
        .collect();
    assert_eq!(remote.len(), 2, "{remote:?}");
    assert!(
        remote.contains(&format!("{}.zst.age", name("2026-11-30T02:00:00Z"))),
        "{remote:?}"
    );
    let doc = stdout_json(&out);
    let reasons = doc["offsite_pruned"]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == format!("{}.zst.age", name("2026-11-30T02:00:00Z")).as_str())
        .map(|d| d["reasons"].clone())
        .unwrap();
    assert_eq!(
        reasons,
        serde_json::json!(["daily 2026-11-30", "monthly 2026-11"])
    );
}

fn small_fixture() -> std::path::PathBuf {
    fixture("snapshots/small.snapshot")
}
