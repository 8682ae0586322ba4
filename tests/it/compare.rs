//! The post-restore comparison end to end: the real binary restores onto the simulated cluster,
//! the real kubectl lists the simulated API's objects (served from the restored etcd data), and
//! `post-verify` compares them with the restored file.

use talos_dr::engine::checkpoint::{self, StageStatus};
use talos_dr::snapshot::compare::{Comparison, KINDS};
use talos_dr::stages::post_verify::PostVerifyOutputs;

use crate::common::*;

fn small() -> std::path::PathBuf {
    fixture("snapshots/small.snapshot")
}

fn restore(env: &Env, snapshot: &std::path::Path) -> assert_cmd::Command {
    let mut c = env.cmd();
    c.args([
        "--yes",
        "restore",
        "--poll-max",
        "100ms",
        "--wait-timeout",
        "20s",
        "--snapshot",
    ])
    .arg(snapshot);
    c
}

fn the_run(env: &Env) -> checkpoint::RunState {
    let runs = checkpoint::list_runs(&env.config_dir.join("runs"));
    assert_eq!(runs.len(), 1, "expected exactly one run");
    runs.into_iter().next().unwrap().1.unwrap()
}

/// The comparison recorded by the run's post-verify stage, whatever its status.
fn comparison(env: &Env) -> Comparison {
    let st = the_run(env);
    let pv = st.stage("post-verify").expect("a post-verify stage");
    let out: PostVerifyOutputs = serde_json::from_value(pv.outputs.clone()).unwrap();
    out.comparison.expect("post-verify compared")
}

