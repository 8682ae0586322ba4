//! The simulated talosctl in the disasters of issue 12 (`reference/talos.md` §13): endpoints and
//! VIPs, lost hosts, per-node etcd data, `cp`/`ls`/`get volumestatus`, the 1.9 … 1.14 reset and
//! bootstrap checks, split clusters, and the 1.14 output forms. Each runs the `__sim talosctl`
//! entry the shims run.

use std::io::Read;
use std::time::{Duration, Instant};

use talos_dr::sim::demo::{Disaster, VIP};
use talos_dr::sim::state::{Cluster, DialError, EtcdVolume, ViolationKind};

use crate::common::*;

const CP1: &str = "10.5.0.11";
const CP2: &str = "10.5.0.12";
const CP3: &str = "10.5.0.13";
const NO_ROUTE_VIP: &str = "rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp 10.5.0.10:50000: connect: no route to host\"";
const TIMEOUT_CP3: &str = "rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp 10.5.0.13:50000: i/o timeout\"";
const RESET: [&str; 4] = [
    "reset",
    "--graceful=false",
    "--reboot",
    "--system-labels-to-wipe=EPHEMERAL",
];

struct Out {
    code: i32,
    out: String,
    err: String,
    took: Duration,
}

fn talosctl(env: &Env, args: &[&str]) -> Out {
    let started = Instant::now();
    let out = sim_talosctl(env, args);
    Out {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8(out.stdout).unwrap(),
        err: String::from_utf8(out.stderr).unwrap(),
        took: started.elapsed(),
    }
}

