//! `restore` through the disasters that actually happen (issue 12), with the real binary against
//! the simulator, whose semantics follow Talos (not talos-dr). Each test checks the end state the
//! simulator records: every included node's etcd Running in the one restored cluster, holding the
//! data the user chose, exactly one bootstrap, and no split-cluster violation.

use predicates::prelude::*;
use talos_dr::sim::demo::{DemoEnv, Disaster};
use talos_dr::sim::state::Cluster;
use talos_dr::snapshot::verify::verify_file;

use crate::common::*;

const CP: [&str; 3] = ["10.5.0.11", "10.5.0.12", "10.5.0.13"];

fn small() -> String {
    fixture("snapshots/small.snapshot").display().to_string()
}

fn demo_env(env: &Env) -> DemoEnv {
    DemoEnv {
        dir: env.tmp.path().to_path_buf(),
        config_dir: env.config_dir.clone(),
        state: env.state.clone(),
        bin_dir: env.bin_dir.clone(),
        kubectl_shim: None,
    }
}

/// The environment before the disaster (`prepare`), then the disaster itself.
fn strike(env: &Env, d: Disaster) {
    d.prepare(&demo_env(env)).unwrap();
    env.edit_cluster(|c| d.apply(c));
}

fn restore(env: &Env, rest: &[&str]) -> assert_cmd::Command {
    assert_cmd::Command::from_std(restore_std(env, rest))
}

fn restore_std(env: &Env, rest: &[&str]) -> std::process::Command {
    let mut c = env.std_cmd();
    c.args([
        "--yes",
        "restore",
        "--poll-max",
        "100ms",
        "--wait-timeout",
        "20s",
        "--health-timeout",
        "30s",
    ])
    .args(rest);
    c
}

/// The revision of the data a node's etcd runs on.
fn revision_on(c: &Cluster, node: &str) -> i64 {
    let n = c.nodes.iter().find(|n| n.address == node).unwrap();
    let data = n
        .etcd
        .data
        .clone()
        .or_else(|| c.snapshot_source.clone())
        .expect("the node has data");
    verify_file(&data).unwrap().status.unwrap().revision
}

/// One bootstrap call, accepted, no violation, and every node in `nodes` Running in the newest
/// cluster at `revision`.
fn assert_one_restored_cluster(env: &Env, nodes: &[&str], revision: i64) {
    assert_eq!(env.calls_of(&["bootstrap"]).len(), 1);
    assert_restored_cluster(env, nodes, revision);
}

/// As [`assert_one_restored_cluster`], for runs whose refused bootstrap calls were retried:
/// exactly one accepted.
fn assert_restored_cluster(env: &Env, nodes: &[&str], revision: i64) {
    let c = env.cluster();
    assert!(c.etcd_violations.is_empty(), "{:?}", c.etcd_violations);
    assert_eq!(c.bootstrapped.len(), 1, "exactly one bootstrap");
    for node in nodes {
        let n = c.nodes.iter().find(|n| n.address == *node).unwrap();
        assert_eq!(n.etcd.state, "Running", "{node}");
        assert_eq!(
            n.etcd.generation, c.etcd_generation,
            "{node} in the new cluster"
        );
        assert_eq!(revision_on(&c, node), revision, "{node}");
    }
    let mut members = c
        .etcd_members
        .get(&c.etcd_generation)
        .cloned()
        .unwrap_or_default();
    members.sort();
    assert_eq!(members, nodes, "members of the restored cluster");
}

