//! Pre-upgrade sets, rollback and set retention, end to end at library level: the real playbooks
//! run by the real `Runner`, the simulated talosctl on PATH, and the simulated Proxmox VE
//! (`sim::pve_api`, HTTPS with a pinned certificate) with six VMs on three PVE nodes. Every
//! request is checked against `pve-api-subset.json`, by the simulator as it arrives and again by
//! the test's own checker afterwards.

use std::sync::Arc;
use std::time::Duration;

use predicates::prelude::*;
use talos_dr::engine::checkpoint::{Journal, RunStatus, StageStatus};
use talos_dr::engine::playbook;
use talos_dr::engine::run::Runner;
use talos_dr::error::{Exit, UserError, classify};
use talos_dr::profile::{Location, Profile};
use talos_dr::pve::tls::parse_fingerprints;
use talos_dr::pve::{ApiToken, PollConfig, PveClient, RetryConfig, TlsMode};
use talos_dr::sets::{self, SetStatus};
use talos_dr::sim::pve_api::{self, PveSim, Received};
use talos_dr::sim::state::{Cluster, Pve, Snapshot};
use talos_dr::stages::{Inputs, Services};
use talos_dr::talos::Talosctl;
use talos_dr::ui::{AssumeYes, Event, NoPrompt, Prompter, RecordingReporter, Reporter};

use crate::common::*;

const TOKEN: &str = "k8s-dr@pve!cli=3f1c2b9a-5d7e-4c1a-9b0e-6a7d8c9e0f12";
const FOREIGN: &str = "autodaily240525020000";

struct H {
    env: Env,
    pve: PveSim,
    rec: Arc<RecordingReporter>,
    services: Services,
}

impl Drop for H {
    fn drop(&mut self) {
        self.pve.handle.abort();
    }
}

