//! Proxmox VE client against wiremock (and a tiny TLS server for certificate pinning).
//!
//! Bodies come from `fixtures/pve/*.json` (taken from `proxmox.md`). Poll and retry delays are
//! shortened for speed, except in the one test that checks realistic polling.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rstest::rstest;
use talos_dr::pve::check::{CheckOptions, check_vm, check_vms, ensure_ok};
use talos_dr::pve::discover::{MatchMethod, NodeIdentity, map_nodes};
use talos_dr::pve::types::VmRef;
use talos_dr::pve::{
    ApiToken, PollConfig, PveClient, PveError, RetryConfig, SnapshotName, SnapshotRequest, TlsMode,
    Upid,
};
use talos_dr::ui::{Event, RecordingReporter};
use wiremock::matchers::{body_string, header, method, path, path_regex, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "k8s-dr@pve!cli=3f1c2b9a-5d7e-4c1a-9b0e-6a7d8c9e0f12";
const SECRET: &str = "3f1c2b9a-5d7e-4c1a-9b0e-6a7d8c9e0f12";
const UPID: &str = "UPID:pve1:000B2F4C:0197A1E3:6650A1B2:qmsnapshot:101:k8s-dr@pve!cli:";
const VM_BASE: &str = "/api2/json/nodes/pve1/qemu/101";
const TASK_STATUS: &str = "/api2/json/nodes/pve1/tasks/UPID:pve1:000B2F4C:0197A1E3:6650A1B2:qmsnapshot:101:k8s-dr@pve!cli:/status";
const TASK_LOG: &str = "/api2/json/nodes/pve1/tasks/UPID:pve1:000B2F4C:0197A1E3:6650A1B2:qmsnapshot:101:k8s-dr@pve!cli:/log";

pub(crate) fn fixture(name: &str) -> serde_json::Value {
    let p = format!("{}/fixtures/pve/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn json(name: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(fixture(name))
}

fn err_json(status: u16, name: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(fixture(name))
}

fn vm() -> VmRef {
    VmRef::new("pve1", 101)
}

fn client_for(uri: &str) -> (PveClient, Arc<RecordingReporter>) {
    let rec = Arc::new(RecordingReporter::default());
    let c = PveClient::builder(uri, ApiToken::parse(TOKEN).unwrap())
        .retry(RetryConfig::fast())
        .poll(PollConfig::fast())
        .reporter(rec.clone())
        .build()
        .unwrap();
    (c, rec)
}

fn client(server: &MockServer) -> (PveClient, Arc<RecordingReporter>) {
    client_for(&server.uri())
}

async fn count(server: &MockServer, m: &str, p: &str) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() == m && r.url.path() == p)
        .count()
}

fn snap_req(name: &str) -> SnapshotRequest {
    SnapshotRequest {
        name: SnapshotName::parse(name).unwrap(),
        description: Some("talos-dr: before etcd restore".into()),
        vmstate: false,
    }
}

/// The secret must not leak through errors or events.
fn assert_no_secret(err: &PveError, rec: &RecordingReporter) {
    assert!(!err.to_string().contains(SECRET));
    assert!(!format!("{err:?}").contains(SECRET));
    let events = serde_json::to_string(&rec.events()).unwrap();
    assert!(!events.contains(SECRET));
}

async fn mount_snapshot_post(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path(format!("{VM_BASE}/snapshot")))
        .respond_with(json("snapshot_create"))
        .mount(server)
        .await;
}

// ---- auth and reads ----------------------------------------------------------------------------

