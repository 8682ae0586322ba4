//! The real kubectl (1.32) against the simulated Kubernetes API.

use std::net::SocketAddr;
use std::time::Duration;

use talos_dr::exec::{self, ENV_KUBECTL};
use talos_dr::kube::{self, KubeError, Kubectl};
use talos_dr::sim::kube_api;
use talos_dr::sim::state::Kube;
use talos_dr::ui::{Event, RecordingReporter};
use tokio::task::JoinHandle;

use crate::common::Env;

struct Sim {
    env: Env,
    addr: SocketAddr,
    server: JoinHandle<()>,
    kubectl: Kubectl,
}

impl Sim {
    async fn start() -> Self {
        let bin = exec::resolve_tool("kubectl", ENV_KUBECTL).unwrap_or_else(|e| {
            panic!(
                "these tests run the real kubectl 1.32 and could not find it: {e} (install it from \
                 kubernetes.io or set TALOS_DR_KUBECTL; `scripts/test` says how)"
            )
        });
        let env = Env::new();
        let (addr, server) = kube_api::serve(env.state.clone()).await.unwrap();
        let kubeconfig = env.config_dir.join("kubeconfig");
        kube_api::write_kubeconfig(&kubeconfig, addr).unwrap();
        let mut kubectl = Kubectl::new(bin, kubeconfig);
        kubectl.timeout = Duration::from_secs(20);
        kubectl.cache_dir = Some(env.tmp.path().join("kube-cache"));
        Self {
            env,
            addr,
            server,
            kubectl,
        }
    }

    fn addresses(&self) -> Vec<String> {
        let c = talos_dr::sim::state::Cluster::load(&self.env.state).unwrap();
        c.nodes.iter().map(|n| n.address.clone()).collect()
    }

    /// kubectl run directly, to see its stderr on success too.
    async fn raw(&self, words: &[&str]) -> exec::CmdOutput {
        let mut args = vec![
            "--kubeconfig".to_owned(),
            self.kubectl.kubeconfig.display().to_string(),
            "--cache-dir".to_owned(),
            self.kubectl
                .cache_dir
                .as_ref()
                .unwrap()
                .display()
                .to_string(),
        ];
        args.extend(words.iter().map(|w| (*w).to_owned()));
        exec::run(&self.kubectl.bin, &args, &[], Duration::from_secs(20))
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn kubectl_talks_to_the_sim_without_errors_or_warnings() {
    let sim = Sim::start().await;
    for words in [
        &["get", "nodes", "-o", "json"][..],
        &["get", "pods", "-A", "-o", "json"][..],
    ] {
        let out = sim.raw(words).await;
        assert!(out.success(), "{words:?}: {}", out.stderr);
        assert_eq!(out.stderr, "", "{words:?} wrote to stderr");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert!(!v["items"].as_array().unwrap().is_empty());
    }
    // The kubeconfig names the sim's plain-HTTP address.
    let cfg = std::fs::read_to_string(&sim.kubectl.kubeconfig).unwrap();
    assert!(cfg.contains(&format!("server: http://{}", sim.addr)));
}

#[tokio::test]
async fn all_nodes_ready_with_roles_versions_and_addresses() {
    let sim = Sim::start().await;
    let nodes = sim.kubectl.nodes().await.unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "talos-cp-1",
            "talos-cp-2",
            "talos-cp-3",
            "talos-worker-1",
            "talos-worker-2"
        ]
    );
    assert!(nodes.iter().all(|n| n.ready && n.reason.is_none()));
    assert!(nodes.iter().all(|n| n.kubelet_version == "v1.32.3"));
    assert_eq!(nodes[0].roles, ["control-plane"]);
    assert!(nodes[3].roles.is_empty());
    assert_eq!(nodes[1].addresses[0], "10.5.0.12");
    let s = kube::summarize_nodes(&nodes);
    assert_eq!((s.total, s.ready), (5, 5));
}

