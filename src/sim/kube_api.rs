//! A minimal simulated Kubernetes API server that the real `kubectl` (1.32) can talk to.
//!
//! Plain HTTP/1.1 on `127.0.0.1` (random port), axum routes over hyper (`sim/http.rs`). It
//! serves exactly what `kubectl get nodes|pods [-A] [-o json]` needs: legacy discovery (`/api`,
//! `/apis`, `/api/v1`, `/version`) and `v1` `NodeList` / `PodList` bodies built from the simulated
//! cluster in the state file. The file is re-read for every request, so tests flip faults while it
//! runs.
//!
//! Discovery is answered with plain `application/json` although kubectl asks for aggregated
//! discovery first; kubectl then falls back to the legacy documents without complaint. Plain
//! `kubectl get` asks for a server-side `Table` (`Accept: …;as=Table;…`); `-o json` does not
//! ([`table`]).
//!
//! Like a real API server whose etcd is gone, resource requests get `503 ServiceUnavailable`
//! while no control-plane node has etcd Running; discovery keeps answering.
//!
//! The workload and configuration kinds the post-restore comparison lists (namespaces,
//! deployments, secrets, CRDs, …) are served from etcd's data ([`objects`]), under `/api/v1` and
//! `/apis/GROUP/v1`, with their discovery documents.
//!
//! One write: `DELETE /api/v1/nodes/NAME` (`kubectl delete node NAME`), recorded in the state's
//! `kube.deleted_nodes`; the list honours `fieldSelector=metadata.name=NAME`, which kubectl's
//! wait for the deletion uses.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::state::{self, Cluster, Kube, Node, Pod};

mod objects;
mod table;

pub use objects::kubectl_list;

/// When every object pretends to have been created (fixed, so bodies are reproducible).
const CREATED: &str = "2025-01-06T09:00:00Z";

/// Starts the server; it runs until the returned task is aborted (which closes the listener and
/// every open connection).
pub async fn serve(state_path: PathBuf) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let handle = super::http::spawn(listener, router(state_path), None, "kube-api");
    Ok((addr, handle))
}

type StatePath = State<Arc<Path>>;

fn router(state_path: PathBuf) -> Router {
    Router::new()
        .route("/api", get(|| async { answer(200, api_versions()) }))
        .route(
            "/apis",
            get(|| async { answer(200, objects::api_groups()) }),
        )
        .route(
            "/apis/{group}/{version}",
            get(|UrlPath((g, v)): UrlPath<(String, String)>| async move {
                match objects::group_resources(&g, &v) {
                    Some(body) => answer(200, body),
                    None => {
                        let (status, body) = not_found(&format!("/apis/{g}/{v}"));
                        answer(status, body)
                    }
                }
            }),
        )
        .route(
            "/apis/{group}/{version}/{*rest}",
            get(
                |st: StatePath,
                 q: RawQuery,
                 h: HeaderMap,
                 UrlPath((g, v, rest)): UrlPath<(String, String, String)>| async move {
                    if v != "v1" {
                        let (status, body) = not_found(&format!("/apis/{g}/{v}/{rest}"));
                        return answer(status, body);
                    }
                    serve_resources(st, &g, &rest, q, h)
                },
            ),
        )
        .route("/api/v1", get(|| async { answer(200, api_resources()) }))
        .route(
            "/version",
            get(|State(path): StatePath| async move { answer(200, version_info(&path)) }),
        )
        .route(
            "/api/v1/nodes/{name}",
            get(
                |st: StatePath, q: RawQuery, h: HeaderMap, UrlPath(name): UrlPath<String>| {
                    resources(st, UrlPath(format!("nodes/{name}")), q, h)
                },
            )
            .delete(delete_node),
        )
        .route("/api/v1/{*rest}", get(resources))
        .method_not_allowed_fallback(not_allowed)
        .fallback(fallback)
        .with_state(Arc::from(state_path))
}