#[tokio::test]
async fn sends_token_header_and_reads_version() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api2/json/version"))
        .and(header(
            "Authorization",
            format!("PVEAPIToken={TOKEN}").as_str(),
        ))
        .respond_with(json("version"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(&server);
    let v = c.version().await.unwrap();
    assert_eq!(v.release, "8.4");
    let reqs = server.received_requests().await.unwrap();
    // Tokens need no CSRF header and no cookie.
    assert!(reqs[0].headers.get("CSRFPreventionToken").is_none());
    assert!(reqs[0].headers.get("Cookie").is_none());
    assert!(!format!("{c:?}").contains(SECRET));
}

#[tokio::test]
async fn status_config_feature_and_cluster_views() {
    let server = MockServer::start().await;
    for (p, f) in [
        (format!("{VM_BASE}/status/current"), "status_current"),
        (format!("{VM_BASE}/config"), "config"),
        ("/api2/json/nodes".to_owned(), "nodes"),
        (
            format!("{VM_BASE}/agent/network-get-interfaces"),
            "agent_interfaces",
        ),
        (format!("{VM_BASE}/snapshot"), "snapshot_list"),
    ] {
        Mock::given(method("GET"))
            .and(path(p))
            .respond_with(json(f))
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path(format!("{VM_BASE}/feature")))
        .and(query_param("feature", "snapshot"))
        .respond_with(json("feature_snapshot"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api2/json/cluster/resources"))
        .and(query_param("type", "vm"))
        .respond_with(json("cluster_resources_vm"))
        .mount(&server)
        .await;
    let (c, _) = client(&server);

    let s = c.vm_status(&vm()).await.unwrap();
    assert!(s.is_running() && s.agent && s.lock.is_none());
    assert_eq!(s.name.as_deref(), Some("talos-cp-1"));

    let cfg = c.vm_config(&vm()).await.unwrap();
    assert_eq!(cfg.parent.as_deref(), Some("pre-dr-20240524"));
    assert_eq!(cfg.disks().len(), 1);

    assert!(c.snapshot_feature(&vm()).await.unwrap().has_feature);

    let vms = c.cluster_vms().await.unwrap();
    assert_eq!(vms.len(), 3);
    assert_eq!(vms[1].status, "unknown");
    assert!(vms[1].name.is_none());
    assert!(!vms[2].is_qemu());
    assert_eq!(vms[2].lock.as_deref(), Some("backup"));

    let nodes = c.nodes().await.unwrap();
    assert_eq!(nodes[1].status, "offline");

    let ifs = c.agent_interfaces(&vm()).await.unwrap();
    assert_eq!(ifs.len(), 4);
    assert!(ifs[3].ip_addresses.is_empty());

    let snaps = c.list_snapshots(&vm()).await.unwrap();
    assert_eq!(snaps.len(), 3);
    assert!(snaps[2].is_current());
    assert_eq!(snaps[2].running, Some(true));
}

// ---- snapshot create and task polling ----------------------------------------------------------

#[tokio::test]
async fn snapshot_create_running_then_ok() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{VM_BASE}/snapshot")))
        .and(header("Content-Type", "application/x-www-form-urlencoded"))
        .and(body_string(
            "snapname=talosdr-up-2405241418&description=talos-dr%3A+before+etcd+restore&vmstate=0",
        ))
        .respond_with(json("snapshot_create"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(TASK_STATUS))
        .respond_with(json("task_running"))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(TASK_STATUS))
        .respond_with(json("task_stopped_ok"))
        .mount(&server)
        .await;
    let (c, rec) = client(&server);
    let done = c
        .snapshot_and_wait(&vm(), &snap_req("talosdr-up-2405241418"))
        .await
        .unwrap();
    let task = done.task.unwrap();
    assert_eq!(task.exitstatus, "OK");
    assert_eq!(task.warnings, 0);
    assert_eq!(task.polls, 3);
    assert!(!done.recovered);
    assert_eq!(count(&server, "GET", TASK_STATUS).await, 3);
    // No log fetch on success.
    assert_eq!(count(&server, "GET", TASK_LOG).await, 0);

    let events = rec.events();
    assert!(matches!(&events[0], Event::WaitStarted { key, .. } if key == "vm 101"));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::WaitProgress { key, .. } if key == "vm 101"))
            .count(),
        2
    );
    assert!(
        matches!(events.last(), Some(Event::WaitFinished { key, ok: true, .. }) if key == "vm 101")
    );
}

#[tokio::test]
async fn task_warnings_are_success() {
    let server = MockServer::start().await;
    mount_snapshot_post(&server).await;
    Mock::given(method("GET"))
        .and(path(TASK_STATUS))
        .respond_with(json("task_stopped_warnings"))
        .mount(&server)
        .await;
    let (c, _) = client(&server);
    let done = c
        .snapshot_and_wait(&vm(), &snap_req("pre-dr"))
        .await
        .unwrap();
    let task = done.task.unwrap();
    assert_eq!(task.exitstatus, "WARNINGS: 1");
    assert_eq!(task.warnings, 1);
}

#[rstest]
#[case("task_stopped_locked", "VM is locked (backup)", Some("backup"))]
#[case("task_stopped_name_used", "snapshot name 'x' already used", None)]
#[case("task_stopped_no_feature", "snapshot feature is not available", None)]
#[tokio::test]
async fn task_failures_carry_exitstatus_and_log(
    #[case] fixture_name: &str,
    #[case] exitstatus: &str,
    #[case] lock: Option<&str>,
) {
    let server = MockServer::start().await;
    mount_snapshot_post(&server).await;
    Mock::given(method("GET"))
        .and(path(TASK_STATUS))
        .respond_with(json(fixture_name))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(TASK_LOG))
        .respond_with(json("task_log_locked"))
        .mount(&server)
        .await;
    let (c, rec) = client(&server);
    let err = c
        .snapshot_and_wait(&vm(), &snap_req("pre-dr"))
        .await
        .unwrap_err();
    match &err {
        PveError::TaskFailed {
            exitstatus: got,
            log_tail,
            target,
            ..
        } => {
            assert_eq!(got, exitstatus);
            assert_eq!(log_tail, &["TASK ERROR: VM is locked (backup)"]);
            assert_eq!(target.vmid, Some(101));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.locked_by(), lock);
    assert!(err.to_string().contains("VM 101 on node pve1"), "{err}");
    assert!(!err.is_transient());
    // A task failure is never answered with another POST.
    assert_eq!(
        count(&server, "POST", &format!("{VM_BASE}/snapshot")).await,
        1
    );
    assert!(matches!(
        rec.events().last(),
        Some(Event::WaitFinished { ok: false, .. })
    ));
    assert_no_secret(&err, &rec);
}

#[tokio::test]
async fn first_poll_no_such_task_is_retried() {
    let server = MockServer::start().await;
    mount_snapshot_post(&server).await;
    Mock::given(method("GET"))
        .and(path(TASK_STATUS))
        .respond_with(err_json(400, "error_400_no_such_task"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(TASK_STATUS))
        .respond_with(json("task_running"))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(TASK_STATUS))
        .respond_with(json("task_stopped_ok"))
        .with_priority(3)
        .mount(&server)
        .await;
    let (c, _) = client(&server);
    let done = c
        .snapshot_and_wait(&vm(), &snap_req("pre-dr"))
        .await
        .unwrap();
    assert_eq!(done.task.unwrap().polls, 3);
    assert_eq!(count(&server, "GET", TASK_STATUS).await, 3);
}

