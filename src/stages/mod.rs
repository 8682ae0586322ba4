//! One file per stage kind. A stage reads the run's inputs and earlier stages' outputs from the
//! checkpoint, talks to the world only through `talos`, `kube` and `pve`, and returns its outputs.

pub mod etcd_recover;
pub mod post_verify;
pub mod post_verify_kube;
pub mod pre_restore_snapshot;
pub mod preflight;
pub mod proxmox_check;
pub mod record_set;
pub mod report;
pub mod rollback_preflight;
pub mod rollback_vms;
pub mod set_etcd_snapshot;
pub mod set_retention;
pub mod upgrade_preflight;
pub mod vm_snapshots;
pub mod wait_healthy;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::checkpoint::Journal;
use crate::engine::playbook::{StageKind, StageSpec};
use crate::error::{Exit, UserError};
use crate::profile::Profile;
use crate::pve::PveClient;
use crate::talos::Talosctl;
use crate::ui::{Prompter, Reporter};

/// The outside world, as the stages see it.
#[derive(Clone)]
pub struct Services {
    pub profile: Profile,
    pub talos: Talosctl,
    pub pve: Option<PveClient>,
    /// kubectl with the profile's kubeconfig, when that file exists.
    pub kubectl: Option<crate::kube::Kubectl>,
}

/// What the user asked for; stored in the checkpoint so a resume runs with the same inputs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Inputs {
    /// The snapshot to restore (absolute path).
    #[serde(default)]
    pub snapshot: Option<PathBuf>,
    /// `--vm-snapshot` / `--no-vm-snapshot`; `None` follows `proxmox.snapshot_before_restore`.
    #[serde(default)]
    pub vm_snapshot: Option<bool>,
    /// `talosctl health --wait-timeout` after the restore, in seconds.
    #[serde(default)]
    pub health_timeout_s: Option<u64>,
    /// How long to wait for etcd to reach a state, in seconds (default 15 minutes).
    #[serde(default)]
    pub wait_timeout_s: Option<u64>,
    /// Poll interval cap for waits, in milliseconds (tests shorten it).
    #[serde(default)]
    pub poll_max_ms: Option<u64>,
    /// The snapshot set (`pre-upgrade`, `rollback`).
    #[serde(default)]
    pub label: Option<String>,
    /// `pre-upgrade --control-plane-only`: leave the workers' VMs out of the set.
    #[serde(default)]
    pub control_plane_only: bool,
    /// `pre-upgrade --vmstate`: include RAM in the VM snapshots.
    #[serde(default)]
    pub vmstate: bool,
    /// `rollback --no-start`: leave the VMs stopped after the rollback.
    #[serde(default)]
    pub no_start: bool,
}

impl Inputs {
    pub fn poll_max(&self) -> Duration {
        Duration::from_millis(self.poll_max_ms.unwrap_or(5_000))
    }
    pub fn health_timeout(&self) -> Duration {
        Duration::from_secs(self.health_timeout_s.unwrap_or(600))
    }
}

pub struct StageCtx<'a> {
    pub services: &'a Services,
    pub reporter: &'a dyn Reporter,
    pub prompter: &'a dyn Prompter,
    pub journal: &'a Journal,
    pub inputs: &'a Inputs,
    pub spec: &'a StageSpec,
    /// The stage was found `running`: a previous attempt was interrupted mid-way.
    pub resumed: bool,
}

impl StageCtx<'_> {
    pub fn profile(&self) -> &Profile {
        &self.services.profile
    }
    pub fn talos(&self) -> &Talosctl {
        &self.services.talos
    }
    /// Journals a sub-step of this stage at once (before a destructive call).
    pub fn record(&self, key: &str, value: Value) -> anyhow::Result<()> {
        self.journal.record(&self.spec.id, key, value)?;
        Ok(())
    }
    /// This stage's outputs so far (from an interrupted attempt, on resume).
    pub fn own_outputs(&self) -> Value {
        self.journal
            .snapshot()
            .stage(&self.spec.id)
            .map_or(Value::Null, |s| s.outputs.clone())
    }
    pub fn outputs_of(&self, kind: StageKind) -> Value {
        self.journal.snapshot().outputs_of(kind)
    }
    /// The set label (`pre-upgrade`, `rollback`); a usage error when missing or invalid.
    pub fn label(&self) -> anyhow::Result<String> {
        let label = self
            .inputs
            .label
            .clone()
            .ok_or_else(|| UserError::usage("this playbook needs --label L"))?;
        crate::sets::validate_label(&label).map_err(|e| UserError::usage(e.to_string()))?;
        Ok(label)
    }
    pub fn pve(&self) -> anyhow::Result<&PveClient> {
        self.services.pve.as_ref().ok_or_else(|| {
            UserError::usage(format!(
                "playbook stage {} needs the Proxmox VE API, but profile {} has no [proxmox] section",
                self.spec.id,
                self.profile().name()
            ))
            .hint("add [proxmox] with `endpoint` and a token (see `talos-dr profile show`)")
            .into()
        })
    }
    pub fn snapshot_path(&self) -> anyhow::Result<PathBuf> {
        self.inputs
            .snapshot
            .clone()
            .ok_or_else(|| UserError::usage("this playbook needs --snapshot FILE").into())
    }
}