/// `GET /api/v1/…`: nodes and pods, as JSON or as the Table plain `kubectl get` asks for.
async fn resources(
    st: StatePath,
    UrlPath(rest): UrlPath<String>,
    query: RawQuery,
    headers: HeaderMap,
) -> Response {
    serve_resources(st, "", &rest, query, headers)
}

/// A resource request of the core group (`""`) or of `GROUP` (at `v1`).
fn serve_resources(
    State(path): StatePath,
    group: &str,
    rest: &str,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (status, body) = match Cluster::load(&path) {
        Err(e) => (
            500,
            status_body(500, "InternalError", &format!("simulator state: {e}")),
        ),
        Ok(cluster) if !etcd_available(&cluster) => (
            503,
            status_body(503, "ServiceUnavailable", "etcdserver: request timed out"),
        ),
        Ok(cluster) => {
            let segments: Vec<&str> = rest.trim_matches('/').split('/').collect();
            if group.is_empty() {
                resource(&segments, query.as_deref().unwrap_or_default(), &cluster)
            } else {
                objects::request_or_404(group, &segments, &cluster)
            }
        }
    };
    let wants_table = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    if status == 200 && wants_table {
        answer(status, table::to_table(&body).unwrap_or(body))
    } else {
        answer(status, body)
    }
}

/// `DELETE /api/v1/nodes/NAME` (`kubectl delete node NAME`): the Node object goes away, recorded
/// in `kube.deleted_nodes`; the machine is not touched.
async fn delete_node(State(path): StatePath, UrlPath(name): UrlPath<String>) -> Response {
    let result = Cluster::update(&path, |c| {
        if !etcd_available(c) {
            return (
                503,
                status_body(503, "ServiceUnavailable", "etcdserver: request timed out"),
            );
        }
        match listed_node(c, &name) {
            Some(node) => {
                let body = node_json(c, node);
                c.kube.deleted_nodes.push(name.clone());
                (200, body)
            }
            None => (
                404,
                status_body(404, "NotFound", &format!("nodes \"{name}\" not found")),
            ),
        }
    });
    let (status, body) = result.unwrap_or_else(|e| {
        (
            500,
            status_body(500, "InternalError", &format!("simulator state: {e}")),
        )
    });
    answer(status, body)
}

/// The Node object named `name`, unless it was deleted.
fn listed_node<'a>(cluster: &'a Cluster, name: &str) -> Option<&'a Node> {
    cluster.nodes.iter().find(|n| {
        n.hostname == name && !n.maintenance && !cluster.kube.deleted_nodes.contains(&n.hostname)
    })
}

async fn fallback(method: Method, uri: Uri) -> Response {
    if method == Method::GET {
        let (status, body) = not_found(uri.path());
        answer(status, body)
    } else {
        not_allowed().await
    }
}

async fn not_allowed() -> Response {
    answer(
        405,
        status_body(
            405,
            "MethodNotAllowed",
            "the simulator only serves GET (and DELETE of nodes)",
        ),
    )
}

/// A JSON answer with the API server's headers.
fn answer(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// A kubeconfig (YAML) for a server at `addr`, with a dummy bearer token.
pub fn kubeconfig_yaml(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: talos-dr-sim
  cluster:
    server: http://{addr}
contexts:
- name: admin@talos-dr-sim
  context:
    cluster: talos-dr-sim
    namespace: default
    user: admin@talos-dr-sim
current-context: admin@talos-dr-sim
users:
- name: admin@talos-dr-sim
  user:
    token: sim-token-not-a-secret
"
    )
}

/// Writes [`kubeconfig_yaml`] to `path` (mode 0600, as kubeconfigs hold credentials).
pub fn write_kubeconfig(path: &Path, addr: SocketAddr) -> io::Result<()> {
    crate::fsutil::write_atomic(path, kubeconfig_yaml(addr).as_bytes(), 0o600)
}

