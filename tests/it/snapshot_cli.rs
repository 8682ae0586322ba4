//! `snapshot`, `list`, `prune`, `verify` and profile commands end to end, against the simulator.

use std::os::unix::fs::PermissionsExt;

use jiff::{SignedDuration, Timestamp};
use predicates::prelude::*;

use crate::common::*;

fn small() -> std::path::PathBuf {
    fixture("snapshots/small.snapshot")
}

fn snapshot_files(env: &Env) -> Vec<String> {
    env.backup_files()
        .into_iter()
        .filter(|f| f.ends_with(".snapshot"))
        .collect()
}

#[test]
fn snapshot_happy_path_stores_a_verified_private_file_with_sidecar() {
    let env = Env::new();
    let out = env.cmd().args(["-o", "json", "snapshot"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = stdout_json(&out);
    assert_eq!(doc["schema"], 1);

    // Exactly one snapshot and its sidecar, nothing else (no temp or .part files).
    let files = env.backup_files();
    assert_eq!(files.len(), 2, "{files:?}");
    let name = &files[0];
    assert!(
        talos_dr::snapshot::store::parse_name(name).is_some(),
        "{name}"
    );
    assert_eq!(files[1], format!("{name}.json"));
    let path = env.backups().join(name);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(small()).unwrap()
    );

    // The sidecar tells the truth about the file.
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.backups().join(&files[1])).unwrap()).unwrap();
    assert_eq!(sidecar["sha256"], sha256_hex(&path));
    assert_eq!(sidecar["valid"], true);
    assert_eq!(sidecar["node"], "10.5.0.11");
    assert_eq!(sidecar["talos_version"], "v1.9.5");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("snapshots/small.status.json")).unwrap())
            .unwrap();
    assert_eq!(sidecar["status"], expected);

    // talosctl was called the safe way: explicit talosconfig, exactly one node.
    let snaps = env.calls_of(&["etcd", "snapshot"]);
    assert_eq!(snaps.len(), 1);
    assert_eq!(node_args(&snaps[0]), vec!["10.5.0.11"]);
    assert!(snaps[0].iter().any(|a| a == "--talosconfig"));
    let health = env.calls_of(&["health"]);
    assert_eq!(health.len(), 1);
    assert_eq!(node_args(&health[0]), vec!["10.5.0.11"]);
    let h = &health[0];
    let cp = h.iter().position(|a| a == "--control-plane-nodes").unwrap();
    assert_eq!(h[cp + 1], "10.5.0.11,10.5.0.12,10.5.0.13");
}

#[test]
fn unhealthy_cluster_takes_no_snapshot_and_exits_4() {
    let env = Env::new();
    env.edit_cluster(|c| c.faults.health_error = Some("kubelet is not healthy".into()));
    env.cmd()
        .arg("snapshot")
        .assert()
        .code(4)
        .stderr(predicate::str::contains("not healthy"))
        .stderr(predicate::str::contains("--skip-health"));
    assert!(snapshot_files(&env).is_empty());
    assert!(env.calls_of(&["etcd", "snapshot"]).is_empty());

    // --skip-health takes it anyway.
    env.cmd()
        .args(["snapshot", "--skip-health"])
        .assert()
        .code(0);
    assert_eq!(snapshot_files(&env).len(), 1);
}

#[test]
fn first_answering_control_plane_node_is_used() {
    let env = Env::new();
    env.edit_cluster(|c| c.nodes[0].reachable = false);
    env.cmd()
        .args(["snapshot", "--skip-health"])
        .assert()
        .code(0);
    let snaps = env.calls_of(&["etcd", "snapshot"]);
    assert_eq!(node_args(&snaps[0]), vec!["10.5.0.12"]);
}

#[test]
fn cut_stream_stores_nothing_and_exits_1() {
    let env = Env::new();
    env.edit_cluster(|c| c.faults.snapshot_cut_after = Some(40_000));
    env.cmd()
        .arg("snapshot")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error reading"))
        .stderr(predicate::str::contains("10.5.0.11"));
    assert!(env.backup_files().is_empty(), "{:?}", env.backup_files());
}

