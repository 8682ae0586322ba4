//! `inspect`, `diff` and `find` against snapshots of a REAL etcd holding Kubernetes-shaped data:
//! protobuf objects encoded with k8s-pb (the `k8s\0` envelope around `runtime.Unknown`, as the
//! API server writes them), JSON custom resources, `k8s:enc:aescbc:v1:key1:` secrets, leases,
//! overwrites, deletes and a compaction. Every expected number comes from etcd itself
//! (`etcdctl get --prefix --count-only`, `etcdctl get --prefix -w json`), never from our reader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_pb::api::apps::v1::Deployment;
use k8s_pb::api::coordination::v1::Lease;
use k8s_pb::api::core::v1::{ConfigMap, Endpoints, Event, Namespace, Node, Service};
use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use prost::Message;
use serde_json::Value;
use talos_dr::snapshot::xray::{OUTSIDE, parse_key, resource_name};

use crate::common::{BIN, Env, plant_snapshot, stdout_json};
use crate::etcd_maker::LiveEtcd;

/// The API server's storage encoding: `k8s\0` + runtime.Unknown{typeMeta, raw = the object}.
fn pb<M: Message>(api_version: &str, kind: &str, object: &M) -> Vec<u8> {
    let u = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(object.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut v = b"k8s\0".to_vec();
    v.extend(u.encode_to_vec());
    v
}

fn meta(ns: Option<&str>, name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        uid: Some(format!("uid-{name}")),
        resource_version: Some("1".into()),
        ..Default::default()
    })
}

fn widget(ns: &str, name: &str, size: u32) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": { "name": name, "namespace": ns, "uid": format!("uid-{name}") },
        "spec": { "size": size },
    }))
    .unwrap()
}

fn secret(n: u8) -> Vec<u8> {
    let mut v = b"k8s:enc:aescbc:v1:key1:".to_vec();
    v.extend((0..48u8).map(|i| i.wrapping_mul(37) ^ n));
    v
}

/// Two snapshots of one etcd, A then B, with etcd's own view at each moment.
struct Pair {
    a: PathBuf,
    b: PathBuf,
    /// etcd's counts per prefix (as listed in `prefixes`) at A and at B.
    counts_a: BTreeMap<String, u64>,
    counts_b: BTreeMap<String, u64>,
    /// Every live key with its mod revision, at A and at B.
    keys_a: BTreeMap<String, i64>,
    keys_b: BTreeMap<String, i64>,
    revision_b: i64,
    compacted_at: i64,
    _dir: tempfile::TempDir,
}

/// Prefixes (with trailing `/`) of every group the test writes: `(prefix, resource, namespace)`.
const PREFIXES: &[(&str, &str, Option<&str>)] = &[
    ("/registry/namespaces/", "namespaces", None),
    ("/registry/minions/", "nodes", None),
    (
        "/registry/deployments/team-a/",
        "deployments",
        Some("team-a"),
    ),
    (
        "/registry/deployments/team-b/",
        "deployments",
        Some("team-b"),
    ),
    (
        "/registry/deployments/team-c/",
        "deployments",
        Some("team-c"),
    ),
    ("/registry/configmaps/team-a/", "configmaps", Some("team-a")),
    (
        "/registry/configmaps/kube-system/",
        "configmaps",
        Some("kube-system"),
    ),
    (
        "/registry/services/specs/team-a/",
        "services",
        Some("team-a"),
    ),
    (
        "/registry/services/specs/default/",
        "services",
        Some("default"),
    ),
    (
        "/registry/services/endpoints/team-a/",
        "endpoints",
        Some("team-a"),
    ),
    ("/registry/secrets/team-a/", "secrets", Some("team-a")),
    ("/registry/secrets/team-b/", "secrets", Some("team-b")),
    (
        "/registry/apiextensions.k8s.io/customresourcedefinitions/",
        "customresourcedefinitions.apiextensions.k8s.io",
        None,
    ),
    (
        "/registry/example.com/widgets/team-a/",
        "widgets.example.com",
        Some("team-a"),
    ),
    (
        "/registry/leases/kube-node-lease/",
        "leases",
        Some("kube-node-lease"),
    ),
    ("/registry/events/team-a/", "events", Some("team-a")),
    ("/registry/masterleases/", "masterleases", None),
    ("/registry/ranges/", "ranges", None),
];

