//! `etcd-recover`: the real Talos recovery procedure (talos.md §3), made crash-safe.
//!
//! 1. Reset EPHEMERAL on every control-plane node whose etcd is not already `Preparing`.
//! 2. Wait until every control-plane node shows etcd `Preparing`.
//! 3. `bootstrap --recover-from` on exactly one node — the intent is journaled *before* the call,
//!    so a crash while it is in flight can never lead to a second bootstrap (which would split the
//!    cluster).
//! 4. Wait for that node's etcd to be `Running`/`OK` (bootstrap returns before the restore runs;
//!    `Failed` ends the stage with the node's last event), then for the others to join.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::preflight::PreflightOutputs;
use super::{Inputs, Plan, Poller, Stage, StageCtx, StageData, StageOutcome};
use crate::engine::playbook::Confirm;
use crate::error::UserError;
use crate::profile::Profile;
use crate::talos::{EtcdMember, ServiceStatus};
use crate::ui::{self, Event};

const RESET_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// "Not ready yet" refusals are retried for this long, this far apart: the node is about to
/// be ready (time sync, EPHEMERAL mounting), so a second apart notices it within a second, and
/// a refusal changes nothing on the node, so at most 60 calls are harmless.
const NOT_YET_BUDGET: Duration = Duration::from_secs(60);
const NOT_YET_DELAY: Duration = Duration::from_secs(1);
/// How long after a reset (or the last change seen) its node may take to show `Preparing`: a VM
/// reboot. Within it, every node is looked at every 0.8 s (`crate::poll`).
const RESET_DUE: Duration = Duration::from_secs(5 * 60);
/// The same for etcd starting after a bootstrap or a join.
const START_DUE: Duration = Duration::from_secs(3 * 60);
/// Extra reset rounds for nodes whose etcd data survived a reset.
const STALE_ROUNDS: u32 = 2;

pub struct EtcdRecover;

impl Stage for EtcdRecover {
    fn kind(&self) -> &'static str {
        "etcd-recover"
    }
    fn title(&self) -> &'static str {
        "wipe etcd on every control-plane node and restore the snapshot"
    }
    fn describe(&self, plan: &Plan<'_>) -> Vec<String> {
        let (profile, talos) = (plan.profile, plan.talos);
        let cp = plan.inputs.control_plane(profile);
        let first = cp.first().cloned().unwrap_or_default();
        let snap = plan
            .inputs
            .snapshot
            .as_ref()
            .map_or_else(|| "<snapshot>".to_owned(), |p| p.display().to_string());
        let mut v = vec![format!("typed confirmation ({:?})", profile.name())];
        for n in &plan.inputs.exclude {
            v.push(format!(
                "{n}: left out (--exclude): no reset, no wait, no bootstrap"
            ));
        }
        for n in &cp {
            v.push(talos.render(Some(n), &["get", "volumestatus", "ETCD", "-o", "json"]));
            v.push(
                talos.render(Some(n), &crate::talos::RESET_ARGS)
                    + "   (unless etcd is already Preparing; EPHEMERAL,ETCD where ETCD is its own partition)",
            );
        }
        v.push(
            "wait until `service etcd` shows STATE Preparing on every control-plane node".into(),
        );
        for n in &cp {
            v.push(
                talos.render(Some(n), &["ls", crate::talos::ETCD_MEMBER_DIR])
                    + "   (must not exist; else reset again)",
            );
        }
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
    fn min_confirm(&self) -> Confirm {
        Confirm::Typed
    }
    fn typed_warning(&self, profile: &Profile, inputs: &Inputs, stage: &str) -> String {
        let mut text = format!(
            "Stage {stage} is destructive: it wipes etcd on every control-plane node of cluster {:?} and restores it from the snapshot.",
            profile.name()
        );
        if !inputs.exclude.is_empty() {
            text.push_str(&format!(
                " Left out (--exclude): {}; they will not be etcd members afterwards.",
                inputs.exclude.join(", ")
            ));
        }
        text
    }
    fn requires(&self) -> &'static [&'static str] {
        &[PreflightOutputs::KIND]
    }
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> BoxFuture<'a, anyhow::Result<StageOutcome>> {
        Box::pin(run(ctx))
    }
}