fn talosctl_bytes(env: &Env, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = sim_talosctl(env, args);
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn version(env: &Env, v: &str) {
    env.edit_cluster(|c| c.talos_version = v.into());
}

/// The talosconfig's endpoints become `endpoints`.
fn set_endpoints(env: &Env, endpoints: &[&str]) {
    let path = env.config_dir.join("talosconfig");
    let mut tc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    tc["contexts"]["demo"]["endpoints"] = serde_json::json!(endpoints);
    std::fs::write(&path, serde_json::to_vec(&tc).unwrap()).unwrap();
}

fn apply(env: &Env, d: Disaster) {
    env.edit_cluster(|c| d.apply(c));
}

/// Lets simulated time pass as a talosctl call would (transitions that are due happen).
fn advance(env: &Env) -> Cluster {
    Cluster::update(&env.state, |c| c.clone()).unwrap()
}

/// Polls until `f` holds (advancing the simulated clock), or panics after 10 s.
fn wait_until(env: &Env, what: &str, f: impl Fn(&Cluster) -> bool) -> Cluster {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = advance(env);
        if f(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn state_of(c: &Cluster, address: &str) -> String {
    c.node(address).unwrap().etcd.state.clone()
}

fn reset(env: &Env, node: &str, labels: &str) -> Out {
    talosctl(
        env,
        &[
            "-n",
            node,
            "reset",
            "--graceful=false",
            "--reboot",
            &format!("--system-labels-to-wipe={labels}"),
        ],
    )
}

fn bootstrap(env: &Env, node: &str, snapshot: &str) -> Out {
    let from = format!("--recover-from={}", fixture(snapshot).display());
    talosctl(env, &["-n", node, "bootstrap", &from])
}

/// Resets every control plane in `nodes` (EPHEMERAL) and waits until they are all Preparing.
fn reset_all(env: &Env, nodes: &[&str]) {
    for n in nodes {
        let r = talosctl(env, &[&["-n", n], &RESET[..]].concat());
        assert_eq!(r.code, 0, "{}", r.err);
    }
    wait_until(env, "Preparing everywhere", |c| {
        nodes.iter().all(|n| state_of(c, n) == "Preparing")
    });
}

// ---- endpoints, VIPs, lost hosts ------------------------------------------------------------

#[test]
fn a_vip_endpoint_answers_only_while_etcd_has_quorum() {
    let env = Env::new();
    env.edit_cluster(|c| c.vip = Some(VIP.into()));
    set_endpoints(&env, &[VIP]);
    let ok = talosctl(&env, &["-n", CP1, "service", "etcd"]);
    assert_eq!(ok.code, 0, "{}", ok.err);
    assert!(ok.out.contains("STATE    Running"));

    apply(&env, Disaster::VipEndpoint);
    let down = talosctl(&env, &["-n", CP1, "service", "etcd"]);
    assert_eq!((down.code, down.out.as_str()), (1, ""));
    assert_eq!(down.err, format!("error getting service: {NO_ROUTE_VIP}\n"));
    assert!(
        down.took >= Duration::from_millis(50),
        "no route to host comes after the ARP timeout ({:?})",
        down.took
    );
    // The same node straight through its own address still answers.
    let direct = talosctl(&env, &["-e", CP1, "-n", CP1, "service", "etcd"]);
    assert_eq!(direct.code, 0, "{}", direct.err);
    assert!(direct.out.contains("STATE    Failed"), "{}", direct.out);
    // Repeated and comma-separated -e both work; the first answering endpoint takes the call.
    let listed = talosctl(
        &env,
        &[
            "-e",
            VIP,
            "--endpoints",
            &format!("{CP2},{CP3}"),
            "-n",
            CP1,
            "version",
        ],
    );
    assert_eq!(listed.code, 0, "{}", listed.err);

    // 1.14: every node reports the endpoint's error.
    version(&env, "v1.14.0");
    let modern = talosctl(&env, &["-n", &format!("{CP1},{CP2}"), "service", "etcd"]);
    assert_eq!(modern.code, 1);
    assert_eq!(
        modern.err,
        format!("error from node {CP1}: {NO_ROUTE_VIP}\nerror from node {CP2}: {NO_ROUTE_VIP}\n")
    );
}

#[test]
fn the_vip_comes_back_with_the_restored_cluster() {
    let env = Env::new();
    apply(&env, Disaster::VipEndpoint);
    set_endpoints(&env, &[VIP]);
    assert_eq!(talosctl(&env, &["-n", CP1, "version"]).code, 1);
    for n in [CP1, CP2, CP3] {
        let r = talosctl(&env, &[&["-e", n, "-n", n], &RESET[..]].concat());
        assert_eq!(r.code, 0, "{}", r.err);
    }
    wait_until(&env, "Preparing", |c| {
        [CP1, CP2, CP3]
            .iter()
            .all(|n| state_of(c, n) == "Preparing")
    });
    let from = format!(
        "--recover-from={}",
        fixture("snapshots/small.snapshot").display()
    );
    let b = talosctl(&env, &["-e", CP1, "-n", CP1, "bootstrap", &from]);
    assert_eq!(b.code, 0, "{}", b.err);
    wait_until(&env, "quorum", Cluster::has_quorum);
    let back = talosctl(&env, &["-n", CP1, "version"]);
    assert_eq!(back.code, 0, "{}", back.err);
    assert!(env.cluster().etcd_violations.is_empty());
}

#[test]
fn a_lost_host_times_out_as_endpoint_and_as_node() {
    let env = Env::new();
    apply(&env, Disaster::HostLost);
    let c = env.cluster();
    let lost = c.node(CP3).unwrap();
    assert!(!lost.reachable);
    assert_eq!(lost.dial_error, DialError::Timeout);
    assert!(
        c.pve.offline_nodes.contains(&"pve3".to_owned()),
        "{:?}",
        c.pve.offline_nodes
    );

    // Proxied through a working endpoint (the talosconfig lists all three): per-node error.
    let one = talosctl(&env, &["-n", CP3, "service", "etcd"]);
    assert_eq!(one.code, 1);
    assert_eq!(one.err, format!("error getting service: {TIMEOUT_CP3}\n"));
    assert!(one.took >= Duration::from_millis(100), "{:?}", one.took);
    // 1.9: several nodes, one lost → the others' answers, a WARNING, exit 0.
    let two = talosctl(&env, &["-n", &format!("{CP2},{CP3}"), "service", "etcd"]);
    assert_eq!(two.code, 0, "{}", two.err);
    assert!(
        two.out.starts_with(&format!("NODE     {CP2}\n")),
        "{}",
        two.out
    );
    assert_eq!(
        two.err,
        format!("WARNING: 1 error occurred:\n\t* {CP3}: {TIMEOUT_CP3}\n\n\n")
    );
    // As the only endpoint, it fails every call.
    let ep = talosctl(&env, &["-e", CP3, "-n", CP1, "version"]);
    assert_eq!(ep.code, 1);
    assert!(
        ep.err
            .starts_with(&format!("error getting version: {TIMEOUT_CP3}\n")),
        "{}",
        ep.err
    );
    // Single-node commands report it in their own words.
    let snap = env.tmp.path().join("x.snapshot");
    let s = talosctl(
        &env,
        &["-n", CP3, "etcd", "snapshot", snap.to_str().unwrap()],
    );
    assert_eq!(s.err, format!("error reading: {TIMEOUT_CP3}\n"));
    let s = talosctl(
        &env,
        &[
            "-e",
            CP3,
            "-n",
            CP3,
            "etcd",
            "snapshot",
            snap.to_str().unwrap(),
        ],
    );
    assert_eq!(s.err, format!("error reading file: {TIMEOUT_CP3}\n"));
    assert!(!snap.exists() && !env.tmp.path().join("x.snapshot.part").exists());

    // 1.14: failed nodes exit 1 and the others' answers are still printed.
    version(&env, "v1.14.0");
    let modern = talosctl(&env, &["-n", &format!("{CP2},{CP3}"), "service", "etcd"]);
    assert_eq!(modern.code, 1);
    assert!(
        modern.out.starts_with(&format!("NODE     {CP2}\n")),
        "{}",
        modern.out
    );
    assert_eq!(
        modern.err,
        format!("error from node {CP3}: {TIMEOUT_CP3}\n")
    );
    let v = talosctl(&env, &["-n", CP3, "version"]);
    assert_eq!(
        v.err,
        format!("error getting version from node {CP3}: {TIMEOUT_CP3}\n")
    );
}

#[test]
fn a_worker_endpoint_does_not_forward() {
    let env = Env::new();
    let r = talosctl(&env, &["-e", "10.5.0.21", "-n", CP1, "version"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.err,
        "error getting version: rpc error: code = PermissionDenied desc = no request forwarding\n"
    );
    assert_eq!(
        talosctl(&env, &["-e", "10.5.0.21", "-n", "10.5.0.21", "version"]).code,
        0
    );
}

// ---- per-node data: etcd snapshot, cp, ls -------------------------------------------------

#[test]
fn a_survivor_without_quorum_still_streams_its_newer_data() {
    let env = Env::new();
    apply(&env, Disaster::QuorumLoss);
    let c = env.cluster();
    assert!(!c.has_quorum());
    assert_eq!(
        (
            c.node(CP1).unwrap().etcd.state.as_str(),
            c.node(CP1).unwrap().etcd.health.as_str()
        ),
        ("Running", "Fail")
    );
    let path = env.tmp.path().join("survivor.snapshot");
    let r = talosctl(
        &env,
        &["-n", CP1, "etcd", "snapshot", path.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    // The survivor fixture, and the status line agrees with etcdctl's own status of it.
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("snapshots/survivor.status.json")).unwrap())
            .unwrap();
    assert_eq!(status["revision"], 162);
    assert_eq!(
        r.out,
        format!(
            "etcd snapshot saved to {:?} ({} bytes)\nsnapshot info: hash {:08x}, revision 162, total keys {}, total size {}\n",
            path.to_str().unwrap(),
            std::fs::metadata(fixture("snapshots/survivor.snapshot"))
                .unwrap()
                .len(),
            status["hash"].as_u64().unwrap(),
            status["totalKey"],
            status["totalSize"]
        )
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(fixture("snapshots/survivor.snapshot")).unwrap()
    );
    // The others' etcd is down: no snapshot there.
    let r = talosctl(
        &env,
        &["-n", CP2, "etcd", "snapshot", path.to_str().unwrap()],
    );
    assert_eq!(r.code, 1);
    assert!(r.err.starts_with("error reading file: "), "{}", r.err);
}

#[test]
fn a_member_restarted_without_quorum_hangs_then_fails() {
    let env = Env::new();
    apply(&env, Disaster::QuorumLoss);
    env.edit_cluster(|c| {
        c.node_mut(CP1).unwrap().etcd.restarted_without_quorum = true;
        c.timing.snapshot_hang_ms = 300;
    });
    let path = env.tmp.path().join("db.snapshot");
    let r = talosctl(
        &env,
        &["-n", CP1, "etcd", "snapshot", path.to_str().unwrap()],
    );
    assert_eq!(r.code, 1);
    assert_eq!(
        r.err,
        "error reading: rpc error: code = DeadlineExceeded desc = context deadline exceeded\n"
    );
    assert!(r.took >= Duration::from_millis(300), "{:?}", r.took);
    assert!(!path.exists());
    assert!(!env.tmp.path().join("db.snapshot.part").exists());
}

#[test]
fn cp_of_the_db_extracts_a_private_raw_copy_once() {
    let env = Env::new();
    let dest = env.tmp.path().join("salvage/cp1");
    let d = dest.to_str().unwrap();
    let r = talosctl(&env, &["-n", CP1, "cp", "/var/lib/etcd/member/snap/db", d]);
    assert_eq!((r.code, r.out.as_str(), r.err.as_str()), (0, "", ""));
    use std::os::unix::fs::PermissionsExt;
    let db = dest.join("db");
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let snapshot = std::fs::read(fixture("snapshots/small.snapshot")).unwrap();
    assert_eq!(std::fs::read(&db).unwrap(), snapshot[..snapshot.len() - 32]);
    let report = talos_dr::snapshot::verify::verify_file(&db).unwrap();
    assert!(report.valid);
    assert_eq!(report.trailer, talos_dr::snapshot::verify::Trailer::Missing);

    // DEST/db exists: O_EXCL.
    let again = talosctl(
        &env,
        &["-n", CP1, "copy", "/var/lib/etcd/member/snap/db", d],
    );
    assert_eq!(again.code, 1);
    let shown = db.display().to_string();
    assert_eq!(
        again.err,
        format!("error creating file {shown:?} mode -rw-------: open {shown}: file exists\n")
    );
    // DEST is a file.
    let file = env.tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let f = file.to_str().unwrap();
    let r = talosctl(&env, &["-n", CP1, "cp", "/var/lib/etcd/member/snap/db", f]);
    assert_eq!(r.err, format!("local path {f:?} should be a directory\n"));
    // One node only, in each version's words.
    let r = talosctl(
        &env,
        &[
            "-n",
            &format!("{CP1},{CP2}"),
            "cp",
            "/var/lib/etcd/member/snap/db",
            d,
        ],
    );
    assert!(
        r.err
            .starts_with("command \"copy\" is not supported with multiple nodes\n\nUsage:"),
        "{}",
        r.err
    );
    version(&env, "v1.14.0");
    let r = talosctl(
        &env,
        &[
            "-n",
            &format!("{CP1},{CP2}"),
            "cp",
            "/var/lib/etcd/member/snap/db",
            d,
        ],
    );
    assert!(
        r.err
            .starts_with("command \"copy\" requires exactly one node (got 2)\n\nUsage:"),
        "{}",
        r.err
    );
}

#[test]
fn cp_to_stdout_is_a_tar_gz_and_wiped_or_damaged_data_shows() {
    let env = Env::new();
    let (code, bytes, err) = talosctl_bytes(
        &env,
        &["-n", CP2, "cp", "/var/lib/etcd/member/snap/db", "-"],
    );
    assert_eq!(code, 0, "{err}");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut entries = archive.entries().unwrap();
    let mut entry = entries.next().unwrap().unwrap();
    assert_eq!(entry.path().unwrap().to_str(), Some("db"));
    assert_eq!(entry.header().mode().unwrap(), 0o600);
    let mut body = Vec::new();
    entry.read_to_end(&mut body).unwrap();
    assert_eq!(
        body,
        std::fs::read(fixture("snapshots/small-raw.db")).unwrap()
    );
    assert!(entries.next().is_none());

    // After a proper wipe the file is gone: lstat error, but DEST was already made.
    reset_all(&env, &[CP2]);
    let dest = env.tmp.path().join("wiped");
    let r = talosctl(
        &env,
        &[
            "-n",
            CP2,
            "cp",
            "/var/lib/etcd/member/snap/db",
            dest.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 1);
    assert_eq!(
        r.err,
        "error initializing gzip: rpc error: code = Unknown desc = lstat /var/lib/etcd/member/snap/db: no such file or directory\n"
    );
    assert!(dest.is_dir() && !dest.join("db").exists());
    let (code, bytes, err) = talosctl_bytes(
        &env,
        &["-n", CP2, "cp", "/var/lib/etcd/member/snap/db", "-"],
    );
    assert_eq!((code, bytes.len()), (1, 0));
    assert_eq!(
        err,
        "rpc error: code = Unknown desc = lstat /var/lib/etcd/member/snap/db: no such file or directory\n"
    );

    // etcd failing on damaged data: the copy is damaged too, and verification says so.
    apply(&env, Disaster::QuorumLoss);
    let dest = env.tmp.path().join("damaged");
    let r = talosctl(
        &env,
        &[
            "-n",
            CP3,
            "cp",
            "/var/lib/etcd/member/snap/db",
            dest.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    let report = talos_dr::snapshot::verify::verify_file(&dest.join("db")).unwrap();
    assert!(!report.valid, "a copy of damaged data must not verify");
}

#[test]
fn ls_shows_the_data_directory_per_version() {
    let env = Env::new();
    let r = talosctl(&env, &["-n", CP1, "ls", "/var/lib/etcd"]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(
        r.out,
        "NODE        NAME\n10.5.0.11   .\n10.5.0.11   member\n"
    );
    version(&env, "v1.14.0");
    let r = talosctl(&env, &["-n", CP1, "list", "/var/lib/etcd/member"]);
    assert_eq!((r.code, r.out.as_str()), (0, ".\nsnap\nwal\n"));
    let r = talosctl(
        &env,
        &["-n", &format!("{CP1},{CP2}"), "ls", "/var/lib/etcd"],
    );
    assert_eq!(
        r.out,
        "NODE        NAME\n10.5.0.11   .\n10.5.0.11   member\n10.5.0.12   .\n10.5.0.12   member\n"
    );

    // A proper wipe: /var/lib/etcd is empty and `member` is gone.
    reset_all(&env, &[CP1]);
    let r = talosctl(&env, &["-n", CP1, "ls", "/var/lib/etcd"]);
    assert_eq!(r.out, ".\n");
    let r = talosctl(&env, &["-n", CP1, "ls", "/var/lib/etcd/member"]);
    assert_eq!((r.code, r.out.as_str()), (1, ""));
    assert_eq!(
        r.err,
        "error from node 10.5.0.11: rpc error: code = Unknown desc = lstat /var/lib/etcd/member: no such file or directory\n"
    );
    version(&env, "v1.9.5");
    let r = talosctl(&env, &["-n", CP1, "ls", "/var/lib/etcd/member"]);
    assert_eq!((r.code, r.out.as_str()), (1, "NODE   NAME\n"));
    assert_eq!(
        r.err,
        "1 error occurred:\n rpc error: code = Unknown desc = lstat /var/lib/etcd/member: no such file or directory\n"
    );
}

// ---- the ETCD volume and reset ------------------------------------------------------------

#[test]
fn volumestatus_etcd_per_version() {
    let env = Env::new();
    let r = talosctl(
        &env,
        &["-n", CP1, "get", "volumestatus", "ETCD", "-o", "yaml"],
    );
    assert_eq!((r.code, r.out.as_str()), (1, ""));
    assert_eq!(
        r.err,
        "1 error occurred:\n\t* rpc error: code = NotFound desc = resource VolumeStatuses.block.talos.dev(runtime/ETCD@undefined) doesn't exist\n\n"
    );
    version(&env, "v1.12.4");
    let r = talosctl(
        &env,
        &["-n", CP1, "get", "volumestatus", "ETCD", "-o", "yaml"],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.starts_with("node: 10.5.0.11\nmetadata:\n    namespace: runtime\n    type: VolumeStatuses.block.talos.dev\n    id: ETCD\n"), "{}", r.out);
    assert!(
        r.out
            .contains("\nspec:\n    phase: ready\n    type: directory\n"),
        "{}",
        r.out
    );
    assert!(!r.out.contains("location:"));

    apply(&env, Disaster::EtcdVolume);
    let r = talosctl(
        &env,
        &[
            "-n",
            &format!("{CP1},{CP2}"),
            "get",
            "volumestatus",
            "ETCD",
            "-o",
            "yaml",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(
        r.out
            .matches("    type: partition\n    location: /dev/sda7\n")
            .count(),
        2,
        "{}",
        r.out
    );
    assert_eq!(r.out.matches("\n---\nnode: 10.5.0.12\n").count(), 1);
    let r = talosctl(
        &env,
        &["-n", CP1, "get", "volumestatus", "ETCD", "-o", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert_eq!(v["spec"]["type"], "partition");
    assert_eq!(v["spec"]["location"], "/dev/sda7");
    let r = talosctl(&env, &["-n", CP1, "get", "volumestatus", "ETCD"]);
    let mut lines = r.out.lines();
    let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        head,
        [
            "NODE",
            "NAMESPACE",
            "TYPE",
            "ID",
            "VERSION",
            "TYPE",
            "PHASE",
            "LOCATION",
            "SIZE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..8],
        [
            CP1,
            "runtime",
            "VolumeStatus",
            "ETCD",
            "3",
            "partition",
            "ready",
            "/dev/sda7"
        ]
    );
    env.edit_cluster(|c| c.node_mut(CP2).unwrap().etcd_volume = EtcdVolume::Directory);
    let r = talosctl(
        &env,
        &["-n", CP2, "get", "volumestatus", "ETCD", "-o", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert_eq!(v["spec"]["type"], "directory");
    assert!(v["spec"].get("location").is_none());
}

#[test]
fn reset_with_etcd_is_checked_per_version_and_a_refusal_changes_nothing() {
    let env = Env::new();
    let refused = |env: &Env, labels: &str, why: &str| {
        let r = reset(env, CP1, labels);
        assert_eq!((r.code, r.out.as_str()), (1, ""));
        assert_eq!(
            r.err,
            format!(
                "\"{CP1}\": waiting for actor ID\n\"{CP1}\": rpc error: code = Unknown desc = {why}\n"
            )
        );
        let c = advance(env);
        let n = c.node(CP1).unwrap();
        assert_eq!(
            (n.etcd.state.as_str(), n.etcd.data_empty),
            ("Running", false)
        );
        assert!(n.etcd.pending.is_empty());
    };
    refused(
        &env,
        "EPHEMERAL,ETCD",
        "failed to get volume status with label \"ETCD\": resource VolumeStatuses.block.talos.dev(runtime/ETCD@undefined) doesn't exist",
    );
    version(&env, "v1.11.2");
    refused(
        &env,
        "EPHEMERAL,ETCD",
        "failed to reset: volume \"ETCD\" is not located",
    );
    version(&env, "v1.14.0");
    refused(
        &env,
        "ETCD",
        "failed to reset: volume \"ETCD\" resides on volume \"EPHEMERAL\", and therefore \"ETCD\" cannot be wiped without wiping \"EPHEMERAL\"",
    );
    // 1.14, directory: with EPHEMERAL it is accepted (and wiped with it); the repeated flag is
    // the same as the comma list.
    let r = talosctl(
        &env,
        &[
            "-n",
            CP1,
            "reset",
            "--graceful=false",
            "--reboot",
            "--system-labels-to-wipe",
            "EPHEMERAL",
            "--system-labels-to-wipe=ETCD",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    let c = wait_until(&env, "Preparing", |c| state_of(c, CP1) == "Preparing");
    assert!(c.node(CP1).unwrap().etcd.data_empty);
}

#[test]
fn an_ephemeral_only_reset_on_a_1_14_etcd_partition_keeps_the_data_and_never_waits_for_bootstrap() {
    let env = Env::new();
    env.edit_cluster(|c| {
        c.talos_version = "v1.14.0".into();
        for n in c
            .nodes
            .iter_mut()
            .filter(|n| n.machine_type == "controlplane")
        {
            n.etcd_volume = EtcdVolume::Partition {
                location: "/dev/sda7".into(),
            };
        }
    });
    let r = reset(&env, CP1, "EPHEMERAL");
    assert_eq!(r.code, 0, "{}", r.err);
    // Watch every state it goes through: whenever it is Preparing, `member` is there.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = advance(&env);
        let n = c.node(CP1).unwrap();
        if seen.last() != Some(&n.etcd.state) {
            seen.push(n.etcd.state.clone());
        }
        if n.etcd.state == "Preparing" {
            assert!(!n.etcd.data_empty, "waiting for bootstrap with data gone");
        }
        if n.etcd.state == "Running" {
            break;
        }
        assert!(Instant::now() < deadline, "never came back: {seen:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(seen.first().map(String::as_str), Some("Stopping"));
    assert!(seen.contains(&"Waiting".to_owned()), "{seen:?}");
    // Back on its old data and membership; its two old peers run, so HEALTH OK.
    let r = talosctl(&env, &["-n", CP1, "service", "etcd"]);
    assert!(
        r.out.contains("STATE    Running\nHEALTH   OK\n"),
        "{}",
        r.out
    );
    let r = talosctl(&env, &["-n", CP1, "ls", "/var/lib/etcd/member"]);
    assert_eq!(r.out, ".\nsnap\nwal\n");
    let b = bootstrap(&env, CP1, "snapshots/small.snapshot");
    assert_eq!(b.code, 1);
    assert!(b.err.ends_with("error executing bootstrap: rpc error: code = AlreadyExists desc = etcd data directory is not empty\n"), "{}", b.err);
    let c = env.cluster();
    assert_eq!(c.etcd_generation, 0);
    assert!(c.bootstrapped.is_empty());

    // Without a majority of its old members its HEALTH stays Fail.
    env.edit_cluster(|c| {
        for a in [CP2, CP3] {
            c.node_mut(a)
                .unwrap()
                .etcd
                .set("Failed", "Fail", "Failed to run");
        }
    });
    let c = advance(&env);
    assert_eq!(c.node(CP1).unwrap().etcd.health, "Fail");

    // With ETCD too, the partition is wiped and the node waits for bootstrap.
    let r = reset(&env, CP2, "EPHEMERAL,ETCD");
    assert_eq!(r.code, 0, "{}", r.err);
    let c = wait_until(&env, "Preparing", |c| state_of(c, CP2) == "Preparing");
    assert!(c.node(CP2).unwrap().etcd.data_empty);
}

// ---- bootstrap ----------------------------------------------------------------------------

#[test]
fn bootstrap_refusals_have_talos_codes_and_change_nothing() {
    let env = Env::new();
    env.disaster();
    let snapshot = "snapshots/small.snapshot";
    let tail = |o: &Out| o.err.lines().last().unwrap_or_default().to_owned();
    // During the reboot after a reset EPHEMERAL is not mounted: the upload is refused.
    env.edit_cluster(|c| c.timing.reset_ms = 4000);
    let r = talosctl(&env, &[&["-n", CP1], &RESET[..]].concat());
    assert_eq!(r.code, 0);
    let b = bootstrap(&env, CP1, snapshot);
    assert_eq!(b.code, 1);
    assert!(
        b.out.starts_with("recovering from snapshot "),
        "the local status line comes first"
    );
    assert_eq!(
        tail(&b),
        "error uploading snapshot: rpc error: code = FailedPrecondition desc = etcd service is not ready for recovery yet"
    );
    // 1.14 from here on.
    version(&env, "v1.14.0");
    env.edit_cluster(|c| {
        let n = c.node_mut(CP1).unwrap();
        n.etcd.pending.clear();
        n.etcd.set(
            "Waiting",
            "?",
            "Waiting for service \"cri\" to be \"up\", time sync",
        );
    });
    assert_eq!(
        tail(&bootstrap(&env, CP1, snapshot)),
        "error executing bootstrap: rpc error: code = FailedPrecondition desc = bootstrap is not available yet"
    );
    env.edit_cluster(|c| {
        let n = c.node_mut(CP1).unwrap();
        n.etcd.set("Preparing", "?", "Running pre state");
        n.etcd_unconfigured = true;
        n.time_unsynced = true;
    });
    assert_eq!(
        tail(&bootstrap(&env, CP1, snapshot)),
        "error executing bootstrap: rpc error: code = InvalidArgument desc = etcd is not configured, bootstrap is not possible"
    );
    env.edit_cluster(|c| c.node_mut(CP1).unwrap().etcd_unconfigured = false);
    assert_eq!(
        tail(&bootstrap(&env, CP1, snapshot)),
        "error executing bootstrap: rpc error: code = FailedPrecondition desc = time is not in sync yet"
    );
    env.edit_cluster(|c| c.node_mut(CP1).unwrap().time_unsynced = false);
    // A healthy member still has its data.
    assert_eq!(
        tail(&bootstrap(&env, CP2, snapshot)),
        "error executing bootstrap: rpc error: code = AlreadyExists desc = etcd data directory is not empty"
    );
    let b = bootstrap(&env, &format!("{CP1},{CP2}"), snapshot);
    assert!(
        b.err
            .starts_with("command \"bootstrap\" requires exactly one node (got 2)\n\nUsage:"),
        "{}",
        b.err
    );
    let c = env.cluster();
    assert!(c.bootstrapped.is_empty() && c.etcd_generation == 0);
    // Finally accepted: a new single-member cluster at the snapshot's data.
    let b = bootstrap(&env, CP1, snapshot);
    assert_eq!(b.code, 0, "{}", b.err);
    let c = env.cluster();
    assert_eq!((c.etcd_generation, c.bootstrapped.len()), (1, 1));
    assert_eq!(c.members_of(1), [CP1]);
    assert!(c.etcd_violations.is_empty());
}

#[test]
fn a_second_accepted_bootstrap_is_a_split_cluster() {
    let env = Env::new();
    env.disaster();
    env.edit_cluster(|c| c.timing.join_ms = 5000);
    reset_all(&env, &[CP1, CP2, CP3]);
    assert_eq!(bootstrap(&env, CP1, "snapshots/small.snapshot").code, 0);
    // CP2 has not joined yet: its data is still empty, so a bootstrap there is accepted too.
    let b = bootstrap(&env, CP2, "snapshots/survivor.snapshot");
    assert_eq!(b.code, 0, "{}", b.err);
    let c = env.cluster();
    assert_eq!(c.etcd_violations.len(), 1, "{:?}", c.etcd_violations);
    assert_eq!(c.etcd_violations[0].kind, ViolationKind::SecondBootstrap);
    assert_eq!(c.etcd_violations[0].node, CP2);
    assert_eq!(c.bootstrapped, [CP1, CP2]);
}

#[test]
fn bootstrapping_while_a_survivor_still_runs_old_data_is_a_split_cluster() {
    let env = Env::new();
    apply(&env, Disaster::QuorumLoss);
    reset_all(&env, &[CP2, CP3]);
    assert_eq!(bootstrap(&env, CP2, "snapshots/small.snapshot").code, 0);
    let c = env.cluster();
    assert_eq!(c.etcd_violations.len(), 1, "{:?}", c.etcd_violations);
    assert_eq!(c.etcd_violations[0].kind, ViolationKind::SplitCluster);
    assert!(
        c.etcd_violations[0].detail.contains(CP1),
        "{:?}",
        c.etcd_violations[0]
    );
}

#[test]
fn a_stale_preparing_node_left_to_join_splits_the_cluster() {
    let env = Env::new();
    apply(&env, Disaster::StalePreparing);
    // It looks like it waits for bootstrap …
    let r = talosctl(&env, &["-n", CP2, "service", "etcd"]);
    assert!(r.out.contains("STATE    Preparing\n"), "{}", r.out);
    // … but its data is there.
    let r = talosctl(&env, &["-n", CP2, "ls", "/var/lib/etcd"]);
    assert_eq!(
        r.out,
        "NODE        NAME\n10.5.0.12   .\n10.5.0.12   member\n"
    );
    let b = bootstrap(&env, CP2, "snapshots/small.snapshot");
    assert!(
        b.err
            .ends_with("code = AlreadyExists desc = etcd data directory is not empty\n"),
        "{}",
        b.err
    );
    // Reset only the others and restore: the stale node starts on its old membership.
    reset_all(&env, &[CP1, CP3]);
    assert_eq!(bootstrap(&env, CP1, "snapshots/small.snapshot").code, 0);
    let c = wait_until(&env, "the stale node to start", |c| {
        state_of(c, CP2) != "Preparing"
    });
    let stale = c.node(CP2).unwrap();
    assert_eq!(
        (stale.etcd.state.as_str(), stale.etcd.generation),
        ("Running", 0)
    );
    assert_eq!(c.etcd_violations.len(), 1, "{:?}", c.etcd_violations);
    assert_eq!(c.etcd_violations[0].kind, ViolationKind::SplitCluster);
    assert_eq!(c.etcd_violations[0].node, CP2);
    let c = wait_until(&env, "CP3 to join", |c| state_of(c, CP3) == "Running");
    assert_eq!(c.members_of(1), [CP1, CP3]);
    // Each side lists its own members.
    let r = talosctl(&env, &["-n", CP2, "etcd", "members"]);
    assert_eq!(
        r.out.lines().count(),
        4,
        "the old cluster's three members:\n{}",
        r.out
    );
}

#[test]
fn resetting_the_stale_node_too_restores_without_a_split() {
    let env = Env::new();
    apply(&env, Disaster::StalePreparing);
    reset_all(&env, &[CP1, CP2, CP3]);
    assert_eq!(bootstrap(&env, CP1, "snapshots/small.snapshot").code, 0);
    let c = wait_until(&env, "everyone Running", |c| {
        [CP1, CP2, CP3].iter().all(|n| state_of(c, n) == "Running")
    });
    assert!(c.etcd_violations.is_empty(), "{:?}", c.etcd_violations);
    assert_eq!(c.members_of(1), [CP1, CP2, CP3]);
    assert!(c.has_quorum());
    let r = talosctl(&env, &["-n", CP3, "etcd", "members"]);
    assert_eq!(r.out.lines().count(), 4, "{}", r.out);
}

// ---- a node left out of the restore ---------------------------------------------------------

#[test]
fn health_fails_on_a_lost_nodes_object_until_it_is_deleted() {
    let env = Env::with_kube();
    apply(&env, Disaster::HostLost);
    reset_all(&env, &[CP1, CP2]);
    assert_eq!(bootstrap(&env, CP1, "snapshots/small.snapshot").code, 0);
    wait_until(&env, "CP2 to join", |c| {
        state_of(c, CP2) == "Running" && c.has_quorum()
    });
    let health = |cps: &str| {
        talosctl(
            &env,
            &[
                "-n",
                CP1,
                "health",
                "--control-plane-nodes",
                cps,
                "--worker-nodes",
                "10.5.0.21,10.5.0.22",
            ],
        )
    };
    // With the lost node named, etcd is not healthy there.
    let r = health(&format!("{CP1},{CP2},{CP3}"));
    assert_eq!(r.code, 1);
    assert!(
        r.err.contains(&format!(
            "waiting for etcd to be healthy: 1 error occurred:\n    * {CP3}: {TIMEOUT_CP3}\n"
        )),
        "{}",
        r.err
    );
    // Left out, its Node object (back from the snapshot) is unexpected.
    let r = health(&format!("{CP1},{CP2}"));
    assert_eq!(r.code, 1);
    assert!(
        r.err.contains(
            "waiting for all k8s nodes to report: unexpected nodes with IPs [\"10.5.0.13\"]\n"
        ),
        "{}",
        r.err
    );
    // The real kubectl deletes it through the simulated API; then health passes.
    let kubectl = talos_dr::exec::resolve_tool("kubectl", talos_dr::exec::ENV_KUBECTL)
        .expect("these tests run the real kubectl");
    let out = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(env.config_dir.join("kubeconfig"))
        .arg("--cache-dir")
        .arg(env.tmp.path().join("kube-cache"))
        .args(["delete", "node", "talos-cp-3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "node \"talos-cp-3\" deleted\n"
    );
    assert_eq!(env.cluster().kube.deleted_nodes, ["talos-cp-3"]);
    let r = health(&format!("{CP1},{CP2}"));
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(env.cluster().etcd_violations.is_empty());
}

// ---- every disaster, as the demo applies it ---------------------------------------------------

#[test]
fn every_disaster_needs_a_restore_and_prepare_sets_up_what_came_before() {
    for d in [
        Disaster::VipEndpoint,
        Disaster::QuorumLoss,
        Disaster::HostLost,
        Disaster::EtcdVolume,
        Disaster::StalePreparing,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let env =
            talos_dr::sim::demo::setup(tmp.path(), std::path::Path::new(BIN), true, &[]).unwrap();
        d.prepare(&env).unwrap();
        let mut c = Cluster::load(&env.state).unwrap();
        assert!(c.has_quorum(), "{d:?}: healthy before the disaster");
        d.apply(&mut c);
        assert!(!c.has_quorum(), "{d:?}: etcd lost quorum");
        match d {
            Disaster::VipEndpoint => {
                let tc = std::fs::read_to_string(env.config_dir.join("talosconfig")).unwrap();
                assert!(tc.contains(VIP), "{tc}");
            }
            Disaster::EtcdVolume => {
                assert_eq!(c.talos_version, "v1.14.0");
                assert!(matches!(
                    c.node(CP1).unwrap().etcd_volume,
                    EtcdVolume::Partition { .. }
                ));
            }
            Disaster::QuorumLoss => {
                let data = c.node(CP1).unwrap().etcd.data.clone().unwrap();
                assert!(
                    data.is_file(),
                    "setup writes the survivor's data: {}",
                    data.display()
                );
            }
            _ => {}
        }
    }
}