fn pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| make_pair().unwrap_or_else(|e| panic!("{e:#}")))
}

fn make_pair() -> anyhow::Result<Pair> {
    let dir = tempfile::tempdir()?;
    let etcd = LiveEtcd::start()?;
    let lease = etcd.grant_lease(3600)?;
    for ns in ["kube-system", "default", "team-a", "team-b"] {
        let v = pb(
            "v1",
            "Namespace",
            &Namespace {
                metadata: meta(None, ns),
                ..Default::default()
            },
        );
        etcd.put(&format!("/registry/namespaces/{ns}"), &v, None)?;
    }
    for n in ["cp-1", "cp-2"] {
        let v = pb(
            "v1",
            "Node",
            &Node {
                metadata: meta(None, n),
                ..Default::default()
            },
        );
        etcd.put(&format!("/registry/minions/{n}"), &v, None)?;
    }
    for (ns, name) in [("team-a", "web"), ("team-a", "api"), ("team-b", "db")] {
        let v = pb(
            "apps/v1",
            "Deployment",
            &Deployment {
                metadata: meta(Some(ns), name),
                ..Default::default()
            },
        );
        etcd.put(&format!("/registry/deployments/{ns}/{name}"), &v, None)?;
    }
    for i in 0..5 {
        let name = format!("cfg-{i}");
        let cm = ConfigMap {
            metadata: meta(Some("team-a"), &name),
            data: [("k".to_owned(), "v".repeat(100 * (i + 1)))].into(),
            ..Default::default()
        };
        etcd.put(
            &format!("/registry/configmaps/team-a/{name}"),
            &pb("v1", "ConfigMap", &cm),
            None,
        )?;
    }
    let coredns = ConfigMap {
        metadata: meta(Some("kube-system"), "coredns"),
        ..Default::default()
    };
    etcd.put(
        "/registry/configmaps/kube-system/coredns",
        &pb("v1", "ConfigMap", &coredns),
        None,
    )?;
    for (ns, name) in [("team-a", "web"), ("default", "kubernetes")] {
        let v = pb(
            "v1",
            "Service",
            &Service {
                metadata: meta(Some(ns), name),
                ..Default::default()
            },
        );
        etcd.put(&format!("/registry/services/specs/{ns}/{name}"), &v, None)?;
    }
    let ep = Endpoints {
        metadata: meta(Some("team-a"), "web"),
        ..Default::default()
    };
    etcd.put(
        "/registry/services/endpoints/team-a/web",
        &pb("v1", "Endpoints", &ep),
        None,
    )?;
    for (ns, name, n) in [
        ("team-a", "s0", 0),
        ("team-a", "s1", 1),
        ("team-a", "s2", 2),
        ("team-b", "s0", 3),
    ] {
        etcd.put(&format!("/registry/secrets/{ns}/{name}"), &secret(n), None)?;
    }
    let crd = serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.example.com" },
        "spec": { "group": "example.com", "names": { "plural": "widgets", "kind": "Widget" }, "scope": "Namespaced" },
    });
    etcd.put(
        "/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com",
        &serde_json::to_vec(&crd)?,
        None,
    )?;
    for (name, size) in [("w1", 1), ("w2", 2)] {
        etcd.put(
            &format!("/registry/example.com/widgets/team-a/{name}"),
            &widget("team-a", name, size),
            None,
        )?;
    }
    let node_lease = Lease {
        metadata: meta(Some("kube-node-lease"), "cp-1"),
        ..Default::default()
    };
    etcd.put(
        "/registry/leases/kube-node-lease/cp-1",
        &pb("coordination.k8s.io/v1", "Lease", &node_lease),
        None,
    )?;
    let ev = Event {
        metadata: meta(Some("team-a"), "web.17a"),
        ..Default::default()
    };
    etcd.put(
        "/registry/events/team-a/web.17a",
        &pb("v1", "Event", &ev),
        Some(lease),
    )?;
    etcd.put(
        "/registry/masterleases/10.0.0.11",
        b"\x0a\x02ok",
        Some(lease),
    )?;
    etcd.put(
        "/registry/ranges/serviceips",
        b"10.96.0.0/12 range bitmap",
        None,
    )?;
    etcd.put("/talos/outside", b"not kubernetes", None)?;
    // History before A: overwrites and a delete (a tombstone in the snapshot).
    for round in 0..2 {
        let cm = ConfigMap {
            metadata: meta(Some("team-a"), "cfg-0"),
            data: [("round".to_owned(), round.to_string())].into(),
            ..Default::default()
        };
        etcd.put(
            "/registry/configmaps/team-a/cfg-0",
            &pb("v1", "ConfigMap", &cm),
            None,
        )?;
    }
    etcd.delete("/registry/configmaps/team-a/cfg-4")?;

    let a = dir.path().join("a.snapshot");
    etcd.save(&a)?;
    let counts = |etcd: &LiveEtcd| -> anyhow::Result<BTreeMap<String, u64>> {
        PREFIXES
            .iter()
            .map(|(p, _, _)| Ok((p.to_string(), etcd.count(p)?)))
            .collect()
    };
    let counts_a = counts(&etcd)?;
    let keys_a = etcd.mod_revisions("/")?;

    // Between A and B: team-b goes away, team-c arrives, web is rolled out, a widget changes
    // size, then history is compacted.
    for k in [
        "/registry/deployments/team-b/db",
        "/registry/secrets/team-b/s0",
        "/registry/namespaces/team-b",
    ] {
        etcd.delete(k)?;
    }
    let team_c = pb(
        "v1",
        "Namespace",
        &Namespace {
            metadata: meta(None, "team-c"),
            ..Default::default()
        },
    );
    etcd.put("/registry/namespaces/team-c", &team_c, None)?;
    let shop = pb(
        "apps/v1",
        "Deployment",
        &Deployment {
            metadata: meta(Some("team-c"), "shop"),
            ..Default::default()
        },
    );
    etcd.put("/registry/deployments/team-c/shop", &shop, None)?;
    let mut web = Deployment {
        metadata: meta(Some("team-a"), "web"),
        ..Default::default()
    };
    web.metadata.as_mut().unwrap().generation = Some(2);
    etcd.put(
        "/registry/deployments/team-a/web",
        &pb("apps/v1", "Deployment", &web),
        None,
    )?;
    etcd.put(
        "/registry/example.com/widgets/team-a/w2",
        &widget("team-a", "w2", 3),
        None,
    )?;
    let compacted_at = etcd.compact()?;
    let b = dir.path().join("b.snapshot");
    etcd.save(&b)?;
    let counts_b = counts(&etcd)?;
    let keys_b = etcd.mod_revisions("/")?;
    let head: Value =
        serde_json::from_str(&etcd.etcdctl(&["get", "/talos/outside", "-w", "json"])?)?;
    Ok(Pair {
        a,
        b,
        counts_a,
        counts_b,
        keys_a,
        keys_b,
        revision_b: head["header"]["revision"].as_i64().unwrap_or(0),
        compacted_at,
        _dir: dir,
    })
}