pub enum StageOutcome {
    Done(Value),
    Skipped(String),
}

pub async fn run(kind: StageKind, ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    match kind {
        StageKind::Preflight => preflight::run(ctx).await,
        StageKind::PreRestoreSnapshot => pre_restore_snapshot::run(ctx).await,
        StageKind::ProxmoxCheck => proxmox_check::run(ctx).await,
        StageKind::EtcdRecover => etcd_recover::run(ctx).await,
        StageKind::PostVerify => post_verify::run(ctx).await,
        StageKind::Report => report::run(ctx),
        StageKind::UpgradePreflight => upgrade_preflight::run(ctx).await,
        StageKind::SetEtcdSnapshot => set_etcd_snapshot::run(ctx).await,
        StageKind::VmSnapshots => vm_snapshots::run(ctx).await,
        StageKind::RecordSet => record_set::run(ctx),
        StageKind::SetRetention => set_retention::run(ctx).await,
        StageKind::RollbackPreflight => rollback_preflight::run(ctx).await,
        StageKind::RollbackVms => rollback_vms::run(ctx).await,
        StageKind::WaitHealthy => wait_healthy::run(ctx).await,
    }
}

pub fn title(kind: StageKind) -> &'static str {
    match kind {
        StageKind::Preflight => "check the snapshot and the control-plane nodes",
        StageKind::PreRestoreSnapshot => "save the current etcd state, if any node still serves it",
        StageKind::ProxmoxCheck => "check the control-plane VMs and snapshot them",
        StageKind::EtcdRecover => "wipe etcd on every control-plane node and restore the snapshot",
        StageKind::PostVerify => "verify the cluster with talosctl and kubectl",
        StageKind::Report => "summarise the run",
        StageKind::UpgradePreflight => {
            "check cluster health, the Proxmox API and every VM of the set"
        }
        StageKind::SetEtcdSnapshot => "take a verified etcd snapshot for the set",
        StageKind::VmSnapshots => "snapshot every VM of the set, in parallel",
        StageKind::RecordSet => "write the set manifest",
        StageKind::SetRetention => "delete sets beyond proxmox.keep_sets",
        StageKind::RollbackPreflight => "show the set and check every VM can be rolled back",
        StageKind::RollbackVms => "roll every VM of the set back to its snapshot",
        StageKind::WaitHealthy => "wait for talosctl health",
    }
}

