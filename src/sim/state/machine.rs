//! Machine configs, maintenance mode, installs, etcd member IDs, and the link between the
//! simulated Proxmox VMs and the Talos nodes they run (`reference/talos.md` §14,
//! `reference/proxmox.md` §12).

use serde::{Deserialize, Serialize};

use super::pve_storage::{Backup, BootImage, Storage};
use super::{Cluster, DialError, Etcd, EtcdVolume, Node};

/// The secrets every node of one Talos cluster shares (`talosctl gen secrets`). Values are fake
/// (base64 of a marker text), shaped like the real ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secrets {
    pub cluster_name: String,
    /// `cluster.id` (base64 of 32 bytes).
    pub id: String,
    /// `cluster.secret`.
    pub secret: String,
    /// `cluster.ca.crt` / `.key` (Kubernetes CA, base64 PEM).
    pub ca_crt: String,
    pub ca_key: String,
    /// `cluster.secretboxEncryptionSecret`: encrypts Secrets in etcd.
    pub secretbox: String,
    /// `cluster.token` (`abcdef.0123456789abcdef`).
    pub bootstrap_token: String,
    /// `machine.token` (trustd).
    pub machine_token: String,
    /// `machine.ca` (Talos API CA).
    pub os_ca_crt: String,
    pub os_ca_key: String,
    /// `cluster.etcd.ca`.
    pub etcd_ca_crt: String,
    pub etcd_ca_key: String,
    /// `cluster.controlPlane.endpoint`.
    pub endpoint: String,
}

impl Default for Secrets {
    fn default() -> Self {
        Self::generate("demo", "https://10.5.0.10:6443")
    }
}

impl Secrets {
    /// Secrets for a cluster named `name`; another name gives other secrets (a config "from
    /// another cluster").
    pub fn generate(name: &str, endpoint: &str) -> Self {
        let b = |what: &str| base64(format!("simulated {what} of cluster {name}").as_bytes());
        let pem = |what: &str, kind: &str| {
            base64(
                format!(
                    "-----BEGIN {kind}-----\nsimulated {what} of cluster {name}\n-----END {kind}-----\n"
                )
                .as_bytes(),
            )
        };
        let h = fnv(name);
        Self {
            cluster_name: name.into(),
            id: b("cluster id"),
            secret: b("cluster secret"),
            ca_crt: pem("kubernetes CA", "CERTIFICATE"),
            ca_key: pem("kubernetes CA key", "EC PRIVATE KEY"),
            secretbox: b("secretbox encryption secret"),
            bootstrap_token: format!("{:06x}.{:016x}", h & 0xff_ffff, h.rotate_left(17)),
            machine_token: format!("{:06x}.{:016x}", (h >> 24) & 0xff_ffff, h.rotate_left(29)),
            os_ca_crt: pem("Talos API CA", "CERTIFICATE"),
            os_ca_key: pem("Talos API CA key", "ED25519 PRIVATE KEY"),
            etcd_ca_crt: pem("etcd CA", "CERTIFICATE"),
            etcd_ca_key: pem("etcd CA key", "EC PRIVATE KEY"),
            endpoint: endpoint.into(),
        }
    }

