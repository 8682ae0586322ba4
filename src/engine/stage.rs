//! What a stage is, as the engine sees it: the [`Stage`] trait, the [`Registry`] of every stage
//! kind, the [`StageCtx`] a stage runs with, and typed access to stage data in the checkpoint.
//!
//! The engine depends on this module only; the stages themselves live in `crate::stages` (one
//! file per kind) and are listed once, in `crate::stages::REGISTRY`.

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::checkpoint::{Journal, RunState, StageStatus};
use super::playbook::{Confirm, StageSpec};
use crate::error::{Exit, UserError};
use crate::profile::Profile;
use crate::pve::PveClient;
use crate::talos::Talosctl;
use crate::ui::{Prompter, Reporter};

/// One kind of stage. Adding a stage is one file that implements this and one line in
/// `crate::stages::REGISTRY`.
pub trait Stage: Send + Sync {
    /// The `kind` a playbook names it by; also what the checkpoint records.
    fn kind(&self) -> &'static str;
    /// One line for progress output and `playbooks show`.
    fn title(&self) -> &'static str;
    /// What the stage will do, as exact commands and API calls (`playbooks show`, `--dry-run`).
    fn describe(&self, plan: &Plan<'_>) -> Vec<String>;
    /// The least confirmation this stage runs with, whatever a playbook says. A stage that needs
    /// [`Confirm::Typed`] is destructive.
    fn min_confirm(&self) -> Confirm {
        Confirm::No
    }
    /// The warning shown before the typed confirmation of a destructive stage.
    fn typed_warning(&self, profile: &Profile, _inputs: &Inputs, stage: &str) -> String {
        format!(
            "Stage {stage} ({}) is destructive on cluster {:?}.",
            self.kind(),
            profile.name()
        )
    }
    /// Stage kinds whose outputs this stage reads: each must come earlier in the playbook.
    fn requires(&self) -> &'static [&'static str] {
        &[]
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>>;
}

impl std::fmt::Debug for dyn Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

/// Every stage kind the engine can run.
pub struct Registry(pub &'static [&'static dyn Stage]);

impl Registry {
    pub fn get(&self, kind: &str) -> Option<&'static dyn Stage> {
        self.0.iter().copied().find(|s| s.kind() == kind)
    }
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|s| s.kind())
    }
}

/// Typed data a stage keeps in the checkpoint: its journal while it runs (so a resumed attempt
/// knows what it already did) and its outputs once it has succeeded.
pub trait StageData: Serialize + DeserializeOwned + Default {
    /// The kind of the stage that writes it.
    const KIND: &'static str;
}

/// What a stage's [`Stage::describe`] gets: enough to render the plan without running anything.
pub struct Plan<'a> {
    pub profile: &'a Profile,
    pub talos: &'a Talosctl,
    pub inputs: &'a Inputs,
}

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
    /// `restore --exclude NODE`: control-plane nodes left out (lost with their host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// `rebuild-node NODE`: the node whose VM is re-created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild_node: Option<String>,
    /// `--from backup|template` (default: backup when one exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild_from: Option<String>,
    /// `--target-node`: the Proxmox node the new VM goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// `restore --rebuild NODE`: nodes whose VMs are re-created before the recovery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rebuild: Vec<String>,
    /// How long a cloned VM may take to reach Talos maintenance mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_timeout_s: Option<u64>,
}

impl Inputs {
    pub fn poll_max(&self) -> Duration {
        Duration::from_millis(self.poll_max_ms.unwrap_or(5_000))
    }
    pub fn health_timeout(&self) -> Duration {
        Duration::from_secs(self.health_timeout_s.unwrap_or(600))
    }
    pub fn wait_timeout(&self) -> Duration {
        Duration::from_secs(self.wait_timeout_s.unwrap_or(15 * 60))
    }
    /// The profile's control-plane addresses less `--exclude`d ones, in profile order.
    /// The control-plane nodes there now: without the `--exclude`d ones and without those whose
    /// VMs `--rebuild` re-creates (they answer only after the `rebuild-vms` stage).
    pub fn present_control_plane(&self, profile: &Profile) -> Vec<String> {
        self.control_plane(profile)
            .into_iter()
            .filter(|a| !self.rebuild.contains(a))
            .collect()
    }
    pub fn control_plane(&self, profile: &Profile) -> Vec<String> {
        profile
            .control_plane_addresses()
            .into_iter()
            .filter(|a| !self.exclude.contains(a))
            .collect()
    }
}

