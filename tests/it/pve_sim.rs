//! The real `PveClient` against the simulated Proxmox VE API over HTTPS with a pinned
//! certificate: reads, snapshot tasks, faults from the state file, and schema violations.
//!
//! Every test ends by asserting `pve.violations` is empty: the client's requests must be ones a
//! real PVE 8.4 accepts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use talos_dr::pve::check::{CheckOptions, check_vm, check_vms, ensure_ok};
use talos_dr::pve::discover::{MatchMethod, NodeIdentity, map_nodes};
use talos_dr::pve::tls::parse_fingerprints;
use talos_dr::pve::types::VmRef;
use talos_dr::pve::{
    ApiToken, PollConfig, PveClient, PveError, RetryConfig, SnapshotName, SnapshotRequest, TlsMode,
};
use talos_dr::sim::pve_api::{self, PveSim};
use talos_dr::sim::state::{Cluster, Pve};

use crate::common::Env;

const TOKEN: &str = "k8s-dr@pve!cli=3f1c2b9a-5d7e-4c1a-9b0e-6a7d8c9e0f12";

struct Sim {
    env: Env,
    sim: PveSim,
    client: PveClient,
}

impl Sim {
    /// The example cluster with tasks of `task_ms`, and a client pinned to the sim's certificate.
    async fn start(task_ms: u64) -> Self {
        let env = Env::new();
        env.edit_cluster(|c| c.pve.task_duration_ms = task_ms);
        let sim = pve_api::serve(env.state.clone()).await.unwrap();
        let pins = parse_fingerprints(&sim.fingerprint).unwrap();
        let client = client(&sim, TlsMode::Pinned(pins));
        Self { env, sim, client }
    }

    fn pve(&self) -> Pve {
        Cluster::load(&self.env.state).unwrap().pve
    }

    fn edit(&self, f: impl FnOnce(&mut Pve)) {
        self.env.edit_cluster(|c| f(&mut c.pve));
    }

    /// The client must never have sent a request the schema forbids.
    fn assert_no_violations(&self) {
        let v = self.pve().violations;
        assert!(v.is_empty(), "schema violations: {v:#?}");
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.sim.handle.abort();
    }
}

fn client(sim: &PveSim, tls: TlsMode) -> PveClient {
    PveClient::builder(&sim.endpoint(), ApiToken::parse(TOKEN).unwrap())
        .tls(tls)
        .retry(RetryConfig::fast())
        .poll(PollConfig::fast())
        .build()
        .unwrap()
}

fn req(name: &str) -> SnapshotRequest {
    SnapshotRequest {
        name: SnapshotName::parse(name).unwrap(),
        description: Some("talos-dr: before etcd restore".into()),
        vmstate: false,
    }
}

fn name(s: &str) -> SnapshotName {
    SnapshotName::parse(s).unwrap()
}

fn vm101() -> VmRef {
    VmRef::new("pve1", 101)
}

#[tokio::test]
async fn reads_over_pinned_https() {
    let s = Sim::start(100).await;
    let v = s.client.version().await.unwrap();
    assert_eq!((v.version.as_str(), v.release.as_str()), ("8.4.1", "8.4"));

    let nodes = s.client.nodes().await.unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n.status == "online"));
    assert_eq!(
        nodes[0].ssl_fingerprint.as_deref(),
        Some(s.sim.fingerprint.as_str())
    );

    let vms = s.client.cluster_vms().await.unwrap();
    let names: Vec<(u32, &str, &str)> = vms
        .iter()
        .map(|v| (v.vmid, v.node.as_str(), v.name.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        names,
        [
            (101, "pve1", "talos-cp-1"),
            (102, "pve2", "talos-cp-2"),
            (103, "pve3", "talos-cp-3"),
            (104, "pve1", "talos-worker-1"),
            (105, "pve2", "talos-worker-2"),
        ]
    );
    assert!(vms.iter().all(|v| v.is_qemu() && v.status == "running"));
    let on_pve1 = s.client.node_qemu("pve1").await.unwrap();
    assert_eq!(
        on_pve1.iter().map(|v| v.vmid).collect::<Vec<_>>(),
        [101, 104]
    );

    let refs: Vec<VmRef> = vms.iter().map(|v| v.vm_ref()).collect();
    let checks = check_vms(&s.client, &refs, CheckOptions::default(), 4).await;
    ensure_ok(&checks).unwrap();

    let cfg = s.client.vm_config(&vm101()).await.unwrap();
    assert_eq!(cfg.name.as_deref(), Some("talos-cp-1"));
    assert_eq!(cfg.disks().len(), 1);
    assert_eq!(cfg.cloud_init_addresses()[0].to_string(), "10.5.0.11");

    // Discovery maps every Talos node to its VM by name.
    let cluster = Cluster::load(&s.env.state).unwrap();
    let ids: Vec<NodeIdentity> = cluster
        .nodes
        .iter()
        .map(|n| NodeIdentity {
            address: n.address.clone(),
            hostname: Some(n.hostname.clone()),
        })
        .collect();
    let maps = map_nodes(&s.client, &ids).await.unwrap();
    for (m, want) in maps.iter().zip(101..) {
        assert_eq!(m.vm.as_ref().map(|v| v.vmid), Some(want), "{m:?}");
        assert_ne!(m.method, MatchMethod::None, "{m:?}");
    }
    let ifs = s.client.agent_interfaces(&vm101()).await.unwrap();
    assert!(
        ifs.iter()
            .any(|i| i.ip_addresses.iter().any(|a| a.ip_address == "10.5.0.11"))
    );
    s.assert_no_violations();
}

