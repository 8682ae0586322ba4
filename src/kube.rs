//! Typed `kubectl` calls and summaries for post-restore verification.
//!
//! Every call passes `--kubeconfig` explicitly (never whatever `KUBECONFIG` or `~/.kube/config`
//! happen to say) and `-o json`, whose shape is stable across kubectl versions, unlike the
//! tables. Parsers read only the fields they need and tolerate missing or `null` ones.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::exec::{self, ExecError};
use crate::poll::Poller;
use crate::ui::{Event, Reporter, ms};

/// The reporter key of [`Kubectl::wait_nodes_ready`]'s wait events.
pub const WAIT_KEY: &str = "kubernetes nodes";

#[derive(Debug, Error)]
pub enum KubeError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("could not understand the output of `{command}`: {reason}")]
    Parse { command: String, reason: String },
    #[error(
        "Kubernetes nodes not Ready after {}s: {}{}",
        waited.as_secs(),
        nodes.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
    )]
    NodesNotReady {
        nodes: Vec<NotReadyNode>,
        waited: Duration,
        /// The last failed kubectl call, when the API did not answer at the end.
        last_error: Option<String>,
    },
}

impl KubeError {
    /// The stderr text of a failed call (empty for other errors).
    pub fn stderr(&self) -> &str {
        match self {
            KubeError::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }
}

/// An expected node that was not Ready when a wait gave up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotReadyNode {
    /// As the caller named it (node name or address).
    pub expected: String,
    /// The Kubernetes node it matched, if any registered.
    pub name: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for NotReadyNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) if *name != self.expected => {
                write!(f, "{name} ({}): {}", self.expected, self.reason)
            }
            _ => write!(f, "{}: {}", self.expected, self.reason),
        }
    }
}

/// How to call kubectl for one profile.
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    /// Per call; kubectl is killed when it takes longer.
    pub timeout: Duration,
    /// kubectl's discovery cache (`--cache-dir`); `None` keeps kubectl's default
    /// (`~/.kube/cache`). Tests point it at a temp dir so throwaway servers leave nothing behind.
    pub cache_dir: Option<PathBuf>,
}

/// One node from `kubectl get nodes -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    pub name: String,
    pub ready: bool,
    /// From `node-role.kubernetes.io/<role>` labels (empty for plain workers).
    pub roles: Vec<String>,
    pub kubelet_version: String,
    /// `InternalIP`, `ExternalIP` and `Hostname` addresses, in the node's order.
    pub addresses: Vec<String>,
    /// Why it is not Ready (`reason: message` of the Ready condition); `None` when Ready.
    pub reason: Option<String>,
}

/// One object of any kind from `kubectl get … -o json`: what it is and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectRef {
    pub kind: String,
    /// `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    pub name: String,
}

/// One pod from `kubectl get pods -A -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    pub phase: String,
    /// The pod's Ready condition (all containers ready).
    pub ready: bool,
    /// Sum of the containers' restart counts.
    pub restarts: u32,
    /// `spec.nodeName`; `None` while unscheduled.
    pub node: Option<String>,
    /// The most telling reason it is not running well (`CrashLoopBackOff`, `Unschedulable`, …).
    pub reason: Option<String>,
}

impl PodInfo {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A pod that needs attention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodProblem {
    /// `namespace/name`.
    pub pod: String,
    pub phase: String,
    pub reason: String,
}

/// What `summarize_pods` found: `total == running + succeeded + not_running.len()`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSummary {
    pub total: usize,
    /// Phase Running and Ready.
    pub running: usize,
    /// Finished Jobs and the like.
    pub succeeded: usize,
    /// Everything else, including Running pods that are not Ready (crash loops).
    pub not_running: Vec<PodProblem>,
}

/// What `summarize_nodes` found: `total == ready + not_ready.len()`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub total: usize,
    pub ready: usize,
    /// `(name, reason)` of every node that is not Ready.
    pub not_ready: Vec<(String, String)>,
}

impl Kubectl {
    pub fn new(bin: PathBuf, kubeconfig: PathBuf) -> Self {
        Self {
            bin,
            kubeconfig,
            timeout: Duration::from_secs(30),
            cache_dir: None,
        }
    }