pub enum StageOutcome {
    Done(Value),
    Skipped(String),
}

impl StageOutcome {
    /// Succeeded, with the stage's typed outputs.
    pub fn done<T: StageData>(data: &T) -> anyhow::Result<Self> {
        Ok(Self::Done(serde_json::to_value(data)?))
    }
}

/// Why typed stage data could not be had.
#[derive(Debug, thiserror::Error)]
pub enum StageDataError {
    #[error(
        "stage {stage} needs the outputs of a `{kind}` stage, but this run has none that succeeded"
    )]
    Missing { stage: String, kind: &'static str },
    #[error("the checkpoint's record of the `{kind}` stage cannot be read: {source}")]
    Unreadable {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl RunState {
    /// The outputs of the first succeeded stage of `T`'s kind, if there is one.
    pub fn data<T: StageData>(&self) -> Result<Option<T>, StageDataError> {
        self.stages
            .iter()
            .find(|s| s.kind == T::KIND && s.status == StageStatus::Succeeded)
            .map(|s| read::<T>(&s.outputs))
            .transpose()
    }
}

fn read<T: StageData>(v: &Value) -> Result<T, StageDataError> {
    if v.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(v.clone()).map_err(|source| StageDataError::Unreadable {
        kind: T::KIND,
        source,
    })
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
    pub fn run_id(&self) -> String {
        self.journal.snapshot().run_id
    }
    /// The control-plane nodes this run works on (the profile's, less `--exclude`).
    pub fn control_plane(&self) -> Vec<String> {
        self.inputs.control_plane(self.profile())
    }

    /// An earlier stage's outputs; an error naming this stage when the run has none (a playbook
    /// checked at load time always has them).
    pub fn output<T: StageData>(&self) -> anyhow::Result<T> {
        Ok(self
            .journal
            .snapshot()
            .data::<T>()?
            .ok_or_else(|| StageDataError::Missing {
                stage: self.spec.id.clone(),
                kind: T::KIND,
            })?)
    }

    /// An earlier stage's outputs, when such a stage ran and succeeded.
    pub fn output_if<T: StageData>(&self) -> anyhow::Result<Option<T>> {
        Ok(self.journal.snapshot().data::<T>()?)
    }

    /// This stage's record so far: what an interrupted attempt journaled, else the default.
    pub fn own<T: StageData>(&self) -> anyhow::Result<T> {
        self.check_own::<T>();
        let st = self.journal.snapshot();
        let v = st.stage(&self.spec.id).map_or(&Value::Null, |s| &s.outputs);
        Ok(read::<T>(v)?)
    }

    /// Changes this stage's record and writes the checkpoint before returning: used *before*
    /// a side effect, so that a crash during it is known on resume.
    pub fn update<T: StageData, R>(&self, f: impl FnOnce(&mut T) -> R) -> anyhow::Result<R> {
        self.check_own::<T>();
        let id = &self.spec.id;
        let out = self.journal.update(|st| -> anyhow::Result<R> {
            let stage = st
                .stage_mut(id)
                .ok_or_else(|| anyhow::anyhow!("the checkpoint has no stage {id:?}"))?;
            let mut data = read::<T>(&stage.outputs)?;
            let out = f(&mut data);
            stage.outputs = serde_json::to_value(&data)?;
            Ok(out)
        })??;
        Ok(out)
    }

    fn check_own<T: StageData>(&self) {
        debug_assert_eq!(
            T::KIND,
            self.spec.kind.as_str(),
            "stage {} reads another kind's data as its own",
            self.spec.id
        );
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