impl H {
    /// Six VMs on three PVE nodes (control planes 101–103, workers 201–203) whose tasks take
    /// `task`; `faults` then edits the simulated PVE before the server starts.
    async fn new(faults: impl FnOnce(&mut Pve), task: Duration, proxmox_extra: &str) -> Self {
        let env = Env::new();
        // A third worker, so there are six nodes for six VMs.
        env.edit_cluster(|c| {
            let mut w = c.nodes.last().unwrap().clone();
            w.address = "10.5.0.23".into();
            w.hostname = "talos-worker-3".into();
            c.nodes.push(w);
            c.pve = Pve::example_by_role(&c.nodes);
            c.pve.task_duration_ms = u64::try_from(task.as_millis()).unwrap();
            faults(&mut c.pve);
        });
        let mut toml = String::from("name = \"lab\"\n");
        for (addr, role, node, vmid) in [
            ("10.5.0.11", "controlplane", "pve1", 101),
            ("10.5.0.12", "controlplane", "pve2", 102),
            ("10.5.0.13", "controlplane", "pve3", 103),
            ("10.5.0.21", "worker", "pve1", 201),
            ("10.5.0.22", "worker", "pve2", 202),
            ("10.5.0.23", "worker", "pve3", 203),
        ] {
            toml.push_str(&format!(
                "\n[[nodes]]\naddress = \"{addr}\"\nrole = \"{role}\"\nvm = {{ node = \"{node}\", vmid = {vmid} }}\n"
            ));
        }
        toml.push_str(&format!(
            "\n[proxmox]\nendpoint = \"https://pve.invalid:8006\"\n{proxmox_extra}\n"
        ));
        std::fs::write(env.config_dir.join("profile.toml"), toml).unwrap();
        // The library runs in this process, so the shim carries the simulator's state path.
        let shim = env.bin_dir.join("talosctl-sets");
        std::fs::write(
            &shim,
            format!(
                "#!/bin/sh\nTALOS_DR_SIM_STATE='{}' exec '{BIN}' __sim talosctl \"$@\"\n",
                env.state.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();

        let pve = pve_api::serve(env.state.clone()).await.unwrap();
        let rec = Arc::new(RecordingReporter::default());
        let client = PveClient::builder(&pve.endpoint(), ApiToken::parse(TOKEN).unwrap())
            .tls(TlsMode::Pinned(
                parse_fingerprints(&pve.fingerprint).unwrap(),
            ))
            .retry(RetryConfig::fast())
            .poll(PollConfig::fast())
            .reporter(rec.clone())
            .build()
            .unwrap();
        let profile = Profile::load(&Location {
            name: None,
            config_dir: env.config_dir.clone(),
        })
        .unwrap();
        let talos = Talosctl::new(shim, env.config_dir.join("talosconfig"), None);
        Self {
            env,
            pve,
            rec,
            services: Services {
                profile,
                talos,
                pve: Some(client),
                kubectl: None,
            },
        }
    }

    async fn six() -> Self {
        Self::new(|_| {}, Duration::from_millis(60), "").await
    }

    fn sets_dir(&self) -> std::path::PathBuf {
        self.services.profile.sets_dir()
    }

    fn create(&self, name: &str, inputs: &Inputs) -> (playbook::Playbook, Journal) {
        let pb = talos_dr::stages::load_playbook(name, &self.env.config_dir).unwrap();
        let j = Journal::create(
            &self.services.profile.runs_dir(),
            &pb,
            "lab",
            serde_json::to_value(inputs).unwrap(),
        )
        .unwrap();
        (pb, j)
    }

    async fn execute(
        &self,
        pb: &playbook::Playbook,
        j: &Journal,
        prompter: &dyn Prompter,
    ) -> anyhow::Result<()> {
        let reporter: Arc<dyn Reporter> = self.rec.clone();
        Runner {
            services: &self.services,
            reporter,
            prompter,
            playbook: pb,
        }
        .execute(j)
        .await
    }

    async fn run(&self, name: &str, inputs: Inputs) -> (anyhow::Result<()>, Journal) {
        self.run_with(name, inputs, &AssumeYes).await
    }

    async fn run_with(
        &self,
        name: &str,
        inputs: Inputs,
        prompter: &dyn Prompter,
    ) -> (anyhow::Result<()>, Journal) {
        let (pb, j) = self.create(name, &inputs);
        let r = self.execute(&pb, &j, prompter).await;
        (r, j)
    }

    async fn resume(&self, j: &Journal) -> anyhow::Result<()> {
        let j = Journal::open(j.dir()).unwrap();
        let pb =
            talos_dr::stages::load_playbook(&j.snapshot().playbook, &self.env.config_dir).unwrap();
        self.execute(&pb, &j, &AssumeYes).await
    }

    /// The simulated PVE as it is now.
    fn state(&self) -> Pve {
        Cluster::load(&self.env.state).unwrap().pve
    }

    /// Changes the simulated PVE between requests (under the simulator's lock).
    fn edit(&self, f: impl FnOnce(&mut Pve)) {
        Cluster::update(&self.env.state, |c| f(&mut c.pve)).unwrap();
    }

    /// Lets the tasks held by `pve.hold_tasks` finish now.
    fn release(&self) {
        self.edit(|p| p.release_held(jiff::Timestamp::now().as_millisecond()));
    }

    fn snapshot_names(&self, vmid: u32) -> Vec<String> {
        let vm = self.state().vm(vmid).cloned().unwrap();
        vm.snapshots.into_iter().map(|s| s.name).collect()
    }

    fn requests(&self) -> Vec<Received> {
        self.pve.requests()
    }

    /// Requests with this method whose path matches `pred`.
    fn count(&self, m: &str, pred: impl Fn(&str) -> bool) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method.as_str() == m && pred(r.path()))
            .count()
    }

    /// How often the status of this task was asked for.
    fn polls(&self, upid: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.polled_task().as_deref() == Some(upid))
            .count()
    }

    /// Every request so far must match `pve-api-subset.json`: the simulator refused and
    /// recorded none, and the test's own checker agrees.
    fn assert_schema(&self) {
        let violations = self.state().violations;
        assert!(violations.is_empty(), "schema violations: {violations:#?}");
        let schema = crate::pve::fixture("pve-api-subset");
        for r in self.requests() {
            let url = format!("{}{}", self.pve.endpoint(), r.target);
            let r = wiremock::Request {
                url: url.parse().unwrap(),
                method: r.method,
                headers: r.headers,
                body: r.body,
            };
            crate::pve::check_against_schema(&schema, &r);
        }
    }

    fn snapshot_posts(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .requests()
            .iter()
            .filter(|r| r.method.as_str() == "POST" && r.path().ends_with("/snapshot"))
            .map(|r| vmid_of(r.path()))
            .collect();
        v.sort_unstable();
        v
    }

    fn warnings(&self) -> Vec<String> {
        self.rec
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Warning { message } => Some(message),
                _ => None,
            })
            .collect()
    }
}

