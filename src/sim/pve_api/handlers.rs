//! The endpoint handlers: read the simulated cluster, start tasks, shape bodies as PVE does.
//!
//! Writes follow the real split between synchronous errors (HTTP 4xx/5xx: reserved snapshot
//! names, unknown VM) and task errors (HTTP 200 + UPID, then `exitstatus`: locks, name clashes,
//! storage limits). A task's first half (lock, `snapstate`, hard stop before a rollback) happens
//! when it starts; the rest when it ends ([`crate::sim::state::Pve::advance`]).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Response;
use super::schema::Matched;
use crate::sim::state::{Effect, Pve, Snapshot, Task, Vm};

const MIB: u64 = 1024 * 1024;

/// One validated request.
pub(crate) struct Call<'a> {
    pub method: &'a str,
    pub matched: &'a Matched,
    /// `user@realm!tokenid` of the caller (the task owner).
    pub user: &'a str,
    pub fingerprint: &'a str,
    pub now_ms: i64,
}

impl Call<'_> {
    pub(super) fn param(&self, name: &str) -> &str {
        self.matched.get(name).unwrap_or_default()
    }
    pub(super) fn vmid(&self) -> u32 {
        self.param("vmid").parse().unwrap_or_default()
    }
}

pub(crate) fn handle(pve: &mut Pve, call: &Call<'_>) -> Response {
    let node = call.matched.get("node").map(str::to_owned);
    if let Some(node) = &node {
        if !pve.nodes.contains(node) {
            return Response::fail(500, &format!("no such cluster node '{node}'"));
        }
        // pveproxy forwards `/nodes/{node}/…` to that node; when it is down the proxy fails
        // (AnyEvent::HTTP: 595 for connection errors, 596 for TLS/request timeouts).
        if pve.is_offline(node) {
            let reason = if pve.proxy_status == 596 {
                "Connection timed out"
            } else {
                "No route to host"
            };
            return Response::bare(pve.proxy_status, reason);
        }
    }
    match (call.method, call.matched.template) {
        ("GET", "/version") => Response::ok(json!({
            "version": "8.4.1", "release": "8.4", "repoid": "2a5fa54a8503f96d",
        })),
        ("GET", "/nodes") => Response::ok(nodes(pve, call)),
        ("GET", "/cluster/resources") => Response::ok(resources(pve, call)),
        ("GET", "/nodes/{node}/qemu") => {
            let node = node.unwrap_or_default();
            let list: Vec<Value> = pve
                .vms
                .iter()
                .filter(|v| v.node == node)
                .map(|v| node_vm(pve, v, call.now_ms))
                .collect();
            Response::ok(Value::Array(list))
        }
        ("GET", "/nodes/{node}/tasks/{upid}/status") => task_status(pve, call),
        ("GET", "/nodes/{node}/tasks/{upid}/log") => task_log(pve, call),
        ("GET", "/cluster/nextid") => super::rebuild::nextid(pve, call),
        ("GET", "/nodes/{node}/storage") => super::rebuild::storage_list(pve, call),
        ("GET", "/nodes/{node}/storage/{storage}/content") => {
            super::rebuild::storage_content(pve, call)
        }
        ("POST", "/nodes/{node}/qemu") => super::rebuild::create(pve, call),
        (method, template) => {
            let vmid = call.vmid();
            let node = node.unwrap_or_default();
            if !pve.vms.iter().any(|v| v.vmid == vmid && v.node == node) {
                return Response::fail(
                    500,
                    &format!(
                        "Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"
                    ),
                );
            }
            let rest = template
                .strip_prefix("/nodes/{node}/qemu/{vmid}")
                .unwrap_or(template);
            vm_endpoint(pve, call, method, rest)
        }
    }
}

