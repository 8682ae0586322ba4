//! The backup as one call: take a verified etcd snapshot, store it (packed as the profile says),
//! copy it off-site, remove the plain copy, then apply retention locally and off-site.
//!
//! `snapshot` (the scheduled backup) and the pre-upgrade `set-etcd-snapshot` stage both run
//! [`run`]; they choose where the snapshot goes and how much of the rest happens through
//! [`BackupOptions`], and only render the [`BackupOutcome`]. Progress goes to the reporter.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::UserError;
use crate::machine_config;
use crate::offsite::{self, OffsiteError, RemotePrune, StreamTee, Streamed, Target, Uploaded};
use crate::pack::{self, Layer, Packing};
use crate::profile::Profile;
use crate::snapshot::follow::{Tee, fan_out};
use crate::snapshot::prune::{self, PruneOutcome};
use crate::snapshot::retention::KeepPolicy;
use crate::snapshot::store::{self, Packed, Sidecar};
use crate::snapshot::take::{self, TakeOptions, TeeStart};
use crate::talos::Talosctl;
use crate::ui::Reporter;

/// Where the snapshot is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `<backup dir>/etcd-<time>.snapshot`, compressed and encrypted as `[backup]` says.
    Scheduled,
    /// This path, plain (`snapshot --output-file`, a set's `sets/<label>.snapshot`).
    File(PathBuf),
    /// Already stored at this path with its sidecar, verified: nothing is taken (a resumed run
    /// that stored it before it was interrupted).
    Stored(PathBuf),
}

/// Whether and how the snapshot is copied to the profile's `[offsite]` target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsitePolicy {
    /// No off-site copy.
    Skip,
    /// Copy it when the profile has `[offsite]`. A target that cannot be set up is a
    /// configuration error, raised before a snapshot is taken; a failed upload is a problem of
    /// the outcome and stops retention (the scheduled backup).
    Copy,
    /// Copy it when the profile has `[offsite]`; whatever fails is only recorded in the outcome
    /// (before an upgrade, the VM snapshots matter more than the copy).
    BestEffort,
}

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub destination: Destination,
    /// Stream from this node instead of the first control-plane node that answers.
    pub node: Option<String>,
    pub skip_health: bool,
    pub health_timeout: Duration,
    pub offsite: OffsitePolicy,
    /// Apply the profile's retention to the backup directory (and, after a good copy, to the
    /// off-site target).
    pub prune: bool,
}

impl Default for BackupOptions {
    fn default() -> Self {
        Self {
            destination: Destination::Scheduled,
            node: None,
            skip_health: false,
            health_timeout: TakeOptions::default().health_timeout,
            offsite: OffsitePolicy::Copy,
            prune: true,
        }
    }
}

/// What happened to the off-site copy.
#[derive(Debug)]
pub enum OffsiteOutcome {
    Uploaded(Box<Uploaded>),
    /// The target could not be set up (only with [`OffsitePolicy::BestEffort`]).
    Unavailable(OffsiteError),
    /// The upload failed after its retries.
    Failed(OffsiteError),
}

/// Why a backup that stored its snapshot still ends non-zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// There is no off-site copy; the snapshot is stored locally.
    Offsite { error: String },
    /// Retention could not delete this many snapshots (locally and off-site together); the
    /// prune outcomes list them.
    Retention { failed: usize },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Offsite { error } => write!(f, "the off-site copy failed: {error}"),
            Problem::Retention { failed } => {
                write!(f, "retention could not delete {failed} snapshot(s)")
            }
        }
    }
}

#[derive(Debug)]
pub struct BackupOutcome {
    /// The file as stored (the packed one when packing).
    pub path: PathBuf,
    /// The verified plain snapshot's metadata; `file` is the snapshot's scheduled (unpacked) name.
    pub sidecar: Sidecar,
    /// Bytes of the stored file.
    pub stored_size: u64,
    /// Layers of the stored file, innermost first; empty when stored plain.
    pub layers: Vec<Layer>,
    /// The stored file was packed while the snapshot streamed, not from the plain file.
    pub packed_during_stream: bool,
    /// `None` when no copy was asked for or the profile has no `[offsite]`.
    pub offsite: Option<OffsiteOutcome>,
    /// Local retention, when it ran.
    pub pruned: Option<PruneOutcome>,
    /// Off-site retention, when it ran (after a good copy only).
    pub remote_pruned: Option<RemotePrune>,
    /// Machine-config files retention removed locally (no snapshot referred to them any more).
    pub configs_removed: usize,
}

impl BackupOutcome {
    pub fn uploaded(&self) -> Option<&Uploaded> {
        match &self.offsite {
            Some(OffsiteOutcome::Uploaded(u)) => Some(u.as_ref()),
            _ => None,
        }
    }

