//! The Proxmox VE side of the simulated cluster ([`crate::sim::pve_api`] serves it).
//!
//! Everything the API shows is derived from this section of the state file, and tasks are
//! plain records with a start time and a duration: a task "finishes" when the state is next
//! read after `started_ms + duration_ms` ([`Pve::advance`]), so no background timer is needed and
//! a test can edit the file between requests. Faults are the fields at the bottom of [`Pve`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Node;
use super::pve_storage::{Backup, BootImage, Storage, default_storages};

/// The simulated PVE cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pve {
    /// Cluster node names (`pve1`, …).
    #[serde(default)]
    pub nodes: Vec<String>,
    #[serde(default)]
    pub vms: Vec<Vm>,
    /// Every task started so far, oldest first.
    #[serde(default)]
    pub tasks: Vec<Task>,
    /// How long a successful task runs.
    #[serde(default = "default_task_ms")]
    pub task_duration_ms: u64,
    /// Accept only this token (`USER@REALM!TOKENID=SECRET`); `None` accepts any well-formed one.
    #[serde(default)]
    pub token: Option<String>,
    /// Requests that broke the API schema. Anything here is a bug in the client.
    #[serde(default)]
    pub violations: Vec<Violation>,
    /// Authenticated, schema-valid requests handled, so tests can tell none was made.
    #[serde(default)]
    pub requests: u64,
    /// `storage.cfg`; absent in older files (then `local` and `local-lvm`).
    #[serde(default = "default_storages")]
    pub storages: Vec<Storage>,
    /// Backups on the storages ([`Backup::volid`] gives their volume ids).
    #[serde(default)]
    pub backups: Vec<Backup>,
    /// DHCP reservations of the VMs' network, MAC (upper-case) → IPv4 address: a VM that boots
    /// Talos with a reserved MAC brings its node up at that address.
    #[serde(default)]
    pub dhcp: BTreeMap<String, String>,

    // ---- faults ------------------------------------------------------------------------------
    /// Fault: these VMs hold a config lock (`{"101": "backup"}`), as while vzdump runs.
    #[serde(default)]
    pub locked: BTreeMap<u32, String>,
    /// Fault: these PVE hosts are down. Every `/nodes/<it>/…` request fails as pveproxy's
    /// forwarding does ([`Pve::proxy_status`], empty body); `GET /nodes` shows it `offline`
    /// without metrics; `/cluster/resources` lists its VMs with `status: unknown`; its
    /// node-local storage (and the backups there) is gone; its VMs' Talos nodes are unreachable.
    #[serde(default)]
    pub offline_nodes: Vec<String>,
    /// How requests for an offline node fail: 595 `No route to host` (the default, a
    /// connection error) or 596 `Connection timed out` (TLS/request timeouts).
    #[serde(default = "default_proxy_status")]
    pub proxy_status: u16,
    /// Fault: the clone task of these templates (source VMID) fails with this reason
    /// (exitstatus `clone failed: <reason>`; PVE removes the new VM itself).
    #[serde(default)]
    pub clone_fails: BTreeMap<u32, String>,
    /// Fault: the restore task into these VMIDs fails with this message; the stub VM stays
    /// (`VM <vmid> state is NOT cleaned up`).
    #[serde(default)]
    pub restore_fails: BTreeMap<u32, String>,
    /// Fault: the disks are on ZFS, which can only roll back to the newest snapshot (one VM's
    /// disks: [`Vm::zfs`]).
    #[serde(default)]
    pub zfs: bool,
    /// Fault: the snapshot task of these VMs fails with this message.
    #[serde(default)]
    pub snapshot_fails: BTreeMap<u32, String>,
    /// Fault: a lock only the tasks of these VMs meet (`{"203": "backup"}`): a backup that
    /// started after the status was read, so checks pass and the task fails.
    #[serde(default)]
    pub task_locked: BTreeMap<u32, String>,
    /// Fault: new tasks of these VMs keep running, whatever their duration, until
    /// [`Pve::release_held`] (a crash test's tasks in flight).
    #[serde(default)]
    pub hold_tasks: Vec<u32>,
}

fn default_task_ms() -> u64 {
    1500
}

fn default_proxy_status() -> u16 {
    595
}

