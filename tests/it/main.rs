//! One integration-test binary (ripgrep/uv style): modules per area.

mod backup;
mod check_cli;
mod cli_snapshots;
mod common;
mod demo;
mod disasters;
mod etcd_maker;
mod fleet;
mod kube;
mod monitor;
mod offsite;
mod offsite_fixes;
mod pack;
mod proxmox_cli;
mod pve;
mod pve_sim;
mod rebuild;
mod restore;
mod retention_cli;
mod sets;
mod sim_disasters;
mod sim_golden;
mod sim_rebuild;
mod snapshot_cli;
mod status;
mod verify;
