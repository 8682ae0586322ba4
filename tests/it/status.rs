//! `status`: each check is green on a profile where everything is in place, and turns red when
//! exactly that thing is broken (old snapshot, dead off-site, wrong identity, oversized
//! snapshot, missing timer, failed last run, no drill, damaged copies, missing machine configs).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde_json::Value;

use crate::common::*;
use crate::offsite::{Moto, s3_cmd, s3_profile};
use crate::pack::{append_profile, keygen, ok};

/// A profile with everything `status` looks for except a drill: a fresh snapshot copied
/// off-site (age-encrypted, `file://`), its identity, a timer installed by `schedule`, machine
/// configs recorded with the snapshot, a clean deep check, and a metrics file.
struct Healthy {
    env: Env,
    key: PathBuf,
    units: PathBuf,
    metrics: PathBuf,
}

fn healthy(env: Env, offsite: &str) -> Healthy {
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    let metrics = env.tmp.path().join("textfile/talos-dr.prom");
    append_profile(
        &env,
        &format!(
            "\n[backup]\ncompress = true\nrecipients = [\"{recipient}\"]\nidentity_file = {:?}\nmetrics_file = {:?}\n{offsite}",
            key.display().to_string(),
            metrics.display().to_string(),
        ),
    );
    let units = env.tmp.path().join("units");
    let systemctl = env.tmp.path().join("fake-systemctl");
    std::fs::write(&systemctl, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    ok(&env
        .cmd()
        .args(["schedule", "--every", "1d", "--install", "--unit-dir"])
        .arg(&units)
        .env("TALOS_DR_SYSTEMCTL", &systemctl)
        .output()
        .unwrap());
    let h = Healthy {
        env,
        key,
        units,
        metrics,
    };
    ok(&h.cmd().arg("snapshot").output().unwrap());
    record_machine_configs(&h.env, None);
    std::fs::write(
        h.env.config_dir.join("check.json"),
        format!(
            r#"{{"schema":1,"finished_at":"{}","remote":true,"checked":2,"damaged":[]}}"#,
            jiff::Timestamp::now()
        ),
    )
    .unwrap();
    h
}

impl Healthy {
    /// S3 credentials for moto are harmless for the file target.
    fn cmd(&self) -> assert_cmd::Command {
        s3_cmd(&self.env)
    }

    fn status(&self) -> (Option<i32>, Value) {
        let out = self.cmd().args(["-o", "json", "status"]).output().unwrap();
        (out.status.code(), stdout_json(&out))
    }
}

/// What the machine-config backup records in a sidecar: one entry per node address (all of
/// them, or all but `skip`).
fn record_machine_configs(env: &Env, skip: Option<&str>) {
    let newest = talos_dr::snapshot::store::list(&env.backups()).unwrap()[0]
        .path
        .clone();
    let path = talos_dr::snapshot::store::sidecar_path(&newest);
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut configs = serde_json::Map::new();
    for n in env
        .cluster()
        .nodes
        .iter()
        .filter(|n| Some(n.address.as_str()) != skip)
    {
        configs.insert(
            n.address.clone(),
            serde_json::json!({ "file": format!("machine-configs/{}.yaml", n.address), "sha256": "00" }),
        );
    }
    v["machine_configs"] = Value::Object(configs);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn check<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["profiles"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {doc:#}"))
}

fn level(doc: &Value, name: &str) -> String {
    check(doc, name)["level"].as_str().unwrap().to_owned()
}

fn reason(doc: &Value, name: &str) -> String {
    check(doc, name)["reason"].as_str().unwrap().to_owned()
}

fn file_target(env: &Env) -> String {
    format!(
        "\n[offsite]\nurl = \"file://{}\"\n",
        env.tmp.path().join("nfs/talos").display()
    )
}

#[test]
fn everything_in_place_is_green_but_the_drill_until_one_succeeds() {
    let env = Env::with_kube();
    let target = file_target(&env);
    let h = healthy(env, &target);
    let (code, doc) = h.status();
    assert_eq!(doc["schema"], 1);
    for name in [
        "recovery-point",
        "offsite",
        "offsite-key",
        "size",
        "schedule",
        "machine-configs",
        "deep-check",
        "talos-version",
    ] {
        assert_eq!(level(&doc, name), "green", "{name}: {doc:#}");
    }
    assert_eq!(level(&doc, "drill"), "red");
    assert!(reason(&doc, "drill").contains("no successful drill"));
    assert!(reason(&doc, "offsite-key").contains("key.txt opens etcd-"));
    assert!(reason(&doc, "talos-version").contains("cluster v1.9.5"));
    assert_eq!(code, Some(1), "a red check is exit 1");
    assert_eq!(doc["level"], "red");
    let text = std::fs::read_to_string(&h.metrics).unwrap();
    assert!(
        text.contains("talos_dr_status{profile=\"lab\",check=\"drill\"} 2\n"),
        "{text}"
    );
    assert!(text.contains("talos_dr_recovery_point_age_seconds{profile=\"lab\"} "));
    assert!(text.contains("talos_dr_snapshot_last_exit_code{profile=\"lab\"} 0\n"));
    assert!(!text.contains("talos_dr_last_drill_timestamp_seconds"));

    // A real drill (the restore playbook, each stage confirmed) against the simulated cluster.
    let newest = talos_dr::snapshot::store::list(&h.env.backups()).unwrap()[0]
        .path
        .clone();
    ok(&h
        .cmd()
        .args([
            "--yes",
            "drill",
            "--poll-max",
            "100ms",
            "--wait-timeout",
            "20s",
            "--snapshot",
        ])
        .arg(&newest)
        .output()
        .unwrap());
    let (code, doc) = h.status();
    assert_eq!(level(&doc, "drill"), "green", "{doc:#}");
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["level"], "green");
    let text = std::fs::read_to_string(&h.metrics).unwrap();
    assert!(text.contains("talos_dr_last_drill_timestamp_seconds{profile=\"lab\"} "));
    assert!(text.contains("talos_dr_status{profile=\"lab\",check=\"drill\"} 0\n"));

    // Text: one row, and every check with its reason for a single profile.
    let out = h.cmd().arg("status").output().unwrap();
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("PROFILE   STATUS   RPO"), "{text}");
    assert!(text.contains("\nlab       green    green"), "{text}");
    assert!(
        text.contains("  green   drill           last drill "),
        "{text}"
    );
}

#[test]
fn an_old_snapshot_turns_the_recovery_point_red() {
    let env = Env::new();
    let target = file_target(&env);
    let h = healthy(env, &target);
    assert_eq!(level(&h.status().1, "recovery-point"), "green");
    for f in h.env.backup_files() {
        std::fs::remove_file(h.env.backups().join(f)).unwrap();
    }
    plant_days_ago(&h.env, &[3]);
    let (code, doc) = h.status();
    assert_eq!(level(&doc, "recovery-point"), "red", "{doc:#}");
    assert!(
        reason(&doc, "recovery-point").contains("3d"),
        "{}",
        reason(&doc, "recovery-point")
    );
    assert!(reason(&doc, "recovery-point").contains("twice the schedule"));
    assert_eq!(code, Some(1));
}

#[test]
fn a_dead_offsite_target_turns_offsite_red() {
    let mut moto = Moto::start();
    let env = Env::new();
    let (key, recipient) = keygen(env.tmp.path(), "s3key.txt");
    s3_profile(&env, &moto.endpoint(), &recipient, &key);
    let units = env.tmp.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    ok(&s3_cmd(&env).arg("snapshot").output().unwrap());
    let status = || {
        let out = s3_cmd(&env)
            .args(["-o", "json", "status"])
            .output()
            .unwrap();
        stdout_json(&out)
    };
    let doc = status();
    assert_eq!(level(&doc, "offsite"), "green", "{doc:#}");
    assert_eq!(level(&doc, "offsite-key"), "green", "{doc:#}");
    moto.child.kill().unwrap();
    moto.child.wait().unwrap();
    let doc = status();
    assert_eq!(level(&doc, "offsite"), "red", "{doc:#}");
    assert!(
        reason(&doc, "offsite").contains("cannot list the copies"),
        "{}",
        reason(&doc, "offsite")
    );
    // Not checked is not a key problem.
    assert_eq!(level(&doc, "offsite-key"), "yellow");
    assert_eq!(level(&doc, "recovery-point"), "green");
}

#[test]
fn a_wrong_identity_turns_the_offsite_key_red() {
    let env = Env::new();
    let target = file_target(&env);
    let h = healthy(env, &target);
    assert_eq!(level(&h.status().1, "offsite-key"), "green");
    // The identity file now holds another key: the copies were encrypted to the old one.
    let (other, _) = keygen(h.env.tmp.path(), "other.txt");
    std::fs::copy(&other, &h.key).unwrap();
    let (code, doc) = h.status();
    assert_eq!(level(&doc, "offsite-key"), "red", "{doc:#}");
    assert!(
        reason(&doc, "offsite-key").contains("encrypted to other recipients"),
        "{}",
        reason(&doc, "offsite-key")
    );
    assert_eq!(level(&doc, "offsite"), "green");
    assert_eq!(code, Some(1));
}

#[test]
fn a_snapshot_near_the_quota_turns_size_red() {
    let env = Env::new();
    let target = file_target(&env);
    let h = healthy(env, &target);
    assert_eq!(level(&h.status().1, "size"), "green");
    // The cluster's quota is far smaller than etcd's default: the 112 KiB snapshot is over it.
    let p = h.env.config_dir.join("profile.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        text.replace("[backup]\n", "[backup]\netcd_quota = \"128KiB\"\n"),
    )
    .unwrap();
    let (code, doc) = h.status();
    assert_eq!(level(&doc, "size"), "red", "{doc:#}");
    let r = reason(&doc, "size");
    // The cluster answered `talosctl etcd status`: its DB SIZE (115 kB, rounded up by talosctl's
    // SI units) is what is compared, as it is the larger.
    assert!(
        r.starts_with("etcd's database is 112.3 KiB = 88% of 128.0 KiB (backup.etcd_quota)"),
        "{r}"
    );
    let out = sim_talosctl(&h.env, &["-n", "10.5.0.11", "etcd", "status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("   115 kB    115 kB (100.00%)   "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(r.contains("NOSPACE"), "{r}");
    assert_eq!(code, Some(1));
}

#[test]
fn a_missing_timer_or_a_failed_last_run_turns_the_schedule_red() {
    let env = Env::new();
    let target = file_target(&env);
    let h = healthy(env, &target);
    let doc = h.status().1;
    assert_eq!(level(&doc, "schedule"), "green", "{doc:#}");
    assert!(reason(&doc, "schedule").contains("last run"));

    // The last run failed (the cluster was unhealthy): red with its exit code.
    h.env
        .edit_cluster(|c| c.faults.health_error = Some("kubelet is not healthy".into()));
    h.cmd().arg("snapshot").assert().code(4);
    h.env.edit_cluster(|c| c.faults.health_error = None);
    let doc = h.status().1;
    assert_eq!(level(&doc, "schedule"), "red", "{doc:#}");
    assert!(reason(&doc, "schedule").contains("exited 4"));
    ok(&h.cmd().arg("snapshot").output().unwrap());
    assert_eq!(level(&h.status().1, "schedule"), "green");

    // Someone removed the timer.
    let timer = h.units.join("talos-dr-snapshot-lab.timer");
    std::fs::remove_file(&timer).unwrap();
    let (code, doc) = h.status();
    assert_eq!(level(&doc, "schedule"), "red", "{doc:#}");
    assert!(
        reason(&doc, "schedule").contains(&timer.display().to_string()),
        "{}",
        reason(&doc, "schedule")
    );
    assert_eq!(code, Some(1));
}

#[test]
fn damaged_copies_and_missing_machine_configs_are_red() {
    let env = Env::new();
    let target = file_target(&env);
    let h = healthy(env, &target);
    let doc = h.status().1;
    assert_eq!(level(&doc, "deep-check"), "green");
    assert_eq!(level(&doc, "machine-configs"), "green");
    std::fs::write(
        h.env.config_dir.join("check.json"),
        r#"{"schema":1,"finished_at":"2026-12-01T00:00:00Z","remote":true,"checked":2,"damaged":[{"location":"s3://b/etcd-1.snapshot.age","problem":"sha256 differs from the manifest"}]}"#,
    )
    .unwrap();
    record_machine_configs(&h.env, Some("10.5.0.12"));
    let doc = h.status().1;
    assert_eq!(level(&doc, "deep-check"), "red", "{doc:#}");
    assert!(reason(&doc, "deep-check").contains("sha256 differs from the manifest"));
    assert_eq!(level(&doc, "machine-configs"), "red", "{doc:#}");
    assert!(reason(&doc, "machine-configs").contains("control-plane node 10.5.0.12"));
    // A worker without one is yellow; no check.json at all is yellow ("never checked").
    record_machine_configs(&h.env, Some("10.5.0.21"));
    std::fs::remove_file(h.env.config_dir.join("check.json")).unwrap();
    let doc = h.status().1;
    assert_eq!(level(&doc, "machine-configs"), "yellow", "{doc:#}");
    assert_eq!(level(&doc, "deep-check"), "yellow");
    assert!(reason(&doc, "deep-check").contains("never checked"));
}

#[test]
fn an_unmounted_file_target_is_red_and_not_recreated() {
    let env = Env::new();
    let target = file_target(&env);
    let h = healthy(env, &target);
    assert_eq!(level(&h.status().1, "offsite"), "green");
    let dir = h.env.tmp.path().join("nfs/talos");
    std::fs::rename(&dir, h.env.tmp.path().join("nfs/elsewhere")).unwrap();
    let doc = h.status().1;
    assert_eq!(level(&doc, "offsite"), "red", "{doc:#}");
    assert!(reason(&doc, "offsite").contains("does not exist (not mounted?)"));
    assert!(!dir.exists(), "status must not create the target directory");
}
