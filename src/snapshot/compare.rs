//! The post-restore comparison: what the live cluster lists (through kubectl) against what the
//! restored snapshot holds ([`super::xray`]), object by object, per kind and namespace.
//!
//! Policy: an object of a *checked* kind that the snapshot holds and the cluster does not list is
//! missing, and fails the check: the restore did not bring back what the user expects. Objects the
//! cluster lists beyond the snapshot are extras, listed only (controllers and users create objects
//! as soon as the API is back). *Churn* kinds (pods, replica sets, endpoints, events, leases) are
//! counted and shown, never judged: they are recreated, renamed and expired all the time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::xray::{self, Contents};

/// One kind the comparison looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindSpec {
    /// The resource as `inspect` and kubectl name it (`deployments`).
    pub resource: &'static str,
    /// What kubectl is asked for: group-qualified where a CRD of the same plural could shadow
    /// the built-in one.
    pub kubectl: &'static str,
    /// The object `kind` kubectl reports for each item.
    pub kind: &'static str,
    /// The API group in the etcd key (`/registry/<group>/<resource>/…`); `None` where the API
    /// server stores it without one (`/registry/deployments/…` for `apps`).
    pub etcd_group: Option<&'static str>,
    pub namespaced: bool,
    /// Shown, never a failure.
    pub churn: bool,
}

const fn spec(
    resource: &'static str,
    kubectl: &'static str,
    kind: &'static str,
    etcd_group: Option<&'static str>,
    namespaced: bool,
    churn: bool,
) -> KindSpec {
    KindSpec {
        resource,
        kubectl,
        kind,
        etcd_group,
        namespaced,
        churn,
    }
}

/// The kinds compared, checked ones first, in the order of the report.
pub const KINDS: &[KindSpec] = &[
    spec("namespaces", "namespaces", "Namespace", None, false, false),
    spec(
        "deployments",
        "deployments.apps",
        "Deployment",
        None,
        true,
        false,
    ),
    spec(
        "statefulsets",
        "statefulsets.apps",
        "StatefulSet",
        None,
        true,
        false,
    ),
    spec(
        "daemonsets",
        "daemonsets.apps",
        "DaemonSet",
        None,
        true,
        false,
    ),
    spec("services", "services", "Service", None, true, false),
    spec("configmaps", "configmaps", "ConfigMap", None, true, false),
    spec("secrets", "secrets", "Secret", None, true, false),
    spec(
        "persistentvolumeclaims",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        None,
        true,
        false,
    ),
    spec(
        "customresourcedefinitions",
        "customresourcedefinitions.apiextensions.k8s.io",
        "CustomResourceDefinition",
        Some("apiextensions.k8s.io"),
        false,
        false,
    ),
    spec("pods", "pods", "Pod", None, true, true),
    spec(
        "replicasets",
        "replicasets.apps",
        "ReplicaSet",
        None,
        true,
        true,
    ),
    spec("endpoints", "endpoints", "Endpoints", None, true, true),
    spec("events", "events", "Event", None, true, true),
    spec(
        "leases",
        "leases.coordination.k8s.io",
        "Lease",
        None,
        true,
        true,
    ),
];

/// The argument of the one `kubectl get … -A -o json` call.
pub fn kubectl_resources() -> String {
    KINDS
        .iter()
        .map(|k| k.kubectl)
        .collect::<Vec<_>>()
        .join(",")
}

/// One object: its resource (a [`KindSpec::resource`]), namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectId {
    pub resource: &'static str,
    pub namespace: Option<String>,
    pub name: String,
}

/// The objects of the compared kinds in a snapshot's live state.
pub fn snapshot_objects(c: &Contents) -> BTreeSet<ObjectId> {
    c.objects
        .iter()
        .filter_map(|o| {
            let key = o.key_str();
            let p = xray::parse_key(&key);
            let k = KINDS.iter().find(|k| {
                k.resource == p.resource
                    && k.etcd_group == p.group
                    && k.namespaced == p.namespace.is_some()
            })?;
            Some(ObjectId {
                resource: k.resource,
                namespace: p.namespace.map(str::to_owned),
                name: p.name.to_owned(),
            })
        })
        .collect()
}

/// The objects of the compared kinds among what kubectl listed, by `kind`; anything else
/// (kubectl was asked only for these) is ignored.
pub fn live_objects<'a>(
    items: impl IntoIterator<Item = (&'a str, Option<&'a str>, &'a str)>,
) -> BTreeSet<ObjectId> {
    items
        .into_iter()
        .filter_map(|(kind, namespace, name)| {
            let k = KINDS.iter().find(|k| k.kind == kind)?;
            Some(ObjectId {
                resource: k.resource,
                namespace: namespace.filter(|ns| !ns.is_empty()).map(str::to_owned),
                name: name.to_owned(),
            })
        })
        .collect()
}

