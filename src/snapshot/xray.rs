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

use std::borrow::Cow;
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

/// The fields of an `mvccpb.KeyValue` that [`read`] keeps, borrowed from the page: decoding
/// every revision into a [`KeyValue`] would copy each value (two allocations a revision, the
/// largest single cost of `inspect`). Read with prost's wire-format primitives; the unit tests
/// hold it to [`KeyValue`]'s derived decoder.
#[derive(Debug, Default, PartialEq, Eq)]
struct KeyValueRef<'a> {
    key: &'a [u8],
    create_revision: i64,
    mod_revision: i64,
    value: &'a [u8],
}

impl<'a> KeyValueRef<'a> {
    /// `None` where [`KeyValue::decode`] fails (truncated, wrong wire type for a known field).
    fn decode(mut buf: &'a [u8]) -> Option<Self> {
        use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
        let mut kv = KeyValueRef::default();
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf).ok()?;
            match (tag, wire_type) {
                (1 | 5, WireType::LengthDelimited) => {
                    let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                    let (field, rest) = buf.split_at_checked(len)?;
                    buf = rest;
                    if tag == 1 {
                        kv.key = field;
                    } else {
                        kv.value = field;
                    }
                }
                (2 | 3, WireType::Varint) => {
                    // int64: two's complement in a 64-bit varint, as prost reads it.
                    let v = decode_varint(&mut buf).ok()? as i64;
                    if tag == 2 {
                        kv.create_revision = v;
                    } else {
                        kv.mod_revision = v;
                    }
                }
                (1..=6, _) if !matches!((tag, wire_type), (4 | 6, WireType::Varint)) => {
                    return None;
                }
                _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default()).ok()?,
            }
        }
        Some(kv)
    }
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

/// `runtime.Unknown` up to its TypeMeta (field 1): prost skips `raw` (field 2, the object
/// itself) instead of copying it, as decoding the whole envelope would.
#[derive(Clone, PartialEq, prost::Message)]
struct UnknownTypeMeta {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<k8s_pb::apimachinery::pkg::runtime::TypeMeta>,
}

/// A [`ValueClass`] borrowing from the value where it can, so that [`read`] finds the class of
/// each of thousands of values without allocating.
#[derive(Debug, PartialEq, Eq, Hash)]
enum ClassRef<'a> {
    Protobuf {
        api_version: Cow<'a, str>,
        kind: Cow<'a, str>,
    },
    Json {
        api_version: Cow<'a, str>,
        kind: Cow<'a, str>,
    },
    Encrypted {
        provider: Cow<'a, str>,
        key_name: Cow<'a, str>,
    },
    Other,
}

impl<'a> ClassRef<'a> {
    fn of(value: &'a [u8]) -> Self {
        if let Some(rest) = value.strip_prefix(b"k8s\0") {
            use prost::Message as _;
            return match UnknownTypeMeta::decode(rest) {
                Ok(u) => {
                    let tm = u.type_meta.unwrap_or_default();
                    ClassRef::Protobuf {
                        api_version: tm.api_version.unwrap_or_default().into(),
                        kind: tm.kind.unwrap_or_default().into(),
                    }
                }
                Err(_) => ClassRef::Other,
            };
        }
        if let Some(rest) = value.strip_prefix(b"k8s:enc:") {
            // `<provider>:<version>:<key name>:`; KMS v2 and the AES/secretbox providers alike.
            let mut parts = rest.splitn(4, |&b| b == b':');
            let provider = parts.next().unwrap_or_default();
            let _version = parts.next();
            let key_name = parts.next().unwrap_or_default();
            return ClassRef::Encrypted {
                provider: String::from_utf8_lossy(provider),
                key_name: String::from_utf8_lossy(key_name),
            };
        }
        if value.trim_ascii_start().starts_with(b"{")
            && let Some((api_version, kind)) = json_type_meta(value)
        {
            return ClassRef::Json { api_version, kind };
        }
        ClassRef::Other
    }

    fn into_owned(self) -> ValueClass {
        match self {
            ClassRef::Protobuf { api_version, kind } => ValueClass::Protobuf {
                api_version: api_version.into_owned(),
                kind: kind.into_owned(),
            },
            ClassRef::Json { api_version, kind } => ValueClass::Json {
                api_version: api_version.into_owned(),
                kind: kind.into_owned(),
            },
            ClassRef::Encrypted { provider, key_name } => ValueClass::Encrypted {
                provider: provider.into_owned(),
                key_name: key_name.into_owned(),
            },
            ClassRef::Other => ValueClass::Other,
        }
    }
}

