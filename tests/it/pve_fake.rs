//! A small stateful Proxmox VE behind wiremock, for set flows: VMs on cluster nodes, their
//! snapshots, and tasks that run for a set time. Shapes follow `proxmox.md` (§3–5): UPIDs, task
//! status `running`/`stopped` + `exitstatus`, errors inside tasks (`VM is locked (backup)`), 596
//! with an empty body for an offline node, ZFS refusing a rollback to a snapshot that is not the
//! newest. Self-contained so `benches/vm_snapshots.rs` can include it with `#[path]`.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

#[derive(Debug, Clone)]
pub struct FakeSnap {
    pub name: String,
    pub description: String,
    pub snaptime: i64,
    pub snapstate: Option<String>,
}

#[derive(Debug, Clone)]
pub struct FakeVm {
    pub node: String,
    pub vmid: u32,
    pub name: String,
    /// `running` or `stopped` (also used as the QMP state).
    pub status: String,
    /// Config lock, visible in `status/current`.
    pub lock: Option<String>,
    /// A lock that appears only when a task runs (a backup starting after the preflight).
    pub task_lock: Option<String>,
    pub has_feature: bool,
    /// Disks on ZFS: rollback only to the newest snapshot.
    pub zfs: bool,
    pub snapshots: Vec<FakeSnap>,
}

impl FakeVm {
    pub fn new(node: &str, vmid: u32, name: &str) -> Self {
        Self {
            node: node.into(),
            vmid,
            name: name.into(),
            status: "running".into(),
            lock: None,
            task_lock: None,
            has_feature: true,
            zfs: false,
            snapshots: Vec::new(),
        }
    }
}

#[derive(Debug)]
enum Effect {
    AddSnap(u32, FakeSnap),
    DelSnap(u32, String),
    Rollback(u32, bool),
}

#[derive(Debug)]
pub struct FakeTask {
    pub upid: String,
    pub node: String,
    pub vmid: u32,
    pub task_type: String,
    pub started: Instant,
    pub duration: Duration,
    pub exitstatus: String,
    /// Still running until released, whatever its duration.
    pub held: bool,
    pub polls: u32,
    effect: Option<Effect>,
}

impl FakeTask {
    fn running(&self, now: Instant) -> bool {
        self.held || now < self.started + self.duration
    }
}

#[derive(Debug, Default)]
pub struct State {
    pub vms: BTreeMap<u32, FakeVm>,
    pub tasks: Vec<FakeTask>,
    pub offline: HashSet<String>,
    pub task_duration: Duration,
    /// New tasks of these VMs stay running until [`FakePve::release`].
    pub hold: HashSet<u32>,
    /// Highest number of tasks running at once, seen at task creation.
    pub max_concurrent: usize,
    clock: i64,
}

impl State {
    fn advance(&mut self) {
        let now = Instant::now();
        let mut effects = Vec::new();
        for t in &mut self.tasks {
            if !t.running(now)
                && let Some(e) = t.effect.take()
            {
                effects.push(e);
            }
        }
        for e in effects {
            match e {
                Effect::AddSnap(vmid, s) => {
                    if let Some(vm) = self.vms.get_mut(&vmid) {
                        vm.snapshots.push(s);
                    }
                }
                Effect::DelSnap(vmid, name) => {
                    if let Some(vm) = self.vms.get_mut(&vmid) {
                        vm.snapshots.retain(|s| s.name != name);
                    }
                }
                Effect::Rollback(vmid, start) => {
                    if let Some(vm) = self.vms.get_mut(&vmid) {
                        vm.status = if start { "running" } else { "stopped" }.into();
                    }
                }
            }
        }
    }

    pub fn tick(&mut self) -> i64 {
        self.clock += 60;
        1_716_560_306 + self.clock
    }

    fn new_task(&mut self, vm: &FakeVm, ty: &str, exit: &str, effect: Option<Effect>) -> String {
        let n = u32::try_from(self.tasks.len()).unwrap_or(0);
        let upid = format!(
            "UPID:{}:{:08X}:0197A1E3:{:08X}:{ty}:{}:k8s-dr@pve!cli:",
            vm.node,
            0x000B_2F4C + n,
            0x6650_A1B2 + n,
            vm.vmid
        );
        let now = Instant::now();
        let running = self.tasks.iter().filter(|t| t.running(now)).count() + 1;
        self.max_concurrent = self.max_concurrent.max(running);
        self.tasks.push(FakeTask {
            upid: upid.clone(),
            node: vm.node.clone(),
            vmid: vm.vmid,
            task_type: ty.into(),
            started: now,
            duration: self.task_duration,
            exitstatus: exit.into(),
            held: self.hold.contains(&vm.vmid),
            polls: 0,
            effect,
        });
        upid
    }
}

pub struct FakePve {
    pub server: MockServer,
    pub state: Arc<Mutex<State>>,
}