/// How many names a [`Delta`] keeps.
pub const NAMES_SHOWN: usize = 10;

/// The comparison's result; `passed` is false when an object of a checked kind is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Comparison {
    /// The file that was restored (and read for this).
    pub snapshot: PathBuf,
    /// Its etcd revision.
    pub revision: i64,
    pub passed: bool,
    /// One row per kind, in [`KINDS`] order.
    pub kinds: Vec<KindRow>,
    /// Checked kinds only: objects of the snapshot the cluster does not list, per resource and
    /// namespace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Delta>,
    /// Checked kinds only: objects the cluster lists that the snapshot does not hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<Delta>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KindRow {
    pub resource: String,
    /// Shown, never a failure.
    pub churn: bool,
    pub snapshot: u64,
    pub live: u64,
    /// In the snapshot, not listed live.
    pub missing: u64,
    /// Listed live, not in the snapshot.
    pub extra: u64,
}

/// Objects of one resource in one namespace (`None`: cluster-scoped).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Delta {
    pub resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub objects: u64,
    /// The first [`NAMES_SHOWN`] names, sorted.
    pub names: Vec<String>,
}

impl Delta {
    /// `deployments in team-03: 2 (web, api)`, `namespaces: 1 (team-03)`.
    pub fn describe(&self) -> String {
        let more = if self.objects as usize > self.names.len() {
            ", …"
        } else {
            ""
        };
        let place = self
            .namespace
            .as_ref()
            .map_or_else(String::new, |ns| format!(" in {ns}"));
        format!(
            "{}{place}: {} ({}{more})",
            self.resource,
            self.objects,
            self.names.join(", ")
        )
    }
}

/// Compares the snapshot's objects with the live ones.
pub fn compare(
    snapshot_file: PathBuf,
    revision: i64,
    snapshot: &BTreeSet<ObjectId>,
    live: &BTreeSet<ObjectId>,
) -> Comparison {
    let count = |set: &BTreeSet<ObjectId>, r: &str| set.iter().filter(|o| o.resource == r).count();
    let missing: Vec<&ObjectId> = snapshot.difference(live).collect();
    let extra: Vec<&ObjectId> = live.difference(snapshot).collect();
    let kinds: Vec<KindRow> = KINDS
        .iter()
        .map(|k| KindRow {
            resource: k.resource.to_owned(),
            churn: k.churn,
            snapshot: count(snapshot, k.resource) as u64,
            live: count(live, k.resource) as u64,
            missing: missing.iter().filter(|o| o.resource == k.resource).count() as u64,
            extra: extra.iter().filter(|o| o.resource == k.resource).count() as u64,
        })
        .collect();
    let checked = |o: &&&ObjectId| KINDS.iter().any(|k| k.resource == o.resource && !k.churn);
    let missing = deltas(missing.iter().filter(checked).copied());
    let extra = deltas(extra.iter().filter(checked).copied());
    Comparison {
        snapshot: snapshot_file,
        revision,
        passed: missing.is_empty(),
        kinds,
        missing,
        extra,
    }
}

/// Groups objects per resource (in [`KINDS`] order) and namespace.
fn deltas<'a>(objects: impl Iterator<Item = &'a ObjectId>) -> Vec<Delta> {
    let order = |r: &str| {
        KINDS
            .iter()
            .position(|k| k.resource == r)
            .unwrap_or(usize::MAX)
    };
    let mut groups: BTreeMap<(usize, Option<String>), Delta> = BTreeMap::new();
    for o in objects {
        let d = groups
            .entry((order(o.resource), o.namespace.clone()))
            .or_insert_with(|| Delta {
                resource: o.resource.to_owned(),
                namespace: o.namespace.clone(),
                objects: 0,
                names: Vec::new(),
            });
        d.objects += 1;
        // The set is sorted by name within a group, so these are the first names.
        if d.names.len() < NAMES_SHOWN {
            d.names.push(o.name.clone());
        }
    }
    groups.into_values().collect()
}

impl Comparison {
    /// The stage's error text: what is missing, per kind and namespace.
    pub fn failure(&self) -> String {
        let total: u64 = self.missing.iter().map(|d| d.objects).sum();
        let lines: Vec<String> = self
            .missing
            .iter()
            .map(|d| format!("  {}", d.describe()))
            .collect();
        format!(
            "the cluster does not list {total} object(s) of the restored snapshot {} (revision {}):\n{}",
            self.snapshot.display(),
            self.revision,
            lines.join("\n")
        )
    }

