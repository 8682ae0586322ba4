//! `talos-dr demo`: the whole product on the simulated cluster, and each injected fault failing
//! at the right stage with the right exit code.

use predicates::prelude::*;

use crate::common::BIN;

fn demo(dir: &std::path::Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(BIN);
    c.arg("demo")
        .arg("--dir")
        .arg(dir)
        .env("NO_COLOR", "1")
        .env_remove("TALOS_DR_PROFILE")
        .env_remove("TALOS_DR_CONFIG_DIR")
        .env_remove("TALOS_DR_TALOSCTL")
        .env_remove("TALOS_DR_SIM_STATE");
    c
}

#[test]
fn demo_runs_everything_and_reports_every_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let out = demo(tmp.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for stage in [
        "preflight",
        "pre-restore-snapshot",
        "proxmox-check",
        "etcd-recover",
        "post-verify",
    ] {
        assert!(stdout.contains(stage), "summary lacks {stage}:\n{stdout}");
    }
    assert!(stdout.contains("recovery time:"));
    assert!(
        stdout.contains("post-restore comparison: passed (27 objects of the checked kinds"),
        "{stdout}"
    );
    assert!(stdout.contains("wrote 5 VM mappings"), "{stdout}");
    assert!(stdout.contains("certificate pinned"));
    assert!(stdout.contains("SIMULATED"));
    assert!(stdout.contains("the real kubectl"), "{stdout}");
    assert!(stdout.contains("--yes implied"));
    // It ends with the doctor's view of the restored cluster.
    assert!(
        stdout.contains("`talos-dr status`\nPROFILE   STATUS"),
        "{stdout}"
    );
    // A real snapshot was taken and verified, and the restore checked Kubernetes with kubectl.
    let backups = tmp.path().join("profile/etcd-backups");
    assert_eq!(talos_dr::snapshot::store::list(&backups).unwrap().len(), 1);
    assert!(stderr.contains("5/5 nodes Ready"), "{stderr}");
    // Reusing the directory is refused rather than mixing two demos.
    demo(tmp.path()).assert().code(2);
}

#[test]
fn demo_json_is_one_document_with_every_step() {
    let tmp = tempfile::tempdir().unwrap();
    let out = demo(tmp.path()).args(["-o", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["steps"].as_array().unwrap().len(), 4);
    // The pre-upgrade set: every VM of the cluster, one common snapshot name.
    let set = &doc["steps"][2]["output"];
    assert_eq!(set["status"], "succeeded", "{set}");
    assert_eq!(doc["report"]["bootstrap_node"], "10.5.0.11");
    // The control-plane VMs were snapshotted through the pinned HTTPS Proxmox API before the
    // restore, and every request the client made was valid per the PVE schema.
    let vms = doc["report"]["vm_snapshots"].as_array().unwrap();
    assert_eq!(vms.len(), 3, "{doc}");
    assert!(vms.iter().all(|v| v["exitstatus"] == "OK"));
    assert_eq!(doc["pve_violations"], 0);
    assert_eq!(doc["report"]["undo"].as_array().unwrap().len(), 3);
    // The restore compared the live cluster with the snapshot it restored.
    let cmp = &doc["report"]["comparison"];
    assert_eq!(cmp["passed"], true, "{cmp}");
    assert!(cmp["kinds"].as_array().unwrap().len() >= 9, "{cmp}");
    // Then status: the fresh snapshot is green; no timer and no drill are red, and the demo
    // still succeeds.
    let status = &doc["status"]["profiles"][0];
    let level = |name: &str| {
        status["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .map(|c| c["level"].clone())
    };
    assert_eq!(level("recovery-point"), Some("green".into()), "{status}");
    assert_eq!(level("talos-version"), Some("green".into()), "{status}");
    assert_eq!(level("drill"), Some("red".into()), "{status}");
}

#[test]
fn each_fault_fails_the_right_step_with_the_right_code() {
    let cases = [
        ("unhealthy", 4, "the cluster is not healthy"),
        ("stream-cut", 1, "error reading"),
        ("etcd-fails", 1, "failed after bootstrap"),
        ("never-prepares", 1, "10.5.0.12"),
        ("vm-locked", 4, "locked (backup)"),
        (
            "objects-lost",
            1,
            "deployments in monitoring: 1 (deployment-00000003)",
        ),
    ];
    for (fault, code, message) in cases {
        let tmp = tempfile::tempdir().unwrap();
        demo(tmp.path())
            .args(["--fault", fault])
            .assert()
            .code(code)
            .stderr(predicate::str::contains(message))
            .stdout(predicate::str::contains(format!(
                "stopped with exit code {code}"
            )));
    }
}

/// Every disaster of `demo --disaster` ends in one healthy restored cluster: exit 0, a clean
/// Proxmox API log, no split etcd cluster, and the right way through (survivor data, exclusion,
/// direct calls, ETCD label, a second reset).
#[test]
fn each_disaster_ends_in_one_restored_cluster() {
    let cases = [
        ("vip-endpoint", "are not control-plane node addresses"),
        ("quorum-loss", "revision 162"),
        ("host-lost", "joined etcd as member"),
        ("etcd-volume", "resetting EPHEMERAL,ETCD on 10.5.0.11"),
        ("stale-preparing", "/var/lib/etcd/member is still there"),
    ];
    for (disaster, evidence) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let out = demo(tmp.path())
            .args(["--disaster", disaster])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{disaster}: {stdout}\n{stderr}");
        assert!(
            stdout.contains("result: everything worked"),
            "{disaster}: {stdout}"
        );
        assert!(
            stderr.contains(evidence),
            "{disaster}: no {evidence:?} in\n{stderr}"
        );
        assert!(!stdout.contains("SPLIT") && !stdout.contains("INVALID"));
        let state = talos_dr::sim::state::Cluster::load(&tmp.path().join("cluster.json")).unwrap();
        // A lost host with quorum kept is a rebuild, not a restore: nothing is bootstrapped.
        let bootstraps = usize::from(disaster != "host-lost");
        assert_eq!(
            state.bootstrapped.len(),
            bootstraps,
            "{disaster}: bootstraps"
        );
        assert!(state.etcd_violations.is_empty(), "{disaster}");
    }
}
