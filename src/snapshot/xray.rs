//! What a snapshot holds: the live Kubernetes objects in it, without etcd.
//!
//! [`read`] rides on verify's single streaming pass ([`verify::verify_file_with`]): every entry
//! of bucket `key` (the MVCC history, in revision order) is decoded as etcd's `mvccpb.KeyValue`;
//! a put records the key's newest revision, a tombstone (`'t'` after the revision) removes it.
//! What is left is the live state, the keys `etcdctl get --prefix` would return. Memory grows
//! with the number of live keys only: per key the key bytes, the mod revision, the value's size,
//! a 64-bit hash of the value and an index into a small table of value classes.
//!
//! Keys are grouped the way the Kubernetes API server lays them out ([`parse_key`]) and values
//! are classified, never printed ([`ValueClass`]).

use std::collections::HashMap;
use std::io;
use std::path::Path;

use serde::Serialize;

use super::verify::{self, Report, Visitor};

/// etcd's `mvccpb.KeyValue` (`api/mvccpb/kv.proto`): the value stored for every revision in
/// bucket `key`. etcd's storage format, mirrored field by field.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub version: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

/// What a value is, as far as can be told without decoding the object itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "encoding", rename_all = "snake_case")]
pub enum ValueClass {
    /// Kubernetes protobuf: `k8s\0` + `runtime.Unknown` with its TypeMeta.
    Protobuf { api_version: String, kind: String },
    /// JSON (custom resources, older objects): its `apiVersion` and `kind`.
    Json { api_version: String, kind: String },
    /// Encrypted at rest: `k8s:enc:<provider>:<version>:<key name>:` + ciphertext.
    Encrypted { provider: String, key_name: String },
    /// Anything else (plain text, a k8s protobuf that does not decode, …).
    Other,
}

impl ValueClass {
    /// Classifies one value.
    pub fn of(value: &[u8]) -> Self {
        if let Some(rest) = value.strip_prefix(b"k8s\0") {
            use prost::Message as _;
            return match k8s_pb::apimachinery::pkg::runtime::Unknown::decode(rest) {
                Ok(u) => {
                    let tm = u.type_meta.unwrap_or_default();
                    ValueClass::Protobuf {
                        api_version: tm.api_version.unwrap_or_default(),
                        kind: tm.kind.unwrap_or_default(),
                    }
                }
                Err(_) => ValueClass::Other,
            };
        }
        if let Some(rest) = value.strip_prefix(b"k8s:enc:") {
            // `<provider>:<version>:<key name>:`; KMS v2 and the AES/secretbox providers alike.
            let mut parts = rest.splitn(4, |&b| b == b':');
            let provider = parts.next().unwrap_or_default();
            let _version = parts.next();
            let key_name = parts.next().unwrap_or_default();
            return ValueClass::Encrypted {
                provider: String::from_utf8_lossy(provider).into_owned(),
                key_name: String::from_utf8_lossy(key_name).into_owned(),
            };
        }
        if value.trim_ascii_start().starts_with(b"{")
            && let Some((api_version, kind)) = json_type_meta(value)
        {
            return ValueClass::Json { api_version, kind };
        }
        ValueClass::Other
    }

    /// `apps/v1 Deployment (protobuf)`, `aescbc key1 (encrypted)`, `other`.
    pub fn describe(&self) -> String {
        let tk = |v: &str, k: &str| {
            if v.is_empty() && k.is_empty() {
                "(no kind)".to_owned()
            } else {
                format!("{v} {k}").trim().to_owned()
            }
        };
        match self {
            ValueClass::Protobuf { api_version, kind } => {
                format!("{} (protobuf)", tk(api_version, kind))
            }
            ValueClass::Json { api_version, kind } => format!("{} (json)", tk(api_version, kind)),
            ValueClass::Encrypted { provider, key_name } => {
                format!("{provider} {key_name} (encrypted)")
            }
            ValueClass::Other => "other".to_owned(),
        }
    }
}