    /// A Talos v1alpha1 machine config for one node, keys as `talosctl gen config` writes them
    /// (4-space indent). Workers get the CAs' certificates only.
    pub fn config(&self, node: &Node, talos_version: &str, kube_version: &str) -> String {
        let control = node.is_control_plane();
        let mut y = String::new();
        let mut line = |indent: usize, text: &str| {
            y.push_str(&" ".repeat(indent * 4));
            y.push_str(text);
            y.push('\n');
        };
        line(0, "version: v1alpha1");
        line(0, "debug: false");
        line(0, "persist: true");
        line(0, "machine:");
        line(1, &format!("type: {}", node.machine_type));
        line(1, &format!("token: {}", self.machine_token));
        line(1, "ca:");
        line(2, &format!("crt: {}", self.os_ca_crt));
        line(
            2,
            &format!("key: {}", if control { &self.os_ca_key } else { "\"\"" }),
        );
        line(1, "certSANs: []");
        line(1, "kubelet:");
        line(
            2,
            &format!("image: ghcr.io/siderolabs/kubelet:{kube_version}"),
        );
        line(2, "defaultRuntimeSeccompProfileEnabled: true");
        line(2, "disableManifestsDirectory: true");
        line(1, "network:");
        line(2, &format!("hostname: {}", node.hostname));
        line(1, "install:");
        line(2, "disk: /dev/sda");
        line(
            2,
            &format!("image: ghcr.io/siderolabs/installer:{talos_version}"),
        );
        line(2, "wipe: false");
        line(1, "features:");
        line(2, "rbac: true");
        line(2, "stableHostname: true");
        line(2, "apidCheckExtKeyUsage: true");
        line(2, "diskQuotaSupport: true");
        line(0, "cluster:");
        line(1, &format!("id: {}", self.id));
        line(1, &format!("secret: {}", self.secret));
        line(1, "controlPlane:");
        line(2, &format!("endpoint: {}", self.endpoint));
        line(1, &format!("clusterName: {}", self.cluster_name));
        line(1, "network:");
        line(2, "dnsDomain: cluster.local");
        line(2, "podSubnets:");
        line(3, "- 10.244.0.0/16");
        line(2, "serviceSubnets:");
        line(3, "- 10.96.0.0/12");
        line(1, &format!("token: {}", self.bootstrap_token));
        if control {
            line(1, &format!("secretboxEncryptionSecret: {}", self.secretbox));
        }
        line(1, "ca:");
        line(2, &format!("crt: {}", self.ca_crt));
        line(
            2,
            &format!("key: {}", if control { &self.ca_key } else { "\"\"" }),
        );
        if control {
            line(1, "apiServer:");
            line(
                2,
                &format!("image: registry.k8s.io/kube-apiserver:{kube_version}"),
            );
            line(1, "controllerManager:");
            line(
                2,
                &format!("image: registry.k8s.io/kube-controller-manager:{kube_version}"),
            );
            line(1, "scheduler:");
            line(
                2,
                &format!("image: registry.k8s.io/kube-scheduler:{kube_version}"),
            );
            line(1, "etcd:");
            line(2, "ca:");
            line(3, &format!("crt: {}", self.etcd_ca_crt));
            line(3, &format!("key: {}", self.etcd_ca_key));
        }
        line(1, "discovery:");
        line(2, "enabled: true");
        y
    }
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The value at a dotted key path (`cluster.id`) of the `version: v1alpha1` document of a
/// machine config: a plain indentation walk, enough for the configs the simulator sees.
pub fn yaml_value(config: &str, path: &str) -> Option<String> {
    let doc = config
        .split("\n---")
        .find(|d| d.lines().any(|l| l.trim_end() == "version: v1alpha1"))?;
    let keys: Vec<&str> = path.split('.').collect();
    let mut depth = 0;
    let mut indent_of: Vec<usize> = Vec::new();
    for l in doc.lines() {
        let trimmed = l.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let indent = l.len() - trimmed.len();
        while indent_of.last().is_some_and(|i| indent <= *i) {
            indent_of.pop();
            depth = depth.min(indent_of.len());
        }
        let Some((k, v)) = trimmed.split_once(':') else {
            continue;
        };
        if depth == indent_of.len() && depth < keys.len() && k.trim() == keys[depth] {
            if depth + 1 == keys.len() {
                return Some(v.trim().trim_matches('"').to_owned());
            }
            indent_of.push(indent);
            depth += 1;
        }
    }
    None
}

/// Why `apply-config` refuses a config (`failed to parse config: …`, or validation errors).
pub enum ConfigProblem {
    Parse(String),
    Invalid(Vec<String>),
}

/// What machined's config loader and `Validate` would say about `text` (the checks the
/// simulator models: YAML shape, `machine`, `machine.type`, the install disk).
pub fn check_config(text: &str) -> Result<(), ConfigProblem> {
    if text.trim().is_empty() {
        return Err(ConfigProblem::Parse("config not found".into()));
    }
    for (i, l) in text.lines().enumerate() {
        if l.starts_with('\t') || l.trim_start().starts_with('\t') {
            return Err(ConfigProblem::Parse(format!(
                "decode error: yaml: line {}: found character that cannot start any token",
                i + 1
            )));
        }
        let t = l.trim();
        let plain = t.is_empty()
            || t.starts_with('#')
            || t.starts_with('-')
            || t == "---"
            || t.contains(':');
        if !plain {
            return Err(ConfigProblem::Parse(format!(
                "decode error: yaml: line {}: could not find expected ':'",
                i + 1
            )));
        }
    }
    if yaml_value(text, "version").is_none() {
        return Err(ConfigProblem::Parse("missing kind".into()));
    }
    let mut errors = Vec::new();
    match yaml_value(text, "machine.type").as_deref() {
        None if !text.lines().any(|l| l.trim_end() == "machine:") => {
            errors.push("machine instructions are required".to_owned());
        }
        Some("controlplane" | "worker" | "init") => {}
        other => errors.push(format!("unknown machine type {:?}", other.unwrap_or(""))),
    }
    if yaml_value(text, "machine.install.disk").is_none() && !text.contains("diskSelector:") {
        errors.push("either install disk or diskSelector should be defined".to_owned());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigProblem::Invalid(errors))
    }
}

