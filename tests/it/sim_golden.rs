//! Golden tests: the simulated talosctl prints exactly the formats of talosctl v1.9
//! (`reference/talos.md` §2, §3, §5, §7, §8, §9), so the parsers are tested against the real shapes.

use crate::common::*;

fn talosctl(env: &Env, args: &[&str]) -> (i32, String, String) {
    let out = sim_talosctl(env, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn service_etcd_is_the_vertical_tabwriter_block() {
    let env = Env::new();
    let (code, out, _) = talosctl(&env, &["-n", "10.5.0.11", "service", "etcd"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "NODE     10.5.0.11\n\
         ID       etcd\n\
         STATE    Running\n\
         HEALTH   OK\n\
         EVENTS   [Running]: Health check successful (10s ago)\n\
         \x20        [Running]: Started task etcd (PID 2345) for container etcd (20s ago)\n"
    );
}

#[test]
fn etcd_snapshot_prints_the_two_lines_and_leaves_no_part_file() {
    let env = Env::new();
    let path = env.tmp.path().join("db.snapshot");
    let (code, out, err) = talosctl(
        &env,
        &[
            "-n",
            "10.5.0.11",
            "etcd",
            "snapshot",
            path.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "etcd snapshot saved to {:?} (114720 bytes)\nsnapshot info: hash 0a726a94, revision 4, total keys 120, total size 114688\n",
            path.to_str().unwrap()
        )
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!env.tmp.path().join("db.snapshot.part").exists());
}

#[test]
fn single_node_commands_refuse_several_nodes_with_usage_on_stderr() {
    let env = Env::new();
    let (code, out, err) = talosctl(
        &env,
        &["-n", "10.5.0.11,10.5.0.12", "etcd", "snapshot", "x"],
    );
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(
        err.starts_with("command \"etcd snapshot\" is not supported with multiple nodes\n\nUsage:"),
        "{err}"
    );
}

#[test]
fn get_members_json_is_a_stream_of_sorted_four_space_objects() {
    let env = Env::new();
    let (code, out, _) = talosctl(&env, &["-n", "10.5.0.11", "get", "members", "-o", "json"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("{\n    \"metadata\": {\n        \"created\":"),
        "{out}"
    );
    let n = serde_json::Deserializer::from_str(&out)
        .into_iter::<serde_json::Value>()
        .count();
    assert_eq!(n, 5);
    assert!(out.contains("\"machineType\": \"controlplane\""));
}

#[test]
fn etcd_members_table_has_a_node_column_and_16_hex_ids() {
    let env = Env::new();
    let (code, out, _) = talosctl(&env, &["-n", "10.5.0.11", "etcd", "members"]);
    assert_eq!(code, 0);
    let mut lines = out.lines();
    assert_eq!(
        lines.next().unwrap(),
        "NODE        ID                 HOSTNAME     PEER URLS                CLIENT URLS              LEARNER"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], "10.5.0.11");
    assert_eq!(row[1].len(), 16);
    assert!(row[1].chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(row[5], "false");
}

#[test]
fn version_config_info_and_reset_formats() {
    let env = Env::new();
    let (_, out, _) = talosctl(&env, &["version", "--client", "--short"]);
    assert_eq!(out, "Client:\n\tTalos v1.9.5\n");
    let (_, out, _) = talosctl(&env, &["-n", "10.5.0.12", "version"]);
    assert!(
        out.contains("Server:\n\tNODE:        10.5.0.12\n\tTag:         v1.9.5\n"),
        "{out}"
    );
    assert!(
        out.contains("\tBuilt:       \n"),
        "Built: keeps its trailing spaces"
    );
    let (_, out, _) = talosctl(&env, &["config", "info", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["context"], "demo");
    assert_eq!(v["nodes"], serde_json::Value::Null, "empty lists are null");
    // reset: nothing on stdout, one line per update on stderr (non-TTY form).
    let (code, out, err) = talosctl(
        &env,
        &[
            "-n",
            "10.5.0.13",
            "reset",
            "--graceful=false",
            "--reboot",
            "--system-labels-to-wipe=EPHEMERAL",
        ],
    );
    assert_eq!((code, out.as_str()), (0, ""));
    assert!(
        err.lines().all(|l| l.starts_with("\"10.5.0.13\": ")),
        "{err}"
    );
}

#[test]
fn bootstrap_prints_the_recovery_line_and_refuses_a_non_empty_data_dir() {
    let env = Env::new();
    let snap = fixture("snapshots/small.snapshot");
    let from = format!("--recover-from={}", snap.display());
    // etcd still has its data: refused, nothing bootstrapped.
    let (code, _, err) = talosctl(&env, &["-n", "10.5.0.11", "bootstrap", &from]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error executing bootstrap: rpc error: code = FailedPrecondition"),
        "{err}"
    );
    env.edit_cluster(|c| {
        let n = c.node_mut("10.5.0.11").unwrap();
        n.etcd.set("Preparing", "?", "Running pre state");
        n.etcd.data_empty = true;
    });
    let (code, out, _) = talosctl(&env, &["-n", "10.5.0.11", "bootstrap", &from]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!(
            "recovering from snapshot {:?}: hash 0a726a94, revision 4, total keys 120, total size 114688\n",
            snap.display().to_string()
        )
    );
    assert_eq!(env.cluster().bootstrapped, vec!["10.5.0.11"]);
}

/// talosctl 1.14's forms (`reference/talos.md` §13.6): one node required in new words,
/// per-node `error from node N: …` lines with exit 1 while the other nodes' answers still print.
#[test]
fn talosctl_1_14_formats() {
    let env = Env::new();
    env.edit_cluster(|c| {
        c.talos_version = "v1.14.0".into();
        c.nodes[2].reachable = false;
    });
    let dial = "rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp 10.5.0.13:50000: connect: no route to host\"";
    let (code, out, err) = talosctl(
        &env,
        &["-n", "10.5.0.11,10.5.0.12", "etcd", "snapshot", "x"],
    );
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with("command \"etcd snapshot\" requires exactly one node (got 2)\n\nUsage:"),
        "{err}"
    );
    let (code, out, err) = talosctl(&env, &["-n", "10.5.0.11,10.5.0.13", "service", "etcd"]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with("NODE     10.5.0.11\nID       etcd\n"),
        "{out}"
    );
    assert!(!out.contains("10.5.0.13"));
    assert_eq!(err, format!("error from node 10.5.0.13: {dial}\n"));
    let (code, out, err) = talosctl(&env, &["-n", "10.5.0.13", "etcd", "members"]);
    assert_eq!(code, 1);
    assert_eq!(
        out, "NODE   ID   HOSTNAME   PEER URLS   CLIENT URLS   LEARNER\n",
        "1.14 prints the header whatever happens"
    );
    assert_eq!(err, format!("error from node 10.5.0.13: {dial}\n"));
    let (_, out, err) = talosctl(&env, &["-n", "10.5.0.11,10.5.0.13", "version"]);
    assert!(
        out.starts_with("Client:\n\tTag:         v1.14.0\n"),
        "{out}"
    );
    assert!(out.contains("\tNODE:        10.5.0.11\n"));
    assert_eq!(
        err,
        format!("error getting version from node 10.5.0.13: {dial}\n")
    );
    let (_, out, _) = talosctl(&env, &["version", "--client", "--short"]);
    assert_eq!(out, "Client:\n\tTalos v1.14.0\n");
    let (code, _, err) = talosctl(&env, &["-n", "10.5.0.13", "get", "members", "-o", "json"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!("error listing resources on node 10.5.0.13: {dial}\n")
    );
}