fn resource(rest: &[&str], query: &str, cluster: &Cluster) -> (u16, Value) {
    match rest {
        ["nodes"] => {
            let mut list = node_list(cluster);
            // `fieldSelector=metadata.name=NAME` (kubectl's wait for a deletion; `=` may be `%3D`).
            let wanted = query.split('&').find_map(|kv| {
                kv.strip_prefix("fieldSelector=")
                    .map(|v| v.replace("%3D", "=").replace("%3d", "="))
                    .and_then(|v| v.strip_prefix("metadata.name=").map(str::to_owned))
            });
            if let (Some(name), Some(items)) = (wanted, list["items"].as_array_mut()) {
                items.retain(|i| i["metadata"]["name"] == name.as_str());
            }
            (200, list)
        }
        ["nodes", name] => match listed_node(cluster, name) {
            Some(node) => (200, node_json(cluster, node)),
            None => (
                404,
                status_body(404, "NotFound", &format!("nodes \"{name}\" not found")),
            ),
        },
        ["pods"] => (200, pod_list(cluster, None)),
        ["namespaces", ns, "pods"] => (200, pod_list(cluster, Some(ns))),
        _ => objects::request_or_404("", rest, cluster),
    }
}

fn not_found(path: &str) -> (u16, Value) {
    (
        404,
        status_body(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        ),
    )
}

/// A `meta/v1 Status` error body, which kubectl turns into `Error from server (Reason): message`.
fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
    })
}

fn api_resources() -> Value {
    let verbs = json!(["get", "list", "watch"]);
    let mut list = json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "nodes", "singularName": "node", "namespaced": false, "kind": "Node",
             "verbs": ["get", "list", "watch", "delete"], "shortNames": ["no"]},
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
             "verbs": verbs, "shortNames": ["po"], "categories": ["all"]},
        ],
    });
    if let Some(r) = list["resources"].as_array_mut() {
        r.extend(objects::core_resources());
    }
    list
}

fn version_info(state_path: &Path) -> Value {
    let version = Cluster::load(state_path)
        .map(|c| c.kube.version)
        .unwrap_or_else(|_| Kube::default().version);
    let minor = version.split('.').nth(1).unwrap_or("0").to_owned();
    json!({
        "major": "1",
        "minor": minor,
        "gitVersion": version,
        "platform": "linux/amd64",
    })
}

/// The API server can read etcd when some control-plane node is up with etcd Running.
fn etcd_available(cluster: &Cluster) -> bool {
    cluster
        .nodes
        .iter()
        .any(|n| is_control_plane(n) && n.reachable && n.etcd.state == "Running")
}

fn is_control_plane(node: &Node) -> bool {
    node.is_control_plane()
}

/// Why a node is not Ready, as the node's `Ready` condition would say.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Readiness {
    Ready,
    /// `Ready=False` with a reason and message from the kubelet.
    NotReady(String),
    /// `Ready=Unknown`: the kubelet stopped reporting.
    Unknown,
}

fn readiness(kube: &Kube, node: &Node) -> Readiness {
    if !node.reachable {
        Readiness::Unknown
    } else if kube
        .nodes_not_ready
        .iter()
        .any(|n| *n == node.hostname || *n == node.address)
    {
        Readiness::NotReady("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized".into())
    } else if is_control_plane(node) && node.etcd.state != "Running" {
        Readiness::NotReady(format!(
            "kubelet cannot reach a healthy kube-apiserver: etcd is {} on this node",
            node.etcd.state
        ))
    } else {
        Readiness::Ready
    }
}

/// `GET /api/v1/nodes` for the simulated cluster.
pub fn node_list(cluster: &Cluster) -> Value {
    let items: Vec<Value> = cluster
        .nodes
        .iter()
        // A node in maintenance mode has no kubelet yet: no Node object.
        .filter(|n| !n.maintenance && !cluster.kube.deleted_nodes.contains(&n.hostname))
        .map(|n| node_json(cluster, n))
        .collect();
    json!({
        "kind": "NodeList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "4242"},
        "items": items,
    })
}

