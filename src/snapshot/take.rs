//! Taking a scheduled etcd snapshot: health gate, node choice, stream, verify, atomic store.
//!
//! Nothing reaches the backup directory under a snapshot name unless it verified: talosctl
//! streams into a hidden temp name (which no listing or pruning ever matches), the file is
//! verified, and only then renamed into place.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::follow::{StreamEnd, Tee, part_path};
use super::store::{self, Sidecar};
use super::verify::Trailer;
use crate::error::UserError;
use crate::profile::Profile;
use crate::talos::Talosctl;
use crate::ui::{self, Event, Reporter};

#[derive(Debug, Clone)]
pub struct TakeOptions {
    /// Stream from this node instead of the first control-plane node that answers.
    pub node: Option<String>,
    /// Store here instead of `<backup dir>/etcd-<time>.snapshot`.
    pub output: Option<PathBuf>,
    pub skip_health: bool,
    pub health_timeout: Duration,
    pub snapshot_timeout: Duration,
}

impl Default for TakeOptions {
    fn default() -> Self {
        Self {
            node: None,
            output: None,
            skip_health: false,
            health_timeout: Duration::from_secs(120),
            snapshot_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// A stored, verified snapshot.
#[derive(Debug, Clone)]
pub struct Taken {
    pub path: PathBuf,
    pub sidecar: Sidecar,
    /// Verified by following the stream (every byte a tee got was verified); `false` when the
    /// finished file had to be read again.
    pub followed: bool,
}

/// Called once when the stream starts, with the time the snapshot is taken at and its file
/// name; returns the [`Tee`] that gets every byte while it streams.
pub type TeeStart<'a> = Box<dyn FnOnce(Timestamp, &str) -> Tee + Send + 'a>;

/// Picks the node to stream from: `--node`, or the first control-plane node that answers.
/// Returns the node and its Talos version.
pub async fn pick_node(
    profile: &Profile,
    talos: &Talosctl,
    wanted: Option<&str>,
    reporter: &dyn Reporter,
) -> anyhow::Result<(String, Option<String>)> {
    if let Some(node) = wanted {
        if !profile.control_plane().any(|n| n.address == node) {
            reporter.warn(&format!(
                "node {node} is not a control-plane node of profile {}; trying it anyway",
                profile.name()
            ));
        }
        let version = talos.server_version(node).await.map_err(|e| {
            UserError::precondition(format!("control-plane node {node} does not answer: {e}"))
        })?;
        return Ok((node.to_owned(), Some(version)));
    }
    let mut failures = Vec::new();
    for node in profile.control_plane() {
        match talos.server_version(&node.address).await {
            Ok(v) => return Ok((node.address.clone(), Some(v))),
            Err(e) => {
                reporter.warn(&format!("node {} does not answer: {e}", node.address));
                failures.push(format!("{}: {e}", node.address));
            }
        }
    }
    Err(UserError::precondition(format!(
        "no control-plane node answers:\n  {}",
        failures.join("\n  ")
    ))
    .hint("check the network path to the nodes and the endpoints in the talosconfig")
    .into())
}

/// [`pick_node`], and when no node answers through the talosconfig's endpoints (a VIP or load
/// balancer that is down), the same with every call sent to the node itself (`-e NODE -n NODE`).
/// Returns the talosctl to use for the rest of the job.
pub async fn pick_node_or_direct(
    profile: &Profile,
    talos: &Talosctl,
    wanted: Option<&str>,
    reporter: &dyn Reporter,
) -> anyhow::Result<(String, Option<String>, Talosctl)> {
    let quiet = crate::ui::NoopReporter;
    let first = if talos.direct {
        pick_node(profile, talos, wanted, reporter).await
    } else {
        pick_node(profile, talos, wanted, &quiet).await
    };
    match first {
        Ok((node, version)) => Ok((node, version, talos.clone())),
        Err(_) if !talos.direct => {
            let direct = talos.clone().direct();
            let (node, version) = pick_node(profile, &direct, wanted, reporter).await?;
            reporter.warn(&format!(
                "the talosconfig's endpoints do not answer, but node {node} does: talking to the nodes directly (-e NODE -n NODE)"
            ));
            Ok((node, version, direct))
        }
        Err(e) => Err(e),
    }
}

/// Picks the node (see [`pick_node_or_direct`]) and runs the health gate from it. The health
/// check from the node most likely picked (`--node`, or the first control-plane node) runs at
/// the same time as the version probe that picks it, so the common case waits for the slower
/// of the two calls instead of both; when another node (or direct mode) is picked, that result
/// is dropped and the check runs again from the picked node, as it always did.
async fn healthy_node(
    profile: &Profile,
    talos: &Talosctl,
    opts: &TakeOptions,
    reporter: &dyn Reporter,
) -> anyhow::Result<(String, Option<String>, Talosctl)> {
    let likely = match opts.node.as_deref() {
        Some(n) => Some(n.to_owned()),
        None => profile.control_plane().next().map(|n| n.address.clone()),
    };
    let early = async {
        match &likely {
            Some(node) => {
                let t = Instant::now();
                Some((health(profile, talos, node, opts).await, t.elapsed()))
            }
            None => None,
        }
    };
    let (picked, early) = tokio::join!(
        pick_node_or_direct(profile, talos, opts.node.as_deref(), reporter),
        early
    );
    let (node, version, picked_talos) = picked?;
    let result = match early {
        Some((result, elapsed))
            if likely.as_deref() == Some(node.as_str()) && picked_talos.direct == talos.direct =>
        {
            report_health(&node, &result, elapsed, reporter);
            result
        }
        _ => {
            let t = Instant::now();
            let result = health(profile, &picked_talos, &node, opts).await;
            report_health(&node, &result, t.elapsed(), reporter);
            result
        }
    };
    result.map_err(|e| unhealthy(&e))?;
    Ok((node, version, picked_talos))
}

async fn health(
    profile: &Profile,
    talos: &Talosctl,
    node: &str,
    opts: &TakeOptions,
) -> Result<(), crate::talos::TalosError> {
    talos
        .health(
            node,
            &profile.control_plane_addresses(),
            &profile.worker_addresses(),
            opts.health_timeout,
        )
        .await
}

/// The health check's events, sent once the check is known to count.
fn report_health(
    node: &str,
    result: &Result<(), crate::talos::TalosError>,
    elapsed: Duration,
    reporter: &dyn Reporter,
) {
    reporter.report(Event::WaitStarted {
        key: "health".into(),
        message: format!("checking cluster health from {node}"),
    });
    reporter.report(Event::WaitFinished {
        key: "health".into(),
        ok: result.is_ok(),
        message: if result.is_ok() {
            "cluster is healthy".into()
        } else {
            "cluster is not healthy".into()
        },
        elapsed_ms: ui::ms(elapsed),
    });
}

fn unhealthy(e: &crate::talos::TalosError) -> anyhow::Error {
    UserError::precondition(format!(
        "the cluster is not healthy, so no snapshot was taken:\n{}",
        indent(e.stderr().trim(), "  ")
    ))
    .hint("fix the cluster first, or pass --skip-health to take a snapshot anyway")
    .into()
}

/// The whole job: health gate, stream, verify, store. Errors carry the exit code.
pub async fn take(
    profile: &Profile,
    talos: &Talosctl,
    opts: &TakeOptions,
    reporter: &dyn Reporter,
) -> anyhow::Result<Taken> {
    take_teed(profile, talos, opts, None, reporter).await
}

/// [`take`], with `tee` getting the snapshot's bytes while they stream (see
/// [`follow`](super::follow)). What the tee got is only worth something when the result is
/// `Ok` with [`Taken::followed`].
pub async fn take_teed(
    profile: &Profile,
    talos: &Talosctl,
    opts: &TakeOptions,
    tee: Option<TeeStart<'_>>,
    reporter: &dyn Reporter,
) -> anyhow::Result<Taken> {
    let started = Instant::now();
    let (node, talos_version, talos) = if opts.skip_health {
        pick_node_or_direct(profile, talos, opts.node.as_deref(), reporter).await?
    } else {
        healthy_node(profile, talos, opts, reporter).await?
    };
    let talos = &talos;

    let taken_at = Timestamp::now();
    let (final_path, dir) = match &opts.output {
        Some(p) => (
            p.clone(),
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        ),
        None => {
            let dir = profile.backup_dir();
            (dir.join(store::file_name(taken_at)), dir)
        }
    };
    crate::fsutil::create_private_dir(&dir).map_err(|e| {
        UserError::failed(format!(
            "cannot create the backup directory {}: {e}",
            dir.display()
        ))
    })?;
    if final_path.exists() {
        return Err(UserError::failed(format!(
            "{} already exists; refusing to overwrite a snapshot",
            final_path.display()
        ))
        .into());
    }
    let file_name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Hidden, and never matching the snapshot naming pattern.
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(vec![tmp.clone(), part_path(&tmp)]);

    reporter.report(Event::WaitStarted {
        key: node.clone(),
        message: format!("streaming etcd snapshot from {node}"),
    });
    let t = Instant::now();
    // Verified while talosctl streams it, so only the tail is left when talosctl exits.
    let end = Arc::new(StreamEnd::default());
    let _end_on_drop = FinishOnDrop(end.clone());
    let tee = tee.map(|start| start(taken_at, &file_name));
    let follower = {
        let (tmp, end) = (tmp.clone(), end.clone());
        tokio::task::spawn_blocking(move || crate::snapshot::xray::follow(&tmp, &end, tee))
    };
    let streamed = talos
        .etcd_snapshot(&node, &tmp, opts.snapshot_timeout)
        .await;
    end.finish();
    let exited = Instant::now();
    let followed = follower.await;
    tracing::debug!(
        node = %node,
        verified_while_streaming = matches!(followed, Ok(Ok(Some(_)))),
        tail_ms = exited.elapsed().as_millis() as u64,
        "snapshot stream followed"
    );
    reporter.report(Event::WaitFinished {
        key: node.clone(),
        ok: streamed.is_ok(),
        message: match &streamed {
            Ok(s) => format!("received {} bytes", s.bytes),
            Err(_) => "snapshot stream failed".into(),
        },
        elapsed_ms: ui::ms(t.elapsed()),
    });
    if let Err(e) = streamed {
        let detail = if e.stderr().is_empty() {
            e.to_string()
        } else {
            e.stderr().to_owned()
        };
        return Err(UserError::failed(format!(
            "talosctl etcd snapshot failed on node {node}; nothing was stored:\n{}",
            indent(&detail, "  ")
        ))
        .hint("retry, or pick another control-plane node with --node")
        .into());
    }

    // Verified and read in one pass, so the sidecar can say what the snapshot holds. When the
    // stream did not end as its meta pages said (or following it failed), the finished file is
    // read as a whole: the verdict and its words are then exactly those of `verify`.
    let followed_ok = matches!(followed, Ok(Ok(Some(_))));
    let (report, contents) = match followed {
        Ok(Ok(Some(done))) => done,
        _ => crate::snapshot::xray::read(&tmp)
            .map_err(|e| UserError::failed(format!("cannot read the new snapshot: {e}")))?,
    };
    if report.size == 0 {
        return Err(UserError::failed(format!(
            "talosctl produced an empty file from node {node}; it was removed and nothing was stored"
        ))
        .into());
    }
    if !report.valid || report.trailer != Trailer::Ok {
        let mut problems = report.problems.clone();
        if report.trailer == Trailer::Missing {
            problems.push("the sha256 trailer is missing".into());
        }
        return Err(UserError::failed(format!(
            "the snapshot streamed from node {node} failed verification; it was removed and nothing was stored:\n{}",
            indent(&problems.join("\n"), "  ")
        ))
        .hint("retry; if it keeps failing, check etcd on that node (`talosctl -n NODE etcd status`)")
        .into());
    }

    let mut sidecar = Sidecar::from_report(&report, taken_at, &file_name);
    sidecar.node = Some(node.clone());
    sidecar.talos_version = talos_version;
    sidecar.duration_ms = Some(ui::ms(started.elapsed()));
    sidecar.objects = contents.map(|c| c.totals());

    set_mode(&tmp, 0o600)?;
    crate::fsutil::rename_durable(&tmp, &final_path).map_err(|e| {
        UserError::failed(format!(
            "cannot move the snapshot into place at {}: {e}",
            final_path.display()
        ))
    })?;
    store::write_sidecar(&final_path, &sidecar).map_err(|e| {
        UserError::failed(format!(
            "snapshot stored at {} but its metadata could not be written: {e}",
            final_path.display()
        ))
    })?;
    Ok(Taken {
        path: final_path,
        sidecar,
        followed: followed_ok,
    })
}

fn set_mode(p: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| UserError::failed(format!("cannot set mode on {}: {e}", p.display())).into())
}

pub(crate) fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Tells the follower the stream is over however `take` exits, so its thread ends too.
struct FinishOnDrop(Arc<StreamEnd>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// Removes leftover temp files however the function exits (error, panic or cancellation).
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