/// Someone else's snapshot of `vmid`, taken at `snaptime` (the VM now descends from it).
fn plant_foreign(p: &mut Pve, vmid: u32, name: &str, description: &str, snaptime: i64) {
    let vm = p.vm_mut(vmid).unwrap();
    vm.snapshots.push(Snapshot {
        name: name.into(),
        description: description.into(),
        snaptime,
        vmstate: false,
        parent: vm.parent.clone(),
        snapstate: None,
        running: vm.status == "running",
    });
    vm.parent = Some(name.into());
}

fn vmid_of(path: &str) -> u32 {
    let s: Vec<&str> = path.split('/').collect();
    let i = s.iter().position(|x| *x == "qemu").unwrap();
    s[i + 1].parse().unwrap()
}

fn inputs(label: &str) -> Inputs {
    Inputs {
        label: Some(label.into()),
        health_timeout_s: Some(20),
        poll_max_ms: Some(50),
        ..Inputs::default()
    }
}

/// The exit code and the full text (message and hints) of a failed run.
fn failure(r: anyhow::Result<()>) -> (Exit, String) {
    let e = r.expect_err("the run should fail");
    let (exit, hints) = classify(&e);
    let top = e
        .chain()
        .find_map(|c| c.downcast_ref::<UserError>())
        .map(|u| u.message.clone())
        .unwrap_or_default();
    (exit, format!("{e:#}\n{top}\n{}", hints.join("\n")))
}

#[tokio::test]
async fn pre_upgrade_snapshots_six_vms_on_three_nodes_as_one_set() {
    let h = H::new(|_| {}, Duration::from_millis(150), "max_parallel = 4").await;
    let (r, j) = h.run("pre-upgrade", inputs("talos-1-10")).await;
    r.unwrap();
    assert_eq!(j.snapshot().status, RunStatus::Succeeded);

    // One POST per VM, control planes and workers, one common name.
    assert_eq!(h.snapshot_posts(), [101, 102, 103, 201, 202, 203]);
    let m = sets::load(&h.sets_dir(), "talos-1-10").unwrap();
    assert_eq!(m.status, SetStatus::Complete);
    assert!(
        m.snapname.starts_with("talosdr-talos-1-10-") && m.snapname.len() <= 40,
        "{}",
        m.snapname
    );
    assert_eq!(m.vms.len(), 6);
    for v in &m.vms {
        assert_eq!(v.snapname, m.snapname);
        assert_eq!(v.exitstatus, "OK");
        assert!(v.upid.as_deref().unwrap().contains(":qmsnapshot:"));
        let snaps = h.state().vm(v.vmid).unwrap().snapshots.clone();
        assert_eq!(snaps.len(), 1);
        assert!(snaps[0].description.contains("talos-1-10"));
        assert!(snaps[0].description.contains("talos-1-10.snapshot"));
        assert!(snaps[0].description.contains(env!("CARGO_PKG_VERSION")));
    }
    // Parallel, but never more than max_parallel tasks at once.
    let peak = h.state().peak_concurrent_tasks();
    assert!((2..=4).contains(&peak), "peak {peak}");

    // The etcd snapshot: verified, private, outside what `prune` looks at.
    let etcd = m.etcd.as_ref().unwrap();
    assert_eq!(etcd.path, sets::etcd_path(&h.sets_dir(), "talos-1-10"));
    assert_eq!(etcd.sha256, sha256_hex(&etcd.path));
    assert!(
        talos_dr::snapshot::store::list(&h.sets_dir())
            .unwrap()
            .is_empty()
    );
    assert!(
        talos_dr::snapshot::store::list(&h.env.backups())
            .unwrap()
            .is_empty()
    );
    use std::os::unix::fs::PermissionsExt;
    for p in [
        &etcd.path,
        &sets::manifest_path(&h.sets_dir(), "talos-1-10"),
    ] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", p.display());
    }
    // Health was required first.
    assert!(!h.env.calls_of(&["health"]).is_empty());
    // One spinner per VM.
    let spinners: std::collections::BTreeSet<String> = h
        .rec
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::WaitStarted { key, .. } if key.starts_with("vm ") => Some(key),
            _ => None,
        })
        .collect();
    assert_eq!(spinners.len(), 6);
    h.assert_schema();
}