    /// One line for the progress output.
    pub fn one_line(&self) -> String {
        let checked: u64 = self
            .kinds
            .iter()
            .filter(|k| !k.churn)
            .map(|k| k.snapshot)
            .sum();
        let missing: u64 = self.missing.iter().map(|d| d.objects).sum();
        let extra: u64 = self.extra.iter().map(|d| d.objects).sum();
        if missing == 0 {
            format!(
                "all {checked} objects of the checked kinds in the snapshot are listed by the cluster ({extra} extra)"
            )
        } else {
            format!(
                "{missing} of {checked} objects of the checked kinds in the snapshot are missing"
            )
        }
    }

    /// The comparison as text: a table per kind, then what is missing and what is extra.
    pub fn render_text(&self) -> String {
        let mut rows = vec![vec![
            "RESOURCE".to_owned(),
            "SNAPSHOT".into(),
            "LIVE".into(),
            "MISSING".into(),
            "EXTRA".into(),
        ]];
        for k in &self.kinds {
            rows.push(vec![
                if k.churn {
                    format!("{} (churn)", k.resource)
                } else {
                    k.resource.clone()
                },
                k.snapshot.to_string(),
                k.live.to_string(),
                k.missing.to_string(),
                k.extra.to_string(),
            ]);
        }
        let mut out = format!(
            "post-restore comparison with {} (revision {}): {}\n",
            self.snapshot.display(),
            self.revision,
            if self.passed { "passed" } else { "FAILED" }
        );
        out.push_str(&crate::table::render(&rows));
        for d in &self.missing {
            out.push_str(&format!("missing: {}\n", d.describe()));
        }
        for d in &self.extra {
            out.push_str(&format!("extra (not a failure): {}\n", d.describe()));
        }
        out.push_str("(churn kinds are shown, never a failure)\n");
        out
    }

