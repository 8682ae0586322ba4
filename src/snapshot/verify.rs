//! Native verification of etcd snapshot files (no etcd needed).
//!
//! A snapshot written by `etcdctl snapshot save` / `talosctl etcd snapshot` is a bbolt database
//! followed by a 32-byte sha256 of everything before it (file size % 512 == 32); a raw
//! `member/snap/db` copy has no trailer. [`verify_file`] checks both in one pass with constant
//! memory and two threads:
//!
//! * a hashing thread streams the whole file sequentially into sha256 (the whole-file digest for
//!   the report and, by cloning the hasher state at `len - 32`, the body digest for the trailer);
//! * the calling thread walks the bbolt B+tree with positioned reads of single pages (or overflow
//!   runs) into per-level reused buffers, with an explicit stack and a 1-bit-per-page visited set.
//!
//! While walking it recomputes what `etcdctl snapshot status` (etcd 3.4) prints: CRC-32C over every
//! root bucket's name and then its keys and values in order, the revision of the last key in bucket
//! `key`, the number of entries in all root buckets, and `meta.pgid * pageSize`.
//!
//! Every damage the etcd tools crash on (see `reference/etcd-snapshot.md` §2) is turned into a
//! plain sentence in [`Report::problems`], naming the page it is about.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// State of the 32-byte sha256 trailer that etcd appends to a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trailer {
    /// `size % 512 == 32` and the digest matches the body.
    Ok,
    /// No trailer: a raw `member/snap/db` copy (restorable only with `--recover-skip-hash-check`).
    Missing,
    /// A trailer is present but does not match the body.
    Mismatch,
}

/// The values `etcdctl snapshot status -w json` prints, with etcd's field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// The result of verifying one file.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub path: PathBuf,
    /// True when the file can be restored: structure intact and no trailer mismatch.
    pub valid: bool,
    pub size: u64,
    pub trailer: Trailer,
    /// etcd's status values; `None` when the structure is too damaged to compute them.
    pub status: Option<Status>,
    /// Plain-language descriptions of every problem found (empty when valid).
    pub problems: Vec<String>,
    /// Things worth knowing that do not make the file invalid (e.g. a raw db without trailer).
    pub notes: Vec<String>,
    /// Hex sha256 of the whole file, as `sha256sum` prints it.
    pub sha256: String,
}

/// How many problems are listed before the rest is summarised as "and N more".
pub const MAX_PROBLEMS: usize = 20;

const TRAILER_LEN: u64 = 32;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const META_LEN: usize = 64;
const BUCKET_HEADER: usize = 16;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const FREELIST: u16 = 0x10;
const BUCKET_LEAF_FLAG: u32 = 0x01;
const NO_FREELIST: u64 = u64::MAX;
/// The smallest and largest page sizes bbolt's meta-1 probe considers (1 KiB << 0..=14).
const MIN_PAGE_SIZE: u64 = 1 << 10;
const MAX_PAGE_SIZE: u64 = 1 << 24;
/// Streaming read size and buffer count of the hashing pipeline: big enough that syscalls
/// are negligible, small enough that a chunk is still in cache when it is hashed.
const READ_BUF: usize = 1 << 20;
const READ_BUFS: usize = 3;
/// Largest page run (page + overflow) loaded into memory. etcd values are limited by
/// `--max-request-bytes` (1.5 MiB by default), so real leaves are far smaller; a bigger claim
/// comes from a damaged header and must not turn into a huge allocation.
const MAX_SPAN: u64 = 256 << 20;
/// bbolt trees are a handful of levels deep; anything deeper is a loop or damage.
const MAX_DEPTH: usize = 64;

/// Sees the entries of etcd's root buckets while [`verify_file_with`] walks the file, so a
/// reader of the contents (see `snapshot::xray`) shares the one pass instead of parsing bbolt
/// again. Entries come in bucket order, then key order (bucket `key`: revision order). They are
/// only trustworthy when the returned [`Report`] is valid.
pub trait Visitor {
    /// A plain (non-bucket) entry of root bucket `bucket`; nested buckets are not visited.
    fn entry(&mut self, bucket: &[u8], key: &[u8], value: &[u8]);
    /// Once after a complete walk: pages reached from the metas (the two meta pages included),
    /// pages the database claims (`meta.pgid`), and the page size.
    fn pages(&mut self, _used: u64, _total: u64, _page_size: u64) {}
}

/// A visitor that looks at nothing (plain verification).
struct NoVisitor;

impl Visitor for NoVisitor {
    fn entry(&mut self, _: &[u8], _: &[u8], _: &[u8]) {}
}

/// Verifies one snapshot file in a single streaming pass with constant memory.
///
/// I/O errors (file missing, unreadable) are returned as `Err`; damage is reported in the
/// [`Report`].
pub fn verify_file(path: &Path) -> io::Result<Report> {
    verify_file_with(path, &mut NoVisitor)
}

/// [`verify_file`], showing every root-bucket entry to `visitor` on the way.
pub fn verify_file_with(path: &Path, visitor: &mut dyn Visitor) -> io::Result<Report> {
    let hash_file = File::open(path)?;
    let walk_file = File::open(path)?;
    let size = hash_file.metadata()?.len();
    let has_trailer = size % 512 == TRAILER_LEN;
    let body_len = if has_trailer {
        size - TRAILER_LEN
    } else {
        size
    };

    let (digests, analysis) = std::thread::scope(|s| {
        let hasher = s.spawn(|| hash_stream(&hash_file, size, has_trailer.then_some(body_len)));
        let analysis = analyze(&walk_file, size, body_len, visitor);
        let digests = hasher
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("sha256 thread failed")));
        (digests, analysis)
    });
    let digests = digests?;
    let analysis = analysis?;
    let stored = match digests.body {
        Some(_) => {
            let mut stored = [0u8; 32];
            FileExt::read_exact_at(&walk_file, &mut stored, body_len)?;
            Some(stored)
        }
        None => None,
    };
    Ok(report(path, size, &digests, stored, analysis))
}

/// Positioned reads of whole ranges: a file, or a file that is still being written (see
/// `snapshot::follow`), where a read waits for its bytes to arrive.
pub(crate) trait ReadAt: Sync {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, off)
    }
}