fn talos_dr(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("TALOS_DR_CONFIG_DIR", "/nonexistent-talos-dr-profile")
        .output()
        .unwrap()
}

fn json_of(args: &[&str]) -> Value {
    let out = talos_dr(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_json(&out)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `inspect --by-namespace` counts equal etcd's count for each prefix, at A and at B.
#[test]
fn inspect_counts_equal_what_etcd_counts_per_prefix() {
    let p = pair();
    for (path, counts, keys) in [
        (&p.a, &p.counts_a, &p.keys_a),
        (&p.b, &p.counts_b, &p.keys_b),
    ] {
        let doc = json_of(&["-o", "json", "inspect", s(path), "--by-namespace"]);
        let mut got: BTreeMap<(String, Option<String>), u64> = BTreeMap::new();
        for g in doc["resources"].as_array().unwrap() {
            got.insert(
                (
                    g["resource"].as_str().unwrap().to_owned(),
                    g["namespace"].as_str().map(str::to_owned),
                ),
                g["objects"].as_u64().unwrap(),
            );
        }
        for (prefix, resource, ns) in PREFIXES {
            let want = counts[*prefix];
            let have = got
                .remove(&(resource.to_string(), ns.map(str::to_owned)))
                .unwrap_or(0);
            assert_eq!(
                have,
                want,
                "{}: {prefix} (etcdctl get --prefix --count-only says {want})",
                path.display()
            );
        }
        // What is left is the key outside /registry, which no prefix above covers.
        assert_eq!(
            got,
            BTreeMap::from([((OUTSIDE.to_owned(), None), 1)]),
            "{}",
            path.display()
        );
        assert_eq!(
            doc["objects"].as_u64().unwrap(),
            keys.len() as u64,
            "all live keys"
        );
        assert!(
            doc["database"]["used"].as_u64().unwrap() <= doc["database"]["size"].as_u64().unwrap()
        );
    }
}

#[test]
fn inspect_classifies_values_and_reports_revisions() {
    let p = pair();
    let doc = json_of(&["-o", "json", "inspect", s(&p.b), "--largest", "3"]);
    let values = doc["values"].as_array().unwrap();
    let count = |pred: &dyn Fn(&Value) -> bool| -> u64 {
        values
            .iter()
            .filter(|v| pred(v))
            .map(|v| v["objects"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        count(&|v| v["encoding"] == "protobuf"
            && v["api_version"] == "apps/v1"
            && v["kind"] == "Deployment"),
        p.counts_b["/registry/deployments/team-a/"] + p.counts_b["/registry/deployments/team-c/"]
    );
    assert_eq!(
        count(&|v| v["encoding"] == "encrypted"
            && v["provider"] == "aescbc"
            && v["key_name"] == "key1"),
        p.counts_b["/registry/secrets/team-a/"] + p.counts_b["/registry/secrets/team-b/"]
    );
    assert_eq!(
        count(&|v| v["encoding"] == "json" && v["kind"] == "Widget"),
        p.counts_b["/registry/example.com/widgets/team-a/"]
    );
    assert_eq!(doc["revision"].as_i64().unwrap(), p.revision_b);
    assert_eq!(doc["compact_revision"].as_i64().unwrap(), p.compacted_at);
    let largest = doc["largest"].as_array().unwrap();
    assert_eq!(largest.len(), 3);
    // cfg-3 has the biggest data (400 bytes); cfg-4 was deleted.
    assert_eq!(largest[0]["key"], "/registry/configmaps/team-a/cfg-3");
    assert!(
        doc["values"].to_string().len() < 4000,
        "values are classified, not printed"
    );

    // Filters and names.
    let doc = json_of(&[
        "-o",
        "json",
        "inspect",
        s(&p.b),
        "--namespace",
        "team-a",
        "--resource",
        "configmaps",
        "--names",
    ]);
    let names: Vec<&str> = doc["resources"][0]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(names, ["cfg-0", "cfg-1", "cfg-2", "cfg-3"]);
    assert_eq!(
        doc["objects"].as_u64().unwrap(),
        p.counts_b["/registry/configmaps/team-a/"]
    );

    let text = talos_dr(&["inspect", s(&p.b), "--by-namespace"]);
    let text = String::from_utf8(text.stdout).unwrap();
    for words in [
        "RESOURCE",
        "NAMESPACE",
        "OBJECTS",
        "BYTES",
        "widgets.example.com",
        "apps/v1 Deployment (protobuf)",
        "aescbc key1 (encrypted)",
        "free pages",
        &format!("compacted at {}", p.compacted_at),
    ] {
        assert!(text.contains(words), "{words:?} in\n{text}");
    }
}

/// `diff A B` equals the set difference of the keys etcd served at A and at B; changed is a key
/// in both whose mod revision etcd reports differently.
#[test]
fn diff_equals_the_set_difference_through_etcd() {
    let p = pair();
    let doc = json_of(&["-o", "json", "diff", s(&p.a), s(&p.b), "--names"]);
    let mut got: [BTreeSet<String>; 3] = Default::default();
    for g in doc["groups"].as_array().unwrap() {
        for (i, field) in ["added_names", "removed_names", "changed_names"]
            .iter()
            .enumerate()
        {
            for n in g[field].as_array().into_iter().flatten() {
                got[i].insert(format!(
                    "{}|{}|{}",
                    g["resource"].as_str().unwrap(),
                    g["namespace"].as_str().unwrap_or("-"),
                    n.as_str().unwrap()
                ));
            }
        }
    }
    let id = |k: &str| {
        let p = parse_key(k);
        format!(
            "{}|{}|{}",
            resource_name(&p),
            p.namespace.unwrap_or("-"),
            p.name
        )
    };
    let added: BTreeSet<String> = p
        .keys_b
        .keys()
        .filter(|k| !p.keys_a.contains_key(*k))
        .map(|k| id(k))
        .collect();
    let removed: BTreeSet<String> = p
        .keys_a
        .keys()
        .filter(|k| !p.keys_b.contains_key(*k))
        .map(|k| id(k))
        .collect();
    let changed: BTreeSet<String> = p
        .keys_a
        .iter()
        .filter(|(k, rev)| p.keys_b.get(*k).is_some_and(|r| r != *rev))
        .map(|(k, _)| id(k))
        .collect();
    assert_eq!(got[0], added);
    assert_eq!(got[1], removed);
    assert_eq!(got[2], changed);
    assert_eq!(
        (added.len(), removed.len(), changed.len()),
        (2, 3, 2),
        "the test's own changes"
    );
    assert_eq!(doc["added"].as_u64().unwrap(), 2);

    // Filters: only team-b; and the reverse direction swaps added and removed.
    let doc = json_of(&[
        "-o",
        "json",
        "diff",
        s(&p.a),
        s(&p.b),
        "--namespace",
        "team-b",
    ]);
    assert_eq!(
        (doc["added"].as_u64(), doc["removed"].as_u64()),
        (Some(0), Some(2))
    );
    let back = json_of(&["-o", "json", "diff", s(&p.b), s(&p.a)]);
    assert_eq!(
        (back["added"].as_u64(), back["removed"].as_u64()),
        (Some(3), Some(2))
    );
    let same = json_of(&["-o", "json", "diff", s(&p.a), s(&p.a)]);
    assert_eq!(same["groups"], serde_json::json!([]));
}

/// Packed copies read like the plain file: zstd, and age with --identity.
#[test]
fn packed_snapshots_inspect_like_plain_ones() {
    let p = pair();
    let dir = tempfile::tempdir().unwrap();
    let zst = dir.path().join("b.snapshot.zst");
    crate::pack::run(
        Command::new(crate::pack::tool("zstd"))
            .arg("-q")
            .arg(&p.b)
            .arg("-o")
            .arg(&zst),
    );
    let (key, recipient) = crate::pack::keygen(dir.path(), "key.txt");
    let age = dir.path().join("b.snapshot.zst.age");
    crate::pack::run(
        Command::new(crate::pack::tool("age"))
            .args(["-r", &recipient, "-o"])
            .arg(&age)
            .arg(&zst),
    );
    let plain = json_of(&["-o", "json", "inspect", s(&p.b)]);
    let z = json_of(&["-o", "json", "inspect", s(&zst)]);
    let a = json_of(&["-o", "json", "inspect", s(&age), "--identity", s(&key)]);
    assert_eq!(z["layers"], serde_json::json!(["zstd"]));
    assert_eq!(a["layers"], serde_json::json!(["age", "zstd"]));
    for doc in [&z, &a] {
        assert_eq!(doc["resources"], plain["resources"]);
        assert_eq!(doc["revision"], plain["revision"]);
    }
    // Without the identity: a usage error that says what to pass.
    let out = talos_dr(&["inspect", s(&age)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--identity"));
}

/// Every corrupted file of the verify tests makes inspect and diff exit 3 with verify's words.
#[test]
fn corrupted_snapshots_exit_3_with_the_verify_message() {
    use crate::verify::{Damage, damage};
    let p = pair();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (Damage::TruncateTo(100_000), "truncated"),
        (Damage::TruncateTo(5000), "truncated"),
        (Damage::TruncateTo(60_000), "truncated"),
        (Damage::TruncateBy(4096), "truncated"),
        (Damage::TruncateBy(1), "truncated or has"),
        (Damage::FlipValueBit, "sha256 trailer does not match"),
        (Damage::FlipTrailerBit, "sha256 trailer does not match"),
        (Damage::FlipMeta0, "sha256 trailer does not match"),
        (
            Damage::FlipBothMetas,
            "both meta pages are damaged (checksum error)",
        ),
        (Damage::LeafFlags08, "invalid type flags 0x08"),
        (
            Damage::BranchChild9999,
            "points to page 9999, past the end of the database",
        ),
        (Damage::LeafHeaderId, "header says id 12345 (damaged page)"),
        (Damage::RandomBytes, "no bbolt database header"),
        (Damage::Empty, "the file is empty (0 bytes)"),
        (Damage::ThreeBytes, "too small"),
        (Damage::Gzip, "looks like a gzip file"),
    ];
    for (kind, words) in cases {
        let path = dir.path().join(format!("{kind:?}.snapshot"));
        std::fs::write(&path, damage(kind)).unwrap();
        for args in [
            vec!["inspect", s(&path)],
            vec!["diff", s(&p.a), s(&path)],
            vec!["diff", s(&path), s(&p.a)],
        ] {
            let out = talos_dr(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{kind:?} {args:?}: {err}");
            assert!(err.contains(words), "{kind:?} {args:?}: {words:?} in {err}");
            assert!(!err.contains("panicked"), "{kind:?}: {err}");
        }
    }
    // The raw db copies of the verify tests are valid snapshots: inspect reads them.
    for kind in [Damage::RawDb, Damage::RawDbFlipMeta0] {
        let path = dir.path().join(format!("{kind:?}.db"));
        std::fs::write(&path, damage(kind)).unwrap();
        let out = talos_dr(&["inspect", s(&path)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{kind:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = talos_dr(&["inspect", "/nonexistent/etcd.snapshot"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `latest` is the profile's newest snapshot; `find` lists which snapshots hold a namespace.
#[test]
fn latest_and_find_use_the_profile_backups_newest_first() {
    let p = pair();
    let env = Env::new();
    let t_a: jiff::Timestamp = "2026-11-01T02:00:00Z".parse().unwrap();
    let t_b: jiff::Timestamp = "2026-11-02T02:00:00Z".parse().unwrap();
    plant_snapshot(&env, &p.a, t_a, true);
    plant_snapshot(&env, &p.b, t_b, true);

    let out = env
        .cmd()
        .args(["-o", "json", "inspect", "latest"])
        .output()
        .unwrap();
    let doc = stdout_json(&out);
    assert!(
        doc["snapshot"]
            .as_str()
            .unwrap()
            .ends_with("etcd-20261102-020000.snapshot"),
        "{doc}"
    );
    assert_eq!(doc["revision"].as_i64().unwrap(), p.revision_b);

    let out = env
        .cmd()
        .args(["-o", "json", "find", "--namespace", "team-b"])
        .output()
        .unwrap();
    let doc = stdout_json(&out);
    let rows = doc["snapshots"].as_array().unwrap();
    let files: Vec<&str> = rows.iter().map(|r| r["file"].as_str().unwrap()).collect();
    assert_eq!(
        files,
        [
            "etcd-20261102-020000.snapshot",
            "etcd-20261101-020000.snapshot"
        ],
        "newest first"
    );
    assert_eq!(
        rows[0]["objects"].as_u64().unwrap(),
        0,
        "team-b is gone in B"
    );
    assert_eq!(
        rows[1]["objects"].as_u64().unwrap(),
        p.counts_a["/registry/deployments/team-b/"] + p.counts_a["/registry/secrets/team-b/"]
    );
    let out = env
        .cmd()
        .args(["find", "--namespace", "team-b", "--resource", "deployments"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("deployments in namespace team-b: in 1 of 2 snapshots"),
        "{text}"
    );
}

/// `snapshot` keeps the summary in the sidecar; `list --objects` shows it without reading the
/// file again, reads a snapshot whose sidecar predates the field, and old sidecars still load.
#[test]
fn snapshot_stores_the_summary_and_list_objects_shows_it() {
    let env = Env::new();
    let out = env.cmd().args(["snapshot", "--no-prune"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let taken = env
        .backup_files()
        .into_iter()
        .find(|f| f.ends_with(".snapshot"))
        .unwrap();
    let sidecar_path = env.backups().join(format!("{taken}.json"));
    let sidecar: Value =
        serde_json::from_str(&std::fs::read_to_string(&sidecar_path).unwrap()).unwrap();
    // The simulated cluster streams fixtures/snapshots/small.snapshot: 95 live keys in 30
    // namespaces (`inspect` of the same file says so too).
    let small = json_of(&[
        "-o",
        "json",
        "inspect",
        crate::common::fixture("snapshots/small.snapshot")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(sidecar["objects"]["objects"], small["objects"]);
    assert_eq!(sidecar["objects"]["namespaces"], small["namespaces"]);
    assert_eq!(sidecar["objects"]["bytes"], small["bytes"]);

    // An old sidecar (no `objects`) next to a second snapshot: still loads, read now.
    let old = plant_snapshot(
        &env,
        &pair().a,
        "2026-11-01T02:00:00Z".parse().unwrap(),
        true,
    );
    let old_sidecar = std::fs::read_to_string(format!("{}.json", old.display())).unwrap();
    assert!(!old_sidecar.contains("\"objects\""), "{old_sidecar}");
    // Prove the sidecar is used: the file's own count would differ from this planted one.
    let mut sc: Value =
        serde_json::from_str(&std::fs::read_to_string(&sidecar_path).unwrap()).unwrap();
    sc["objects"]["objects"] = 4242.into();
    std::fs::write(&sidecar_path, sc.to_string()).unwrap();

    let out = env
        .cmd()
        .args(["-o", "json", "list", "--objects"])
        .output()
        .unwrap();
    let doc = stdout_json(&out);
    let rows = doc["snapshots"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["objects"]["from"], "sidecar");
    assert_eq!(rows[0]["objects"]["objects"], 4242);
    assert_eq!(rows[1]["objects"]["from"], "read now");
    assert_eq!(
        rows[1]["objects"]["objects"].as_u64().unwrap(),
        pair().keys_a.len() as u64
    );
    let out = env.cmd().args(["list", "--objects"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("OBJECTS") && text.contains("4242 in 30 namespaces"),
        "{text}"
    );
    let out = env.cmd().args(["list"]).output().unwrap();
    assert!(!String::from_utf8(out.stdout).unwrap().contains("OBJECTS"));
}