#[test]
fn quorum_loss_asks_before_discarding_the_survivors_newer_data_and_from_survivor_restores_it() {
    let env = Env::new();
    strike(&env, Disaster::QuorumLoss);
    let backup_rev = verify_file(std::path::Path::new(&small()))
        .unwrap()
        .status
        .unwrap()
        .revision;
    // Without a terminal (and without --yes), the question stops the run before any reset.
    env.cmd()
        .args(["restore", "--poll-max", "100ms", "--snapshot", &small()])
        .assert()
        .code(5)
        .stderr(predicate::str::contains(
            "node 10.5.0.11 still holds revision 162",
        ))
        .stderr(predicate::str::contains(format!(
            "newer than the snapshot being restored (revision {backup_rev})"
        )))
        .stderr(predicate::str::contains("restore --from-survivor"));
    assert!(env.calls_of(&["reset"]).is_empty());
    assert!(env.cluster().bootstrapped.is_empty());

    restore(&env, &["--from-survivor"])
        .assert()
        .code(0)
        .stderr(predicate::str::contains(
            "stream copy from 10.5.0.11, revision 162",
        ));
    // The streamed copy (with its trailer) was uploaded: no --recover-skip-hash-check.
    let boot = &env.calls_of(&["bootstrap"])[0];
    assert!(
        boot.iter()
            .any(|a| a.starts_with("--recover-from=") && a.contains("/salvage/"))
    );
    assert!(!boot.iter().any(|a| a == "--recover-skip-hash-check"));
    assert_one_restored_cluster(&env, &CP, 162);
}

#[test]
fn from_survivor_with_nothing_valid_stops_with_exit_4_before_any_reset() {
    let env = Env::new();
    env.disaster(); // every node's data is damaged: nothing restorable to salvage
    restore(&env, &["--from-survivor"])
        .assert()
        .code(4)
        .stderr(predicate::str::contains("no valid copy could be salvaged"))
        .stderr(predicate::str::contains("nothing was reset"));
    assert!(env.calls_of(&["reset"]).is_empty());
    // `salvage` on its own says the same, changes nothing, and lists every node.
    env.cmd()
        .arg("salvage")
        .assert()
        .code(4)
        .stdout(predicate::str::contains("NODE"))
        .stdout(predicate::str::contains("10.5.0.13"));
    assert!(env.calls_of(&["reset"]).is_empty());
}

#[test]
fn salvage_lists_every_node_and_marks_the_survivors_copy_valid() {
    let env = Env::new();
    strike(&env, Disaster::QuorumLoss);
    let out = env.cmd().args(["-o", "json", "salvage"]).assert().code(0);
    let doc: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let rows = doc["salvaged"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(doc["best"]["node"], "10.5.0.11");
    assert_eq!(doc["best"]["method"], "stream");
    assert_eq!(doc["best"]["revision"], 162);
    let path = doc["best"]["path"].as_str().unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "salvaged copies hold every Secret");
    assert!(path.starts_with(env.config_dir.join("salvage").to_str().unwrap()));
    assert!(env.calls_of(&["reset"]).is_empty() && env.cluster().bootstrapped.is_empty());
}