/// The verdict on a file of `size` bytes from its digests, its stored trailer (`Some` when the
/// size says there is one) and the structure [`analyze`] found.
pub(crate) fn report(
    path: &Path,
    size: u64,
    digests: &Digests,
    stored: Option<[u8; 32]>,
    mut a: Analysis,
) -> Report {
    let trailer = match (digests.body, stored) {
        (Some(body), Some(stored)) if stored == body => Trailer::Ok,
        (Some(_), _) => Trailer::Mismatch,
        (None, _) => Trailer::Missing,
    };
    match trailer {
        Trailer::Mismatch if !a.foreign => a.problems.push(
            "sha256 trailer does not match the content: the file was modified or corrupted after \
             it was taken"
                .to_string(),
        ),
        Trailer::Missing if a.page_size.is_some_and(|ps| size.is_multiple_of(ps)) => a.notes.push(
            "the file has no sha256 trailer (a raw member/snap/db copy, not a streamed snapshot): \
             it can only be restored with `talosctl bootstrap --recover-skip-hash-check`"
                .to_string(),
        ),
        _ => {}
    }

    let problems = a.problems.into_vec();
    Report {
        path: path.to_path_buf(),
        valid: problems.is_empty(),
        size,
        trailer,
        status: a.status,
        problems,
        notes: a.notes,
        sha256: hex::encode(digests.whole),
    }
}

pub(crate) struct Digests {
    pub(crate) whole: [u8; 32],
    /// sha256 of the bytes before the trailer, when the size says there is one.
    pub(crate) body: Option<[u8; 32]>,
}

/// Streams `len` bytes of `file` through sha256 in constant memory.
///
/// A reader thread fills a small ring of reused buffers while this thread hashes, so copying
/// from the page cache overlaps with SHA-256 instead of adding to it.
fn hash_stream(file: &File, len: u64, body_len: Option<u64>) -> io::Result<Digests> {
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(READ_BUFS);
    let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(READ_BUFS);
    for _ in 0..READ_BUFS {
        // Cannot fail: the receiver is alive and the channel holds READ_BUFS buffers.
        let _ = free_tx.send(vec![0u8; READ_BUF]);
    }
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> io::Result<()> {
            let mut off = 0u64;
            while off < len {
                let mut want = (len - off).min(READ_BUF as u64);
                // End a chunk exactly at the trailer so the hasher can take the body digest.
                if let Some(b) = body_len.filter(|b| off < *b && *b < off + want) {
                    want = b - off;
                }
                let want = want as usize;
                let Ok(mut buf) = free_rx.recv() else {
                    return Ok(());
                };
                read_fully(file, &mut buf[..want], off)?;
                off += want as u64;
                if full_tx.send((buf, want)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        let mut hasher = Sha256::new();
        // The body digest is the hasher state at `body_len`, finalised on a copy, so the file
        // is hashed once although two digests come out of it.
        let mut body = (body_len == Some(0)).then(|| hasher.clone().finalize().into());
        let mut off = 0u64;
        for (buf, n) in full_rx {
            hasher.update(&buf[..n]);
            off += n as u64;
            if body.is_none() && body_len == Some(off) {
                body = Some(hasher.clone().finalize().into());
            }
            // Never blocks: there are only READ_BUFS buffers in circulation.
            let _ = free_tx.send(buf);
        }
        reader
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("file reader thread failed")))?;
        if off != len {
            return Err(io::Error::other(
                "the file changed while it was being verified",
            ));
        }
        Ok(Digests {
            whole: hasher.finalize().into(),
            body,
        })
    })
}

fn read_fully(file: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
    FileExt::read_exact_at(file, buf, off).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(e.kind(), "the file got shorter while it was being verified")
        } else {
            e
        }
    })
}

/// Problems, keeping the first [`MAX_PROBLEMS`] and counting the rest.
#[derive(Default)]
struct Problems {
    list: Vec<String>,
    more: usize,
}