#[tokio::test]
async fn no_such_task_after_grace_is_an_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(TASK_STATUS))
        .respond_with(err_json(400, "error_400_no_such_task"))
        .mount(&server)
        .await;
    let rec = Arc::new(RecordingReporter::default());
    let c = PveClient::builder(&server.uri(), ApiToken::parse(TOKEN).unwrap())
        .poll(PollConfig {
            not_found_grace: Duration::from_millis(100),
            ..PollConfig::fast()
        })
        .reporter(rec.clone())
        .build()
        .unwrap();
    let upid: Upid = UPID.parse().unwrap();
    let err = c
        .wait_for_task(&upid, "vm 101", &Default::default())
        .await
        .unwrap_err();
    assert!(err.is_no_such_task(), "{err}");
    let polls = count(&server, "GET", TASK_STATUS).await;
    // 100 ms of grace at 5..20 ms per poll: bounded, no hot loop.
    assert!((3..=25).contains(&polls), "{polls} polls");
}

#[tokio::test]
async fn task_timeout_does_not_hang() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(TASK_STATUS))
        .respond_with(json("task_running"))
        .mount(&server)
        .await;
    let c = PveClient::builder(&server.uri(), ApiToken::parse(TOKEN).unwrap())
        .poll(PollConfig {
            timeout: Duration::from_millis(150),
            ..PollConfig::fast()
        })
        .build()
        .unwrap();
    let upid: Upid = UPID.parse().unwrap();
    let err = c
        .wait_for_task(&upid, "vm 101", &Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PveError::TaskTimeout { .. }), "{err}");
    assert!(err.to_string().contains("not cancelled"));
    let polls = count(&server, "GET", TASK_STATUS).await;
    assert!((3..=30).contains(&polls), "{polls} polls");
}

/// Stays `running` until `after` has passed since the first poll, then `stopped`/`OK`.
struct TimedTask {
    first: std::sync::Mutex<Option<Instant>>,
    after: Duration,
}

impl Respond for TimedTask {
    fn respond(&self, _req: &Request) -> ResponseTemplate {
        let mut first = self.first.lock().unwrap();
        let t0 = *first.get_or_insert_with(Instant::now);
        if t0.elapsed() < self.after {
            json("task_running")
        } else {
            json("task_stopped_ok")
        }
    }
}

#[tokio::test]
async fn realistic_polling_of_a_3s_task_needs_few_polls() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(TASK_STATUS))
        .respond_with(TimedTask {
            first: Default::default(),
            after: Duration::from_secs(3),
        })
        .mount(&server)
        .await;
    // Default (production) poll timing, with jitter.
    let c = PveClient::builder(&server.uri(), ApiToken::parse(TOKEN).unwrap())
        .build()
        .unwrap();
    let upid: Upid = UPID.parse().unwrap();
    let t0 = Instant::now();
    let out = c
        .wait_for_task(&upid, "vm 101", &Default::default())
        .await
        .unwrap();
    let polls = count(&server, "GET", TASK_STATUS).await;
    assert_eq!(out.polls as usize, polls);
    // 0.8 s × 1.6 (shifted by a phase from the UPID), capped at 5 s: 4 to 5 polls for 3 s.
    assert!((3..=6).contains(&polls), "{polls} polls");
    assert!(t0.elapsed() < Duration::from_secs(9), "{:?}", t0.elapsed());
}

// ---- error shapes ------------------------------------------------------------------------------

#[tokio::test]
async fn error_400_with_errors_is_flattened_and_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{VM_BASE}/snapshot")))
        .respond_with(err_json(400, "error_400_snapname"))
        .mount(&server)
        .await;
    let (c, rec) = client(&server);
    let err = c
        .snapshot_and_wait(&vm(), &snap_req("pre-dr"))
        .await
        .unwrap_err();
    let PveError::Api {
        status,
        message,
        errors,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*status, 400);
    assert_eq!(
        message,
        "Parameter verification failed. (snapname: invalid format - invalid configuration ID '1bad')"
    );
    assert_eq!(
        errors.get("snapname").map(String::as_str),
        Some("invalid format - invalid configuration ID '1bad'")
    );
    assert!(
        err.to_string()
            .contains("POST /nodes/pve1/qemu/101/snapshot"),
        "{err}"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert_no_secret(&err, &rec);
}

#[tokio::test]
async fn error_401_empty_body() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api2/json/version"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    let (c, rec) = client(&server);
    let err = c.version().await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(err.to_string().contains("authentication failure"), "{err}");
    assert!(!err.is_transient());
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert_no_secret(&err, &rec);
}