/// go-multierror's format: `1 error occurred:\n\t* …\n\n`.
pub fn multierror(errors: &[String]) -> String {
    let head = if errors.len() == 1 {
        "1 error occurred:".to_owned()
    } else {
        format!("{} errors occurred:", errors.len())
    };
    let items: Vec<String> = errors.iter().map(|e| format!("\t* {e}")).collect();
    format!("{head}\n{}\n\n", items.join("\n"))
}

/// A node booted from the Talos ISO at `address`: maintenance mode, no config, no etcd, a
/// random hostname (`talos-xxx-yyy`, from its MAC).
pub fn maintenance_node(address: &str, mac: &str) -> Node {
    let h = fnv(mac);
    const L: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let part = |shift: u32| -> String {
        (0..3)
            .map(|i| L[((h >> (shift + i * 6)) % L.len() as u64) as usize] as char)
            .collect()
    };
    let etcd = Etcd {
        state: "Waiting".into(),
        health: "?".into(),
        events: vec![("Waiting".into(), "Waiting for the machine config".into())],
        data_empty: true,
        ..Etcd::default()
    };
    Node {
        address: address.into(),
        hostname: format!("talos-{}-{}", part(0), part(20)),
        machine_type: "unknown".into(),
        reachable: true,
        dial_error: DialError::default(),
        etcd,
        etcd_volume: EtcdVolume::default(),
        time_unsynced: false,
        etcd_unconfigured: false,
        machine_config: None,
        maintenance: true,
        stage: None,
        stage_pending: Vec::new(),
    }
}

impl Node {
    /// The stage `get machinestatus` shows.
    pub fn machine_stage(&self) -> String {
        match (&self.stage, self.maintenance) {
            (Some(s), _) => s.clone(),
            (None, true) => "maintenance".into(),
            (None, false) => "running".into(),
        }
    }
}

impl Cluster {
    /// The node's machine config: its own, or the one generated from the cluster's secrets.
    pub fn machine_config(&self, node: &Node) -> Option<String> {
        if node.maintenance {
            return None;
        }
        Some(node.machine_config.clone().unwrap_or_else(|| {
            self.secrets
                .config(node, &self.talos_version, &self.kube.version)
        }))
    }

    /// The etcd member ID of the member at `address` (`%016x` in `etcd members`).
    pub fn member_id(&self, address: &str) -> u64 {
        self.member_ids.get(address).copied().unwrap_or_else(|| {
            self.node(address)
                .map_or_else(|| fnv(address), |n| fnv(&n.hostname))
        })
    }