    /// Runs `kubectl --kubeconfig K [--cache-dir C] <rest> -o json`; returns stdout.
    async fn get_json(&self, rest: &[&str]) -> Result<String, KubeError> {
        let mut all = rest.to_vec();
        all.extend(["-o", "json"]);
        self.kubectl(&all, rest).await
    }

    /// `kubectl delete node NAME`: removes the Node object only (for a node whose VM is gone).
    pub async fn delete_node(&self, name: &str) -> Result<(), KubeError> {
        let rest = ["delete", "node", name];
        self.kubectl(&rest, &rest).await.map(|_| ())
    }

    /// Runs `kubectl --kubeconfig K [--cache-dir C] <args>`; `shown` names it in errors.
    async fn kubectl(&self, rest: &[&str], shown: &[&str]) -> Result<String, KubeError> {
        let mut args = vec![
            "--kubeconfig".to_owned(),
            self.kubeconfig.display().to_string(),
        ];
        if let Some(dir) = &self.cache_dir {
            args.push("--cache-dir".into());
            args.push(dir.display().to_string());
        }
        args.extend(rest.iter().map(|s| (*s).to_owned()));
        let out = exec::run(&self.bin, &args, &[], self.timeout).await?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(KubeError::Failed {
                command: command_text(shown),
                stderr: clean_stderr(&out.stderr),
            })
        }
    }

    /// `kubectl get nodes -o json`.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, KubeError> {
        let stdout = self.get_json(&["get", "nodes"]).await?;
        parse_nodes(&stdout).map_err(|e| KubeError::Parse {
            command: command_text(&["get", "nodes"]),
            reason: e.to_string(),
        })
    }

    /// `kubectl get pods -A -o json`.
    pub async fn pods_all(&self) -> Result<Vec<PodInfo>, KubeError> {
        let stdout = self.get_json(&["get", "pods", "-A"]).await?;
        parse_pods(&stdout).map_err(|e| KubeError::Parse {
            command: command_text(&["get", "pods", "-A"]),
            reason: e.to_string(),
        })
    }

    /// `kubectl get <resources> -A -o json` (`resources` comma-separated): each item's kind,
    /// namespace and name, for the post-restore comparison.
    pub async fn objects(&self, resources: &str) -> Result<Vec<ObjectRef>, KubeError> {
        let rest = ["get", resources, "-A"];
        let stdout = self.get_json(&rest).await?;
        parse_objects(&stdout).map_err(|e| KubeError::Parse {
            command: command_text(&rest),
            reason: e.to_string(),
        })
    }

    /// Polls `get nodes` until every `expected` node (name or address) is Ready, or `timeout`.
    ///
    /// With `expected` empty, waits until at least one node is registered and all are Ready.
    /// kubectl failures during the wait count as "not yet" (the API server may still be coming
    /// up after a restore); the last one is part of the timeout error. Returns the final node
    /// list.
    pub async fn wait_nodes_ready(
        &self,
        expected: &[String],
        timeout: Duration,
        reporter: &dyn Reporter,
    ) -> Result<Vec<NodeInfo>, KubeError> {
        let start = Instant::now();
        reporter.report(Event::WaitStarted {
            key: WAIT_KEY.into(),
            message: if expected.is_empty() {
                "waiting for every node to be Ready".into()
            } else {
                format!("waiting for {} nodes to be Ready", expected.len())
            },
        });
        // What the last poll saw, for the timeout error.
        let last: Mutex<(Vec<NotReadyNode>, Option<String>)> = Mutex::new((
            expected
                .iter()
                .map(|e| NotReadyNode {
                    expected: e.clone(),
                    name: None,
                    reason: "no answer from the Kubernetes API yet".into(),
                })
                .collect(),
            None,
        ));
        let poll = || async {
            let (message, result) = match self.nodes().await {
                Err(e) => {
                    let text = e.to_string();
                    last.lock().expect("wait state").1 = Some(text.clone());
                    (format!("Kubernetes API not answering: {text}"), Err(()))
                }
                Ok(nodes) => {
                    let pending = not_ready(expected, &nodes);
                    let summary = summarize_nodes(&nodes);
                    let message = if pending.is_empty() {
                        format!("{}/{} nodes Ready", summary.ready, summary.total)
                    } else {
                        let names: Vec<String> = pending
                            .iter()
                            .map(|p| p.name.clone().unwrap_or_else(|| p.expected.clone()))
                            .collect();
                        format!(
                            "{}/{} nodes Ready; waiting for {}",
                            summary.ready,
                            summary.total,
                            names.join(", ")
                        )
                    };
                    let done = pending.is_empty();
                    *last.lock().expect("wait state") = (pending, None);
                    (message, if done { Ok(nodes) } else { Err(()) })
                }
            };
            reporter.report(Event::WaitProgress {
                key: WAIT_KEY.into(),
                message,
                elapsed_ms: ms(start.elapsed()),
            });
            result
        };
        // Every 0.8 s while the nodes are due (Ready follows etcd and the kubelets within
        // minutes), then backing off to 5 s (`crate::poll`).
        let mut poller = Poller::new(timeout, Duration::from_secs(5));
        let waiting = async {
            loop {
                if let Ok(nodes) = poll().await {
                    return Ok::<_, ()>(nodes);
                }
                if !poller.wait().await {
                    // The overall deadline below ends the wait.
                    std::future::pending::<()>().await;
                }
            }
        };
        // The overall deadline bounds the loop; an in-flight kubectl is killed with it.
        let outcome = tokio::time::timeout(timeout, waiting).await;
        let elapsed = start.elapsed();
        match outcome {
            Ok(Ok(nodes)) => {
                reporter.report(Event::WaitFinished {
                    key: WAIT_KEY.into(),
                    ok: true,
                    message: format!("all {} nodes Ready", nodes.len()),
                    elapsed_ms: ms(elapsed),
                });
                Ok(nodes)
            }
            // The retry loop has no limit, so only the timeout ends it unsuccessfully.
            Ok(Err(())) | Err(_) => {
                let (nodes, last_error) = last.into_inner().expect("wait state");
                let err = KubeError::NodesNotReady {
                    nodes,
                    waited: timeout,
                    last_error,
                };
                reporter.report(Event::WaitFinished {
                    key: WAIT_KEY.into(),
                    ok: false,
                    message: err.to_string(),
                    elapsed_ms: ms(elapsed),
                });
                Err(err)
            }
        }
    }
}