impl Problems {
    fn push(&mut self, msg: String) {
        if self.list.len() < MAX_PROBLEMS {
            self.list.push(msg);
        } else {
            self.more += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn into_vec(mut self) -> Vec<String> {
        if self.more > 0 {
            self.list.push(format!("and {} more problems", self.more));
        }
        self.list
    }
}

/// Everything except the sha256: size, container sniffing, meta pages and the tree walk.
pub(crate) struct Analysis {
    problems: Problems,
    notes: Vec<String>,
    status: Option<Status>,
    /// Page size of a bbolt file whose meta page could be used.
    page_size: Option<u64>,
    /// A recognised compressed/encrypted container: the trailer verdict is beside the point.
    foreign: bool,
}

impl Analysis {
    fn new() -> Self {
        Analysis {
            problems: Problems::default(),
            notes: Vec::new(),
            status: None,
            page_size: None,
            foreign: false,
        }
    }
}

/// The size a streamed snapshot has when its meta pages are both intact: `meta.pgid` pages
/// and the trailer. `None` for anything less clear-cut (a follower then verifies the finished
/// file as a whole instead of guessing).
pub(crate) fn expected_size(file: &dyn ReadAt) -> io::Result<Option<u64>> {
    let mut a = Analysis::new();
    let meta = choose_meta(file, u64::MAX / 2, &mut a)?;
    Ok(meta
        .filter(|_| a.notes.is_empty() && a.problems.is_empty())
        .and_then(|m| m.pgid.checked_mul(u64::from(m.page_size)))
        .and_then(|n| n.checked_add(TRAILER_LEN)))
}

/// Everything but the sha256 of a file of `size` bytes whose first `body_len` are the database.
pub(crate) fn analyze(
    file: &dyn ReadAt,
    size: u64,
    body_len: u64,
    visitor: &mut dyn Visitor,
) -> io::Result<Analysis> {
    let mut a = Analysis::new();
    if size == 0 {
        a.problems.push("the file is empty (0 bytes)".to_string());
        return Ok(a);
    }
    let mut head = [0u8; 64];
    let head_len = size.min(head.len() as u64) as usize;
    file.read_exact_at(&mut head[..head_len], 0)?;
    if let Some(kind) = sniff_container(&head[..head_len]) {
        a.foreign = true;
        a.problems.push(format!(
            "looks like a {kind} file, not an etcd snapshot: unpack it first"
        ));
        return Ok(a);
    }
    let min_len = (PAGE_HEADER + META_LEN) as u64;
    if body_len < min_len {
        a.problems.push(format!(
            "the file is too small to be an etcd snapshot ({size} bytes)"
        ));
        return Ok(a);
    }

    let Some(meta) = choose_meta(file, body_len, &mut a)? else {
        if !size.is_multiple_of(512) && size % 512 != TRAILER_LEN {
            a.problems.push(format!(
                "the file size ({size} bytes) is not whole 512-byte blocks (plus a 32-byte \
                 trailer): it is truncated or has extra bytes"
            ));
        }
        return Ok(a);
    };
    let ps = u64::from(meta.page_size);
    a.page_size = Some(ps);
    let needed = meta.pgid.saturating_mul(ps);
    let has_trailer = size % 512 == TRAILER_LEN;
    let truncated = needed > body_len;
    if truncated {
        a.problems.push(format!(
            "the file is truncated: the database needs {needed} bytes but only {body_len} are \
             present"
        ));
    } else if !has_trailer && !size.is_multiple_of(ps) {
        a.problems.push(format!(
            "the file size ({size} bytes) is neither whole {ps}-byte pages nor pages plus a \
             32-byte sha256 trailer: it was truncated or has {} extra bytes",
            size % ps
        ));
    } else if body_len > needed {
        a.notes.push(format!(
            "the file has {} bytes after the end of the database (unused space; harmless)",
            body_len - needed
        ));
    }

    let mut structure_ok = true;
    if meta.pgid < 3 || meta.root < 2 || meta.root >= meta.pgid {
        a.problems.push(format!(
            "the meta page is inconsistent: root page {} with {} pages in the database",
            meta.root, meta.pgid
        ));
        return Ok(a);
    }
    let mut walker = Walker::new(file, ps, meta.pgid, body_len / ps, visitor);
    if meta.freelist != NO_FREELIST {
        walker.check_freelist(meta.freelist)?;
    }
    walker.walk(meta.root)?;
    let used = 2 + walker
        .visited
        .iter()
        .map(|w| u64::from(w.count_ones()))
        .sum::<u64>();
    walker.visitor.pages(used, meta.pgid, ps);
    structure_ok &= walker.problems.is_empty();
    if structure_ok && !(walker.saw_key && walker.saw_meta) {
        let missing = match (walker.saw_key, walker.saw_meta) {
            (false, false) => "`key` and `meta` buckets",
            (false, true) => "`key` bucket",
            _ => "`meta` bucket",
        };
        walker.problems.push(format!(
            "this is a bbolt database but not etcd's: its root (page {}) has no {missing}",
            meta.root
        ));
        structure_ok = false;
    }
    for p in walker.problems.list.drain(..) {
        a.problems.push(p);
    }
    a.problems.more += walker.problems.more;
    if structure_ok && !truncated {
        a.status = Some(Status {
            hash: walker.crc,
            revision: walker.revision,
            total_key: walker.total_key,
            total_size: needed,
        });
    }
    Ok(a)
}

/// Names a compressed or encrypted container by its magic bytes.
fn sniff_container(head: &[u8]) -> Option<&'static str> {
    const MAGICS: &[(&[u8], &str)] = &[
        (b"\x1f\x8b", "gzip"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"BZh", "bzip2"),
        (b"PK\x03\x04", "zip"),
        (b"age-encryption.org/", "age-encrypted"),
        (b"-----BEGIN AGE ENCRYPTED FILE-----", "age-encrypted"),
        (b"\x04\x22\x4d\x18", "lz4"),
    ];
    MAGICS
        .iter()
        .find(|(m, _)| head.starts_with(m))
        .map(|(_, name)| *name)
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    page_size: u32,
    root: u64,
    freelist: u64,
    pgid: u64,
    txid: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetaError {
    Magic,
    Version(u32),
    Checksum,
    PageSize(u32),
}

impl MetaError {
    fn describe(self) -> String {
        match self {
            MetaError::Magic => "no bbolt magic number".to_string(),
            MetaError::Version(v) => format!("unsupported bbolt version {v}"),
            MetaError::Checksum => "checksum error".to_string(),
            MetaError::PageSize(p) => format!("impossible page size {p}"),
        }
    }
}

/// Decodes and validates the 64-byte meta struct the way bbolt 1.3.6 does.
fn parse_meta(m: &[u8; META_LEN]) -> Result<Meta, MetaError> {
    let magic = le_u32(m, 0);
    if magic != MAGIC {
        return Err(MetaError::Magic);
    }
    let version = le_u32(m, 4);
    if version != VERSION {
        return Err(MetaError::Version(version));
    }
    let checksum = le_u64(m, 56);
    // bbolt 1.3.6 (etcd 3.4) accepts a zero checksum as "not set".
    if checksum != 0 && checksum != fnv1a64(&m[..56]) {
        return Err(MetaError::Checksum);
    }
    let page_size = le_u32(m, 8);
    let ps = u64::from(page_size);
    if !ps.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&ps) {
        return Err(MetaError::PageSize(page_size));
    }
    Ok(Meta {
        page_size,
        root: le_u64(m, 16),
        freelist: le_u64(m, 32),
        pgid: le_u64(m, 40),
        txid: le_u64(m, 48),
    })
}

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn read_meta(
    file: &dyn ReadAt,
    body_len: u64,
    page_off: u64,
) -> io::Result<Option<[u8; META_LEN]>> {
    let off = page_off + PAGE_HEADER as u64;
    if off + META_LEN as u64 > body_len {
        return Ok(None);
    }
    let mut m = [0u8; META_LEN];
    file.read_exact_at(&mut m, off)?;
    Ok(Some(m))
}

/// Picks the meta page bbolt would use, recording notes and problems about damaged ones.
fn choose_meta(file: &dyn ReadAt, body_len: u64, a: &mut Analysis) -> io::Result<Option<Meta>> {
    let raw0 = read_meta(file, body_len, 0)?;
    let m0 = raw0.as_ref().map_or(Err(MetaError::Magic), parse_meta);
    // Meta 1 sits one page further; when meta 0 cannot tell the page size, probe like bbolt.
    let m1 = match m0 {
        Ok(m) => read_meta(file, body_len, u64::from(m.page_size))?
            .as_ref()
            .map_or(Err(MetaError::Magic), parse_meta),
        Err(_) => {
            let mut found = Err(MetaError::Magic);
            for shift in 0..15 {
                let pos = MIN_PAGE_SIZE << shift;
                let Some(raw) = read_meta(file, body_len, pos)? else {
                    break;
                };
                let parsed = parse_meta(&raw);
                if matches!(parsed, Ok(m) if u64::from(m.page_size) == pos) {
                    found = parsed;
                    break;
                }
                // Remember a damaged meta (magic present) to name the damage precisely.
                if let (Err(MetaError::Magic), Err(e)) = (found, parsed)
                    && e != MetaError::Magic
                {
                    found = Err(e);
                }
            }
            found
        }
    };
    let chosen = match (m0, m1) {
        (Ok(a0), Ok(a1)) => Some(if a1.txid > a0.txid { a1 } else { a0 }),
        (Ok(a0), Err(e1)) => {
            a.notes.push(format!(
                "meta page 1 is damaged; etcd would use meta page 0 (meta page 1: {})",
                e1.describe()
            ));
            Some(a0)
        }
        (Err(e0), Ok(a1)) => {
            a.notes.push(format!(
                "meta page 0 is damaged; etcd would fall back to meta page 1 (meta page 0: {})",
                e0.describe()
            ));
            Some(a1)
        }
        (Err(MetaError::Magic), Err(MetaError::Magic)) => {
            a.problems.push(
                "not an etcd snapshot: no bbolt database header (magic number missing)".to_string(),
            );
            None
        }
        (Err(e0), Err(e1)) if e0 == e1 => {
            a.problems.push(format!(
                "both meta pages are damaged ({}): the database cannot be opened",
                e0.describe()
            ));
            None
        }
        (Err(e0), Err(e1)) => {
            a.problems.push(format!(
                "both meta pages are damaged (page 0: {}, page 1: {}): the database cannot be \
                 opened",
                e0.describe(),
                e1.describe()
            ));
            None
        }
    };
    Ok(chosen)
}

/// Where a page reference came from, for messages.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Meta,
    Freelist,
    Branch(u64),
    Bucket(u64),
}

