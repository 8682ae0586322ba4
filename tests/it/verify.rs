//! `verify_file` against FRESH snapshots from a real etcd and corrupted copies of one.
//!
//! Snapshots are made at test time by the project's own maker (`etcd_maker`: a throwaway
//! Debian etcd 3.4 on 127.0.0.1, `etcdctl snapshot save`); the expected values come from the
//! real `etcdctl snapshot status -w json`. Missing etcd tools fail the tests: they are the point
//! (`scripts/test` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rstest::rstest;
use sha2::{Digest, Sha256};
use talos_dr::snapshot::verify::{Report, Status, Trailer, verify_file};

use crate::etcd_maker::{self, Recipe};

const PAGE: usize = 4096;

fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Makes a real snapshot with a real etcd; panics (fails the test) if that is impossible.
fn make_snapshot(name: &str, args: &[&str]) -> PathBuf {
    let out = scratch().join(format!("{name}.snapshot"));
    let recipe = Recipe::from_args(args).unwrap_or_else(|e| panic!("recipe {args:?}: {e:#}"));
    etcd_maker::make_snapshot(&out, &recipe)
        .unwrap_or_else(|e| panic!("could not make a real etcd snapshot {args:?}: {e:#}"));
    out
}

/// What the real `etcdctl snapshot status -w json` says about `path`.
fn etcdctl_status(path: &Path) -> Status {
    let json = etcd_maker::etcdctl_status_json(path).unwrap_or_else(|e| panic!("{e:#}"));
    serde_json::from_str(&json).expect("etcdctl printed JSON")
}

fn verify(path: &Path) -> Report {
    verify_file(path).unwrap_or_else(|e| panic!("verify_file({}) failed: {e}", path.display()))
}

#[rstest]
#[case::plain("plain", &["--keys", "150", "--value-bytes", "400"])]
#[case::history("history", &["--keys", "150", "--value-bytes", "400", "--updates", "0.5", "--deletes", "0.2"])]
#[case::compacted("compacted", &["--keys", "150", "--value-bytes", "400", "--updates", "0.4", "--deletes", "0.3", "--compact"])]
#[case::defragmented("defragmented", &["--keys", "150", "--value-bytes", "400", "--updates", "0.3", "--deletes", "0.3", "--compact", "--defrag"])]
#[case::no_leases_big_values("big-values", &["--keys", "30", "--value-bytes", "12000", "--no-leases", "--deletes", "0.2"])]
fn fresh_snapshot_agrees_with_etcdctl(#[case] name: &str, #[case] args: &[&str]) {
    let path = make_snapshot(name, args);
    let expected = etcdctl_status(&path);
    let report = verify(&path);
    let bytes = std::fs::read(&path).unwrap();

    assert_eq!(
        report.status,
        Some(expected),
        "problems: {:?}",
        report.problems
    );
    assert!(report.valid, "problems: {:?}", report.problems);
    assert_eq!(report.trailer, Trailer::Ok);
    assert_eq!(report.sha256, hex::encode(Sha256::digest(&bytes)));
    std::fs::remove_file(&path).unwrap();
}

/// One real snapshot, made once, big enough for bucket `key` to have a branch page.
fn base() -> &'static (Vec<u8>, Status) {
    static BASE: OnceLock<(Vec<u8>, Status)> = OnceLock::new();
    BASE.get_or_init(|| {
        let path = make_snapshot(
            "base",
            &["--keys", "200", "--value-bytes", "600", "--seed", "5"],
        );
        let status = etcdctl_status(&path);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        (bytes, status)
    })
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> usize {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap()) as usize
}
fn u64_at(b: &[u8], off: usize) -> usize {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap()) as usize
}

/// Byte offsets of the pages the corruptions aim at, found from the bbolt layout.
struct Layout {
    /// Root page of bucket `key` (a branch page).
    branch: usize,
    /// First leaf of bucket `key`.
    leaf: usize,
    /// A byte inside the value of the leaf's first entry.
    value_byte: usize,
}

