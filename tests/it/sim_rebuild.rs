//! The simulators as a rebuild of a lost control-plane VM meets them (`reference/proxmox.md`
//! §12, `reference/talos.md` §14): real HTTPS requests to the simulated Proxmox VE API, the
//! simulated talosctl binary, and the link between them (a VM that starts with a reserved MAC
//! brings its Talos node up). Every PVE test ends with no schema violation recorded.

use std::time::{Duration, Instant};

use serde_json::Value;
use talos_dr::sim::pve_api::{self, DEMO_TOKEN, PveSim};
use talos_dr::sim::state::Cluster;

use crate::common::{Env, sim_talosctl};

const CP1: &str = "10.5.0.11";
const CP3: &str = "10.5.0.13";
/// talos-cp-3's VM: on pve3, MAC BC:24:11:00:00:03.
const MAC3: &str = "BC:24:11:00:00:03";

struct Lab {
    env: Env,
    sim: PveSim,
    http: reqwest::Client,
}

/// One answer: status and the JSON body (`None` for the bodiless 59x/401).
struct Answer {
    status: u16,
    body: Option<Value>,
}

impl Answer {
    fn data(&self) -> &Value {
        &self.body.as_ref().expect("a body")["data"]
    }
    fn message(&self) -> String {
        self.body.as_ref().expect("a body")["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Lab {
    /// The example cluster with the rebuild fixtures (shared NFS and PBS backups of every VM,
    /// template 9000 on the spare host pve4, DHCP reservations), fast tasks; `lost` takes
    /// pve3 down with talos-cp-3.
    async fn start(lost: bool) -> Self {
        let env = Env::new();
        env.edit_cluster(|c| {
            c.pve.task_duration_ms = 200;
            c.add_rebuild_fixtures(1_767_225_605);
            if lost {
                c.lose_host("pve3");
            }
        });
        let sim = pve_api::serve(env.state.clone()).await.unwrap();
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        Self { env, sim, http }
    }

    async fn call(&self, method: &str, path: &str, params: &[(&str, &str)]) -> Answer {
        let url = format!("{}/api2/json{path}", self.sim.endpoint());
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self
            .http
            .request(m, &url)
            .header("Authorization", format!("PVEAPIToken={DEMO_TOKEN}"));
        rb = if matches!(method, "GET" | "DELETE") {
            rb.query(params)
        } else {
            rb.form(params)
        };
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let body = if text.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&text).unwrap())
        };
        Answer { status, body }
    }

    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Answer {
        self.call("GET", path, params).await
    }

    /// Polls a task (on the node its UPID names) until it stops; its exitstatus.
    async fn wait_task(&self, upid: &str) -> String {
        let node = upid.split(':').nth(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let a = self
                .get(&format!("/nodes/{node}/tasks/{upid}/status"), &[])
                .await;
            assert_eq!(a.status, 200, "{:?}", a.body);
            if a.data()["status"] == "stopped" {
                return a.data()["exitstatus"].as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "task {upid} never ended");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn config(&self, node: &str, vmid: u32) -> Value {
        let a = self
            .get(&format!("/nodes/{node}/qemu/{vmid}/config"), &[])
            .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        a.data().clone()
    }

    fn cluster(&self) -> Cluster {
        self.env.cluster()
    }

    fn assert_no_violations(&self) {
        let v = self.cluster().pve.violations;
        assert!(v.is_empty(), "schema violations: {v:#?}");
    }

    fn talosctl(&self, args: &[&str]) -> (i32, String, String) {
        let o = sim_talosctl(&self.env, args);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// Runs talosctl until `done` accepts its stdout (simulated time passes between calls).
    fn talosctl_until(&self, args: &[&str], done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, out, _) = self.talosctl(args);
            if done(&out) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "talosctl {args:?}: last output {out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `etcd members` rows seen from `node`: (id, hostname, learner).
    fn members(&self, node: &str) -> Vec<(String, String, String)> {
        let (code, out, err) = self.talosctl(&["-n", node, "etcd", "members"]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .skip(1)
            .map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                (c[1].to_owned(), c[2].to_owned(), c[5].to_owned())
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.sim.handle.abort();
    }
}

#[tokio::test]
async fn backups_are_listed_per_storage_sorted_by_volid() {
    let lab = Lab::start(true).await;
    // A backup on pve3's own `local` storage: gone with the host.
    lab.env.edit_cluster(|c| {
        let mut b = c.pve.backups[4].clone();
        b.storage = "local".into();
        b.node = Some("pve3".into());
        c.pve.backups.push(b);
    });
    let a = lab
        .get(
            "/nodes/pve1/storage",
            &[("content", "backup"), ("enabled", "1")],
        )
        .await;
    let ids: Vec<&str> = a
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["storage"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["local", "nfs-backup", "pbs"]);
    let pbs = &a.data()[2];
    assert_eq!(
        (pbs["type"].as_str(), pbs["shared"].as_u64()),
        (Some("pbs"), Some(1))
    );

    // Every VM's backup on the NFS storage, in volid order, not time order.
    let a = lab
        .get(
            "/nodes/pve1/storage/nfs-backup/content",
            &[("content", "backup")],
        )
        .await;
    let list = a.data().as_array().unwrap();
    assert_eq!(list.len(), 5);
    let volids: Vec<&str> = list.iter().map(|e| e["volid"].as_str().unwrap()).collect();
    let mut sorted = volids.clone();
    sorted.sort_unstable();
    assert_eq!(volids, sorted);
    assert_eq!(
        volids[2],
        "nfs-backup:backup/vzdump-qemu-103-2026_01_01-00_00_05.vma.zst"
    );
    assert_eq!(list[2]["format"], "vma.zst");
    assert_eq!(list[2]["notes"], "talos-cp-3, nightly");
    assert_eq!(
        (list[2]["subtype"].as_str(), list[2]["vmid"].as_u64()),
        (Some("qemu"), Some(103))
    );

    // PBS: its own volid form, the verification state.
    let a = lab
        .get(
            "/nodes/pve2/storage/pbs/content",
            &[("content", "backup"), ("vmid", "103")],
        )
        .await;
    let e = &a.data()[0];
    assert_eq!(e["volid"], "pbs:backup/vm/103/2025-12-31T23:00:05Z");
    assert_eq!(
        (e["format"].as_str(), e["verification"]["state"].as_str()),
        (Some("pbs-vm"), Some("ok"))
    );

    // pve3's `local` is gone, from pve3 (595) and from elsewhere (not on pve1's `local`).
    let a = lab.get("/nodes/pve3/storage/local/content", &[]).await;
    assert_eq!((a.status, a.body.is_none()), (595, true));
    let a = lab
        .get("/nodes/pve1/storage/local/content", &[("vmid", "103")])
        .await;
    assert_eq!(a.data(), &serde_json::json!([]));
    let a = lab
        .call(
            "POST",
            "/nodes/pve1/qemu",
            &[
                ("vmid", "110"),
                (
                    "archive",
                    "local:backup/vzdump-qemu-103-2026_01_01-00_00_05.vma.zst",
                ),
            ],
        )
        .await;
    assert_eq!(a.status, 500);
    assert_eq!(
        a.message(),
        "can't find file 'local:backup/vzdump-qemu-103-2026_01_01-00_00_05.vma.zst'\n"
    );
    // A storage restricted to other nodes shows as disabled.
    lab.env
        .edit_cluster(|c| c.pve.storages[3].nodes = Some(vec!["pve2".into()]));
    let a = lab.get("/nodes/pve1/storage", &[("storage", "pbs")]).await;
    assert_eq!(a.data()[0]["enabled"], 0);
    let a = lab.get("/nodes/pve1/storage/pbs/content", &[]).await;
    assert_eq!(
        a.message(),
        "storage 'pbs' is not available on node 'pve1'\n"
    );
    lab.assert_no_violations();
}

#[tokio::test]
async fn a_dead_host_answers_595_and_keeps_its_vmids() {
    let lab = Lab::start(true).await;
    let a = lab.get("/nodes/pve3/qemu/103/config", &[]).await;
    assert_eq!((a.status, a.body.is_none()), (595, true));
    let a = lab.get("/nodes", &[]).await;
    let pve3 = &a.data()[2];
    assert_eq!(pve3["status"], "offline");
    assert!(
        pve3.get("mem").is_none() && pve3.get("maxmem").is_none(),
        "{pve3}"
    );
    let a = lab.get("/cluster/resources", &[("type", "vm")]).await;
    let vm103 = a
        .data()
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vmid"] == 103)
        .unwrap();
    assert_eq!(vm103["status"], "unknown");
    assert!(vm103.get("name").is_none());

    // nextid skips every VMID in use (the dead host's too); asking for 103 is refused.
    lab.env.edit_cluster(|c| {
        for id in 100..=102 {
            if c.pve.vm(id).is_none() {
                let mut vm = talos_dr::sim::state::Vm::stub("pve1", id);
                vm.name = format!("other-{id}");
                c.pve.vms.push(vm);
            }
        }
    });
    // 100–105 are taken (103 by the dead host's VM): the next free one is 106.
    let a = lab.get("/cluster/nextid", &[]).await;
    assert_eq!(a.data(), &serde_json::json!(106));
    let a = lab.get("/cluster/nextid", &[("vmid", "103")]).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body.unwrap()["errors"]["vmid"], "VM 103 already exists");
    let a = lab.get("/cluster/nextid", &[("vmid", "150")]).await;
    assert_eq!(a.data(), &serde_json::json!("150"));
    // A restore into the dead VM's VMID is refused at once.
    let a = lab
        .call(
            "POST",
            "/nodes/pve1/qemu",
            &[
                ("vmid", "103"),
                (
                    "archive",
                    "nfs-backup:backup/vzdump-qemu-103-2026_01_01-00_00_05.vma.zst",
                ),
            ],
        )
        .await;
    assert_eq!(
        a.message(),
        "unable to restore VM 103 - VM 103 already exists on node 'pve3'\n"
    );
    // The 596 form of the same failure.
    lab.env.edit_cluster(|c| c.pve.proxy_status = 596);
    let a = lab.get("/nodes/pve3/qemu", &[]).await;
    assert_eq!((a.status, a.body.is_none()), (596, true));
    // The talos node of the VM on the dead host does not answer.
    let (code, _, err) = lab.talosctl(&["-n", CP3, "version"]);
    assert_eq!(code, 1);
    assert!(err.contains("i/o timeout"), "{err}");
    lab.assert_no_violations();
}

#[tokio::test]
async fn restore_keeps_the_mac_unless_unique() {
    let lab = Lab::start(true).await;
    // Held until looked at, so that a slow machine sees the task running too.
    lab.env.edit_cluster(|c| c.pve.hold_tasks.push(106));
    let archive = "nfs-backup:backup/vzdump-qemu-103-2026_01_01-00_00_05.vma.zst";
    let a = lab
        .call(
            "POST",
            "/nodes/pve1/qemu",
            &[
                ("vmid", "106"),
                ("archive", archive),
                ("storage", "local-lvm"),
            ],
        )
        .await;
    let upid = a.data().as_str().unwrap().to_owned();
    assert!(
        upid.starts_with("UPID:pve1:") && upid.contains(":qmrestore:106:"),
        "{upid}"
    );
    // At once: the config exists, locked `create`, named `VM 106`.
    let a = lab.get("/nodes/pve1/qemu/106/status/current", &[]).await;
    assert_eq!(
        (a.data()["lock"].as_str(), a.data()["name"].as_str()),
        (Some("create"), Some("VM 106"))
    );
    lab.env
        .edit_cluster(|c| c.pve.release_held(jiff::Timestamp::now().as_millisecond()));
    assert_eq!(lab.wait_task(&upid).await, "OK");
    let c = lab.config("pve1", 106).await;
    assert_eq!(c["name"], "talos-cp-3");
    assert_eq!(c["net0"], format!("virtio={MAC3},bridge=vmbr0,firewall=1"));
    assert_eq!(c["scsi0"], "local-lvm:vm-106-disk-0,iothread=1,size=32G");
    assert!(c.get("lock").is_none());
    let a = lab.get("/nodes/pve1/qemu/106/status/current", &[]).await;
    assert_eq!(a.data()["status"], "stopped");

    // unique=1: a new MAC (and no DHCP reservation for it).
    let a = lab
        .call(
            "POST",
            "/nodes/pve2/qemu",
            &[
                ("vmid", "107"),
                ("archive", "pbs:backup/vm/103/2025-12-31T23:00:05Z"),
                ("unique", "1"),
            ],
        )
        .await;
    assert_eq!(lab.wait_task(a.data().as_str().unwrap()).await, "OK");
    let c = lab.config("pve2", 107).await;
    let net0 = c["net0"].as_str().unwrap();
    assert!(
        net0.starts_with("virtio=BC:24:11:") && !net0.contains(MAC3),
        "{net0}"
    );

    // Disk options cannot go along with an archive; unique needs one.
    let a = lab
        .call(
            "POST",
            "/nodes/pve1/qemu",
            &[
                ("vmid", "108"),
                ("archive", archive),
                ("scsi0", "local-lvm:32"),
            ],
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.body.unwrap()["errors"]["scsi0"],
        "option conflicts with option 'archive'"
    );

    // Started with the backup's MAC, the VM brings talos-cp-3 back at its address, with its
    // old config and its old etcd data: the member still exists, so it rejoins.
    let a = lab
        .call("POST", "/nodes/pve1/qemu/106/status/start", &[])
        .await;
    assert_eq!(lab.wait_task(a.data().as_str().unwrap()).await, "OK");
    let out = lab.talosctl_until(&["-n", CP3, "service", "etcd"], |o| o.contains("Running"));
    assert!(out.contains("HEALTH   OK"), "{out}");
    let c = lab.cluster();
    let n = c.node(CP3).unwrap();
    assert_eq!(
        (n.hostname.as_str(), n.reachable, n.maintenance),
        ("talos-cp-3", true, false)
    );
    assert!(c.etcd_restart_loops.is_empty());
    lab.assert_no_violations();
}

#[tokio::test]
async fn a_restored_vm_whose_member_was_removed_restarts_etcd_forever() {
    let lab = Lab::start(true).await;
    let old_id = lab
        .members(CP1)
        .into_iter()
        .find(|m| m.1 == "talos-cp-3")
        .unwrap()
        .0;
    let (code, out, err) = lab.talosctl(&["-n", CP1, "etcd", "remove-member", &old_id]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(lab.members(CP1).len(), 2);
    let archive = "nfs-backup:backup/vzdump-qemu-103-2026_01_01-00_00_05.vma.zst";
    let a = lab
        .call(
            "POST",
            "/nodes/pve2/qemu",
            &[("vmid", "106"), ("archive", archive), ("start", "1")],
        )
        .await;
    assert_eq!(lab.wait_task(a.data().as_str().unwrap()).await, "OK");
    let out = lab.talosctl_until(&["-n", CP3, "service", "etcd"], |o| o.contains("Failed"));
    assert!(out.contains("permanently removed"), "{out}");
    assert_eq!(lab.cluster().etcd_restart_loops, [CP3]);
    // The usual reset wipes the stale data: the node then joins the live cluster anew.
    let (code, _, err) = lab.talosctl(&[
        "-n",
        CP3,
        "reset",
        "--graceful=false",
        "--reboot",
        "--system-labels-to-wipe=EPHEMERAL",
    ]);
    assert_eq!(code, 0, "{err}");
    let out = lab.talosctl_until(&["-n", CP1, "etcd", "members"], |o| {
        o.lines().skip(1).count() == 3
    });
    let new_id = out
        .lines()
        .find(|l| l.contains("talos-cp-3"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap();
    assert_ne!(new_id, old_id);
    assert!(lab.cluster().etcd_restart_loops.is_empty());
    lab.talosctl_until(&["-n", CP3, "service", "etcd"], |o| {
        o.contains("HEALTH   OK")
    });
    lab.assert_no_violations();
}

#[tokio::test]
async fn clone_gets_new_macs_then_put_net0_sets_the_old_one() {
    let lab = Lab::start(true).await;
    // Held until looked at, so that a slow machine sees the task running too.
    lab.env.edit_cluster(|c| c.pve.hold_tasks.push(106));
    let a = lab
        .call(
            "POST",
            "/nodes/pve4/qemu/9000/clone",
            &[
                ("newid", "106"),
                ("name", "talos-cp-3"),
                ("full", "1"),
                ("target", "pve1"),
            ],
        )
        .await;
    let upid = a.data().as_str().unwrap().to_owned();
    // The UPID names the template, not the new VM.
    assert!(
        upid.starts_with("UPID:pve4:") && upid.contains(":qmclone:9000:"),
        "{upid}"
    );
    let a = lab.get("/cluster/resources", &[("type", "vm")]).await;
    let new = a
        .data()
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vmid"] == 106)
        .unwrap()
        .clone();
    assert_eq!(new["lock"], "clone");
    lab.env
        .edit_cluster(|c| c.pve.release_held(jiff::Timestamp::now().as_millisecond()));
    assert_eq!(lab.wait_task(&upid).await, "OK");
    let c = lab.config("pve1", 106).await;
    let net0 = c["net0"].as_str().unwrap().to_owned();
    assert!(
        !net0.contains("BC:24:11:90:00:00") && !net0.contains(MAC3),
        "{net0}"
    );
    assert_eq!(c["name"], "talos-cp-3");
    assert!(c.get("template").is_none());

    // PUT net0 with the lost VM's MAC, guarded by the digest.
    let digest = c["digest"].as_str().unwrap().to_owned();
    let want = format!("virtio={MAC3},bridge=vmbr0,firewall=1");
    let a = lab
        .call(
            "PUT",
            "/nodes/pve1/qemu/106/config",
            &[
                ("net0", want.as_str()),
                ("cores", "2"),
                ("memory", "4096"),
                ("digest", digest.as_str()),
            ],
        )
        .await;
    assert_eq!((a.status, a.data()), (200, &Value::Null));
    assert_eq!(lab.config("pve1", 106).await["net0"], want);
    let a = lab
        .call(
            "PUT",
            "/nodes/pve1/qemu/106/config",
            &[("cores", "4"), ("digest", digest.as_str())],
        )
        .await;
    assert_eq!(
        a.message(),
        "checksum mismatch (file change by other user?)\n"
    );
    let a = lab
        .call(
            "PUT",
            "/nodes/pve1/qemu/106/config",
            &[("net0", "virtio=BD:24:11:00:00:03,bridge=vmbr0")],
        )
        .await;
    assert_eq!(a.status, 400);
    assert!(
        a.body.unwrap()["errors"]["net0"]
            .as_str()
            .unwrap()
            .contains("net0.macaddr: invalid format - value does not look like a valid unicast MAC address"),
    );
    // That request broke the schema on purpose: it is recorded, as every such request is.
    lab.env.edit_cluster(|c| {
        assert_eq!(c.pve.violations.len(), 1);
        c.pve.violations.clear();
    });
    // POST runs the same change as a task.
    let a = lab
        .call(
            "POST",
            "/nodes/pve1/qemu/106/config",
            &[("tags", "control-plane;k8s")],
        )
        .await;
    let upid = a.data().as_str().unwrap().to_owned();
    assert!(upid.contains(":qmconfig:106:"), "{upid}");
    assert_eq!(lab.wait_task(&upid).await, "OK");
    assert_eq!(lab.config("pve1", 106).await["tags"], "control-plane;k8s");
    // On a running VM, cores and memory wait for the next cold start (pending).
    let a = lab
        .call("PUT", "/nodes/pve1/qemu/101/config", &[("cores", "4")])
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(lab.config("pve1", 101).await["cores"], 4);
    let a = lab
        .get("/nodes/pve1/qemu/101/config", &[("current", "1")])
        .await;
    assert_eq!(a.data()["cores"], 2);
    let a = lab.call("PUT", "/nodes/pve1/qemu/101/config", &[]).await;
    assert_eq!(a.message(), "no options specified\n");
    // A template on local storage clones only onto its own node.
    let a = lab
        .call(
            "POST",
            "/nodes/pve1/qemu/101/clone",
            &[("newid", "107"), ("target", "pve2")],
        )
        .await;
    assert_eq!(
        a.message(),
        "can't clone VM to node 'pve2' (VM uses local storage)\n"
    );
    // DELETE takes its parameters in the query string.
    let a = lab
        .call(
            "DELETE",
            "/nodes/pve1/qemu/106",
            &[("purge", "1"), ("destroy-unreferenced-disks", "1")],
        )
        .await;
    assert_eq!(lab.wait_task(a.data().as_str().unwrap()).await, "OK");
    assert!(lab.cluster().pve.vm(106).is_none());
    lab.assert_no_violations();
}

#[tokio::test]
async fn clone_and_restore_faults() {
    let lab = Lab::start(true).await;
    lab.env.edit_cluster(|c| {
        c.pve.clone_fails.insert(9000, "storage full".into());
        c.pve
            .restore_fails
            .insert(107, "zstd: error 70 : Write error".into());
    });
    let a = lab
        .call(
            "POST",
            "/nodes/pve4/qemu/9000/clone",
            &[("newid", "106"), ("full", "1")],
        )
        .await;
    assert_eq!(
        lab.wait_task(a.data().as_str().unwrap()).await,
        "clone failed: storage full"
    );
    assert!(
        lab.cluster().pve.vm(106).is_none(),
        "PVE removes a failed clone"
    );

    let archive = "nfs-backup:backup/vzdump-qemu-103-2026_01_01-00_00_05.vma.zst";
    let a = lab
        .call(
            "POST",
            "/nodes/pve1/qemu",
            &[("vmid", "107"), ("archive", archive)],
        )
        .await;
    let upid = a.data().as_str().unwrap().to_owned();
    assert_eq!(
        lab.wait_task(&upid).await,
        "unable to restore VM 107 - zstd: error 70 : Write error"
    );
    let log = lab.get(&format!("/nodes/pve1/tasks/{upid}/log"), &[]).await;
    assert!(
        log.data()
            .to_string()
            .contains("VM 107 state is NOT cleaned up")
    );
    // The stub stays: no name, no lock, memory 128.
    let c = lab.config("pve1", 107).await;
    assert_eq!(
        (c.get("name"), c["memory"].as_str(), c.get("lock")),
        (None, Some("128"), None)
    );

    // A clone task killed mid-way leaves its VM locked `clone`.
    lab.env.edit_cluster(|c| {
        c.pve.clone_fails.clear();
        c.pve.hold_tasks.push(108);
    });
    let a = lab
        .call(
            "POST",
            "/nodes/pve4/qemu/9000/clone",
            &[("newid", "108"), ("full", "1")],
        )
        .await;
    let upid = a.data().as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let a = lab
        .get(&format!("/nodes/pve4/tasks/{upid}/status"), &[])
        .await;
    assert_eq!(a.data()["status"], "running", "held");
    lab.env
        .edit_cluster(|c| c.pve.kill_held(jiff::Timestamp::now().as_millisecond()));
    assert_eq!(lab.wait_task(&upid).await, "unexpected status");
    assert_eq!(
        lab.cluster().pve.vm(108).unwrap().lock.as_deref(),
        Some("clone")
    );
    lab.assert_no_violations();
}

#[test]
fn machineconfig_output_and_permission() {
    let env = Env::new();
    let o = sim_talosctl(&env, &["-n", CP1, "get", "mc", "-o", "yaml"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let yaml = String::from_utf8(o.stdout).unwrap();
    assert!(yaml.starts_with(&format!("node: {CP1}\nmetadata:\n    namespace: config\n    type: MachineConfigs.config.talos.dev\n    id: v1alpha1\n")), "{yaml}");
    let spec = yaml.split_once("spec: |\n").unwrap().1;
    assert!(spec.starts_with("    version: v1alpha1\n"), "{spec}");
    for key in [
        "    machine:\n        type: controlplane\n",
        "        hostname: talos-cp-1\n",
        "    cluster:\n",
        "        clusterName: demo\n",
        "    secretboxEncryptionSecret: ",
    ] {
        assert!(spec.contains(key), "{key} in {spec}");
    }
    // -o json: the spec is one string; every node of the cluster shares the secrets.
    let o = sim_talosctl(
        &env,
        &[
            "-n",
            &format!("{CP1},{CP3}"),
            "get",
            "machineconfig",
            "-o",
            "json",
        ],
    );
    let docs: Vec<Value> = serde_json::Deserializer::from_slice(&o.stdout)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(docs.len(), 2);
    let specs: Vec<&str> = docs.iter().map(|d| d["spec"].as_str().unwrap()).collect();
    let id = |s: &str| talos_dr::sim::state::machine::yaml_value(s, "cluster.id").unwrap();
    assert_eq!(id(specs[0]), id(specs[1]));
    assert_eq!(
        docs[1]["metadata"]["type"],
        "MachineConfigs.config.talos.dev"
    );
    assert!(specs[1].contains("hostname: talos-cp-3"));

    // A talos-backup style talosconfig may not read it.
    env.edit_cluster(|c| c.talosconfig_role = "os:etcd:backup".into());
    let o = sim_talosctl(&env, &["-n", CP1, "get", "machineconfig", "-o", "yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "1 error occurred:\n\t* rpc error: code = PermissionDenied desc = not authorized\n\n"
    );
    let o = sim_talosctl(&env, &["config", "info"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Roles:               os:etcd:backup\n"));
}

#[test]
fn remove_member_errors() {
    let env = Env::new();
    let run = |args: &[&str]| {
        let o = sim_talosctl(&env, args);
        (
            o.status.code().unwrap(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["-n", CP1, "etcd", "remove-member", "xyz"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error parsing member ID: error parsing etcd member id: strconv.ParseUint: parsing \"xyz\": invalid syntax\n"), "{err}");
    let (code, err) = run(&["-n", CP1, "etcd", "remove-member", "00000000000000ff"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!(
            "1 error occurred:\n\t* {CP1}: rpc error: code = NotFound desc = failed to remove member 255: etcdserver: member not found\n"
        )
    );
    // One member down: a healthy one may not be removed (strict reconfig check)…
    env.edit_cluster(|c| c.nodes[2].reachable = false);
    let c = env.cluster();
    let id2 = format!("{:016x}", c.member_id("10.5.0.12"));
    let (code, err) = run(&["-n", CP1, "etcd", "remove-member", &id2]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "rpc error: code = Unknown desc = failed to remove member: failed to remove member "
        ),
        "{err}"
    );
    assert!(err.contains(": etcdserver: unhealthy cluster"), "{err}");
    // …the dead one may.
    let id3 = format!("{:016x}", c.member_id(CP3));
    assert_eq!(
        run(&["-n", CP1, "etcd", "remove-member", &id3]),
        (0, String::new())
    );
    // The last voting member cannot go.
    env.edit_cluster(|c| {
        c.etcd_members.insert(0, vec![CP1.into()]);
    });
    let id1 = format!("{:016x}", env.cluster().member_id(CP1));
    let (code, err) = run(&["-n", CP1, "etcd", "remove-member", &id1]);
    assert_eq!(code, 1);
    assert!(
        err.contains("re-configuration failed due to not enough started members"),
        "{err}"
    );
    // Only os:admin may remove members.
    env.edit_cluster(|c| c.talosconfig_role = "os:operator".into());
    let (_, err) = run(&["-n", CP1, "etcd", "remove-member", &id1]);
    assert!(
        err.contains("PermissionDenied desc = not authorized"),
        "{err}"
    );
}

/// The template strategy end to end on the simulators: remove the dead member, clone the
/// template, give it the lost VM's MAC, start it, talk to the maintenance API, apply the saved
/// config; the node installs, reboots, joins as a learner and is promoted.
#[tokio::test]
async fn maintenance_apply_config_joins_as_learner_then_promoted() {
    let lab = Lab::start(true).await;
    lab.env.edit_cluster(|c| c.timing.promote_ms = 3000);
    let saved = {
        let c = lab.cluster();
        c.machine_config(c.node(CP3).unwrap()).unwrap()
    };
    let config = lab.env.tmp.path().join("talos-cp-3.yaml");
    std::fs::write(&config, &saved).unwrap();
    let old_id = lab
        .members(CP1)
        .into_iter()
        .find(|m| m.1 == "talos-cp-3")
        .unwrap()
        .0;
    assert_eq!(
        lab.talosctl(&["-n", CP1, "etcd", "remove-member", &old_id])
            .0,
        0
    );

    let a = lab
        .call(
            "POST",
            "/nodes/pve4/qemu/9000/clone",
            &[
                ("newid", "106"),
                ("name", "talos-cp-3"),
                ("full", "1"),
                ("target", "pve1"),
            ],
        )
        .await;
    assert_eq!(lab.wait_task(a.data().as_str().unwrap()).await, "OK");
    let digest = lab.config("pve1", 106).await["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let net0 = format!("virtio={MAC3},bridge=vmbr0,firewall=1");
    let a = lab
        .call(
            "PUT",
            "/nodes/pve1/qemu/106/config",
            &[("net0", net0.as_str()), ("digest", digest.as_str())],
        )
        .await;
    assert_eq!(a.status, 200);
    let a = lab
        .call("POST", "/nodes/pve1/qemu/106/status/start", &[])
        .await;
    assert_eq!(lab.wait_task(a.data().as_str().unwrap()).await, "OK");

    // Maintenance mode: only the maintenance client works.
    let (code, _, err) = lab.talosctl(&["-n", CP3, "get", "machinestatus", "-o", "json"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("x509: certificate signed by unknown authority"),
        "{err}"
    );
    let (code, _, err) = lab.talosctl(&["-n", CP3, "version", "--insecure"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error getting version: rpc error: code = Unimplemented desc = API is not implemented in maintenance mode\n"
    );
    let (code, out, err) = lab.talosctl(&[
        "get",
        "machinestatus",
        "--insecure",
        "-n",
        CP3,
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["spec"]["stage"].as_str(), v["node"].as_str()),
        (Some("maintenance"), Some(""))
    );
    let (code, out, _) = lab.talosctl(&["get", "disks", "-i", "-n", CP3]);
    assert_eq!(code, 0);
    assert!(out.contains("QEMU HARDDISK"), "{out}");
    // --insecure against a configured node fails the other way.
    let (code, _, err) = lab.talosctl(&["get", "disks", "--insecure", "-n", CP1]);
    assert_eq!(code, 1);
    assert!(err.contains("tls: certificate required"), "{err}");

    // apply-config: modes, then success prints nothing.
    let file = config.to_str().unwrap();
    let (code, _, err) = lab.talosctl(&[
        "apply-config",
        "--insecure",
        "-n",
        CP3,
        "--file",
        file,
        "--mode",
        "staged",
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error applying new configuration: rpc error: code = Unimplemented desc = apply configuration --mode='staged' is not supported in maintenance mode\n"
    );
    let (code, out, err) = lab.talosctl(&["apply-config", "--insecure", "-n", CP3, "--file", file]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
    let stage = |lab: &Lab| lab.cluster().node(CP3).unwrap().machine_stage();
    assert_eq!(stage(&lab), "installing");
    // Installs, reboots, runs with its config, joins as a learner, is promoted.
    let out = lab.talosctl_until(&["-n", CP1, "etcd", "members"], |o| {
        o.lines()
            .any(|l| l.contains("talos-cp-3") && l.trim_end().ends_with("true"))
    });
    let new_id = out
        .lines()
        .find(|l| l.contains("talos-cp-3"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    assert_ne!(new_id, old_id, "a new member");
    lab.talosctl_until(&["-n", CP1, "etcd", "members"], |o| {
        o.lines().skip(1).count() == 3 && o.lines().skip(1).all(|l| l.trim_end().ends_with("false"))
    });
    let c = lab.cluster();
    let n = c.node(CP3).unwrap();
    assert_eq!(
        (
            n.hostname.as_str(),
            n.maintenance,
            n.machine_stage().as_str()
        ),
        ("talos-cp-3", false, "running")
    );
    assert_eq!(c.machine_config(n).unwrap(), saved);
    assert!(c.has_quorum());
    let (code, out, _) = lab.talosctl(&["-n", CP3, "get", "machinestatus", "-o", "json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"stage\": \"running\""), "{out}");
    lab.assert_no_violations();
}

#[test]
fn apply_config_refusals_and_a_hanging_install() {
    let env = Env::new();
    env.edit_cluster(|c| {
        let mac = "BC:24:11:AA:BB:CC";
        let n = talos_dr::sim::state::maintenance_node("10.5.0.30", mac);
        c.pin_members();
        c.nodes.push(n);
        c.faults.install_hangs.push("10.5.0.30".into());
    });
    let dir = env.tmp.path();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let apply = |file: &str| {
        let o = sim_talosctl(&env, &["apply-config", "-i", "-n", "10.5.0.30", "-f", file]);
        (
            o.status.code().unwrap(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = apply(&write("bad.yaml", "version: v1alpha1\n\tmachine: {}\n"));
    assert_eq!(code, 1);
    assert!(err.starts_with("error applying new configuration: rpc error: code = Unknown desc = failed to parse config: "), "{err}");
    let (code, err) = apply(&write(
        "invalid.yaml",
        "version: v1alpha1\nmachine:\n    type: controlplane\n",
    ));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error applying new configuration: rpc error: code = InvalidArgument desc = configuration validation failed: 1 error occurred:\n\t* either install disk or diskSelector should be defined\n\n\n"
    );
    let (code, err) = apply("/nonexistent/cp.yaml");
    assert_eq!(code, 1);
    assert!(
        err.starts_with("failed to read configuration from \"/nonexistent/cp.yaml\""),
        "{err}"
    );
    // Talos 1.14 serves Version in maintenance mode.
    env.edit_cluster(|c| c.talos_version = "v1.14.0".into());
    let o = sim_talosctl(&env, &["version", "--insecure", "-n", "10.5.0.30"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\tNODE:        10.5.0.30\n"));
    env.edit_cluster(|c| c.talos_version = "v1.9.5".into());
    // The install hangs: still maintenance mode, stage `installing`.
    let good = env.cluster();
    let cfg = good.machine_config(good.node(CP1).unwrap()).unwrap();
    let (code, err) = apply(&write("good.yaml", &cfg));
    assert_eq!((code, err.as_str()), (0, ""));
    std::thread::sleep(Duration::from_millis(800));
    let o = sim_talosctl(
        &env,
        &[
            "get",
            "machinestatus",
            "-i",
            "-n",
            "10.5.0.30",
            "-o",
            "json",
        ],
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["spec"]["stage"], "installing");
    assert!(env.cluster().node("10.5.0.30").unwrap().maintenance);
}