fn vm_endpoint(pve: &mut Pve, call: &Call<'_>, method: &str, rest: &str) -> Response {
    let vmid = call.vmid();
    let vm = pve.vm(vmid).cloned().expect("checked by the caller");
    match (method, rest) {
        ("GET", "/status/current") => Response::ok(status_current(pve, &vm, call.now_ms)),
        ("GET", "/config") => config(pve, &vm, call),
        ("GET", "/feature") => {
            let has = call.param("feature") != "snapshot" || vm.disks.iter().all(|d| d.snapshot);
            let nodes = if has {
                vec![vm.node.clone()]
            } else {
                Vec::new()
            };
            Response::ok(json!({ "hasFeature": u8::from(has), "nodes": nodes }))
        }
        ("GET", "/agent/network-get-interfaces") => agent(&vm),
        ("GET", "/snapshot") => Response::ok(snapshot_list(&vm)),
        ("POST", "/snapshot") => create_snapshot(pve, call, &vm),
        ("DELETE", "/snapshot/{snapname}") => delete_snapshot(pve, call, &vm),
        ("POST", "/snapshot/{snapname}/rollback") => rollback(pve, call, &vm),
        ("POST", "/clone") => super::rebuild::clone(pve, call, &vm),
        ("PUT" | "POST", "/config") => super::rebuild::update_config(pve, call, &vm),
        ("DELETE", "") => super::rebuild::destroy(pve, call, &vm),
        ("POST", "/status/start") => {
            let check = lock_error(pve, &vm).map_or_else(
                || {
                    if vm.template {
                        Err("you can't start a vm if it's a template".to_owned())
                    } else if vm.status == "running" {
                        Err(format!("VM {vmid} already running"))
                    } else {
                        Ok(())
                    }
                },
                Err,
            );
            start_task(pve, call, "qmstart", check, Vec::new(), Some(Effect::Start))
        }
        ("POST", "/status/shutdown" | "/status/stop") => {
            let check = lock_error(pve, &vm).map_or(Ok(()), Err);
            let kind = if rest.ends_with("stop") {
                "qmstop"
            } else {
                "qmshutdown"
            };
            start_task(pve, call, kind, check, Vec::new(), Some(Effect::Stop))
        }
        _ => Response::fail(
            501,
            &format!(
                "Method '{method} {}' not implemented",
                call.matched.template
            ),
        ),
    }
}

// ---- reads ---------------------------------------------------------------------------------

fn nodes(pve: &Pve, call: &Call<'_>) -> Value {
    let list: Vec<Value> = pve
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if pve.is_offline(n) {
                json!({"node": n, "status": "offline", "id": format!("node/{n}"), "type": "node",
                       "level": "", "ssl_fingerprint": call.fingerprint})
            } else {
                json!({"node": n, "status": "online", "id": format!("node/{n}"), "type": "node",
                       "cpu": 0.05, "maxcpu": 16, "mem": 40_123_456_789_u64 + i as u64,
                       "maxmem": 134_217_728_000_u64, "disk": 12_345_678_901_u64,
                       "maxdisk": 100_000_000_000_u64, "uptime": 3_456_789, "level": "",
                       "ssl_fingerprint": call.fingerprint})
            }
        })
        .collect();
    Value::Array(list)
}

fn resources(pve: &Pve, call: &Call<'_>) -> Value {
    let kind = call.matched.get("type");
    let mut out = Vec::new();
    if kind.is_none_or(|k| k == "vm") {
        for vm in &pve.vms {
            if pve.is_offline(&vm.node) {
                // pvestatd of a down node reports nothing: no name, no metrics.
                out.push(json!({"id": format!("qemu/{}", vm.vmid), "vmid": vm.vmid,
                                "type": "qemu", "node": vm.node, "status": "unknown"}));
                continue;
            }
            let mut v = metrics(pve, vm, call.now_ms);
            let o = v.as_object_mut().expect("an object");
            o.insert("id".into(), json!(format!("qemu/{}", vm.vmid)));
            o.insert("type".into(), json!("qemu"));
            o.insert("node".into(), json!(vm.node));
            o.insert("maxcpu".into(), json!(vm.cores));
            o.remove("cpus");
            out.push(v);
        }
    }
    if kind.is_none_or(|k| k == "node") {
        for n in &pve.nodes {
            let status = if pve.is_offline(n) {
                "offline"
            } else {
                "online"
            };
            out.push(json!({"id": format!("node/{n}"), "type": "node", "node": n,
                            "status": status}));
        }
    }
    Value::Array(out)
}

fn uptime_s(vm: &Vm, now_ms: i64) -> i64 {
    if vm.status == "running" {
        ((now_ms - vm.started_ms) / 1000).max(0)
    } else {
        0
    }
}

fn maxdisk(vm: &Vm) -> u64 {
    vm.disks.iter().map(|d| size_bytes(&d.size)).sum()
}

/// `32G` → bytes (PVE's disk-size units).
fn size_bytes(s: &str) -> u64 {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().unwrap_or(0);
    n * match unit {
        "K" => 1024,
        "M" => MIB,
        "G" => 1024 * MIB,
        "T" => 1024 * 1024 * MIB,
        _ => 1,
    }
}