#[test]
fn zero_byte_result_stores_nothing() {
    let env = Env::new();
    env.edit_cluster(|c| c.faults.snapshot_empty = true);
    env.cmd()
        .arg("snapshot")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "sha256 checksum not found (size 0)",
        ));
    assert!(env.backup_files().is_empty());
}

#[test]
fn corrupted_stream_is_rejected_and_never_pushes_out_good_snapshots() {
    let env = Env::new();
    // Three good snapshots, all past retention: the newest keep_last (3) must stay.
    plant_days_ago(&env, &[10, 11, 12]);
    env.edit_cluster(|c| c.faults.snapshot_bitflip = true);
    env.cmd()
        .arg("snapshot")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("failed verification"))
        .stderr(predicate::str::contains("nothing was stored"));
    assert_eq!(snapshot_files(&env).len(), 3);
    assert!(!env.backup_files().iter().any(|f| f.starts_with('.')));
}

#[test]
fn snapshot_prunes_after_success_keeping_the_newest_valid() {
    let env = Env::new();
    let planted = plant_days_ago(&env, &[8, 9, 10, 11]);
    // Not ours: never touched.
    std::fs::write(env.backups().join("notes.txt"), "keep me").unwrap();
    std::fs::write(env.backups().join("etcd-manual.snapshot"), "x").unwrap();

    env.cmd()
        .arg("snapshot")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("2 deleted"));
    let files = snapshot_files(&env);
    // New one + the 8- and 9-day-old ones (keep_last = 3), plus the foreign file.
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(planted[0].exists() && planted[1].exists());
    assert!(!planted[2].exists() && !planted[3].exists());
    assert!(
        !env.backups()
            .join(format!(
                "{}.json",
                planted[3].file_name().unwrap().to_string_lossy()
            ))
            .exists()
    );
    assert!(env.backups().join("notes.txt").exists());
    assert!(env.backups().join("etcd-manual.snapshot").exists());
}

#[test]
fn no_prune_leaves_old_snapshots() {
    let env = Env::new();
    let old = plant_days_ago(&env, &[20, 21, 22, 23]);
    env.cmd().args(["snapshot", "--no-prune"]).assert().code(0);
    assert!(old.iter().all(|p| p.exists()));
    assert_eq!(snapshot_files(&env).len(), 5);
}

#[test]
fn prune_dry_run_explains_and_deletes_nothing() {
    let env = Env::new();
    plant_days_ago(&env, &[1, 20, 21, 22]);
    let before = env.backup_files();
    env.cmd()
        .args(["prune", "--dry-run", "--keep-last", "2"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("would delete"))
        .stdout(predicate::str::contains("past retention_days = 7"))
        .stdout(predicate::str::contains("newest valid #2 (keep_last = 2)"))
        .stdout(predicate::str::contains("2 would be deleted, 2 kept"));
    assert_eq!(env.backup_files(), before);

    let out = env
        .cmd()
        .args(["-o", "json", "prune", "--keep-last", "2"])
        .output()
        .unwrap();
    let doc = stdout_json(&out);
    assert_eq!(doc["deleted"].as_array().unwrap().len(), 2);
    assert_eq!(snapshot_files(&env).len(), 2);

    // keep_last = 0 would delete everything: refused by the parser.
    env.cmd()
        .args(["prune", "--keep-last", "0"])
        .assert()
        .code(2);
}

#[test]
fn invalid_snapshots_do_not_count_towards_keep_last() {
    let env = Env::new();
    let now = Timestamp::now();
    let good = plant_days_ago(&env, &[30, 31]);
    // Three newer but damaged files (truncated), without trustworthy sidecars.
    for d in [20, 21, 22] {
        let p = plant_snapshot(
            &env,
            &small(),
            now - SignedDuration::from_hours(24 * d),
            true,
        );
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..50_000]).unwrap();
    }
    env.cmd()
        .args(["prune", "--keep-last", "2"])
        .assert()
        .code(0);
    assert!(good.iter().all(|p| p.exists()));
    assert_eq!(snapshot_files(&env).len(), 2);
}

