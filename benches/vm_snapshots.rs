//! Benchmark of the `vm-snapshots` stage: six VMs on three PVE nodes, every snapshot task taking
//! 3 s on a wiremock Proxmox VE (`tests/it/pve_fake.rs`), production poll timing (backon,
//! 0.5 s × 1.5 up to 5 s, with jitter).
//!
//! Target: with `max_parallel = 6` the phase takes at most 1.5 × 3 s + 2 s = 6.5 s and needs at
//! most 8 task-status polls per task on average. The serial time (`max_parallel = 1`) is printed
//! for comparison. Run with `cargo bench --bench vm_snapshots`.

#![allow(clippy::print_stdout)]

#[path = "../tests/it/pve_fake.rs"]
mod pve_fake;

use std::sync::Arc;
use std::time::{Duration, Instant};

use talos_dr::engine::checkpoint::Journal;
use talos_dr::engine::run::Runner;
use talos_dr::profile::{Location, Profile};
use talos_dr::pve::{ApiToken, PveClient};
use talos_dr::stages::{Inputs, Services};
use talos_dr::talos::Talosctl;
use talos_dr::ui::{AssumeYes, NoopReporter, Reporter};

const TASK: Duration = Duration::from_secs(3);
const PLAYBOOK: &str = "name = \"bench\"\nsummary = \"vm-snapshots after a seeded preflight\"\n\n[[stages]]\nid = \"preflight\"\nkind = \"upgrade-preflight\"\n\n[[stages]]\nid = \"vm-snapshots\"\nkind = \"vm-snapshots\"\n";

struct Figures {
    elapsed: Duration,
    polls_per_task: f64,
    peak: usize,
}

async fn run_once(max_parallel: usize) -> Figures {
    let pve = pve_fake::FakePve::start(pve_fake::six_vms(), TASK).await;
    let dir = tempfile::tempdir().unwrap();
    let mut toml = String::from("name = \"bench\"\n");
    for v in pve.with(|s| s.vms.values().cloned().collect::<Vec<_>>()) {
        let role = if v.vmid < 200 {
            "controlplane"
        } else {
            "worker"
        };
        toml.push_str(&format!(
            "\n[[nodes]]\naddress = \"10.5.0.{}\"\nrole = \"{role}\"\nvm = {{ node = \"{}\", vmid = {} }}\n",
            v.vmid % 100 + if role == "worker" { 20 } else { 10 },
            v.node,
            v.vmid
        ));
    }
    toml.push_str(&format!(
        "\n[proxmox]\nendpoint = \"https://pve.invalid:8006\"\nmax_parallel = {max_parallel}\n"
    ));
    std::fs::write(dir.path().join("profile.toml"), toml).unwrap();
    let profile = Profile::load(&Location {
        name: None,
        config_dir: dir.path().to_path_buf(),
    })
    .unwrap();
    // Production poll and retry settings: that is what is being measured.
    let client = PveClient::builder(
        &pve.uri(),
        ApiToken::parse("bench@pve!cli=00000000-0000-0000-0000-000000000000").unwrap(),
    )
    .build()
    .unwrap();
    let services = Services {
        talos: Talosctl::new("/bin/false".into(), dir.path().join("talosconfig"), None),
        profile,
        pve: Some(client),
        kubectl: None,
    };
    let pb = talos_dr::stages::parse_playbook(PLAYBOOK).unwrap();
    let inputs = Inputs {
        label: Some("bench".into()),
        ..Inputs::default()
    };
    let journal = Journal::create(
        &dir.path().join("runs"),
        &pb,
        "bench",
        serde_json::to_value(&inputs).unwrap(),
    )
    .unwrap();
    seed_preflight(&journal, &services.profile);
    let reporter: Arc<dyn Reporter> = Arc::new(NoopReporter);
    let runner = Runner {
        services: &services,
        reporter,
        prompter: &AssumeYes,
        playbook: &pb,
    };
    let t0 = Instant::now();
    runner.execute(&journal).await.unwrap();
    let elapsed = t0.elapsed();
    let (polls, tasks, peak) = pve.with(|s| {
        (
            s.tasks.iter().map(|t| t.polls).sum::<u32>(),
            s.tasks.len(),
            s.max_concurrent,
        )
    });
    assert_eq!(tasks, 6, "one snapshot task per VM");
    Figures {
        elapsed,
        polls_per_task: f64::from(polls) / tasks as f64,
        peak,
    }
}

/// Only the VM phase is measured: the preflight's result (the set's name and VMs) is written into
/// the checkpoint as a resumed run would find it.
fn seed_preflight(journal: &Journal, profile: &Profile) {
    use talos_dr::stages::upgrade_preflight::{SetIdentity, UpgradePreflightOutputs, targets};
    let created_at = jiff::Timestamp::now();
    let outputs = UpgradePreflightOutputs {
        set: Some(SetIdentity {
            label: "bench".into(),
            snapname: talos_dr::pve::SnapshotName::for_label("bench", created_at).unwrap(),
            created_at,
        }),
        targets: targets(profile, false).0,
        ..UpgradePreflightOutputs::default()
    };
    journal
        .update(|st| {
            let s = st.stage_mut("preflight").unwrap();
            s.status = talos_dr::engine::checkpoint::StageStatus::Succeeded;
            s.outputs = serde_json::to_value(&outputs).unwrap();
        })
        .unwrap();
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful: run anyway.
    let bound = TASK.mul_f64(1.5) + Duration::from_secs(2);
    println!("vm-snapshots: 6 VMs on 3 PVE nodes, simulated snapshot task = {TASK:?}");
    let mut worst = Duration::ZERO;
    let mut worst_polls: f64 = 0.0;
    for i in 1..=5 {
        let f = run_once(6).await;
        println!(
            "  parallel (max_parallel = 6) run {i}: {:.2} s, {:.2} task-status polls per task, peak {} tasks at once",
            f.elapsed.as_secs_f64(),
            f.polls_per_task,
            f.peak
        );
        worst = worst.max(f.elapsed);
        worst_polls = worst_polls.max(f.polls_per_task);
    }
    let s = run_once(1).await;
    println!(
        "  serial (max_parallel = 1): {:.2} s, {:.2} task-status polls per task",
        s.elapsed.as_secs_f64(),
        s.polls_per_task
    );
    let time_ok = worst <= bound;
    let polls_ok = worst_polls <= 8.0;
    println!(
        "parallel worst {:.2} s vs bound 1.5 x task + 2 s = {:.2} s: {}; worst polls per task {:.2} vs 8: {}; speed-up vs serial {:.1}x",
        worst.as_secs_f64(),
        bound.as_secs_f64(),
        if time_ok { "OK" } else { "OVER" },
        worst_polls,
        if polls_ok { "OK" } else { "OVER" },
        s.elapsed.as_secs_f64() / worst.as_secs_f64()
    );
    if !(time_ok && polls_ok) {
        std::process::exit(1);
    }
}