    /// Writes generation 0's member list down (it defaults to every control-plane node), so
    /// that nodes added later do not become members by default.
    pub fn pin_members(&mut self) {
        if !self.etcd_members.contains_key(&0) {
            let m = self.members_of(0);
            self.etcd_members.insert(0, m);
        }
        // Members keep the name they registered with when their node is replaced.
        for g in self.etcd_members.keys().copied().collect::<Vec<_>>() {
            for a in self.members_of(g) {
                if let Some(n) = self.node(&a)
                    && !self.member_names.contains_key(&a)
                {
                    let h = n.hostname.clone();
                    self.member_names.insert(a, h);
                }
            }
        }
        // And their IDs (by default derived from the hostname of the node at that address).
        for g in self.etcd_members.keys().copied().collect::<Vec<_>>() {
            for a in self.members_of(g) {
                if !self.member_ids.contains_key(&a) {
                    let id = self.member_id(&a);
                    self.member_ids.insert(a, id);
                }
            }
        }
    }

    /// `etcd remove-member ID`: drops the member from the newest cluster (etcd's strict
    /// reconfig check first). Errors are etcd's.
    pub fn remove_member(&mut self, id: u64) -> Result<(), String> {
        self.pin_members();
        let generation = self.etcd_generation;
        let members = self.members_of(generation);
        let Some(address) = members.iter().find(|a| self.member_id(a) == id).cloned() else {
            return Err("member not found".into());
        };
        let up = |c: &Cluster, a: &str| {
            c.node(a).is_some_and(|n| {
                n.reachable
                    && !n.etcd.data_empty
                    && n.etcd.generation == generation
                    && n.etcd.state == "Running"
            })
        };
        let voters: Vec<&String> = members
            .iter()
            .filter(|a| !self.node(a).is_some_and(|n| n.etcd.learner))
            .collect();
        let is_voter = voters.iter().any(|a| **a == address);
        if is_voter && voters.len() == 1 {
            return Err("re-configuration failed due to not enough started members".into());
        }
        // mayRemoveMember: removing a started voter needs every other voter connected.
        if is_voter && up(self, &address) && voters.iter().any(|a| !up(self, a)) {
            return Err("etcdserver: unhealthy cluster".into());
        }
        if let Some(m) = self.etcd_members.get_mut(&generation) {
            m.retain(|a| *a != address);
        }
        // The removed member's etcd stops for good.
        if let Some(n) = self.node_mut(&address)
            && n.reachable
            && n.etcd.state == "Running"
            && n.etcd.generation == generation
        {
            n.etcd.set(
                "Failed",
                "Fail",
                "Failed to run: etcdserver: the member has been permanently removed from the cluster",
            );
        }
        Ok(())
    }

    /// Boots and stops the Talos nodes of the VMs the simulator links ([`super::Vm::boot`]):
    /// a running VM whose MAC has a DHCP reservation brings its node up at that address (from
    /// its disk: the node as backed up, or maintenance mode from the ISO); a stopped VM, or
    /// one on a host that is down, takes its node away.
    pub fn sync_guests(&mut self, now_ms: i64) -> bool {
        let mut changed = false;
        for i in 0..self.pve.vms.len() {
            let vm = &self.pve.vms[i];
            if vm.boot.is_none() && vm.booted.is_none() {
                continue;
            }
            let host_down = self.pve.is_offline(&vm.node);
            let up = vm.status == "running" && !host_down && !vm.template;
            match (&vm.booted, up) {
                (Some(address), true) => {
                    if let Some(n) = self.nodes.iter_mut().find(|n| n.address == *address)
                        && !n.reachable
                    {
                        n.reachable = true;
                        changed = true;
                    }
                }
                (Some(address), false) => {
                    if let Some(n) = self.nodes.iter_mut().find(|n| n.address == *address)
                        && n.reachable
                    {
                        n.reachable = false;
                        if host_down {
                            n.dial_error = DialError::Timeout;
                        }
                        changed = true;
                    }
                }
                (None, true) => {
                    let Some(address) = self.pve.dhcp.get(&vm.mac.to_ascii_uppercase()).cloned()
                    else {
                        continue;
                    };
                    let Some(boot) = vm.boot.clone() else {
                        continue;
                    };
                    let mac = vm.mac.clone();
                    self.pve.vms[i].booted = Some(address.clone());
                    self.boot_node(&address, &mac, boot, now_ms);
                    changed = true;
                }
                (None, false) => {}
            }
        }
        changed
    }