/// `talos-dr inspect FILE -o json`: objects per resource (as inspect names it).
fn inspect_counts(env: &Env, file: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    let out = env
        .cmd()
        .arg("inspect")
        .arg(file)
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    stdout_json(&out)["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["resource"].as_str().unwrap().to_owned(),
                g["objects"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_restore_compares_equal_to_what_inspect_counts() {
    let env = Env::with_kube();
    env.disaster();
    let out = restore(&env, &small()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = comparison(&env);
    assert!(c.passed, "{c:?}");
    assert_eq!(
        c.snapshot,
        small(),
        "the comparison reads the file that was restored"
    );
    assert_eq!(c.revision, 4);
    let counts = inspect_counts(&env, &small());
    for k in KINDS.iter() {
        let row = c.kinds.iter().find(|r| r.resource == k.resource).unwrap();
        let name = match k.etcd_group {
            Some(g) => format!("{}.{g}", k.resource),
            None => k.resource.to_owned(),
        };
        let expected = counts.get(&name).copied().unwrap_or(0);
        assert_eq!(
            row.snapshot, expected,
            "{}: snapshot count vs inspect",
            k.resource
        );
        if !k.churn {
            // The live API serves the restored data: every checked kind matches, object by object.
            assert_eq!(row.live, expected, "{}: live count", k.resource);
            assert_eq!((row.missing, row.extra), (0, 0), "{}", k.resource);
        }
    }
    // The fixture's objects of the checked kinds: 3 deployments, 4 services, 10 configmaps,
    // 10 secrets.
    let checked: u64 = c
        .kinds
        .iter()
        .filter(|k| !k.churn)
        .map(|k| k.snapshot)
        .sum();
    assert_eq!(checked, 27);
    // Pods come from the simulated kubelets, not the snapshot: churn, shown and not judged.
    let pods = c.kinds.iter().find(|k| k.resource == "pods").unwrap();
    assert!(
        pods.churn && pods.snapshot == 28 && pods.live > 0,
        "{pods:?}"
    );
    assert!(stdout.contains("post-restore comparison with"), "{stdout}");
    assert!(
        stdout.contains("deployments                 3          3"),
        "{stdout}"
    );
    // `runs show` has the typed outputs.
    let id = the_run(&env).run_id;
    let show = env.cmd().args(["runs", "show", &id]).output().unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("\"comparison\"") && text.contains("\"passed\": true"),
        "{text}"
    );
}

#[test]
fn a_packed_snapshot_is_compared_through_its_unpacked_copy() {
    let env = Env::with_kube();
    env.disaster();
    let packed = env.tmp.path().join("small.snapshot.zst");
    let st = std::process::Command::new("zstd")
        .args(["-q", "-o"])
        .arg(&packed)
        .arg(small())
        .status()
        .unwrap();
    assert!(st.success());
    let out = restore(&env, &packed).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = comparison(&env);
    assert!(c.passed, "{c:?}");
    assert_ne!(c.snapshot, packed, "not the compressed file itself");
    assert!(
        c.snapshot.starts_with(&env.config_dir),
        "{}",
        c.snapshot.display()
    );
    assert_eq!(c.revision, 4);
    assert_eq!(
        c.kinds
            .iter()
            .filter(|k| !k.churn)
            .map(|k| k.live)
            .sum::<u64>(),
        27
    );
}

#[test]
fn objects_that_vanish_fail_post_verify_and_resume_compares_again() {
    let env = Env::with_kube();
    env.disaster();
    // small.snapshot holds one deployment in `monitoring` (`inspect --resource deployments
    // --names`): the API stops listing it, as if it were lost after the restore.
    env.edit_cluster(|c| c.faults.objects_vanish = vec!["deployments/monitoring".into()]);
    let out = restore(&env, &small())
        .args(["-o", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("deployments in monitoring: 1 (deployment-00000003)"),
        "{stderr}"
    );
    assert!(stderr.contains("resume"), "{stderr}");
    let st = the_run(&env);
    assert_eq!(st.stage("post-verify").unwrap().status, StageStatus::Failed);
    let c = comparison(&env);
    assert!(!c.passed);
    assert_eq!(c.missing.len(), 1, "{c:?}");
    assert_eq!(c.missing[0].resource, "deployments");
    assert_eq!(c.missing[0].namespace.as_deref(), Some("monitoring"));
    let row = c
        .kinds
        .iter()
        .find(|k| k.resource == "deployments")
        .unwrap();
    assert_eq!((row.snapshot, row.live, row.missing), (3, 2, 1));
    // The `-o json` report carries it too.
    let doc = stdout_json(&out);
    assert_eq!(doc["report"]["comparison"]["passed"], false, "{doc}");
    assert_eq!(
        doc["report"]["comparison"]["missing"][0]["names"][0],
        "deployment-00000003"
    );

    // The objects are back: resume runs post-verify again and it passes.
    env.edit_cluster(|c| c.faults.objects_vanish.clear());
    let out = env.cmd().args(["--yes", "resume"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(comparison(&env).passed);
    assert_eq!(
        env.calls_of(&["bootstrap"]).len(),
        1,
        "resume did not restore again"
    );
}

#[test]
fn churn_kinds_that_differ_never_fail() {
    let env = Env::with_kube();
    env.disaster();
    env.edit_cluster(|c| {
        c.faults.objects_vanish = vec![
            "events".into(),
            "leases".into(),
            "replicasets".into(),
            "endpoints".into(),
        ]
    });
    let out = restore(&env, &small()).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = comparison(&env);
    assert!(c.passed && c.missing.is_empty(), "{c:?}");
    for (resource, in_snapshot) in [
        ("events", 15),
        ("leases", 2),
        ("replicasets", 7),
        ("endpoints", 4),
    ] {
        let row = c.kinds.iter().find(|k| k.resource == resource).unwrap();
        assert!(row.churn);
        assert_eq!(
            (row.snapshot, row.live, row.missing),
            (in_snapshot, 0, in_snapshot),
            "{resource}"
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("events (churn)"), "{stdout}");
}

#[test]
fn a_drill_report_shows_the_comparison() {
    let env = Env::with_kube();
    env.disaster();
    let out = env
        .cmd()
        .args(["--yes", "drill", "--poll-max", "100ms", "--snapshot"])
        .arg(small())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = the_run(&env);
    let dir = env.config_dir.join("runs").join(&st.run_id);
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("## Post-restore comparison: passed"), "{md}");
    assert!(md.contains("| deployments | 3 | 3 | 0 | 0 |"), "{md}");
    assert!(md.contains("| secrets | 10 | 10 | 0 | 0 |"), "{md}");
    assert!(md.contains("| pods (churn) | 28 |"), "{md}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["comparison"]["passed"], true);
    assert_eq!(json["comparison"]["revision"], 4);
}
