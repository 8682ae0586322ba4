//! `restore`, `drill`, `resume` and `runs` end to end: the real recovery procedure against the
//! simulated cluster, with the recorded talosctl calls as the evidence.

use std::time::{Duration, Instant};

use predicates::prelude::*;
use talos_dr::engine::checkpoint::{self, RunStatus, StageStatus};

use crate::common::*;

const CP: [&str; 3] = ["10.5.0.11", "10.5.0.12", "10.5.0.13"];
const RESET: [&str; 4] = [
    "reset",
    "--graceful=false",
    "--reboot",
    "--system-labels-to-wipe=EPHEMERAL",
];

fn snapshot() -> String {
    fixture("snapshots/small.snapshot").display().to_string()
}

fn restore(env: &Env) -> assert_cmd::Command {
    assert_cmd::Command::from_std(restore_std(env))
}

fn restore_std(env: &Env) -> std::process::Command {
    let mut c = env.std_cmd();
    c.args([
        "--yes",
        "restore",
        "--poll-max",
        "100ms",
        "--wait-timeout",
        "20s",
        "--snapshot",
    ])
    .arg(snapshot());
    c
}

fn resume(env: &Env) -> assert_cmd::Command {
    let mut c = env.cmd();
    c.args(["--yes", "resume"]);
    c
}

/// The only run's checkpoint.
fn the_run(env: &Env) -> checkpoint::RunState {
    let runs = checkpoint::list_runs(&env.config_dir.join("runs"));
    assert_eq!(runs.len(), 1, "expected exactly one run");
    runs.into_iter().next().unwrap().1.unwrap()
}

/// The recovery invariants, from the recorded calls and the simulator's own record.
fn assert_recovered_once(env: &Env) {
    let resets = env.calls_of(&["reset"]);
    for call in &resets {
        let words = strip_globals(call);
        assert_eq!(words, RESET, "reset must use exactly the recovery flags");
        assert_eq!(node_args(call).len(), 1, "one node per reset call");
    }
    let mut reset_nodes: Vec<String> = resets.iter().map(|c| node_args(c)[0].clone()).collect();
    reset_nodes.sort();
    assert_eq!(
        reset_nodes, CP,
        "every control-plane node reset exactly once, no worker"
    );
    let boots = env.calls_of(&["bootstrap"]);
    assert_eq!(boots.len(), 1, "exactly one bootstrap call");
    assert_eq!(node_args(&boots[0]).len(), 1);
    let cluster = env.cluster();
    assert_eq!(
        cluster.bootstrapped.len(),
        1,
        "exactly one node bootstrapped"
    );
    for (node, state) in &cluster.bootstrap_saw[0] {
        assert_eq!(state, "Preparing", "{node} was not Preparing at bootstrap");
    }
    for n in cluster
        .nodes
        .iter()
        .filter(|n| n.machine_type == "controlplane")
    {
        assert_eq!(n.etcd.state, "Running", "{}", n.address);
    }
}

