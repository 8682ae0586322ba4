//! etcd snapshot files: verification, storage layout, retention, and taking a new one.

pub mod compare;
pub mod follow;
pub mod prune;
pub mod retention;
pub mod store;
pub mod take;
pub mod verify;
pub mod xray;