#[tokio::test]
async fn snapshot_task_takes_its_time_and_appears() {
    let s = Sim::start(400).await;
    let vm = vm101();

    // While the task runs, the VM holds the `snapshot` lock and the snapshot is `prepare`.
    let upid = s
        .client
        .create_snapshot(&vm, &req("talosdr-first-2501060900"))
        .await
        .unwrap();
    assert_eq!(
        (
            upid.node.as_str(),
            upid.task_type.as_str(),
            upid.id.as_str()
        ),
        ("pve1", "qmsnapshot", "101")
    );
    assert_eq!(
        (upid.user.as_str(), upid.token.as_deref()),
        ("k8s-dr@pve", Some("cli"))
    );
    let status = s.client.vm_status(&vm).await.unwrap();
    assert_eq!(status.lock.as_deref(), Some("snapshot"));
    let listed = s.client.list_snapshots(&vm).await.unwrap();
    assert_eq!(listed[0].snapstate.as_deref(), Some("prepare"));
    s.client
        .wait_for_task(&upid, "vm 101", &talos_dr::pve::Target::vm(&vm))
        .await
        .unwrap();

    let started = Instant::now();
    let done = s
        .client
        .snapshot_and_wait(&vm, &req("talosdr-second-2501060901"))
        .await
        .unwrap();
    let took = started.elapsed();
    let task = done.task.expect("a task ran");
    assert_eq!(task.exitstatus, "OK");
    assert!(!done.recovered);
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2400),
        "took {took:?}"
    );

    let list = s.client.list_snapshots(&vm).await.unwrap();
    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "talosdr-first-2501060900",
            "talosdr-second-2501060901",
            "current"
        ]
    );
    assert!(list.iter().all(|s| s.is_complete()));
    assert_eq!(list[1].parent.as_deref(), Some("talosdr-first-2501060900"));
    assert_eq!(list[2].parent.as_deref(), Some("talosdr-second-2501060901"));
    assert_eq!(list[2].running, Some(true));
    assert_eq!(s.client.vm_status(&vm).await.unwrap().lock, None);

    let log = s
        .client
        .task_log(&task.upid, 0, 0, &talos_dr::pve::Target::vm(&vm))
        .await
        .unwrap();
    let lines: Vec<&str> = log.iter().map(|l| l.t.as_str()).collect();
    assert_eq!(
        lines[0],
        "snapshotting 'drive-scsi0' (local-lvm:vm-101-disk-0)"
    );
    assert_eq!(lines.last(), Some(&"TASK OK"));

    // A second snapshot of the same name fails inside the task, as on PVE.
    let e = s
        .client
        .snapshot_and_wait(&vm, &req("talosdr-second-2501060901"))
        .await
        .unwrap_err();
    assert_eq!(
        e.server_message(),
        Some("snapshot name 'talosdr-second-2501060901' already used")
    );

    // Delete: gone from the list, the child now descends from the first.
    s.client
        .delete_snapshot_and_wait(&vm, &name("talosdr-first-2501060900"), true)
        .await
        .unwrap();
    let list = s.client.list_snapshots(&vm).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].parent, None);
    s.assert_no_violations();
}

