//! Native verification of etcd snapshot files (no etcd needed).
//!
//! PLACEHOLDER: the real implementation (sha256 trailer + bbolt walk + etcd status values) lands
//! with the verify work; the types below are the agreed interface.

use std::path::{Path, PathBuf};

use serde::Serialize;

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

/// Verifies one snapshot file in a single streaming pass with constant memory.
///
/// I/O errors (file missing, unreadable) are returned as `Err`; damage is reported in the
/// [`Report`].
pub fn verify_file(path: &Path) -> std::io::Result<Report> {
    Err(std::io::Error::other(format!(
        "{}: snapshot verification is not implemented yet",
        path.display()
    )))
}
