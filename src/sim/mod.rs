//! A simulated Talos cluster for the tests and `talos-dr demo`. Real runs never touch it.
//!
//! **Not part of the product API:** it exists only with the default `demo` cargo feature, is
//! hidden from the docs, and may change with any release. A build without `demo` has neither this
//! module nor its server stack (axum, hyper's server side, rcgen, tokio-rustls).
//!
//! The cluster lives in one JSON file ([`state::Cluster`]) named by `TALOS_DR_SIM_STATE`.
//! `talos-dr __sim talosctl …` behaves like talosctl v1.9 against that state (syntax, exit codes,
//! stdout/stderr split and output formats as `reference/talos.md` §12 lists them), or like
//! 1.10–1.14 when the state's `talos_version` says so (§13); calls go through the talosconfig's
//! endpoints (or `-e`) as apid proxies them. Tests put a two-line shim named `talosctl` first on
//! `PATH`. Every call is appended to
//! `<state>.calls.jsonl`, so tests can assert exactly which commands ran. Faults are injected by
//! editing the state file.
//!
//! [`kube_api`] serves the same cluster as a minimal Kubernetes API over plain HTTP, for the
//! real `kubectl`; its faults live in the state file's `kube` section.
//!
//! [`pve_api`] serves the cluster's VMs as a Proxmox VE API over HTTPS (a fresh self-signed
//! certificate, pinned by fingerprint), validating every request against the official schema
//! subset; its VMs, tasks and faults live in the state file's `pve` section. It is the one
//! stateful Proxmox VE fake of the tests and the benchmark. For a rebuild of a lost VM it also
//! has storages with backups, restore, clone, VM config and destroy, and hosts that are down;
//! a VM that boots Talos with a MAC that has a DHCP reservation brings its node up
//! (`state/machine.rs`: machine configs, maintenance mode, installs, etcd membership).
//!
//! Both servers are axum routers on hyper (`http.rs`).

pub mod demo;
mod http;
pub mod kube_api;
pub mod kubectl;
pub mod pve_api;
pub mod state;
pub mod talosctl;

pub const ENV_STATE: &str = "TALOS_DR_SIM_STATE";