#[tokio::test]
async fn locked_vm_fails_check_and_snapshot() {
    let s = Sim::start(200).await;
    s.edit(|p| {
        p.locked.insert(101, "backup".into());
    });
    let vm = vm101();
    let check = check_vm(&s.client, &vm, CheckOptions::default()).await;
    assert!(!check.ok);
    assert_eq!(check.lock.as_deref(), Some("backup"));
    assert!(
        check.problems[0].contains("VM 101 is locked (backup)"),
        "{check:?}"
    );

    let e = s
        .client
        .snapshot_and_wait(&vm, &req("talosdr-locked-2501060900"))
        .await
        .unwrap_err();
    assert_eq!(e.server_message(), Some("VM is locked (backup)"));
    assert_eq!(e.locked_by(), Some("backup"));
    let PveError::TaskFailed { log_tail, .. } = &e else {
        panic!("expected a task failure, got {e:?}");
    };
    assert_eq!(
        log_tail.last().map(String::as_str),
        Some("TASK ERROR: VM is locked (backup)")
    );
    // Nothing was left behind.
    let list = s.client.list_snapshots(&vm).await.unwrap();
    assert_eq!(list.len(), 1);

    // The injected snapshot failure and a disk without snapshot support.
    s.edit(|p| {
        p.locked.clear();
        p.snapshot_fails.insert(
            101,
            "lvcreate snapshot 'pve/snap_vm-101-disk-0' error".into(),
        );
        p.vm_mut(102).unwrap().disks[0].snapshot = false;
    });
    let e = s
        .client
        .snapshot_and_wait(&vm, &req("talosdr-fails-2501060900"))
        .await
        .unwrap_err();
    assert!(e.server_message().unwrap().starts_with("lvcreate"), "{e}");
    let vm102 = VmRef::new("pve2", 102);
    let check = check_vm(&s.client, &vm102, CheckOptions::default()).await;
    assert_eq!(check.snapshot_feature, Some(false));
    let e = s
        .client
        .snapshot_and_wait(&vm102, &req("talosdr-nofeat-2501060900"))
        .await
        .unwrap_err();
    assert_eq!(
        e.server_message(),
        Some("snapshot feature is not available")
    );
    s.assert_no_violations();
}

#[tokio::test]
async fn rollback_restores_and_zfs_only_to_newest() {
    // Tasks long enough that the status read right after the POST sees the rollback in flight
    // even on a loaded machine.
    let s = Sim::start(1500).await;
    let vm = vm101();
    for n in ["talosdr-a-2501060900", "talosdr-b-2501060901"] {
        s.client.snapshot_and_wait(&vm, &req(n)).await.unwrap();
    }

    // LVM-thin rolls back to any snapshot; the VM is hard-stopped, then started (start=1).
    let upid = s
        .client
        .rollback_snapshot(&vm, &name("talosdr-a-2501060900"), true)
        .await
        .unwrap();
    assert_eq!(s.client.vm_status(&vm).await.unwrap().status, "stopped");
    s.client
        .wait_for_task(&upid, "vm 101", &talos_dr::pve::Target::vm(&vm))
        .await
        .unwrap();
    let st = s.client.vm_status(&vm).await.unwrap();
    assert_eq!((st.status.as_str(), st.lock), ("running", None));
    let cfg = s.client.vm_config(&vm).await.unwrap();
    assert_eq!(cfg.parent.as_deref(), Some("talosdr-a-2501060900"));

    // Without start=1 the VM stays stopped.
    s.client
        .rollback_and_wait(&vm, &name("talosdr-b-2501060901"), false)
        .await
        .unwrap();
    assert_eq!(s.client.vm_status(&vm).await.unwrap().status, "stopped");
    s.client.start_vm(&vm).await.unwrap();

    // ZFS: only the newest snapshot.
    s.edit(|p| p.zfs = true);
    let e = s
        .client
        .rollback_and_wait(&vm, &name("talosdr-a-2501060900"), true)
        .await
        .unwrap_err();
    assert_eq!(
        e.server_message(),
        Some(
            "can't rollback, 'talosdr-a-2501060900' is not most recent snapshot on \
             'local-zfs:vm-101-disk-0'"
        )
    );
    s.client
        .rollback_and_wait(&vm, &name("talosdr-b-2501060901"), true)
        .await
        .unwrap();
    let e = s
        .client
        .rollback_and_wait(&vm, &name("talosdr-nope-2501060901"), true)
        .await
        .unwrap_err();
    assert_eq!(
        e.server_message(),
        Some("snapshot 'talosdr-nope-2501060901' does not exist")
    );
    s.assert_no_violations();
}