/// Fields shared by `/nodes/{node}/qemu`, `cluster/resources` and `status/current`.
fn metrics(pve: &Pve, vm: &Vm, now_ms: i64) -> Value {
    let running = vm.status == "running";
    let mut v = json!({
        "vmid": vm.vmid, "name": vm.shown_name(), "status": vm.status,
        "template": u8::from(vm.template),
        "uptime": uptime_s(vm, now_ms), "cpus": vm.cores,
        "cpu": if running { 0.031 } else { 0.0 },
        "maxmem": vm.memory_mib * MIB, "mem": if running { vm.memory_mib * MIB / 3 } else { 0 },
        "maxdisk": maxdisk(vm), "disk": 0,
        "netin": if running { 912_345_678 } else { 0 }, "netout": if running { 812_345_678 } else { 0 },
        "diskread": if running { 1_234_567_890 } else { 0 },
        "diskwrite": if running { 2_345_678_901_u64 } else { 0 },
    });
    let o = v.as_object_mut().expect("an object");
    if let Some(lock) = pve.lock_of(vm) {
        o.insert("lock".into(), json!(lock));
    }
    if let Some(tags) = &vm.tags {
        o.insert("tags".into(), json!(tags));
    }
    v
}

fn node_vm(pve: &Pve, vm: &Vm, now_ms: i64) -> Value {
    let mut v = metrics(pve, vm, now_ms);
    if vm.status == "running" {
        v["pid"] = json!(pid_of(vm));
    }
    v
}

fn pid_of(vm: &Vm) -> u32 {
    700_000 + vm.vmid
}

fn status_current(pve: &Pve, vm: &Vm, now_ms: i64) -> Value {
    let mut v = node_vm(pve, vm, now_ms);
    let o = v.as_object_mut().expect("an object");
    o.insert("qmpstatus".into(), json!(vm.status));
    o.insert("ha".into(), json!({"managed": 0}));
    o.insert("clipboard".into(), Value::Null);
    if vm.agent {
        o.insert("agent".into(), json!(1));
    }
    if vm.status == "running" {
        o.insert("running-machine".into(), json!("pc-i440fx-9.0+pve0"));
        o.insert("running-qemu".into(), json!("9.0.2"));
        o.insert(
            "nics".into(),
            json!({ format!("tap{}i0", vm.vmid): {"netin": 912_345_678, "netout": 812_345_678} }),
        );
    }
    v
}

/// The storage a disk shows: `local-zfs` when the VM is on ZFS.
pub(super) fn volid(pve: &Pve, vm: &Vm, volume: &str) -> String {
    match (pve.on_zfs(vm), volume.split_once(':')) {
        (true, Some((_, rest))) => format!("local-zfs:{rest}"),
        _ => volume.to_owned(),
    }
}

fn config(pve: &Pve, vm: &Vm, call: &Call<'_>) -> Response {
    if call.matched.flag("current", false) && call.matched.get("snapshot").is_some() {
        return Response::param_errors([(
            "snapshot".to_owned(),
            "cannot use 'snapshot' parameter with 'current'".to_owned(),
        )]);
    }
    let snap = call.matched.get("snapshot");
    if let Some(name) = snap
        && !vm.snapshots.iter().any(|s| s.name == name)
    {
        return Response::fail(500, &format!("snapshot '{name}' does not exist"));
    }
    let mut c = match snap {
        Some(_) => config_map(pve, vm, false),
        None => config_map(pve, vm, !call.matched.flag("current", false)),
    };
    match snap {
        // A snapshot's config carries its own parent and time, no lock.
        Some(name) => {
            let s = vm
                .snapshots
                .iter()
                .find(|s| s.name == name)
                .expect("checked above");
            c.insert("snaptime".into(), json!(s.snaptime));
            if let Some(p) = &s.parent {
                c.insert("parent".into(), json!(p));
            }
            let digest = digest_of(&Value::Object(c.clone()));
            c.insert("digest".into(), json!(digest));
        }
        None => {
            if let Some(p) = &vm.parent {
                c.insert("parent".into(), json!(p));
            }
            if let Some(lock) = pve.lock_of(vm) {
                c.insert("lock".into(), json!(lock));
            }
            c.insert("digest".into(), json!(config_digest(pve, vm)));
        }
    }
    Response::ok(Value::Object(c))
}

/// The digest of the config file (current values, pending section, lock, parent): the same
/// whether `current` is asked for or not, and changed by every change.
pub(super) fn config_digest(pve: &Pve, vm: &Vm) -> String {
    digest_of(&json!([
        config_map(pve, vm, false),
        vm.pending,
        pve.lock_of(vm),
        vm.parent
    ]))
}