impl FakePve {
    pub async fn start(vms: Vec<FakeVm>, task_duration: Duration) -> Self {
        let state = Arc::new(Mutex::new(State {
            vms: vms.into_iter().map(|v| (v.vmid, v)).collect(),
            task_duration,
            ..State::default()
        }));
        let server = MockServer::start().await;
        Mock::given(any())
            .respond_with(Responder(state.clone()))
            .mount(&server)
            .await;
        Self { server, state }
    }

    pub fn uri(&self) -> String {
        self.server.uri()
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Lets held tasks finish now.
    pub fn release(&self) {
        self.with(|s| {
            s.hold.clear();
            for t in &mut s.tasks {
                if t.held {
                    t.held = false;
                    t.duration = Duration::ZERO;
                }
            }
        });
    }

    pub fn snapshot_names(&self, vmid: u32) -> Vec<String> {
        self.with(|s| {
            s.vms[&vmid]
                .snapshots
                .iter()
                .map(|x| x.name.clone())
                .collect()
        })
    }

    pub async fn requests(&self) -> Vec<Request> {
        self.server.received_requests().await.unwrap_or_default()
    }

    /// Requests with this method whose path (below `/api2/json`) matches `pred`.
    pub async fn count(&self, m: &str, pred: impl Fn(&str) -> bool) -> usize {
        self.requests()
            .await
            .iter()
            .filter(|r| r.method.as_str() == m && pred(r.url.path()))
            .count()
    }
}

struct Responder(Arc<Mutex<State>>);

fn ok(data: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({ "data": data }))
}

fn err(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({ "data": null, "message": format!("{message}\n") }))
}