    /// A VM's disk comes up as the Talos node at `address` (replacing a dead node there).
    fn boot_node(&mut self, address: &str, mac: &str, boot: BootImage, now_ms: i64) {
        self.pin_members();
        let node = match boot {
            BootImage::TalosIso => maintenance_node(address, mac),
            BootImage::Installed { node } => {
                let mut n = *node;
                n.address = address.into();
                n.reachable = true;
                n.dial_error = DialError::default();
                n.etcd.pending.clear();
                n.etcd.join_loop = true;
                n
            }
        };
        let old_data = node.is_control_plane() && !node.maintenance && !node.etcd.data_empty;
        match self.nodes.iter().position(|n| n.address == address) {
            Some(j) => self.nodes[j] = node,
            None => self.nodes.push(node),
        }
        if old_data {
            self.start_from_disk(address, now_ms);
        } else if let Some(n) = self.node_mut(address)
            && n.is_control_plane()
        {
            n.etcd.set("Preparing", "?", "Running pre state");
        }
    }

    /// A restored VM starts etcd on the data its disk holds: as its old member while that is
    /// still in the cluster (HEALTH follows quorum), else it restarts forever.
    fn start_from_disk(&mut self, address: &str, now_ms: i64) {
        let Some(n) = self.node(address) else { return };
        let generation = n.etcd.generation;
        let still_member = self.members_of(generation).iter().any(|a| a == address);
        if still_member {
            let mut t = super::Transition::at(now_ms, "Running", "?", "");
            t.old_data = true;
            if let Some(n) = self.node_mut(address) {
                n.etcd.pending.push(t);
            }
        } else {
            if let Some(n) = self.node_mut(address) {
                n.etcd.set(
                    "Failed",
                    "Fail",
                    "Failed to run: etcdserver: the member has been permanently removed from the cluster",
                );
            }
            if !self.etcd_restart_loops.iter().any(|a| a == address) {
                self.etcd_restart_loops.push(address.to_owned());
            }
        }
    }

    /// Installs in flight move on: `installing` → `rebooting` (no answer) → `running` with the
    /// applied config; a control plane's etcd then enters its pre-stage (join loop).
    pub fn advance_stages(&mut self, now_ms: i64) -> bool {
        let mut changed = false;
        for n in &mut self.nodes {
            while let Some(&(at, _)) = n.stage_pending.first() {
                if at > now_ms {
                    break;
                }
                let (_, stage) = n.stage_pending.remove(0);
                changed = true;
                match stage.as_str() {
                    "rebooting" => {
                        n.reachable = false;
                        n.stage = Some(stage);
                    }
                    "running" => {
                        n.reachable = true;
                        n.maintenance = false;
                        n.stage = None;
                        let config = n.machine_config.clone().unwrap_or_default();
                        if let Some(t) = yaml_value(&config, "machine.type") {
                            n.machine_type = t;
                        }
                        if let Some(h) = yaml_value(&config, "machine.network.hostname") {
                            n.hostname = h;
                        }
                        let mut etcd = Etcd {
                            data_empty: true,
                            join_loop: true,
                            events: Vec::new(),
                            ..Etcd::default()
                        };
                        if n.is_control_plane() {
                            etcd.set("Preparing", "?", "Running pre state");
                        } else {
                            etcd.set("Waiting", "?", "etcd runs on control-plane nodes only");
                        }
                        n.etcd = etcd;
                    }
                    _ => n.stage = Some(stage),
                }
            }
        }
        changed
    }