/// The VM's config keys; `with_pending`: pending changes shown as if applied (`current=0`).
fn config_map(pve: &Pve, vm: &Vm, with_pending: bool) -> serde_json::Map<String, Value> {
    let mut vm = vm.clone();
    if with_pending {
        let pending = std::mem::take(&mut vm.pending);
        crate::sim::state::pve_config::apply(&mut vm, &pending);
    }
    let vm = &vm;
    let mut c = serde_json::Map::new();
    if !vm.name.is_empty() {
        c.insert("name".into(), json!(vm.name));
    }
    if vm.disks.is_empty() && vm.mac.is_empty() {
        // A restore's stub: nothing but its memory.
        c.insert("memory".into(), json!(vm.memory_mib.to_string()));
        return c;
    }
    if vm.agent {
        c.insert("agent".into(), json!("1"));
    }
    c.insert("cores".into(), json!(vm.cores));
    c.insert("sockets".into(), json!(1));
    c.insert("memory".into(), json!(vm.memory_mib.to_string()));
    c.insert("ostype".into(), json!("l26"));
    c.insert("scsihw".into(), json!("virtio-scsi-single"));
    c.insert("boot".into(), json!("order=scsi0;ide2;net0"));
    for d in &vm.disks {
        c.insert(
            d.key.clone(),
            json!(format!(
                "{},iothread=1,size={}",
                volid(pve, vm, &d.volume),
                d.size
            )),
        );
    }
    let cdrom = match vm.boot {
        Some(crate::sim::state::BootImage::TalosIso) => {
            "nfs-backup:iso/metal-amd64.iso,media=cdrom,size=100M"
        }
        _ => "none,media=cdrom",
    };
    c.insert("ide2".into(), json!(cdrom));
    c.insert("net0".into(), json!(vm.net0()));
    if let Some(ip) = &vm.ipconfig0 {
        c.insert("ipconfig0".into(), json!(ip));
    }
    if let Some(tags) = &vm.tags {
        c.insert("tags".into(), json!(tags));
    }
    if vm.template {
        c.insert("template".into(), json!(1));
    }
    c.insert("onboot".into(), json!(1));
    c.insert(
        "smbios1".into(),
        json!(format!(
            "uuid=00000000-0000-4000-8000-{:012}",
            u64::from(vm.vmid) + vm.uuid_seed * 1_000_000_000
        )),
    );
    c
}

/// 40 hex digits, like the SHA-1 PVE computes over the config file.
pub(super) fn digest_of(v: &Value) -> String {
    hex::encode(Sha256::digest(v.to_string().as_bytes()))[..40].to_owned()
}

fn agent(vm: &Vm) -> Response {
    if !vm.agent {
        return Response::fail(500, "No QEMU guest agent configured");
    }
    if vm.status != "running" {
        return Response::fail(500, &format!("VM {} is not running", vm.vmid));
    }
    if !vm.agent_running {
        return Response::fail(500, "QEMU guest agent is not running");
    }
    let result: Vec<Value> = vm
        .interfaces
        .iter()
        .map(|i| {
            let ips: Vec<Value> = i
                .addresses
                .iter()
                .map(|a| {
                    let (ip, prefix) = a.split_once('/').unwrap_or((a, "32"));
                    let kind = if ip.contains(':') { "ipv6" } else { "ipv4" };
                    json!({"ip-address": ip, "ip-address-type": kind,
                           "prefix": prefix.parse::<u32>().unwrap_or(32)})
                })
                .collect();
            let mut v = json!({"name": i.name, "hardware-address": i.hardware_address});
            if !ips.is_empty() {
                v["ip-addresses"] = Value::Array(ips);
            }
            v["statistics"] = json!({"rx-bytes": 912_345_678, "rx-packets": 812_345,
                "rx-errs": 0, "rx-dropped": 0, "tx-bytes": 812_345_678, "tx-packets": 712_345,
                "tx-errs": 0, "tx-dropped": 0});
            v
        })
        .collect();
    Response::ok(json!({ "result": result }))
}

fn snapshot_list(vm: &Vm) -> Value {
    let mut out: Vec<Value> = vm
        .snapshots
        .iter()
        .map(|s| {
            let mut v = json!({"name": s.name, "description": s.description.trim_end(),
                               "snaptime": s.snaptime, "vmstate": u8::from(s.vmstate)});
            if let Some(p) = &s.parent {
                v["parent"] = json!(p);
            }
            if let Some(st) = &s.snapstate {
                v["snapstate"] = json!(st);
            }
            v
        })
        .collect();
    let mut current = json!({"name": "current", "description": "You are here!",
        "digest": digest_of(&json!([vm.vmid, vm.parent, vm.snapshots.len()])),
        "running": u8::from(vm.status == "running")});
    if let Some(p) = &vm.parent {
        current["parent"] = json!(p);
    }
    out.push(current);
    Value::Array(out)
}

