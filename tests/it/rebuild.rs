//! Machine-config backups, `rebuild-node` and `restore --rebuild` (issue 13), with the real binary
//! against the simulator: Proxmox VE over HTTPS with schema validation, and a talosctl that
//! follows Talos (maintenance mode, apply-config, etcd membership and the join loop).

use std::os::unix::fs::PermissionsExt;

use predicates::prelude::*;
use talos_dr::sim::state::Cluster;

use crate::common::*;

const CP: [&str; 3] = ["10.5.0.11", "10.5.0.12", "10.5.0.13"];
const LOST: &str = "10.5.0.12";

/// A cluster on Proxmox with backups of every VM, a template on a spare host (`pve4`), DHCP
/// reservations, and one snapshot taken (so every node's config is saved). VM 102 (cp-2) is
/// alone on `pve2`.
fn rebuild_env() -> Env {
    let env = Env::with_pve(true);
    env.edit_cluster(|c| {
        if let Some(w) = c.pve.vms.iter_mut().find(|v| v.vmid == 202) {
            w.node = "pve1".into();
        }
        c.add_rebuild_fixtures(jiff::Timestamp::now().as_second() - 3600);
    });
    env.cmd()
        .args(["snapshot", "--skip-health"])
        .assert()
        .success();
    env
}

fn rebuild(env: &Env, rest: &[&str]) -> assert_cmd::Command {
    let mut c = env.cmd();
    c.args([
        "--yes",
        "rebuild-node",
        "--poll-max",
        "100ms",
        "--wait-timeout",
        "30s",
        "--maintenance-timeout",
        "20s",
    ])
    .args(rest);
    c
}

fn profile_text(env: &Env) -> String {
    std::fs::read_to_string(env.config_dir.join("profile.toml")).unwrap()
}

/// The cluster is whole: every control-plane node runs etcd in the one current cluster, as a
/// voting member, nothing split, and no request broke the PVE schema.
fn assert_whole(c: &Cluster) {
    assert!(c.etcd_violations.is_empty(), "{:?}", c.etcd_violations);
    assert!(c.pve.violations.is_empty(), "{:?}", c.pve.violations);
    let mut members = c.members_of(c.etcd_generation);
    members.sort();
    assert_eq!(members, CP, "etcd members");
    for a in CP {
        let n = c.node(a).unwrap();
        assert!(n.reachable, "{a} answers");
        assert_eq!(n.etcd.state, "Running", "{a}");
        assert!(!n.etcd.learner, "{a} is a voting member");
    }
}

fn vm_of(env: &Env, node: &str) -> (String, u32) {
    let p = talos_dr::profile::parse(&profile_text(env)).unwrap();
    let vm = p
        .nodes
        .iter()
        .find(|n| n.address == node)
        .unwrap()
        .vm
        .clone()
        .unwrap();
    (vm.node, vm.vmid)
}

#[test]
fn snapshot_saves_every_nodes_config_once_and_configs_show_redacts() {
    let env = Env::new();
    env.cmd()
        .args(["snapshot", "--skip-health"])
        .assert()
        .success();
    let dir = env.backups().join("configs");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(
        files.len(),
        5,
        "one config per node (3 control plane, 2 workers)"
    );
    for f in &files {
        let mode = f.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?}", f.path());
    }
    // The sidecar says which file each node had.
    let sidecar = std::fs::read_dir(env.backups())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".snapshot.json"))
        .unwrap();
    let sc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sidecar.path()).unwrap()).unwrap();
    let refs = sc["machine_configs"].as_object().unwrap();
    assert_eq!(refs.len(), 5);
    assert_eq!(refs[LOST]["machine_type"], "controlplane");
    // Unchanged configs are not stored again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.cmd()
        .args(["snapshot", "--skip-health"])
        .assert()
        .success();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 5);

    env.cmd()
        .args(["configs", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains(LOST).and(predicate::str::contains("controlplane")));
    let secret = env.cluster().secrets.secretbox.clone();
    env.cmd()
        .args(["configs", "show", LOST])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("redacted")
                .and(predicate::str::contains(secret.as_str()).not()),
        );
    env.cmd()
        .args(["configs", "show", LOST, "--reveal"])
        .assert()
        .success()
        .stdout(predicate::str::contains(secret.as_str()));
    env.cmd()
        .args(["configs", "show", "10.9.9.9"])
        .assert()
        .code(4)
        .stderr(predicate::str::contains(
            "no saved machine config for node 10.9.9.9",
        ));
}