fn command_text(rest: &[&str]) -> String {
    format!("kubectl {} -o json", rest.join(" "))
}

/// The expected nodes that are not Ready in `nodes` (all nodes when `expected` is empty).
pub fn not_ready(expected: &[String], nodes: &[NodeInfo]) -> Vec<NotReadyNode> {
    if expected.is_empty() {
        if nodes.is_empty() {
            return vec![NotReadyNode {
                expected: "any node".into(),
                name: None,
                reason: "no nodes registered".into(),
            }];
        }
        return nodes
            .iter()
            .filter(|n| !n.ready)
            .map(|n| NotReadyNode {
                expected: n.name.clone(),
                name: Some(n.name.clone()),
                reason: n.reason.clone().unwrap_or_default(),
            })
            .collect();
    }
    expected
        .iter()
        .filter_map(|e| {
            let found = nodes
                .iter()
                .find(|n| n.name == *e || n.addresses.iter().any(|a| a == e));
            match found {
                Some(n) if n.ready => None,
                Some(n) => Some(NotReadyNode {
                    expected: e.clone(),
                    name: Some(n.name.clone()),
                    reason: n.reason.clone().unwrap_or_else(|| "not Ready".into()),
                }),
                None => Some(NotReadyNode {
                    expected: e.clone(),
                    name: None,
                    reason: "not registered in Kubernetes".into(),
                }),
            }
        })
        .collect()
}

/// Keeps what a person needs from kubectl's stderr.
///
/// kubectl logs each failed discovery attempt as a klog line (`E0102 15:04:05.123 …`) before
/// its one-line verdict; those repeat the same error up to five times, so they are dropped when
/// a verdict line exists, and repeats are dropped otherwise.
pub fn clean_stderr(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let plain: Vec<&str> = lines.iter().copied().filter(|l| !is_klog(l)).collect();
    let chosen = if plain.is_empty() { lines } else { plain };
    let mut out: Vec<&str> = Vec::new();
    for line in chosen {
        if !out.contains(&line) {
            out.push(line);
        }
    }
    out.join("\n")
}