// ---- tasks ---------------------------------------------------------------------------------

/// What a task of this VM meets: its lock, or one that only tasks see ([`Pve::task_locked`]).
pub(super) fn lock_error(pve: &Pve, vm: &Vm) -> Option<String> {
    pve.lock_of(vm)
        .or_else(|| pve.task_locked.get(&vm.vmid).cloned())
        .map(|l| format!("VM is locked ({l})"))
}

/// Records a task and answers its UPID. `check` is the task's fate: `Ok` runs for
/// `task_duration_ms` with `log`, `Err(msg)` fails quickly with `TASK ERROR: msg`.
fn start_task(
    pve: &mut Pve,
    call: &Call<'_>,
    task_type: &str,
    check: Result<(), String>,
    log: Vec<String>,
    effect: Option<Effect>,
) -> Response {
    let quick = check.is_err();
    let effect = effect.filter(|_| check.is_ok());
    let upid = new_task(pve, call, task_type, check, quick, log, effect, &[]);
    Response::ok(json!(upid))
}

/// Records a task; returns its UPID. A failing task ends quickly (`quick`: a check at the
/// worker's start) or after the full duration; `effect` runs at the end either way (told
/// whether the task succeeded). `also_held`: more VMIDs whose [`Pve::hold_tasks`] entry holds it.
#[allow(clippy::too_many_arguments)]
pub(super) fn new_task(
    pve: &mut Pve,
    call: &Call<'_>,
    task_type: &str,
    check: Result<(), String>,
    quick: bool,
    log: Vec<String>,
    effect: Option<Effect>,
    also_held: &[u32],
) -> String {
    let vmid = call.vmid();
    let node = call.param("node").to_owned();
    let seq = u32::try_from(pve.tasks.len()).unwrap_or(u32::MAX);
    let pid = 0x000B_0000 + seq;
    let pstart = 0x0197_A1E3 + u64::from(seq) * 7;
    let starttime = call.now_ms / 1000;
    let upid = format!(
        "UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{task_type}:{vmid}:{}:",
        call.user
    );
    let (outcome, duration_ms, log) = match check {
        Ok(()) => ("OK".to_owned(), pve.task_duration_ms, log),
        // Lock and name checks come first inside the worker: such tasks end almost at once.
        Err(e) if quick => (e, (pve.task_duration_ms / 10).min(200), Vec::new()),
        Err(e) => (e, pve.task_duration_ms, log),
    };
    let held =
        pve.hold_tasks.contains(&vmid) || also_held.iter().any(|v| pve.hold_tasks.contains(v));
    pve.tasks.push(Task {
        upid: upid.clone(),
        node,
        task_type: task_type.to_owned(),
        vmid,
        user: call.user.to_owned(),
        started_ms: call.now_ms,
        duration_ms,
        exitstatus: None,
        outcome: outcome.clone(),
        log,
        effect,
        held,
    });
    upid
}

fn create_snapshot(pve: &mut Pve, call: &Call<'_>, vm: &Vm) -> Response {
    let name = call.param("snapname").to_owned();
    // Checked in the API handler itself, so these are HTTP errors, not task errors.
    if name == "current" || name.eq_ignore_ascii_case("pending") {
        return Response::fail(
            500,
            &format!("unable to use snapshot name '{name}' (reserved name)"),
        );
    }
    // `__snapshot_prepare` order: lock, name clash, storage feature; then our injected failure.
    let check = if let Some(e) = lock_error(pve, vm) {
        Err(e)
    } else if vm.snapshots.iter().any(|s| s.name == name) {
        Err(format!("snapshot name '{name}' already used"))
    } else if !vm.disks.iter().all(|d| d.snapshot) {
        Err("snapshot feature is not available".to_owned())
    } else if let Some(msg) = pve.snapshot_fails.get(&vm.vmid) {
        Err(msg.clone())
    } else {
        Ok(())
    };
    let mut log = Vec::new();
    if check.is_ok() {
        for d in &vm.disks {
            let volid = volid(pve, vm, &d.volume);
            log.push(format!("snapshotting 'drive-{}' ({volid})", d.key));
            let vol = volid.split_once(':').map_or(volid.as_str(), |(_, v)| v);
            log.push(if pve.on_zfs(vm) {
                String::new()
            } else {
                format!("  Logical volume \"snap_{vol}_{name}\" created.")
            });
        }
        log.retain(|l| !l.is_empty());
        let running = vm.status == "running";
        let vm_mut = pve.vm_mut(vm.vmid).expect("exists");
        vm_mut.lock = Some("snapshot".into());
        vm_mut.snapshots.push(Snapshot {
            name: name.clone(),
            description: call.param("description").to_owned(),
            snaptime: call.now_ms / 1000,
            // RAM is only saved from a running VM.
            vmstate: call.matched.flag("vmstate", false) && running,
            parent: vm.parent.clone(),
            snapstate: Some("prepare".into()),
            running,
        });
    }
    start_task(
        pve,
        call,
        "qmsnapshot",
        check,
        log,
        Some(Effect::Snapshot { name }),
    )
}