#[test]
fn overlapping_runs_are_refused_with_exit_4() {
    let env = Env::new();
    env.edit_cluster(|c| c.faults.snapshot_delay_ms = 2500);
    let mut first = env
        .std_cmd()
        .args(["snapshot", "--skip-health"])
        .spawn()
        .unwrap();
    // Wait until the first run is streaming (it holds the lock by then).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while env.calls_of(&["etcd", "snapshot"]).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "first run never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    env.cmd()
        .args(["snapshot", "--skip-health"])
        .assert()
        .code(4)
        .stderr(predicate::str::contains(
            "another talos-dr run holds the lock",
        ))
        .stderr(predicate::str::contains("running `snapshot`"));
    assert_eq!(first.wait().unwrap().code(), Some(0));
    assert_eq!(snapshot_files(&env).len(), 1);
}

#[test]
fn bad_profile_names_file_and_key() {
    let env = Env::new();
    let p = env.config_dir.join("profile.toml");
    let text = std::fs::read_to_string(&p).unwrap() + "\n[backup]\nretention_dayz = 3\n";
    std::fs::write(&p, text).unwrap();
    env.cmd()
        .arg("list")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("profile.toml"))
        .stderr(predicate::str::contains("retention_dayz"));
}

#[test]
fn missing_profile_and_no_selection_are_usage_errors() {
    let env = Env::new();
    env.cmd()
        .env_remove("TALOS_DR_CONFIG_DIR")
        .arg("list")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no profile selected"));
    env.cmd()
        .env_remove("TALOS_DR_CONFIG_DIR")
        .env("TALOS_DR_HOME", env.tmp.path())
        .args(["-p", "nope", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("profile init nope"));
}

#[test]
fn missing_talosctl_is_a_configuration_error() {
    let env = Env::new();
    env.cmd()
        .env("PATH", "/usr/bin:/bin")
        .arg("snapshot")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("talosctl not found"));
    env.cmd()
        .env("TALOS_DR_TALOSCTL", "/nonexistent/talosctl")
        .arg("snapshot")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("TALOS_DR_TALOSCTL"));
    assert!(snapshot_files(&env).is_empty());
}

#[test]
fn list_shows_snapshots_newest_first() {
    let env = Env::new();
    let now = Timestamp::now();
    plant_snapshot(&env, &small(), now - SignedDuration::from_hours(50), true);
    env.cmd().args(["snapshot", "--no-prune"]).assert().code(0);
    let out = env.cmd().args(["-o", "json", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc = stdout_json(&out);
    let snaps = doc["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    assert!(snaps[0]["taken_at"].as_str() > snaps[1]["taken_at"].as_str());
    assert_eq!(snaps[0]["valid"], true);
    assert_eq!(snaps[0]["revision"], 4);
    assert_eq!(snaps[0]["total_key"], 120);
    env.cmd()
        .args(["list", "--verify"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("REVISION"))
        .stdout(predicate::str::contains("2d 2h"));
}

#[test]
fn verify_reports_like_etcdctl_and_exits_3_on_damage() {
    let env = Env::new();
    let out = env
        .cmd()
        .args(["-o", "json", "verify"])
        .arg(small())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc = stdout_json(&out);
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("snapshots/small.status.json")).unwrap())
            .unwrap();
    assert_eq!(doc["files"][0]["status"], expected);
    assert_eq!(doc["files"][0]["trailer"], "ok");
    assert_eq!(doc["files"][0]["valid"], true);

    let bad = env.tmp.path().join("bad.snapshot");
    let mut bytes = std::fs::read(small()).unwrap();
    bytes.truncate(100_000);
    std::fs::write(&bad, bytes).unwrap();
    env.cmd()
        .arg("verify")
        .arg(small())
        .arg(&bad)
        .assert()
        .code(3)
        .stdout(predicate::str::contains("INVALID"))
        .stdout(predicate::str::contains("truncated"));
    env.cmd()
        .arg("verify")
        .arg(env.tmp.path().join("missing.snapshot"))
        .assert()
        .code(3)
        .stdout(predicate::str::contains("cannot read the file"));
}

#[test]
fn profile_init_discovers_nodes_through_talosctl() {
    let env = Env::new();
    let home = env.tmp.path().join("home");
    env.cmd()
        .env_remove("TALOS_DR_CONFIG_DIR")
        .env("TALOS_DR_HOME", &home)
        .args(["profile", "init", "lab", "--talosconfig"])
        .arg(env.config_dir.join("talosconfig"))
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "3 control-plane and 2 worker nodes",
        ));
    let text = std::fs::read_to_string(home.join("lab/profile.toml")).unwrap();
    let p = talos_dr::profile::parse(&text).unwrap();
    assert_eq!(p.nodes.len(), 5);
    assert_eq!(p.nodes[0].hostname.as_deref(), Some("talos-cp-1"));
    // The new profile works at once.
    env.cmd()
        .env_remove("TALOS_DR_CONFIG_DIR")
        .env("TALOS_DR_HOME", &home)
        .args(["-p", "lab", "snapshot"])
        .assert()
        .code(0);
    // No accidental overwrite.
    env.cmd()
        .env_remove("TALOS_DR_CONFIG_DIR")
        .env("TALOS_DR_HOME", &home)
        .args(["profile", "init", "lab", "--control-plane", "10.0.0.1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--force"));
}