/// `apiVersion` and `kind` of a JSON object, reading only as far as needed: the API server
/// writes them first, so a large object is not parsed to its end. The visitor stops the map
/// once both are found; serde_json then reports the unread rest as an error, which is ignored
/// because the answer is already out. A value that is not JSON up to that point is `None`.
fn json_type_meta(value: &[u8]) -> Option<(String, String)> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
    struct Find<'a>(&'a mut (Option<String>, Option<String>));
    impl<'de> Visitor<'de> for Find<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                match k.as_ref() {
                    "apiVersion" => self.0.0 = Some(map.next_value()?),
                    "kind" => self.0.1 = Some(map.next_value()?),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                if self.0.0.is_some() && self.0.1.is_some() {
                    return Ok(());
                }
            }
            self.0.0.get_or_insert_default();
            self.0.1.get_or_insert_default();
            Ok(())
        }
    }
    let mut found = (None, None);
    let mut de = serde_json::Deserializer::from_slice(value);
    let complete = de.deserialize_map(Find(&mut found)).is_ok();
    match found {
        (Some(v), Some(k)) => Some((v, k)),
        // A whole object without one of them: classified with what it has.
        (v, k) if complete => Some((v.unwrap_or_default(), k.unwrap_or_default())),
        _ => None,
    }
}

/// Where a key sits in the Kubernetes layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPath<'a> {
    /// kubectl's resource name: `pods`, `nodes` (etcd: `minions`), `services`
    /// (`services/specs`), `endpoints` (`services/endpoints`), `<plural>.<group>` for API
    /// groups; `(outside /registry)` for other keys.
    pub resource: &'a str,
    pub group: Option<&'a str>,
    /// `None` for cluster-scoped objects and keys outside `/registry`.
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

/// The resource of keys outside `/registry/`.
pub const OUTSIDE: &str = "(outside /registry)";

/// Splits an etcd key the way the API server builds it:
/// `/registry/<resource>/[<namespace>/]<name>` or `/registry/<group>/<resource>/…` (a group has
/// a dot, a resource never does), with the irregular ones (`services/specs`,
/// `services/endpoints`, `minions`) renamed to what kubectl calls them. Object names cannot
/// contain `/`, so one segment after the resource is a cluster-scoped name and two are
/// namespace and name. Anything else under `/registry` (`ranges/serviceips`, `masterleases/<ip>`)
/// keeps its first segment as the resource and the rest as the name.
pub fn parse_key(key: &str) -> KeyPath<'_> {
    let Some(rest) = key.strip_prefix("/registry/") else {
        return KeyPath {
            resource: OUTSIDE,
            group: None,
            namespace: None,
            name: key,
        };
    };
    let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let (group, resource, tail) = match first {
        "services" => match tail.split_once('/') {
            Some(("specs", t)) => (None, "services", t),
            Some(("endpoints", t)) => (None, "endpoints", t),
            _ => (None, "services", tail),
        },
        "minions" => (None, "nodes", tail),
        g if g.contains('.') => match tail.split_once('/') {
            Some((r, t)) => (Some(g), r, t),
            None => (Some(g), tail, ""),
        },
        r => (None, r, tail),
    };
    let (namespace, name) = match tail.split_once('/') {
        Some((ns, name)) if !name.contains('/') => (Some(ns), name),
        _ => (None, tail),
    };
    KeyPath {
        resource,
        group,
        namespace,
        name,
    }
}

/// `resource` or `resource.group`, as kubectl names it.
pub fn resource_name(p: &KeyPath<'_>) -> String {
    match p.group {
        Some(g) => format!("{}.{g}", p.resource),
        None => p.resource.to_owned(),
    }
}

/// One live key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: Box<[u8]>,
    pub mod_revision: i64,
    pub create_revision: i64,
    pub size: u32,
    /// xxh3-64 of the value, to tell changed values apart in a diff.
    pub hash: u64,
    /// Index into [`Contents::classes`].
    pub class: u32,
}

impl Object {
    pub fn key_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.key)
    }
}