#[test]
fn a_lost_host_stops_the_restore_before_any_change_and_exclude_restores_without_it() {
    let env = Env::with_kube();
    strike(&env, Disaster::HostLost);
    restore(&env, &["--snapshot", &small()])
        .assert()
        .code(4)
        .stderr(predicate::str::contains(
            "control-plane node 10.5.0.13 does not answer",
        ))
        .stderr(predicate::str::contains("--exclude 10.5.0.13"))
        .stderr(predicate::str::contains("nothing was changed"));
    assert!(env.calls_of(&["reset"]).is_empty());
    // Not a node of the profile, or every control-plane node: usage errors.
    restore(&env, &["--snapshot", &small(), "--exclude", "10.9.9.9"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not a control-plane node"));
    restore(
        &env,
        &[
            "--snapshot",
            &small(),
            "--exclude",
            CP[0],
            "--exclude",
            CP[1],
            "--exclude",
            CP[2],
        ],
    )
    .assert()
    .code(2)
    .stderr(predicate::str::contains("leaves no control-plane node"));

    restore(&env, &["--snapshot", &small(), "--exclude", "10.5.0.13"])
        .assert()
        .code(0)
        .stderr(predicate::str::contains(
            "deleted Kubernetes Node object talos-cp-3",
        ))
        .stderr(predicate::str::contains("To bring it back"));
    // The lost node was never reset or bootstrapped, and health left it out.
    assert!(
        env.calls_of(&["reset"])
            .iter()
            .all(|c| node_args(c) != ["10.5.0.13"])
    );
    let health = env.calls_of(&["health"]);
    let last = health.last().unwrap();
    let cps = last
        .windows(2)
        .find(|w| w[0] == "--control-plane-nodes")
        .map(|w| w[1].clone())
        .unwrap();
    assert_eq!(cps, "10.5.0.11,10.5.0.12");
    assert_one_restored_cluster(&env, &CP[..2], 4);
    assert!(
        env.cluster()
            .kube
            .deleted_nodes
            .contains(&"talos-cp-3".to_owned())
    );
}

#[test]
fn a_vip_endpoint_is_never_used_every_call_goes_to_its_node() {
    let env = Env::new();
    strike(&env, Disaster::VipEndpoint);
    restore(&env, &["--snapshot", &small()])
        .assert()
        .code(0)
        .stderr(predicate::str::contains(
            "endpoints (10.5.0.10) are not control-plane node addresses",
        ));
    for call in env.calls() {
        let nodes = node_args(&call);
        if nodes.len() == 1 && CP.contains(&nodes[0].as_str()) {
            let e = call.windows(2).find(|w| w[0] == "-e").map(|w| w[1].clone());
            assert_eq!(e.as_deref(), Some(nodes[0].as_str()), "{call:?}");
        }
    }
    assert_one_restored_cluster(&env, &CP, 4);
}

#[test]
fn talos_1_14_etcd_partitions_are_wiped_with_etcd_too() {
    let env = Env::new();
    strike(&env, Disaster::EtcdVolume);
    restore(&env, &["--snapshot", &small()]).assert().code(0);
    let resets = env.calls_of(&["reset"]);
    assert_eq!(resets.len(), 3, "one reset per node");
    for r in &resets {
        assert!(
            r.iter()
                .any(|a| a == "--system-labels-to-wipe=EPHEMERAL,ETCD"),
            "{r:?}"
        );
    }
    assert_one_restored_cluster(&env, &CP, 4);
}

#[test]
fn a_node_preparing_on_stale_data_is_reset_again_and_never_bootstrapped_or_left_to_join() {
    let env = Env::new();
    strike(&env, Disaster::StalePreparing);
    restore(&env, &["--snapshot", &small()])
        .assert()
        .code(0)
        .stderr(predicate::str::contains(
            "etcd shows Preparing on 10.5.0.12, but /var/lib/etcd/member is still there",
        ));
    let per_node = |n: &str| {
        env.calls_of(&["reset"])
            .iter()
            .filter(|c| node_args(c) == [n])
            .count()
    };
    // Preparing at first (so not reset then), reset once when its data was found; the others
    // once each.
    for n in CP {
        assert_eq!(per_node(n), 1, "{n}");
    }
    assert!(
        env.calls_of(&["ls"]).len() >= 3,
        "every node checked before the bootstrap"
    );
    assert_one_restored_cluster(&env, &CP, 4);
    let boot = &env.calls_of(&["bootstrap"])[0];
    assert_eq!(node_args(boot), ["10.5.0.11"]);
}

#[test]
fn dry_run_shows_the_salvage_the_exclusions_and_the_wipe_check() {
    let env = Env::new();
    env.cmd()
        .args([
            "restore",
            "--dry-run",
            "--snapshot",
            &small(),
            "--exclude",
            "10.5.0.13",
        ])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "etcd snapshot runs/<run-id>/salvage/10.5.0.11.snapshot",
        ))
        .stdout(predicate::str::contains("10.5.0.13: left out (--exclude)"))
        .stdout(predicate::str::contains("get volumestatus ETCD"))
        .stdout(predicate::str::contains("ls /var/lib/etcd/member"))
        .stdout(predicate::str::contains("   10.5.0.11   EPHEMERAL\n"));
    // It only read the included nodes' ETCD volumes.
    let mut read: Vec<String> = env.calls().iter().flat_map(|c| node_args(c)).collect();
    read.sort();
    assert_eq!(read, ["10.5.0.11", "10.5.0.12"]);
    assert!(env.calls_of(&["reset"]).is_empty());
}

#[test]
fn dry_run_on_talos_1_14_with_etcd_partitions_says_each_reset_wipes_etcd_too() {
    let env = Env::new();
    strike(&env, Disaster::EtcdVolume);
    env.cmd()
        .args(["restore", "--dry-run", "--snapshot", &small()])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("   10.5.0.12   EPHEMERAL,ETCD\n"));
    assert!(env.calls_of(&["reset"]).is_empty());
}