#[tokio::test]
async fn error_500_with_message_is_permanent() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("{VM_BASE}/status/current")))
        .respond_with(err_json(500, "error_500_config_missing"))
        .mount(&server)
        .await;
    let (c, _) = client(&server);
    let err = c.vm_status(&vm()).await.unwrap_err();
    assert_eq!(
        err.server_message(),
        Some("Configuration file 'nodes/pve2/qemu-server/101.conf' does not exist")
    );
    assert!(
        err.to_string()
            .starts_with("VM 101 on node pve1: GET /nodes/pve1/qemu/101/status/current: HTTP 500")
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn error_500_without_message_is_retried_then_reported() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("{VM_BASE}/config")))
        .respond_with(err_json(500, "error_500_plain"))
        .mount(&server)
        .await;
    let (c, rec) = client(&server);
    let err = c.vm_config(&vm()).await.unwrap_err();
    assert_eq!(err.server_message(), Some("Internal Server Error"));
    // One try plus RetryConfig::fast().max_times retries.
    assert_eq!(server.received_requests().await.unwrap().len(), 4);
    let retries = rec
        .events()
        .iter()
        .filter(
            |e| matches!(e, Event::Retry { what, .. } if what == "GET /nodes/pve1/qemu/101/config"),
        )
        .count();
    assert_eq!(retries, 3);
}

#[tokio::test]
async fn error_596_empty_body_on_get_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("{VM_BASE}/status/current")))
        .respond_with(ResponseTemplate::new(596))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{VM_BASE}/status/current")))
        .respond_with(json("status_current"))
        .mount(&server)
        .await;
    let (c, _) = client(&server);
    assert!(c.vm_status(&vm()).await.unwrap().is_running());
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn error_596_on_snapshot_post_checks_the_list_instead_of_retrying() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{VM_BASE}/snapshot")))
        .respond_with(ResponseTemplate::new(596))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{VM_BASE}/snapshot")))
        .respond_with(json("snapshot_list"))
        .mount(&server)
        .await;
    let (c, _) = client(&server);

    // The list shows the snapshot: it was created.
    let done = c
        .snapshot_and_wait(&vm(), &snap_req("pre-dr-20240524"))
        .await
        .unwrap();
    assert!(done.recovered && done.task.is_none());
    assert_eq!(
        count(&server, "POST", &format!("{VM_BASE}/snapshot")).await,
        1
    );

    // The list does not show it: the original error, and still only one POST.
    let err = c
        .snapshot_and_wait(&vm(), &snap_req("other"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(596));
    assert!(err.to_string().contains("596"), "{err}");
    assert_eq!(
        count(&server, "POST", &format!("{VM_BASE}/snapshot")).await,
        2
    );
}

/// A TCP proxy in front of wiremock that resets the first `resets` connections.
async fn resetting_proxy(upstream: SocketAddr, resets: usize) -> (String, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let seen = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if n < resets {
                    let mut buf = [0u8; 1024];
                    let _ = inbound.read(&mut buf).await;
                    // Zero linger turns the close into a TCP RST.
                    #[allow(deprecated)]
                    let _ = inbound.set_linger(Some(Duration::ZERO));
                    drop(inbound);
                } else if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (format!("http://{addr}"), conns)
}

#[tokio::test]
async fn connection_reset_on_get_then_success() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api2/json/version"))
        .respond_with(json("version"))
        .mount(&server)
        .await;
    let (uri, conns) = resetting_proxy(*server.address(), 1).await;
    let (c, rec) = client_for(&uri);
    assert_eq!(c.version().await.unwrap().version, "8.4.1");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert!(
        rec.events()
            .iter()
            .any(|e| matches!(e, Event::Retry { .. }))
    );
}

#[tokio::test]
async fn connection_reset_on_post_is_not_retried_blindly() {
    let server = MockServer::start().await;
    mount_snapshot_post(&server).await;
    Mock::given(method("GET"))
        .and(path(format!("{VM_BASE}/snapshot")))
        .respond_with(json("snapshot_list_empty"))
        .mount(&server)
        .await;
    let (uri, _conns) = resetting_proxy(*server.address(), 1).await;
    let (c, _) = client_for(&uri);
    let err = c
        .snapshot_and_wait(&vm(), &snap_req("pre-dr"))
        .await
        .unwrap_err();
    assert!(matches!(err, PveError::Transport { .. }), "{err:?}");
    // The POST never reached the server, the list was checked, nothing else was sent.
    assert_eq!(
        count(&server, "POST", &format!("{VM_BASE}/snapshot")).await,
        0
    );
    assert_eq!(
        count(&server, "GET", &format!("{VM_BASE}/snapshot")).await,
        1
    );
}

#[tokio::test]
async fn connect_refused_is_transient_and_names_the_path() {
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let (c, rec) = client_for(&format!("http://{addr}"));
    let err = c.vm_status(&vm()).await.unwrap_err();
    assert!(err.is_transient());
    assert!(matches!(err, PveError::Transport { not_sent: true, .. }));
    assert!(
        err.to_string()
            .contains("GET /nodes/pve1/qemu/101/status/current"),
        "{err}"
    );
    assert_eq!(
        rec.events()
            .iter()
            .filter(|e| matches!(e, Event::Retry { .. }))
            .count(),
        3
    );
    assert_no_secret(&err, &rec);
}

// ---- rollback, delete, power -------------------------------------------------------------------

#[tokio::test]
async fn rollback_sends_start_in_the_form() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{VM_BASE}/snapshot/pre-dr-20240524/rollback")))
        .and(body_string("start=1"))
        .respond_with(json("snapshot_create"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(TASK_STATUS))
        .respond_with(json("task_stopped_ok"))
        .mount(&server)
        .await;
    let (c, _) = client(&server);
    let name = SnapshotName::parse("pre-dr-20240524").unwrap();
    let out = c.rollback_and_wait(&vm(), &name, true).await.unwrap();
    assert_eq!(out.exitstatus, "OK");
}

