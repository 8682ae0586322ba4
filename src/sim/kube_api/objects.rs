//! The simulated API's objects: what etcd holds, read from the cluster's current data
//! ([`Cluster::snapshot_source`], the restored copy after a `bootstrap --recover-from`) with the
//! library's X-ray, so the live API answers what the restored snapshot holds.
//!
//! Served: namespaces, services, configmaps, secrets, persistentvolumeclaims, endpoints and events
//! (`v1`), deployments, statefulsets, daemonsets and replicasets (`apps/v1`),
//! customresourcedefinitions (`apiextensions.k8s.io/v1`) and leases (`coordination.k8s.io/v1`),
//! each registered in discovery so the real kubectl resolves them. Pods and nodes stay with
//! [`super`]'s own model. An object is built from its key and revision (the values are not
//! decoded): `apiVersion`, `kind`, `metadata` with a stable uid and `resourceVersion` = its mod
//! revision. Fault `objects_vanish` hides objects, as if lost after the restore.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::{CREATED, fnv, not_found, status_body};
use crate::sim::state::Cluster;
use crate::snapshot::xray::{self, Contents};

/// One resource served from etcd's data.
struct Resource {
    /// Plural, as in the URL and in the etcd key.
    name: &'static str,
    singular: &'static str,
    kind: &'static str,
    /// `""` for the core group.
    group: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    /// The group in the etcd key (`/registry/<group>/<name>/…`), where the API server uses one.
    etcd_group: Option<&'static str>,
}

const fn r(
    name: &'static str,
    singular: &'static str,
    kind: &'static str,
    group: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
) -> Resource {
    Resource {
        name,
        singular,
        kind,
        group,
        namespaced,
        short,
        etcd_group: None,
    }
}

const RESOURCES: &[Resource] = &[
    r("namespaces", "namespace", "Namespace", "", false, &["ns"]),
    r("services", "service", "Service", "", true, &["svc"]),
    r("configmaps", "configmap", "ConfigMap", "", true, &["cm"]),
    r("secrets", "secret", "Secret", "", true, &[]),
    r(
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        "",
        true,
        &["pvc"],
    ),
    r("endpoints", "endpoints", "Endpoints", "", true, &["ep"]),
    r("events", "event", "Event", "", true, &["ev"]),
    r(
        "deployments",
        "deployment",
        "Deployment",
        "apps",
        true,
        &["deploy"],
    ),
    r(
        "statefulsets",
        "statefulset",
        "StatefulSet",
        "apps",
        true,
        &["sts"],
    ),
    r(
        "daemonsets",
        "daemonset",
        "DaemonSet",
        "apps",
        true,
        &["ds"],
    ),
    r(
        "replicasets",
        "replicaset",
        "ReplicaSet",
        "apps",
        true,
        &["rs"],
    ),
    Resource {
        etcd_group: Some("apiextensions.k8s.io"),
        ..r(
            "customresourcedefinitions",
            "customresourcedefinition",
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            false,
            &["crd", "crds"],
        )
    },
    r("leases", "lease", "Lease", "coordination.k8s.io", true, &[]),
];

/// The groups besides the core one, each served at `v1`.
const GROUPS: &[&str] = &["apps", "apiextensions.k8s.io", "coordination.k8s.io"];

impl Resource {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            "v1".into()
        } else {
            format!("{}/v1", self.group)
        }
    }

    fn discovery(&self) -> Value {
        let mut v = json!({
            "name": self.name, "singularName": self.singular, "namespaced": self.namespaced,
            "kind": self.kind, "verbs": ["get", "list", "watch"],
        });
        if !self.short.is_empty() {
            v["shortNames"] = json!(self.short);
        }
        v
    }
}

/// The core (`v1`) resources for `/api/v1`'s `APIResourceList`.
pub(super) fn core_resources() -> Vec<Value> {
    RESOURCES
        .iter()
        .filter(|r| r.group.is_empty())
        .map(Resource::discovery)
        .collect()
}

