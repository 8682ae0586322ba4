//! Proxmox VE API client (reqwest + rustls), task polling and VM checks.
