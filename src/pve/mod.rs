//! Proxmox VE API client (reqwest + rustls), task polling and VM checks.

use std::path::PathBuf;

/// The `[proxmox]` section of a profile.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PveConfig {
    pub endpoint: Option<String>,
    pub token_file: Option<PathBuf>,
    pub fingerprint: Option<String>,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default = "yes")]
    pub snapshot_before_restore: bool,
    #[serde(default = "four")]
    pub max_parallel: usize,
    #[serde(default = "three")]
    pub keep_sets: usize,
}

fn yes() -> bool {
    true
}
fn four() -> usize {
    4
}
fn three() -> usize {
    3
}