impl Default for Pve {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            vms: Vec::new(),
            tasks: Vec::new(),
            task_duration_ms: default_task_ms(),
            token: None,
            violations: Vec::new(),
            requests: 0,
            storages: default_storages(),
            backups: Vec::new(),
            dhcp: BTreeMap::new(),
            locked: BTreeMap::new(),
            offline_nodes: Vec::new(),
            proxy_status: default_proxy_status(),
            clone_fails: BTreeMap::new(),
            restore_fails: BTreeMap::new(),
            zfs: false,
            snapshot_fails: BTreeMap::new(),
            task_locked: BTreeMap::new(),
            hold_tasks: Vec::new(),
        }
    }
}

/// One QEMU VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vm {
    /// The PVE node its config lives on.
    pub node: String,
    pub vmid: u32,
    /// The Talos hostname.
    pub name: String,
    /// `running` or `stopped`.
    pub status: String,
    /// Config lock (`snapshot` while a snapshot task runs, …).
    #[serde(default)]
    pub lock: Option<String>,
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Cloud-init `ipconfig0` (`ip=10.5.0.11/24,gw=10.5.0.1`).
    #[serde(default)]
    pub ipconfig0: Option<String>,
    /// MAC of `net0`, upper-case as PVE writes it.
    #[serde(default)]
    pub mac: String,
    /// The config enables the guest agent (`agent: 1`).
    #[serde(default = "yes")]
    pub agent: bool,
    /// The agent answers inside the guest (needs the Talos qemu-guest-agent extension).
    #[serde(default = "yes")]
    pub agent_running: bool,
    /// What the guest agent reports.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub snapshots: Vec<Snapshot>,
    /// The snapshot the current state descends from.
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub tags: Option<String>,
    #[serde(default = "default_mem")]
    pub memory_mib: u64,
    #[serde(default = "default_cores")]
    pub cores: u32,
    /// Unix ms when it was last started (uptime).
    #[serde(default)]
    pub started_ms: i64,
    /// This VM's disks are on ZFS (as [`Pve::zfs`] for one VM).
    #[serde(default)]
    pub zfs: bool,
    /// `net0`'s bridge.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// `net0`'s model (`virtio`, `e1000`, …).
    #[serde(default = "default_model")]
    pub model: String,
    /// `net0`'s other options, as PVE prints them (`firewall=1`).
    #[serde(default = "default_net_options")]
    pub net_options: String,
    /// A template (`template: 1`): cloned, never started.
    #[serde(default)]
    pub template: bool,
    /// What its disk boots; `None`: a VM the simulator does not link to a Talos node.
    #[serde(default)]
    pub boot: Option<BootImage>,
    /// The Talos node (address) this VM runs, once it has booted.
    #[serde(default)]
    pub booted: Option<String>,
    /// Changes waiting for the next cold start (set on a running VM): key → value.
    #[serde(default)]
    pub pending: BTreeMap<String, String>,
    /// Varies the SMBIOS uuid (a restore with `unique=1` and a clone get a new one).
    #[serde(default)]
    pub uuid_seed: u64,
}

fn default_bridge() -> String {
    "vmbr0".into()
}
fn default_model() -> String {
    "virtio".into()
}
fn default_net_options() -> String {
    "firewall=1".into()
}

impl Vm {
    /// The name PVE shows: `VM <vmid>` when the config has none (a restore's stub).
    pub fn shown_name(&self) -> String {
        if self.name.is_empty() {
            format!("VM {}", self.vmid)
        } else {
            self.name.clone()
        }
    }

    /// `net0` as the config prints it: `virtio=BC:24:11:2A:6C:9E,bridge=vmbr0,firewall=1`.
    pub fn net0(&self) -> String {
        let mut s = format!("{}={},bridge={}", self.model, self.mac, self.bridge);
        if !self.net_options.is_empty() {
            s.push(',');
            s.push_str(&self.net_options);
        }
        s
    }

    /// A bare VM (the stub a restore starts from: `memory: 128`, no name, no disks).
    pub fn stub(node: &str, vmid: u32) -> Self {
        Self {
            node: node.into(),
            vmid,
            name: String::new(),
            status: "stopped".into(),
            lock: None,
            disks: Vec::new(),
            ipconfig0: None,
            mac: String::new(),
            agent: false,
            agent_running: false,
            interfaces: Vec::new(),
            snapshots: Vec::new(),
            parent: None,
            tags: None,
            memory_mib: 128,
            cores: 1,
            started_ms: 0,
            zfs: false,
            bridge: default_bridge(),
            model: default_model(),
            net_options: String::new(),
            template: false,
            boot: None,
            booted: None,
            pending: BTreeMap::new(),
            uuid_seed: 0,
        }
    }