#[tokio::test]
async fn node_turning_not_ready_shows_with_its_reason() {
    let sim = Sim::start().await;
    sim.env.edit_cluster(|c| {
        c.nodes[4].reachable = false;
        c.kube.nodes_not_ready = vec!["talos-cp-2".into()];
    });
    let nodes = sim.kubectl.nodes().await.unwrap();
    let s = kube::summarize_nodes(&nodes);
    assert_eq!((s.total, s.ready), (5, 3));
    let reasons: Vec<(&str, &str)> = s
        .not_ready
        .iter()
        .map(|(n, r)| (n.as_str(), r.as_str()))
        .collect();
    assert_eq!(reasons[0].0, "talos-cp-2");
    assert!(
        reasons[0].1.starts_with("Ready=False: KubeletNotReady:"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons[1],
        (
            "talos-worker-2",
            "Ready=Unknown: NodeStatusUnknown: Kubelet stopped posting node status."
        )
    );

    // Back to healthy while the same server keeps running: the state is re-read per request.
    sim.env.edit_cluster(|c| {
        c.nodes[4].reachable = true;
        c.kube.nodes_not_ready.clear();
    });
    let nodes = sim.kubectl.nodes().await.unwrap();
    assert!(nodes.iter().all(|n| n.ready));
}

#[tokio::test]
async fn control_plane_with_etcd_not_running_is_not_ready() {
    let sim = Sim::start().await;
    sim.env
        .edit_cluster(|c| c.nodes[2].etcd.state = "Preparing".into());
    let nodes = sim.kubectl.nodes().await.unwrap();
    let cp3 = nodes.iter().find(|n| n.name == "talos-cp-3").unwrap();
    assert!(!cp3.ready);
    assert!(cp3.reason.as_deref().unwrap().contains("etcd is Preparing"));
}

#[tokio::test]
async fn pod_summary_counts_and_lists_the_pods_not_running() {
    let sim = Sim::start().await;
    let pods = sim.kubectl.pods_all().await.unwrap();
    let healthy = kube::summarize_pods(&pods);
    assert_eq!(healthy.total, pods.len());
    assert_eq!(healthy.succeeded, 1, "the db-migrate Job");
    assert_eq!(healthy.running, pods.len() - 1);
    assert!(healthy.not_running.is_empty(), "{:?}", healthy.not_running);
    assert!(
        pods.iter()
            .any(|p| p.namespace == "kube-system" && p.name == "kube-apiserver-talos-cp-1")
    );

    let cluster = talos_dr::sim::state::Cluster::load(&sim.env.state).unwrap();
    let standard = Kube::standard_pods(&cluster.nodes);
    let web = standard
        .iter()
        .find(|p| p.name.starts_with("web-"))
        .unwrap();
    let dns = standard
        .iter()
        .find(|p| p.name.starts_with("coredns-"))
        .unwrap();
    let web_key = format!("{}/{}", web.namespace, web.name);
    let dns_key = format!("{}/{}", dns.namespace, dns.name);
    sim.env.edit_cluster(|c| {
        c.kube.pods_pending = vec![web_key.clone()];
        c.kube.pods_crashloop = vec![dns.name.clone()];
    });
    let pods = sim.kubectl.pods_all().await.unwrap();
    let s = kube::summarize_pods(&pods);
    assert_eq!(s.total, healthy.total);
    assert_eq!(s.running, healthy.running - 2);
    let listed: Vec<(&str, &str, &str)> = s
        .not_running
        .iter()
        .map(|p| (p.pod.as_str(), p.phase.as_str(), p.reason.as_str()))
        .collect();
    let mut expected = vec![
        (dns_key.as_str(), "Running", "CrashLoopBackOff"),
        (web_key.as_str(), "Pending", "ContainerCreating"),
    ];
    // Listed in the API's order: coredns pods come before the web pods.
    expected.sort_by_key(|(k, _, _)| pods.iter().position(|p| p.key() == *k));
    assert_eq!(listed, expected);
    let crashing = pods.iter().find(|p| p.key() == dns_key).unwrap();
    assert!(crashing.restarts >= 5);
}

#[tokio::test]
async fn wait_succeeds_when_a_node_becomes_ready_during_the_wait() {
    let sim = Sim::start().await;
    sim.env.edit_cluster(|c| c.nodes[3].reachable = false);
    let state = sim.env.state.clone();
    let fixer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut c = talos_dr::sim::state::Cluster::load(&state).unwrap();
        c.nodes[3].reachable = true;
        c.save(&state).unwrap();
    });
    let reporter = RecordingReporter::default();
    let nodes = sim
        .kubectl
        .wait_nodes_ready(&sim.addresses(), Duration::from_secs(30), &reporter)
        .await
        .unwrap();
    fixer.await.unwrap();
    assert!(nodes.iter().all(|n| n.ready));

    let events = reporter.events();
    assert!(matches!(&events[0], Event::WaitStarted { key, .. } if key == kube::WAIT_KEY));
    assert!(
        events.iter().any(|e| matches!(e,
            Event::WaitProgress { key, message, .. }
                if key == kube::WAIT_KEY && message.contains("4/5 nodes Ready; waiting for talos-worker-1"))),
        "{events:#?}"
    );
    assert!(
        matches!(events.last(), Some(Event::WaitFinished { ok: true, key, elapsed_ms, .. })
            if key == kube::WAIT_KEY && *elapsed_ms >= 1500),
        "{events:#?}"
    );
}

