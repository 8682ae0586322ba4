//! Proxmox VE API client (reqwest + rustls), task polling, VM mapping and VM checks.
//!
//! Layout:
//! - [`client`]: [`PveClient`] and its builder: auth header, TLS mode, retries for GETs, typed
//!   endpoints and the snapshot/power writes (which return a [`Upid`]).
//! - [`task`]: UPID parsing and [`PveClient::wait_for_task`] (`crate::poll` schedule, Reporter spinner).
//! - [`error`]: [`PveError`], one error type that names the VM / node / path it concerns.
//! - [`tls`]: certificate pinning (sha256 fingerprint) and CA-file trust.
//! - [`types`]: response shapes, deserialised leniently (PVE sends 0/1 for booleans, numbers as
//!   strings, and omits keys freely).
//! - [`names`]: snapshot names (`talosdr-<label>-<yymmddhhmm>`), validated before any API call.
//! - [`discover`]: mapping cluster nodes to VMs; [`check`]: per-VM preflight (`vm-check`).
//!
//! The facts behind all of this are in `shared/reference/proxmox.md`.

pub mod auth;
pub mod check;
pub mod client;
pub mod discover;
pub mod error;
pub mod names;
pub mod task;
pub mod tls;
pub mod types;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use auth::ApiToken;
pub use client::{
    BackupVolume, CloneRequest, PveClient, PveClientBuilder, RestoreRequest, RetryConfig,
    SnapshotRequest, StorageInfo, mac_of, with_mac,
};
pub use error::{PveError, Target};
pub use names::SnapshotName;
pub use task::{PollConfig, TaskOutcome, Upid};
pub use tls::TlsMode;
pub use types::VmRef;

/// Environment variable holding the API endpoint (bpg Terraform provider convention).
pub const ENV_ENDPOINT: &str = "PROXMOX_VE_ENDPOINT";
/// Environment variable holding the API token `USER@REALM!TOKENID=SECRET`.
pub const ENV_API_TOKEN: &str = "PROXMOX_VE_API_TOKEN";

/// The `[proxmox]` section of `profile.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct PveConfig {
    /// `https://host:8006` (with or without `/api2/json`); `PROXMOX_VE_ENDPOINT` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// File holding the API token (mode 0600); relative to the profile directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// sha256 fingerprint(s) of the server certificate, `AA:BB:…` (comma-separated for several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// CA certificate(s) to trust, e.g. the cluster's `pve-root-ca.pem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Disable certificate checks (warned about on every run).
    #[serde(default)]
    pub insecure: bool,
    #[serde(default = "default_true")]
    pub snapshot_before_restore: bool,
    #[serde(default = "default_max_parallel")]
    pub max_parallel: usize,
    #[serde(default = "default_keep_sets")]
    pub keep_sets: usize,
    /// VMID of a template VM with the Talos ISO attached: `rebuild-node --from template` clones
    /// it (full clone) to replace a lost VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<u32>,
}

fn default_true() -> bool {
    true
}
fn default_max_parallel() -> usize {
    4
}
fn default_keep_sets() -> usize {
    3
}

impl Default for PveConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            token_file: None,
            fingerprint: None,
            ca_file: None,
            insecure: false,
            snapshot_before_restore: true,
            max_parallel: default_max_parallel(),
            keep_sets: default_keep_sets(),
            template: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let cfg: PveConfig = toml::from_str(r#"endpoint = "https://pve1:8006""#).unwrap();
        assert!(cfg.snapshot_before_restore);
        assert_eq!(cfg.max_parallel, 4);
        assert_eq!(cfg.keep_sets, 3);
        assert!(!cfg.insecure);
        assert!(toml::from_str::<PveConfig>("endpiont = \"x\"").is_err());
        let back = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<PveConfig>(&back).unwrap(), cfg);
    }
}