    /// Gives the VM another VMID; its disks' volume names follow (`vm-<vmid>-disk-0`).
    pub fn renumber(&mut self, vmid: u32) {
        let (old, new) = (format!("vm-{}-", self.vmid), format!("vm-{vmid}-"));
        for d in &mut self.disks {
            d.volume = d.volume.replace(&old, &new);
        }
        self.vmid = vmid;
    }
}

fn yes() -> bool {
    true
}
fn default_mem() -> u64 {
    4096
}
fn default_cores() -> u32 {
    2
}

/// A disk of a VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disk {
    /// `scsi0`, `efidisk0`, …
    pub key: String,
    /// `local-lvm:vm-101-disk-0`.
    pub volume: String,
    /// `32G`.
    pub size: String,
    /// The storage can snapshot this disk.
    #[serde(default = "yes")]
    pub snapshot: bool,
}

/// One guest-agent network interface.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(rename = "hardware-address")]
    pub hardware_address: String,
    /// `10.5.0.11/24`.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// One VM snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Epoch seconds.
    pub snaptime: i64,
    #[serde(default)]
    pub vmstate: bool,
    #[serde(default)]
    pub parent: Option<String>,
    /// `prepare` while being created, `delete` while being deleted.
    #[serde(default)]
    pub snapstate: Option<String>,
    /// The VM was running when it was taken.
    #[serde(default)]
    pub running: bool,
}

/// A background task (`qmsnapshot`, `qmrollback`, …).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub upid: String,
    pub node: String,
    #[serde(rename = "type")]
    pub task_type: String,
    pub vmid: u32,
    /// `user@realm!tokenid`.
    pub user: String,
    pub started_ms: i64,
    pub duration_ms: u64,
    /// `None` while running.
    #[serde(default)]
    pub exitstatus: Option<String>,
    /// What `exitstatus` becomes when the task ends (`OK` or an error text).
    pub outcome: String,
    /// Log lines written when the task ends (the `TASK …` line is added then).
    #[serde(default)]
    pub log: Vec<String>,
    /// What happens to the VM when the task ends successfully.
    #[serde(default)]
    pub effect: Option<Effect>,
    /// Held by [`Pve::hold_tasks`]: runs until released, whatever `duration_ms` says.
    #[serde(default)]
    pub held: bool,
}

impl Task {
    pub fn ends_ms(&self) -> i64 {
        self.started_ms + i64::try_from(self.duration_ms).unwrap_or(i64::MAX / 2)
    }

    /// Whether it is still running at `at_ms` (by the clock, not by when it was last advanced).
    pub fn running_at(&self, at_ms: i64) -> bool {
        self.started_ms <= at_ms && (self.held || at_ms < self.ends_ms())
    }
}

/// The change a successful task makes when it ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    Snapshot {
        name: String,
    },
    DeleteSnapshot {
        name: String,
    },
    Rollback {
        name: String,
        start: bool,
    },
    Start,
    Stop,
    /// `qmrestore`: the VM the backup gives (overrides applied); a failure leaves the stub.
    Restore {
        vm: Box<Vm>,
        start: bool,
    },
    /// `qmclone` (the task's VMID is the template's): the new VM, moved to `target` at the end;
    /// a failure removes it.
    Clone {
        vm: Box<Vm>,
        target: String,
    },
    /// `qmconfig`: the changes of a config POST.
    Config {
        vmid: u32,
        changes: BTreeMap<String, String>,
    },
    /// `qmdestroy`.
    Destroy,
}

/// A request that broke the schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub at_ms: i64,
    pub method: String,
    /// Path below `/api2/json`, with the query string.
    pub path: String,
    /// Parameter → what is wrong (`_path`: unknown endpoint or method; `_root`: bad body).
    pub errors: BTreeMap<String, String>,
}

