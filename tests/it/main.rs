//! One integration-test binary (ripgrep/uv style): modules per area.

mod common;
mod kube;
mod pve;
mod pve_fake;
mod restore;
mod sets;
mod snapshot_cli;
mod verify;