#[test]
fn configs_are_encrypted_to_the_recipients_and_a_down_node_keeps_its_last_config() {
    let env = Env::new();
    let id = age::x25519::Identity::generate();
    let key = env.config_dir.join("age.key");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&key, id.to_string().expose_secret()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let p = env.config_dir.join("profile.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let text = format!(
        "{text}\n[backup]\nrecipients = [\"{}\"]\nidentity_file = \"{}\"\n",
        id.to_public(),
        key.display()
    );
    std::fs::write(&p, text).unwrap();
    env.cmd()
        .args(["snapshot", "--skip-health"])
        .assert()
        .success();
    let dir = env.backups().join("configs");
    let secret = env.cluster().secrets.secretbox.clone();
    for f in std::fs::read_dir(&dir).unwrap().flatten() {
        let bytes = std::fs::read(f.path()).unwrap();
        assert!(f.file_name().to_string_lossy().ends_with(".yaml.age"));
        assert!(bytes.starts_with(b"age-encryption.org/v1"));
        assert!(!String::from_utf8_lossy(&bytes).contains(&secret));
    }
    env.cmd()
        .args(["configs", "show", LOST, "--reveal"])
        .assert()
        .success()
        .stdout(predicate::str::contains(secret.as_str()));

    // The node goes down: the backup still succeeds, with a warning, and the config read
    // before stands in for it.
    env.edit_cluster(|c| c.node_mut(LOST).unwrap().reachable = false);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.cmd()
        .args(["snapshot", "--skip-health"])
        .assert()
        .success()
        .stderr(predicate::str::contains(format!(
            "machine config of node {LOST} not saved"
        )));
    let out = env
        .cmd()
        .args(["-o", "json", "configs", "list"])
        .output()
        .unwrap();
    let v = stdout_json(&out);
    assert_eq!(v["configs"][LOST]["carried"], true, "{v}");
    assert_eq!(v["missing"].as_array().unwrap().len(), 0);
}

#[test]
fn profile_check_says_when_the_talosconfig_cannot_read_configs() {
    let env = Env::new();
    env.edit_cluster(|c| c.talosconfig_role = "os:etcd:backup".into());
    env.cmd().args(["profile", "check"]).assert().stdout(
        predicate::str::contains("os:admin").and(predicate::str::contains("stored unencrypted")),
    );
    // A backup still succeeds: configs are a warning, not a failed backup.
    env.cmd()
        .args(["snapshot", "--skip-health"])
        .assert()
        .success()
        .stderr(predicate::str::contains("os:admin"));
}

#[test]
fn rebuild_from_backup_replaces_the_lost_vm_under_a_new_vmid() {
    let env = rebuild_env();
    env.edit_cluster(|c| c.lose_host("pve2"));
    rebuild(&env, &[LOST])
        .assert()
        .success()
        .stderr(predicate::str::contains("qm destroy 102"));
    let c = env.cluster();
    assert_whole(&c);
    let (node, vmid) = vm_of(&env, LOST);
    assert_ne!(vmid, 102, "a fresh VMID");
    assert_ne!(node, "pve2");
    let new = c.pve.vms.iter().find(|v| v.vmid == vmid).unwrap();
    assert_eq!(new.status, "running");
    assert!(
        c.pve.vms.iter().any(|v| v.vmid == 102),
        "the old VM is never destroyed"
    );
    // Same MAC, so the DHCP reservation gave it the same address.
    let old = c.pve.vms.iter().find(|v| v.vmid == 102).unwrap();
    assert_eq!(new.mac, old.mac);
    // Exactly one restore task, and the member was removed before the VM was started.
    let restores = c
        .pve
        .tasks
        .iter()
        .filter(|t| t.task_type == "qmrestore")
        .count();
    assert_eq!(restores, 1);
    let calls = env.calls();
    let removed = calls
        .iter()
        .position(|a| a.iter().any(|w| w == "remove-member"))
        .expect("remove-member was called");
    let reset = calls
        .iter()
        .position(|a| a.iter().any(|w| w == "reset") && a.iter().any(|w| w == LOST))
        .expect("the restored VM's stale etcd data was wiped");
    assert!(removed < reset);
}