fn node_json(cluster: &Cluster, node: &Node) -> Value {
    let now = jiff::Timestamp::now().to_string();
    let readiness = readiness(&cluster.kube, node);
    let pressure = |kind: &str, reason_ok: &str, msg_ok: &str| {
        if readiness == Readiness::Unknown {
            condition(
                kind,
                "Unknown",
                "NodeStatusUnknown",
                "Kubelet stopped posting node status.",
                CREATED,
            )
        } else {
            condition(kind, "False", reason_ok, msg_ok, &now)
        }
    };
    let ready = match &readiness {
        Readiness::Ready => condition(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
            &now,
        ),
        Readiness::NotReady(message) => {
            condition("Ready", "False", "KubeletNotReady", message, &now)
        }
        Readiness::Unknown => condition(
            "Ready",
            "Unknown",
            "NodeStatusUnknown",
            "Kubelet stopped posting node status.",
            CREATED,
        ),
    };
    let mut labels = json!({
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": node.hostname,
        "kubernetes.io/os": "linux",
    });
    let mut taints = Vec::new();
    if is_control_plane(node) {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
        taints
            .push(json!({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}));
    }
    match readiness {
        Readiness::Unknown => {
            taints.push(json!({"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}))
        }
        Readiness::NotReady(_) => {
            taints.push(json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}))
        }
        Readiness::Ready => {}
    }
    let index = cluster
        .nodes
        .iter()
        .position(|n| n.hostname == node.hostname)
        .unwrap_or(0);
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": node.hostname,
            "uid": format!("5f0c3c1e-0000-4000-8000-{index:012}"),
            "resourceVersion": "4242",
            "creationTimestamp": CREATED,
            "labels": labels,
            "annotations": {"talos.dev/owned-labels": "[\"node-role.kubernetes.io/control-plane\"]"},
        },
        "spec": {"podCIDR": format!("10.244.{index}.0/24"), "podCIDRs": [format!("10.244.{index}.0/24")], "taints": taints},
        "status": {
            "capacity": {"cpu": "4", "memory": "8131400Ki", "pods": "110"},
            "allocatable": {"cpu": "3950m", "memory": "7795528Ki", "pods": "110"},
            "conditions": [
                pressure("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                pressure("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                pressure("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                ready,
            ],
            "addresses": [
                {"type": "InternalIP", "address": node.address},
                {"type": "Hostname", "address": node.hostname},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": format!("b00710d0-0000-4000-8000-{index:012}"),
                "containerRuntimeVersion": "containerd://2.0.2",
                "kernelVersion": "6.12.18-talos",
                "kubeProxyVersion": cluster.kube.version,
                "kubeletVersion": cluster.kube.version,
                "machineID": format!("{index:032x}"),
                "operatingSystem": "linux",
                "osImage": format!("Talos ({})", cluster.talos_version),
                "systemUUID": format!("4c4c4544-0000-4000-8000-{index:012}"),
            },
        },
    })
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, heartbeat: &str) -> Value {
    json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": heartbeat,
        "lastTransitionTime": CREATED,
    })
}

/// `GET /api/v1/pods` (or one namespace's) for the simulated cluster, faults applied.
pub fn pod_list(cluster: &Cluster, namespace: Option<&str>) -> Value {
    let items: Vec<Value> = cluster
        .kube
        .effective_pods(&cluster.nodes)
        .iter()
        .filter(|p| namespace.is_none_or(|ns| p.namespace == ns))
        .map(|p| pod_json(cluster, p))
        .collect();
    json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "4242"},
        "items": items,
    })
}