/// SIGKILL while the reset of the stale node is in flight: `resume` finishes
/// with one bootstrap and no split cluster.
#[test]
fn sigkill_during_a_stale_data_reset_resumes_to_one_restored_cluster() {
    use std::time::{Duration, Instant};
    let env = Env::new();
    strike(&env, Disaster::StalePreparing);
    let mut cmd = restore_std(&env, &["--snapshot", &small()]);
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // 10.5.0.12 showed Preparing at first, so its only reset is the stale-data one.
    while env
        .calls_of(&["reset"])
        .iter()
        .all(|c| node_args(c) != ["10.5.0.12"])
    {
        assert!(
            Instant::now() < deadline,
            "the stale node was never reset again"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(env.cluster().bootstrapped.is_empty());
    env.cmd().args(["--yes", "resume"]).assert().code(0);
    assert_one_restored_cluster(&env, &CP, 4);
}

/// `snapshot` uses the talosconfig's endpoints while they answer, and talks to the nodes directly
/// when they do not (a VIP that died with quorum).
#[test]
fn snapshot_falls_back_to_the_nodes_when_the_vip_endpoint_is_down() {
    let env = Env::new();
    Disaster::VipEndpoint.prepare(&demo_env(&env)).unwrap();
    // Healthy: the VIP answers, so the calls go through it.
    env.cmd().arg("snapshot").assert().code(0);
    let first = env.calls_of(&["etcd", "snapshot"]);
    assert_eq!(first.len(), 1);
    assert!(!first[0].iter().any(|a| a == "-e"), "{:?}", first[0]);
    // Quorum lost, one survivor still runs: the VIP is gone, the survivor still streams.
    env.edit_cluster(|c| Disaster::QuorumLoss.apply(c));
    // (To its own file: the first one may have the same second in its scheduled name.)
    let out = env.tmp.path().join("survivor.snapshot");
    env.cmd()
        .args(["snapshot", "--skip-health", "--output-file"])
        .arg(&out)
        .assert()
        .code(0)
        .stderr(predicate::str::contains("talking to the nodes directly"));
    let calls = env.calls_of(&["etcd", "snapshot"]);
    let last = calls.last().unwrap();
    let e = last.windows(2).find(|w| w[0] == "-e").map(|w| w[1].clone());
    assert_eq!(e.as_deref(), Some("10.5.0.11"), "{last:?}");
    assert_eq!(verify_file(&out).unwrap().status.unwrap().revision, 162);
}

/// A bootstrap refused with "not ready yet" (here: the clock not in sync after the reboot) is
/// tried again every second on the same node, changes nothing while refused, and once the node
/// is ready the restore ends with exactly one accepted bootstrap.
#[test]
fn a_not_ready_bootstrap_is_retried_on_the_same_node_until_accepted_once() {
    use std::time::{Duration, Instant};
    let env = Env::new();
    env.disaster();
    env.edit_cluster(|c| c.node_mut(CP[0]).unwrap().time_unsynced = true);
    // To a file, not a pipe: nothing reads the output until the run ends.
    let log = env.tmp.path().join("restore.stderr");
    let mut child = restore_std(&env, &["--snapshot", &small()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.calls_of(&["bootstrap"]).len() < 3 {
        assert!(Instant::now() < deadline, "the bootstrap was not retried");
        assert!(child.try_wait().unwrap().is_none(), "restore ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Refused every time so far: nothing was bootstrapped.
    assert!(env.cluster().bootstrapped.is_empty());
    // Under the simulator's lock: the run is changing the state file too.
    Cluster::update(&env.state, |c| {
        c.node_mut(CP[0]).unwrap().time_unsynced = false;
    })
    .unwrap();
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("time is not in sync yet"), "{err}");
    // The third call may have been in flight when the clock was fixed, and accepted: two
    // refusals at least, then one accepted (checked below).
    let boots = env.calls_of(&["bootstrap"]);
    assert!(boots.len() >= 3, "{boots:?}");
    assert!(
        boots.iter().all(|b| node_args(b) == [CP[0]]),
        "only the chosen node is ever bootstrapped: {boots:?}"
    );
    assert_restored_cluster(&env, &CP, 4);
}