#[tokio::test]
async fn offline_node_answers_596_and_wrong_node_500() {
    let s = Sim::start(100).await;
    s.edit(|p| {
        p.offline_nodes.push("pve2".into());
        // The timeout form of a dead node (the default is 595, `No route to host`).
        p.proxy_status = 596;
    });
    let e = s
        .client
        .vm_status(&VmRef::new("pve2", 102))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(596), "{e}");
    assert!(e.is_transient());

    let vms = s.client.cluster_vms().await.unwrap();
    let v102 = vms.iter().find(|v| v.vmid == 102).unwrap();
    assert_eq!(
        (v102.status.as_str(), v102.name.as_deref()),
        ("unknown", None)
    );
    let nodes = s.client.nodes().await.unwrap();
    assert_eq!(nodes[1].status, "offline");

    // The VM asked for on the wrong node: PVE's config-file error, and vm-check says where it is.
    let check = check_vm(&s.client, &VmRef::new("pve3", 101), CheckOptions::default()).await;
    assert!(
        check.problems[0].contains("it is on node pve1"),
        "{check:?}"
    );
    s.assert_no_violations();
}

#[tokio::test]
async fn wrong_pin_is_refused_before_any_request() {
    let s = Sim::start(100).await;
    let other = client(&s.sim, TlsMode::Pinned(vec![[0xAB; 32]]));
    let e = other.version().await.unwrap_err();
    match &e {
        PveError::FingerprintMismatch { seen, .. } => assert_eq!(seen, &s.sim.fingerprint),
        other => panic!("expected a fingerprint mismatch, got {other:?}"),
    }
    assert_eq!(s.pve().requests, 0);
    // The right pin works on the same server.
    s.client.version().await.unwrap();
    assert_eq!(s.pve().requests, 1);
}

/// Requests the client would never send, made by hand: the sim must refuse them like PVE and
/// record them, so a client regression cannot slip through the demo.
#[tokio::test]
async fn schema_violations_are_refused_and_recorded() {
    let s = Sim::start(100).await;
    let raw = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let base = format!("{}/api2/json", s.sim.endpoint());
    let auth = format!("PVEAPIToken={TOKEN}");

    let r = raw
        .post(format!("{base}/nodes/pve1/qemu/101/snapshot"))
        .header("Authorization", &auth)
        .form(&[("snapname", "talosdr-x-2501060900"), ("vmstate", "true")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["errors"]["vmstate"],
        "type check ('boolean') failed - got 'true'"
    );
    assert_eq!(body["message"], "Parameter verification failed.\n");

    let r = raw
        .get(format!("{base}/nodes/pve1/qemu/101/snapshots"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 501);
    // pve-api-daemon puts the error's first line in the status line.
    let reason = r.extensions().get::<hyper::ext::ReasonPhrase>();
    assert_eq!(
        reason.map(|p| p.as_bytes()),
        Some(&b"Method 'GET /nodes/pve1/qemu/101/snapshots' not implemented"[..])
    );

    let r = raw
        .get(format!("{}/index.html", s.sim.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 501);

    // Unauthenticated: 401 with no body, and not a schema matter.
    let r = raw.get(format!("{base}/version")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.bytes().await.unwrap().is_empty());

    let v = s.pve().violations;
    assert_eq!(v.len(), 3, "{v:#?}");
    assert_eq!(v[0].method, "POST");
    assert_eq!(v[0].path, "/nodes/pve1/qemu/101/snapshot");
    assert!(v[0].errors.contains_key("vmstate"));
    assert!(v[1].errors["_path"].contains("not implemented"));
    assert_eq!(v[2].path, "/index.html");
    // Nothing happened to the VM.
    assert!(s.pve().tasks.is_empty());
}

#[tokio::test]
async fn a_configured_token_must_match() {
    let s = Sim::start(100).await;
    s.edit(|p| p.token = Some("k8s-dr@pve!cli=another-secret".into()));
    let e = s.client.version().await.unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    s.edit(|p| p.token = Some(TOKEN.into()));
    s.client.version().await.unwrap();
}

/// The way the demo wires it: a profile's `[proxmox]` section with the pinned fingerprint and a
/// token file, through `PveClient::from_config`.
#[cfg(unix)]
#[tokio::test]
async fn profile_section_pins_the_sim() {
    use std::os::unix::fs::PermissionsExt;
    let s = Sim::start(100).await;
    let dir = &s.env.config_dir;
    let token = dir.join("pve-token");
    std::fs::write(&token, pve_api::DEMO_TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    #[derive(serde::Deserialize)]
    struct Section {
        proxmox: talos_dr::pve::PveConfig,
    }
    let section: Section = toml::from_str(&s.sim.profile_section("pve-token")).unwrap();
    let c = PveClient::from_config_with_env(
        &section.proxmox,
        dir,
        Arc::new(talos_dr::ui::NoopReporter),
        |_| None,
    )
    .unwrap();
    c.version().await.unwrap();
    let vm = s.pve().vm_named("talos-worker-2").unwrap().clone();
    assert_eq!((vm.node.as_str(), vm.vmid), ("pve2", 105));
    s.assert_no_violations();
}
