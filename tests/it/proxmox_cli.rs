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