#[test]
fn restore_runs_the_real_procedure_and_reports() {
    let env = Env::with_kube();
    env.disaster();
    let out = restore(&env).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_recovered_once(&env);

    // Post-verify: health on one node with the node sets pinned; the real kubectl ran.
    let health = env.calls_of(&["health"]);
    let last = health.last().unwrap();
    assert_eq!(node_args(last).len(), 1);
    assert!(last.iter().any(|a| a == "--worker-nodes"));
    let st = the_run(&env);
    assert_eq!(st.status, RunStatus::Succeeded);
    let pv = st
        .data::<talos_dr::stages::post_verify::PostVerifyOutputs>()
        .unwrap()
        .expect("post-verify succeeded");
    assert!(pv.kubernetes.checked, "{pv:?}");
    assert_eq!(pv.kubernetes.nodes.unwrap().ready, 5);
    // Every node was tried before anything was reset; the damaged data gave nothing restorable.
    let pre = st
        .data::<talos_dr::stages::pre_restore_snapshot::PreRestoreOutputs>()
        .unwrap()
        .expect("the salvage ran");
    assert_eq!(pre.salvaged.len(), 3, "{pre:?}");
    assert!(pre.salvaged.iter().all(|s| !s.valid), "{pre:?}");
    assert!(pre.path.is_none() && !pre.newer_than_snapshot);
    assert_eq!(env.calls_of(&["etcd", "snapshot"]).len(), 3);
    assert_eq!(env.calls_of(&["cp"]).len(), 3);

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("recovery time:"), "{stdout}");
    let report = env
        .config_dir
        .join("runs")
        .join(&st.run_id)
        .join("report.md");
    let md = std::fs::read_to_string(report).unwrap();
    assert!(md.contains("| etcd-recover | succeeded |"), "{md}");
    assert!(md.contains("Bootstrapped from the snapshot: 10.5.0.11"));
    // The event log has every stage transition and every talosctl call.
    let events = std::fs::read_to_string(
        env.config_dir
            .join("runs")
            .join(&st.run_id)
            .join("events.jsonl"),
    )
    .unwrap();
    let events: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |t: &str| events.iter().filter(|e| e["type"] == t).count();
    assert_eq!(count("stage_started"), 5, "every stage but the skipped one");
    assert_eq!(count("stage_finished"), 6);
    let calls: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "external_call")
        .filter_map(|e| e["data"]["command"].as_str())
        .collect();
    assert_eq!(
        calls.len(),
        env.calls().len(),
        "one event per talosctl call"
    );
    assert_eq!(
        calls.iter().filter(|c| c.contains(" bootstrap ")).count(),
        1
    );
    // The checkpoint is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(
        env.config_dir
            .join("runs")
            .join(&st.run_id)
            .join("state.json"),
    )
    .unwrap()
    .permissions()
    .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn healthy_cluster_saves_current_state_first() {
    let env = Env::new();
    restore(&env).assert().code(0);
    let st = the_run(&env);
    let pre = st.stage("pre-restore-snapshot").unwrap();
    assert_eq!(pre.status, StageStatus::Succeeded);
    let path = pre.outputs["path"].as_str().unwrap();
    assert!(
        talos_dr::snapshot::verify::verify_file(std::path::Path::new(path))
            .unwrap()
            .valid
    );
    assert_recovered_once(&env);
}

#[test]
fn etcd_failing_after_bootstrap_fails_with_the_nodes_message() {
    let env = Env::new();
    env.disaster();
    env.edit_cluster(|c| {
        c.faults.bootstrap_failure = Some("expected sha256 [1 2 3], got [4 5 6]".into());
    });
    restore(&env)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "etcd on 10.5.0.11 failed after bootstrap",
        ))
        .stderr(predicate::str::contains(
            "expected sha256 [1 2 3], got [4 5 6]",
        ))
        .stderr(predicate::str::contains("resume"));
    let st = the_run(&env);
    assert_eq!(st.status, RunStatus::Failed);
    let rec = st.stage("etcd-recover").unwrap();
    assert_eq!(rec.status, StageStatus::Failed);
    assert!(rec.error.as_deref().unwrap().contains("expected sha256"));
    assert_eq!(env.calls_of(&["bootstrap"]).len(), 1);
}

#[test]
fn a_node_that_never_prepares_times_out_by_name_and_nothing_is_bootstrapped() {
    let env = Env::new();
    env.disaster();
    env.edit_cluster(|c| c.faults.never_preparing = vec!["10.5.0.12".into()]);
    env.cmd()
        .args([
            "--yes",
            "restore",
            "--poll-max",
            "100ms",
            "--wait-timeout",
            "2s",
            "--snapshot",
        ])
        .arg(snapshot())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("did not reach Preparing"))
        .stderr(predicate::str::contains("10.5.0.12: Waiting"));
    assert!(env.calls_of(&["bootstrap"]).is_empty());
    assert!(env.cluster().bootstrapped.is_empty());
}

#[test]
fn no_tty_and_no_yes_stops_with_exit_5_before_any_reset() {
    let env = Env::new();
    env.disaster();
    env.cmd()
        .args(["restore", "--snapshot"])
        .arg(snapshot())
        .assert()
        .code(5)
        .stderr(predicate::str::contains("needs a confirmation"))
        .stderr(predicate::str::contains("--yes"));
    assert!(env.calls_of(&["reset"]).is_empty());
    let st = the_run(&env);
    assert_eq!(
        st.stage("preflight").unwrap().status,
        StageStatus::Succeeded
    );
    assert_ne!(
        st.stage("etcd-recover").unwrap().status,
        StageStatus::Succeeded
    );
    // Confirming later continues from there.
    resume(&env).assert().code(0);
    assert_recovered_once(&env);
}

