//! One integration-test binary (ripgrep/uv style): modules per area.

mod backup;
mod cli_snapshots;
mod common;
mod demo;
mod disasters;
mod etcd_maker;
mod kube;
mod monitor;
mod offsite;
mod pack;
mod proxmox_cli;
mod pve;
mod pve_sim;
mod restore;
mod sets;
mod sim_disasters;
mod sim_golden;
mod snapshot_cli;
mod verify;
mod xray;
