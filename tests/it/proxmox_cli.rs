//! The Proxmox side from the CLI: `profile discover`, `profile check` and the restore's
//! `proxmox-check` stage, against the simulated PVE API over pinned HTTPS.

use predicates::prelude::*;
use talos_dr::engine::checkpoint::{self, StageStatus};

use crate::common::*;

#[test]
fn discover_maps_every_node_and_writes_only_with_write() {
    let env = Env::with_pve(false);
    let profile = env.config_dir.join("profile.toml");
    let before = std::fs::read_to_string(&profile).unwrap();
    env.cmd()
        .args(["profile", "discover"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("pve2/102"))
        .stdout(predicate::str::contains("equals the node's hostname"))
        .stdout(predicate::str::contains("pass --write"));
    assert_eq!(std::fs::read_to_string(&profile).unwrap(), before);

    env.cmd()
        .args(["profile", "discover", "--write"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("wrote 5 VM mappings"));
    let text = std::fs::read_to_string(&profile).unwrap();
    // The user's comment survives; the mapping loads.
    assert!(text.starts_with("# A simulated cluster"));
    let p = talos_dr::profile::parse(&text).unwrap();
    let vm = p.nodes[1].vm.as_ref().unwrap();
    assert_eq!((vm.node.as_str(), vm.vmid), ("pve2", 102));
    assert!(env.cluster().pve.violations.is_empty());
}

#[test]
fn discover_says_which_node_it_cannot_map() {
    let env = Env::with_pve(false);
    env.edit_cluster(|c| {
        let vm = c.pve.vms.iter_mut().find(|v| v.vmid == 104).unwrap();
        vm.name = "worker-old".into();
        vm.agent = false;
        vm.ipconfig0 = None;
    });
    env.cmd()
        .args(["profile", "discover"])
        .assert()
        .code(4)
        .stdout(predicate::str::contains("1 node(s) could not be mapped"))
        .stdout(predicate::str::contains("10.5.0.21"));
}

#[test]
fn profile_check_reports_a_locked_vm() {
    let env = Env::with_pve(true);
    env.cmd()
        .args(["profile", "check"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("API answers"))
        .stdout(predicate::str::contains("vm pve1/101"));
    env.edit_cluster(|c| {
        c.pve.locked.insert(101, "backup".into());
    });
    env.cmd()
        .args(["profile", "check"])
        .assert()
        .code(4)
        .stdout(predicate::str::contains("backup"));
}

#[test]
fn restore_snapshots_the_control_plane_vms_once_even_across_a_crash() {
    let env = Env::with_pve(true);
    env.disaster();
    let out = env
        .cmd()
        .args(["--yes", "restore", "--poll-max", "100ms", "--snapshot"])
        .arg(fixture("snapshots/small.snapshot"))
        .env(talos_dr::engine::run::ENV_CRASH_AFTER, "proxmox-check")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        None,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snaps = |c: &talos_dr::sim::state::Cluster| -> Vec<(u32, usize)> {
        c.pve
            .vms
            .iter()
            .map(|v| (v.vmid, v.snapshots.len()))
            .collect()
    };
    assert_eq!(
        snaps(&env.cluster()),
        vec![(101, 1), (102, 1), (103, 1), (104, 0), (105, 0)],
        "one snapshot per control-plane VM, none of the workers"
    );
    env.cmd().args(["--yes", "resume"]).assert().code(0);
    assert_eq!(snaps(&env.cluster())[..3], [(101, 1), (102, 1), (103, 1)]);
    let (_, st) = checkpoint::list_runs(&env.config_dir.join("runs")).remove(0);
    let st = st.unwrap();
    assert_eq!(
        st.stage("proxmox-check").unwrap().status,
        StageStatus::Succeeded
    );
    let name = st.stage("proxmox-check").unwrap().outputs["snapname"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(name.starts_with("talosdr-restore-"), "{name}");
    assert!(env.cluster().pve.violations.is_empty());
}

#[test]
fn a_locked_control_plane_vm_stops_the_restore_before_anything_destructive() {
    let env = Env::with_pve(true);
    env.disaster();
    env.edit_cluster(|c| {
        c.pve.locked.insert(102, "backup".into());
    });
    env.cmd()
        .args(["--yes", "restore", "--snapshot"])
        .arg(fixture("snapshots/small.snapshot"))
        .assert()
        .code(4)
        .stderr(predicate::str::contains("102"))
        .stderr(predicate::str::contains("backup"));
    assert!(env.calls_of(&["reset"]).is_empty());
}

fn tasks_of(env: &Env, kind: &str) -> Vec<talos_dr::sim::state::Task> {
    env.cluster()
        .pve
        .tasks
        .into_iter()
        .filter(|t| t.task_type == kind)
        .collect()
}

#[test]
fn pre_upgrade_makes_one_set_of_every_vm_and_rollback_restores_it() {
    let env = Env::with_pve(true);
    env.edit_cluster(|c| c.pve.task_duration_ms = 300);
    env.cmd()
        .args(["--yes", "pre-upgrade", "--label", "before-1-10"])
        .assert()
        .code(0);
    let cluster = env.cluster();
    let names: Vec<String> = cluster
        .pve
        .vms
        .iter()
        .flat_map(|v| v.snapshots.iter().map(|s| s.name.clone()))
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n == &names[0] && n.starts_with("talosdr-before-1-10-"))
    );
    assert!(env.config_dir.join("sets/before-1-10.json").is_file());
    assert!(env.config_dir.join("sets/before-1-10.snapshot").is_file());

    let out = env
        .cmd()
        .args(["-o", "json", "sets", "show", "before-1-10"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc = stdout_json(&out);
    assert!(doc.to_string().matches(&names[0]).count() >= 5, "{doc}");

    // Rollback needs a typed confirmation: without a terminal and --yes nothing happens.
    env.cmd()
        .args(["rollback", "--label", "before-1-10"])
        .assert()
        .code(5);
    assert!(tasks_of(&env, "qmrollback").is_empty());
    env.cmd()
        .args([
            "--yes",
            "rollback",
            "--label",
            "before-1-10",
            "--poll-max",
            "100ms",
        ])
        .assert()
        .code(0);
    let rollbacks = tasks_of(&env, "qmrollback");
    assert_eq!(rollbacks.len(), 5);
    assert!(
        rollbacks
            .iter()
            .all(|t| t.exitstatus.as_deref() == Some("OK"))
    );
    assert!(env.cluster().pve.violations.is_empty());
}

#[test]
fn pre_upgrade_refuses_an_unhealthy_cluster_and_snapshots_nothing() {
    let env = Env::with_pve(true);
    env.edit_cluster(|c| c.faults.health_error = Some("kubelet is not healthy".into()));
    env.cmd()
        .args(["--yes", "pre-upgrade", "--label", "x1"])
        .assert()
        .code(4)
        .stderr(predicate::str::contains("health"));
    assert!(tasks_of(&env, "qmsnapshot").is_empty());
}

#[test]
fn zfs_refuses_rolling_back_past_a_newer_snapshot_and_says_why() {
    let env = Env::with_pve(true);
    env.edit_cluster(|c| {
        c.pve.task_duration_ms = 200;
        c.pve.zfs = true;
    });
    env.cmd()
        .args(["--yes", "pre-upgrade", "--label", "first"])
        .assert()
        .code(0);
    // Someone took a snapshot of VM 101 by hand after the set: ZFS can only roll back to the
    // newest one.
    env.edit_cluster(|c| {
        let vm = c.pve.vms.iter_mut().find(|v| v.vmid == 101).unwrap();
        let mut manual = vm.snapshots[0].clone();
        manual.name = "manual-after".into();
        manual.snaptime += 60;
        manual.parent = Some(vm.snapshots[0].name.clone());
        vm.snapshots.push(manual);
        vm.parent = Some("manual-after".into());
    });
    env.cmd()
        .args([
            "--yes",
            "rollback",
            "--label",
            "first",
            "--poll-max",
            "100ms",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains("most recent snapshot"));
    // The hand-made snapshot is not talos-dr's and is never touched.
    let c = env.cluster();
    let vm = c.pve.vms.iter().find(|v| v.vmid == 101).unwrap();
    assert!(vm.snapshots.iter().any(|s| s.name == "manual-after"));
}

#[test]
fn pre_upgrade_copies_the_sets_etcd_snapshot_off_site() {
    let env = Env::with_pve(true);
    env.edit_cluster(|c| c.pve.task_duration_ms = 200);
    let remote = env.tmp.path().join("nfs");
    std::fs::create_dir_all(&remote).unwrap();
    crate::pack::append_profile(
        &env,
        &format!("\n[offsite]\nurl = \"file://{}\"\n", remote.display()),
    );
    env.cmd()
        .args(["--yes", "pre-upgrade", "--label", "offsite-set"])
        .assert()
        .code(0);
    let mut names: Vec<String> = walk(&remote);
    names.sort();
    assert!(
        names.iter().any(|n| n.ends_with("offsite-set.snapshot")),
        "{names:?}"
    );
    // The copy is byte-identical to the local one.
    let local = std::fs::read(env.config_dir.join("sets/offsite-set.snapshot")).unwrap();
    let copy = names
        .iter()
        .find(|n| n.ends_with("offsite-set.snapshot"))
        .unwrap();
    assert_eq!(std::fs::read(copy).unwrap(), local);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}