#[test]
fn rebuild_from_template_applies_the_saved_config_in_maintenance_mode() {
    let env = template_env();
    let mac = env
        .cluster()
        .pve
        .vms
        .iter()
        .find(|v| v.vmid == 102)
        .unwrap()
        .mac
        .clone();
    rebuild(&env, &[LOST, "--from", "template"])
        .assert()
        .success();
    let c = env.cluster();
    assert_whole(&c);
    let (_, vmid) = vm_of(&env, LOST);
    let new = c.pve.vms.iter().find(|v| v.vmid == vmid).unwrap();
    assert_eq!(new.mac.to_ascii_uppercase(), mac.to_ascii_uppercase());
    assert!(
        env.calls()
            .iter()
            .any(|a| a.iter().any(|w| w == "apply-config") && a.iter().any(|w| w == "--insecure")),
        "the saved config went on in maintenance mode"
    );
    // The temporary config file (it holds the cluster's keys) is gone.
    let leftovers: Vec<_> = walk(&env.config_dir.join("runs"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".machine-config-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `rebuild-node` refuses with exit 4 and `needle` in its message, and changes nothing.
fn assert_refused(env: &Env, needle: &str) {
    let before = env.cluster();
    rebuild(env, &[LOST])
        .assert()
        .code(4)
        .stderr(predicate::str::contains(needle));
    assert_untouched(env, &before);
}

/// What every refused preflight must leave untouched: no member removed, no VM created.
fn assert_untouched(env: &Env, before: &Cluster) {
    let c = env.cluster();
    assert_eq!(c.pve.vms.len(), before.pve.vms.len(), "no VM created");
    assert_eq!(
        c.members_of(c.etcd_generation),
        before.members_of(before.etcd_generation)
    );
    assert!(
        !env.calls()
            .iter()
            .any(|a| a.iter().any(|w| w == "remove-member"))
    );
}

#[test]
fn without_a_saved_config_nothing_changes_and_the_snapshot_is_named() {
    let env = rebuild_env();
    std::fs::remove_dir_all(env.backups().join("configs")).unwrap();
    // Sidecars still refer to configs that are gone: drop the references too.
    for e in std::fs::read_dir(env.backups()).unwrap().flatten() {
        let p = e.path();
        if p.to_string_lossy().ends_with(".json") {
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            v.as_object_mut().unwrap().remove("machine_configs");
            std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        }
    }
    env.edit_cluster(|c| c.lose_host("pve2"));
    let before = env.cluster();
    rebuild(&env, &[LOST]).assert().code(4).stderr(
        predicate::str::contains("no saved machine config for node 10.5.0.12")
            .and(predicate::str::contains("the newest snapshot, etcd-")),
    );
    assert_untouched(&env, &before);
}

#[test]
fn a_config_from_another_cluster_is_refused() {
    let env = rebuild_env();
    // The running cluster's CA is not the one the saved config carries.
    env.edit_cluster(|c| {
        c.secrets = talos_dr::sim::state::Secrets::generate("demo", "https://10.5.0.10:6443");
        c.secrets.ca_crt = "T1RIRVIgQ0E=".into();
        for n in &mut c.nodes {
            n.machine_config = None;
        }
        c.lose_host("pve2");
    });
    assert_refused(&env, "does not fit this cluster");
}

#[test]
fn no_backup_and_no_template_is_a_precondition() {
    let env = rebuild_env();
    env.edit_cluster(|c| {
        c.pve.backups.clear();
        c.lose_host("pve2");
    });
    assert_refused(&env, "no [proxmox] template");
}

#[test]
fn a_node_that_answers_is_not_rebuilt() {
    let env = rebuild_env();
    assert_refused(&env, "answers");
}

fn template_env() -> Env {
    let env = rebuild_env();
    let p = env.config_dir.join("profile.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let mac = env
        .cluster()
        .pve
        .vms
        .iter()
        .find(|v| v.vmid == 102)
        .unwrap()
        .mac
        .clone();
    let text = text.replacen(
        "vm = { node = \"pve2\", vmid = 102 }\n",
        &format!("vm = {{ node = \"pve2\", vmid = 102 }}\nmac = \"{mac}\"\n"),
        1,
    );
    std::fs::write(
        &p,
        text.replace("[proxmox]\n", "[proxmox]\ntemplate = 9000\n"),
    )
    .unwrap();
    env.edit_cluster(|c| c.lose_host("pve2"));
    env
}

#[test]
fn a_failed_clone_names_the_vmid_and_deletes_nothing() {
    let env = template_env();
    env.edit_cluster(|c| {
        c.pve
            .clone_fails
            .insert(9000, "clone failed: storage 'nfs-backup' is full".into());
    });
    rebuild(&env, &[LOST, "--from", "template"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("clone of the template into VM")
                .and(predicate::str::contains("qm destroy")),
        );
    let c = env.cluster();
    assert!(
        !c.pve.tasks.iter().any(|t| t.task_type == "qmdestroy"),
        "nothing is deleted automatically"
    );
    assert_eq!(
        vm_of(&env, LOST).1,
        102,
        "the profile still maps the old VM"
    );
}

#[test]
fn a_node_that_never_leaves_maintenance_mode_times_out_with_the_console_hint() {
    let env = template_env();
    env.edit_cluster(|c| c.faults.install_hangs.push(LOST.into()));
    rebuild(&env, &[LOST, "--from", "template"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("console of VM"));
}

#[test]
fn sigkill_after_the_clone_post_resumes_without_a_second_clone() {
    let env = template_env();
    // The clone task keeps running, so the process is killed while it is in flight.
    env.edit_cluster(|c| c.pve.hold_tasks.push(9000));
    let mut child = {
        let mut c = env.std_cmd();
        c.args([
            "--yes",
            "rebuild-node",
            LOST,
            "--from",
            "template",
            "--poll-max",
            "100ms",
            "--wait-timeout",
            "30s",
            "--maintenance-timeout",
            "20s",
        ]);
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !env
        .cluster()
        .pve
        .tasks
        .iter()
        .any(|t| t.task_type == "qmclone")
    {
        assert!(std::time::Instant::now() < deadline, "no clone was started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Under the simulator's lock: the PVE API may still be writing the state for a request
    // of the killed process.
    Cluster::update(&env.state, |c| {
        c.pve.release_held(jiff::Timestamp::now().as_millisecond());
    })
    .unwrap();
    env.cmd().args(["--yes", "resume"]).assert().success();
    let c = env.cluster();
    assert_eq!(
        c.pve
            .tasks
            .iter()
            .filter(|t| t.task_type == "qmclone")
            .count(),
        1,
        "the resumed run found the clone instead of cloning again"
    );
    assert_whole(&c);
}

#[test]
fn restore_rebuild_brings_back_a_cluster_whose_control_plane_vms_are_all_gone() {
    let env = rebuild_env();
    env.edit_cluster(|c| {
        c.lose_all_control_plane_hosts();
        for n in c.nodes.iter_mut().filter(|n| n.is_control_plane()) {
            n.etcd.data_corrupt = true;
        }
    });
    let snapshot = std::fs::read_dir(env.backups())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".snapshot"))
        .unwrap();
    env.cmd()
        .args([
            "--yes",
            "restore",
            "--snapshot",
            &snapshot.display().to_string(),
            "--no-vm-snapshot",
            "--rebuild",
            CP[0],
            "--rebuild",
            CP[1],
            "--rebuild",
            CP[2],
            "--poll-max",
            "100ms",
            "--wait-timeout",
            "30s",
            "--health-timeout",
            "30s",
        ])
        .assert()
        .success();
    let c = env.cluster();
    assert_whole(&c);
    assert_eq!(c.bootstrapped.len(), 1, "exactly one bootstrap");
    for (a, old) in CP.iter().zip([101, 102, 103]) {
        assert_ne!(vm_of(&env, a).1, old, "{a} runs on a new VM");
    }
}