/// The live state of a snapshot, sorted by key.
#[derive(Debug, Clone)]
pub struct Contents {
    pub objects: Vec<Object>,
    pub classes: Vec<ValueClass>,
    /// The store's revision as etcd loads it: the newest revision in bucket `key`, or the
    /// compaction revision when that is higher (a compaction can remove tombstones at the head).
    pub revision: i64,
    /// `finishedCompactRev` from bucket `meta`, if history was ever compacted.
    pub compact_revision: Option<i64>,
    /// Revisions (entries of bucket `key`) read, tombstones included.
    pub revisions: u64,
    pub page_size: u64,
    /// Pages in use (reached from the metas) and in the database (`meta.pgid`).
    pub pages_used: u64,
    pub pages_total: u64,
    /// Entries of bucket `key` that are not a `KeyValue` (should be none in an etcd snapshot).
    pub undecodable: u64,
}

impl Contents {
    pub fn class(&self, o: &Object) -> &ValueClass {
        &self.classes[o.class as usize]
    }

    /// Bytes of the database file that hold pages in use; the rest is free pages, what a
    /// defragmentation would give back.
    pub fn used_bytes(&self) -> u64 {
        self.pages_used * self.page_size
    }

    pub fn free_bytes(&self) -> u64 {
        (self.pages_total.saturating_sub(self.pages_used)) * self.page_size
    }
}

#[derive(Debug, Clone, Copy)]
struct Live {
    mod_revision: i64,
    create_revision: i64,
    size: u32,
    hash: u64,
    class: u32,
}

#[derive(Default)]
struct Collector {
    live: HashMap<Box<[u8]>, Live>,
    classes: Vec<ValueClass>,
    class_ids: HashMap<ValueClass, u32>,
    last_revision: i64,
    compact_revision: Option<i64>,
    revisions: u64,
    undecodable: u64,
    pages: (u64, u64, u64),
}

impl Collector {
    fn class_id(&mut self, c: ValueClass) -> u32 {
        if let Some(&id) = self.class_ids.get(&c) {
            return id;
        }
        let id = self.classes.len() as u32;
        self.classes.push(c.clone());
        self.class_ids.insert(c, id);
        id
    }

    fn finish(self) -> Contents {
        let mut objects: Vec<Object> = self
            .live
            .into_iter()
            .map(|(key, l)| Object {
                key,
                mod_revision: l.mod_revision,
                create_revision: l.create_revision,
                size: l.size,
                hash: l.hash,
                class: l.class,
            })
            .collect();
        objects.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let (used, total, page_size) = self.pages;
        Contents {
            objects,
            classes: self.classes,
            revision: self.last_revision.max(self.compact_revision.unwrap_or(0)),
            compact_revision: self.compact_revision,
            revisions: self.revisions,
            page_size,
            pages_used: used,
            pages_total: total,
            undecodable: self.undecodable,
        }
    }
}

/// `main` of a 17-byte revision (8-byte BE main, `_`, 8-byte BE sub) plus an optional `t`.
fn revision_main(b: &[u8]) -> Option<i64> {
    if (b.len() == 17 || b.len() == 18) && b[8] == b'_' {
        b[..8].try_into().ok().map(i64::from_be_bytes)
    } else {
        None
    }
}

impl Visitor for Collector {
    fn entry(&mut self, bucket: &[u8], key: &[u8], value: &[u8]) {
        use prost::Message as _;
        match bucket {
            b"key" => {
                self.revisions += 1;
                if let Some(r) = revision_main(key) {
                    self.last_revision = r;
                }
                let Ok(kv) = KeyValue::decode(value) else {
                    self.undecodable += 1;
                    return;
                };
                if key.len() == 18 && key[17] == b't' {
                    self.live.remove(kv.key.as_slice());
                    return;
                }
                let class = ValueClass::of(&kv.value);
                let live = Live {
                    mod_revision: kv.mod_revision,
                    create_revision: kv.create_revision,
                    size: u32::try_from(kv.value.len()).unwrap_or(u32::MAX),
                    hash: xxhash_rust::xxh3::xxh3_64(&kv.value),
                    class: self.class_id(class),
                };
                match self.live.get_mut(kv.key.as_slice()) {
                    Some(l) => *l = live,
                    None => {
                        self.live.insert(kv.key.into_boxed_slice(), live);
                    }
                }
            }
            b"meta" if key == b"finishedCompactRev" => {
                self.compact_revision = revision_main(value);
            }
            _ => {}
        }
    }

    fn pages(&mut self, used: u64, total: u64, page_size: u64) {
        self.pages = (used, total, page_size);
    }
}

