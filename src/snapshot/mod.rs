//! etcd snapshot files: verification, storage layout and retention.

pub mod verify;