#[tokio::test]
async fn delete_puts_force_in_the_query_string() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path(format!("{VM_BASE}/snapshot/pre-dr-20240524")))
        .and(query_param("force", "1"))
        .respond_with(json("snapshot_create"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(TASK_STATUS))
        .respond_with(json("task_stopped_ok"))
        .mount(&server)
        .await;
    let (c, _) = client(&server);
    let name = SnapshotName::parse("pre-dr-20240524").unwrap();
    let done = c
        .delete_snapshot_and_wait(&vm(), &name, true)
        .await
        .unwrap();
    assert!(done.task.is_some());
    let reqs = server.received_requests().await.unwrap();
    let del = reqs.iter().find(|r| r.method.as_str() == "DELETE").unwrap();
    assert!(del.body.is_empty(), "DELETE bodies are ignored by PVE");
    assert_eq!(del.url.query(), Some("force=1"));
}

#[tokio::test]
async fn delete_with_lost_answer_is_resolved_by_listing() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path(format!("{VM_BASE}/snapshot/pre-dr")))
        .respond_with(ResponseTemplate::new(595))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{VM_BASE}/snapshot")))
        .respond_with(json("snapshot_list"))
        .mount(&server)
        .await;
    let (c, _) = client(&server);
    let name = SnapshotName::parse("pre-dr").unwrap();
    let done = c
        .delete_snapshot_and_wait(&vm(), &name, false)
        .await
        .unwrap();
    assert!(done.recovered);
    assert_eq!(
        count(&server, "DELETE", &format!("{VM_BASE}/snapshot/pre-dr")).await,
        1
    );
}

#[tokio::test]
async fn invalid_label_is_rejected_before_any_request() {
    let server = MockServer::start().await;
    let at: jiff::Timestamp = "2024-05-24T14:18:26Z".parse().unwrap();
    for bad in ["Upgrade", "v1.9", "a-label-that-is-far-too-long"] {
        assert!(SnapshotName::for_label(bad, at).is_err(), "{bad}");
    }
    assert!(server.received_requests().await.unwrap().is_empty());
}

// ---- TLS pinning -------------------------------------------------------------------------------

/// A one-route HTTPS server with a fresh self-signed certificate; counts the requests it reads.
async fn tls_server() -> (SocketAddr, [u8; 32], String, Arc<AtomicUsize>) {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let der = ck.cert.der().clone();
    let fp = talos_dr::pve::tls::fingerprint_of(der.as_ref());
    let pem = ck.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![der], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let body = fixture("version").to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json;charset=UTF-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, fp, pem, requests)
}