    /// What makes the run end non-zero although the snapshot is stored.
    pub fn problems(&self) -> Vec<Problem> {
        let mut v = Vec::new();
        if let Some(OffsiteOutcome::Unavailable(e) | OffsiteOutcome::Failed(e)) = &self.offsite {
            v.push(Problem::Offsite {
                error: e.to_string(),
            });
        }
        let failed = self.pruned.as_ref().map_or(0, |p| p.errors.len())
            + self.remote_pruned.as_ref().map_or(0, |p| p.errors.len());
        if failed > 0 {
            v.push(Problem::Retention { failed });
        }
        v
    }
}

/// Takes (or reuses), stores, copies off-site and prunes, as `opts` says. Errors carry the exit
/// code ([`UserError`]); an off-site failure or a snapshot retention could not delete is not
/// an error but a [`Problem`] of the outcome, since the snapshot itself is safely stored.
pub async fn run(
    profile: &Profile,
    talos: &Talosctl,
    opts: &BackupOptions,
    reporter: &dyn Reporter,
) -> anyhow::Result<BackupOutcome> {
    let backup = &profile.file.backup;
    // Configuration problems surface before a snapshot is taken, not after.
    let (target, unavailable) = match opts.offsite {
        OffsitePolicy::Skip => (None, None),
        policy => match Target::from_profile(profile) {
            Ok(t) => (t, None),
            Err(e) if policy == OffsitePolicy::Copy => {
                return Err(UserError::usage(format!(
                    "[offsite] in profile {}: {e}",
                    profile.name()
                ))
                .into());
            }
            Err(e) => (None, Some(e)),
        },
    };
    let offsite_packing = backup.offsite_packing();
    if opts.offsite == OffsitePolicy::Copy
        && target.is_some()
        && offsite_packing.recipients.is_empty()
    {
        reporter.warn(
            "off-site copies are not encrypted: set backup.recipients to encrypt them with age",
        );
    }
    let local_packing = match opts.destination {
        Destination::Scheduled => backup.local_packing(),
        Destination::File(_) | Destination::Stored(_) => Packing::default(),
    };

    // A copy sent while the snapshot streamed, not completed yet.
    let mut streamed: Option<Streamed> = None;
    // The local copy packed while the snapshot streamed, under a temp name.
    let mut packed_local: Option<pack::PendingPack> = None;
    let (plain, sidecar) = match &opts.destination {
        Destination::Stored(path) => {
            let sidecar = store::read_sidecar(path).ok_or_else(|| {
                UserError::failed(format!(
                    "{}: the snapshot's sidecar is missing",
                    path.display()
                ))
            })?;
            (path.clone(), sidecar)
        }
        Destination::Scheduled | Destination::File(_) => {
            // The machine configs are read while the snapshot streams, and stored only once
            // it is good. The off-site copy is packed and sent from the bytes the follower
            // reads, and completed further down only once the snapshot is verified.
            let (tee, input) = match &target {
                Some(_) => {
                    let (tee, input) = offsite::streamed_copy(&offsite_packing);
                    (Some(tee), Some(input))
                }
                None => (None, None),
            };
            // The packed local copy is written from the same bytes, under a temp name.
            let (local_tee, local_thread) = match &opts.destination {
                Destination::Scheduled if !local_packing.is_plain() => {
                    let dir = profile.backup_dir();
                    remove_stale_plain(&dir);
                    match crate::fsutil::create_private_dir(&dir)
                        .and_then(|()| pack::pack_stream(&dir, &local_packing))
                    {
                        Ok((tee, thread)) => (Some(tee), Some(thread)),
                        Err(e) => {
                            tracing::debug!(error = %e, dir = %dir.display(), "cannot pack while streaming");
                            (None, None)
                        }
                    }
                }
                _ => (None, None),
            };
            let (taken, reads, sent, local) = tokio::join!(
                take_plain(
                    profile,
                    talos,
                    opts,
                    &local_packing,
                    tee,
                    local_tee,
                    reporter
                ),
                machine_config::read_all(profile, talos),
                async {
                    match (&target, input) {
                        (Some(t), Some(i)) => Some(t.send_streamed(i).await),
                        _ => None,
                    }
                },
                async {
                    match local_thread {
                        Some(h) => Some(h.await),
                        None => None,
                    }
                }
            );
            let (plain, mut sidecar, followed) = match taken {
                Ok(t) => t,
                Err(e) => {
                    abort(sent.and_then(Result::ok)).await;
                    return Err(e);
                }
            };
            streamed = match sent {
                Some(Ok(s)) if followed => Some(s),
                Some(Ok(s)) => {
                    tracing::debug!(
                        "the snapshot was read again after its stream: the copy sent during it is dropped"
                    );
                    s.abort().await;
                    None
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "the copy sent during the stream failed");
                    None
                }
                None => None,
            };
            packed_local = match local {
                Some(Ok(Ok(p))) if followed => Some(p),
                Some(Ok(Err(e))) => {
                    tracing::debug!(error = %e, "packing during the stream failed");
                    None
                }
                _ => None,
            };
            let configs = machine_config::store_all(profile, reads);
            for w in &configs.warnings {
                reporter.warn(w);
            }
            if !configs.refs.is_empty() {
                sidecar.machine_configs = configs.refs;
                if let Err(e) = store::write_sidecar(&plain, &sidecar) {
                    abort(streamed).await;
                    return Err(UserError::failed(format!(
                        "cannot record the machine configs in {}: {e}",
                        store::sidecar_path(&plain).display()
                    ))
                    .into());
                }
            }
            (plain, sidecar)
        }
    };
    let mut packed_during_stream = false;
    let (path, stored_size) = if local_packing.is_plain() {
        (plain.clone(), sidecar.size)
    } else {
        let packed = match store_packed(&plain, &sidecar, &local_packing, packed_local).await {
            Ok(p) => p,
            Err(e) => {
                abort(streamed).await;
                return Err(e);
            }
        };
        let (packed, during_stream) = packed;
        packed_during_stream = during_stream;
        let size = std::fs::metadata(&packed).map_or(sidecar.size, |m| m.len());
        (packed, size)
    };

    let offsite = match (&target, unavailable) {
        (_, Some(e)) => Some(OffsiteOutcome::Unavailable(e)),
        (Some(t), None) => Some(
            match copy_offsite(t, streamed, &plain, &sidecar, &offsite_packing, reporter).await {
                Ok(u) => {
                    // The configs go with the snapshot that refers to them; a config that
                    // could not be copied is a warning, the snapshot copy itself is good.
                    if let Err(e) =
                        machine_config::copy_offsite(profile, t, &sidecar.machine_configs).await
                    {
                        reporter.warn(&format!(
                            "the machine configs were not copied off-site: {e}"
                        ));
                    }
                    OffsiteOutcome::Uploaded(Box::new(u))
                }
                Err(e) => OffsiteOutcome::Failed(e),
            },
        ),
        (None, None) => None,
    };
    // The plain file only lived to be packed and uploaded.
    if path != plain {
        store::remove(&plain).map_err(|e| {
            UserError::failed(format!(
                "cannot remove the unencrypted copy {}: {e}",
                plain.display()
            ))
        })?;
    }
    let mut outcome = BackupOutcome {
        path,
        sidecar,
        stored_size,
        layers: local_packing.layers(),
        packed_during_stream,
        offsite,
        pruned: None,
        remote_pruned: None,
        configs_removed: 0,
    };
    // Retention runs only after a good snapshot and, with a target, a good copy; only in the
    // backup directory.
    let copy_failed = matches!(
        outcome.offsite,
        Some(OffsiteOutcome::Unavailable(_) | OffsiteOutcome::Failed(_))
    );
    if !opts.prune || copy_failed {
        return Ok(outcome);
    }
    let policy = KeepPolicy::from_backup(backup);
    let dir = profile.backup_dir();
    outcome.pruned = Some(
        prune::prune(&dir, policy, jiff::Timestamp::now(), false).map_err(|e| {
            UserError::failed(format!("cannot apply retention in {}: {e}", dir.display()))
        })?,
    );
    // Configs live exactly as long as a snapshot refers to them.
    match machine_config::collect_garbage(profile) {
        Ok(removed) => outcome.configs_removed = removed.len(),
        Err(e) => reporter.warn(&format!("cannot remove unreferenced machine configs: {e}")),
    }
    if let Some(t) = &target {
        outcome.remote_pruned = Some(
            t.prune(policy, jiff::Timestamp::now(), false)
                .await
                .map_err(|e| UserError::failed(format!("off-site retention failed: {e}")))?,
        );
        if let Err(e) = machine_config::prune_offsite(t).await {
            reporter.warn(&format!(
                "cannot remove unreferenced off-site machine configs: {e}"
            ));
        }
    }
    Ok(outcome)
}

