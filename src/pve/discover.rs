//! Mapping cluster nodes to VMs (`profile discover`).