fn delete_snapshot(pve: &mut Pve, call: &Call<'_>, vm: &Vm) -> Response {
    let name = call.param("snapname").to_owned();
    let check = if let Some(e) = lock_error(pve, vm) {
        Err(e)
    } else if !vm.snapshots.iter().any(|s| s.name == name) {
        Err(format!("snapshot '{name}' does not exist"))
    } else {
        Ok(())
    };
    let mut log = Vec::new();
    if check.is_ok() {
        for d in &vm.disks {
            let volid = volid(pve, vm, &d.volume);
            let vol = volid.split_once(':').map_or(volid.as_str(), |(_, v)| v);
            if !pve.on_zfs(vm) {
                log.push(format!(
                    "  Logical volume \"snap_{vol}_{name}\" successfully removed."
                ));
            }
        }
        let vm_mut = pve.vm_mut(vm.vmid).expect("exists");
        vm_mut.lock = Some("snapshot-delete".into());
        if let Some(s) = vm_mut.snapshots.iter_mut().find(|s| s.name == name) {
            s.snapstate = Some("delete".into());
        }
    }
    start_task(
        pve,
        call,
        "qmdelsnapshot",
        check,
        log,
        Some(Effect::DeleteSnapshot { name }),
    )
}

fn rollback(pve: &mut Pve, call: &Call<'_>, vm: &Vm) -> Response {
    let name = call.param("snapname").to_owned();
    let start = call.matched.flag("start", false);
    // `snapshot_rollback` order: exists and complete, volumes can roll back, then the lock.
    let pos = vm.snapshots.iter().position(|s| s.name == name);
    let check = match pos {
        None => Err(format!("snapshot '{name}' does not exist")),
        Some(i) if vm.snapshots[i].snapstate.is_some() => Err(format!(
            "unable to rollback to incomplete snapshot (snapstate = {})",
            vm.snapshots[i].snapstate.as_deref().unwrap_or_default()
        )),
        // Snapshots are kept in creation order, so the newest is the last one.
        Some(i) if pve.on_zfs(vm) && i + 1 != vm.snapshots.len() => {
            let disk = vm
                .disks
                .first()
                .map(|d| volid(pve, vm, &d.volume))
                .unwrap_or_default();
            Err(format!(
                "can't rollback, '{name}' is not most recent snapshot on '{disk}'"
            ))
        }
        Some(_) => lock_error(pve, vm).map_or(Ok(()), Err),
    };
    let mut log = Vec::new();
    if check.is_ok() {
        let vm_mut = pve.vm_mut(vm.vmid).expect("exists");
        if vm_mut.status == "running" {
            // PVE hard-stops the VM before rolling back (no graceful shutdown).
            log.push(format!("stopping VM {} (rollback)", vm.vmid));
            vm_mut.status = "stopped".into();
        }
        vm_mut.lock = Some("rollback".into());
        for d in &vm.disks {
            let volid = volid(pve, vm, &d.volume);
            log.push(format!("rolling back '{volid}' to snapshot '{name}'"));
        }
        if start {
            log.push(format!("starting VM {}", vm.vmid));
        }
    }
    start_task(
        pve,
        call,
        "qmrollback",
        check,
        log,
        Some(Effect::Rollback { name, start }),
    )
}