#[test]
fn sigkill_right_after_bootstrap_was_issued_never_bootstraps_twice() {
    let env = Env::new();
    env.disaster();
    env.edit_cluster(|c| c.faults.bootstrap_delay_ms = 1500);
    let mut child = restore_std(&env).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.calls_of(&["bootstrap"]).is_empty() {
        assert!(Instant::now() < deadline, "bootstrap never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The call is in flight: the simulated talosctl child keeps going, as a real one would.
    child.kill().unwrap();
    child.wait().unwrap();
    let st = the_run(&env);
    assert_eq!(
        st.stage("etcd-recover").unwrap().status,
        StageStatus::Running
    );
    assert!(st.stage("etcd-recover").unwrap().outputs["bootstrap"]["node"].is_string());

    resume(&env)
        .assert()
        .code(0)
        .stderr(predicate::str::contains(
            "bootstrap was already issued on 10.5.0.11",
        ));
    assert_recovered_once(&env);
    assert_eq!(the_run(&env).status, RunStatus::Succeeded);
}

#[test]
fn a_crash_between_any_two_stages_resumes_to_completion() {
    for stage in [
        "preflight",
        "pre-restore-snapshot",
        "proxmox-check",
        "etcd-recover",
        "post-verify",
    ] {
        let env = Env::new();
        env.disaster();
        let out = restore(&env)
            .env(talos_dr::engine::run::ENV_CRASH_AFTER, stage)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            None,
            "{stage}: the process should have crashed"
        );
        let st = the_run(&env);
        let status = st.stage(stage).unwrap().status;
        assert!(
            matches!(status, StageStatus::Succeeded | StageStatus::Skipped),
            "{stage}: {status:?}"
        );
        resume(&env).assert().code(0);
        assert_recovered_once(&env);
        assert_eq!(the_run(&env).status, RunStatus::Succeeded, "{stage}");
    }
}

#[test]
fn ctrl_c_saves_the_checkpoint_and_resume_finishes() {
    let env = Env::new();
    env.disaster();
    env.edit_cluster(|c| c.timing.reset_ms = 3000);
    let mut child = restore_std(&env).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.calls_of(&["reset"]).len() < 3 {
        assert!(Instant::now() < deadline, "resets never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let st = the_run(&env);
    assert_eq!(st.status, RunStatus::Interrupted);
    assert_eq!(
        st.stage("etcd-recover").unwrap().status,
        StageStatus::Running
    );
    resume(&env).assert().code(0);
    assert_recovered_once(&env);
}

#[test]
fn dry_run_prints_every_call_and_changes_nothing() {
    let env = Env::new();
    env.cmd()
        .args(["restore", "--dry-run", "--snapshot"])
        .arg(snapshot())
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "-n 10.5.0.12 reset --graceful=false --reboot --system-labels-to-wipe=EPHEMERAL",
        ))
        .stdout(predicate::str::contains(
            "-n 10.5.0.11 bootstrap --recover-from=",
        ))
        .stdout(predicate::str::contains("(exactly once)"))
        .stdout(predicate::str::contains("   10.5.0.13   EPHEMERAL\n"));
    assert!(!env.config_dir.join("runs").exists());
    // Nothing but reads of the ETCD volumes.
    let calls = env.calls();
    assert_eq!(calls.len(), 3);
    assert!(
        calls
            .iter()
            .all(|c| strip_globals(c) == ["get", "volumestatus", "ETCD", "-o", "json"])
    );
}

#[test]
fn invalid_snapshot_is_refused_with_exit_3_before_anything() {
    let env = Env::new();
    let bad = env.tmp.path().join("bad.snapshot");
    let mut bytes = std::fs::read(fixture("snapshots/small.snapshot")).unwrap();
    bytes.truncate(60_000);
    std::fs::write(&bad, bytes).unwrap();
    env.cmd()
        .args(["--yes", "restore", "--snapshot"])
        .arg(&bad)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("cannot be restored"));
    assert!(env.calls().is_empty());
}

