//! Fleet runs: three simulated clusters as three profiles under one $TALOS_DR_HOME, one
//! command for all of them (`--all-profiles`, `-p a,b,c`), one failing.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde_json::Value;

use crate::common::*;
use crate::pack::ok;

/// Profiles `names` under one home, each its own simulated cluster (own state file). The
/// `talosctl` on PATH picks the cluster from the profile its `--talosconfig` belongs to.
pub(crate) struct Fleet {
    pub home: tempfile::TempDir,
    pub envs: Vec<(String, Env)>,
    bin_dir: PathBuf,
}

impl Fleet {
    pub(crate) fn new(names: &[&str]) -> Self {
        let home = tempfile::tempdir().unwrap();
        let bin_dir = home.path().join(".bin");
        std::fs::create_dir(&bin_dir).unwrap();
        let shim = bin_dir.join("talosctl");
        std::fs::write(
            &shim,
            format!(
                "#!/bin/sh\n# talosctl for the cluster of the profile named by --talosconfig\nprev=; tc=\nfor a in \"$@\"; do [ \"$prev\" = --talosconfig ] && tc=$a; prev=$a; done\n# `version --client` names no talosconfig: a state of its own (the default version).\nif [ -n \"$tc\" ]; then st=$(cat \"$(dirname \"$tc\")/sim-state\"); else st=\"$(dirname \"$0\")/client.json\"; fi\nTALOS_DR_SIM_STATE=$st exec '{BIN}' __sim talosctl \"$@\"\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut envs = Vec::new();
        for name in names {
            let env = Env::new();
            std::fs::write(
                env.config_dir.join("sim-state"),
                env.state.display().to_string(),
            )
            .unwrap();
            let p = env.config_dir.join("profile.toml");
            let text = std::fs::read_to_string(&p).unwrap();
            std::fs::write(
                &p,
                text.replace("name = \"lab\"", &format!("name = \"{name}\"")),
            )
            .unwrap();
            std::os::unix::fs::symlink(&env.config_dir, home.path().join(name)).unwrap();
            envs.push(((*name).to_owned(), env));
        }
        Self {
            home,
            envs,
            bin_dir,
        }
    }

    pub(crate) fn env(&self, name: &str) -> &Env {
        &self.envs.iter().find(|(n, _)| n == name).unwrap().1
    }

    pub(crate) fn cmd(&self) -> assert_cmd::Command {
        let mut c = std::process::Command::new(BIN);
        c.env(
            "PATH",
            format!(
                "{}:{}",
                self.bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("TALOS_DR_HOME", self.home.path())
        .env("HOME", self.home.path())
        .env("NO_COLOR", "1")
        .env_remove("TALOS_DR_SIM_STATE")
        .env_remove("TALOS_DR_CONFIG_DIR")
        .env_remove("TALOS_DR_PROFILE")
        .env_remove("TALOS_DR_TALOSCTL")
        .env_remove("TALOSCONFIG")
        .env_remove("RUST_LOG");
        assert_cmd::Command::from_std(c)
    }
}

fn profile<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["profile"] == name)
        .unwrap_or_else(|| panic!("no profile {name} in {doc:#}"))
}

#[test]
fn three_clusters_one_unhealthy_one_table_worst_exit_and_the_others_backed_up() {
    let fleet = Fleet::new(&["alpha", "bravo", "charlie"]);
    fleet
        .env("bravo")
        .edit_cluster(|c| c.faults.health_error = Some("kubelet is not healthy".into()));

    let out = fleet
        .cmd()
        .args(["-o", "json", "snapshot", "--all-profiles", "--jobs", "3"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = stdout_json(&out);
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["command"], "snapshot");
    assert_eq!(doc["exit_code"], 4);
    let names: Vec<&str> = doc["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["profile"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "bravo", "charlie"]);
    for name in ["alpha", "charlie"] {
        let p = profile(&doc, name);
        assert_eq!(p["exit_code"], 0, "{p:#}");
        assert_eq!(p["result"], "ok");
        let path = p["output"]["snapshot"]["path"].as_str().unwrap();
        assert!(
            path.starts_with(&fleet.home.path().join(name).display().to_string()),
            "{path}"
        );
        // Each profile's own cluster was asked, and its own directory holds its snapshot.
        let env = fleet.env(name);
        assert_eq!(env.calls_of(&["etcd", "snapshot"]).len(), 1);
        assert_eq!(
            env.backup_files()
                .iter()
                .filter(|f| f.ends_with(".snapshot"))
                .count(),
            1
        );
    }
    let bravo = profile(&doc, "bravo");
    assert_eq!(bravo["exit_code"], 4);
    assert_eq!(bravo["result"], "precondition");
    assert!(
        bravo["error"]
            .as_str()
            .unwrap()
            .contains("kubelet is not healthy"),
        "{bravo:#}"
    );
    assert!(fleet.env("bravo").backup_files().is_empty());
    assert!(
        fleet
            .env("bravo")
            .calls_of(&["etcd", "snapshot"])
            .is_empty()
    );
    // Log lines name their profile.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[bravo] error: "), "{stderr}");

    // Text: each profile's output, then one table and the worst exit code; -p picks some.
    // (A second later: snapshot names have one-second resolution.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = fleet
        .cmd()
        .args(["-p", "charlie,bravo", "snapshot"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("== charlie ==\nsnapshot saved: "),
        "{text}"
    );
    assert!(!text.contains("== alpha =="), "{text}");
    let table = &text[text.find("PROFILE").expect("a summary table")..];
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("PROFILE   RESULT         EXIT   TIME"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("charlie   ok             0      "),
        "{table}"
    );
    assert!(
        lines[2].starts_with("bravo     precondition   4      "),
        "{table}"
    );
    assert!(
        lines[2].contains("the cluster is not healthy, so no snapshot was taken: "),
        "{table}"
    );
    assert_eq!(lines[3], "snapshot: 2 profiles, 1 ok, 1 not (exit 4)");
    assert_eq!(
        fleet.env("charlie").calls_of(&["etcd", "snapshot"]).len(),
        2
    );

    // list and prune for all: the one with nothing is fine too.
    let out = fleet
        .cmd()
        .args(["-o", "json", "list", "--all-profiles"])
        .output()
        .unwrap();
    ok(&out);
    let doc = stdout_json(&out);
    assert_eq!(
        profile(&doc, "charlie")["output"]["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        profile(&doc, "bravo")["output"]["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let out = fleet
        .cmd()
        .args(["prune", "--dry-run", "--all-profiles"])
        .output()
        .unwrap();
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("== alpha ==\nkeep "));

    // status for all: one table, one row per profile.
    let out = fleet
        .cmd()
        .args(["status", "--all-profiles"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().take(4).collect();
    assert!(rows[0].starts_with("PROFILE   STATUS"), "{text}");
    assert!(rows[1].starts_with("alpha "), "{text}");
    assert!(rows[2].starts_with("bravo "), "{text}");
    assert!(rows[3].starts_with("charlie "), "{text}");
    // No drill or timer anywhere, and bravo has no snapshot: red, exit 1; reasons below.
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(rows[2].starts_with("bravo     red      red "), "{text}");
    assert!(
        text.contains("\nbravo:\n  red     recovery-point  no valid local snapshot"),
        "{text}"
    );
}

#[test]
fn a_missing_profile_fails_alone_and_selections_are_checked() {
    let fleet = Fleet::new(&["alpha"]);
    let out = fleet
        .cmd()
        .args(["-o", "json", "list", "-p", "alpha,ghost"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let doc = stdout_json(&out);
    assert_eq!(profile(&doc, "alpha")["exit_code"], 0);
    let ghost = profile(&doc, "ghost");
    assert_eq!(ghost["exit_code"], 2);
    assert!(ghost["error"].as_str().unwrap().contains("not found"));
    assert!(
        ghost["hints"][0]
            .as_str()
            .unwrap()
            .contains("profile init ghost")
    );

    fleet
        .cmd()
        .args(["list", "--all-profiles", "--config-dir", "/tmp"])
        .assert()
        .code(2);
    fleet
        .cmd()
        .args(["list", "-p", "alpha,alpha"])
        .assert()
        .code(2);
    let empty = tempfile::tempdir().unwrap();
    let out = fleet
        .cmd()
        .env("TALOS_DR_HOME", empty.path())
        .args(["snapshot", "--all-profiles"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no profiles under"));
}

#[test]
fn schedule_all_profiles_is_one_job_for_every_profile() {
    let fleet = Fleet::new(&["alpha", "bravo"]);
    let out = fleet
        .cmd()
        .args(["-o", "json", "schedule", "--every", "6h", "--all-profiles"])
        .output()
        .unwrap();
    ok(&out);
    let doc = stdout_json(&out);
    assert_eq!(doc["unit"], "talos-dr-snapshot-all-profiles");
    let service = doc["service"].as_str().unwrap();
    assert!(
        service.contains(&format!(
            "Environment=TALOS_DR_HOME={}\n",
            fleet.home.path().display()
        )),
        "{service}"
    );
    assert!(service.contains(" snapshot --all-profiles\n"), "{service}");
    // The fleet units are valid units too.
    let dir = fleet.home.path().join("printed");
    std::fs::create_dir_all(&dir).unwrap();
    let files = [
        dir.join("talos-dr-snapshot-all-profiles.service"),
        dir.join("talos-dr-snapshot-all-profiles.timer"),
    ];
    std::fs::write(&files[0], service).unwrap();
    std::fs::write(&files[1], doc["timer"].as_str().unwrap()).unwrap();
    let analyze = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("systemd-analyze"))
        .find(|p| p.is_file())
        .expect(
            "systemd-analyze is not installed (Debian package systemd; `scripts/test` installs it)",
        );
    let out = std::process::Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&files)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify rejected the units:\n{stderr}"
    );

    // Installed: the record in the home covers every profile, so each one's status sees it.
    let units = fleet.home.path().join("units");
    let systemctl = fleet.home.path().join("fake-systemctl");
    std::fs::write(&systemctl, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    ok(&fleet
        .cmd()
        .args([
            "schedule",
            "--every",
            "6h",
            "--all-profiles",
            "--install",
            "--unit-dir",
        ])
        .arg(&units)
        .env("TALOS_DR_SYSTEMCTL", &systemctl)
        .output()
        .unwrap());
    assert!(units.join("talos-dr-snapshot-all-profiles.timer").is_file());
    let out = fleet
        .cmd()
        .args(["-o", "json", "status", "-p", "alpha,bravo"])
        .output()
        .unwrap();
    let doc = stdout_json(&out);
    for p in doc["profiles"].as_array().unwrap() {
        let sched = p["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "schedule")
            .unwrap();
        // Installed, never run: yellow, not red.
        assert_eq!(sched["level"], "yellow", "{p:#}");
        assert!(
            sched["reason"]
                .as_str()
                .unwrap()
                .contains("timer talos-dr-snapshot-all-profiles.timer"),
            "{p:#}"
        );
        assert_eq!(p["rpo_seconds"], 12 * 3600, "twice the schedule");
    }
}