fn find_task<'a>(pve: &'a Pve, call: &Call<'_>) -> Result<&'a Task, Response> {
    let upid = call.param("upid");
    if upid.parse::<crate::pve::Upid>().is_err() {
        return Err(Response::param_errors([(
            "upid".to_owned(),
            "unable to parse worker upid".to_owned(),
        )]));
    }
    pve.tasks
        .iter()
        .find(|t| t.upid == upid && t.node == call.param("node"))
        .ok_or_else(|| Response::param_errors([("upid".to_owned(), "no such task".to_owned())]))
}

fn task_status(pve: &Pve, call: &Call<'_>) -> Response {
    let task = match find_task(pve, call) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let u: crate::pve::Upid = task.upid.parse().expect("we wrote it");
    let mut v = json!({
        "upid": task.upid, "node": task.node, "pid": u.pid, "pstart": u.pstart,
        "starttime": u.starttime, "type": task.task_type, "id": task.vmid.to_string(),
        "user": u.user,
        "status": if task.exitstatus.is_some() { "stopped" } else { "running" },
    });
    if let Some(t) = &u.token {
        v["tokenid"] = json!(t);
    }
    if let Some(e) = &task.exitstatus {
        v["exitstatus"] = json!(e);
    }
    Response::ok(v)
}