/// Aborts a copy sent during the stream that will not be completed: an upload left open
/// would keep its parts at the target until a lifecycle rule removes them.
async fn abort(streamed: Option<Streamed>) {
    if let Some(s) = streamed {
        s.abort().await;
    }
}

/// The copy sent while the snapshot streamed, completed once it proves to be exactly the
/// verified snapshot; else (none was sent, or it differs, or completing it failed) the upload
/// from the stored file, with its retries, as if no copy had been sent.
async fn copy_offsite(
    target: &Target,
    streamed: Option<Streamed>,
    plain: &Path,
    sidecar: &Sidecar,
    packing: &Packing,
    reporter: &dyn Reporter,
) -> Result<Uploaded, OffsiteError> {
    if let Some(s) = streamed {
        match target.commit_streamed(s, sidecar, packing, reporter).await {
            Ok(u) => return Ok(u),
            Err(e) => {
                tracing::debug!(error = %e, "the copy sent during the stream was not completed");
            }
        }
    }
    target.upload(plain, sidecar, packing, reporter).await
}

/// Streams and verifies a snapshot into the destination. With local packing the plain snapshot
/// only lives under a hidden name (never listed, never counted by retention) until it is packed
/// and uploaded (the caller removes a crashed run's leftovers first).
async fn take_plain(
    profile: &Profile,
    talos: &Talosctl,
    opts: &BackupOptions,
    local_packing: &Packing,
    offsite_tee: Option<StreamTee>,
    local_tee: Option<Tee>,
    reporter: &dyn Reporter,
) -> anyhow::Result<(PathBuf, Sidecar, bool)> {
    let hidden_plain = if local_packing.is_plain() {
        None
    } else {
        let dir = profile.backup_dir();
        Some(dir.join(format!(
            ".{}.plain",
            store::file_name(jiff::Timestamp::now())
        )))
    };
    let output = match &opts.destination {
        Destination::File(p) => Some(p.clone()),
        _ => hidden_plain.clone(),
    };
    let take_opts = TakeOptions {
        node: opts.node.clone(),
        output,
        skip_health: opts.skip_health,
        health_timeout: opts.health_timeout,
        ..TakeOptions::default()
    };
    let scheduled_name = hidden_plain.is_some();
    // The off-site copy is named as the stored file will be.
    let tee = (offsite_tee.is_some() || local_tee.is_some()).then(|| -> TeeStart<'_> {
        Box::new(move |taken_at, file| {
            let base = if scheduled_name {
                store::file_name(taken_at)
            } else {
                file.to_owned()
            };
            let tees = local_tee
                .into_iter()
                .chain(offsite_tee.map(|t| t.start(&base)))
                .collect();
            fan_out(tees).unwrap_or_else(|| Box::new(std::io::sink()))
        })
    });
    let mut taken = take::take_teed(profile, talos, &take_opts, tee, reporter).await?;
    if scheduled_name {
        // The stored (packed) file carries the scheduled name of the moment it was taken.
        taken.sidecar.file = store::file_name(taken.sidecar.taken_at);
    }
    Ok((taken.path, taken.sidecar, taken.followed))
}