#[tokio::test]
async fn control_plane_only_leaves_the_workers_out() {
    let h = H::six().await;
    let (r, _) = h
        .run(
            "pre-upgrade",
            Inputs {
                control_plane_only: true,
                vmstate: true,
                ..inputs("cp")
            },
        )
        .await;
    r.unwrap();
    assert_eq!(h.snapshot_posts(), [101, 102, 103]);
    let posts = h.requests();
    let body = String::from_utf8_lossy(
        &posts
            .iter()
            .find(|r| r.method.as_str() == "POST")
            .unwrap()
            .body,
    )
    .into_owned();
    assert!(body.contains("vmstate=1"), "{body}");
    let m = sets::load(&h.sets_dir(), "cp").unwrap();
    assert!(m.control_plane_only && m.vmstate);
    assert!(m.vms.iter().all(|v| v.role == "controlplane"));
}

#[tokio::test]
async fn a_vm_locked_by_a_backup_stops_the_run_before_anything_is_snapshotted() {
    let h = H::new(
        |p| {
            p.locked.insert(202, "backup".into());
        },
        Duration::from_millis(30),
        "",
    )
    .await;
    let (r, _) = h.run("pre-upgrade", inputs("up1")).await;
    let (exit, text) = failure(r);
    assert_eq!(exit, Exit::Precondition, "{text}");
    assert!(text.contains("VM 202 is locked (backup)"), "{text}");
    assert!(text.contains("qm unlock 202"), "{text}");
    assert!(h.snapshot_posts().is_empty());
    assert!(!sets::exists(&h.sets_dir(), "up1"));
    assert!(h.env.calls_of(&["etcd", "snapshot"]).is_empty());
    h.assert_schema();
}

#[tokio::test]
async fn an_offline_pve_node_and_an_unhealthy_cluster_are_reported_together() {
    let h = H::six().await;
    h.edit(|p| {
        p.offline_nodes.push("pve3".into());
        // The timeout form of a dead node (the default is 595, `No route to host`).
        p.proxy_status = 596;
    });
    h.env.edit_cluster(|c| {
        c.faults.health_error =
            Some("etcd member ips are not subset of control plane node ips".into());
    });
    let (r, _) = h.run("pre-upgrade", inputs("up1")).await;
    let (exit, text) = failure(r);
    assert_eq!(exit, Exit::Precondition, "{text}");
    // Every problem at once: the health check and both VMs on the offline node.
    assert!(text.contains("not healthy"), "{text}");
    assert!(
        text.contains("an unstable cluster is not snapshotted"),
        "{text}"
    );
    for vmid in [103, 203] {
        assert!(text.contains(&format!("VM {vmid} on node pve3")), "{text}");
    }
    assert!(text.contains("596"), "{text}");
    assert!(text.contains("3 problems"), "{text}");
    assert!(h.snapshot_posts().is_empty());
    h.assert_schema();
}

#[tokio::test]
async fn failed_vm_snapshots_leave_a_truthful_partial_set_and_resume_makes_only_the_missing() {
    // The backup starts after the preflight: the task, not the status, sees the lock.
    let h = H::new(
        |p| {
            p.task_locked.insert(203, "backup".into());
        },
        Duration::from_millis(30),
        "",
    )
    .await;
    let (r, j) = h.run("pre-upgrade", inputs("up1")).await;
    let run_id = j.snapshot().run_id;
    let (exit, text) = failure(r);
    assert_eq!(exit, Exit::Failed, "{text}");
    assert!(
        text.contains("1 of 6 VM snapshots of set up1 failed"),
        "{text}"
    );
    assert!(
        text.contains("VM 203 on node pve3: VM is locked (backup)"),
        "{text}"
    );
    assert!(
        text.contains("talos-dr --config-dir ") && text.contains(&format!(" resume {run_id}`")),
        "{text}"
    );
    assert!(text.contains(" sets delete up1`"), "{text}");

    let m = sets::load(&h.sets_dir(), "up1").unwrap();
    assert_eq!(m.status, SetStatus::Incomplete);
    let mut have: Vec<u32> = m.vms.iter().map(|v| v.vmid).collect();
    have.sort_unstable();
    assert_eq!(have, [101, 102, 103, 201, 202]);
    assert_eq!(m.missing.len(), 1);
    assert_eq!(m.missing[0].vmid, 203);
    assert!(m.etcd.is_some());
    // Retention and record did not run.
    let st = j.snapshot();
    assert_eq!(st.stage("record").unwrap().status, StageStatus::Pending);

    // The backup is over: resume creates only VM 203's snapshot.
    h.edit(|p| {
        p.task_locked.remove(&203);
    });
    h.resume(&j).await.unwrap();
    assert_eq!(h.snapshot_posts(), [101, 102, 103, 201, 202, 203, 203]);
    let m = sets::load(&h.sets_dir(), "up1").unwrap();
    assert_eq!(m.status, SetStatus::Complete);
    assert_eq!(m.vms.len(), 6);
    assert!(m.missing.is_empty());
    // The etcd snapshot was not taken twice.
    assert_eq!(h.env.calls_of(&["etcd", "snapshot"]).len(), 1);
    h.assert_schema();
}

