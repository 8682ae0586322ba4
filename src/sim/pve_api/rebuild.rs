//! The endpoints that re-create a lost VM (`reference/proxmox.md` §12): `nextid`, storages and
//! their backups, restore (`POST /nodes/{node}/qemu` with `archive`), clone, config `PUT`/`POST`
//! and destroy. Synchronous checks answer 4xx/5xx; the rest fails inside the task, as in
//! qemu-server's `create_vm`, `clone_vm`, `update_vm` and `destroy_vm`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::Response;
use super::handlers::{Call, config_digest, lock_error, new_task};
use crate::sim::state::{Effect, Pve, Vm, pve_config};

/// Parameters that are not VM config keys.
const NOT_CONFIG: &[&str] = &[
    "node",
    "vmid",
    "archive",
    "storage",
    "unique",
    "start",
    "force",
    "pool",
    "bwlimit",
    "live-restore",
    "import-working-storage",
    "digest",
    "skiplock",
    "delete",
    "revert",
    "background_delay",
];

fn is_drive(key: &str) -> bool {
    let base = key.trim_end_matches(|c: char| c.is_ascii_digit());
    matches!(base, "scsi" | "ide" | "sata" | "virtio" | "unused")
        || matches!(key, "efidisk0" | "tpmstate0")
}