/// What the entries of a tree mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The root bucket: every entry must be a bucket (etcd's bucket names).
    Roots,
    /// A root-level etcd bucket: entries are hashed and counted.
    Etcd { key_bucket: bool },
    /// A bucket inside a bucket: walked for structure only (etcd's ForEach does not descend).
    Nested,
}

/// A key living in the buffer of an ancestor level; ancestors stay put while a child is walked.
#[derive(Debug, Clone, Copy)]
struct KeyRef {
    level: usize,
    off: usize,
    len: usize,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    /// Page the data came from (for an inline bucket: the page holding the bucket value).
    pgid: u64,
    inline: bool,
    branch: bool,
    count: usize,
    next: usize,
    /// Bytes in use in this level's buffer.
    len: usize,
    role: Role,
    /// Keys of this subtree must be `>= lo` and `< hi` (the parent's separators).
    lo: Option<KeyRef>,
    hi: Option<KeyRef>,
    /// Offset and length of the previous key on this page.
    prev: Option<(usize, usize)>,
}

struct Walker<'f, 'v> {
    file: &'f dyn ReadAt,
    visitor: &'v mut dyn Visitor,
    /// Raw name of the root bucket being walked, for the visitor.
    bucket: Vec<u8>,
    page_size: u64,
    /// `meta.pgid`: pages the database claims.
    pages: u64,
    /// Whole pages actually present in the file.
    file_pages: u64,
    visited: Vec<u64>,
    /// One reused buffer per tree level.
    bufs: Vec<Vec<u8>>,
    stack: Vec<Frame>,
    problems: Problems,
    bucket_name: String,
    crc: u32,
    total_key: u64,
    revision: i64,
    saw_key: bool,
    saw_meta: bool,
}

impl<'f, 'v> Walker<'f, 'v> {
    fn new(
        file: &'f dyn ReadAt,
        page_size: u64,
        pages: u64,
        file_pages: u64,
        visitor: &'v mut dyn Visitor,
    ) -> Self {
        // Pages past the end of the file are rejected before the bitset is consulted, so it
        // never needs more bits than the file has pages.
        let bits = pages.min(file_pages) as usize;
        Walker {
            file,
            visitor,
            bucket: Vec::new(),
            page_size,
            pages,
            file_pages,
            visited: vec![0; bits.div_ceil(64)],
            bufs: Vec::new(),
            stack: Vec::new(),
            problems: Problems::default(),
            bucket_name: String::new(),
            crc: 0,
            total_key: 0,
            revision: 0,
            saw_key: false,
            saw_meta: false,
        }
    }

    fn origin(&self, o: Origin) -> String {
        match o {
            Origin::Meta => "the meta page's root bucket".to_string(),
            Origin::Freelist => "the meta page's freelist".to_string(),
            Origin::Branch(p) => format!("branch on page {p}"),
            Origin::Bucket(p) if self.bucket_name.is_empty() => format!("bucket on page {p}"),
            Origin::Bucket(p) => format!("bucket {} on page {p}", self.bucket_name),
        }
    }

    /// etcd never persists a freelist (`NoFreelistSync`); if a file has one, its page is checked
    /// and claimed, but the free ids in it are not cross-checked.
    fn check_freelist(&mut self, pgid: u64) -> io::Result<()> {
        self.load(0, pgid, Origin::Freelist, FREELIST).map(drop)
    }

    /// Reads page `pgid` (and its overflow pages) into the buffer of `level` after checking
    /// range, header id, type, and that no page is reached twice. Returns (flags, count, len).
    fn load(&mut self, level: usize, pgid: u64, from: Origin, want: u16) -> io::Result<PageInfo> {
        let fail = |w: &mut Self, msg: String| -> io::Result<PageInfo> {
            w.problems.push(msg);
            Ok(PageInfo::Bad)
        };
        if pgid < 2 {
            let msg = format!(
                "{} points to page {pgid}, which is a meta page",
                self.origin(from)
            );
            return fail(self, msg);
        }
        if pgid >= self.pages {
            let msg = format!(
                "{} points to page {pgid}, past the end of the database ({} pages)",
                self.origin(from),
                self.pages
            );
            return fail(self, msg);
        }
        if pgid >= self.file_pages {
            let msg = format!(
                "{} points to page {pgid}, which is missing because the file is truncated",
                self.origin(from)
            );
            return fail(self, msg);
        }
        if self.is_visited(pgid) {
            let msg = format!(
                "page {pgid} is reached twice (again from {}): the tree is damaged",
                self.origin(from)
            );
            return fail(self, msg);
        }
        while self.bufs.len() <= level {
            self.bufs.push(Vec::new());
        }
        let ps = self.page_size as usize;
        let buf = &mut self.bufs[level];
        if buf.len() < ps {
            buf.resize(ps, 0);
        }
        self.file
            .read_exact_at(&mut buf[..ps], pgid * self.page_size)?;
        let id = le_u64(buf, 0);
        let flags = le_u16(buf, 8);
        let count = le_u16(buf, 10) as usize;
        let overflow = u64::from(le_u32(buf, 12));
        if id != pgid {
            let msg = format!("page {pgid} header says id {id} (damaged page)");
            return fail(self, msg);
        }
        let type_ok = if want == BRANCH | LEAF {
            flags == BRANCH || flags == LEAF
        } else {
            flags == want
        };
        if !type_ok {
            let msg = format!("page {pgid} has invalid type flags {flags:#04x}");
            return fail(self, msg);
        }
        let last = pgid + overflow;
        if last >= self.pages {
            let msg = format!(
                "page {pgid} claims {overflow} overflow pages, past the end of the database ({} \
                 pages)",
                self.pages
            );
            return fail(self, msg);
        }
        if last >= self.file_pages {
            let msg = format!(
                "page {pgid} continues on overflow page {last}, which is missing because the file \
                 is truncated"
            );
            return fail(self, msg);
        }
        let span = (overflow + 1) * self.page_size;
        if span > MAX_SPAN {
            let msg = format!(
                "page {pgid} claims to span {span} bytes, more than this verifier accepts \
                 ({MAX_SPAN} bytes): damaged header?"
            );
            return fail(self, msg);
        }
        for p in pgid..=last {
            if self.is_visited(p) {
                let msg = format!(
                    "overflow page {p} of page {pgid} is also used elsewhere: the tree is damaged"
                );
                return fail(self, msg);
            }
            self.set_visited(p);
        }
        let span = span as usize;
        if span > ps {
            let buf = &mut self.bufs[level];
            if buf.len() < span {
                buf.resize(span, 0);
            }
            self.file
                .read_exact_at(&mut buf[ps..span], pgid * self.page_size + ps as u64)?;
        }
        Ok(PageInfo::Good {
            branch: flags == BRANCH,
            count,
            len: span,
        })
    }

