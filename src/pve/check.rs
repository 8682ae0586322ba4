//! Per-VM preflight (`vm-check`).