impl Pve {
    /// Three PVE nodes and one running VM per Talos node (VMIDs from 101, round-robin over the
    /// PVE nodes, name = hostname, agent reporting the node's address).
    pub fn example(cluster_nodes: &[Node]) -> Self {
        let nodes: Vec<String> = (1..=3).map(|i| format!("pve{i}")).collect();
        let vms = cluster_nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let vmid = 101 + i as u32;
                let mac = format!("BC:24:11:00:{:02X}:{:02X}", i / 256, i % 256 + 1);
                let gw = n
                    .address
                    .rsplit_once('.')
                    .map_or_else(String::new, |(net, _)| format!(",gw={net}.1"));
                let control = n.is_control_plane();
                Vm {
                    node: nodes[i % nodes.len()].clone(),
                    vmid,
                    name: n.hostname.clone(),
                    status: "running".into(),
                    lock: None,
                    disks: vec![Disk {
                        key: "scsi0".into(),
                        volume: format!("local-lvm:vm-{vmid}-disk-0"),
                        size: "32G".into(),
                        snapshot: true,
                    }],
                    ipconfig0: Some(format!("ip={}/24{gw}", n.address)),
                    mac: mac.clone(),
                    agent: true,
                    agent_running: true,
                    interfaces: vec![
                        Interface {
                            name: "lo".into(),
                            hardware_address: "00:00:00:00:00:00".into(),
                            addresses: vec!["127.0.0.1/8".into(), "::1/128".into()],
                        },
                        Interface {
                            name: "ens18".into(),
                            hardware_address: mac.to_ascii_lowercase(),
                            addresses: vec![format!("{}/24", n.address)],
                        },
                    ],
                    snapshots: Vec::new(),
                    parent: None,
                    tags: Some(
                        if control {
                            "control-plane;k8s"
                        } else {
                            "k8s;worker"
                        }
                        .into(),
                    ),
                    memory_mib: if control { 4096 } else { 8192 },
                    cores: if control { 2 } else { 4 },
                    started_ms: 1_736_154_000_000,
                    zfs: false,
                    bridge: default_bridge(),
                    model: default_model(),
                    net_options: default_net_options(),
                    template: false,
                    boot: None,
                    booted: None,
                    pending: BTreeMap::new(),
                    uuid_seed: 0,
                }
            })
            .collect();
        Self {
            nodes,
            vms,
            ..Self::default()
        }
    }

    /// [`Pve::example`] numbered as many labs are: control planes from 101, workers from 201.
    pub fn example_by_role(cluster_nodes: &[Node]) -> Self {
        let mut pve = Self::example(cluster_nodes);
        let (mut control, mut workers) = (101.., 201..);
        for (node, vm) in cluster_nodes.iter().zip(&mut pve.vms) {
            let ids = if node.machine_type == "worker" {
                &mut workers
            } else {
                &mut control
            };
            vm.renumber(ids.next().expect("an endless range"));
        }
        pve
    }

    pub fn vm(&self, vmid: u32) -> Option<&Vm> {
        self.vms.iter().find(|v| v.vmid == vmid)
    }

    /// The VM named after a Talos hostname (for a profile's `vm = { node, vmid }`).
    pub fn vm_named(&self, hostname: &str) -> Option<&Vm> {
        self.vms.iter().find(|v| v.name == hostname)
    }

    pub fn vm_mut(&mut self, vmid: u32) -> Option<&mut Vm> {
        self.vms.iter_mut().find(|v| v.vmid == vmid)
    }

    /// The lock a VM shows: the injected fault first, then its own.
    pub fn lock_of(&self, vm: &Vm) -> Option<String> {
        self.locked
            .get(&vm.vmid)
            .cloned()
            .or_else(|| vm.lock.clone())
    }

    pub fn is_offline(&self, node: &str) -> bool {
        self.offline_nodes.iter().any(|n| n == node)
    }

    /// Whether this VM's disks are on ZFS (the cluster-wide fault or the VM's own).
    pub fn on_zfs(&self, vm: &Vm) -> bool {
        self.zfs || vm.zfs
    }

    /// Kills the held tasks (the worker dies, as in a node crash): they end `unexpected
    /// status` and leave their locks behind (a clone's new VM keeps `lock: clone`).
    pub fn kill_held(&mut self, now_ms: i64) {
        self.hold_tasks.clear();
        for t in self.tasks.iter_mut().filter(|t| t.held) {
            t.held = false;
            t.duration_ms = u64::try_from(now_ms - t.started_ms).unwrap_or(0);
            t.effect = None;
            t.outcome = "unexpected status".into();
        }
    }

    /// Lets held tasks end now and stops holding new ones.
    pub fn release_held(&mut self, now_ms: i64) {
        self.hold_tasks.clear();
        for t in self.tasks.iter_mut().filter(|t| t.held) {
            t.held = false;
            t.duration_ms = u64::try_from(now_ms - t.started_ms).unwrap_or(0);
        }
    }

    /// The most tasks that ran at once: at each task's start, how many were running (itself
    /// included). What a limit on parallel tasks is checked against.
    pub fn peak_concurrent_tasks(&self) -> usize {
        self.tasks
            .iter()
            .map(|t| {
                self.tasks
                    .iter()
                    .filter(|o| o.running_at(t.started_ms))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Ends every task that is due, applying its effect; returns whether anything changed.
    pub fn advance(&mut self, now_ms: i64) -> bool {
        let mut changed = false;
        let mut due: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| {
                let t = &self.tasks[i];
                t.exitstatus.is_none() && !t.held && t.ends_ms() <= now_ms
            })
            .collect();
        due.sort_by_key(|&i| self.tasks[i].ends_ms());
        for i in due {
            let task = self.tasks[i].clone();
            let ok = task.outcome == "OK";
            if let Some(effect) = &task.effect {
                self.finish_effect(task.vmid, effect, ok, task.ends_ms());
            }
            let t = &mut self.tasks[i];
            t.log.push(if ok {
                "TASK OK".to_owned()
            } else {
                format!("TASK ERROR: {}", task.outcome)
            });
            t.exitstatus = Some(task.outcome);
            changed = true;
        }
        changed
    }

    /// The second half of a task's work (the first half ran when it started).
    fn finish_effect(&mut self, vmid: u32, effect: &Effect, ok: bool, at_ms: i64) {
        match effect {
            Effect::Restore {
                vm: restored,
                start,
            } => {
                let Some(vm) = self.vm_mut(restored.vmid) else {
                    return;
                };
                if ok {
                    *vm = (**restored).clone();
                    if *start {
                        vm.status = "running".into();
                        vm.started_ms = at_ms;
                    }
                } else {
                    // Not cleaned up: the stub config stays, without its lock.
                    vm.lock = None;
                }
                return;
            }
            Effect::Clone { vm: new, target } => {
                if ok {
                    if let Some(vm) = self.vm_mut(new.vmid) {
                        vm.lock = None;
                        vm.node.clone_from(target);
                    }
                } else {
                    // PVE frees the new disks and removes the new config itself.
                    self.vms.retain(|v| v.vmid != new.vmid);
                }
                return;
            }
            Effect::Config { vmid, changes } => {
                if ok && let Some(vm) = self.vm_mut(*vmid) {
                    vm.lock = None;
                    super::pve_config::apply(vm, changes);
                }
                return;
            }
            Effect::Destroy => {
                if ok {
                    self.vms.retain(|v| v.vmid != vmid);
                }
                return;
            }
            _ => {}
        }
        let Some(vm) = self.vm_mut(vmid) else {
            return;
        };
        vm.lock = None;
        match effect {
            Effect::Snapshot { name } => {
                if ok {
                    if let Some(s) = vm.snapshots.iter_mut().find(|s| &s.name == name) {
                        s.snapstate = None;
                    }
                    vm.parent = Some(name.clone());
                } else {
                    // PVE cleans up a failed snapshot ("snapshot create failed: starting cleanup").
                    vm.snapshots.retain(|s| &s.name != name);
                }
            }
            Effect::DeleteSnapshot { name } => {
                if ok {
                    let gone = vm.snapshots.iter().find(|s| &s.name == name).cloned();
                    vm.snapshots.retain(|s| &s.name != name);
                    if let Some(gone) = gone {
                        // Children of the deleted snapshot now descend from its parent.
                        for s in &mut vm.snapshots {
                            if s.parent.as_deref() == Some(name) {
                                s.parent = gone.parent.clone();
                            }
                        }
                        if vm.parent.as_deref() == Some(name) {
                            vm.parent = gone.parent;
                        }
                    }
                }
            }
            Effect::Rollback { name, start } => {
                if ok {
                    vm.parent = Some(name.clone());
                    let ram = vm
                        .snapshots
                        .iter()
                        .any(|s| &s.name == name && s.vmstate && s.running);
                    if *start || ram {
                        vm.status = "running".into();
                        vm.started_ms = at_ms;
                    }
                }
            }
            Effect::Start => {
                if ok {
                    vm.status = "running".into();
                    vm.started_ms = at_ms;
                    // A cold start applies the pending changes.
                    let pending = std::mem::take(&mut vm.pending);
                    super::pve_config::apply(vm, &pending);
                }
            }
            Effect::Stop => {
                if ok {
                    vm.status = "stopped".into();
                }
            }
            Effect::Restore { .. }
            | Effect::Clone { .. }
            | Effect::Config { .. }
            | Effect::Destroy => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::sim::state::Cluster;

    #[test]
    fn example_maps_every_node_and_old_files_load() {
        let c = Cluster::example(None);
        assert_eq!(c.pve.vms.len(), c.nodes.len());
        assert_eq!(c.pve.vms[0].vmid, 101);
        assert_eq!(c.pve.vms[0].name, "talos-cp-1");
        assert_eq!(c.pve.vms[3].node, "pve1");
        // A state file from before the PVE section still loads.
        let mut v = serde_json::to_value(&c).unwrap();
        v.as_object_mut().unwrap().remove("pve");
        let old: Cluster = serde_json::from_value(v).unwrap();
        assert!(old.pve.vms.is_empty());
        assert_eq!(old.pve.task_duration_ms, 1500);
    }

    #[test]
    fn example_by_role_numbers_workers_from_201() {
        let c = Cluster::example(None);
        let pve = super::Pve::example_by_role(&c.nodes);
        let ids: Vec<(u32, &str, &str)> = pve
            .vms
            .iter()
            .map(|v| (v.vmid, v.node.as_str(), v.disks[0].volume.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                (101, "pve1", "local-lvm:vm-101-disk-0"),
                (102, "pve2", "local-lvm:vm-102-disk-0"),
                (103, "pve3", "local-lvm:vm-103-disk-0"),
                (201, "pve1", "local-lvm:vm-201-disk-0"),
                (202, "pve2", "local-lvm:vm-202-disk-0"),
            ]
        );
    }

    fn task(vmid: u32, started_ms: i64, duration_ms: u64, held: bool) -> super::Task {
        super::Task {
            upid: format!("UPID:pve1:0:0:0:qmsnapshot:{vmid}:a@b!c:"),
            node: "pve1".into(),
            task_type: "qmsnapshot".into(),
            vmid,
            user: "a@b!c".into(),
            started_ms,
            duration_ms,
            exitstatus: None,
            outcome: "OK".into(),
            log: Vec::new(),
            effect: None,
            held,
        }
    }

    #[test]
    fn peak_counts_tasks_running_at_each_start() {
        let mut pve = super::Pve::default();
        assert_eq!(pve.peak_concurrent_tasks(), 0);
        // 0–100, 50–150, 100–200 (the first has ended when the third starts), 120– held.
        pve.tasks = vec![
            task(101, 0, 100, false),
            task(102, 50, 100, false),
            task(103, 100, 100, false),
            task(104, 120, 1, true),
        ];
        assert_eq!(pve.peak_concurrent_tasks(), 3);
        pve.tasks.truncate(3);
        assert_eq!(pve.peak_concurrent_tasks(), 2);
    }

    #[test]
    fn held_tasks_run_until_released() {
        let mut pve = super::Pve {
            hold_tasks: vec![101],
            ..super::Pve::default()
        };
        pve.tasks = vec![task(101, 0, 10, true), task(102, 0, 10, false)];
        assert!(pve.advance(5_000));
        assert_eq!(pve.tasks[0].exitstatus, None);
        assert_eq!(pve.tasks[1].exitstatus.as_deref(), Some("OK"));
        pve.release_held(6_000);
        assert!(pve.hold_tasks.is_empty());
        assert!(!pve.tasks[0].held);
        assert!(pve.advance(6_000));
        assert_eq!(pve.tasks[0].exitstatus.as_deref(), Some("OK"));
        assert_eq!(pve.tasks[0].ends_ms(), 6_000);
    }
}