impl ValueClass {
    /// Classifies one value.
    pub fn of(value: &[u8]) -> Self {
        ClassRef::of(value).into_owned()
    }

    fn as_ref(&self) -> ClassRef<'_> {
        fn b(s: &str) -> Cow<'_, str> {
            Cow::Borrowed(s)
        }
        match self {
            ValueClass::Protobuf { api_version, kind } => ClassRef::Protobuf {
                api_version: b(api_version),
                kind: b(kind),
            },
            ValueClass::Json { api_version, kind } => ClassRef::Json {
                api_version: b(api_version),
                kind: b(kind),
            },
            ValueClass::Encrypted { provider, key_name } => ClassRef::Encrypted {
                provider: b(provider),
                key_name: b(key_name),
            },
            ValueClass::Other => ClassRef::Other,
        }
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
fn json_type_meta(value: &[u8]) -> Option<(Cow<'_, str>, Cow<'_, str>)> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
    type Found<'de> = (Option<Cow<'de, str>>, Option<Cow<'de, str>>);
    struct Find<'a, 'de>(&'a mut Found<'de>);
    impl<'de> Visitor<'de> for Find<'_, 'de> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(k) = map.next_key::<Str<'de>>()? {
                match k.0.as_ref() {
                    "apiVersion" => self.0.0 = Some(map.next_value::<Str<'de>>()?.0),
                    "kind" => self.0.1 = Some(map.next_value::<Str<'de>>()?.0),
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

/// A JSON string borrowed from the input unless it has escapes (serde's own `Cow<str>` always
/// copies).
struct Str<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Str<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
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
        // `from_utf8` first: its fast path is several times quicker than the lossy chunking,
        // and every key of a real snapshot is UTF-8.
        match std::str::from_utf8(&self.key) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(&self.key),
        }
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

/// [`Object::class`] of a slot whose key was deleted (on [`Collector::free`]).
const DEAD: u32 = u32::MAX;

/// Builds the live state from bucket `key`, one revision at a time.
///
/// The objects live in one vector, found through a table of 4-byte indices: a map from key to
/// object moved 48-byte slots on every resize and touched fresh pages all over, which made
/// `inspect` half again as slow as `verify` and twice its memory. A deleted key's slot is
/// reused by the next new key, so memory follows the live keys, not the history.
#[derive(Default)]
struct Collector {
    objects: Vec<Object>,
    index: hashbrown::HashTable<u32>,
    /// foldhash: SipHash's DoS resistance buys nothing for keys read from a local file.
    hasher: foldhash::fast::RandomState,
    free: Vec<u32>,
    classes: Vec<ValueClass>,
    /// Index into `classes`, looked up with a borrowed [`ClassRef`].
    class_ids: hashbrown::HashTable<u32>,
    last_revision: i64,
    compact_revision: Option<i64>,
    revisions: u64,
    undecodable: u64,
    pages: (u64, u64, u64),
}

impl Collector {
    fn class_id(&mut self, c: ClassRef<'_>) -> u32 {
        use std::hash::BuildHasher as _;
        let Collector {
            classes,
            class_ids,
            hasher,
            ..
        } = self;
        let h = hasher.hash_one(&c);
        if let Some(&id) = class_ids.find(h, |&i| classes[i as usize].as_ref() == c) {
            return id;
        }
        let id = classes.len() as u32;
        classes.push(c.into_owned());
        class_ids.insert_unique(h, id, |&i| hasher.hash_one(classes[i as usize].as_ref()));
        id
    }

    /// A put of `key`: replaces the key's object, or adds it. `object.key` is left empty by
    /// the caller, so an update allocates nothing.
    fn put(&mut self, key: &[u8], mut object: Object) {
        use std::hash::BuildHasher as _;
        let Collector {
            objects,
            index,
            hasher,
            free,
            ..
        } = self;
        let h = hasher.hash_one(key);
        if let Some(&i) = index.find(h, |&i| &*objects[i as usize].key == key) {
            let slot = &mut objects[i as usize];
            object.key = std::mem::take(&mut slot.key);
            *slot = object;
            return;
        }
        object.key = key.into();
        let i = match free.pop() {
            Some(i) => {
                objects[i as usize] = object;
                i
            }
            None => {
                objects.push(object);
                (objects.len() - 1) as u32
            }
        };
        index.insert_unique(h, i, |&i| hasher.hash_one(&*objects[i as usize].key));
    }

    /// A tombstone: the key is no longer live.
    fn delete(&mut self, key: &[u8]) {
        use std::hash::BuildHasher as _;
        let h = self.hasher.hash_one(key);
        let objects = &mut self.objects;
        if let Ok(entry) = self
            .index
            .find_entry(h, |&i| &*objects[i as usize].key == key)
        {
            let (i, _) = entry.remove();
            let o = &mut objects[i as usize];
            o.key = Box::default();
            o.class = DEAD;
            self.free.push(i);
        }
    }

    fn finish(self) -> Contents {
        drop(self.index);
        let mut objects = self.objects;
        if !self.free.is_empty() {
            objects.retain(|o| o.class != DEAD);
        }
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
        match bucket {
            b"key" => {
                self.revisions += 1;
                if let Some(r) = revision_main(key) {
                    self.last_revision = r;
                }
                let Some(kv) = KeyValueRef::decode(value) else {
                    self.undecodable += 1;
                    return;
                };
                if key.len() == 18 && key[17] == b't' {
                    self.delete(kv.key);
                    return;
                }
                let class = self.class_id(ClassRef::of(kv.value));
                self.put(
                    kv.key,
                    Object {
                        key: Box::default(),
                        mod_revision: kv.mod_revision,
                        create_revision: kv.create_revision,
                        size: u32::try_from(kv.value.len()).unwrap_or(u32::MAX),
                        hash: xxhash_rust::xxh3::xxh3_64(kv.value),
                        class,
                    },
                );
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
    tee: Option<super::follow::Tee>,
) -> io::Result<Option<(Report, Option<Contents>)>> {
    use super::follow::Followed;
    Ok(
        match super::follow::follow(path, end, Collector::default(), tee)? {
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
    // Rows in first-seen order, found by (resource, namespace). Objects come sorted by key, so
    // a row's objects are mostly consecutive: the last row is checked first, without building
    // its name, which keeps the per-object cost to parsing the key.
    let mut groups: Vec<Group> = Vec::new();
    let mut row_of: HashMap<(String, Option<String>), usize> = HashMap::new();
    let mut last_row: Option<usize> = None;
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
        for ns in [
            p.namespace,
            (p.resource == "namespaces" && p.namespace.is_none()).then_some(p.name),
        ]
        .into_iter()
        .flatten()
        {
            if !namespaces.contains(ns) {
                namespaces.insert(ns.to_owned());
            }
        }
        let ns = if per_namespace { p.namespace } else { None };
        let row = match last_row {
            Some(i) if is_row(&groups[i], &p, ns) => i,
            _ => {
                let id = (resource_name(&p), ns.map(str::to_owned));
                *row_of.entry(id).or_insert_with_key(|(resource, ns)| {
                    groups.push(Group {
                        resource: resource.clone(),
                        namespace: ns.clone(),
                        cluster_scoped: p.namespace.is_none(),
                        objects: 0,
                        bytes: 0,
                        names: opts.names.then(Vec::new),
                    });
                    groups.len() - 1
                })
            }
        };
        last_row = Some(row);
        let g = &mut groups[row];
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
    groups.sort_unstable_by(|a, b| (&a.resource, &a.namespace).cmp(&(&b.resource, &b.namespace)));
    for g in &mut groups {
        if let Some(n) = &mut g.names {
            n.sort_unstable();
        }
    }
    // The top N only: selecting them is linear, sorting every object was not.
    let by_size =
        |a: &(u64, &Object), b: &(u64, &Object)| b.0.cmp(&a.0).then(a.1.key.cmp(&b.1.key));
    if largest.len() > opts.largest && opts.largest > 0 {
        largest.select_nth_unstable_by(opts.largest - 1, by_size);
        largest.truncate(opts.largest);
    }
    largest.sort_unstable_by(by_size);
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
        groups,
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

/// Whether `g` is the row of `p` (namespace `ns`), without building the row's name.
fn is_row(g: &Group, p: &KeyPath<'_>, ns: Option<&str>) -> bool {
    let resource_matches = match p.group {
        None => g.resource == p.resource,
        Some(group) => {
            g.resource
                .strip_prefix(p.resource)
                .and_then(|r| r.strip_prefix('.'))
                == Some(group)
        }
    };
    resource_matches && g.namespace.as_deref() == ns
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

    #[test]
    fn key_value_view_agrees_with_the_derived_decoder() {
        use prost::Message as _;
        let kvs = [
            KeyValue {
                key: b"/registry/pods/default/web-1".to_vec(),
                create_revision: 7,
                mod_revision: 1 << 40,
                version: 3,
                value: vec![0xab; 3000],
                lease: 0x1234,
            },
            KeyValue {
                key: b"k".to_vec(),
                create_revision: -1,
                mod_revision: i64::MIN,
                ..Default::default()
            },
            KeyValue::default(),
        ];
        for kv in &kvs {
            let bytes = kv.encode_to_vec();
            let view = KeyValueRef::decode(&bytes).unwrap();
            assert_eq!(
                (
                    view.key,
                    view.create_revision,
                    view.mod_revision,
                    view.value
                ),
                (
                    &kv.key[..],
                    kv.create_revision,
                    kv.mod_revision,
                    &kv.value[..]
                )
            );
            // Every cut of the encoding: the view fails exactly where prost fails.
            for cut in 0..bytes.len() {
                let ours = KeyValueRef::decode(&bytes[..cut]);
                let theirs = KeyValue::decode(&bytes[..cut]);
                assert_eq!(ours.is_some(), theirs.is_ok(), "cut at {cut} of {bytes:?}");
                if let (Some(v), Ok(t)) = (ours, theirs) {
                    assert_eq!((v.key, v.value), (&t.key[..], &t.value[..]));
                }
            }
        }
        // A known field with the wrong wire type is an error for both; an unknown one is skipped.
        for bad in [&b"\x0d\x00\x00\x00\x00"[..], b"\x10\x02\x00", b"\x2a\x05ab"] {
            assert!(KeyValue::decode(bad).is_err(), "{bad:?}");
            assert!(KeyValueRef::decode(bad).is_none(), "{bad:?}");
        }
        let unknown_field = b"\x0a\x01k\x38\x05";
        assert!(KeyValue::decode(&unknown_field[..]).is_ok());
        assert_eq!(KeyValueRef::decode(unknown_field).unwrap().key, b"k");
    }

    /// Puts, updates, deletes and re-creations in revision order leave exactly the live keys,
    /// with the newest revision of each, whichever slots were reused.
    #[test]
    fn collector_keeps_the_newest_revision_of_live_keys() {
        use prost::Message as _;
        let mut c = Collector::default();
        let mut rev = 0i64;
        let mut put = |c: &mut Collector, key: &str, value: &[u8], tombstone: bool| {
            rev += 1;
            let mut rk = rev.to_be_bytes().to_vec();
            rk.push(b'_');
            rk.extend(0u64.to_be_bytes());
            if tombstone {
                rk.push(b't');
            }
            let kv = KeyValue {
                key: key.as_bytes().to_vec(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                value: value.to_vec(),
                lease: 0,
            };
            c.entry(b"key", &rk, &kv.encode_to_vec());
        };
        put(&mut c, "/registry/pods/a/p1", b"one", false);
        put(&mut c, "/registry/pods/a/p2", b"two", false);
        put(&mut c, "/registry/pods/a/p1", b"one again", false);
        put(&mut c, "/registry/pods/a/p2", b"", true);
        put(&mut c, "/registry/pods/a/p3", b"three", false); // reuses p2's slot
        put(&mut c, "/registry/pods/a/p2", b"two again", false);
        put(&mut c, "/registry/pods/a/p3", b"", true);
        put(&mut c, "/registry/pods/a/gone", b"", true); // a tombstone of an unknown key
        let contents = c.finish();
        let live: Vec<(String, i64, u32)> = contents
            .objects
            .iter()
            .map(|o| (o.key_str().into_owned(), o.mod_revision, o.size))
            .collect();
        assert_eq!(
            live,
            [
                ("/registry/pods/a/p1".to_owned(), 3, 9),
                ("/registry/pods/a/p2".to_owned(), 6, 9),
            ]
        );
        assert_eq!(contents.revisions, 8);
        assert_eq!(contents.revision, 8);
    }

    /// Rows are per resource whether or not its objects are consecutive in key order
    /// (`minions` and `nodes` are both nodes, with namespaces between them).
    #[test]
    fn summary_rows_gather_objects_that_are_apart() {
        let c = contents(vec![
            obj("/registry/minions/n1", 1, 0),
            obj("/registry/namespaces/a", 2, 0),
            obj("/registry/nodes/n2", 3, 0),
            obj("/registry/example.com/widgets/a/w", 4, 0),
            obj("/registry/deployments/a/old", 5, 0),
        ]);
        let s = summarize(&c, &Filter::default(), SummaryOptions::default());
        let rows: Vec<(&str, u64)> = s
            .groups
            .iter()
            .map(|g| (g.resource.as_str(), g.objects))
            .collect();
        assert_eq!(
            rows,
            [
                ("deployments", 1),
                ("namespaces", 1),
                ("nodes", 2),
                ("widgets.example.com", 1)
            ]
        );
        assert_eq!((s.objects, s.namespaces), (5, 1));
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