#[test]
fn profile_init_falls_back_to_flags_when_the_cluster_is_unreachable() {
    let env = Env::new();
    env.edit_cluster(|c| c.nodes.iter_mut().for_each(|n| n.reachable = false));
    let dir = env.tmp.path().join("p2");
    let tc = env.config_dir.join("talosconfig");
    env.cmd()
        .arg("--config-dir")
        .arg(&dir)
        .args(["profile", "init", "lab", "--talosconfig"])
        .arg(&tc)
        .assert()
        .code(4)
        .stderr(predicate::str::contains("--control-plane"));
    env.cmd()
        .arg("--config-dir")
        .arg(&dir)
        .args([
            "profile",
            "init",
            "lab",
            "--control-plane",
            "10.0.0.1,10.0.0.2",
            "--workers",
            "10.0.0.9",
            "--talosconfig",
        ])
        .arg(&tc)
        .assert()
        .code(0);
    let p = talos_dr::profile::parse(&std::fs::read_to_string(dir.join("profile.toml")).unwrap())
        .unwrap();
    assert_eq!(p.nodes.len(), 3);
}

#[test]
fn profile_check_reports_each_node() {
    let env = Env::new();
    env.cmd()
        .args(["profile", "check"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("node 10.5.0.13"))
        .stdout(predicate::str::contains("profile is ready"));
    env.edit_cluster(|c| c.nodes[1].reachable = false);
    env.cmd()
        .args(["profile", "check"])
        .assert()
        .code(4)
        .stdout(predicate::str::contains("FAIL   node 10.5.0.12"));
}

#[test]
fn help_documents_exit_codes_and_completions_work() {
    let env = Env::new();
    env.cmd()
        .arg("--help")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("130  interrupted"));
    env.cmd()
        .args(["completions", "bash"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("talos-dr"));
}

#[test]
fn bit_rot_that_keeps_the_size_never_pushes_out_good_snapshots() {
    let env = Env::new();
    let now = Timestamp::now();
    let good = plant_days_ago(&env, &[30, 31]);
    // Newer snapshots whose sidecars say "valid", rotten on disk since (same size).
    let rotten: Vec<_> = [20, 21]
        .iter()
        .map(|d| {
            let p = plant_snapshot(
                &env,
                &small(),
                now - SignedDuration::from_hours(24 * d),
                true,
            );
            let mut bytes = std::fs::read(&p).unwrap();
            let i = bytes.len() - 40;
            bytes[i] ^= 0x10;
            std::fs::write(&p, bytes).unwrap();
            p
        })
        .collect();
    env.cmd()
        .args(["prune", "--keep-last", "2"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("failed verification"));
    assert!(
        good.iter().all(|p| p.exists()),
        "the good snapshots must stay"
    );
    assert!(rotten.iter().all(|p| !p.exists()));
}

/// The simulated talosctl streams like a network (a few chunks over about a third of a
/// second), so `snapshot` verifies the file while it grows.
fn paced(env: &Env) {
    env.edit_cluster(|c| c.timing.snapshot_bytes_per_s = 400_000);
}

#[test]
fn paced_stream_is_verified_while_it_arrives_and_stored_as_verify_sees_it() {
    let env = Env::new();
    paced(&env);
    let out = env
        .cmd()
        .args(["-o", "json", "snapshot"])
        .env("RUST_LOG", "talos_dr=debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("verified_while_streaming=true"),
        "the follower did not verify the stream: {stderr}"
    );
    let files = snapshot_files(&env);
    assert_eq!(files.len(), 1, "{files:?}");
    let stored = env.backups().join(&files[0]);
    let sidecar: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.backups().join(format!("{}.json", files[0]))).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["sha256"], sha256_hex(&stored));
    assert_eq!(sidecar["valid"], true);
    assert_eq!(sidecar["trailer"], "ok");
    // What the sidecar says the snapshot holds is what reading the stored file finds.
    let report = talos_dr::snapshot::verify::verify_file(&stored).unwrap();
    assert_eq!(
        sidecar["status"],
        serde_json::to_value(report.status).unwrap()
    );
    assert_eq!(sidecar["size"], report.size);
    let (_, contents) = talos_dr::snapshot::xray::read(&stored).unwrap();
    let totals = serde_json::to_value(contents.unwrap().totals()).unwrap();
    assert_eq!(sidecar["objects"], totals);
}