#[tokio::test]
async fn pinned_certificate_is_accepted() {
    let (addr, fp, _, requests) = tls_server().await;
    let c = PveClient::builder(
        &format!("https://localhost:{}", addr.port()),
        ApiToken::parse(TOKEN).unwrap(),
    )
    .tls(TlsMode::Pinned(vec![[7u8; 32], fp]))
    .retry(RetryConfig::fast())
    .build()
    .unwrap();
    assert_eq!(c.version().await.unwrap().version, "8.4.1");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn wrong_pin_is_refused_before_the_token_is_sent() {
    let (addr, fp, _, requests) = tls_server().await;
    let rec = Arc::new(RecordingReporter::default());
    let c = PveClient::builder(
        &format!("https://127.0.0.1:{}", addr.port()),
        ApiToken::parse(TOKEN).unwrap(),
    )
    .tls(TlsMode::Pinned(vec![[0xAB; 32]]))
    .retry(RetryConfig::fast())
    .reporter(rec.clone())
    .build()
    .unwrap();
    let err = c.version().await.unwrap_err();
    let PveError::FingerprintMismatch { seen, expected, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(seen, &talos_dr::pve::tls::format_fingerprint(&fp));
    assert!(expected.starts_with("AB:AB:"));
    assert!(err.to_string().contains(seen.as_str()));
    assert!(!err.is_transient());
    // No retries, and the server never read an HTTP request (so never saw the token).
    assert_eq!(requests.load(Ordering::SeqCst), 0);
    assert!(
        !rec.events()
            .iter()
            .any(|e| matches!(e, Event::Retry { .. }))
    );
}

#[tokio::test]
async fn ca_file_trust() {
    let (addr, _, pem, requests) = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("pve-root-ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let c = PveClient::builder(
        &format!("https://localhost:{}", addr.port()),
        ApiToken::parse(TOKEN).unwrap(),
    )
    .tls(TlsMode::CaFile(ca))
    .retry(RetryConfig::fast())
    .build()
    .unwrap();
    assert_eq!(c.version().await.unwrap().release, "8.4");

    // Default trust (web PKI) refuses the self-signed certificate, without retrying.
    let c = PveClient::builder(
        &format!("https://localhost:{}", addr.port()),
        ApiToken::parse(TOKEN).unwrap(),
    )
    .retry(RetryConfig::fast())
    .build()
    .unwrap();
    let err = c.version().await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

// ---- every request against the schema ----------------------------------------------------------

fn matches_template(template: &str, actual: &str) -> Option<BTreeMap<String, String>> {
    let t: Vec<&str> = template.trim_start_matches('/').split('/').collect();
    let a: Vec<&str> = actual.trim_start_matches('/').split('/').collect();
    if t.len() != a.len() {
        return None;
    }
    let mut binds = BTreeMap::new();
    for (ts, as_) in t.iter().zip(&a) {
        if let Some(name) = ts.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let decoded = url::form_urlencoded::parse(format!("x={as_}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            binds.insert(name.to_owned(), decoded);
        } else if ts != as_ {
            return None;
        }
    }
    Some(binds)
}

fn check_value(endpoint: &str, name: &str, value: &str, prop: &serde_json::Value) {
    let ctx = format!("{endpoint}: parameter {name}={value}");
    match prop["type"].as_str() {
        Some("boolean") => assert!(value == "0" || value == "1", "{ctx}: booleans are 1/0"),
        Some("integer") => {
            let n: i64 = value
                .parse()
                .unwrap_or_else(|_| panic!("{ctx}: not an integer"));
            if let Some(min) = prop["minimum"].as_i64() {
                assert!(n >= min, "{ctx}: below minimum");
            }
        }
        Some("string") => {}
        other => panic!("{ctx}: unexpected schema type {other:?}"),
    }
    if let Some(values) = prop["enum"].as_array() {
        assert!(values.iter().any(|v| v == value), "{ctx}: not in enum");
    }
    if let Some(max) = prop["maxLength"].as_u64() {
        assert!(value.len() as u64 <= max, "{ctx}: too long");
    }
    match prop["format"].as_str() {
        Some("pve-node") => assert!(
            !value.is_empty()
                && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !value.starts_with('-')
                && !value.ends_with('-'),
            "{ctx}: not a node name"
        ),
        Some("pve-vmid") => {
            let n: u64 = value.parse().unwrap_or_else(|_| panic!("{ctx}: vmid"));
            assert!((100..=999_999_999).contains(&n), "{ctx}: vmid range");
        }
        Some("pve-configid") => {
            SnapshotName::parse(value).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        }
        _ => {}
    }
    if name == "upid" {
        value
            .parse::<Upid>()
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
    }
}

pub(crate) fn check_against_schema(schema: &serde_json::Value, req: &Request) -> String {
    let m = req.method.as_str();
    let p = req
        .url
        .path()
        .strip_prefix("/api2/json")
        .unwrap_or_else(|| panic!("{m} {}: not under /api2/json", req.url.path()));
    let endpoints = schema["endpoints"].as_array().unwrap();
    let (ep, binds) = endpoints
        .iter()
        .filter(|e| e["method"] == m)
        .find_map(|e| matches_template(e["path"].as_str()?, p).map(|b| (e, b)))
        .unwrap_or_else(|| panic!("{m} {p}: no such endpoint in the schema"));
    let key = format!("{m} {}", ep["path"].as_str().unwrap());
    assert!(req.headers.get("authorization").is_some(), "{key}: no auth");

    let mut params: BTreeMap<String, String> = binds;
    for (k, v) in req.url.query_pairs() {
        assert!(
            params.insert(k.to_string(), v.to_string()).is_none(),
            "{key}: duplicate {k}"
        );
    }
    if m == "POST" || m == "PUT" {
        if !req.body.is_empty() {
            let ct = req.headers.get("content-type").unwrap().to_str().unwrap();
            assert_eq!(ct, "application/x-www-form-urlencoded", "{key}");
        }
        for (k, v) in url::form_urlencoded::parse(&req.body) {
            assert!(
                params.insert(k.to_string(), v.to_string()).is_none(),
                "{key}: duplicate {k}"
            );
        }
    } else {
        assert!(
            req.body.is_empty(),
            "{key}: {m} parameters belong in the query string"
        );
    }
    let props = ep["parameters"]["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (name, value) in &params {
        // `net0`, `scsi1`, …: the schema names the family `net[n]`.
        let family = format!("{}[n]", name.trim_end_matches(|c: char| c.is_ascii_digit()));
        let prop = props
            .get(name)
            .or_else(|| props.get(&family))
            .unwrap_or_else(|| panic!("{key}: parameter {name} not in the schema"));
        check_value(&key, name, value, prop);
    }
    for (name, prop) in &props {
        let optional = prop["optional"].as_u64() == Some(1) || prop["optional"] == true;
        assert!(
            optional || params.contains_key(name),
            "{key}: required {name} missing"
        );
    }
    key
}

#[tokio::test]
async fn every_request_matches_the_api_schema() {
    let schema = fixture("pve-api-subset");
    let server = MockServer::start().await;
    let routes: &[(&str, &str, &str)] = &[
        ("GET", r"^/api2/json/version$", "version"),
        (
            "GET",
            r"^/api2/json/cluster/resources$",
            "cluster_resources_vm",
        ),
        ("GET", r"^/api2/json/nodes$", "nodes"),
        (
            "GET",
            r"^/api2/json/nodes/[^/]+/qemu$",
            "cluster_resources_vm",
        ),
        ("GET", r"/status/current$", "status_current"),
        ("GET", r"/config$", "config"),
        ("GET", r"/feature$", "feature_snapshot"),
        ("GET", r"/agent/network-get-interfaces$", "agent_interfaces"),
        ("GET", r"/qemu/\d+/snapshot$", "snapshot_list"),
        ("GET", r"/tasks/[^/]+/status$", "task_stopped_ok"),
        ("GET", r"/tasks/[^/]+/log$", "task_log"),
        ("POST", r".*", "snapshot_create"),
        ("DELETE", r".*", "snapshot_create"),
    ];
    // The rebuild reads, answered inline (shapes as pve-api-subset.json's `returns`).
    let inline: &[(&str, &str, serde_json::Value)] = &[
        (
            "GET",
            r"^/api2/json/cluster/nextid$",
            serde_json::json!("105"),
        ),
        (
            "GET",
            r"^/api2/json/nodes/[^/]+/storage$",
            serde_json::json!([{"storage": "pbs", "type": "pbs", "content": "backup", "shared": 1, "active": 1, "enabled": 1}]),
        ),
        (
            "GET",
            r"^/api2/json/nodes/[^/]+/storage/[^/]+/content$",
            serde_json::json!([{"volid": "pbs:backup/vm/101/2026-12-01T02:00:05Z", "ctime": 1_764_554_405, "format": "pbs-vm", "vmid": 101, "size": 1}]),
        ),
        ("PUT", r"/config$", serde_json::Value::Null),
    ];
    for (m, re, body) in inline {
        Mock::given(method(*m))
            .and(path_regex(*re))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(serde_json::json!({ "data": body })),
            )
            .mount(&server)
            .await;
    }
    for (m, re, f) in routes {
        Mock::given(method(*m))
            .and(path_regex(*re))
            .respond_with(json(f))
            .mount(&server)
            .await;
    }
    let (c, _) = client(&server);
    let v = vm();
    let name = SnapshotName::parse("talosdr-up-2405241418").unwrap();
    let upid: Upid = UPID.parse().unwrap();
    c.version().await.unwrap();
    c.cluster_vms().await.unwrap();
    c.nodes().await.unwrap();
    c.node_qemu("pve1").await.unwrap();
    c.vm_status(&v).await.unwrap();
    c.vm_config(&v).await.unwrap();
    c.snapshot_feature(&v).await.unwrap();
    c.agent_interfaces(&v).await.unwrap();
    c.list_snapshots(&v).await.unwrap();
    c.create_snapshot(&v, &snap_req(name.as_str()))
        .await
        .unwrap();
    c.create_snapshot(
        &v,
        &SnapshotRequest {
            name: name.clone(),
            description: None,
            vmstate: true,
        },
    )
    .await
    .unwrap();
    c.delete_snapshot(&v, &name, true).await.unwrap();
    c.delete_snapshot(&v, &name, false).await.unwrap();
    c.rollback_snapshot(&v, &name, true).await.unwrap();
    c.rollback_snapshot(&v, &name, false).await.unwrap();
    c.start_vm(&v).await.unwrap();
    c.shutdown_vm(&v, Some(120), true).await.unwrap();
    c.shutdown_vm(&v, None, false).await.unwrap();
    c.stop_vm(&v).await.unwrap();
    c.task_status(&upid, &Default::default()).await.unwrap();
    c.task_log(&upid, 0, 50, &Default::default()).await.unwrap();
    c.wait_for_task(&upid, "vm 101", &Default::default())
        .await
        .unwrap();
    // The calls that re-create a lost VM (rebuild-node).
    assert_eq!(c.next_vmid().await.unwrap(), 105);
    let st = c.storages("pve1", Some("backup")).await.unwrap();
    assert!(st[0].shared && st[0].holds("backup"));
    let b = c.backups("pve1", "pbs", 101).await.unwrap();
    assert_eq!(b[0].vmid, Some(101));
    c.restore_vm(
        "pve1",
        &talos_dr::pve::RestoreRequest {
            vmid: 105,
            archive: b[0].volid.clone(),
            storage: Some("local-lvm".into()),
            unique: false,
        },
    )
    .await
    .unwrap();
    c.clone_vm(
        &v,
        &talos_dr::pve::CloneRequest {
            newid: 106,
            name: "talos-cp-2".into(),
            target: Some("pve2".into()),
            storage: None,
            description: Some("talos-dr rebuild-node".into()),
        },
    )
    .await
    .unwrap();
    c.update_vm_config(
        &VmRef::new("pve1", 106),
        &[
            ("net0", "virtio=BC:24:11:2A:6C:9E,bridge=vmbr0".to_owned()),
            ("cores", "4".to_owned()),
            ("memory", "8192".to_owned()),
        ],
        Some("3f1e0c"),
    )
    .await
    .unwrap();

    let reqs = server.received_requests().await.unwrap();
    let mut covered = std::collections::BTreeSet::new();
    for r in &reqs {
        covered.insert(check_against_schema(&schema, r));
    }
    // Every endpoint of the subset is exercised.
    let all: std::collections::BTreeSet<String> = schema["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["method"].as_str().unwrap(),
                e["path"].as_str().unwrap()
            )
        })
        .collect();
    // The simulator also serves a VM's asynchronous config change and its destruction (a user's
    // clean-up); talos-dr sets configs synchronously and never destroys a VM.
    let unused: std::collections::BTreeSet<String> = [
        "POST /nodes/{node}/qemu/{vmid}/config",
        "DELETE /nodes/{node}/qemu/{vmid}",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(
        covered,
        all.difference(&unused)
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
    );
}

// ---- vm-check ----------------------------------------------------------------------------------

async fn mount_vm(server: &MockServer, node: &str, vmid: u32, status: &str, feature: &str) {
    let base = format!("/api2/json/nodes/{node}/qemu/{vmid}");
    Mock::given(method("GET"))
        .and(path(format!("{base}/status/current")))
        .respond_with(json(status))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{base}/feature")))
        .respond_with(json(feature))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{base}/config")))
        .respond_with(json("config"))
        .mount(server)
        .await;
}

#[tokio::test]
async fn vm_check_passes_for_a_healthy_vm() {
    let server = MockServer::start().await;
    mount_vm(&server, "pve1", 101, "status_current", "feature_snapshot").await;
    let (c, _) = client(&server);
    let check = check_vm(&c, &vm(), CheckOptions::default()).await;
    assert!(check.ok, "{:?}", check.problems);
    assert_eq!(check.snapshot_feature, Some(true));
    assert_eq!(check.status.as_deref(), Some("running"));
    assert!(ensure_ok(&[check]).is_ok());
}

#[tokio::test]
async fn vm_checks_report_every_problem_of_every_vm() {
    let server = MockServer::start().await;
    mount_vm(
        &server,
        "pve1",
        101,
        "status_current_locked",
        "feature_snapshot_no",
    )
    .await;
    mount_vm(
        &server,
        "pve2",
        102,
        "status_current_stopped",
        "feature_snapshot",
    )
    .await;
    // VM 103 is expected on pve1 but lives on pve3.
    Mock::given(method("GET"))
        .and(path("/api2/json/nodes/pve1/qemu/103/status/current"))
        .respond_with(err_json(500, "error_500_config_missing"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api2/json/cluster/resources"))
        .respond_with(json("cluster_resources_vm"))
        .mount(&server)
        .await;
    let (c, _) = client(&server);
    let vms = [
        VmRef::new("pve1", 101),
        VmRef::new("pve2", 102),
        VmRef::new("pve1", 103),
    ];
    let checks = check_vms(&c, &vms, CheckOptions::default(), 2).await;
    assert_eq!(
        checks.iter().map(|c| c.vm.vmid).collect::<Vec<_>>(),
        [101, 102, 103]
    );
    assert!(checks.iter().all(|c| !c.ok));

    let p101 = checks[0].problems.join("\n");
    assert!(p101.contains("VM 101 is locked (backup)"), "{p101}");
    assert!(
        p101.contains("VM 101: snapshot feature not available"),
        "{p101}"
    );
    assert!(p101.contains("scsi0=local-lvm:vm-101-disk-0"), "{p101}");
    assert_eq!(checks[0].lock.as_deref(), Some("backup"));

    assert!(checks[1].problems[0].contains("VM 102 is not running (status stopped"));
    assert!(
        checks[2].problems[0].contains("VM 103 does not exist on node pve1: it is on node pve3"),
        "{:?}",
        checks[2].problems
    );
    // 500 "does not exist" is not retried.
    assert_eq!(
        count(
            &server,
            "GET",
            "/api2/json/nodes/pve1/qemu/103/status/current"
        )
        .await,
        1
    );

    let err = ensure_ok(&checks).unwrap_err().to_string();
    for vmid in ["VM 101", "VM 102", "VM 103"] {
        assert!(err.contains(vmid), "{err}");
    }
    // The results serialise for `-o json`.
    let js = serde_json::to_value(&checks).unwrap();
    assert_eq!(js[0]["vm"]["vmid"], 101);
}

// ---- discovery ---------------------------------------------------------------------------------

#[tokio::test]
async fn discover_by_name_needs_no_agent_calls() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api2/json/cluster/resources"))
        .respond_with(json("cluster_resources_vm"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{VM_BASE}/config")))
        .respond_with(json("config"))
        .mount(&server)
        .await;
    let (c, _) = client(&server);
    let nodes = [NodeIdentity {
        address: "10.0.0.11".into(),
        hostname: Some("talos-cp-1".into()),
    }];
    let m = map_nodes(&c, &nodes).await.unwrap();
    assert_eq!(m[0].method, MatchMethod::Name);
    assert_eq!(m[0].vm, Some(vm()));
    // Matching took the resources list alone; the mapped VM's config is read once, for the
    // net0 MAC a rebuild from a template needs.
    let paths: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "/api2/json/cluster/resources".to_owned(),
            format!("{VM_BASE}/config")
        ]
    );
    assert!(
        m[0].mac.as_deref().is_some_and(|m| m.len() == 17),
        "{:?}",
        m[0].mac
    );
}

#[tokio::test]
async fn discover_by_agent_address_then_cloud_init() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api2/json/cluster/resources"))
        .respond_with(json("cluster_resources_vm"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{VM_BASE}/agent/network-get-interfaces")))
        .respond_with(json("agent_interfaces"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{VM_BASE}/config")))
        .respond_with(json("config"))
        .mount(&server)
        .await;
    let (c, _) = client(&server);
    let nodes = [
        NodeIdentity {
            address: "10.0.0.11".into(),
            hostname: Some("cp-a".into()),
        },
        // A CNI address of VM 101 must not map a node.
        NodeIdentity {
            address: "10.244.0.193".into(),
            hostname: None,
        },
    ];
    let m = map_nodes(&c, &nodes).await.unwrap();
    assert_eq!(m[0].method, MatchMethod::GuestAgent, "{}", m[0].reason);
    assert_eq!(m[0].vm, Some(vm()));
    assert_eq!(m[1].vm, None, "{}", m[1].reason);
    // The offline node's VM (103, status unknown) and the LXC guest are never queried.
    let reqs = server.received_requests().await.unwrap();
    assert!(
        reqs.iter()
            .all(|r| !r.url.path().contains("/103/") && !r.url.path().contains("/200/"))
    );
}