    fn is_visited(&self, p: u64) -> bool {
        self.visited
            .get((p / 64) as usize)
            .is_some_and(|w| w & (1 << (p % 64)) != 0)
    }

    fn set_visited(&mut self, p: u64) {
        if let Some(w) = self.visited.get_mut((p / 64) as usize) {
            *w |= 1 << (p % 64);
        }
    }

    /// Loads a tree page as level `level` and pushes its frame.
    fn push_page(
        &mut self,
        level: usize,
        pgid: u64,
        from: Origin,
        role: Role,
        lo: Option<KeyRef>,
        hi: Option<KeyRef>,
    ) -> io::Result<()> {
        if level >= MAX_DEPTH {
            self.problems.push(format!(
                "the tree is nested deeper than {MAX_DEPTH} levels at page {pgid} (damaged)"
            ));
            return Ok(());
        }
        let PageInfo::Good { branch, count, len } = self.load(level, pgid, from, BRANCH | LEAF)?
        else {
            return Ok(());
        };
        self.push_frame(Frame {
            pgid,
            inline: false,
            branch,
            count,
            next: 0,
            len,
            role,
            lo,
            hi,
            prev: None,
        });
        Ok(())
    }

    fn push_frame(&mut self, f: Frame) {
        let kind = if f.branch { "branch" } else { "leaf" };
        let place = if f.inline {
            format!("inline bucket on page {}", f.pgid)
        } else {
            format!("{kind} page {}", f.pgid)
        };
        if PAGE_HEADER + f.count * ELEMENT > f.len {
            self.problems.push(format!(
                "{place} says it holds {} elements, more than fit in it ({} bytes)",
                f.count, f.len
            ));
        } else if f.branch && f.count == 0 {
            self.problems
                .push(format!("{place} has no elements (damaged page)"));
        } else {
            self.stack.push(f);
        }
    }

    /// Walks the whole database from the root bucket's root page, depth first in key order.
    fn walk(&mut self, root: u64) -> io::Result<()> {
        self.push_page(0, root, Origin::Meta, Role::Roots, None, None)?;
        while let Some(&f) = self.stack.last() {
            let level = self.stack.len() - 1;
            if f.next >= f.count {
                self.stack.pop();
                continue;
            }
            self.stack[level].next += 1;
            if f.branch {
                self.branch_element(level, f)?;
            } else {
                self.leaf_element(level, f)?;
            }
        }
        Ok(())
    }

    fn where_(f: &Frame) -> String {
        if f.inline {
            format!("inline bucket on page {}", f.pgid)
        } else {
            format!("page {}", f.pgid)
        }
    }

    /// Checks key `i` of the page at `level` for order against its predecessor and the parent's
    /// separators. Returns false (after recording a problem) when the page must be abandoned.
    fn check_key(&mut self, level: usize, f: &Frame, i: usize, koff: usize, klen: usize) -> bool {
        let key = &self.bufs[level][koff..koff + klen];
        let key_at = |r: KeyRef| &self.bufs[r.level][r.off..r.off + r.len];
        let msg = if let Some((poff, plen)) = f.prev
            && key <= &self.bufs[level][poff..poff + plen]
        {
            Some(format!(
                "keys out of order on {}: key {i} ({}) does not sort after key {} ({})",
                Self::where_(f),
                show_key(key),
                i - 1,
                show_key(&self.bufs[level][poff..poff + plen])
            ))
        } else if let Some(lo) = f.lo
            && key < key_at(lo)
        {
            Some(format!(
                "keys out of order on {}: key {} sorts before the separator {} that leads to it",
                Self::where_(f),
                show_key(key),
                show_key(key_at(lo))
            ))
        } else if let Some(hi) = f.hi
            && key >= key_at(hi)
        {
            Some(format!(
                "keys out of order on {}: key {} does not sort before the next separator {}",
                Self::where_(f),
                show_key(key),
                show_key(key_at(hi))
            ))
        } else {
            None
        };
        match msg {
            Some(m) => {
                self.problems.push(m);
                false
            }
            None => true,
        }
    }

    fn element_out_of_page(&mut self, level: usize, f: &Frame, i: usize, end: u64) {
        self.problems.push(format!(
            "{}: element {i} points to bytes up to offset {end}, past the end of the page ({} \
             bytes)",
            Self::where_(f),
            f.len
        ));
        self.stack[level].next = f.count;
    }

    fn branch_element(&mut self, level: usize, f: Frame) -> io::Result<()> {
        let i = f.next;
        let buf = &self.bufs[level][..f.len];
        let Some((koff, klen, child)) = branch_key(buf, i) else {
            let end = branch_end(buf, i);
            self.element_out_of_page(level, &f, i, end);
            return Ok(());
        };
        if !self.check_key(level, &f, i, koff, klen) {
            self.stack[level].next = f.count;
            return Ok(());
        }
        self.stack[level].prev = Some((koff, klen));
        let hi = if i + 1 < f.count {
            branch_key(&self.bufs[level][..f.len], i + 1)
                .map(|(off, len, _)| KeyRef { level, off, len })
                .or(f.hi)
        } else {
            f.hi
        };
        let lo = Some(KeyRef {
            level,
            off: koff,
            len: klen,
        });
        self.push_page(level + 1, child, Origin::Branch(f.pgid), f.role, lo, hi)
    }