/// Verifies `path` and reads its live state in the same pass. The contents are `None` when
/// the file is not valid (the report says why).
pub fn read(path: &Path) -> io::Result<(Report, Option<Contents>)> {
    let mut c = Collector::default();
    let report = verify::verify_file_with(path, &mut c)?;
    let contents = report.valid.then(|| c.finish());
    Ok((report, contents))
}

/// [`read`] of the snapshot talosctl is still streaming to `path` (see
/// [`follow`](super::follow)): `None` when the finished file has to be read with [`read`]
/// after all.
pub fn follow(
    path: &Path,
    end: &super::follow::StreamEnd,
) -> io::Result<Option<(Report, Option<Contents>)>> {
    use super::follow::Followed;
    Ok(
        match super::follow::follow(path, end, Collector::default())? {
            Followed::Verified { report, visitor } => {
                let contents = report.valid.then(|| visitor.finish());
                Some((report, contents))
            }
            Followed::Unsure => None,
        },
    )
}

/// Which objects a command looks at.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Exact namespace; `Some("")` selects cluster-scoped objects.
    pub namespace: Option<String>,
    /// `pods`, `deployments`, `nodes`, or `<plural>.<group>` (also just `<plural>`).
    pub resource: Option<String>,
    /// Exact object name.
    pub name: Option<String>,
}

impl Filter {
    pub fn matches(&self, p: &KeyPath<'_>) -> bool {
        if let Some(ns) = &self.namespace
            && p.namespace.unwrap_or("") != ns
        {
            return false;
        }
        if let Some(r) = &self.resource
            && !(p.resource == r || resource_name(p) == *r)
        {
            return false;
        }
        if let Some(n) = &self.name
            && p.name != n
        {
            return false;
        }
        true
    }
}

/// Objects and bytes of one resource in one namespace (`None`: cluster-scoped, or all
/// namespaces when grouped by resource only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub resource: String,
    /// The namespace of a per-namespace row; `None` for cluster-scoped objects and for rows
    /// that sum every namespace.
    pub namespace: Option<String>,
    /// Objects without a namespace (nodes, namespaces, cluster roles, keys outside /registry).
    pub cluster_scoped: bool,
    pub objects: u64,
    pub bytes: u64,
    /// Names of the objects (`--names`), sorted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

/// One of the largest values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Large {
    pub key: String,
    pub bytes: u64,
    pub value: String,
}

/// How many values of one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassCount {
    #[serde(flatten)]
    pub class: ValueClass,
    pub objects: u64,
    pub bytes: u64,
}

/// A snapshot's contents in three numbers, kept in the sidecar so `list --objects` needs no
/// second pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ObjectSummary {
    /// Live keys.
    pub objects: u64,
    /// Namespaces that hold objects or exist as Namespace objects.
    pub namespaces: u64,
    /// Bytes of the live values.
    pub bytes: u64,
}

impl Contents {
    pub fn totals(&self) -> ObjectSummary {
        let s = summarize(self, &Filter::default(), SummaryOptions::default());
        ObjectSummary {
            objects: s.objects,
            namespaces: s.namespaces,
            bytes: s.bytes,
        }
    }
}

/// What `inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub revision: i64,
    pub compact_revision: Option<i64>,
    pub objects: u64,
    pub bytes: u64,
    pub namespaces: u64,
    /// Rows are per resource and namespace (else per resource, all namespaces together).
    pub per_namespace: bool,
    /// Rows of the table: per resource (and per namespace when asked).
    pub groups: Vec<Group>,
    pub largest: Vec<Large>,
    pub values: Vec<ClassCount>,
    /// Bytes of the database in pages in use, and in free pages.
    pub db_size: u64,
    pub db_used: u64,
    pub db_free: u64,
}

/// How `summarize` groups rows.
#[derive(Debug, Clone, Copy, Default)]
pub struct SummaryOptions {
    pub by_namespace: bool,
    pub names: bool,
    pub largest: usize,
}