/// Removes hidden plain copies a crashed run left behind (the caller holds the profile lock, so
/// none is in use). They are unencrypted, so they must not linger.
fn remove_stale_plain(dir: &Path) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    for e in read.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Packed temp files too: with `encrypt = false` they hold the snapshot readable.
        let plain = name.starts_with(".etcd-")
            && (name.ends_with(".plain") || name.ends_with(".plain.json"));
        if plain || name.starts_with(".tmp-pack-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Puts the packed snapshot beside the plain one and writes its sidecar: the file packed while
/// the snapshot streamed when it packed exactly the verified bytes, else one packed from the
/// plain file. Returns its path and whether it was packed while streaming.
async fn store_packed(
    plain: &Path,
    sidecar: &Sidecar,
    packing: &Packing,
    during_stream: Option<pack::PendingPack>,
) -> anyhow::Result<(PathBuf, bool)> {
    let name = packing.file_name(&sidecar.file);
    let dst = plain.with_file_name(&name);
    let verified = (sidecar.size, sidecar.sha256.clone());
    let pending = during_stream.filter(|p| p.plain == verified);
    let (src, to, p) = (plain.to_path_buf(), dst.clone(), packing.clone());
    let (packed, streamed) = tokio::task::spawn_blocking(move || {
        if let Some(done) = pending {
            let packed = done.packed.clone();
            match done.persist(&to) {
                Ok(()) => return Ok((packed, true)),
                Err(e) => tracing::debug!(error = %e, "cannot put the file packed while streaming in place"),
            }
        }
        pack::pack_file(&src, &to, &p).map(|packed| (packed, false))
    })
    .await?
    .map_err(|e| UserError::failed(format!("cannot write {}: {e}", dst.display())))?;
    let mut sc = sidecar.clone();
    sc.file = name;
    sc.packed = Some(Packed {
        layers: packing.layers(),
        size: packed.size,
        sha256: packed.sha256,
    });
    store::write_sidecar(&dst, &sc).map_err(|e| {
        UserError::failed(format!(
            "snapshot stored at {} but its metadata could not be written: {e}",
            dst.display()
        ))
    })?;
    Ok((dst, streamed))
}