    fn leaf_element(&mut self, level: usize, f: Frame) -> io::Result<()> {
        let i = f.next;
        let buf = &self.bufs[level][..f.len];
        let e = PAGE_HEADER + i * ELEMENT;
        let flags = le_u32(buf, e);
        let koff = e as u64 + u64::from(le_u32(buf, e + 4));
        let klen = u64::from(le_u32(buf, e + 8));
        let vlen = u64::from(le_u32(buf, e + 12));
        let end = koff + klen + vlen;
        if end > f.len as u64 {
            self.element_out_of_page(level, &f, i, end);
            return Ok(());
        }
        let (koff, klen, vlen) = (koff as usize, klen as usize, vlen as usize);
        let voff = koff + klen;
        if !self.check_key(level, &f, i, koff, klen) {
            self.stack[level].next = f.count;
            return Ok(());
        }
        self.stack[level].prev = Some((koff, klen));
        let is_bucket = flags & BUCKET_LEAF_FLAG != 0;
        match f.role {
            Role::Roots => {
                let name = &self.bufs[level][koff..voff];
                self.bucket_name = show_key(name);
                self.bucket.clear();
                self.bucket.extend_from_slice(name);
                if !is_bucket {
                    self.problems.push(format!(
                        "page {}: root entry {} is a plain key, not a bucket (etcd cannot read \
                         this database)",
                        f.pgid, self.bucket_name
                    ));
                    return Ok(());
                }
                self.crc = crc32c::crc32c_append(self.crc, name);
                let key_bucket = name == b"key";
                self.saw_key |= key_bucket;
                self.saw_meta |= name == b"meta";
                self.open_bucket(level, &f, voff, vlen, Role::Etcd { key_bucket })
            }
            Role::Etcd { key_bucket } => {
                let buf = &self.bufs[level];
                let key = &buf[koff..voff];
                self.crc = crc32c::crc32c_append(self.crc, key);
                // A nested bucket's ForEach value is nil: only its name is hashed.
                if !is_bucket {
                    let value = &buf[voff..voff + vlen];
                    self.crc = crc32c::crc32c_append(self.crc, value);
                    self.visitor.entry(&self.bucket, key, value);
                }
                self.total_key += 1;
                if key_bucket {
                    let rev = revision_main(key);
                    match rev {
                        Some(r) => self.revision = r,
                        None => {
                            let msg = format!(
                                "bucket key, page {}: entry {} is not an etcd revision key",
                                f.pgid,
                                show_key(key)
                            );
                            self.problems.push(msg);
                        }
                    }
                }
                if is_bucket {
                    self.open_bucket(level, &f, voff, vlen, Role::Nested)?;
                }
                Ok(())
            }
            Role::Nested => {
                if is_bucket {
                    self.open_bucket(level, &f, voff, vlen, Role::Nested)?;
                }
                Ok(())
            }
        }
    }

    /// Starts walking the bucket whose 16-byte header (+ inline page) is at `voff` on `level`.
    fn open_bucket(
        &mut self,
        level: usize,
        f: &Frame,
        voff: usize,
        vlen: usize,
        role: Role,
    ) -> io::Result<()> {
        if vlen < BUCKET_HEADER {
            self.problems.push(format!(
                "{}: the bucket header is {vlen} bytes, expected at least {BUCKET_HEADER}",
                self.origin(Origin::Bucket(f.pgid))
            ));
            return Ok(());
        }
        let root = le_u64(&self.bufs[level], voff);
        if root != 0 {
            return self.push_page(level + 1, root, Origin::Bucket(f.pgid), role, None, None);
        }
        // Inline bucket: a page image inside the value. Copy it to the next level's buffer so
        // every frame reads its own buffer.
        let child = level + 1;
        if child >= MAX_DEPTH {
            self.problems.push(format!(
                "the tree is nested deeper than {MAX_DEPTH} levels at page {} (damaged)",
                f.pgid
            ));
            return Ok(());
        }
        while self.bufs.len() <= child {
            self.bufs.push(Vec::new());
        }
        let (parents, rest) = self.bufs.split_at_mut(child);
        let image = &parents[level][voff + BUCKET_HEADER..voff + vlen];
        let dst = &mut rest[0];
        dst.clear();
        dst.extend_from_slice(image);
        let len = image.len();
        if len < PAGE_HEADER {
            self.problems.push(format!(
                "{}: the inline bucket is only {len} bytes (damaged)",
                self.origin(Origin::Bucket(f.pgid))
            ));
            return Ok(());
        }
        let flags = le_u16(&self.bufs[child], 8);
        if flags != LEAF {
            self.problems.push(format!(
                "inline bucket on page {} has invalid type flags {flags:#04x}",
                f.pgid
            ));
            return Ok(());
        }
        let count = le_u16(&self.bufs[child], 10) as usize;
        self.push_frame(Frame {
            pgid: f.pgid,
            inline: true,
            branch: false,
            count,
            next: 0,
            len,
            role,
            lo: None,
            hi: None,
            prev: None,
        });
        Ok(())
    }
}

enum PageInfo {
    Good {
        branch: bool,
        count: usize,
        len: usize,
    },
    Bad,
}

/// Key offset, key length and child pgid of branch element `i`, if it lies inside the page.
fn branch_key(buf: &[u8], i: usize) -> Option<(usize, usize, u64)> {
    let e = PAGE_HEADER + i * ELEMENT;
    let el = buf.get(e..e + ELEMENT)?;
    let koff = e.checked_add(le_u32(el, 0) as usize)?;
    let klen = le_u32(el, 4) as usize;
    let end = koff.checked_add(klen)?;
    (end <= buf.len()).then_some((koff, klen, le_u64(el, 8)))
}

fn branch_end(buf: &[u8], i: usize) -> u64 {
    let e = PAGE_HEADER + i * ELEMENT;
    e as u64 + u64::from(le_u32(buf, e)) + u64::from(le_u32(buf, e + 4))
}

/// `main` of an etcd revision key (8-byte BE main, `_`, 8-byte BE sub, optional `t`).
fn revision_main(key: &[u8]) -> Option<i64> {
    let ok = (key.len() == 17 || (key.len() == 18 && key[17] == b't')) && key[8] == b'_';
    ok.then(|| be_u64(key) as i64)
}

/// A key for a message: printable text in quotes, anything else as (shortened) hex.
fn show_key(k: &[u8]) -> String {
    const MAX: usize = 48;
    let shown = &k[..k.len().min(MAX)];
    let ellipsis = if k.len() > MAX { "…" } else { "" };
    if !shown.is_empty() && shown.iter().all(|b| (0x20..0x7f).contains(b)) {
        format!("`{}{ellipsis}`", String::from_utf8_lossy(shown))
    } else {
        format!("0x{}{ellipsis}", hex::encode(shown))
    }
}