/// The config keys sent along (`name`, `cores`, `net0`, …).
fn config_changes(call: &Call<'_>) -> BTreeMap<String, String> {
    call.matched
        .params
        .iter()
        .filter(|(k, _)| !NOT_CONFIG.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A `netN` without a MAC gets a random one (pve-common `random_ether_addr`).
fn complete_macs(pve: &Pve, changes: &mut BTreeMap<String, String>, seed: u64) {
    for (k, v) in changes.iter_mut() {
        if k.starts_with("net") && pve_config::parse_net(v).mac.is_none() {
            let net = pve_config::parse_net(v);
            let salt = k
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            let mac = pve.random_mac(seed ^ salt);
            let mut s = format!("{}={mac}", net.model);
            if let Some(b) = net.bridge {
                s.push_str(&format!(",bridge={b}"));
            }
            for o in net.options {
                s.push(',');
                s.push_str(&o);
            }
            *v = s;
        }
    }
}

pub(super) fn nextid(pve: &Pve, call: &Call<'_>) -> Response {
    match call.matched.get("vmid") {
        // Echoed as it came (a string), when free.
        Some(v) => {
            let vmid: u32 = v.parse().unwrap_or_default();
            if pve.vmid_taken(vmid).is_some() {
                Response::param_errors([("vmid".to_owned(), format!("VM {vmid} already exists"))])
            } else {
                Response::ok(json!(v))
            }
        }
        None => Response::ok(json!(pve.next_free_vmid())),
    }
}

const TIB: u64 = 1024 * 1024 * 1024 * 1024;

pub(super) fn storage_list(pve: &Pve, call: &Call<'_>) -> Response {
    let node = call.param("node");
    if let Some(id) = call.matched.get("storage")
        && pve.storage(id).is_none()
    {
        return Response::param_errors([("storage".to_owned(), "No such storage.".to_owned())]);
    }
    let wanted: Vec<&str> = call
        .matched
        .get("content")
        .map(|c| c.split([',', ';', ' ']).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let target = call.matched.get("target").filter(|t| *t != node);
    let mut out: Vec<Value> = Vec::new();
    let mut storages: Vec<_> = pve.storages.iter().collect();
    storages.sort_by(|a, b| a.id.cmp(&b.id));
    for s in storages {
        if call.matched.get("storage").is_some_and(|id| id != s.id) {
            continue;
        }
        let enabled = !s.disabled && s.available_on(node);
        if (call.matched.flag("enabled", false) || !wanted.is_empty()) && !enabled {
            continue;
        }
        if !wanted.is_empty() && !wanted.iter().any(|w| s.allows(w)) {
            continue;
        }
        if let Some(t) = target
            && !(s.shared && s.available_on(t))
        {
            continue;
        }
        let mut content = s.content.clone();
        content.reverse();
        let (total, used) = if enabled {
            let used: u64 = pve
                .backups
                .iter()
                .filter(|b| b.storage == s.id && b.visible_from(pve, node))
                .map(|b| b.size)
                .sum::<u64>()
                + 100_000_000_000;
            (4 * TIB, used)
        } else {
            (0, 0)
        };
        let mut v = json!({
            "storage": s.id, "type": s.kind, "content": content.join(","),
            "shared": u8::from(s.shared), "enabled": u8::from(enabled),
            "active": u8::from(enabled), "total": total, "used": used,
            "avail": total - used,
        });
        if total > 0 {
            v["used_fraction"] = json!(used as f64 / total as f64);
        }
        out.push(v);
    }
    Response::ok(Value::Array(out))
}

/// The storage's errors as `Content.pm`/`Storage.pm` raise them.
fn usable(pve: &Pve, id: &str, node: &str) -> Result<(), String> {
    let Some(s) = pve.storage(id) else {
        return Err(format!("storage '{id}' does not exist"));
    };
    if !s.available_on(node) {
        return Err(format!("storage '{id}' is not available on node '{node}'"));
    }
    if s.disabled {
        return Err(format!("storage '{id}' is disabled"));
    }
    Ok(())
}

pub(super) fn storage_content(pve: &Pve, call: &Call<'_>) -> Response {
    let node = call.param("node");
    let id = call.param("storage");
    if let Err(e) = usable(pve, id, node) {
        return Response::fail(500, &e);
    }
    let s = pve.storage(id).expect("checked");
    if let Some(e) = &s.list_error {
        return Response::fail(500, e);
    }
    let content = call.matched.get("content");
    if content.is_some_and(|c| c != "backup") {
        return Response::ok(json!([]));
    }
    let vmid: Option<u32> = call.matched.get("vmid").and_then(|v| v.parse().ok());
    let mut out: Vec<(String, Value)> = pve
        .backups
        .iter()
        .filter(|b| b.storage == id && b.visible_from(pve, node))
        .filter(|b| vmid.is_none_or(|v| v == b.vmid))
        .map(|b| {
            let volid = b.volid(pve);
            let mut v = json!({
                "volid": volid, "content": "backup", "subtype": "qemu", "vmid": b.vmid,
                "ctime": b.ctime, "size": b.size, "format": b.shown_format(pve),
            });
            if let Some(n) = &b.notes {
                v["notes"] = json!(n.lines().next().unwrap_or_default());
            }
            if b.protected {
                v["protected"] = json!(1);
            }
            if let Some(state) = &b.verification
                && b.is_pbs(pve)
            {
                v["verification"] = json!({
                    "state": state,
                    "upid": format!(
                        "UPID:{node}:0000A11E:0197B000:{:08X}:verificationjob:{id}:root@pam:",
                        b.ctime + 600
                    ),
                });
            }
            (volid.to_ascii_lowercase(), v)
        })
        .collect();
    // Storage.pm volume_list sorts by volid, not by time.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Response::ok(Value::Array(out.into_iter().map(|(_, v)| v).collect()))
}

/// Where a VMID is taken: `Some(node)` when any VM (an offline node's included) has it.
fn owner(pve: &Pve, vmid: u32) -> Option<String> {
    pve.vmid_taken(vmid).map(|v| v.node.clone())
}

/// `POST /nodes/{node}/qemu`: a restore with `archive`, else a plain create.
pub(super) fn create(pve: &mut Pve, call: &Call<'_>) -> Response {
    let node = call.param("node").to_owned();
    let vmid = call.vmid();
    let mut changes = config_changes(call);
    let Some(archive) = call.matched.get("archive").map(str::to_owned) else {
        if let Some(o) = owner(pve, vmid) {
            return Response::fail(
                500,
                &format!("unable to create VM {vmid} - VM {vmid} already exists on node '{o}'"),
            );
        }
        complete_macs(pve, &mut changes, u64::from(vmid));
        let mut vm = Vm::stub(&node, vmid);
        pve_config::apply(&mut vm, &changes);
        vm.net_options.clear();
        vm.lock = Some("create".into());
        pve.vms.push(vm.clone());
        vm.lock = None;
        let upid = new_task(
            pve,
            call,
            "qmcreate",
            Ok(()),
            false,
            Vec::new(),
            Some(Effect::Restore {
                vm: Box::new(vm),
                start: call.matched.flag("start", false),
            }),
            &[],
        );
        return Response::ok(json!(upid));
    };
    let conflicts: Vec<(String, String)> = changes
        .keys()
        .filter(|k| is_drive(k))
        .map(|k| {
            (
                k.clone(),
                "option conflicts with option 'archive'".to_owned(),
            )
        })
        .collect();
    if !conflicts.is_empty() {
        return Response::param_errors(conflicts);
    }
    let (store, rest) = archive.split_once(':').unwrap_or(("", archive.as_str()));
    if !rest.starts_with("backup/") {
        return Response::fail(
            500,
            &format!("unable to use volume {archive} - content type needs to be 'backup'"),
        );
    }
    if let Err(e) = usable(pve, store, &node) {
        return Response::fail(500, &e);
    }
    let is_pbs = pve.storage(store).is_some_and(|s| s.kind == "pbs");
    let backup = pve
        .backup_by_volid(&archive)
        .filter(|b| b.visible_from(pve, &node))
        .cloned();
    // A file archive must be reachable from {node}; PBS archives are opened in the task.
    if backup.is_none() && !is_pbs {
        return Response::fail(500, &format!("can't find file '{archive}'"));
    }
    let force = call.matched.flag("force", false);
    if let Some(o) = owner(pve, vmid) {
        if !force {
            return Response::fail(
                500,
                &format!("unable to restore VM {vmid} - VM {vmid} already exists on node '{o}'"),
            );
        }
        if o != node {
            return Response::fail(
                500,
                &format!(
                    "unable to restore VM {vmid} - close (rename) atomic file '/etc/pve/nodes/{node}/qemu-server/{vmid}.conf' failed: File exists"
                ),
            );
        }
        pve.vms.retain(|v| v.vmid != vmid);
    }
    // The config exists at once, locked until the task ends.
    let mut stub = Vm::stub(&node, vmid);
    stub.lock = Some("create".into());
    pve.vms.push(stub);

    let target_storage = call.matched.get("storage").map(str::to_owned);
    let unique = call.matched.flag("unique", false);
    let mut log = vec![format!("restore vma archive: zstd -q -d -c {archive}")];
    let check = restore_check(pve, &node, backup.as_ref(), target_storage.as_deref(), vmid);
    let effect = backup.map(|b| {
        let mut vm = b.vm.clone();
        vm.renumber(vmid);
        vm.node.clone_from(&node);
        vm.lock = None;
        vm.parent = None;
        vm.snapshots.clear();
        vm.booted = None;
        vm.status = "stopped".into();
        vm.pending.clear();
        if let Some(s) = &target_storage {
            for d in &mut vm.disks {
                if let Some((_, rest)) = d.volume.split_once(':') {
                    d.volume = format!("{s}:{rest}");
                }
            }
        }
        if unique {
            // New random MACs and a new SMBIOS uuid (restore_update_config_line).
            vm.mac = pve.random_mac(u64::from(vmid) << 8);
            vm.uuid_seed = vm.uuid_seed.wrapping_add(1 + u64::from(vmid));
        }
        complete_macs(pve, &mut changes, u64::from(vmid) << 16);
        pve_config::apply(&mut vm, &changes);
        Box::new(vm)
    });
    if check.is_err() {
        log.push(format!(
            "error before or during data restore, some or all disks were not completely restored. VM {vmid} state is NOT cleaned up."
        ));
    }
    let upid = new_task(
        pve,
        call,
        "qmrestore",
        check,
        false,
        log,
        Some(Effect::Restore {
            vm: effect.unwrap_or_else(|| Box::new(Vm::stub(&node, vmid))),
            start: call.matched.flag("start", false),
        }),
        &[],
    );
    Response::ok(json!(upid))
}

/// What fails inside the restore task: the PBS snapshot, the disks' storages, the fault.
fn restore_check(
    pve: &Pve,
    node: &str,
    backup: Option<&crate::sim::state::Backup>,
    storage: Option<&str>,
    vmid: u32,
) -> Result<(), String> {
    let Some(b) = backup else {
        return Err(format!("unable to restore VM {vmid} - backup not found"));
    };
    let mut stores: Vec<String> = match storage {
        Some(s) => vec![s.to_owned()],
        None => {
            b.vm.disks
                .iter()
                .filter_map(|d| d.volume.split_once(':').map(|(s, _)| s.to_owned()))
                .collect()
        }
    };
    stores.dedup();
    for s in stores {
        usable(pve, &s, node).map_err(|e| format!("unable to restore VM {vmid} - {e}"))?;
        if !pve.storage(&s).is_some_and(|st| st.allows("images")) {
            return Err(format!(
                "unable to restore VM {vmid} - Content type 'images' is not available on storage '{s}'"
            ));
        }
    }
    match pve.restore_fails.get(&vmid) {
        Some(msg) => Err(format!("unable to restore VM {vmid} - {msg}")),
        None => Ok(()),
    }
}

/// `POST …/clone` of `source` (on `{node}`, checked by the caller).
pub(super) fn clone(pve: &mut Pve, call: &Call<'_>, source: &Vm) -> Response {
    let node = call.param("node").to_owned();
    let newid: u32 = call.param("newid").parse().unwrap_or_default();
    let target = call
        .matched
        .get("target")
        .map_or_else(|| node.clone(), str::to_owned);
    if let Some(e) = lock_error(pve, source) {
        return Response::fail(500, &e);
    }
    if let Some(snap) = call.matched.get("snapname")
        && !source.snapshots.iter().any(|s| s.name == snap)
    {
        return Response::fail(500, &format!("snapshot '{snap}' does not exist"));
    }
    // A template clones linked by default; a normal VM in full.
    let full = call.matched.flag("full", !source.template);
    let storage = call.matched.get("storage").map(str::to_owned);
    if !full && (storage.is_some() || call.matched.get("format").is_some()) {
        let p = if storage.is_some() {
            "storage"
        } else {
            "format"
        };
        return Response::fail(
            500,
            &format!("parameter '{p}' not allowed for linked clones"),
        );
    }
    if !pve.nodes.contains(&target) {
        return Response::fail(500, &format!("no such cluster node '{target}'"));
    }
    let shared = |pve: &Pve, volume: &str| {
        volume
            .split_once(':')
            .and_then(|(s, _)| pve.storage(s))
            .is_some_and(|s| s.shared)
    };
    if target != node && !source.disks.iter().all(|d| shared(pve, &d.volume)) {
        return Response::fail(
            500,
            &format!("can't clone VM to node '{target}' (VM uses local storage)"),
        );
    }
    if let Some(s) = &storage {
        if let Err(e) = usable(pve, s, &target) {
            return Response::fail(500, &e);
        }
        if !pve.storage(s).is_some_and(|st| st.allows("images")) {
            return Response::param_errors([(
                "storage".to_owned(),
                format!("storage '{s}' does not support vm images"),
            )]);
        }
        if target != node && !pve.storage(s).is_some_and(|st| st.shared) {
            return Response::fail(500, &format!("can't clone to non-shared storage '{s}'"));
        }
    }
    match owner(pve, newid) {
        Some(o) if o == node => {
            return Response::fail(
                500,
                &format!("unable to create VM {newid}: config file already exists"),
            );
        }
        Some(_) => {
            // The cluster file system refuses a second config for the VMID: in the task.
            let e = format!(
                "close (rename) atomic file '/etc/pve/nodes/{node}/qemu-server/{newid}.conf' failed: File exists"
            );
            let upid = new_task(
                pve,
                call,
                "qmclone",
                Err(e),
                true,
                Vec::new(),
                None,
                &[newid],
            );
            return Response::ok(json!(upid));
        }
        None => {}
    }
    let mut vm = source.clone();
    vm.renumber(newid);
    vm.name = call.matched.get("name").map_or_else(
        || format!("Copy-of-VM-{}", source.shown_name()),
        str::to_owned,
    );
    vm.template = false;
    vm.snapshots.clear();
    vm.parent = None;
    vm.status = "stopped".into();
    vm.booted = None;
    vm.pending.clear();
    vm.lock = Some("clone".into());
    // "always change MAC": a new random one, and a new SMBIOS uuid.
    vm.mac = pve.random_mac(u64::from(newid) << 4);
    vm.uuid_seed = vm.uuid_seed.wrapping_add(1 + u64::from(newid));
    for d in &mut vm.disks {
        let (store, _) = d.volume.split_once(':').unwrap_or(("local-lvm", ""));
        let store = storage.clone().unwrap_or_else(|| store.to_owned());
        d.volume = format!("{store}:vm-{newid}-disk-0");
    }
    vm.node.clone_from(&node);
    let log: Vec<String> = source
        .disks
        .iter()
        .map(|d| format!("create full clone of drive {} ({})", d.key, d.volume))
        .collect();
    pve.vms.push(vm.clone());
    let check = match pve.clone_fails.get(&source.vmid) {
        Some(reason) => Err(format!("clone failed: {reason}")),
        None => Ok(()),
    };
    let upid = new_task(
        pve,
        call,
        "qmclone",
        check,
        false,
        log,
        Some(Effect::Clone {
            vm: Box::new(vm),
            target,
        }),
        &[newid],
    );
    Response::ok(json!(upid))
}

/// `PUT` (synchronous) and `POST` (task `qmconfig`) `…/config`.
pub(super) fn update_config(pve: &mut Pve, call: &Call<'_>, vm: &Vm) -> Response {
    if call.matched.get("skiplock").is_some() && call.user != "root@pam" {
        return Response::param_errors([(
            "skiplock".to_owned(),
            "Only root may use this option.".to_owned(),
        )]);
    }
    let mut changes = config_changes(call);
    if let Some(d) = call.matched.get("delete") {
        changes.insert("delete".into(), d.to_owned());
    }
    if changes.is_empty() && call.matched.get("revert").is_none() {
        return Response::fail(500, "no options specified");
    }
    if let Some(d) = call.matched.get("digest")
        && d != config_digest(pve, vm)
    {
        return Response::fail(500, "checksum mismatch (file change by other user?)");
    }
    if let Some(e) = lock_error(pve, vm) {
        return Response::fail(500, &e);
    }
    complete_macs(pve, &mut changes, u64::from(vm.vmid) << 24);
    // On a running VM, what cannot be hot-plugged waits for the next cold start.
    let (cold, hot): (BTreeMap<_, _>, BTreeMap<_, _>) = changes
        .into_iter()
        .partition(|(k, _)| vm.status == "running" && pve_config::COLD.contains(&k.as_str()));
    let vmid = vm.vmid;
    let task_ms = pve.task_duration_ms;
    let v = pve.vm_mut(vmid).expect("checked by the caller");
    v.pending.extend(cold);
    if call.method == "PUT" {
        pve_config::apply(v, &hot);
        return Response::ok(Value::Null);
    }
    let delay_ms = call
        .matched
        .get("background_delay")
        .and_then(|d| d.parse::<u64>().ok())
        .map(|s| s * 1000);
    if delay_ms.is_some_and(|d| d >= task_ms) {
        // Waited for the task, which ended OK in time: `null`.
        pve_config::apply(v, &hot);
        let upid = new_task(pve, call, "qmconfig", Ok(()), false, Vec::new(), None, &[]);
        if let Some(t) = pve.tasks.iter_mut().find(|t| t.upid == upid) {
            t.duration_ms = 0;
        }
        return Response::ok(Value::Null);
    }
    let upid = new_task(
        pve,
        call,
        "qmconfig",
        Ok(()),
        false,
        Vec::new(),
        Some(Effect::Config { vmid, changes: hot }),
        &[],
    );
    Response::ok(json!(upid))
}

/// `DELETE /nodes/{node}/qemu/{vmid}` (query-string parameters).
pub(super) fn destroy(pve: &mut Pve, call: &Call<'_>, vm: &Vm) -> Response {
    if call.matched.get("skiplock").is_some() && call.user != "root@pam" {
        return Response::param_errors([(
            "skiplock".to_owned(),
            "Only root may use this option.".to_owned(),
        )]);
    }
    if vm.status == "running" {
        return Response::fail(500, &format!("VM {} is running - destroy failed", vm.vmid));
    }
    let check = lock_error(pve, vm).map_or(Ok(()), Err);
    let quick = check.is_err();
    let upid = new_task(
        pve,
        call,
        "qmdestroy",
        check,
        quick,
        Vec::new(),
        Some(Effect::Destroy),
        &[],
    );
    Response::ok(json!(upid))
}