/// `GET /apis`.
pub(super) fn api_groups() -> Value {
    let groups: Vec<Value> = GROUPS
        .iter()
        .map(|g| {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [gv], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/GROUP/VERSION`.
pub(super) fn group_resources(group: &str, version: &str) -> Option<Value> {
    if version != "v1" || !GROUPS.contains(&group) {
        return None;
    }
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group)
        .map(Resource::discovery)
        .collect();
    Some(json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{group}/v1"), "resources": resources,
    }))
}

/// A request under `/api/v1/…` (`group` `""`) or `/apis/GROUP/v1/…`: a list (all namespaces or
/// one) or one object. `None` when the path names none of these resources.
pub(super) fn request(group: &str, rest: &[&str], cluster: &Cluster) -> Option<(u16, Value)> {
    let find = |name: &str| {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.name == name)
    };
    let (res, namespace, name) = match rest {
        [res] => (find(res)?, None, None),
        ["namespaces", ns, res] => (find(res).filter(|r| r.namespaced)?, Some(*ns), None),
        ["namespaces", ns, res, name] => {
            (find(res).filter(|r| r.namespaced)?, Some(*ns), Some(*name))
        }
        [res, name] => (find(res).filter(|r| !r.namespaced)?, None, Some(*name)),
        _ => return None,
    };
    let items = objects(cluster, res, namespace);
    Some(match name {
        None => (200, list(res, &cluster_revision(cluster), items)),
        Some(name) => match items.into_iter().find(|o| o["metadata"]["name"] == name) {
            Some(o) => (200, o),
            None => {
                let what = if res.group.is_empty() {
                    res.name.to_owned()
                } else {
                    format!("{}.{}", res.name, res.group)
                };
                (
                    404,
                    status_body(404, "NotFound", &format!("{what} \"{name}\" not found")),
                )
            }
        },
    })
}

/// `request`, or the API server's 404 for an unknown path.
pub(super) fn request_or_404(group: &str, rest: &[&str], cluster: &Cluster) -> (u16, Value) {
    request(group, rest, cluster).unwrap_or_else(|| {
        let prefix = if group.is_empty() {
            "/api/v1".to_owned()
        } else {
            format!("/apis/{group}/v1")
        };
        not_found(&format!("{prefix}/{}", rest.join("/")))
    })
}

/// What the simulated kubectl answers for `get a,b.apps,… [-A] -o json`: kubectl's `List` of
/// every item (`None` when a name is not served here).
pub fn kubectl_list(cluster: &Cluster, resources: &str) -> Option<Value> {
    let mut items = Vec::new();
    for wanted in resources.split(',') {
        let (name, group) = wanted.split_once('.').unwrap_or((wanted, ""));
        let res = RESOURCES.iter().find(|r| {
            (r.name == name || r.short.contains(&name)) && (group.is_empty() || r.group == group)
        });
        match (res, name) {
            (Some(res), _) => items.extend(objects(cluster, res, None)),
            (None, "pods") => {
                let pods = super::pod_list(cluster, None);
                items.extend(pods["items"].as_array().cloned().unwrap_or_default());
            }
            (None, "nodes") => {
                let nodes = super::node_list(cluster);
                items.extend(nodes["items"].as_array().cloned().unwrap_or_default());
            }
            _ => return None,
        }
    }
    Some(json!({
        "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items,
    }))
}

fn cluster_revision(cluster: &Cluster) -> String {
    contents(cluster).map_or_else(|| "0".into(), |c| c.revision.to_string())
}

fn list(res: &Resource, revision: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": format!("{}List", res.kind),
        "apiVersion": res.api_version(),
        "metadata": {"resourceVersion": revision},
        "items": items,
    })
}

/// The objects of `res` in etcd's data (in `namespace`, or all), less the vanished ones.
fn objects(cluster: &Cluster, res: &Resource, namespace: Option<&str>) -> Vec<Value> {
    let Some(c) = contents(cluster) else {
        return Vec::new();
    };
    let vanish = &cluster.faults.objects_vanish;
    c.objects
        .iter()
        .filter_map(|o| {
            let key = o.key_str();
            let p = xray::parse_key(&key);
            let ok = p.resource == res.name
                && p.group == res.etcd_group
                && p.namespace.is_some() == res.namespaced
                && namespace.is_none_or(|ns| p.namespace == Some(ns))
                && !vanish
                    .iter()
                    .any(|v| vanished(v, res.name, p.namespace, p.name));
            ok.then(|| object_json(res, p.namespace, p.name, o.mod_revision))
        })
        .collect()
}

/// Whether fault pattern `RESOURCE[/NAMESPACE[/NAME]]` covers this object.
fn vanished(pattern: &str, resource: &str, namespace: Option<&str>, name: &str) -> bool {
    let mut parts = pattern.splitn(3, '/');
    parts.next() == Some(resource)
        && parts.next().is_none_or(|ns| ns == namespace.unwrap_or(""))
        && parts.next().is_none_or(|n| n == name)
}

fn object_json(res: &Resource, namespace: Option<&str>, name: &str, revision: i64) -> Value {
    let uid_of = format!("{}/{}/{name}", res.name, namespace.unwrap_or(""));
    let mut metadata = json!({
        "name": name,
        "uid": format!("0b1ec700-0000-4000-8000-{:012x}", fnv(&uid_of) & 0xffff_ffff_ffff),
        "resourceVersion": revision.to_string(),
        "creationTimestamp": CREATED,
    });
    if let Some(ns) = namespace {
        metadata["namespace"] = json!(ns);
    }
    let mut o = json!({"apiVersion": res.api_version(), "kind": res.kind, "metadata": metadata});
    match res.kind {
        "Secret" => o["type"] = json!("Opaque"),
        "Service" => o["spec"] = json!({"type": "ClusterIP"}),
        "Namespace" => o["status"] = json!({"phase": "Active"}),
        "Deployment" | "StatefulSet" | "ReplicaSet" => o["spec"] = json!({"replicas": 1}),
        _ => {}
    }
    o
}

/// The last read, kept while the file's path, size and modification time stay the same.
type Cached = (PathBuf, u64, Option<std::time::SystemTime>, Arc<Contents>);
static CACHE: Mutex<Option<Cached>> = Mutex::new(None);

/// The live state of etcd's data; `None` without data or when it does not read.
fn contents(cluster: &Cluster) -> Option<Arc<Contents>> {
    let path = cluster.snapshot_source.as_deref()?;
    read_cached(path)
}

fn read_cached(path: &Path) -> Option<Arc<Contents>> {
    let meta = std::fs::metadata(path).ok()?;
    let (len, mtime) = (meta.len(), meta.modified().ok());
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((p, l, m, c)) = cache.as_ref()
        && p == path
        && *l == len
        && *m == mtime
    {
        return Some(c.clone());
    }
    let contents = Arc::new(xray::read(path).ok()?.1?);
    *cache = Some((path.to_path_buf(), len, mtime, contents.clone()));
    Some(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Cluster {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/snapshots/small.snapshot");
        Cluster::example(Some(path))
    }

    #[test]
    fn lists_what_etcd_holds_with_realistic_shapes() {
        let c = small();
        let (status, body) = request("apps", &["deployments"], &c).unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["kind"], "DeploymentList");
        assert_eq!(body["apiVersion"], "apps/v1");
        let items = body["items"].as_array().unwrap();
        assert_eq!(items.len(), 3, "small.snapshot holds 3 deployments");
        assert_eq!(items[0]["kind"], "Deployment");
        assert!(items[0]["metadata"]["namespace"].is_string());
        let (_, svc) = request("", &["services"], &c).unwrap();
        assert_eq!(svc["items"].as_array().unwrap().len(), 4);
        let (_, ep) = request("", &["endpoints"], &c).unwrap();
        assert_eq!(ep["items"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn vanish_fault_hides_a_namespaces_objects() {
        let mut c = small();
        let (_, all) = request("apps", &["deployments"], &c).unwrap();
        let ns = all["items"][0]["metadata"]["namespace"]
            .as_str()
            .unwrap()
            .to_owned();
        c.faults.objects_vanish = vec![format!("deployments/{ns}")];
        let (_, some) = request("apps", &["deployments"], &c).unwrap();
        let left = some["items"].as_array().unwrap();
        assert!(left.len() < 3);
        assert!(
            left.iter()
                .all(|d| d["metadata"]["namespace"] != ns.as_str())
        );
        let (status, _) = request("apps", &["namespaces", &ns, "deployments"], &c).unwrap();
        assert_eq!(status, 200);
    }

    #[test]
    fn one_object_or_not_found() {
        let c = small();
        let (_, all) = request("", &["configmaps"], &c).unwrap();
        let m = &all["items"][0]["metadata"];
        let (ns, name) = (
            m["namespace"].as_str().unwrap(),
            m["name"].as_str().unwrap(),
        );
        let (status, one) = request("", &["namespaces", ns, "configmaps", name], &c).unwrap();
        assert_eq!(status, 200);
        assert_eq!(one["metadata"]["name"], name);
        let (status, err) = request("", &["namespaces", ns, "configmaps", "nope"], &c).unwrap();
        assert_eq!(status, 404);
        assert_eq!(err["reason"], "NotFound");
        assert!(request("", &["widgets"], &c).is_none());
    }

    #[test]
    fn the_simulated_kubectl_lists_every_compared_kind() {
        let c = small();
        let kinds = crate::snapshot::compare::kubectl_resources();
        let list = kubectl_list(&c, &kinds).unwrap();
        assert_eq!(list["kind"], "List");
        let items = list["items"].as_array().unwrap();
        let count = |k: &str| items.iter().filter(|i| i["kind"] == k).count();
        assert_eq!(
            (count("Deployment"), count("Secret"), count("Lease")),
            (3, 10, 2)
        );
        assert!(count("Pod") > 0, "pods come from the simulated kubelets");
        assert!(kubectl_list(&c, "deployments.apps,widgets").is_none());
    }

    #[test]
    fn discovery_names_every_group() {
        let groups = api_groups();
        assert_eq!(groups["groups"].as_array().unwrap().len(), GROUPS.len());
        let apps = group_resources("apps", "v1").unwrap();
        let names: Vec<&str> = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["deployments", "statefulsets", "daemonsets", "replicasets"]
        );
        assert!(group_resources("apps", "v2").is_none());
    }
}