    /// Learners whose time has come become voting members.
    pub fn promote_learners(&mut self, now_ms: i64) -> bool {
        let mut changed = false;
        for n in &mut self.nodes {
            if n.etcd.learner && n.etcd.promote_at_ms.is_some_and(|at| at <= now_ms) {
                n.etcd.learner = false;
                n.etcd.promote_at_ms = None;
                changed = true;
            }
        }
        changed
    }

    /// Whether a node that joins now would share its config's cluster: same `cluster.id` as
    /// the cluster's secrets (a config from another cluster cannot reach this etcd).
    pub fn same_cluster(&self, node: &Node) -> bool {
        node.machine_config
            .as_deref()
            .and_then(|c| yaml_value(c, "cluster.id"))
            .is_none_or(|id| id == self.secrets.id)
    }

    /// Adds what a rebuild needs to the example cluster: a shared NFS storage and a PBS one with
    /// a backup of every VM on each (their disks hold the nodes as they are now), a spare host
    /// `pve4` with a template VM 9000 (on the shared storage, booting the Talos ISO), DHCP
    /// reservations for every VM's MAC, and the VMs linked to their nodes. `backup_ctime` is the backups' time (epoch s).
    pub fn add_rebuild_fixtures(&mut self, backup_ctime: i64) {
        self.pin_members();
        let mut nfs = Storage {
            id: "nfs-backup".into(),
            kind: "nfs".into(),
            shared: true,
            content: vec!["backup".into(), "images".into(), "iso".into()],
            nodes: None,
            disabled: false,
            list_error: None,
        };
        if !self.pve.storages.iter().any(|s| s.id == nfs.id) {
            self.pve.storages.push(nfs.clone());
        }
        nfs.id = "pbs".into();
        nfs.kind = "pbs".into();
        nfs.content = vec!["backup".into()];
        if !self.pve.storages.iter().any(|s| s.id == nfs.id) {
            self.pve.storages.push(nfs);
        }
        let nodes = self.nodes.clone();
        for vm in &mut self.pve.vms {
            let Some(node) = nodes.iter().find(|n| n.hostname == vm.name) else {
                continue;
            };
            self.pve
                .dhcp
                .insert(vm.mac.to_ascii_uppercase(), node.address.clone());
            let mut image = node.clone();
            image.machine_config = Some(image.machine_config.clone().unwrap_or_else(|| {
                self.secrets
                    .config(node, &self.talos_version, &self.kube.version)
            }));
            if image.etcd.data.is_none() && !image.etcd.data_empty {
                image.etcd.data.clone_from(&self.snapshot_source);
            }
            vm.boot = Some(BootImage::Installed {
                node: Box::new(image),
            });
            vm.booted = Some(node.address.clone());
        }
        let vms = self.pve.vms.clone();
        for vm in vms.iter().filter(|v| v.boot.is_some()) {
            for (i, storage) in ["nfs-backup", "pbs"].iter().enumerate() {
                let mut copy = vm.clone();
                copy.booted = None;
                copy.status = "stopped".into();
                copy.snapshots.clear();
                copy.parent = None;
                copy.lock = None;
                self.pve.backups.push(Backup {
                    storage: (*storage).into(),
                    node: None,
                    vmid: vm.vmid,
                    ctime: backup_ctime - 3600 * i as i64,
                    size: 1_234_567_890 + u64::from(vm.vmid),
                    format: "vma.zst".into(),
                    notes: Some(format!("{}, nightly", vm.name)),
                    protected: false,
                    verification: (i == 1).then(|| "ok".to_owned()),
                    vm: copy,
                });
            }
        }
        // A spare host, so that something is left when every control plane's host dies.
        if !self.pve.nodes.iter().any(|n| n == "pve4") {
            self.pve.nodes.push("pve4".into());
        }
        if self.pve.vm(9000).is_none() {
            let mut t = super::Vm::stub("pve4", 9000);
            t.name = "talos-template".into();
            t.template = true;
            t.memory_mib = 2048;
            t.cores = 2;
            t.mac = "BC:24:11:90:00:00".into();
            t.net_options = "firewall=1".into();
            t.disks = vec![super::Disk {
                key: "scsi0".into(),
                volume: "nfs-backup:9000/base-9000-disk-0.qcow2".into(),
                size: "32G".into(),
                snapshot: true,
            }];
            t.boot = Some(BootImage::TalosIso);
            self.pve.vms.push(t);
        }
    }

