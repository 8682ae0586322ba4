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
/// Refusals that come back before the Bootstrap RPC did anything: safe to try again later.
const NOT_YET: [&str; 2] = ["bootstrap is not available yet", "time is not in sync yet"];

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
        let cp = profile.control_plane_addresses();
        let first = cp.first().cloned().unwrap_or_default();
        let snap = plan
            .inputs
            .snapshot
            .as_ref()
            .map_or_else(|| "<snapshot>".to_owned(), |p| p.display().to_string());
        let mut v = vec![format!("typed confirmation ({:?})", profile.name())];
        for n in &cp {
            v.push(
                talos.render(Some(n), &crate::talos::RESET_ARGS)
                    + "   (unless etcd is already Preparing)",
            );
        }
        v.push(
            "wait until `service etcd` shows STATE Preparing on every control-plane node".into(),
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
    fn min_confirm(&self) -> Confirm {
        Confirm::Typed
    }
    fn typed_warning(&self, profile: &Profile, _inputs: &Inputs, stage: &str) -> String {
        format!(
            "Stage {stage} is destructive: it wipes etcd on every control-plane node of cluster {:?} and restores it from the snapshot.",
            profile.name()
        )
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    let cp = ctx.profile().control_plane_addresses();
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
        wait_all(ctx, &cp, wait_budget, "Preparing", |s| s.is_preparing()).await?;
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
        wait_budget,
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
        resets.insert(
            node.clone(),
            ResetRecord {
                issued_at: Some(Timestamp::now()),
                etcd_was: Some(status.state),
                ..ResetRecord::default()
            },
        );
        to_reset.push(node.clone());
    }
    // Every intent is on disk before the first reset goes out.
    save_resets(ctx, &resets)?;
    // In parallel: each reset waits for its node's reboot, which takes minutes.
    let started = Instant::now();
    let calls = to_reset.iter().map(|node| async move {
        ctx.reporter.report(Event::WaitStarted {
            key: format!("reset {node}"),
            message: format!("resetting EPHEMERAL on {node} and waiting for its reboot"),
        });
        let r = talos.reset_ephemeral(node, RESET_TIMEOUT).await;
        ctx.reporter.report(Event::WaitFinished {
            key: format!("reset {node}"),
            ok: r.is_ok(),
            message: format!("reset {node}"),
            elapsed_ms: ui::ms(started.elapsed()),
        });
        (node.clone(), r)
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
                failures.push(format!("{node}: {e}"));
            }
        }
    }
    save_resets(ctx, &resets)?;
    if !failures.is_empty() {
        return Err(
            UserError::failed(format!("reset failed on:\n  {}", failures.join("\n  ")))
                .hint("fix the node and `talos-dr resume`: it resets the nodes whose reset failed, and does not reset again the ones already on their way")
                .into(),
        );
    }
    Ok(())
}

fn save_resets(ctx: &StageCtx<'_>, resets: &BTreeMap<String, ResetRecord>) -> anyhow::Result<()> {
    ctx.update(|r: &mut EtcdRecoverRecord| r.resets = resets.clone())
}

/// Waits until every node in `nodes` satisfies `ok`; the error names the nodes that did not.
async fn wait_all(
    ctx: &StageCtx<'_>,
    nodes: &[String],
    budget: Duration,
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
    let mut done: Vec<String> = Vec::new();
    let mut poller = Poller::new(budget, ctx.inputs.poll_max());
    loop {
        for n in nodes
            .iter()
            .filter(|n| !done.contains(n))
            .cloned()
            .collect::<Vec<_>>()
        {
            let text = match talos.service_etcd(&n).await {
                Ok(s) if ok(&s) => {
                    ctx.reporter.report(Event::WaitFinished {
                        key: format!("etcd {n}"),
                        ok: true,
                        message: format!("etcd on {n} is {what}"),
                        elapsed_ms: ui::ms(started.elapsed()),
                    });
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
    let mut refusals = 0u32;
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
                let definitive = is_refusal_before_bootstrap(&text);
                if definitive {
                    ctx.update(|r: &mut EtcdRecoverRecord| {
                        if let Some(b) = &mut r.bootstrap {
                            b.refused = true;
                            b.error = Some(text.clone());
                        }
                    })?;
                }
                if definitive && NOT_YET.iter().any(|m| text.contains(m)) && refusals < 6 {
                    refusals += 1;
                    ctx.reporter.report(Event::Retry {
                        what: format!("bootstrap on {node}"),
                        error: text.lines().next().unwrap_or_default().to_owned(),
                        delay_ms: 5_000,
                    });
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
                let advice = if definitive {
                    "the node refused before anything happened; fix the cause and `talos-dr resume`"
                } else {
                    "it is unknown whether the node started the restore, so talos-dr will not bootstrap again; check `talosctl -n NODE service etcd`, then `talos-dr resume` (it only waits and checks)"
                };
                return Err(
                    UserError::failed(format!("bootstrap on {node} failed: {e}"))
                        .hint(advice.replace("NODE", node))
                        .into(),
                );
            }
        }
    }
}

/// Errors that prove the Bootstrap RPC did not start a restore: talosctl's own checks before
/// any upload, the upload itself, and the server's precondition refusals (talos.md §3.1). Anything
/// else — a panic, an unknown message, a timeout — counts as "maybe it happened".
fn is_refusal_before_bootstrap(stderr: &str) -> bool {
    const BEFORE_BOOTSTRAP: [&str; 7] = [
        "stat ",
        "error opening snapshot file",
        "error uploading snapshot",
        "integrity check failed",
        "invalid database",
        "is not supported with multiple nodes",
        "etcd service is not ready for recovery yet",
    ];
    let first = stderr
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with("WARNING:"))
        .unwrap_or_default();
    if first.starts_with("error executing bootstrap") {
        return first.contains("code = FailedPrecondition")
            || first.contains("code = AlreadyExists");
    }
    BEFORE_BOOTSTRAP.iter().any(|m| first.contains(m))
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
    let mut poller = Poller::new(budget, ctx.inputs.poll_max());
    let outcome: Option<Result<(), String>> = loop {
        match talos.service_etcd(node).await {
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
        .hint(format!("see `talosctl -n {node} dmesg`; a hash error means the snapshot file is damaged — pick another and start a new restore"))
        .into()),
        None => Err(UserError::failed(format!(
            "etcd on {node} is still {last} {}s after bootstrap was issued; talos-dr never bootstraps twice (that would split the cluster)",
            budget.as_secs()
        ))
        .hint(format!("check `talosctl -n {node} service etcd`; `talos-dr resume` waits again. If it still shows Preparing with no bootstrap in its events, the bootstrap never reached it: start a new `talos-dr restore` (nodes already Preparing are not reset again)"))
        .into()),
    }
}

async fn wait_members(
    ctx: &StageCtx<'_>,
    node: &str,
    expected: usize,
    budget: Duration,
) -> anyhow::Result<Vec<EtcdMember>> {
    let talos = ctx.talos();
    let mut seen = 0;
    let mut poller = Poller::new(budget, ctx.inputs.poll_max());
    let found = loop {
        if let Ok(m) = talos.etcd_members(node).await {
            seen = m.iter().filter(|x| !x.learner).count();
            if seen >= expected {
                break Some(m);
            }
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
    use super::is_refusal_before_bootstrap as refused;

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
}