#[tokio::test]
async fn wait_times_out_naming_the_node_that_is_not_ready() {
    let sim = Sim::start().await;
    sim.env
        .edit_cluster(|c| c.kube.nodes_not_ready = vec!["10.5.0.12".into()]);
    let reporter = RecordingReporter::default();
    let started = std::time::Instant::now();
    let err = sim
        .kubectl
        .wait_nodes_ready(&sim.addresses(), Duration::from_secs(2), &reporter)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let KubeError::NodesNotReady { nodes, .. } = &err else {
        panic!("unexpected error: {err}");
    };
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].name.as_deref(), Some("talos-cp-2"));
    let text = err.to_string();
    assert!(
        text.contains("talos-cp-2 (10.5.0.12): Ready=False: KubeletNotReady"),
        "{text}"
    );
    assert!(
        matches!(reporter.events().last(), Some(Event::WaitFinished { ok: false, message, .. }) if message.contains("talos-cp-2")),
    );
}

#[tokio::test]
async fn wait_reports_the_api_error_when_etcd_is_down_everywhere() {
    let sim = Sim::start().await;
    sim.env.edit_cluster(|c| {
        for n in &mut c.nodes {
            n.etcd.state = "Preparing".into();
        }
    });
    let err = sim.kubectl.nodes().await.unwrap_err();
    assert!(
        err.stderr().contains("ServiceUnavailable") && err.stderr().contains("etcdserver"),
        "{err}"
    );
    let err = sim
        .kubectl
        .wait_nodes_ready(
            &["talos-cp-1".into()],
            Duration::from_secs(1),
            &RecordingReporter::default(),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("talos-cp-1"), "{text}");
    assert!(text.contains("last error:"), "{text}");
    assert!(text.contains("ServiceUnavailable"), "{text}");
}

#[tokio::test]
async fn kubectl_stderr_is_shown_when_the_server_is_down() {
    let sim = Sim::start().await;
    sim.kubectl.nodes().await.unwrap();
    let server = sim.server;
    server.abort();
    // Awaiting the aborted task guarantees the listener is closed before kubectl runs.
    let _ = server.await;
    let err = sim.kubectl.nodes().await.unwrap_err();
    let KubeError::Failed { command, stderr } = &err else {
        panic!("unexpected error: {err}");
    };
    assert_eq!(command, "kubectl get nodes -o json");
    assert!(
        stderr.contains("connection") || stderr.contains("connect"),
        "{stderr}"
    );
    assert!(stderr.contains(&sim.addr.to_string()), "{stderr}");
    let text = err.to_string();
    assert!(
        text.starts_with("`kubectl get nodes -o json` failed: "),
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
}

#[tokio::test]
async fn plain_kubectl_get_prints_the_usual_columns() {
    let sim = Sim::start().await;
    sim.env.edit_cluster(|c| {
        c.nodes[4].reachable = false;
        c.kube.pods_crashloop = vec!["kube-apiserver-talos-cp-1".into()];
    });
    let out = sim.raw(&["get", "nodes"]).await;
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stderr, "");
    let lines: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    assert_eq!(lines[1][..3], ["talos-cp-1", "Ready", "control-plane"]);
    assert_eq!(lines[1][4], "v1.32.3");
    assert_eq!(lines[5][..3], ["talos-worker-2", "NotReady", "<none>"]);

    let out = sim.raw(&["get", "pods", "-A", "-o", "wide"]).await;
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stderr, "");
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header[..7],
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP"
        ]
    );
    let apiserver = out
        .stdout
        .lines()
        .find(|l| l.contains("kube-apiserver-talos-cp-1"))
        .unwrap();
    let cells: Vec<&str> = apiserver.split_whitespace().collect();
    assert_eq!(
        cells[..5],
        [
            "kube-system",
            "kube-apiserver-talos-cp-1",
            "0/1",
            "CrashLoopBackOff",
            "5"
        ]
    );
    assert!(apiserver.contains("10.5.0.11") && apiserver.contains("talos-cp-1"));
}