    /// A PVE host goes down with its VMs (their Talos nodes become unreachable); etcd is not
    /// touched otherwise, so the rest of the control plane keeps quorum (the rebuild-node case).
    pub fn lose_host(&mut self, pve_node: &str) {
        if !self.pve.offline_nodes.iter().any(|n| n == pve_node) {
            self.pve.offline_nodes.push(pve_node.to_owned());
        }
        let names: Vec<String> = self
            .pve
            .vms
            .iter()
            .filter(|v| v.node == pve_node)
            .map(|v| v.name.clone())
            .collect();
        for n in self
            .nodes
            .iter_mut()
            .filter(|n| names.contains(&n.hostname))
        {
            n.reachable = false;
            n.dial_error = DialError::Timeout;
        }
    }

    /// Every PVE host that runs a control-plane VM goes down (all control planes lost; the
    /// workers' hosts too where they share them): only backups and saved configs are left.
    pub fn lose_all_control_plane_hosts(&mut self) {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_control_plane())
            .filter_map(|n| self.pve.vm_named(&n.hostname).map(|v| v.node.clone()))
            .collect();
        for h in hosts {
            self.lose_host(&h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn configs_share_the_cluster_secrets_and_parse_back() {
        let c = Cluster::example(None);
        let cp = c.machine_config(&c.nodes[0]).unwrap();
        let worker = c.machine_config(&c.nodes[3]).unwrap();
        assert_eq!(
            yaml_value(&cp, "machine.type").as_deref(),
            Some("controlplane")
        );
        assert_eq!(
            yaml_value(&worker, "machine.type").as_deref(),
            Some("worker")
        );
        assert_eq!(
            yaml_value(&cp, "machine.network.hostname").as_deref(),
            Some("talos-cp-1")
        );
        for key in [
            "cluster.id",
            "cluster.clusterName",
            "cluster.ca.crt",
            "cluster.token",
        ] {
            assert_eq!(yaml_value(&cp, key), yaml_value(&worker, key), "{key}");
        }
        // Only control planes carry the CA keys and the secretbox secret.
        assert!(yaml_value(&cp, "cluster.secretboxEncryptionSecret").is_some());
        assert!(yaml_value(&worker, "cluster.secretboxEncryptionSecret").is_none());
        assert_eq!(yaml_value(&worker, "cluster.ca.key").as_deref(), Some(""));
        assert!(check_config(&cp).is_ok());
        // Another cluster: other secrets.
        let other = Secrets::generate("prod", "https://10.9.0.10:6443").config(
            &c.nodes[0],
            "v1.9.5",
            "v1.32.3",
        );
        assert_ne!(
            yaml_value(&cp, "cluster.id"),
            yaml_value(&other, "cluster.id")
        );
        // Multi-document configs: the v1alpha1 document is found.
        let multi = format!("apiVersion: v1alpha1\nkind: HostnameConfig\nhostname: x\n---\n{cp}");
        assert_eq!(
            yaml_value(&multi, "machine.type").as_deref(),
            Some("controlplane")
        );
    }

    #[test]
    fn losing_every_control_plane_host_leaves_the_spare_one() {
        let mut c = Cluster::example(None);
        c.add_rebuild_fixtures(1_767_225_605);
        c.lose_all_control_plane_hosts();
        assert_eq!(c.pve.offline_nodes, ["pve1", "pve2", "pve3"]);
        assert!(!c.pve.is_offline("pve4"));
        assert!(c.nodes.iter().all(|n| !n.reachable));
        assert_eq!(c.pve.vm(9000).unwrap().node, "pve4");
        assert_eq!(c.pve.backups.len(), 10);
        // The shared backups stay visible from the spare host.
        assert!(c.pve.backups.iter().all(|b| b.visible_from(&c.pve, "pve4")));
    }
}