fn decode(seg: &str) -> String {
    url::form_urlencoded::parse(format!("x={seg}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl Respond for Responder {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut st = self.0.lock().unwrap();
        st.advance();
        let Some(p) = req.url.path().strip_prefix("/api2/json/") else {
            return err(501, "not under /api2/json");
        };
        let segs: Vec<String> = p.split('/').map(decode).collect();
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        let m = req.method.as_str();
        let form: HashMap<String, String> = url::form_urlencoded::parse(&req.body)
            .into_owned()
            .chain(req.url.query_pairs().into_owned())
            .collect();
        match (m, s.as_slice()) {
            ("GET", ["version"]) => {
                return ok(json!({"version":"8.4.1","release":"8.4","repoid":"2a5fa54a8503f96d"}));
            }
            ("GET", ["cluster", "resources"]) => {
                let list: Vec<Value> = st
                    .vms
                    .values()
                    .map(|v| json!({"id": format!("qemu/{}", v.vmid), "vmid": v.vmid, "node": v.node, "type": "qemu", "status": v.status, "name": v.name}))
                    .collect();
                return ok(json!(list));
            }
            _ => {}
        }
        let ["nodes", node, rest @ ..] = s.as_slice() else {
            return err(501, &format!("Method '{m} /{p}' not implemented"));
        };
        if st.offline.contains(*node) {
            // pveproxy's failed hop to another cluster node: no body at all.
            return ResponseTemplate::new(596);
        }
        if let ["tasks", upid, what] = rest {
            let now = Instant::now();
            let Some(t) = st.tasks.iter_mut().find(|t| t.upid == *upid) else {
                return ResponseTemplate::new(400)
                    .set_body_json(json!({"data": null, "errors": {"upid": "no such task"}}));
            };
            return match *what {
                "status" => {
                    t.polls += 1;
                    let running = t.running(now);
                    let mut d = json!({
                        "upid": t.upid, "node": t.node, "pid": 733_004, "pstart": 26_714_595,
                        "starttime": 1_716_560_306, "type": t.task_type, "id": t.vmid.to_string(),
                        "user": "k8s-dr@pve", "tokenid": "cli",
                        "status": if running { "running" } else { "stopped" },
                    });
                    if !running {
                        d["exitstatus"] = json!(t.exitstatus);
                    }
                    ok(d)
                }
                _ => {
                    let last = if t.exitstatus == "OK" {
                        "TASK OK".to_owned()
                    } else {
                        format!("TASK ERROR: {}", t.exitstatus)
                    };
                    ResponseTemplate::new(200).set_body_json(json!({
                        "data": [{"n": 1, "t": format!("{} of VM {}", t.task_type, t.vmid)}, {"n": 2, "t": last}],
                        "total": 2
                    }))
                }
            };
        }
        let ["qemu", id, tail @ ..] = rest else {
            return err(501, &format!("Method '{m} /{p}' not implemented"));
        };
        let vmid: u32 = id.parse().unwrap_or(0);
        let Some(vm) = st.vms.get(&vmid).filter(|v| v.node == *node).cloned() else {
            return err(
                500,
                &format!("Configuration file 'nodes/{node}/qemu-server/{id}.conf' does not exist"),
            );
        };
        let locked = vm.lock.clone().or(vm.task_lock.clone());
        match (m, tail) {
            ("GET", ["status", "current"]) => {
                let mut d = json!({"vmid": vm.vmid, "name": vm.name, "status": vm.status, "qmpstatus": vm.status, "template": 0, "agent": 0, "ha": {"managed": 0}});
                if let Some(l) = &vm.lock {
                    d["lock"] = json!(l);
                }
                ok(d)
            }
            ("GET", ["feature"]) => {
                ok(json!({"hasFeature": u8::from(vm.has_feature), "nodes": [vm.node]}))
            }
            ("GET", ["config"]) => {
                let store = if vm.zfs { "local-zfs" } else { "local-lvm" };
                ok(
                    json!({"name": vm.name, "scsi0": format!("{store}:vm-{}-disk-0,size=32G", vm.vmid), "digest": "11f6ad8ec52a2984abaafd7c3b516503785c2072"}),
                )
            }
            ("GET", ["snapshot"]) => {
                let mut list: Vec<Value> = vm
                    .snapshots
                    .iter()
                    .rev() // PVE gives no order; newest first here keeps callers honest.
                    .map(|x| {
                        let mut v = json!({"name": x.name, "description": x.description, "snaptime": x.snaptime, "vmstate": 0});
                        if let Some(s) = &x.snapstate {
                            v["snapstate"] = json!(s);
                        }
                        v
                    })
                    .collect();
                list.push(json!({"name": "current", "description": "You are here!", "digest": "11f6", "running": u8::from(vm.status == "running")}));
                ok(json!(list))
            }
            ("POST", ["snapshot"]) => {
                let name = form.get("snapname").cloned().unwrap_or_default();
                let (exit, effect) = if let Some(l) = &locked {
                    (format!("VM is locked ({l})"), None)
                } else if vm.snapshots.iter().any(|x| x.name == name) {
                    (format!("snapshot name '{name}' already used"), None)
                } else if !vm.has_feature {
                    ("snapshot feature is not available".into(), None)
                } else {
                    let snap = FakeSnap {
                        name,
                        description: form.get("description").cloned().unwrap_or_default(),
                        snaptime: st.tick(),
                        snapstate: None,
                    };
                    ("OK".into(), Some(Effect::AddSnap(vmid, snap)))
                };
                ok(json!(st.new_task(&vm, "qmsnapshot", &exit, effect)))
            }
            ("DELETE", ["snapshot", name]) => {
                let (exit, effect) = if !vm.snapshots.iter().any(|x| x.name == *name) {
                    (format!("snapshot '{name}' does not exist"), None)
                } else if let Some(l) = &locked {
                    (format!("VM is locked ({l})"), None)
                } else {
                    ("OK".into(), Some(Effect::DelSnap(vmid, (*name).to_owned())))
                };
                ok(json!(st.new_task(&vm, "qmdelsnapshot", &exit, effect)))
            }
            ("POST", ["snapshot", name, "rollback"]) => {
                let newest = vm.snapshots.iter().max_by_key(|x| x.snaptime);
                let start = form.get("start").is_some_and(|v| v == "1");
                let (exit, effect) = if !vm.snapshots.iter().any(|x| x.name == *name) {
                    (format!("snapshot '{name}' does not exist"), None)
                } else if let Some(l) = &locked {
                    (format!("VM is locked ({l})"), None)
                } else if vm.zfs && newest.is_some_and(|n| n.name != *name) {
                    (
                        format!(
                            "can't rollback, '{name}' is not most recent snapshot on 'local-zfs:vm-{}-disk-0'",
                            vm.vmid
                        ),
                        None,
                    )
                } else {
                    ("OK".into(), Some(Effect::Rollback(vmid, start)))
                };
                ok(json!(st.new_task(&vm, "qmrollback", &exit, effect)))
            }
            ("POST", ["status", "start"]) => {
                let exit = if vm.status == "running" {
                    format!("VM {} already running", vm.vmid)
                } else {
                    "OK".into()
                };
                ok(json!(st.new_task(
                    &vm,
                    "qmstart",
                    &exit,
                    Some(Effect::Rollback(vmid, true))
                )))
            }
            _ => err(501, &format!("Method '{m} /{p}' not implemented")),
        }
    }
}

/// Six VMs across three PVE nodes: control planes 101–103 and workers 201–203.
pub fn six_vms() -> Vec<FakeVm> {
    let mut v = Vec::new();
    for i in 1..=3u32 {
        v.push(FakeVm::new(
            &format!("pve{i}"),
            100 + i,
            &format!("talos-cp-{i}"),
        ));
    }
    for i in 1..=3u32 {
        v.push(FakeVm::new(
            &format!("pve{i}"),
            200 + i,
            &format!("talos-worker-{i}"),
        ));
    }
    v
}