#[tokio::test]
async fn resume_after_a_crash_waits_for_tasks_in_flight_instead_of_posting_again() {
    let h = H::six().await;
    h.edit(|p| p.hold_tasks = vec![102, 202]);
    let inp = inputs("up1");
    let (pb, j) = h.create("pre-upgrade", &inp);
    {
        // Ctrl-C once four snapshots are done and two tasks are still running.
        let fut = h.execute(&pb, &j, &AssumeYes);
        tokio::pin!(fut);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            tokio::select! {
                r = &mut fut => panic!("the run ended before the crash point: {r:?}"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    let st = j.snapshot();
                    let vms = st.stage("vm-snapshots").unwrap().outputs["vms"].clone();
                    let count = |state: &str| vms.as_object().map_or(0, |m| m.values().filter(|v| v["state"] == state).count());
                    if count("done") == 4 && count("started") == 2 {
                        break;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "never reached the crash point: {vms}");
                }
            }
        }
    }
    let st = Journal::open(j.dir()).unwrap().snapshot();
    assert_eq!(st.status, RunStatus::Interrupted);
    assert_eq!(
        st.stage("vm-snapshots").unwrap().status,
        StageStatus::Running
    );
    let in_flight: Vec<String> = [102, 202]
        .iter()
        .map(|id| {
            st.stage("vm-snapshots").unwrap().outputs["vms"][id.to_string()]["upid"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let polls_before: Vec<usize> = in_flight.iter().map(|u| h.polls(u)).collect();
    assert_eq!(h.snapshot_posts().len(), 6);

    h.release();
    h.resume(&j).await.unwrap();
    // No duplicate POST: the two tasks in flight were waited for.
    assert_eq!(h.snapshot_posts(), [101, 102, 103, 201, 202, 203]);
    let polls_after: Vec<usize> = in_flight.iter().map(|u| h.polls(u)).collect();
    assert!(
        polls_after.iter().zip(&polls_before).all(|(a, b)| a > b),
        "{polls_before:?} -> {polls_after:?}"
    );
    let m = sets::load(&h.sets_dir(), "up1").unwrap();
    assert_eq!(m.status, SetStatus::Complete);
    for (id, upid) in [102u32, 202].iter().zip(&in_flight) {
        let v = m.vms.iter().find(|v| v.vmid == *id).unwrap();
        assert_eq!(v.upid.as_deref(), Some(upid.as_str()));
    }
    assert_eq!(h.env.calls_of(&["etcd", "snapshot"]).len(), 1);
    h.assert_schema();
}

#[tokio::test]
async fn rollback_rolls_every_vm_back_starts_them_and_waits_for_health() {
    let h = H::six().await;
    h.run("pre-upgrade", inputs("up1")).await.0.unwrap();
    h.edit(|p| p.vm_mut(201).unwrap().status = "stopped".into());
    let health_before = h.env.calls_of(&["health"]).len();
    let (r, j) = h.run("rollback", inputs("up1")).await;
    r.unwrap();
    let reqs = h.requests();
    let rollbacks: Vec<_> = reqs
        .iter()
        .filter(|r| r.path().ends_with("/rollback"))
        .collect();
    assert_eq!(rollbacks.len(), 6);
    for r in &rollbacks {
        assert_eq!(String::from_utf8_lossy(&r.body), "start=1");
        assert!(r.path().contains("/snapshot/talosdr-up1-"));
    }
    assert!(h.state().vms.iter().all(|v| v.status == "running"));
    assert!(h.env.calls_of(&["health"]).len() > health_before);
    let st = j.snapshot();
    assert_eq!(
        st.stage("wait-healthy").unwrap().status,
        StageStatus::Succeeded
    );
    // The set was shown before the confirmation.
    assert!(h.rec.events().iter().any(|e| matches!(e, Event::Info { message } if message.starts_with("set up1: made") && message.contains("6 VMs"))));
    h.assert_schema();
}

#[tokio::test]
async fn rollback_needs_a_typed_confirmation_and_no_start_leaves_vms_stopped() {
    let h = H::six().await;
    h.run("pre-upgrade", inputs("up1")).await.0.unwrap();
    let (r, _) = h.run_with("rollback", inputs("up1"), &NoPrompt).await;
    let (exit, text) = failure(r);
    assert_eq!(exit, Exit::Declined, "{text}");
    assert_eq!(h.count("POST", |p| p.ends_with("/rollback")), 0);

    let (r, j) = h
        .run(
            "rollback",
            Inputs {
                no_start: true,
                ..inputs("up1")
            },
        )
        .await;
    r.unwrap();
    assert!(h.state().vms.iter().all(|v| v.status == "stopped"));
    assert_eq!(
        j.snapshot().stage("wait-healthy").unwrap().status,
        StageStatus::Skipped
    );
}

#[tokio::test]
async fn rollback_on_zfs_with_a_newer_snapshot_is_refused_and_explained() {
    let h = H::six().await;
    h.run("pre-upgrade", inputs("up1")).await.0.unwrap();
    // Someone took another snapshot of VM 101 after the set; its disks are on ZFS.
    h.edit(|p| {
        p.vm_mut(101).unwrap().zfs = true;
        let t = jiff::Timestamp::now().as_second() + 60;
        plant_foreign(p, 101, FOREIGN, "cv4pve-autosnap", t);
    });
    let (r, _) = h.run("rollback", inputs("up1")).await;
    let (exit, text) = failure(r);
    assert_eq!(exit, Exit::Failed, "{text}");
    assert!(text.contains("VM 101 on node pve1"), "{text}");
    assert!(text.contains("is not most recent snapshot"), "{text}");
    assert!(text.contains("ZFS rolls back only to"), "{text}");
    assert!(text.contains("mixed"), "{text}");
    // The preflight warned before anything was stopped.
    assert!(
        h.warnings()
            .iter()
            .any(|w| w.contains("VM 101") && w.contains(FOREIGN) && w.contains("ZFS")),
        "{:?}",
        h.warnings()
    );
    // talos-dr deleted nothing to make ZFS happy.
    assert_eq!(h.count("DELETE", |_| true), 0);
    assert!(h.snapshot_names(101).contains(&FOREIGN.to_owned()));
    h.assert_schema();
}

#[tokio::test]
async fn set_retention_deletes_old_sets_but_never_foreign_snapshots() {
    let h = H::new(
        |p| {
            for vmid in [101, 102, 103, 201, 202, 203] {
                for name in [FOREIGN, "talosdr-manual-2405241418"] {
                    plant_foreign(p, vmid, name, "not from a set", 1_716_000_000);
                }
            }
        },
        Duration::from_millis(20),
        "keep_sets = 1",
    )
    .await;
    h.run("pre-upgrade", inputs("a")).await.0.unwrap();
    // An old set whose manifest (edited by hand) points at a foreign snapshot of VM 101.
    let mut old = sets::load(&h.sets_dir(), "a").unwrap();
    old.label = "old".into();
    old.created_at = "2024-01-01T00:00:00Z".parse().unwrap();
    old.etcd = None;
    old.vms.truncate(1);
    old.vms[0].snapname = FOREIGN.into();
    sets::save(&h.sets_dir(), &old).unwrap();

    let (r, j) = h.run("pre-upgrade", inputs("b")).await;
    r.unwrap();
    assert_eq!(
        j.snapshot().stage("retention").unwrap().status,
        StageStatus::Succeeded
    );
    let labels: Vec<String> = sets::list(&h.sets_dir())
        .into_iter()
        .map(|m| m.unwrap().label)
        .collect();
    assert_eq!(labels, ["b"]);
    assert!(!sets::etcd_path(&h.sets_dir(), "a").exists());
    assert!(sets::etcd_path(&h.sets_dir(), "b").exists());
    let b = sets::load(&h.sets_dir(), "b").unwrap();
    for id in [101, 102, 103, 201, 202, 203] {
        let mut names = h.snapshot_names(id);
        names.sort();
        let mut want = vec![
            b.snapname.clone(),
            FOREIGN.to_owned(),
            "talosdr-manual-2405241418".to_owned(),
        ];
        want.sort();
        assert_eq!(names, want, "VM {id}");
    }
    // Only set a's snapshots were ever asked to go.
    let deletes: Vec<String> = h
        .requests()
        .iter()
        .filter(|r| r.method.as_str() == "DELETE")
        .map(|r| r.path().to_owned())
        .collect();
    assert_eq!(deletes.len(), 6);
    assert!(
        deletes.iter().all(|p| p.contains("/snapshot/talosdr-a-")),
        "{deletes:?}"
    );
    h.assert_schema();
}

// ---- CLI ---------------------------------------------------------------------------------------

fn plant_set(env: &Env, label: &str, status: SetStatus) {
    let at: jiff::Timestamp = "2026-01-15T08:00:00Z".parse().unwrap();
    let name = talos_dr::pve::SnapshotName::for_label(label, at).unwrap();
    let mut m = sets::SetManifest::new(label, &name, at, "lab");
    m.status = status;
    let dir = env.config_dir.join("sets");
    std::fs::create_dir_all(&dir).unwrap();
    let etcd = sets::etcd_path(&dir, label);
    std::fs::copy(fixture("snapshots/small.snapshot"), &etcd).unwrap();
    m.etcd = Some(sets::SetEtcd {
        sha256: sha256_hex(&etcd),
        size: std::fs::metadata(&etcd).unwrap().len(),
        path: etcd,
        revision: None,
        node: Some("10.5.0.11".into()),
    });
    m.missing.push(sets::SetFailure {
        node: "pve3".into(),
        vmid: 203,
        error: "VM is locked (backup)".into(),
    });
    sets::save(&dir, &m).unwrap();
}

#[test]
fn cli_sets_list_show_delete() {
    let env = Env::new();
    env.cmd()
        .args(["sets"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("no snapshot sets yet"));
    plant_set(&env, "before-1-10", SetStatus::Incomplete);
    env.cmd().args(["sets", "list"]).assert().code(0).stdout(
        predicate::str::contains("before-1-10")
            .and(predicate::str::contains("INCOMPLETE (1 missing)")),
    );
    let out = env.cmd().args(["-o", "json", "sets"]).output().unwrap();
    let v = stdout_json(&out);
    assert_eq!(v["sets"][0]["label"], "before-1-10");
    assert_eq!(v["sets"][0]["status"], "incomplete");
    env.cmd()
        .args(["sets", "show", "before-1-10"])
        .assert()
        .code(0)
        .stdout(
            predicate::str::contains("talosdr-before-1-10-2601150800")
                .and(predicate::str::contains("MISSING")),
        );
    env.cmd()
        .args(["sets", "show", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no snapshot set \"nope\""));
    // Deleting asks first.
    env.cmd()
        .args(["--non-interactive", "sets", "delete", "before-1-10"])
        .assert()
        .code(5);
    assert!(env.config_dir.join("sets/before-1-10.json").exists());
    env.cmd()
        .args(["--yes", "sets", "delete", "before-1-10"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("deleted the set's etcd snapshot"));
    assert!(!env.config_dir.join("sets/before-1-10.json").exists());
    assert!(!env.config_dir.join("sets/before-1-10.snapshot").exists());
    assert!(
        !env.config_dir
            .join("sets/before-1-10.snapshot.json")
            .exists()
    );
}

#[test]
fn cli_pre_upgrade_and_rollback_check_their_arguments() {
    let env = Env::new();
    env.cmd()
        .args(["pre-upgrade", "--label", "Before.Upgrade"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid snapshot label"));
    env.cmd()
        .args(["pre-upgrade", "--label", &"a".repeat(22)])
        .assert()
        .code(2);
    env.cmd()
        .args(["rollback", "--label", "missing"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("sets list"));
    // The plan, without Proxmox configured: the preflight would refuse unmapped nodes.
    env.cmd()
        .args(["pre-upgrade", "--label", "x1", "--dry-run"])
        .assert()
        .code(0)
        .stdout(
            predicate::str::contains("upgrade-preflight")
                .and(predicate::str::contains("no vm mapping")),
        );
    // Without [proxmox] a real run stops at the preflight with a configuration error.
    env.cmd()
        .args(["pre-upgrade", "--label", "x1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("[proxmox]"));
    env.cmd()
        .args(["playbooks"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("pre-upgrade").and(predicate::str::contains("rollback")));
}
