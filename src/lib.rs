//! talos-dr: backup and disaster recovery of etcd for Talos Linux clusters on Proxmox VE.
//!
//! The library holds all logic and never prints; the `talos-dr` binary parses arguments, renders
//! reporter events and maps results to exit codes.
//!
//! Work is modelled as *stages*. A command such as `restore` runs a playbook — an ordered list of
//! stages — and the engine checkpoints after every stage, so that an interrupted run can be resumed
//! without repeating a destructive step. Stages talk to the outside world only through [`talos`]
//! (talosctl), [`kube`] (kubectl) and [`pve`] (the Proxmox VE API), which makes each stage testable
//! against the simulator (`sim`, built with the default `demo` feature; not part of the API).

pub mod backup;
pub(crate) mod chan;
pub mod check;
pub mod config;
pub mod engine;
pub mod error;
pub mod exec;
pub mod fleet;
pub mod fsutil;
pub mod kube;
pub mod lock;
pub mod machine_config;
pub mod metrics;
pub mod offsite;
pub mod pack;
pub mod poll;
pub mod profile;
pub mod pve;
pub mod rebuild;
pub mod salvage;
pub mod schedule;
pub mod sets;
#[cfg(feature = "demo")]
#[doc(hidden)]
pub mod sim;
pub mod snapshot;
pub mod stages;
pub mod status;
pub mod table;
pub mod talos;
pub mod ui;

pub use error::{Exit, UserError};