/// What a stage will do, as exact commands and API calls, for `playbooks show` and `--dry-run`.
pub fn describe(
    kind: StageKind,
    profile: &Profile,
    talos: &Talosctl,
    inputs: &Inputs,
) -> Vec<String> {
    let cp = profile.control_plane_addresses();
    let first = cp.first().cloned().unwrap_or_default();
    let snap = inputs
        .snapshot
        .as_ref()
        .map_or_else(|| "<snapshot>".to_owned(), |p| p.display().to_string());
    let each =
        |rest: &[&str]| -> Vec<String> { cp.iter().map(|n| talos.render(Some(n), rest)).collect() };
    match kind {
        StageKind::Preflight => {
            let mut v = vec![format!(
                "verify {snap} (sha256 trailer, bbolt structure, etcd status)"
            )];
            v.extend(each(&["version"]));
            v.extend(each(&["service", "etcd"]));
            v.push(talos.render(Some(&cp.join(",")), &["get", "machinetype", "-o", "json"]));
            v.push(
                talos.render(Some(&first), &["health", "--wait-timeout", "30s"])
                    + "   (for information)",
            );
            v.push(format!(
                "if etcd is healthy on a quorum: typed confirmation ({:?})",
                profile.name()
            ));
            v
        }
        StageKind::PreRestoreSnapshot => vec![
            talos.render(
                Some("<first CP whose etcd answers>"),
                &["etcd", "snapshot", "runs/<run-id>/pre-restore.snapshot"],
            ),
            "skipped when no control-plane etcd answers".into(),
        ],
        StageKind::ProxmoxCheck if profile.file.proxmox.is_none() => {
            vec!["nothing: the profile has no [proxmox] section".into()]
        }
        StageKind::ProxmoxCheck => {
            let mut v = Vec::new();
            for n in profile.control_plane() {
                match &n.vm {
                    Some(vm) => {
                        v.push(format!("GET /nodes/{}/qemu/{}/status/current, /config, /feature?feature=snapshot", vm.node, vm.vmid));
                        if inputs.vm_snapshot.unwrap_or_else(|| {
                            profile
                                .file
                                .proxmox
                                .as_ref()
                                .is_some_and(|p| p.snapshot_before_restore)
                        }) {
                            v.push(format!("POST /nodes/{}/qemu/{}/snapshot snapname=talosdr-restore-<yymmddhhmm>, then poll the task", vm.node, vm.vmid));
                        }
                    }
                    None => v.push(format!(
                        "node {}: no vm mapping in the profile (the stage will fail)",
                        n.address
                    )),
                }
            }
            v
        }
        StageKind::EtcdRecover => {
            let mut v = vec![format!("typed confirmation ({:?})", profile.name())];
            for n in &cp {
                v.push(
                    talos.render(Some(n), &crate::talos::RESET_ARGS)
                        + "   (unless etcd is already Preparing)",
                );
            }
            v.push(
                "wait until `service etcd` shows STATE Preparing on every control-plane node"
                    .into(),
            );
            v.push(
                talos.render(
                    Some(&first),
                    &["bootstrap", &format!("--recover-from={snap}")],
                ) + "   (exactly once)",
            );
            v.push(format!(
                "wait until etcd on {first} is Running/OK, then the others join"
            ));
            v.push(talos.render(Some(&first), &["etcd", "members"]));
            v
        }
        StageKind::PostVerify => {
            let wait = format!("{}s", inputs.health_timeout().as_secs());
            let mut args = vec!["health", "--wait-timeout", &wait];
            let cps = cp.join(",");
            let wk = profile.worker_addresses().join(",");
            if !cps.is_empty() {
                args.extend(["--control-plane-nodes", &cps]);
            }
            if !wk.is_empty() {
                args.extend(["--worker-nodes", &wk]);
            }
            vec![
                talos.render(Some(&first), &args),
                format!(
                    "kubectl --kubeconfig {} get nodes -o json   (all Ready)",
                    profile.kubeconfig().display()
                ),
                format!(
                    "kubectl --kubeconfig {} get pods -A -o json   (summary)",
                    profile.kubeconfig().display()
                ),
            ]
        }
        StageKind::Report => vec!["write runs/<run-id>/report.md and report.json".into()],
        StageKind::UpgradePreflight
        | StageKind::SetEtcdSnapshot
        | StageKind::VmSnapshots
        | StageKind::RecordSet
        | StageKind::SetRetention => upgrade_preflight::describe(kind, profile, talos, inputs),
        StageKind::RollbackPreflight | StageKind::RollbackVms | StageKind::WaitHealthy => {
            rollback_preflight::describe(kind, profile, talos, inputs)
        }
    }
}

/// The text shown before a typed confirmation (`confirm = "typed"` in a playbook).
pub fn typed_warning(kind: StageKind, profile: &Profile, inputs: &Inputs, stage: &str) -> String {
    let name = profile.name();
    match kind {
        StageKind::RollbackVms => format!(
            "Stage {stage} is destructive: it hard-stops every VM of set {} of cluster {name:?} and rolls its disks back, discarding everything written since the set was made.",
            inputs.label.as_deref().unwrap_or("?")
        ),
        _ => format!(
            "Stage {stage} is destructive: it wipes etcd on every control-plane node of cluster {name:?} and restores it from the snapshot."
        ),
    }
}

/// Turns a prompter's answer into "go on" or the right error (exit 5).
pub fn confirmation_result(answer: Option<bool>, stage: &str) -> anyhow::Result<()> {
    match answer {
        Some(true) => Ok(()),
        Some(false) => Err(UserError::new(
            Exit::Declined,
            format!("declined at stage {stage}; nothing in that stage was done"),
        )
        .hint("run `talos-dr resume` to continue from this stage later")
        .into()),
        None => Err(UserError::new(
            Exit::Declined,
            format!("stage {stage} needs a confirmation, but there is no terminal to ask on"),
        )
        .hint("pass --yes to confirm in advance (cron, CI), or run it in a terminal")
        .into()),
    }
}

/// Paces a wait loop: exponential delays with jitter (backon's schedule), capped at `max_delay`,
/// until a deadline.
pub struct Poller {
    delays: backon::ExponentialBackoff,
    deadline: tokio::time::Instant,
    max_delay: Duration,
}

impl Poller {
    pub fn new(budget: Duration, max_delay: Duration) -> Self {
        use backon::BackoffBuilder;
        let delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100).min(max_delay))
            .with_max_delay(max_delay)
            .with_jitter()
            .without_max_times()
            .build();
        Self {
            delays,
            deadline: tokio::time::Instant::now() + budget,
            max_delay,
        }
    }

    /// Sleeps until the next check; `false` once the deadline has passed.
    pub async fn wait(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            return false;
        }
        let d = self.delays.next().unwrap_or(self.max_delay);
        tokio::time::sleep(d.min(self.deadline - now)).await;
        true
    }
}