fn task_log(pve: &Pve, call: &Call<'_>) -> Response {
    let task = match find_task(pve, call) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let start: usize = call.param("start").parse().unwrap_or(0);
    let limit: usize = call
        .matched
        .get("limit")
        .map_or(50, |l| l.parse().unwrap_or(50));
    let lines: Vec<&String> = task.log.iter().collect();
    if lines.is_empty() {
        return Response::ok_with(json!({"data": [{"n": 1, "t": "no content"}], "total": 1}));
    }
    let take = if limit == 0 { usize::MAX } else { limit };
    let data: Vec<Value> = lines
        .iter()
        .enumerate()
        .skip(start)
        .take(take)
        .map(|(i, t)| json!({"n": i + 1, "t": t}))
        .collect();
    Response::ok_with(json!({"data": data, "total": lines.len()}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::pve_api::schema::{self, ParamValue};
    use crate::sim::state::Cluster;

    #[test]
    fn disk_sizes() {
        assert_eq!(size_bytes("32G"), 32 * 1024 * MIB);
        assert_eq!(size_bytes("4M"), 4 * MIB);
        assert_eq!(size_bytes("512"), 512);
    }

    fn call(
        pve: &mut Pve,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        now_ms: i64,
    ) -> Response {
        let segs: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(str::to_owned)
            .collect();
        let params: Vec<(String, ParamValue)> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ParamValue::Text((*v).to_owned())))
            .collect();
        let matched = schema::check(method, &segs, &params).unwrap();
        let c = Call {
            method,
            matched: &matched,
            user: "root@pam!t",
            fingerprint: "AA",
            now_ms,
        };
        handle(pve, &c)
    }

    /// The task's effects happen at its start and its end, decided by timestamps alone.
    #[test]
    fn snapshot_task_lifecycle_by_time() {
        let mut pve = Cluster::example(None).pve;
        pve.task_duration_ms = 1000;
        let t0 = 1_736_154_000_000;
        let r = call(
            &mut pve,
            "POST",
            "/nodes/pve1/qemu/101/snapshot",
            &[("snapname", "s1")],
            t0,
        );
        let upid = r.body.unwrap()["data"].as_str().unwrap().to_owned();
        assert!(upid.starts_with("UPID:pve1:000B0000:0197A1E3:"), "{upid}");
        assert!(upid.ends_with(":qmsnapshot:101:root@pam!t:"), "{upid}");
        assert_eq!(pve.vm(101).unwrap().lock.as_deref(), Some("snapshot"));

        assert!(!pve.advance(t0 + 999));
        let status = format!("/nodes/pve1/tasks/{upid}/status");
        let r = call(&mut pve, "GET", &status, &[], t0 + 999);
        assert_eq!(r.body.unwrap()["data"]["status"], "running");

        assert!(pve.advance(t0 + 1000));
        let r = call(&mut pve, "GET", &status, &[], t0 + 1000);
        let data = r.body.unwrap()["data"].clone();
        assert_eq!(
            (data["status"].as_str(), data["exitstatus"].as_str()),
            (Some("stopped"), Some("OK"))
        );
        assert_eq!(
            (data["user"].as_str(), data["tokenid"].as_str()),
            (Some("root@pam"), Some("t"))
        );
        let vm = pve.vm(101).unwrap();
        assert_eq!(
            (vm.lock.as_deref(), vm.parent.as_deref()),
            (None, Some("s1"))
        );
        assert_eq!(vm.snapshots[0].snapstate, None);

        // Same name again: HTTP 200 + UPID, the task fails fast.
        let r = call(
            &mut pve,
            "POST",
            "/nodes/pve1/qemu/101/snapshot",
            &[("snapname", "s1")],
            t0 + 2000,
        );
        assert_eq!(r.status, 200);
        pve.advance(t0 + 2100);
        assert_eq!(
            pve.tasks[1].exitstatus.as_deref(),
            Some("snapshot name 's1' already used")
        );
        assert_eq!(
            pve.tasks[1].log,
            ["TASK ERROR: snapshot name 's1' already used"]
        );
    }

    /// A lock only tasks meet, tasks held until released, and one VM on ZFS.
    #[test]
    fn faults_for_one_vm() {
        let mut pve = Cluster::example(None).pve;
        pve.task_duration_ms = 1000;
        pve.task_locked.insert(102, "backup".into());
        pve.hold_tasks.push(101);
        pve.vm_mut(103).unwrap().zfs = true;
        let r = call(
            &mut pve,
            "GET",
            "/nodes/pve2/qemu/102/status/current",
            &[],
            0,
        );
        assert_eq!(r.body.unwrap()["data"].get("lock"), None);
        let snap = [("snapname", "s1")];
        call(&mut pve, "POST", "/nodes/pve2/qemu/102/snapshot", &snap, 0);
        call(&mut pve, "POST", "/nodes/pve1/qemu/101/snapshot", &snap, 0);
        pve.advance(60_000);
        assert_eq!(
            pve.tasks[0].exitstatus.as_deref(),
            Some("VM is locked (backup)")
        );
        assert!(pve.tasks[1].held);
        assert_eq!(pve.tasks[1].exitstatus, None);
        assert_eq!(pve.vm(101).unwrap().lock.as_deref(), Some("snapshot"));

        let scsi0 = |pve: &mut Pve, path: &str| {
            let r = call(pve, "GET", path, &[], 0);
            r.body.unwrap()["data"]["scsi0"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert!(scsi0(&mut pve, "/nodes/pve3/qemu/103/config").starts_with("local-zfs:vm-103-"));
        assert!(scsi0(&mut pve, "/nodes/pve2/qemu/102/config").starts_with("local-lvm:vm-102-"));
    }

    #[test]
    fn synchronous_errors() {
        let mut pve = Cluster::example(None).pve;
        let r = call(
            &mut pve,
            "POST",
            "/nodes/pve1/qemu/101/snapshot",
            &[("snapname", "current")],
            0,
        );
        assert_eq!(r.status, 500);
        assert_eq!(
            r.reason,
            "unable to use snapshot name 'current' (reserved name)"
        );
        let r = call(
            &mut pve,
            "GET",
            "/nodes/pve2/qemu/101/status/current",
            &[],
            0,
        );
        assert_eq!(
            r.body.unwrap()["message"],
            "Configuration file 'nodes/pve2/qemu-server/101.conf' does not exist\n"
        );
        let r = call(&mut pve, "GET", "/nodes/pve9/qemu", &[], 0);
        assert_eq!(r.reason, "no such cluster node 'pve9'");
        let r = call(
            &mut pve,
            "GET",
            "/nodes/pve1/tasks/UPID:pve1:000B0000:0197A1E3:6650A1B2:qmstart:101:a@b!c:/status",
            &[],
            0,
        );
        assert_eq!(r.body.unwrap()["errors"]["upid"], "no such task");
        let r = call(&mut pve, "GET", "/nodes/pve1/tasks/nonsense/status", &[], 0);
        assert_eq!(
            r.body.unwrap()["errors"]["upid"],
            "unable to parse worker upid"
        );
        pve.vm_mut(101).unwrap().status = "stopped".into();
        let r = call(
            &mut pve,
            "GET",
            "/nodes/pve1/qemu/101/agent/network-get-interfaces",
            &[],
            0,
        );
        assert_eq!(r.reason, "VM 101 is not running");
        pve.offline_nodes.push("pve1".into());
        let r = call(
            &mut pve,
            "GET",
            "/nodes/pve1/qemu/101/status/current",
            &[],
            0,
        );
        // A host that is down: a connection error by default, a timeout with the knob.
        assert_eq!(
            (r.status, r.reason.as_str(), r.body),
            (595, "No route to host", None)
        );
        pve.proxy_status = 596;
        let r = call(
            &mut pve,
            "GET",
            "/nodes/pve1/qemu/101/status/current",
            &[],
            0,
        );
        assert_eq!((r.status, r.body), (596, None));
    }
}