#[test]
fn changed_playbook_is_not_resumed_without_force() {
    let env = Env::new();
    env.disaster();
    env.cmd()
        .args(["restore", "--snapshot"])
        .arg(snapshot())
        .assert()
        .code(5);
    let dir = env.config_dir.join("playbooks");
    std::fs::create_dir_all(&dir).unwrap();
    let text = talos_dr::engine::playbook::BUILT_IN[0]
        .1
        .replace("timeout = \"20m\"", "timeout = \"25m\"");
    std::fs::write(dir.join("restore.toml"), text).unwrap();
    resume(&env)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("changed since run"));
    env.cmd()
        .args(["--yes", "resume", "--force"])
        .assert()
        .code(0);
    assert_recovered_once(&env);
}

#[test]
fn older_checkpoint_schema_still_loads_and_resumes() {
    let env = Env::new();
    env.disaster();
    let runs = env.config_dir.join("runs").join("20261101-020000-restore");
    std::fs::create_dir_all(&runs).unwrap();
    let text = std::fs::read_to_string(fixture("state/v1-restore-after-preflight.json"))
        .unwrap()
        .replace("@SNAPSHOT@", &snapshot());
    std::fs::write(runs.join("state.json"), text).unwrap();
    env.cmd()
        .args(["runs", "show", "20261101-020000-restore"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("preflight (preflight): Succeeded"));
    // The v1 file has no fingerprint of today's playbook.
    env.cmd()
        .args(["--yes", "resume", "--force"])
        .assert()
        .code(0);
    // preflight was done in the old run; it is not repeated.
    assert!(env.calls_of(&["get", "machinetype"]).is_empty());
    assert_recovered_once(&env);
}

/// A checkpoint written by the release before typed stage data (schema 2), killed while the
/// resets were in flight: the typed records read it, and the resume finishes with one bootstrap.
#[test]
fn schema_2_checkpoint_with_resets_in_flight_resumes_to_one_bootstrap() {
    let env = Env::new();
    env.disaster();
    let id = "20261202-112443-restore";
    let runs = env.config_dir.join("runs").join(id);
    std::fs::create_dir_all(&runs).unwrap();
    let text = std::fs::read_to_string(fixture("state/v2-restore-resets-in-flight.json"))
        .unwrap()
        .replace("@SNAPSHOT@", &snapshot());
    std::fs::write(runs.join("state.json"), text).unwrap();
    // Its plan fingerprint is today's restore playbook's: no --force needed.
    resume(&env).assert().code(0);
    // preflight was done in the old run and is not repeated; the in-flight resets are checked
    // against the world (etcd still Failed: the reset never took) and sent once more.
    assert!(env.calls_of(&["get", "machinetype"]).is_empty());
    assert_recovered_once(&env);
    let st = the_run(&env);
    assert_eq!(st.schema, checkpoint::SCHEMA);
    assert_eq!(st.status, RunStatus::Succeeded);
    let recover = st.stage("etcd-recover").unwrap();
    assert_eq!(recover.attempt, 2);
    assert_eq!(recover.outputs["bootstrap"]["node"], "10.5.0.11");
}

/// The typed confirmation of `etcd-recover` is the stage's own floor: an override playbook that
/// drops `confirm = "typed"` still stops for it.
#[test]
fn an_override_playbook_cannot_remove_the_typed_confirmation() {
    let env = Env::new();
    env.disaster();
    let dir = env.config_dir.join("playbooks");
    std::fs::create_dir_all(&dir).unwrap();
    let text = talos_dr::engine::playbook::BUILT_IN[0]
        .1
        .replace("confirm = \"typed\"\n", "");
    assert!(!text.contains("typed"));
    std::fs::write(dir.join("restore.toml"), text).unwrap();
    env.cmd()
        .args(["playbooks", "show", "restore"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "etcd-recover (etcd-recover) [confirm: typed",
        ))
        .stdout(predicate::str::contains("(destructive)"));
    env.cmd()
        .args(["restore", "--snapshot"])
        .arg(snapshot())
        .assert()
        .code(5)
        .stderr(predicate::str::contains(
            "stage etcd-recover needs a confirmation",
        ));
    assert!(env.calls_of(&["reset"]).is_empty());
    assert!(env.cluster().bootstrapped.is_empty());
}

/// A playbook whose stage reads another stage's outputs that no earlier stage makes is refused
/// when it is loaded, before anything runs, naming the file and the stage.
#[test]
fn an_override_playbook_without_the_stage_a_stage_reads_is_refused_before_anything() {
    let env = Env::new();
    env.disaster();
    let dir = env.config_dir.join("playbooks");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("restore.toml");
    std::fs::write(
        &path,
        "name = \"restore\"\nsummary = \"no preflight\"\n\n[[stages]]\nid = \"wipe\"\nkind = \"etcd-recover\"\n",
    )
    .unwrap();
    restore(&env)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(path.display().to_string()))
        .stderr(predicate::str::contains("\"wipe\" (etcd-recover)"))
        .stderr(predicate::str::contains("`preflight`"));
    assert!(env.calls().is_empty());
}

