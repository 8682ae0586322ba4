//! One integration-test binary (ripgrep/uv style): modules per area.

mod common;
mod kube;
mod monitor;
mod offsite;
mod pack;
mod pve;
mod restore;
mod snapshot_cli;
mod verify;