fn pod_json(cluster: &Cluster, pod: &Pod) -> Value {
    let kube = &cluster.kube;
    let node = pod
        .node
        .as_deref()
        .and_then(|h| cluster.nodes.iter().find(|n| n.hostname == h));
    let node_ready = node.is_some_and(|n| readiness(kube, n) == Readiness::Ready);
    let pending = kube.pods_pending.iter().any(|p| state::pod_matches(p, pod));
    let crashloop = kube
        .pods_crashloop
        .iter()
        .any(|p| state::pod_matches(p, pod));
    let phase = if pending {
        "Pending"
    } else {
        pod.phase.as_str()
    };
    let container = pod
        .name
        .split('-')
        .next()
        .unwrap_or(pod.name.as_str())
        .to_owned();
    let mut restarts = pod.restarts;
    // What the container is doing, and whether it (and so the pod) is ready.
    let (state, ready) = match phase {
        "Pending" => (json!({"waiting": {"reason": "ContainerCreating"}}), false),
        "Succeeded" => (
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": CREATED, "finishedAt": CREATED}}),
            false,
        ),
        "Failed" => (
            json!({"terminated": {"exitCode": 1, "reason": "Error", "startedAt": CREATED, "finishedAt": CREATED}}),
            false,
        ),
        _ if crashloop => {
            restarts = restarts.max(5);
            (
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off 2m40s restarting failed container={container} pod={}", pod.name)}}),
                false,
            )
        }
        // The node controller marks pods on a node that stopped reporting as not ready.
        _ => (json!({"running": {"startedAt": CREATED}}), node_ready),
    };
    let ready_str = if ready { "True" } else { "False" };
    let mut ready_condition =
        json!({"type": "Ready", "status": ready_str, "lastTransitionTime": CREATED});
    if !ready && phase != "Succeeded" {
        ready_condition["reason"] = json!("ContainersNotReady");
        ready_condition["message"] =
            json!(format!("containers with unready status: [{container}]"));
    }
    let mut status = json!({
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": if node.is_some() { "True" } else { "False" }, "lastTransitionTime": CREATED},
            ready_condition,
        ],
        "containerStatuses": [{
            "name": container,
            "image": format!("registry.k8s.io/{container}:sim"),
            "imageID": "",
            "ready": ready,
            "restartCount": restarts,
            "started": ready,
            "state": state,
        }],
        "qosClass": "Burstable",
        "startTime": CREATED,
    });
    if let Some(n) = node {
        status["hostIP"] = json!(n.address);
    }
    let mut spec = json!({"containers": [{"name": container, "image": format!("registry.k8s.io/{container}:sim")}]});
    if let Some(n) = &pod.node {
        spec["nodeName"] = json!(n);
    }
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": format!("9d0d0000-0000-4000-8000-{:012x}", fnv(&format!("{}/{}", pod.namespace, pod.name)) & 0xffff_ffff_ffff),
            "resourceVersion": "4242",
            "creationTimestamp": CREATED,
        },
        "spec": spec,
        "status": status,
    })
}

/// A tiny stable hash for reproducible UIDs.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_node_is_unknown_and_its_pods_not_ready() {
        let mut c = Cluster::example(None);
        c.nodes[4].reachable = false;
        let nodes = node_list(&c);
        let ready = &nodes["items"][4]["status"]["conditions"][3];
        assert_eq!(ready["type"], "Ready");
        assert_eq!(ready["status"], "Unknown");
        let pods = pod_list(&c, None);
        let on_w2: Vec<&Value> = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["spec"]["nodeName"] == "talos-worker-2")
            .collect();
        assert!(!on_w2.is_empty());
        assert!(
            on_w2
                .iter()
                .all(|p| p["status"]["containerStatuses"][0]["ready"] == false)
        );
    }

    #[test]
    fn api_is_unavailable_without_a_running_etcd() {
        let mut c = Cluster::example(None);
        assert!(etcd_available(&c));
        for n in c.nodes.iter_mut() {
            n.etcd.state = "Preparing".into();
        }
        assert!(!etcd_available(&c));
    }

    #[test]
    fn standard_pods_have_unique_names() {
        let c = Cluster::example(None);
        let pods = c.kube.effective_pods(&c.nodes);
        let mut names: Vec<String> = pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        assert!(pods.iter().any(|p| p.phase == "Succeeded"));
    }
}