#[test]
fn drill_confirms_every_stage_and_writes_a_report() {
    let env = Env::new();
    env.disaster();
    env.cmd()
        .args(["drill", "--snapshot"])
        .arg(snapshot())
        .assert()
        .code(5)
        .stderr(predicate::str::contains(
            "stage preflight needs a confirmation",
        ));
    assert!(env.calls().is_empty());
    env.cmd().args(["--yes", "resume"]).assert().code(0);
    let st = the_run(&env);
    assert_eq!(st.playbook, "drill");
    let dir = env.config_dir.join("runs").join(&st.run_id);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["bootstrap_node"], "10.5.0.11");
    assert_eq!(report["stages"].as_array().unwrap().len(), 5);
    assert!(report["total_ms"].as_u64().unwrap() > 0);
}

#[test]
fn runs_lists_and_abandon_stops_resume_from_picking_it() {
    let env = Env::new();
    env.disaster();
    env.cmd()
        .args(["restore", "--snapshot"])
        .arg(snapshot())
        .assert()
        .code(5);
    let id = the_run(&env).run_id;
    env.cmd()
        .arg("runs")
        .assert()
        .code(0)
        .stdout(predicate::str::contains(&id))
        .stdout(predicate::str::contains("etcd-recover"));
    env.cmd().args(["runs", "abandon", &id]).assert().code(0);
    resume(&env)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no unfinished run"));
}

#[test]
fn a_failed_reset_is_retried_on_resume_and_bootstrap_still_happens_once() {
    let env = Env::new();
    env.disaster();
    env.edit_cluster(|c| c.faults.reset_fails = vec!["10.5.0.12".into()]);
    restore(&env)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("reset failed on"))
        .stderr(predicate::str::contains("10.5.0.12"));
    assert!(env.calls_of(&["bootstrap"]).is_empty());
    let st = the_run(&env);
    let resets = &st.stage("etcd-recover").unwrap().outputs["resets"];
    assert!(resets["10.5.0.12"]["failed_at"].is_string(), "{resets}");
    assert!(resets["10.5.0.11"]["done_at"].is_string(), "{resets}");

    // The node is fixed: resume resets it (again), not the others, and bootstraps once.
    env.edit_cluster(|c| c.faults.reset_fails.clear());
    resume(&env).assert().code(0);
    let per_node = |n: &str| {
        env.calls_of(&["reset"])
            .iter()
            .filter(|c| node_args(c) == [n])
            .count()
    };
    assert_eq!(per_node("10.5.0.12"), 2);
    assert_eq!(per_node("10.5.0.11"), 1);
    assert_eq!(per_node("10.5.0.13"), 1);
    assert_eq!(env.calls_of(&["bootstrap"]).len(), 1);
    assert_eq!(env.cluster().bootstrapped.len(), 1);
}

#[test]
fn a_bootstrap_refused_as_not_available_yet_is_retried_and_happens_once() {
    let env = Env::new();
    env.disaster();
    env.edit_cluster(|c| c.faults.bootstrap_refusals = 1);
    restore(&env)
        .assert()
        .code(0)
        .stderr(predicate::str::contains("bootstrap is not available yet"));
    // Two calls (one refused before anything happened), one bootstrap.
    assert_eq!(env.calls_of(&["bootstrap"]).len(), 2);
    assert_eq!(env.cluster().bootstrapped, vec!["10.5.0.11"]);
}