    /// The comparison as Markdown, for `report.md`.
    pub fn render_markdown(&self) -> String {
        let mut s = format!(
            "\n## Post-restore comparison: {}\n\nLive cluster (kubectl) against `{}` (revision {}).\n\n| resource | snapshot | live | missing | extra |\n|---|---|---|---|---|\n",
            if self.passed { "passed" } else { "FAILED" },
            self.snapshot.display(),
            self.revision
        );
        for k in &self.kinds {
            let name = if k.churn {
                format!("{} (churn)", k.resource)
            } else {
                k.resource.clone()
            };
            s.push_str(&format!(
                "| {name} | {} | {} | {} | {} |\n",
                k.snapshot, k.live, k.missing, k.extra
            ));
        }
        s.push('\n');
        for d in &self.missing {
            s.push_str(&format!("- **Missing:** {}\n", d.describe()));
        }
        for d in &self.extra {
            s.push_str(&format!("- Extra (not a failure): {}\n", d.describe()));
        }
        s.push_str("- Churn kinds are shown, never a failure.\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(resource: &'static str, ns: Option<&str>, name: &str) -> ObjectId {
        ObjectId {
            resource,
            namespace: ns.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    #[test]
    fn equal_sets_pass_with_counts_per_kind() {
        let s: BTreeSet<ObjectId> = [
            id("namespaces", None, "shop"),
            id("deployments", Some("shop"), "web"),
            id("secrets", Some("shop"), "tls"),
        ]
        .into();
        let c = compare("f".into(), 7, &s, &s.clone());
        assert!(c.passed);
        assert!(c.missing.is_empty() && c.extra.is_empty());
        let row = |r: &str| c.kinds.iter().find(|k| k.resource == r).unwrap().clone();
        assert_eq!(
            (row("deployments").snapshot, row("deployments").live),
            (1, 1)
        );
        assert_eq!(row("namespaces").live, 1);
        assert_eq!(row("statefulsets").snapshot, 0);
        assert_eq!(c.kinds.len(), KINDS.len());
    }

    #[test]
    fn a_missing_checked_object_fails_and_is_named_per_namespace() {
        let s: BTreeSet<ObjectId> = [
            id("deployments", Some("shop"), "api"),
            id("deployments", Some("shop"), "web"),
            id("deployments", Some("blog"), "wp"),
            id("configmaps", Some("shop"), "cfg"),
        ]
        .into();
        let live: BTreeSet<ObjectId> = [
            id("deployments", Some("blog"), "wp"),
            id("configmaps", Some("shop"), "cfg"),
            id("configmaps", Some("shop"), "new"),
        ]
        .into();
        let c = compare("f".into(), 7, &s, &live);
        assert!(!c.passed);
        assert_eq!(
            c.missing,
            vec![Delta {
                resource: "deployments".into(),
                namespace: Some("shop".into()),
                objects: 2,
                names: vec!["api".into(), "web".into()],
            }]
        );
        assert_eq!(c.extra.len(), 1);
        assert_eq!(c.extra[0].names, ["new"]);
        assert!(
            c.failure().contains("deployments in shop: 2 (api, web)"),
            "{}",
            c.failure()
        );
        let text = c.render_text();
        assert!(text.contains("FAILED"), "{text}");
        assert!(
            text.contains("extra (not a failure): configmaps in shop: 1 (new)"),
            "{text}"
        );
    }

    #[test]
    fn churn_differences_never_fail() {
        let s: BTreeSet<ObjectId> = [
            id("pods", Some("shop"), "web-abc"),
            id("events", Some("shop"), "web.1"),
            id("leases", Some("kube-system"), "kube-scheduler"),
        ]
        .into();
        let live: BTreeSet<ObjectId> = [id("pods", Some("shop"), "web-xyz")].into();
        let c = compare("f".into(), 7, &s, &live);
        assert!(c.passed, "{c:?}");
        assert!(c.missing.is_empty() && c.extra.is_empty());
        let pods = c.kinds.iter().find(|k| k.resource == "pods").unwrap();
        assert!(pods.churn);
        assert_eq!(
            (pods.snapshot, pods.live, pods.missing, pods.extra),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn names_are_capped_but_counted() {
        let s: BTreeSet<ObjectId> = (0..25)
            .map(|i| id("secrets", Some("a"), &format!("s{i:02}")))
            .collect();
        let c = compare("f".into(), 1, &s, &BTreeSet::new());
        assert_eq!(c.missing[0].objects, 25);
        assert_eq!(c.missing[0].names.len(), NAMES_SHOWN);
        assert!(c.missing[0].describe().ends_with(", …)"));
    }

    #[test]
    fn live_items_map_by_kind_and_cluster_scope() {
        let live = live_objects([
            ("Namespace", Some(""), "shop"),
            ("Deployment", Some("shop"), "web"),
            ("CustomResourceDefinition", None, "certs.example.com"),
            ("Widget", Some("shop"), "ignored"),
        ]);
        assert_eq!(
            live.into_iter().collect::<Vec<_>>(),
            vec![
                id("customresourcedefinitions", None, "certs.example.com"),
                id("deployments", Some("shop"), "web"),
                id("namespaces", None, "shop"),
            ]
        );
    }

    #[test]
    fn snapshot_keys_map_to_kinds_like_the_api_server_lays_them_out() {
        let keys = [
            "/registry/namespaces/shop",
            "/registry/deployments/shop/web",
            "/registry/services/specs/shop/web",
            "/registry/services/endpoints/shop/web",
            "/registry/apiextensions.k8s.io/customresourcedefinitions/certs.example.com",
            "/registry/leases/kube-system/kube-scheduler",
            "/registry/example.com/widgets/shop/w1",
            "/registry/minions/node-1",
            "/registry/ranges/serviceips",
        ];
        let c = Contents {
            objects: keys
                .iter()
                .map(|k| xray::Object {
                    key: k.as_bytes().into(),
                    mod_revision: 2,
                    create_revision: 2,
                    size: 1,
                    hash: 0,
                    class: 0,
                })
                .collect(),
            classes: vec![xray::ValueClass::Other],
            revision: 2,
            compact_revision: None,
            revisions: keys.len() as u64,
            page_size: 4096,
            pages_used: 0,
            pages_total: 0,
            undecodable: 0,
        };
        let got: Vec<ObjectId> = snapshot_objects(&c).into_iter().collect();
        assert_eq!(
            got,
            vec![
                id("customresourcedefinitions", None, "certs.example.com"),
                id("deployments", Some("shop"), "web"),
                id("endpoints", Some("shop"), "web"),
                id("leases", Some("kube-system"), "kube-scheduler"),
                id("namespaces", None, "shop"),
                id("services", Some("shop"), "web"),
            ]
        );
    }

    #[test]
    fn every_kind_has_a_kubectl_name_and_unique_kind() {
        let kinds: BTreeSet<&str> = KINDS.iter().map(|k| k.kind).collect();
        assert_eq!(kinds.len(), KINDS.len());
        assert_eq!(kubectl_resources().split(',').count(), KINDS.len());
        assert!(kubectl_resources().contains("deployments.apps"));
    }
}