#[test]
fn corrupted_paced_stream_never_reaches_the_backup_dir_or_the_offsite_target() {
    let env = Env::new();
    let target = env.tmp.path().join("offsite");
    let profile = env.config_dir.join("profile.toml");
    let mut text = std::fs::read_to_string(&profile).unwrap();
    text.push_str(&format!(
        "\n[offsite]\nurl = \"file://{}\"\n",
        target.display()
    ));
    std::fs::write(&profile, text).unwrap();
    plant_days_ago(&env, &[10, 11, 12]);
    paced(&env);
    env.edit_cluster(|c| c.faults.snapshot_bitflip = true);
    env.cmd()
        .arg("snapshot")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("failed verification"))
        .stderr(predicate::str::contains(
            "sha256 trailer does not match the content",
        ))
        .stderr(predicate::str::contains("nothing was stored"));
    assert_eq!(snapshot_files(&env).len(), 3, "the good ones stay");
    assert!(!env.backup_files().iter().any(|f| f.starts_with('.')));
    let remote: Vec<_> = std::fs::read_dir(&target)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(remote.is_empty(), "off-site got {remote:?}");
}

#[test]
fn paced_stream_cut_short_stores_nothing() {
    let env = Env::new();
    paced(&env);
    env.edit_cluster(|c| c.faults.snapshot_cut_after = Some(60_000));
    env.cmd()
        .arg("snapshot")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error reading"))
        .stderr(predicate::str::contains("nothing was stored"));
    assert!(env.backup_files().is_empty(), "{:?}", env.backup_files());
    // The machine configs are read while the stream runs, but kept only with a good snapshot.
    assert!(!env.backups().join("configs").exists());
}

#[test]
fn health_runs_once_from_the_picked_node_alongside_the_version_probe() {
    let env = Env::new();
    env.cmd().arg("snapshot").assert().code(0);
    let health = env.calls_of(&["health"]);
    assert_eq!(health.len(), 1, "{health:?}");
    assert_eq!(node_args(&health[0]), vec!["10.5.0.11"]);
    assert_eq!(node_args(&env.calls_of(&["version"])[0]), vec!["10.5.0.11"]);

    // The first node does not answer: the early check from it does not count; the gate runs
    // from the node that was picked (and fails, since the cluster misses a member).
    env.edit_cluster(|c| c.nodes[0].reachable = false);
    env.cmd()
        .arg("snapshot")
        .assert()
        .code(4)
        .stderr(predicate::str::contains(
            "checking cluster health from 10.5.0.12",
        ))
        .stderr(predicate::str::contains("from 10.5.0.11").not());
    let health = env.calls_of(&["health"]);
    assert_eq!(node_args(health.last().unwrap()), vec!["10.5.0.12"]);
}