/// The stage's journal and outputs: every reset and the bootstrap are recorded *before* they are
/// sent, so that a resumed attempt knows what may already have happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EtcdRecoverRecord {
    /// Per control-plane node.
    pub resets: BTreeMap<String, ResetRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapIntent>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<EtcdMember>,
}

impl StageData for EtcdRecoverRecord {
    const KIND: &'static str = "etcd-recover";
}

impl EtcdRecoverRecord {
    /// A bootstrap that may have reached its node: from then on a resume only waits and checks.
    pub fn bootstrap_issued(&self) -> Option<&BootstrapIntent> {
        self.bootstrap.as_ref().filter(|b| !b.refused)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ResetRecord {
    /// Why no reset was sent (etcd was already waiting for a bootstrap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Timestamp>,
    /// etcd's state when the reset was decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_was: Option<String>,
    /// `--system-labels-to-wipe` of the last reset (`EPHEMERAL`, or `EPHEMERAL,ETCD` where etcd
    /// has its own partition). Older records have none: EPHEMERAL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// Resets sent again because `/var/lib/etcd/member` survived the previous one.
    #[serde(skip_serializing_if = "is_zero")]
    pub stale_data_resets: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ResetRecord {
    /// Sent, and not known to have failed: the node may still be rebooting from it.
    fn in_flight(&self) -> bool {
        self.issued_at.is_some() && self.failed_at.is_none()
    }
}

/// The one bootstrap of the run, recorded before the call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootstrapIntent {
    pub node: String,
    pub issued_at: Timestamp,
    pub file: PathBuf,
    #[serde(default)]
    pub skip_hash_check: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// The node refused before anything happened (a proven refusal): it may be sent again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

async fn run(ctx: &StageCtx<'_>) -> anyhow::Result<StageOutcome> {
    let cp = ctx.control_plane();
    let file = ctx.snapshot_path()?;
    let skip_hash = ctx.output::<PreflightOutputs>()?.skip_hash_check;
    let wait_budget = ctx.inputs.wait_timeout();
    let prior: EtcdRecoverRecord = ctx.own()?;

    if let Some(b) = prior.bootstrap_issued() {
        ctx.reporter.info(&format!(
            "bootstrap was already issued on {} ({}); checking etcd instead of bootstrapping again",
            b.node, b.issued_at,
        ));
    } else {
        reset_all(ctx, &cp, prior.resets).await?;
        wait_all(ctx, &cp, (wait_budget, RESET_DUE), "Preparing", |s| {
            s.is_preparing()
        })
        .await?;
        ensure_wiped(ctx, &cp, wait_budget).await?;
        bootstrap_once(ctx, &cp[0], &file, skip_hash).await?;
    }

    let node = ctx
        .own::<EtcdRecoverRecord>()?
        .bootstrap
        .map_or_else(|| cp[0].clone(), |b| b.node);
    wait_bootstrap_node(ctx, &node, wait_budget).await?;
    let others: Vec<String> = cp.iter().filter(|n| **n != node).cloned().collect();
    wait_all(
        ctx,
        &others,
        (wait_budget, START_DUE),
        "Running",
        ServiceStatus::is_running_ok,
    )
    .await?;
    let members = wait_members(ctx, &node, cp.len(), wait_budget).await?;
    let record = ctx.update(|r: &mut EtcdRecoverRecord| {
        r.members = members;
        r.clone()
    })?;
    StageOutcome::done(&record)
}

async fn reset_all(
    ctx: &StageCtx<'_>,
    cp: &[String],
    mut resets: BTreeMap<String, ResetRecord>,
) -> anyhow::Result<()> {
    let talos = ctx.talos();
    let mut to_reset = Vec::new();
    for node in cp {
        let earlier = resets.get(node).cloned();
        // A reset we sent (and that did not come back as an error) may still be under way.
        let in_flight = earlier.as_ref().is_some_and(ResetRecord::in_flight);
        let status = match talos.service_etcd(node).await {
            Ok(s) => s,
            // Rebooting after our reset: wait for it below instead of resetting again.
            Err(_) if in_flight => continue,
            Err(e) => {
                return Err(UserError::precondition(format!(
                    "control-plane node {node} does not answer: {e}"
                ))
                .into());
            }
        };
        if status.is_preparing() {
            if earlier.is_none() {
                resets.insert(
                    node.clone(),
                    ResetRecord {
                        skipped: Some("etcd already Preparing".into()),
                        ..ResetRecord::default()
                    },
                );
            }
            continue;
        }
        // Visibly mid-reset (etcd stopped, the node booting): let it finish. In any other state
        // (Running, Failed, …) the reset did not take effect, and resetting again is harmless:
        // this node's etcd data is being replaced anyway.
        if in_flight
            && matches!(
                status.state.as_str(),
                "Stopping" | "Waiting" | "Starting" | "Initialized"
            )
        {
            continue;
        }
        let labels = labels_for(ctx, node).await?;
        resets.insert(
            node.clone(),
            ResetRecord {
                issued_at: Some(Timestamp::now()),
                etcd_was: Some(status.state),
                labels: Some(labels.to_owned()),
                ..ResetRecord::default()
            },
        );
        to_reset.push(node.clone());
    }
    // Every intent is on disk before the first reset goes out.
    save_resets(ctx, &resets)?;
    send_resets(ctx, &mut resets, &to_reset).await
}

/// What a reset of `node` must wipe for its etcd data to go: EPHEMERAL, plus ETCD where etcd has
/// its own partition (Talos 1.14; 1.10–1.13 refuse the ETCD label, 1.9 has no such volume).
async fn labels_for(ctx: &StageCtx<'_>, node: &str) -> anyhow::Result<&'static str> {
    let volume = ctx.talos().etcd_volume(node).await.map_err(|e| {
        UserError::failed(format!(
            "cannot tell where node {node} keeps etcd's data (`get volumestatus ETCD`): {}",
            e.message()
        ))
        .hint("nothing was reset on that node; `talos-dr resume` asks again")
    })?;
    Ok(volume.labels_to_wipe())
}

/// Sends the journaled resets of `nodes` in parallel (each waits for its node's reboot, which
/// takes minutes) and records how each ended.
async fn send_resets(
    ctx: &StageCtx<'_>,
    resets: &mut BTreeMap<String, ResetRecord>,
    nodes: &[String],
) -> anyhow::Result<()> {
    let talos = ctx.talos();
    let started = Instant::now();
    let calls = nodes.iter().map(|node| {
        let labels = resets
            .get(node)
            .and_then(|r| r.labels.clone())
            .unwrap_or_else(|| "EPHEMERAL".into());
        async move {
            ctx.reporter.report(Event::WaitStarted {
                key: format!("reset {node}"),
                message: format!("resetting {labels} on {node} and waiting for its reboot"),
            });
            let r = talos.reset_labels(node, &labels, RESET_TIMEOUT).await;
            ctx.reporter.report(Event::WaitFinished {
                key: format!("reset {node}"),
                ok: r.is_ok(),
                message: format!("reset {node}"),
                elapsed_ms: ui::ms(started.elapsed()),
            });
            (node.clone(), r)
        }
    });
    let mut failures = Vec::new();
    for (node, r) in futures::future::join_all(calls).await {
        match r {
            Ok(()) => {
                if let Some(v) = resets.get_mut(&node) {
                    v.done_at = Some(Timestamp::now());
                }
            }
            Err(e) => {
                if let Some(v) = resets.get_mut(&node) {
                    v.failed_at = Some(Timestamp::now());
                    v.error = Some(e.to_string());
                }
                failures.push(format!("{node}: {}", e.message()));
            }
        }
    }
    save_resets(ctx, resets)?;
    if !failures.is_empty() {
        return Err(
            UserError::failed(format!("reset failed on:\n  {}", failures.join("\n  ")))
                .hint("fix the node and `talos-dr resume`: it resets the nodes whose reset failed, and does not reset again the ones already on their way")
                .into(),
        );
    }
    Ok(())
}

/// `Preparing` is not proof that the data is gone (talos.md §13.4): before the bootstrap, every
/// node must have no `/var/lib/etcd/member`. A node that still has it is reset again with the
/// labels its volume needs (never bootstrapped, never left to join with old membership).
async fn ensure_wiped(ctx: &StageCtx<'_>, cp: &[String], budget: Duration) -> anyhow::Result<()> {
    for round in 0..=STALE_ROUNDS {
        let mut stale = Vec::new();
        for node in cp {
            let present = ctx.talos().etcd_data_present(node).await.map_err(|e| {
                UserError::failed(format!(
                    "cannot check that etcd's data is gone on {node} (`ls {}`): {}",
                    crate::talos::ETCD_MEMBER_DIR,
                    e.message()
                ))
                .hint("nothing was bootstrapped; `talos-dr resume` checks again")
            })?;
            if present {
                stale.push(node.clone());
            }
        }
        if stale.is_empty() {
            return Ok(());
        }
        if round == STALE_ROUNDS {
            return Err(UserError::failed(format!(
                "etcd's data is still on {} after {} more resets; it is not bootstrapped and not left to join with its old membership",
                stale.join(", "),
                STALE_ROUNDS
            ))
            .hint("check `talosctl -n NODE get volumestatus ETCD` and `talosctl -n NODE ls /var/lib/etcd`; wipe it (`talosctl -n NODE reset --graceful=false --reboot --system-labels-to-wipe=EPHEMERAL,ETCD` where ETCD is a partition), then `talos-dr resume`")
            .into());
        }
        ctx.reporter.warn(&format!(
            "etcd shows Preparing on {}, but /var/lib/etcd/member is still there: resetting again",
            stale.join(", ")
        ));
        let mut resets = ctx.own::<EtcdRecoverRecord>()?.resets;
        for node in &stale {
            let labels = labels_for(ctx, node).await?;
            let r = resets.entry(node.clone()).or_default();
            r.issued_at = Some(Timestamp::now());
            r.done_at = None;
            r.failed_at = None;
            r.error = None;
            r.skipped = None;
            r.labels = Some(labels.to_owned());
            r.stale_data_resets += 1;
        }
        save_resets(ctx, &resets)?;
        send_resets(ctx, &mut resets, &stale).await?;
        wait_all(ctx, &stale, (budget, RESET_DUE), "Preparing", |s| {
            s.is_preparing()
        })
        .await?;
    }
    Ok(())
}

fn save_resets(ctx: &StageCtx<'_>, resets: &BTreeMap<String, ResetRecord>) -> anyhow::Result<()> {
    ctx.update(|r: &mut EtcdRecoverRecord| r.resets = resets.clone())
}

/// Waits until every node in `nodes` satisfies `ok`, looking every 0.8 s for `due` after the
/// start or the last change of state seen; the error names the nodes that did not.
async fn wait_all(
    ctx: &StageCtx<'_>,
    nodes: &[String],
    (budget, due): (Duration, Duration),
    what: &str,
    ok: fn(&ServiceStatus) -> bool,
) -> anyhow::Result<()> {
    let talos = ctx.talos();
    let started = Instant::now();
    for n in nodes {
        ctx.reporter.report(Event::WaitStarted {
            key: format!("etcd {n}"),
            message: format!("waiting for etcd on {n} to be {what}"),
        });
    }
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    // State and health per node: a change there (not in the events' "12s ago") reopens the window.
    let mut states: BTreeMap<String, String> = BTreeMap::new();
    let mut done: Vec<String> = Vec::new();
    let mut poller = Poller::new(budget, ctx.inputs.poll_max()).due_within(due);
    loop {
        // Every node at once, so each is looked at when the round starts.
        let pending: Vec<String> = nodes
            .iter()
            .filter(|n| !done.contains(n))
            .cloned()
            .collect();
        let looks = futures::future::join_all(
            pending
                .iter()
                .map(|n| async move { (n.clone(), talos.service_etcd(n).await) }),
        )
        .await;
        for (n, result) in looks {
            let state = match &result {
                Ok(s) => format!("{} {}", s.state, s.health),
                Err(_) => "not answering".to_owned(),
            };
            if states
                .insert(n.clone(), state.clone())
                .is_some_and(|was| was != state)
            {
                poller.saw_change();
            }
            let text = match result {
                Ok(s) if ok(&s) => {
                    ctx.reporter.report(Event::WaitFinished {
                        key: format!("etcd {n}"),
                        ok: true,
                        message: format!("etcd on {n} is {what}"),
                        elapsed_ms: ui::ms(started.elapsed()),
                    });
                    // The others started at the same time: they are due now too.
                    poller.saw_change();
                    done.push(n);
                    continue;
                }
                Ok(s) => format!("{} ({})", s.state, s.last_event().unwrap_or("-")),
                Err(e) => format!("not answering: {}", e.stderr().lines().next().unwrap_or("")),
            };
            if last.get(&n) != Some(&text) {
                ctx.reporter.report(Event::WaitProgress {
                    key: format!("etcd {n}"),
                    message: format!("etcd on {n}: {text}"),
                    elapsed_ms: ui::ms(started.elapsed()),
                });
            }
            last.insert(n, text);
        }
        if done.len() == nodes.len() {
            return Ok(());
        }
        if !poller.wait().await {
            break;
        }
    }
    let stuck: Vec<String> = nodes
        .iter()
        .filter(|n| !done.contains(n))
        .map(|n| format!("{n}: {}", last.get(n).map_or("unknown", String::as_str)))
        .collect();
    for n in nodes.iter().filter(|n| !done.contains(n)) {
        ctx.reporter.report(Event::WaitFinished {
            key: format!("etcd {n}"),
            ok: false,
            message: format!("etcd on {n} is not {what}"),
            elapsed_ms: ui::ms(started.elapsed()),
        });
    }
    Err(UserError::failed(format!(
        "etcd did not reach {what} within {}s on:\n  {}",
        budget.as_secs(),
        stuck.join("\n  ")
    ))
    .hint("check the node console or `talosctl -n NODE dmesg`; then `talos-dr resume` continues from here")
    .into())
}

async fn bootstrap_once(
    ctx: &StageCtx<'_>,
    node: &str,
    file: &Path,
    skip_hash: bool,
) -> anyhow::Result<()> {
    let talos = ctx.talos();
    let started = Instant::now();
    loop {
        // The intent goes to disk before the call: from here on, a resume never bootstraps again.
        let intent = BootstrapIntent {
            node: node.to_owned(),
            issued_at: Timestamp::now(),
            file: file.to_path_buf(),
            skip_hash_check: skip_hash,
            returned_at: None,
            stdout: None,
            refused: false,
            error: None,
        };
        ctx.update(|r: &mut EtcdRecoverRecord| r.bootstrap = Some(intent))?;
        ctx.reporter.info(&format!(
            "bootstrapping etcd on {node} from {}",
            file.display()
        ));
        match talos
            .bootstrap_recover(node, file, skip_hash, BOOTSTRAP_TIMEOUT)
            .await
        {
            Ok(stdout) => {
                ctx.update(|r: &mut EtcdRecoverRecord| {
                    if let Some(b) = &mut r.bootstrap {
                        b.returned_at = Some(Timestamp::now());
                        b.stdout = Some(stdout.trim().to_owned());
                    }
                })?;
                return Ok(());
            }
            Err(e) => {
                let text = e.stderr().to_owned();
                let refusal = classify_bootstrap_error(&text);
                if refusal != Refusal::Maybe {
                    ctx.update(|r: &mut EtcdRecoverRecord| {
                        if let Some(b) = &mut r.bootstrap {
                            b.refused = true;
                            b.error = Some(text.clone());
                        }
                    })?;
                }
                if refusal == Refusal::NotYet && started.elapsed() < NOT_YET_BUDGET {
                    ctx.reporter.report(Event::Retry {
                        what: format!("bootstrap on {node}"),
                        error: crate::talos::first_error_line(&text).to_owned(),
                        delay_ms: ui::ms(NOT_YET_DELAY),
                    });
                    tokio::time::sleep(NOT_YET_DELAY).await;
                    continue;
                }
                let advice = match refusal {
                    Refusal::NotYet => "the node kept refusing for a minute (not ready yet); check `talosctl -n NODE service etcd` and `talosctl -n NODE dmesg`, then `talos-dr resume`".to_owned(),
                    Refusal::Final(why) => format!("{why}; nothing was bootstrapped, and `talos-dr resume` may try again"),
                    Refusal::Maybe => "it is unknown whether the node started the restore, so talos-dr will not bootstrap again; check `talosctl -n NODE service etcd`, then `talos-dr resume` (it only waits and checks)".to_owned(),
                };
                return Err(UserError::failed(format!(
                    "bootstrap on {node} failed: {}",
                    e.message()
                ))
                .hint(advice.replace("NODE", node))
                .into());
            }
        }
    }
}

/// What a failed `bootstrap --recover-from` proves (talos.md §3.1, §13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `FailedPrecondition`: not ready yet (upload before Preparing, CRI not up, clock not in
    /// sync, a reboot pending). Nothing happened; try again shortly.
    NotYet,
    /// Refused before anything happened, for a reason waiting will not fix.
    Final(&'static str),
    /// Unknown: the restore may have started. Never bootstrap again.
    Maybe,
}

/// Errors that prove the Bootstrap RPC did not start a restore: talosctl's own checks before
/// any upload, the upload itself, and the server's refusals. Anything else — a panic, an unknown
/// message, a timeout — counts as "maybe it happened".
fn classify_bootstrap_error(stderr: &str) -> Refusal {
    const NOT_YET: [&str; 3] = [
        "etcd service is not ready for recovery yet",
        "bootstrap is not available yet",
        "time is not in sync yet",
    ];
    const BEFORE_UPLOAD: [&str; 7] = [
        "stat ",
        "error opening snapshot file",
        "error uploading snapshot",
        "integrity check failed",
        "invalid database",
        "is not supported with multiple nodes",
        "requires exactly one node",
    ];
    let first = crate::talos::first_error_line(stderr);
    if NOT_YET.iter().any(|m| first.contains(m)) && first.contains("code = FailedPrecondition") {
        return Refusal::NotYet;
    }
    if first.contains("code = AlreadyExists") {
        return Refusal::Final(
            "the node still has etcd data, so it was not wiped: `talos-dr resume` checks every node's /var/lib/etcd/member and resets the ones that still have it (with ETCD too where etcd has its own partition)",
        );
    }
    if first.contains("code = InvalidArgument") {
        return Refusal::Final(
            "Talos says etcd is not configured on this node, so it cannot be bootstrapped: check that its machine config is a control-plane config (`talosctl -n NODE get machineconfig`)",
        );
    }
    if first.contains("only available on control plane nodes")
        || first.contains("can only be performed on a control plane node")
    {
        return Refusal::Final("the node is not a control-plane node: fix `role` in the profile");
    }
    if first.starts_with("error executing bootstrap") {
        return if first.contains("code = FailedPrecondition") {
            Refusal::Final("the node refused the bootstrap before anything happened")
        } else {
            Refusal::Maybe
        };
    }
    if BEFORE_UPLOAD.iter().any(|m| first.contains(m)) {
        return Refusal::Final("talosctl refused before anything was sent");
    }
    Refusal::Maybe
}

async fn wait_bootstrap_node(
    ctx: &StageCtx<'_>,
    node: &str,
    budget: Duration,
) -> anyhow::Result<()> {
    let talos = ctx.talos();
    let key = format!("etcd {node}");
    ctx.reporter.report(Event::WaitStarted {
        key: key.clone(),
        message: format!("waiting for the restored etcd on {node} to be Running"),
    });
    let started = Instant::now();
    let mut last = String::new();
    let mut state = String::new();
    let mut poller = Poller::new(budget, ctx.inputs.poll_max()).due_within(START_DUE);
    let outcome: Option<Result<(), String>> = loop {
        let look = talos.service_etcd(node).await;
        if let Ok(s) = &look {
            // `Running ?` after `Preparing`: `Running OK` is due (not the events' "12s ago").
            let now = format!("{} {}", s.state, s.health);
            if !state.is_empty() && state != now {
                poller.saw_change();
            }
            state = now;
        }
        match look {
            Ok(s) if s.is_running_ok() => break Some(Ok(())),
            Ok(s) if s.state == "Failed" => {
                break Some(Err(s.last_event().unwrap_or("no event").to_owned()));
            }
            Ok(s) => {
                let text = format!(
                    "{} {} ({})",
                    s.state,
                    s.health,
                    s.last_event().unwrap_or("-")
                );
                if last != text {
                    ctx.reporter.report(Event::WaitProgress {
                        key: format!("etcd {node}"),
                        message: format!("etcd on {node}: {text}"),
                        elapsed_ms: ui::ms(started.elapsed()),
                    });
                    last = text;
                }
            }
            Err(_) => {}
        }
        if !poller.wait().await {
            break None;
        }
    };
    let (ok, message) = match &outcome {
        Some(Ok(())) => (true, format!("etcd on {node} is Running and healthy")),
        Some(Err(_)) => (false, format!("etcd on {node} failed")),
        None => (false, format!("etcd on {node} is not Running yet")),
    };
    ctx.reporter.report(Event::WaitFinished {
        key,
        ok,
        message,
        elapsed_ms: ui::ms(started.elapsed()),
    });
    match outcome {
        Some(Ok(())) => Ok(()),
        Some(Err(event)) => Err(UserError::failed(format!(
            "etcd on {node} failed after bootstrap: {event}"
        ))
        .hint(failure_hint(node, &event))
        .into()),
        None => Err(UserError::failed(format!(
            "etcd on {node} is still {last} {}s after bootstrap was issued; talos-dr never bootstraps twice (that would split the cluster)",
            budget.as_secs()
        ))
        .hint(format!("check `talosctl -n {node} service etcd`; `talos-dr resume` waits again. If it still shows Preparing with no bootstrap in its events, the bootstrap never reached it: start a new `talos-dr restore` (nodes already Preparing are not reset again)"))
        .into()),
    }
}

/// What to do after the restored etcd failed, from the node's last event.
fn failure_hint(node: &str, event: &str) -> String {
    if event.contains("URL scheme must be http, https, unix, or unixs") {
        // siderolabs/talos#11257: the recovery builds etcd URLs from the node's addresses and
        // fails on nodes with several (IPv4 + IPv6) addresses.
        return format!(
            "this is a known Talos bug, not a damaged snapshot: on v1.9, recovery fails on dual-stack nodes (siderolabs/talos#11257; fixed in Talos 1.10.5 and 1.11.0 — check the release notes). Upgrade the control-plane nodes' Talos, then start a new `talos-dr restore` (the snapshot is fine); see `talosctl -n {node} dmesg`"
        );
    }
    format!(
        "see `talosctl -n {node} dmesg`; a hash error means the snapshot file is damaged — pick another and start a new restore"
    )
}

async fn wait_members(
    ctx: &StageCtx<'_>,
    node: &str,
    expected: usize,
    budget: Duration,
) -> anyhow::Result<Vec<EtcdMember>> {
    let talos = ctx.talos();
    let mut seen = 0;
    let mut poller = Poller::new(budget, ctx.inputs.poll_max()).due_within(START_DUE);
    let found = loop {
        if let Ok(m) = talos.etcd_members(node).await {
            let voting = m.iter().filter(|x| !x.learner).count();
            if voting >= expected {
                break Some(m);
            }
            if voting != seen {
                // A learner was promoted: the others are due too.
                poller.saw_change();
            }
            seen = voting;
        }
        if !poller.wait().await {
            break None;
        }
    };
    found.ok_or_else(|| {
        UserError::failed(format!(
            "`etcd members` on {node} lists {seen} of {expected} control-plane members"
        ))
        .hint("the other nodes may still be joining; `talos-dr resume` waits again")
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::{Refusal, classify_bootstrap_error};

    fn refused(stderr: &str) -> bool {
        classify_bootstrap_error(stderr) != Refusal::Maybe
    }

    #[test]
    fn only_proven_refusals_allow_another_bootstrap() {
        assert!(refused(
            "error executing bootstrap: rpc error: code = FailedPrecondition desc = bootstrap is not available yet"
        ));
        assert!(refused(
            "error executing bootstrap: rpc error: code = AlreadyExists desc = etcd data directory is not empty"
        ));
        assert!(refused("stat ./db.snapshot: no such file or directory"));
        assert!(!refused(
            "error executing bootstrap: rpc error: code = Unavailable desc = connection reset"
        ));
        assert!(!refused(
            "error executing bootstrap: rpc error: code = DeadlineExceeded desc = context deadline exceeded"
        ));
        assert!(!refused(""));
        assert!(!refused("panic: runtime error: invalid memory address"));
        assert!(refused(
            "WARNING: 10.0.0.1: server version 1.9.4 is older than client version 1.9.5\nerror executing bootstrap: rpc error: code = FailedPrecondition desc = time is not in sync yet"
        ));
    }

    #[test]
    fn refusals_are_retried_only_when_not_ready_yet() {
        use super::Refusal::*;
        let c = classify_bootstrap_error;
        for not_yet in [
            "error uploading snapshot: rpc error: code = FailedPrecondition desc = etcd service is not ready for recovery yet",
            "error executing bootstrap: rpc error: code = FailedPrecondition desc = bootstrap is not available yet",
            "error from node 10.5.0.11: error executing bootstrap: rpc error: code = FailedPrecondition desc = time is not in sync yet",
        ] {
            assert_eq!(c(not_yet), NotYet, "{not_yet}");
        }
        let data = c(
            "error executing bootstrap: rpc error: code = AlreadyExists desc = etcd data directory is not empty",
        );
        assert!(
            matches!(data, Final(why) if why.contains("still has etcd data")),
            "{data:?}"
        );
        let unconfigured = c(
            "error from node 10.5.0.11: error executing bootstrap: rpc error: code = InvalidArgument desc = etcd is not configured, bootstrap is not possible",
        );
        assert!(matches!(unconfigured, Final(why) if why.contains("not configured")));
        assert!(matches!(
            c("command \"bootstrap\" requires exactly one node (got 2)"),
            Final(_)
        ));
        assert_eq!(
            c("error executing bootstrap: rpc error: code = Unavailable desc = connection reset"),
            Maybe
        );
    }

    #[test]
    fn the_dual_stack_bug_is_named_instead_of_blaming_the_snapshot() {
        let h = super::failure_hint(
            "10.5.0.11",
            "Failed to run pre stage: error recovering from the snapshot: URL scheme must be http, https, unix, or unixs",
        );
        assert!(
            h.contains("dual-stack") && h.contains("1.10.5") && h.contains("snapshot is fine"),
            "{h}"
        );
        let other = super::failure_hint("10.5.0.11", "snapshot hash mismatch");
        assert!(other.contains("damaged"), "{other}");
    }
}