fn layout(db: &[u8]) -> Layout {
    let root = u64_at(db, 16 + 16) * PAGE;
    let count = u16_at(db, root + 10) as usize;
    let key_root = (0..count)
        .find_map(|i| {
            let e = root + 16 + i * 16;
            let k = e + u32_at(db, e + 4);
            let klen = u32_at(db, e + 8);
            (&db[k..k + klen] == b"key").then(|| u64_at(db, k + klen) * PAGE)
        })
        .expect("bucket `key` in the root page");
    assert_eq!(
        u16_at(db, key_root + 8),
        0x01,
        "bucket `key` should start with a branch page"
    );
    let leaf = u64_at(db, key_root + 16 + 8) * PAGE;
    assert_eq!(u16_at(db, leaf + 8), 0x02, "first child should be a leaf");
    let e = leaf + 16;
    let value = e + u32_at(db, e + 4) + u32_at(db, e + 8);
    Layout {
        branch: key_root,
        leaf,
        value_byte: value + 10,
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Damage {
    TruncateTo(usize),
    TruncateBy(usize),
    FlipValueBit,
    FlipTrailerBit,
    FlipMeta0,
    FlipBothMetas,
    LeafFlags08,
    BranchChild9999,
    LeafHeaderId,
    RandomBytes,
    Empty,
    ThreeBytes,
    Gzip,
    RawDb,
    RawDbFlipMeta0,
}

pub(crate) fn damage(kind: Damage) -> Vec<u8> {
    let (orig, _) = base();
    let mut d = orig.clone();
    let body = d.len() - 32;
    let at = layout(orig);
    match kind {
        Damage::TruncateTo(n) => d.truncate(n),
        Damage::TruncateBy(n) => d.truncate(d.len() - n),
        Damage::FlipValueBit => d[at.value_byte] ^= 0x04,
        Damage::FlipTrailerBit => d[body + 5] ^= 0x01,
        // txid fields: the meta checksum no longer matches.
        Damage::FlipMeta0 => d[16 + 48] ^= 0x01,
        Damage::FlipBothMetas => {
            d[16 + 48] ^= 0x01;
            d[PAGE + 16 + 48] ^= 0x01;
        }
        Damage::LeafFlags08 => d[at.leaf + 8..at.leaf + 10].copy_from_slice(&8u16.to_le_bytes()),
        Damage::BranchChild9999 => {
            d[at.branch + 16 + 8..][..8].copy_from_slice(&9999u64.to_le_bytes())
        }
        Damage::LeafHeaderId => d[at.leaf..at.leaf + 8].copy_from_slice(&12345u64.to_le_bytes()),
        Damage::RandomBytes => {
            // xorshift: reproducible noise without a rand dependency.
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            d = (0..16416)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
        }
        Damage::Empty => d.clear(),
        Damage::ThreeBytes => d.truncate(3),
        Damage::Gzip => {
            let dir = scratch();
            let p = dir.join(format!("gz-{:?}", std::thread::current().id()));
            std::fs::write(&p, &d).unwrap();
            let out = Command::new("gzip")
                .arg("-c")
                .arg(&p)
                .output()
                .expect("gzip");
            assert!(out.status.success());
            std::fs::remove_file(&p).unwrap();
            d = out.stdout;
        }
        Damage::RawDb => d.truncate(body),
        Damage::RawDbFlipMeta0 => {
            d.truncate(body);
            d[16 + 48] ^= 0x01;
        }
    }
    d
}

/// Expected outcome: valid?, trailer, words that must appear in a problem (or note when valid),
/// and whether etcd's status must still come out unchanged.
#[rstest]
#[case::truncated_100000(
    Damage::TruncateTo(100_000),
    false,
    Trailer::Missing,
    "truncated",
    Some(false)
)]
#[case::truncated_in_meta_1(
    Damage::TruncateTo(5000),
    false,
    Trailer::Missing,
    "truncated",
    Some(false)
)]
#[case::truncated_half(
    Damage::TruncateTo(60_000),
    false,
    Trailer::Missing,
    "truncated",
    Some(false)
)]
#[case::last_page_cut_keeps_size_pattern(
    Damage::TruncateBy(4096),
    false,
    Trailer::Mismatch,
    "truncated",
    Some(false)
)]
#[case::last_byte_cut(
    Damage::TruncateBy(1),
    false,
    Trailer::Missing,
    "truncated or has",
    Some(true)
)]
#[case::value_bit_flip(
    Damage::FlipValueBit,
    false,
    Trailer::Mismatch,
    "sha256 trailer does not match",
    None
)]
#[case::trailer_bit_flip(
    Damage::FlipTrailerBit,
    false,
    Trailer::Mismatch,
    "sha256 trailer does not match",
    Some(true)
)]
#[case::meta0_bit_flip(
    Damage::FlipMeta0,
    false,
    Trailer::Mismatch,
    "sha256 trailer does not match",
    Some(true)
)]
#[case::both_metas(
    Damage::FlipBothMetas,
    false,
    Trailer::Mismatch,
    "both meta pages are damaged (checksum error)",
    Some(false)
)]
#[case::leaf_flags(
    Damage::LeafFlags08,
    false,
    Trailer::Mismatch,
    "invalid type flags 0x08",
    Some(false)
)]
#[case::branch_child(
    Damage::BranchChild9999,
    false,
    Trailer::Mismatch,
    "points to page 9999, past the end of the database",
    Some(false)
)]
#[case::page_id(
    Damage::LeafHeaderId,
    false,
    Trailer::Mismatch,
    "header says id 12345 (damaged page)",
    Some(false)
)]
#[case::random(
    Damage::RandomBytes,
    false,
    Trailer::Mismatch,
    "no bbolt database header",
    Some(false)
)]
#[case::empty(
    Damage::Empty,
    false,
    Trailer::Missing,
    "the file is empty (0 bytes)",
    Some(false)
)]
#[case::three_bytes(Damage::ThreeBytes, false, Trailer::Missing, "too small", Some(false))]
#[case::gzip(
    Damage::Gzip,
    false,
    Trailer::Missing,
    "looks like a gzip file",
    Some(false)
)]
#[case::raw_db(
    Damage::RawDb,
    true,
    Trailer::Missing,
    "--recover-skip-hash-check",
    Some(true)
)]
#[case::raw_db_meta0_flip(
    Damage::RawDbFlipMeta0,
    true,
    Trailer::Missing,
    "meta page 0 is damaged; etcd would fall back to meta page 1",
    Some(true)
)]
fn damaged_snapshot_is_reported(
    #[case] kind: Damage,
    #[case] valid: bool,
    #[case] trailer: Trailer,
    #[case] words: &str,
    // Some(true): status equals the original; Some(false): no status; None: status differs.
    #[case] same_status: Option<bool>,
) {
    let data = damage(kind);
    let path = scratch().join(format!("{kind:?}.snapshot"));
    std::fs::write(&path, &data).unwrap();
    let report = verify(&path);
    std::fs::remove_file(&path).unwrap();

    let said = if valid {
        &report.notes
    } else {
        &report.problems
    };
    assert_eq!(report.valid, valid, "{kind:?}: {report:#?}");
    assert_eq!(report.trailer, trailer, "{kind:?}: {report:#?}");
    assert!(
        said.iter().any(|p| p.contains(words)),
        "{kind:?}: expected {words:?} in {said:#?}"
    );
    if valid {
        assert!(
            report.problems.is_empty(),
            "{kind:?}: {:?}",
            report.problems
        );
    }
    let original = base().1;
    match same_status {
        Some(true) => assert_eq!(report.status, Some(original), "{kind:?}"),
        Some(false) => assert_eq!(
            report.status, None,
            "{kind:?}: damaged structure gives no status"
        ),
        None => {
            let status = report
                .status
                .expect("structure is intact, status is computed");
            assert_ne!(
                status.hash, original.hash,
                "a flipped value bit changes etcd's hash"
            );
            assert_eq!(status.total_key, original.total_key);
        }
    }
    assert_eq!(report.size, data.len() as u64);
    assert_eq!(report.sha256, hex::encode(Sha256::digest(&data)));
}

#[test]
fn missing_file_is_an_io_error_not_a_report() {
    let err = verify_file(Path::new("/nonexistent/etcd.snapshot")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}