/// What kubectl never asks for still gets a `meta/v1 Status` body, as from a real API server.
#[tokio::test]
async fn unknown_paths_and_other_methods_get_status_bodies() {
    let sim = Sim::start().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", sim.addr);
    // Secrets are served (from etcd's data, for the post-restore comparison); widgets are not.
    let r = http
        .get(format!("{base}/api/v1/secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["kind"], "SecretList");
    let r = http
        .get(format!("{base}/api/v1/widgets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (body["kind"].as_str(), body["code"].as_u64()),
        (Some("Status"), Some(404))
    );
    assert_eq!(
        body["message"],
        "the server could not find the requested resource (/api/v1/widgets)"
    );
    for (method, path) in [("POST", "/api/v1/nodes"), ("DELETE", "/nowhere")] {
        let r = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 405, "{method} {path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["reason"], "MethodNotAllowed", "{method} {path}");
    }
    // Resources answer 503 while etcd is down; discovery keeps answering.
    sim.env.disaster();
    let status = |path: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(status("/api/v1/pods").await, 503);
    assert_eq!(status("/api/v1").await, 200);
    assert_eq!(status("/version").await, 200);
}

/// The kinds of the post-restore comparison: the real kubectl resolves every one through the
/// sim's discovery (core, `apps`, `apiextensions.k8s.io`, `coordination.k8s.io`), quietly, and
/// `Kubectl::objects` counts what etcd's data holds.
#[tokio::test]
async fn kubectl_resolves_every_compared_kind_from_etcds_data() {
    let sim = Sim::start().await;
    let kinds = talos_dr::snapshot::compare::kubectl_resources();
    let out = sim.raw(&["get", &kinds, "-A", "-o", "json"]).await;
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stderr, "", "kubectl wrote to stderr");
    let objects = sim.kubectl.objects(&kinds).await.unwrap();
    let count = |kind: &str| objects.iter().filter(|o| o.kind == kind).count();
    // small.snapshot (`talos-dr inspect`): 3 deployments, 4 services, 10 configmaps, 10 secrets.
    assert_eq!(
        (
            count("Deployment"),
            count("Service"),
            count("ConfigMap"),
            count("Secret")
        ),
        (3, 4, 10, 10)
    );
    assert!(
        objects
            .iter()
            .filter(|o| o.kind == "Secret")
            .all(|o| o.namespace.is_some())
    );
    // One object, by short name and namespace; a name that is not there is kubectl's NotFound.
    let one = sim
        .raw(&[
            "get",
            "deploy",
            "-n",
            "monitoring",
            "deployment-00000003",
            "-o",
            "json",
        ])
        .await;
    assert!(one.success(), "{}", one.stderr);
    let v: serde_json::Value = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(v["apiVersion"], "apps/v1");
    assert_eq!(v["metadata"]["namespace"], "monitoring");
    let missing = sim.raw(&["get", "crd", "widgets.example.com"]).await;
    assert!(!missing.success());
    assert!(missing.stderr.contains("NotFound"), "{}", missing.stderr);
    // Plain `kubectl get` prints the names even without a server-side Table for these kinds.
    let plain = sim.raw(&["get", "configmaps", "-A"]).await;
    assert!(plain.success(), "{}", plain.stderr);
    assert!(
        plain.stdout.contains("configmap-00000083"),
        "{}",
        plain.stdout
    );
}