// Fixed-width readers. Callers have bounds-checked `off`; a short slice reads as zero instead of
// panicking, so a logic slip cannot crash the verifier.
fn le_u16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn be_u64(b: &[u8]) -> u64 {
    b.get(..8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    //! Checks against real snapshots committed under `fixtures/snapshots/` (made by a real etcd
    //! 3.4, see its README; each `<name>.status.json` is `etcdctl snapshot status -w json` output
    //! for that file).

    use std::path::PathBuf;

    use rstest::rstest;

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/snapshots")).join(name)
    }

    fn etcdctl_status(name: &str) -> Status {
        let text = std::fs::read_to_string(fixture(&format!("{name}.status.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn sha256_hex(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[rstest]
    #[case::small("small.snapshot", "small")]
    #[case::history_and_compaction("hist.snapshot", "hist")]
    #[case::overflow_pages("overflow.snapshot", "overflow")]
    #[case::defragmented("defrag.snapshot", "defrag")]
    fn real_snapshot_matches_etcdctl_status(#[case] file: &str, #[case] status: &str) {
        let path = fixture(file);
        let report = verify_file(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();

        assert_eq!(report.status, Some(etcdctl_status(status)));
        assert!(report.valid, "problems: {:?}", report.problems);
        assert!(report.problems.is_empty());
        assert!(report.notes.is_empty(), "notes: {:?}", report.notes);
        assert_eq!(report.trailer, Trailer::Ok);
        assert_eq!(report.size, bytes.len() as u64);
        assert_eq!(report.sha256, sha256_hex(&bytes));
    }

    #[test]
    fn raw_db_copy_is_valid_but_needs_skip_hash_check() {
        let path = fixture("small-raw.db");
        let report = verify_file(&path).unwrap();

        assert!(report.valid, "problems: {:?}", report.problems);
        assert_eq!(report.trailer, Trailer::Missing);
        assert_eq!(report.status, Some(etcdctl_status("small-raw")));
        assert_eq!(report.notes.len(), 1);
        assert!(report.notes[0].contains("no sha256 trailer"));
        assert!(report.notes[0].contains("--recover-skip-hash-check"));
        assert_eq!(
            report.sha256,
            sha256_hex(&std::fs::read(&path).unwrap()),
            "sha256 must cover the whole file"
        );
    }

    /// Re-lays a real 4 KiB-page snapshot out with bigger pages: every live page run moves to
    /// `pgid * new_size` with its bytes unchanged (ids, overflow counts and element offsets stay
    /// valid), the metas get the new page size and checksum, and a fresh trailer is appended.
    /// etcd's status must be the same except `totalSize`.
    fn with_page_size(snapshot: &[u8], new_size: usize) -> Vec<u8> {
        const OLD: usize = 4096;
        let body = &snapshot[..snapshot.len() - 32];
        let pages = body.len() / OLD;
        let mut out = vec![0u8; pages * new_size];
        for k in 0..pages {
            let page = &body[k * OLD..];
            let id = le_u64(page, 0) as usize;
            let flags = le_u16(page, 8);
            let overflow = le_u32(page, 12) as usize;
            let span = (overflow + 1) * OLD;
            // Overflow pages carry value bytes, not headers, so only run heads are moved; later
            // heads overwrite whatever stale free pages wrote before them.
            if k < 2 || (id == k && (flags == BRANCH || flags == LEAF) && k + overflow < pages) {
                let span = if k < 2 { OLD } else { span };
                out[k * new_size..k * new_size + span].copy_from_slice(&body[k * OLD..][..span]);
            }
        }
        for m in 0..2 {
            let meta = &mut out[m * new_size + PAGE_HEADER..][..META_LEN];
            meta[8..12].copy_from_slice(&(new_size as u32).to_le_bytes());
            let sum = fnv1a64(&meta[..56]);
            meta[56..64].copy_from_slice(&sum.to_le_bytes());
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    #[rstest]
    fn other_page_sizes_give_the_same_status(
        #[values(8192, 16384, 65536)] page_size: usize,
        #[values("small", "overflow")] name: &str,
    ) {
        let original = std::fs::read(fixture(&format!("{name}.snapshot"))).unwrap();
        let converted = with_page_size(&original, page_size);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big-pages.snapshot");
        std::fs::write(&path, &converted).unwrap();

        let report = verify_file(&path).unwrap();
        let expected = etcdctl_status(name);
        assert!(report.valid, "problems: {:?}", report.problems);
        assert_eq!(report.trailer, Trailer::Ok);
        assert_eq!(
            report.status,
            Some(Status {
                total_size: expected.total_size / 4096 * page_size as u64,
                ..expected
            })
        );
    }

    #[test]
    fn damaged_meta_0_on_big_pages_falls_back_to_meta_1_found_by_probing() {
        let original = std::fs::read(fixture("small.snapshot")).unwrap();
        let mut raw = with_page_size(&original, 16384);
        raw.truncate(raw.len() - 32);
        raw[PAGE_HEADER + 8] ^= 0x01; // page size field of meta 0: now wrong and mis-summed
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw.db");
        std::fs::write(&path, &raw).unwrap();

        let report = verify_file(&path).unwrap();
        assert!(report.valid, "problems: {:?}", report.problems);
        assert_eq!(report.trailer, Trailer::Missing);
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("meta page 0 is damaged") && n.contains("meta page 1")),
            "notes: {:?}",
            report.notes
        );
        let expected = etcdctl_status("small");
        assert_eq!(report.status.map(|s| s.hash), Some(expected.hash));
        assert_eq!(report.status.map(|s| s.total_size), Some(28 * 16384));
    }

    #[rstest]
    #[case::gzip(b"\x1f\x8b\x08\x00rest".as_slice(), "gzip")]
    #[case::zstd(b"\x28\xb5\x2f\xfdrest".as_slice(), "zstd")]
    #[case::xz(b"\xfd7zXZ\x00rest".as_slice(), "xz")]
    #[case::bzip2(b"BZh91AY&SY".as_slice(), "bzip2")]
    #[case::zip(b"PK\x03\x04rest".as_slice(), "zip")]
    #[case::age(b"age-encryption.org/v1\n-> X25519".as_slice(), "age")]
    #[case::age_armor(b"-----BEGIN AGE ENCRYPTED FILE-----\n".as_slice(), "age")]
    fn packed_files_are_named_and_rejected(#[case] head: &[u8], #[case] kind: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        // Padded to the snapshot size pattern so only the magic bytes can give it away.
        let mut data = head.to_vec();
        data.resize(8192 + 32, 0x5a);
        std::fs::write(&path, &data).unwrap();

        let report = verify_file(&path).unwrap();
        assert!(!report.valid);
        assert_eq!(report.status, None);
        assert_eq!(report.problems.len(), 1, "problems: {:?}", report.problems);
        assert!(report.problems[0].contains(kind), "{}", report.problems[0]);
        assert!(report.problems[0].contains("unpack it first"));
    }

    #[test]
    fn problem_list_is_capped() {
        let mut p = Problems::default();
        for i in 0..(MAX_PROBLEMS + 7) {
            p.push(format!("problem {i}"));
        }
        let list = p.into_vec();
        assert_eq!(list.len(), MAX_PROBLEMS + 1);
        assert_eq!(list[MAX_PROBLEMS], "and 7 more problems");
    }

    /// Byte offsets in `small-raw.db` that the structural damage cases aim at.
    struct Spots {
        /// Root leaf element of a bucket, and where its name starts.
        root_entry: fn(&[u8], &[u8]) -> (usize, usize),
        /// Bucket `key`'s root page (a branch page) and its first leaf.
        branch: usize,
        leaf: usize,
    }

    fn root_entry(data: &[u8], name: &[u8]) -> (usize, usize) {
        let root = le_u64(data, PAGE_HEADER + 16) as usize * 4096;
        let count = le_u16(data, root + 10) as usize;
        (0..count)
            .find_map(|i| {
                let e = root + PAGE_HEADER + i * ELEMENT;
                let k = e + le_u32(data, e + 4) as usize;
                let klen = le_u32(data, e + 8) as usize;
                (&data[k..k + klen] == name).then_some((e, k))
            })
            .expect("bucket in the root page")
    }

    fn spots(data: &[u8]) -> Spots {
        let (_, k) = root_entry(data, b"key");
        let branch = le_u64(data, k + 3) as usize * 4096;
        assert_eq!(le_u16(data, branch + 8), BRANCH, "fixture layout changed");
        let leaf = le_u64(data, branch + PAGE_HEADER + 8) as usize * 4096;
        assert_eq!(le_u16(data, leaf + 8), LEAF, "fixture layout changed");
        Spots {
            root_entry,
            branch,
            leaf,
        }
    }

    fn put_u64(data: &mut [u8], off: usize, v: u64) {
        data[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[rstest]
    #[case::leaf_reached_twice("is reached twice", |d: &mut Vec<u8>, s: &Spots| {
        // Duplicate child pointer: reported, not hashed twice (that would change the status).
        let first = le_u64(d, s.branch + PAGE_HEADER + 8);
        put_u64(d, s.branch + PAGE_HEADER + ELEMENT + 8, first);
    })]
    #[case::keys_swapped("keys out of order on page", |d: &mut Vec<u8>, s: &Spots| {
        let e0 = s.leaf + PAGE_HEADER;
        let e1 = e0 + ELEMENT;
        let k0 = e0 + le_u32(d, e0 + 4) as usize;
        let k1 = e1 + le_u32(d, e1 + 4) as usize;
        let first: Vec<u8> = d[k0..k0 + 17].to_vec();
        d.copy_within(k1..k1 + 17, k0);
        d[k1..k1 + 17].copy_from_slice(&first);
    })]
    #[case::element_offset_past_page("past the end of the page", |d: &mut Vec<u8>, s: &Spots| {
        d[s.leaf + PAGE_HEADER + 4..][..4].copy_from_slice(&70_000u32.to_le_bytes());
    })]
    #[case::element_count_too_big("more than fit in it", |d: &mut Vec<u8>, s: &Spots| {
        d[s.leaf + 10..s.leaf + 12].copy_from_slice(&0xffffu16.to_le_bytes());
    })]
    #[case::child_is_a_meta_page("which is a meta page", |d: &mut Vec<u8>, s: &Spots| {
        put_u64(d, s.branch + PAGE_HEADER + 8, 1);
    })]
    #[case::not_etcd("not etcd's: its root (page 27) has no `key` bucket", |d: &mut Vec<u8>, s: &Spots| {
        let (_, k) = (s.root_entry)(d, b"key");
        d[k + 2] = b'z'; // `kez` still sorts between `cluster` and `lease`
    })]
    #[case::root_entry_not_a_bucket("is a plain key, not a bucket", |d: &mut Vec<u8>, s: &Spots| {
        let (e, _) = (s.root_entry)(d, b"meta");
        d[e] &= !1;
    })]
    #[case::freelist_past_end("the meta page's freelist points to page 9999, past the end", |d: &mut Vec<u8>, _: &Spots| {
        for m in [PAGE_HEADER, 4096 + PAGE_HEADER] {
            put_u64(d, m + 32, 9999);
            let sum = fnv1a64(&d[m..m + 56]);
            put_u64(d, m + 56, sum);
        }
    })]
    fn structural_damage_is_reported(
        #[case] words: &str,
        #[case] damage: fn(&mut Vec<u8>, &Spots),
    ) {
        let mut data = std::fs::read(fixture("small-raw.db")).unwrap();
        let at = spots(&data);
        damage(&mut data, &at);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.db");
        std::fs::write(&path, &data).unwrap();

        let report = verify_file(&path).unwrap();
        assert!(!report.valid);
        assert_eq!(report.status, None, "no status from a damaged tree");
        assert!(
            report.problems.iter().any(|p| p.contains(words)),
            "expected {words:?} in {:?}",
            report.problems
        );
        assert!(
            report.problems.iter().all(|p| p.contains("page")),
            "every problem names its page: {:?}",
            report.problems
        );
    }

    #[test]
    fn random_damage_never_panics_and_is_always_caught_by_the_trailer() {
        let original = std::fs::read(fixture("small.snapshot")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mutant.snapshot");
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for round in 0..300 {
            let mut data = original.clone();
            // Aim mostly at page headers and element arrays, where the walker's bounds checks
            // live; sometimes anywhere.
            for _ in 0..1 + next(6) {
                let at = if next(4) == 0 {
                    next(data.len() - 32)
                } else {
                    next(28) * 4096 + next(256)
                };
                data[at] ^= 1 << next(8);
            }
            std::fs::write(&path, &data).unwrap();
            let report = verify_file(&path).unwrap();
            assert!(!report.valid, "round {round}: a modified snapshot passed");
            assert_eq!(report.trailer, Trailer::Mismatch, "round {round}");
            assert!(report.problems.len() <= MAX_PROBLEMS + 1, "round {round}");
        }
    }

    #[test]
    fn keys_are_shown_readably() {
        assert_eq!(show_key(b"members"), "`members`");
        assert_eq!(show_key(&[0, 0, 1, b'_']), "0x0000015f");
        assert_eq!(show_key(&[b'a'; 60]), format!("`{}…`", "a".repeat(48)));
    }
}