pub fn summarize(c: &Contents, filter: &Filter, opts: SummaryOptions) -> Summary {
    let mut groups: std::collections::BTreeMap<(String, Option<String>), Group> =
        Default::default();
    let mut namespaces = std::collections::BTreeSet::new();
    let mut classes: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut largest: Vec<(u64, &Object)> = Vec::new();
    let (mut objects, mut bytes) = (0u64, 0u64);
    let per_namespace = opts.by_namespace || filter.namespace.is_some();
    for o in &c.objects {
        let key = o.key_str();
        let p = parse_key(&key);
        if !filter.matches(&p) {
            continue;
        }
        objects += 1;
        bytes += u64::from(o.size);
        if let Some(ns) = p.namespace {
            namespaces.insert(ns.to_owned());
        }
        if p.resource == "namespaces" && p.namespace.is_none() {
            namespaces.insert(p.name.to_owned());
        }
        let resource = resource_name(&p);
        let ns = if per_namespace {
            p.namespace.map(str::to_owned)
        } else {
            None
        };
        let cluster_scoped = p.namespace.is_none();
        let g = groups
            .entry((resource.clone(), ns.clone()))
            .or_insert_with(|| Group {
                resource,
                namespace: ns,
                cluster_scoped,
                objects: 0,
                bytes: 0,
                names: opts.names.then(Vec::new),
            });
        g.objects += 1;
        g.bytes += u64::from(o.size);
        if let Some(names) = &mut g.names {
            names.push(
                match (opts.by_namespace || filter.namespace.is_some(), p.namespace) {
                    (false, Some(ns)) => format!("{ns}/{}", p.name),
                    _ => p.name.to_owned(),
                },
            );
        }
        let e = classes.entry(o.class).or_default();
        e.0 += 1;
        e.1 += u64::from(o.size);
        if opts.largest > 0 {
            largest.push((u64::from(o.size), o));
        }
    }
    for g in groups.values_mut() {
        if let Some(n) = &mut g.names {
            n.sort();
        }
    }
    largest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.key.cmp(&b.1.key)));
    largest.truncate(opts.largest);
    let mut values: Vec<ClassCount> = classes
        .into_iter()
        .map(|(id, (n, b))| ClassCount {
            class: c.classes[id as usize].clone(),
            objects: n,
            bytes: b,
        })
        .collect();
    values.sort_by(|a, b| b.objects.cmp(&a.objects).then(a.class.cmp(&b.class)));
    Summary {
        revision: c.revision,
        compact_revision: c.compact_revision,
        objects,
        bytes,
        namespaces: namespaces.len() as u64,
        per_namespace,
        groups: groups.into_values().collect(),
        largest: largest
            .into_iter()
            .map(|(size, o)| Large {
                key: o.key_str().into_owned(),
                bytes: size,
                value: c.class(o).describe(),
            })
            .collect(),
        values,
        db_size: c.pages_total * c.page_size,
        db_used: c.used_bytes(),
        db_free: c.free_bytes(),
    }
}

/// What changed for one resource in one namespace between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiffGroup {
    pub resource: String,
    pub namespace: Option<String>,
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
    /// Names (`--names`), sorted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added_names: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_names: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_names: Option<Vec<String>>,
}