/// `Lmmdd hh:mm:ss.uuuuuu threadid file:line] msg`, with L one of I, W, E, F.
fn is_klog(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 6
        && matches!(b[0], b'I' | b'W' | b'E' | b'F')
        && b[1..5].iter().all(u8::is_ascii_digit)
        && b[5] == b' '
        && line.contains("] ")
}

// Only the fields read; everything defaults so partial or `null` values parse.

#[derive(Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
struct List<T> {
    #[serde(default, deserialize_with = "nullable")]
    items: Vec<T>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Meta {
    name: String,
    namespace: String,
    #[serde(deserialize_with = "nullable")]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    reason: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Node {
    metadata: Meta,
    status: NodeStatus,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct NodeStatus {
    #[serde(deserialize_with = "nullable")]
    conditions: Vec<Condition>,
    #[serde(deserialize_with = "nullable")]
    addresses: Vec<Address>,
    node_info: NodeSystemInfo,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Address {
    address: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct NodeSystemInfo {
    kubelet_version: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Pod {
    metadata: Meta,
    spec: PodSpec,
    status: PodStatus,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PodSpec {
    node_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PodStatus {
    phase: String,
    reason: Option<String>,
    #[serde(deserialize_with = "nullable")]
    conditions: Vec<Condition>,
    #[serde(deserialize_with = "nullable")]
    init_container_statuses: Vec<ContainerStatus>,
    #[serde(deserialize_with = "nullable")]
    container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ContainerStatus {
    ready: bool,
    restart_count: u32,
    state: ContainerState,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ContainerState {
    waiting: Option<StateReason>,
    terminated: Option<StateReason>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StateReason {
    reason: Option<String>,
}

fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AnyObject {
    kind: String,
    metadata: Meta,
}

/// Parses `kubectl get <kinds> -o json` (a `List`; kubectl sets every item's `kind`). Only kind,
/// namespace and name are kept: a secret's data is skipped unread.
pub fn parse_objects(stdout: &str) -> Result<Vec<ObjectRef>, serde_json::Error> {
    let list: List<AnyObject> = serde_json::from_str(stdout)?;
    Ok(list
        .items
        .into_iter()
        .map(|o| ObjectRef {
            kind: o.kind,
            namespace: Some(o.metadata.namespace).filter(|ns| !ns.is_empty()),
            name: o.metadata.name,
        })
        .collect())
}

/// Parses `kubectl get nodes -o json` (a `List` or `NodeList`).
pub fn parse_nodes(stdout: &str) -> Result<Vec<NodeInfo>, serde_json::Error> {
    let list: List<Node> = serde_json::from_str(stdout)?;
    Ok(list.items.into_iter().map(node_info).collect())
}

fn node_info(node: Node) -> NodeInfo {
    let ready_condition = node.status.conditions.iter().find(|c| c.kind == "Ready");
    let ready = ready_condition.is_some_and(|c| c.status == "True");
    let reason = if ready {
        None
    } else {
        Some(match ready_condition {
            None => "no Ready condition reported".to_owned(),
            Some(c) => {
                let mut text = format!("Ready={}", c.status);
                for part in [&c.reason, &c.message].into_iter().flatten() {
                    if !part.is_empty() {
                        text.push_str(": ");
                        text.push_str(part);
                    }
                }
                text
            }
        })
    };
    let roles = node
        .metadata
        .labels
        .keys()
        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect();
    NodeInfo {
        name: node.metadata.name,
        ready,
        roles,
        kubelet_version: node.status.node_info.kubelet_version,
        addresses: node
            .status
            .addresses
            .into_iter()
            .map(|a| a.address)
            .collect(),
        reason,
    }
}

/// Parses `kubectl get pods -A -o json` (a `List` or `PodList`).
pub fn parse_pods(stdout: &str) -> Result<Vec<PodInfo>, serde_json::Error> {
    let list: List<Pod> = serde_json::from_str(stdout)?;
    Ok(list.items.into_iter().map(pod_info).collect())
}

fn pod_info(pod: Pod) -> PodInfo {
    let status = pod.status;
    let ready = status
        .conditions
        .iter()
        .any(|c| c.kind == "Ready" && c.status == "True");
    let restarts = status
        .init_container_statuses
        .iter()
        .chain(&status.container_statuses)
        .map(|c| c.restart_count)
        .sum();
    PodInfo {
        namespace: pod.metadata.namespace,
        name: pod.metadata.name,
        phase: if status.phase.is_empty() {
            "Unknown".into()
        } else {
            status.phase.clone()
        },
        ready,
        restarts,
        node: pod.spec.node_name.filter(|n| !n.is_empty()),
        reason: pod_reason(&status, ready),
    }
}

/// The reason `kubectl get pods` would show in STATUS, roughly: the pod's own reason (Evicted,
/// NodeLost), then an init or app container that is waiting or failed, then a failed condition.
fn pod_reason(status: &PodStatus, ready: bool) -> Option<String> {
    if let Some(r) = status.reason.as_ref().filter(|r| !r.is_empty()) {
        return Some(r.clone());
    }
    let containers = || {
        status
            .init_container_statuses
            .iter()
            .chain(&status.container_statuses)
    };
    let waiting = containers().find_map(|c| c.state.waiting.as_ref()?.reason.clone());
    let failed = containers().find_map(|c| {
        let reason = c.state.terminated.as_ref()?.reason.clone()?;
        (reason != "Completed").then_some(reason)
    });
    if let Some(r) = waiting.or(failed) {
        return Some(r);
    }
    if ready || status.phase == "Succeeded" {
        return None;
    }
    status
        .conditions
        .iter()
        .filter(|c| c.status != "True")
        .find_map(|c| c.reason.clone())
        .or_else(|| {
            containers()
                .any(|c| !c.ready)
                .then(|| "ContainersNotReady".to_owned())
        })
}

/// Counts pods by outcome and lists the ones that need attention.
pub fn summarize_pods(pods: &[PodInfo]) -> PodSummary {
    let mut summary = PodSummary {
        total: pods.len(),
        ..PodSummary::default()
    };
    for pod in pods {
        match pod.phase.as_str() {
            "Running" if pod.ready => summary.running += 1,
            "Succeeded" => summary.succeeded += 1,
            phase => summary.not_running.push(PodProblem {
                pod: pod.key(),
                phase: phase.to_owned(),
                reason: pod.reason.clone().unwrap_or_else(|| {
                    if phase == "Running" {
                        "not ready".into()
                    } else {
                        phase.to_owned()
                    }
                }),
            }),
        }
    }
    summary
}

/// Counts Ready nodes and lists the others with their reason.
pub fn summarize_nodes(nodes: &[NodeInfo]) -> NodeSummary {
    let mut summary = NodeSummary {
        total: nodes.len(),
        ..NodeSummary::default()
    };
    for node in nodes {
        if node.ready {
            summary.ready += 1;
        } else {
            summary.not_ready.push((
                node.name.clone(),
                node.reason.clone().unwrap_or_else(|| "not Ready".into()),
            ));
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_of_many_kinds_keep_kind_namespace_and_name() {
        let body = r#"{"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
          "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": null}},
            {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "web", "namespace": "shop"}, "spec": {"replicas": 2}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": "shop"},
             "data": {"tls.key": "c2VjcmV0"}, "type": "kubernetes.io/tls"}
          ]}"#;
        let objects = parse_objects(body).unwrap();
        assert_eq!(objects.len(), 3);
        assert_eq!(objects[0].namespace, None);
        assert_eq!(
            objects[1],
            ObjectRef {
                kind: "Deployment".into(),
                namespace: Some("shop".into()),
                name: "web".into()
            }
        );
        assert_eq!(objects[2].kind, "Secret");
        assert!(parse_objects(r#"{"items": null}"#).unwrap().is_empty());
    }

    /// A trimmed real `kubectl get nodes -o json` body: one Ready control plane, one worker
    /// whose kubelet stopped reporting.
    const NODES: &str = r#"{
  "apiVersion": "v1",
  "items": [
    {
      "apiVersion": "v1",
      "kind": "Node",
      "metadata": {
        "creationTimestamp": "2025-01-06T09:00:00Z",
        "labels": {
          "beta.kubernetes.io/arch": "amd64",
          "kubernetes.io/hostname": "talos-cp-1",
          "node-role.kubernetes.io/control-plane": ""
        },
        "name": "talos-cp-1",
        "resourceVersion": "912"
      },
      "spec": {"podCIDR": "10.244.0.0/24", "taints": [{"effect": "NoSchedule", "key": "node-role.kubernetes.io/control-plane"}]},
      "status": {
        "addresses": [{"address": "10.5.0.11", "type": "InternalIP"}, {"address": "talos-cp-1", "type": "Hostname"}],
        "conditions": [
          {"lastHeartbeatTime": "2025-01-06T10:00:00Z", "message": "kubelet has sufficient memory available", "reason": "KubeletHasSufficientMemory", "status": "False", "type": "MemoryPressure"},
          {"lastHeartbeatTime": "2025-01-06T10:00:00Z", "message": "kubelet is posting ready status", "reason": "KubeletReady", "status": "True", "type": "Ready"}
        ],
        "nodeInfo": {"containerRuntimeVersion": "containerd://2.0.2", "kubeletVersion": "v1.32.3", "osImage": "Talos (v1.9.5)"}
      }
    },
    {
      "apiVersion": "v1",
      "kind": "Node",
      "metadata": {"labels": null, "name": "talos-worker-1"},
      "status": {
        "addresses": [{"address": "10.5.0.21", "type": "InternalIP"}],
        "conditions": [
          {"message": "Kubelet stopped posting node status.", "reason": "NodeStatusUnknown", "status": "Unknown", "type": "Ready"}
        ],
        "nodeInfo": {"kubeletVersion": "v1.32.3"}
      }
    }
  ],
  "kind": "List",
  "metadata": {"resourceVersion": ""}
}"#;

    /// Pods in the states that matter: running, crash-looping, pending unschedulable,
    /// image pull failure in an init container, a completed Job, and an evicted pod.
    const PODS: &str = r#"{
  "apiVersion": "v1",
  "kind": "List",
  "metadata": {"resourceVersion": ""},
  "items": [
    {"metadata": {"name": "coredns-578d4f8ffc-abcde", "namespace": "kube-system"},
     "spec": {"nodeName": "talos-cp-1"},
     "status": {"phase": "Running",
       "conditions": [{"type": "Ready", "status": "True"}],
       "containerStatuses": [{"name": "coredns", "ready": true, "restartCount": 1, "state": {"running": {"startedAt": "2025-01-06T09:01:00Z"}}}]}},
    {"metadata": {"name": "web-1", "namespace": "default"},
     "spec": {"nodeName": "talos-worker-1"},
     "status": {"phase": "Running",
       "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
       "containerStatuses": [
         {"name": "web", "ready": false, "restartCount": 7, "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}}},
         {"name": "sidecar", "ready": true, "restartCount": 1, "state": {"running": {}}}]}},
    {"metadata": {"name": "big-0", "namespace": "db"},
     "spec": {},
     "status": {"phase": "Pending",
       "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/5 nodes are available"}]}},
    {"metadata": {"name": "api-2", "namespace": "default"},
     "spec": {"nodeName": "talos-worker-1"},
     "status": {"phase": "Pending",
       "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
       "initContainerStatuses": [{"name": "init", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}}}],
       "containerStatuses": null}},
    {"metadata": {"name": "db-migrate-x1", "namespace": "default"},
     "spec": {"nodeName": "talos-worker-1"},
     "status": {"phase": "Succeeded",
       "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
       "containerStatuses": [{"name": "migrate", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}},
    {"metadata": {"name": "cache-9", "namespace": "default"},
     "spec": {"nodeName": "talos-worker-1"},
     "status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}}
  ]
}"#;

    #[test]
    fn parses_nodes_with_conditions_roles_and_addresses() {
        let nodes = parse_nodes(NODES).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(
            nodes[0],
            NodeInfo {
                name: "talos-cp-1".into(),
                ready: true,
                roles: vec!["control-plane".into()],
                kubelet_version: "v1.32.3".into(),
                addresses: vec!["10.5.0.11".into(), "talos-cp-1".into()],
                reason: None,
            }
        );
        assert!(!nodes[1].ready);
        assert!(nodes[1].roles.is_empty());
        assert_eq!(
            nodes[1].reason.as_deref(),
            Some("Ready=Unknown: NodeStatusUnknown: Kubelet stopped posting node status.")
        );
        let s = summarize_nodes(&nodes);
        assert_eq!((s.total, s.ready), (2, 1));
        assert_eq!(s.not_ready[0].0, "talos-worker-1");
    }

    #[test]
    fn node_without_ready_condition_is_not_ready() {
        let nodes =
            parse_nodes(r#"{"kind":"NodeList","items":[{"metadata":{"name":"n1"}}]}"#).unwrap();
        assert!(!nodes[0].ready);
        assert_eq!(
            nodes[0].reason.as_deref(),
            Some("no Ready condition reported")
        );
    }

    #[test]
    fn rejects_non_json_output() {
        assert!(parse_nodes("No resources found").is_err());
        assert!(parse_pods("").is_err());
    }

    #[test]
    fn parses_pods_with_container_statuses() {
        let pods = parse_pods(PODS).unwrap();
        assert_eq!(pods.len(), 6);
        assert_eq!(
            pods[0],
            PodInfo {
                namespace: "kube-system".into(),
                name: "coredns-578d4f8ffc-abcde".into(),
                phase: "Running".into(),
                ready: true,
                restarts: 1,
                node: Some("talos-cp-1".into()),
                reason: None,
            }
        );
        assert_eq!(pods[1].restarts, 8);
        assert_eq!(pods[1].reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(pods[2].node, None);
        assert_eq!(pods[2].reason.as_deref(), Some("Unschedulable"));
        assert_eq!(pods[3].reason.as_deref(), Some("ImagePullBackOff"));
        assert_eq!(pods[4].reason, None);
        assert_eq!(pods[5].reason.as_deref(), Some("Evicted"));
    }

    #[test]
    fn summary_counts_and_lists_what_is_not_running() {
        let s = summarize_pods(&parse_pods(PODS).unwrap());
        assert_eq!((s.total, s.running, s.succeeded), (6, 1, 1));
        let listed: Vec<(&str, &str, &str)> = s
            .not_running
            .iter()
            .map(|p| (p.pod.as_str(), p.phase.as_str(), p.reason.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                ("default/web-1", "Running", "CrashLoopBackOff"),
                ("db/big-0", "Pending", "Unschedulable"),
                ("default/api-2", "Pending", "ImagePullBackOff"),
                ("default/cache-9", "Failed", "Evicted"),
            ]
        );
        assert_eq!(s.total, s.running + s.succeeded + s.not_running.len());
    }

    #[test]
    fn matches_expected_nodes_by_name_or_address() {
        let nodes = parse_nodes(NODES).unwrap();
        let pending = not_ready(
            &["10.5.0.11".into(), "10.5.0.21".into(), "10.5.0.99".into()],
            &nodes,
        );
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].name.as_deref(), Some("talos-worker-1"));
        assert_eq!(
            pending[0].to_string(),
            "talos-worker-1 (10.5.0.21): Ready=Unknown: NodeStatusUnknown: Kubelet stopped posting node status."
        );
        assert_eq!(
            pending[1].to_string(),
            "10.5.0.99: not registered in Kubernetes"
        );
        assert_eq!(not_ready(&[], &nodes).len(), 1);
        assert_eq!(not_ready(&[], &[])[0].reason, "no nodes registered");
    }

    #[test]
    fn stderr_keeps_the_verdict_and_drops_repeated_klog_lines() {
        let raw = "E0106 10:00:00.000001   123 memcache.go:265] \"Unhandled Error\" err=\"couldn't get current server API group list: connection refused\"\nE0106 10:00:00.000002   123 memcache.go:265] \"Unhandled Error\" err=\"couldn't get current server API group list: connection refused\"\nThe connection to the server 127.0.0.1:1 was refused - did you specify the right host or port?\n";
        assert_eq!(
            clean_stderr(raw),
            "The connection to the server 127.0.0.1:1 was refused - did you specify the right host or port?"
        );
        let only_klog =
            "E0106 10:00:00.000001   1 x.go:1] boom\nE0106 10:00:00.000001   1 x.go:1] boom\n";
        assert_eq!(
            clean_stderr(only_klog),
            "E0106 10:00:00.000001   1 x.go:1] boom"
        );
    }
}