/// Objects added, removed and changed (different value or mod revision) from `a` to `b`, per
/// resource and namespace, in key order.
pub fn diff(a: &Contents, b: &Contents, filter: &Filter, names: bool) -> Vec<DiffGroup> {
    let mut groups: std::collections::BTreeMap<(String, Option<String>), DiffGroup> =
        Default::default();
    let mut note = |o: &Object, what: u8| {
        let key = o.key_str();
        let p = parse_key(&key);
        if !filter.matches(&p) {
            return;
        }
        let resource = resource_name(&p);
        let ns = p.namespace.map(str::to_owned);
        let g = groups
            .entry((resource.clone(), ns.clone()))
            .or_insert_with(|| DiffGroup {
                resource,
                namespace: ns,
                ..Default::default()
            });
        let (count, list) = match what {
            b'+' => (&mut g.added, &mut g.added_names),
            b'-' => (&mut g.removed, &mut g.removed_names),
            _ => (&mut g.changed, &mut g.changed_names),
        };
        *count += 1;
        if names {
            list.get_or_insert_with(Vec::new).push(p.name.to_owned());
        }
    };
    // Both lists are sorted by key: one merge pass.
    let (mut i, mut j) = (0, 0);
    while i < a.objects.len() || j < b.objects.len() {
        let ord = match (a.objects.get(i), b.objects.get(j)) {
            (Some(x), Some(y)) => x.key.cmp(&y.key),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                note(&a.objects[i], b'-');
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                note(&b.objects[j], b'+');
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&a.objects[i], &b.objects[j]);
                if x.hash != y.hash || x.size != y.size || x.mod_revision != y.mod_revision {
                    note(y, b'~');
                }
                i += 1;
                j += 1;
            }
        }
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_split_like_the_api_server_lays_them_out() {
        // key, resource, group, namespace, name
        type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, &'a str);
        let cases: &[Case] = &[
            (
                "/registry/pods/default/web-1",
                "pods",
                None,
                Some("default"),
                "web-1",
            ),
            (
                "/registry/namespaces/team-a",
                "namespaces",
                None,
                None,
                "team-a",
            ),
            ("/registry/minions/cp-1", "nodes", None, None, "cp-1"),
            (
                "/registry/services/specs/default/kubernetes",
                "services",
                None,
                Some("default"),
                "kubernetes",
            ),
            (
                "/registry/services/endpoints/kube-system/kube-dns",
                "endpoints",
                None,
                Some("kube-system"),
                "kube-dns",
            ),
            (
                "/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com",
                "customresourcedefinitions",
                Some("apiextensions.k8s.io"),
                None,
                "widgets.example.com",
            ),
            (
                "/registry/example.com/widgets/team-a/w1",
                "widgets",
                Some("example.com"),
                Some("team-a"),
                "w1",
            ),
            (
                "/registry/masterleases/10.0.0.11",
                "masterleases",
                None,
                None,
                "10.0.0.11",
            ),
            (
                "/registry/ranges/serviceips",
                "ranges",
                None,
                None,
                "serviceips",
            ),
            (
                "/registry/clusterroles/system:admin",
                "clusterroles",
                None,
                None,
                "system:admin",
            ),
        ];
        for &(key, resource, group, ns, name) in cases {
            let p = parse_key(key);
            assert_eq!(
                (p.resource, p.group, p.namespace, p.name),
                (resource, group, ns, name),
                "{key}"
            );
        }
        let outside = parse_key("/talos/config");
        assert_eq!((outside.resource, outside.name), (OUTSIDE, "/talos/config"));
        assert_eq!(
            resource_name(&parse_key("/registry/example.com/widgets/ns/w")),
            "widgets.example.com"
        );
    }

    #[test]
    fn values_are_classified_not_printed() {
        use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
        use prost::Message as _;
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
            }),
            raw: Some(b"\x0a\x00".to_vec()),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut pb = b"k8s\0".to_vec();
        pb.extend(unknown.encode_to_vec());
        assert_eq!(
            ValueClass::of(&pb),
            ValueClass::Protobuf {
                api_version: "apps/v1".into(),
                kind: "Deployment".into()
            }
        );
        assert_eq!(
            ValueClass::of(br#" {"kind":"Widget","apiVersion":"example.com/v1","spec":{}}"#),
            ValueClass::Json {
                api_version: "example.com/v1".into(),
                kind: "Widget".into()
            }
        );
        assert_eq!(
            ValueClass::of(b"k8s:enc:aescbc:v1:key1:\x00\x01\x02"),
            ValueClass::Encrypted {
                provider: "aescbc".into(),
                key_name: "key1".into()
            }
        );
        assert_eq!(
            ValueClass::of(b"k8s:enc:kms:v2:vault:\x0a\x01"),
            ValueClass::Encrypted {
                provider: "kms".into(),
                key_name: "vault".into()
            }
        );
        assert_eq!(ValueClass::of(b"k8s\0\xff\xff\xff"), ValueClass::Other);
        assert_eq!(ValueClass::of(b"10.96.0.0/12"), ValueClass::Other);
        assert_eq!(ValueClass::of(b"{not json"), ValueClass::Other);
        // Reading stops once both are known: what follows is never parsed.
        assert_eq!(
            ValueClass::of(br#"{"kind":"Pod","apiVersion":"v1","spec":{"#),
            ValueClass::Json {
                api_version: "v1".into(),
                kind: "Pod".into()
            }
        );
        assert_eq!(
            ValueClass::of(br#"{"kind":"Pod","spec":{"#),
            ValueClass::Other
        );
        assert_eq!(
            ValueClass::of(br#"{"kind":"Pod","spec":{}}"#),
            ValueClass::Json {
                api_version: String::new(),
                kind: "Pod".into()
            }
        );
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/snapshots"))
            .join(name)
    }

    /// `fixtures/snapshots/README.md`: small has 100 keys, 10 overwritten, 5 deleted (95 live);
    /// hist was compacted. The live count must equal what the etcd that made it served.
    #[test]
    fn live_state_of_the_fixtures() {
        let (report, c) = read(&fixture("small.snapshot")).unwrap();
        assert!(report.valid);
        let c = c.unwrap();
        assert_eq!(c.objects.len(), 95);
        assert_eq!(c.revisions, 115);
        assert_eq!(c.revision, report.status.unwrap().revision);
        assert_eq!(c.compact_revision, None);
        assert!(c.objects.windows(2).all(|w| w[0].key < w[1].key));
        assert!(c.objects.iter().all(|o| o.key.starts_with(b"/registry/")));
        assert_eq!(c.undecodable, 0);
        assert_eq!(
            c.pages_total * c.page_size,
            report.status.unwrap().total_size
        );
        assert!(c.pages_used <= c.pages_total && c.pages_used > 2);

        let (_, hist) = read(&fixture("hist.snapshot")).unwrap();
        let hist = hist.unwrap();
        assert!(hist.compact_revision.is_some(), "hist was compacted");
        assert!(hist.revision >= hist.compact_revision.unwrap());
    }

    #[test]
    fn invalid_files_have_no_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.snapshot");
        let data = std::fs::read(fixture("small.snapshot")).unwrap();
        std::fs::write(&path, &data[..50_000]).unwrap();
        let (report, c) = read(&path).unwrap();
        assert!(!report.valid);
        assert!(c.is_none());
    }

    fn obj(key: &str, rev: i64, hash: u64) -> Object {
        Object {
            key: key.as_bytes().into(),
            mod_revision: rev,
            create_revision: rev,
            size: 10,
            hash,
            class: 0,
        }
    }

    fn contents(mut objects: Vec<Object>) -> Contents {
        objects.sort_by(|x, y| x.key.cmp(&y.key));
        Contents {
            objects,
            classes: vec![ValueClass::Other],
            revision: 0,
            compact_revision: None,
            revisions: 0,
            page_size: 4096,
            pages_used: 0,
            pages_total: 0,
            undecodable: 0,
        }
    }

    #[test]
    fn diff_counts_added_removed_and_changed_per_group() {
        let a = contents(vec![
            obj("/registry/configmaps/a/same", 5, 1),
            obj("/registry/configmaps/a/value", 5, 1),
            obj("/registry/configmaps/a/rev", 5, 1),
            obj("/registry/pods/a/gone", 5, 1),
        ]);
        let b = contents(vec![
            obj("/registry/configmaps/a/new", 9, 1),
            obj("/registry/configmaps/a/rev", 8, 1),
            obj("/registry/configmaps/a/same", 5, 1),
            obj("/registry/configmaps/a/value", 5, 2),
        ]);
        let d = diff(&a, &b, &Filter::default(), true);
        assert_eq!(d.len(), 2);
        assert_eq!(
            (
                d[0].resource.as_str(),
                d[0].added,
                d[0].removed,
                d[0].changed
            ),
            ("configmaps", 1, 0, 2)
        );
        assert_eq!(
            d[0].changed_names.as_deref(),
            Some(&["rev".to_owned(), "value".to_owned()][..])
        );
        assert_eq!(
            (
                d[1].resource.as_str(),
                d[1].added,
                d[1].removed,
                d[1].changed
            ),
            ("pods", 0, 1, 0)
        );
        let only_pods = Filter {
            resource: Some("pods".into()),
            ..Filter::default()
        };
        assert_eq!(diff(&a, &b, &only_pods, false).len(), 1);
    }
}
