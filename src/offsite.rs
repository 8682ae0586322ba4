//! Off-site copies: an S3-compatible bucket (`s3://bucket/prefix`) or a directory on another disk
//! (`file:///mnt/nfs/talos`), through the `object_store` crate.
//!
//! An upload streams file → zstd → age → multipart upload through bounded buffers (constant
//! memory for any size), retries the whole upload with backoff on transient errors, and then
//! confirms it: the object's size is read back, and on S3 the plain snapshot's sha256 and size,
//! stored as object metadata when the upload starts, are re-read. Only then is the manifest
//! `<object>.json` written (packed size and sha256, layers, and the snapshot's verification
//! sidecar). A multipart upload that is interrupted is never completed, so no object appears; an
//! object without a manifest is never counted as a good copy by retention.
//!
//! A backup sends its copy while the snapshot streams ([`Target::send_streamed`]): the same
//! packing and parts, fed by the bytes the stream's follower reads instead of the stored file,
//! and left uncompleted until the snapshot is verified and the packed bytes proved to be the
//! verified ones ([`Target::commit_streamed`]); anything else aborts it, and the stored file is
//! uploaded as above. That upload starts before the snapshot's sha256 is known, so its metadata
//! carries a token naming the upload (read back instead); the sha256 is in the manifest.
//!
//! Remote retention uses the same pure [`retention::apply`] as the local directory.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientOptions, GetOptions, ObjectStore,
    PutMultipartOptions, PutPayload, RetryConfig, WriteMultipart,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::chan::{ChannelReader, ChannelWriter};
use crate::config::{SettingError, TargetUrl};
use crate::pack::{self, Identities, Layer, Packing};
use crate::profile::{Offsite, Profile};
use crate::snapshot::retention::{self, Candidate, Decision, KeepPolicy};
use crate::snapshot::store::{self, Sidecar};
use crate::snapshot::verify;
use crate::ui::{self, Event, Reporter};

/// Multipart part size: S3 needs ≥ 5 MiB parts; 8 MiB keeps memory small and requests few.
pub const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once.
const MAX_CONCURRENCY: usize = 4;
const META_SHA256: &str = "talos-dr-sha256";
const META_SIZE: &str = "talos-dr-size";
const META_LAYERS: &str = "talos-dr-layers";
const META_UPLOAD: &str = "talos-dr-upload";

#[derive(Debug, Error)]
pub enum OffsiteError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Url(#[from] SettingError),
    /// The message carries the whole source chain: object_store's own top line ("HTTP error:
    /// error sending request") hides the cause (connection refused, TLS, DNS) a user needs.
    #[error("{url}: {}", with_causes(source))]
    Store {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{url}: {message}")]
    Check { url: String, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{url}: cannot unpack: {source}")]
    Unpack {
        url: String,
        #[source]
        source: pack::PackError,
    },
}

impl OffsiteError {
    /// Worth another try: the network or the server, not our configuration or our data.
    pub fn is_transient(&self) -> bool {
        match self {
            OffsiteError::Store { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::NotImplemented
                    | object_store::Error::InvalidPath { .. }
            ),
            OffsiteError::Check { .. } => true,
            _ => false,
        }
    }
}

/// What the manifest `<object>.json` records about one uploaded copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub object: String,
    /// Size and sha256 of the object as stored (after compression and encryption).
    pub size: u64,
    pub sha256: String,
    pub layers: Vec<Layer>,
    pub uploaded_at: Timestamp,
    /// The plain snapshot's verification results (its sha256, size and etcd status).
    pub snapshot: Sidecar,
}

/// Who wrote a snapshot found at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// `etcd-YYYYmmdd-HHMMSS.snapshot[.zst][.age]`, with a manifest when confirmed.
    TalosDr,
    /// siderolabs/talos-backup's `<cluster>-<RFC3339>.snap[.zst][.age]`: shown so a migrating
    /// user finds them (and can restore them), never counted or deleted by retention.
    TalosBackup,
}

/// One snapshot at the target.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteEntry {
    pub name: String,
    pub url: String,
    pub taken_at: Timestamp,
    pub size: u64,
    pub layers: Vec<Layer>,
    pub manifest: Option<Manifest>,
    pub origin: Origin,
}

impl RemoteEntry {
    /// A confirmed, verified copy: its manifest exists, matches the object and says valid.
    pub fn is_good(&self) -> bool {
        self.manifest
            .as_ref()
            .is_some_and(|m| m.size == self.size && m.snapshot.valid)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Uploaded {
    pub url: String,
    pub manifest: Manifest,
    pub elapsed_ms: u64,
    /// Packed and sent while the snapshot streamed, without reading the stored file again.
    pub during_stream: bool,
}

/// What an object's metadata says about it, read back to confirm the upload.
enum Stamp {
    /// The plain snapshot's sha256 and size, when they are known as the upload starts.
    Snapshot { sha256: String, size: u64 },
    /// An upload that starts before the snapshot has ended: a token naming this upload (the
    /// snapshot's sha256 and size are in the manifest).
    Streamed(String),
}

impl Stamp {
    /// The metadata key confirm reads back, and its value.
    fn metadata(&self) -> (&'static str, &str) {
        match self {
            Stamp::Snapshot { sha256, .. } => (META_SHA256, sha256),
            Stamp::Streamed(token) => (META_UPLOAD, token),
        }
    }
}

/// The parts of a multipart upload, all sent, not completed.
struct Sent {
    writer: WriteMultipart,
    bytes: u64,
    sha256: String,
}

impl Sent {
    /// Drops the upload: nothing of it stays at the target.
    async fn abort(self) {
        let _ = self.writer.abort().await;
    }
}

/// How [`Target::complete`] names, reports and records an upload.
struct Done<'a> {
    name: &'a str,
    stamp: &'a Stamp,
    layers: Vec<Layer>,
    started: Instant,
    key: String,
    during_stream: bool,
}

/// Where the upload loop reports its progress.
struct Progress<'a> {
    key: &'a str,
    message: String,
    read: &'a AtomicU64,
    total: Option<u64>,
    reporter: &'a dyn Reporter,
}

/// The tee's end of a copy made while the snapshot streams (see [`streamed_copy`]).
pub struct StreamTee {
    name_tx: tokio::sync::oneshot::Sender<String>,
    plain_tx: ChannelWriter<io::Result<bytes::Bytes>>,
    packing: Packing,
}

impl StreamTee {
    /// Names the object after the snapshot's file name `base` (as [`Target::upload`] would)
    /// and gives the writer the follower hands every byte to. The writer blocks while the
    /// channel is full, so it must be used from a blocking thread.
    pub fn start(self, base: &str) -> Box<dyn Write + Send> {
        let _ = self.name_tx.send(self.packing.file_name(base));
        Box::new(self.plain_tx)
    }
}

/// The upload's end of a copy made while the snapshot streams, for [`Target::send_streamed`].
pub struct StreamedInput {
    name_rx: tokio::sync::oneshot::Receiver<String>,
    plain_rx: ChannelReader,
    packing: Packing,
}

/// A tee and the input of [`Target::send_streamed`], joined by a bounded channel.
pub fn streamed_copy(packing: &Packing) -> (StreamTee, StreamedInput) {
    let (name_tx, name_rx) = tokio::sync::oneshot::channel();
    let (plain_tx, plain_rx) = crate::chan::pipe(4);
    (
        StreamTee {
            name_tx,
            plain_tx,
            packing: packing.clone(),
        },
        StreamedInput {
            name_rx,
            plain_rx,
            packing: packing.clone(),
        },
    )
}

/// A copy sent while the snapshot streamed, not completed: invisible at the target until
/// [`Target::commit_streamed`], gone after [`Streamed::abort`].
pub struct Streamed {
    name: String,
    stamp: Stamp,
    layers: Vec<Layer>,
    started: Instant,
    sent: Sent,
    /// Size and sha256 of the plain bytes that were packed.
    plain: (u64, String),
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed")
            .field("name", &self.name)
            .field("plain", &self.plain)
            .finish()
    }
}

impl Streamed {
    /// Aborts the multipart upload: no object appears.
    pub async fn abort(self) {
        self.sent.abort().await;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RemotePrune {
    pub decisions: Vec<Decision>,
    pub deleted: Vec<String>,
    pub errors: Vec<String>,
}

/// An off-site target, ready to use.
pub struct Target {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    /// S3 keeps user metadata; the local filesystem store does not.
    metadata: bool,
    retries: u32,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("url", &self.url).finish()
    }
}

impl Target {
    /// The profile's `[offsite]` target, if it has one.
    pub fn from_profile(profile: &Profile) -> Result<Option<Self>, OffsiteError> {
        match &profile.file.offsite {
            Some(cfg) => Self::new(cfg, profile.offsite_credentials_file().as_deref()).map(Some),
            None => Ok(None),
        }
    }

    pub fn new(cfg: &Offsite, credentials_file: Option<&Path>) -> Result<Self, OffsiteError> {
        let url = cfg.url.to_string();
        let (store, prefix, metadata): (Arc<dyn ObjectStore>, String, bool) = match &cfg.url {
            TargetUrl::File { root } => {
                crate::fsutil::create_private_dir(root).map_err(|source| OffsiteError::Io {
                    path: root.clone(),
                    source,
                })?;
                let fs = LocalFileSystem::new_with_prefix(root).map_err(|source| {
                    OffsiteError::Store {
                        url: url.clone(),
                        source,
                    }
                })?;
                (Arc::new(fs), String::new(), false)
            }
            TargetUrl::S3 { bucket, prefix } => {
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(RetryConfig {
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(60),
                        ..RetryConfig::default()
                    })
                    .with_client_options(
                        ClientOptions::new()
                            .with_connect_timeout(Duration::from_secs(10))
                            .with_timeout(Duration::from_secs(300)),
                    );
                if let Some(region) = &cfg.region {
                    b = b.with_region(region);
                } else if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                {
                    b = b.with_region("us-east-1");
                }
                if let Some(endpoint) = &cfg.endpoint {
                    b = b
                        .with_endpoint(endpoint.trim_end_matches('/'))
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                b = b.with_virtual_hosted_style_request(!cfg.path_style);
                if let Some(path) = credentials_file {
                    let creds = read_credentials(path)?;
                    b = b
                        .with_access_key_id(creds.access_key_id)
                        .with_secret_access_key(creds.secret_access_key);
                    if let Some(t) = creds.session_token {
                        b = b.with_token(t);
                    }
                }
                let s3 = b.build().map_err(|source| OffsiteError::Store {
                    url: url.clone(),
                    source,
                })?;
                (Arc::new(s3), prefix.clone(), true)
            }
        };
        Ok(Self {
            url,
            store,
            prefix: ObjPath::from(prefix.as_str()),
            metadata,
            retries: cfg.retries,
        })
    }

    /// A target for the directory of an object URL (`s3://bucket/prefix/name`), with the
    /// endpoint, region and credentials of the profile's `[offsite]` (if any). Returns the
    /// target and the object's name.
    pub fn for_object_url(
        object_url: &str,
        cfg: Option<&Offsite>,
        credentials_file: Option<&Path>,
    ) -> Result<(Self, String), OffsiteError> {
        let (dir, name) = object_url
            .trim_end_matches('/')
            .rsplit_once('/')
            .filter(|(d, n)| !n.is_empty() && !d.ends_with(':') && !d.ends_with("//"))
            .ok_or_else(|| {
                OffsiteError::Config(format!(
                    "{object_url:?} does not name an object: expected s3://bucket/prefix/etcd-….snapshot…"
                ))
            })?;
        let url = TargetUrl::parse(dir)?;
        let c = match cfg {
            Some(cfg) => Offsite { url, ..cfg.clone() },
            None => Offsite {
                url,
                endpoint: None,
                region: None,
                path_style: false,
                credentials_file: None,
                retries: 3,
            },
        };
        Ok((Self::new(&c, credentials_file)?, name.to_owned()))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn url_of(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    fn location(&self, name: &str) -> ObjPath {
        self.prefix.child(name)
    }

    fn store_err(&self, name: &str) -> impl Fn(object_store::Error) -> OffsiteError + '_ {
        let url = self.url_of(name);
        move |source| OffsiteError::Store {
            url: url.clone(),
            source,
        }
    }

    /// Packs and uploads a verified snapshot, retrying the whole upload on transient errors,
    /// then confirms it and writes its manifest.
    pub async fn upload(
        &self,
        src: &Path,
        sidecar: &Sidecar,
        packing: &Packing,
        reporter: &dyn Reporter,
    ) -> Result<Uploaded, OffsiteError> {
        let name = packing.file_name(&sidecar.file);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(self.retries as usize)
            .with_jitter();
        (|| self.upload_once(src, &name, sidecar, packing, reporter))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(OffsiteError::is_transient)
            .notify(|e, delay| {
                reporter.report(Event::Retry {
                    what: format!("upload to {}", self.url_of(&name)),
                    error: e.to_string(),
                    delay_ms: ui::ms(delay),
                });
            })
            .await
    }

    async fn upload_once(
        &self,
        src: &Path,
        name: &str,
        sidecar: &Sidecar,
        packing: &Packing,
        reporter: &dyn Reporter,
    ) -> Result<Uploaded, OffsiteError> {
        let started = Instant::now();
        let url = self.url_of(name);
        let stamp = Stamp::Snapshot {
            sha256: sidecar.sha256.clone(),
            size: sidecar.size,
        };
        let writer = self.open(name, &stamp, packing).await?;

        // Packing is CPU work on blocking I/O: a blocking thread feeds a bounded channel.
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let read = Arc::new(AtomicU64::new(0));
        let packer = {
            let src = src.to_path_buf();
            let packing = packing.clone();
            let read = read.clone();
            tokio::task::spawn_blocking(move || -> io::Result<u64> {
                let file = std::fs::File::open(&src)?;
                let input = CountingReader {
                    inner: file,
                    count: read,
                };
                let (n, mut w) = pack::pack(input, ChannelWriter::new(tx), &packing)?;
                w.flush()?;
                Ok(n)
            })
        };

        let key = format!("upload {url}");
        reporter.report(Event::WaitStarted {
            key: key.clone(),
            message: format!("uploading {} to {url}", sidecar.file),
        });
        let progress = Progress {
            key: &key,
            message: format!("uploading {}", sidecar.file),
            read: &read,
            total: Some(sidecar.size),
            reporter,
        };
        let sent = self.send(name, writer, rx, Some(&progress)).await;
        let packed = packer.await.map_err(|e| OffsiteError::Io {
            path: src.to_path_buf(),
            source: io::Error::other(e),
        })?;
        let sent = match (sent, packed) {
            (Ok(s), Ok(_)) => Ok(s),
            (Err(e), _) => Err(e),
            (Ok(s), Err(source)) => {
                s.abort().await;
                Err(OffsiteError::Io {
                    path: src.to_path_buf(),
                    source,
                })
            }
        };
        let done = Done {
            name,
            stamp: &stamp,
            layers: packing.layers(),
            started,
            key,
            during_stream: false,
        };
        self.complete(done, sent, sidecar, reporter).await
    }

    /// Starts a multipart upload of `name`; nothing is visible at the target before it is
    /// completed.
    async fn open(
        &self,
        name: &str,
        stamp: &Stamp,
        packing: &Packing,
    ) -> Result<WriteMultipart, OffsiteError> {
        let mut opts = PutMultipartOptions::default();
        if self.metadata {
            opts.attributes = metadata(stamp, &packing.layers());
        }
        let upload = self
            .store
            .put_multipart_opts(&self.location(name), opts)
            .await
            .map_err(self.store_err(name))?;
        Ok(WriteMultipart::new_with_chunk_size(upload, PART_SIZE))
    }

    /// Sends what the packer hands over as parts of `writer`, without completing the upload.
    /// A store error aborts the upload.
    async fn send(
        &self,
        name: &str,
        mut writer: WriteMultipart,
        mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
        progress: Option<&Progress<'_>>,
    ) -> Result<Sent, OffsiteError> {
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut last_report = Instant::now();
        let streamed: Result<(), object_store::Error> = async {
            while let Some(chunk) = rx.recv().await {
                hasher.update(&chunk);
                bytes += chunk.len() as u64;
                writer.wait_for_capacity(MAX_CONCURRENCY).await?;
                writer.write(&chunk);
                if let Some(p) = progress
                    && last_report.elapsed() >= Duration::from_millis(200)
                {
                    last_report = Instant::now();
                    p.reporter.report(Event::Progress {
                        key: p.key.to_owned(),
                        message: p.message.clone(),
                        done: p.read.load(Ordering::Relaxed),
                        total: p.total,
                    });
                }
            }
            Ok(())
        }
        .await;
        // The packer stops at its next write once nobody listens.
        drop(rx);
        match streamed {
            Ok(()) => Ok(Sent {
                writer,
                bytes,
                sha256: hex::encode(hasher.finalize()),
            }),
            Err(e) => {
                let _ = writer.abort().await;
                Err(self.store_err(name)(e))
            }
        }
    }

    /// Completes an upload whose parts are sent, reports it, confirms it and writes its
    /// manifest: the one way a copy becomes good, whether it was sent during the stream or
    /// read from the stored file.
    async fn complete(
        &self,
        done: Done<'_>,
        sent: Result<Sent, OffsiteError>,
        sidecar: &Sidecar,
        reporter: &dyn Reporter,
    ) -> Result<Uploaded, OffsiteError> {
        let name = done.name;
        let url = self.url_of(name);
        let finish = match sent {
            Ok(s) => match s.writer.finish().await {
                Ok(_) => Ok((s.bytes, s.sha256)),
                Err(e) => Err(self.store_err(name)(e)),
            },
            Err(e) => Err(e),
        };
        let elapsed_ms = ui::ms(done.started.elapsed());
        let when = if done.during_stream {
            " while the snapshot streamed"
        } else {
            ""
        };
        reporter.report(Event::WaitFinished {
            key: done.key,
            ok: finish.is_ok(),
            message: match &finish {
                Ok((bytes, _)) => format!(
                    "uploaded {url}{when} ({}, {})",
                    human(*bytes),
                    rate(sidecar.size, done.started.elapsed())
                ),
                Err(_) => format!("upload to {url} failed"),
            },
            elapsed_ms,
        });
        let (size, sha256) = finish?;

        self.confirm(name, size, done.stamp).await?;
        let manifest = Manifest {
            schema: 1,
            object: name.to_owned(),
            size,
            sha256,
            layers: done.layers,
            uploaded_at: Timestamp::now(),
            snapshot: sidecar.clone(),
        };
        self.write_manifest(name, &manifest).await?;
        Ok(Uploaded {
            url,
            manifest,
            elapsed_ms,
            during_stream: done.during_stream,
        })
    }

    /// Packs the bytes a [`StreamTee`] gets while the snapshot streams and sends them as the
    /// parts of a multipart upload, which is left open: only [`Target::commit_streamed`]
    /// completes it, once the snapshot is verified. Memory stays bounded: the tee blocks the
    /// follower's hashing thread while the channels are full.
    pub async fn send_streamed(&self, input: StreamedInput) -> Result<Streamed, OffsiteError> {
        let StreamedInput {
            name_rx,
            plain_rx,
            packing,
        } = input;
        let name = name_rx.await.map_err(|_| OffsiteError::Check {
            url: self.url.clone(),
            message: "the snapshot stream did not start".into(),
        })?;
        let started = Instant::now();
        let stamp = Stamp::Streamed(format!(
            "{}-{}",
            std::process::id(),
            Timestamp::now().as_nanosecond()
        ));
        let writer = self.open(&name, &stamp, &packing).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let packer = {
            let packing = packing.clone();
            // The plain bytes are hashed here again: what is committed must be what was verified.
            tokio::task::spawn_blocking(move || -> io::Result<(u64, String)> {
                let mut input = crate::check::HashingReader::new(plain_rx);
                let (_, mut w) = pack::pack(&mut input, ChannelWriter::new(tx), &packing)?;
                w.flush()?;
                Ok(input.finish())
            })
        };
        let sent = self.send(&name, writer, rx, None).await;
        let url = self.url_of(&name);
        let packed = packer
            .await
            .map_err(|e| OffsiteError::Check {
                url: url.clone(),
                message: format!("the packing thread failed: {e}"),
            })
            .and_then(|r| {
                r.map_err(|source| OffsiteError::Io {
                    path: PathBuf::from(&url),
                    source,
                })
            });
        match (sent, packed) {
            (Ok(sent), Ok(plain)) => Ok(Streamed {
                name,
                stamp,
                layers: packing.layers(),
                started,
                sent,
                plain,
            }),
            (Err(e), _) => Err(e),
            (Ok(sent), Err(e)) => {
                sent.abort().await;
                Err(e)
            }
        }
    }

    /// Completes a copy sent during the stream, confirms it and writes its manifest, but only
    /// when the bytes it packed are exactly the verified snapshot `sidecar` describes (same
    /// size and sha256) under the name the after-the-fact upload would give it. Otherwise the
    /// upload is aborted and nothing appears at the target.
    pub async fn commit_streamed(
        &self,
        streamed: Streamed,
        sidecar: &Sidecar,
        packing: &Packing,
        reporter: &dyn Reporter,
    ) -> Result<Uploaded, OffsiteError> {
        let url = self.url_of(&streamed.name);
        let expected = packing.file_name(&sidecar.file);
        let (size, sha) = &streamed.plain;
        let differs = if streamed.name != expected {
            Some(format!(
                "it was named {}, expected {expected}",
                streamed.name
            ))
        } else if *size != sidecar.size || *sha != sidecar.sha256 {
            Some(format!(
                "it packed {size} bytes with sha256 {sha}, but the verified snapshot has {} bytes with sha256 {}",
                sidecar.size, sidecar.sha256
            ))
        } else {
            None
        };
        if let Some(message) = differs {
            streamed.sent.abort().await;
            return Err(OffsiteError::Check { url, message });
        }
        let key = format!("upload {url}");
        reporter.report(Event::WaitStarted {
            key: key.clone(),
            message: format!("completing the upload of {} to {url}", sidecar.file),
        });
        let done = Done {
            name: &streamed.name,
            stamp: &streamed.stamp,
            layers: streamed.layers,
            started: streamed.started,
            key,
            during_stream: true,
        };
        self.complete(done, Ok(streamed.sent), sidecar, reporter)
            .await
    }

    /// Reads back what the server stored: the size, and on S3 the metadata sent with the upload.
    async fn confirm(&self, name: &str, sent: u64, stamp: &Stamp) -> Result<(), OffsiteError> {
        let url = self.url_of(name);
        let head = self
            .store
            .get_opts(
                &self.location(name),
                GetOptions {
                    head: true,
                    ..GetOptions::default()
                },
            )
            .await
            .map_err(self.store_err(name))?;
        if head.meta.size != sent {
            return Err(OffsiteError::Check {
                url,
                message: format!(
                    "the server stored {} bytes but {sent} were sent",
                    head.meta.size
                ),
            });
        }
        if self.metadata {
            let (key, expected) = stamp.metadata();
            let got = head
                .attributes
                .get(&Attribute::Metadata(key.into()))
                .map(|v| v.as_ref().to_owned());
            if got.as_deref() != Some(expected) {
                return Err(OffsiteError::Check {
                    url,
                    message: format!(
                        "the object's {key} metadata reads {got:?}, expected {expected}"
                    ),
                });
            }
        }
        Ok(())
    }

    async fn write_manifest(&self, name: &str, m: &Manifest) -> Result<(), OffsiteError> {
        let mname = format!("{name}.json");
        let body = serde_json::to_vec_pretty(m).map_err(|e| OffsiteError::Check {
            url: self.url_of(&mname),
            message: e.to_string(),
        })?;
        self.store
            .put(&self.location(&mname), PutPayload::from(body))
            .await
            .map_err(self.store_err(&mname))?;
        match self.read_manifest(name).await? {
            Some(back) if back.sha256 == m.sha256 && back.size == m.size => Ok(()),
            _ => Err(OffsiteError::Check {
                url: self.url_of(&mname),
                message: "the manifest read back differs from the one written".into(),
            }),
        }
    }

    async fn read_manifest(&self, name: &str) -> Result<Option<Manifest>, OffsiteError> {
        let mname = format!("{name}.json");
        match self.store.get(&self.location(&mname)).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(self.store_err(&mname))?;
                Ok(serde_json::from_slice(&bytes).ok())
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err(&mname)(e)),
        }
    }

    /// An object in a subdirectory of the prefix (`configs/<name>`), beside the snapshots.
    fn aux_location(&self, dir: &str, name: &str) -> ObjPath {
        self.prefix.child(dir).child(name)
    }

    /// Uploads a small file under `dir/` unless an object of that name is there already (the
    /// name carries the content's hash, so equal names are equal contents).
    pub async fn put_aux_if_absent(
        &self,
        dir: &str,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<bool, OffsiteError> {
        let rel = format!("{dir}/{name}");
        let loc = self.aux_location(dir, name);
        match self.store.head(&loc).await {
            Ok(_) => return Ok(false),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.store_err(&rel)(e)),
        }
        self.store
            .put(&loc, PutPayload::from(bytes))
            .await
            .map_err(self.store_err(&rel))?;
        Ok(true)
    }

    /// Names of the objects directly under `dir/`.
    pub async fn list_aux(&self, dir: &str) -> Result<Vec<String>, OffsiteError> {
        let prefix = self.prefix.child(dir);
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(self.store_err(dir))?;
        Ok(listing
            .objects
            .into_iter()
            .filter_map(|o| o.location.filename().map(str::to_owned))
            .collect())
    }

    pub async fn delete_aux(&self, dir: &str, name: &str) -> Result<(), OffsiteError> {
        let rel = format!("{dir}/{name}");
        self.store
            .delete(&self.aux_location(dir, name))
            .await
            .map_err(self.store_err(&rel))
    }

    /// The first `len` bytes of an object (a ranged GET; the whole object when it is smaller).
    pub async fn read_head(
        &self,
        name: &str,
        size: u64,
        len: u64,
    ) -> Result<Vec<u8>, OffsiteError> {
        let end = size.min(len);
        let bytes = self
            .store
            .get_range(&self.location(name), 0..end)
            .await
            .map_err(self.store_err(name))?;
        Ok(bytes.to_vec())
    }

    /// Snapshots at the target, newest first, each with its manifest when it has one.
    pub async fn list(&self) -> Result<Vec<RemoteEntry>, OffsiteError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let listing = self
            .store
            .list_with_delimiter(prefix)
            .await
            .map_err(self.store_err(""))?;
        let mut entries: Vec<RemoteEntry> = listing
            .objects
            .into_iter()
            .filter_map(|o| {
                let name = o.location.filename()?.to_owned();
                let (base, layers) = pack::split_name(&name);
                let (taken_at, origin) = match store::parse_name(base) {
                    Some(t) => (t, Origin::TalosDr),
                    None => (parse_talos_backup_name(base)?, Origin::TalosBackup),
                };
                Some(RemoteEntry {
                    url: self.url_of(&name),
                    name,
                    taken_at,
                    size: o.size,
                    layers,
                    manifest: None,
                    origin,
                })
            })
            .collect();
        // Owned names: a future borrowing the entries is not `Send` in every caller's eyes
        // (the stages box their futures as `Send`).
        let names: Vec<String> = entries
            .iter()
            .filter(|e| e.origin == Origin::TalosDr)
            .map(|e| e.name.clone())
            .collect();
        let manifests: Vec<Option<Manifest>> = futures::stream::iter(names)
            .map(|name| async move { self.read_manifest(&name).await })
            .buffered(8)
            .try_collect()
            .await?;
        for (e, m) in entries
            .iter_mut()
            .filter(|e| e.origin == Origin::TalosDr)
            .zip(manifests)
        {
            e.manifest = m;
        }
        entries.sort_by(|a, b| b.taken_at.cmp(&a.taken_at).then(b.name.cmp(&a.name)));
        Ok(entries)
    }

    /// Applies retention at the target: the same policy and pure decision as locally.
    pub async fn prune(
        &self,
        policy: KeepPolicy,
        now: Timestamp,
        dry_run: bool,
    ) -> Result<RemotePrune, OffsiteError> {
        let entries = self.list().await?;
        // Only talos-dr's own copies take part: another tool's files are never deleted.
        let candidates: Vec<Candidate> = entries
            .iter()
            .filter(|e| e.origin == Origin::TalosDr)
            .map(|e| Candidate {
                name: e.name.clone(),
                taken_at: e.taken_at,
                valid: e.is_good(),
            })
            .collect();
        let decisions = retention::apply(policy, &candidates, now);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        if !dry_run {
            for d in decisions.iter().filter(|d| !d.keep) {
                match self.delete(&d.name).await {
                    Ok(()) => deleted.push(self.url_of(&d.name)),
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        Ok(RemotePrune {
            decisions,
            deleted,
            errors,
        })
    }

    /// Proves the target works for a backup without touching any snapshot: lists the prefix (the
    /// bucket exists and the keys may read it), then writes and deletes a probe object (the keys
    /// may write and delete, as upload and retention need). The probe's name starts with a dot,
    /// so listing and retention never see it.
    pub async fn probe(&self) -> Result<(), OffsiteError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        self.store
            .list_with_delimiter(prefix)
            .await
            .map_err(self.store_err(""))?;
        let name = format!(
            ".talos-dr-probe-{}-{}",
            std::process::id(),
            Timestamp::now().as_nanosecond()
        );
        self.store
            .put(
                &self.location(&name),
                PutPayload::from_static(b"talos-dr write probe; safe to delete\n"),
            )
            .await
            .map_err(self.store_err(&name))?;
        self.store
            .delete(&self.location(&name))
            .await
            .map_err(self.store_err(&name))
    }

    /// The manifest `<name>.json`, if there is one that parses.
    pub async fn manifest(&self, name: &str) -> Result<Option<Manifest>, OffsiteError> {
        self.read_manifest(name).await
    }

    /// Reads a copy in full without writing anything to disk: the object streams through a
    /// bounded channel into a blocking thread that hashes it, decrypts it (with `identities`),
    /// decompresses it and digests the plain snapshot. Memory stays bounded for any size.
    /// Without an identity an encrypted copy is only hashed (`plain` is `None`). A network error
    /// is a [`OffsiteError::Store`]; data that does not unpack is [`CopyRead::unpack_error`].
    pub async fn read_copy(
        &self,
        name: &str,
        identities: Option<Arc<Identities>>,
    ) -> Result<CopyRead, OffsiteError> {
        let url = self.url_of(name);
        let got = self
            .store
            .get(&self.location(name))
            .await
            .map_err(self.store_err(name))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(8);
        let reader = tokio::task::spawn_blocking(move || {
            let mut input = crate::check::HashingReader::new(ChannelReader::new(rx));
            let mut plain = crate::check::PlainDigest::default();
            let unpacked = match pack::unpack(&mut input, &mut plain, identities.as_deref()) {
                Ok((layers, _)) => Ok(Some((layers, plain))),
                // No key here: the packed bytes are still hashed in full.
                Err(pack::PackError::NoIdentity) => io::copy(&mut input, &mut io::sink())
                    .map(|_| None)
                    .map_err(pack::PackError::Io),
                Err(e) => Err(e),
            };
            // Drain what is left so the packed hash covers the whole object.
            let drained = io::copy(&mut input, &mut io::sink());
            (unpacked, drained, input.finish())
        });
        let mut stream = got.into_stream();
        let mut network: Option<object_store::Error> = None;
        while let Some(chunk) = stream.next().await {
            let item = match chunk {
                Ok(b) => Ok(b),
                Err(e) => {
                    let msg = with_causes(&e);
                    network = Some(e);
                    Err(io::Error::other(msg))
                }
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
        drop(tx);
        let (unpacked, drained, (packed_size, packed_sha256)) =
            reader.await.map_err(|e| OffsiteError::Check {
                url: url.clone(),
                message: format!("the reading thread failed: {e}"),
            })?;
        if let Some(e) = network {
            return Err(self.store_err(name)(e));
        }
        drained.map_err(|source| OffsiteError::Io {
            path: PathBuf::from(&url),
            source,
        })?;
        let (layers, plain, unpack_error) = match unpacked {
            Ok(Some((layers, plain))) => (layers, Some(plain.finish()), None),
            Ok(None) => (vec![Layer::Age], None, None),
            Err(e) => (Vec::new(), None, Some(e)),
        };
        Ok(CopyRead {
            packed_size,
            packed_sha256,
            layers,
            plain,
            unpack_error,
        })
    }

    /// Deletes an object and its manifest (a missing manifest is fine).
    pub async fn delete(&self, name: &str) -> Result<(), OffsiteError> {
        self.store
            .delete(&self.location(name))
            .await
            .map_err(self.store_err(name))?;
        let mname = format!("{name}.json");
        match self.store.delete(&self.location(&mname)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err(&mname)(e)),
        }
    }

    /// Downloads an object to `dst` (mode 0600) and checks it against its manifest, if any.
    pub async fn download(
        &self,
        name: &str,
        dst: &Path,
        reporter: &dyn Reporter,
    ) -> Result<Option<Manifest>, OffsiteError> {
        let url = self.url_of(name);
        let manifest = self.read_manifest(name).await?;
        let got = self
            .store
            .get(&self.location(name))
            .await
            .map_err(self.store_err(name))?;
        let total = got.meta.size;
        let io_err = |source| OffsiteError::Io {
            path: dst.to_path_buf(),
            source,
        };
        let dir = dst.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-download-")
            .tempfile_in(dir)
            .map_err(io_err)?;
        set_private(tmp.path()).map_err(io_err)?;
        let key = format!("download {url}");
        reporter.report(Event::WaitStarted {
            key: key.clone(),
            message: format!("downloading {url}"),
        });
        let started = Instant::now();
        let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(io_err)?);
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        let mut stream = got.into_stream();
        let mut last = Instant::now();
        let result: Result<(), OffsiteError> = async {
            use tokio::io::AsyncWriteExt;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(self.store_err(name))?;
                hasher.update(&chunk);
                done += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(io_err)?;
                if last.elapsed() >= Duration::from_millis(200) {
                    last = Instant::now();
                    reporter.report(Event::Progress {
                        key: key.clone(),
                        message: format!("downloading {name}"),
                        done,
                        total: Some(total),
                    });
                }
            }
            file.sync_all().await.map_err(io_err)
        }
        .await;
        reporter.report(Event::WaitFinished {
            key,
            ok: result.is_ok(),
            message: match &result {
                Ok(()) => format!(
                    "downloaded {url} ({}, {})",
                    human(done),
                    rate(done, started.elapsed())
                ),
                Err(_) => format!("download of {url} failed"),
            },
            elapsed_ms: ui::ms(started.elapsed()),
        });
        result?;
        let sha = hex::encode(hasher.finalize());
        if let Some(m) = &manifest
            && (m.size != done || m.sha256 != sha)
        {
            return Err(OffsiteError::Check {
                url,
                message: format!(
                    "the download does not match its manifest ({done} bytes, sha256 {sha}; \
                     the manifest says {} bytes, sha256 {})",
                    m.size, m.sha256
                ),
            });
        }
        tmp.persist(dst).map_err(|e| io_err(e.error))?;
        Ok(manifest)
    }
}

/// What [`Target::read_copy`] found.
#[derive(Debug)]
pub struct CopyRead {
    /// Bytes and sha256 of the object as stored.
    pub packed_size: u64,
    pub packed_sha256: String,
    /// Layers removed, outermost first.
    pub layers: Vec<Layer>,
    /// The plain snapshot inside, when it could be unpacked.
    pub plain: Option<crate::check::Digest>,
    /// Why it could not be unpacked (damaged data, wrong key); the packed hash is still whole.
    pub unpack_error: Option<pack::PackError>,
}

/// A snapshot made ready for `restore`: plain, verified, on local disk.
#[derive(Debug, Clone, Serialize)]
pub struct Prepared {
    pub path: PathBuf,
    /// Where it came from (a URL or the packed local file), when it was not used as given.
    pub source: Option<String>,
    pub layers: Vec<Layer>,
    pub report: Option<verify::Report>,
}

/// Turns a `restore --snapshot` argument into a plain local file: an `s3://` or `file://` URL is
/// downloaded, and a compressed or encrypted file is unpacked, into `unpacked_dir`, then
/// verified. A plain local file is returned as given (preflight verifies it). Nothing here
/// touches the cluster.
pub async fn prepare_snapshot(
    arg: &str,
    profile: &Profile,
    identity: Option<&Path>,
    reporter: &dyn Reporter,
) -> Result<Prepared, PrepareError> {
    let dir = profile.unpacked_dir();
    let is_url = arg.starts_with("s3://") || arg.starts_with("file://");
    if !is_url {
        let path = std::path::absolute(arg).map_err(|e| PrepareError::Usage(e.to_string()))?;
        if !path.is_file() {
            return Err(PrepareError::Usage(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let layer = pack::sniff_file(&path)
            .map_err(|e| PrepareError::Usage(format!("cannot read {}: {e}", path.display())))?;
        if layer.is_none() {
            return Ok(Prepared {
                path,
                source: None,
                layers: Vec::new(),
                report: None,
            });
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return unpack_and_verify(
            &path,
            &name,
            &path.display().to_string(),
            &dir,
            identity,
            None,
        );
    }
    let (target, name) = Target::for_object_url(
        arg,
        profile.file.offsite.as_ref(),
        profile.offsite_credentials_file().as_deref(),
    )
    .map_err(|e| PrepareError::Usage(e.to_string()))?;
    mkdir(&dir)?;
    let download = dir.join(format!(".download-{name}"));
    let _cleanup = RemoveOnDrop(download.clone());
    let manifest = target
        .download(&name, &download, reporter)
        .await
        .map_err(|e| match e {
            OffsiteError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            } => PrepareError::Usage(format!("{arg} does not exist")),
            OffsiteError::Check { .. } => PrepareError::Invalid(e.to_string()),
            other => PrepareError::Failed(other.to_string()),
        })?;
    unpack_and_verify(&download, &name, arg, &dir, identity, manifest.as_ref())
}

fn unpack_and_verify(
    packed: &Path,
    name: &str,
    source: &str,
    dir: &Path,
    identity: Option<&Path>,
    manifest: Option<&Manifest>,
) -> Result<Prepared, PrepareError> {
    mkdir(dir)?;
    let identities = identity
        .map(Identities::load)
        .transpose()
        .map_err(|e| PrepareError::Usage(e.to_string()))?;
    let (base, _) = pack::split_name(name);
    let base = if base == name {
        format!("{name}.snapshot")
    } else {
        base.to_owned()
    };
    let out = dir.join(&base);
    let layers = pack::unpack_file(packed, &out, identities.as_ref()).map_err(|e| match e {
        pack::PackError::NoIdentity
        | pack::PackError::WrongIdentity { .. }
        | pack::PackError::Identity { .. } => PrepareError::Usage(format!("{source}: {e}")),
        other => PrepareError::Invalid(format!("{source}: cannot unpack: {other}")),
    })?;
    let report = verify::verify_file(&out)
        .map_err(|e| PrepareError::Failed(format!("cannot read {}: {e}", out.display())))?;
    if let Some(m) = manifest
        && m.snapshot.sha256 != report.sha256
    {
        return Err(PrepareError::Invalid(format!(
            "{source}: the unpacked snapshot's sha256 {} differs from the one recorded at upload ({})",
            report.sha256, m.snapshot.sha256
        )));
    }
    if !report.valid {
        return Err(PrepareError::Invalid(format!(
            "{source}: the unpacked snapshot {} failed verification:\n  {}",
            out.display(),
            report.problems.join("\n  ")
        )));
    }
    Ok(Prepared {
        path: out,
        source: Some(source.to_owned()),
        layers,
        report: Some(report),
    })
}

#[derive(Debug, Error)]
pub enum PrepareError {
    /// Bad argument or configuration (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The snapshot is not usable (exit 3).
    #[error("{0}")]
    Invalid(String),
    /// The network or the disk failed (exit 1).
    #[error("{0}")]
    Failed(String),
}

fn mkdir(dir: &Path) -> Result<(), PrepareError> {
    crate::fsutil::create_private_dir(dir)
        .map_err(|e| PrepareError::Failed(format!("cannot create {}: {e}", dir.display())))
}

fn metadata(stamp: &Stamp, layers: &[Layer]) -> Attributes {
    let mut a = Attributes::new();
    match stamp {
        Stamp::Snapshot { sha256, size } => {
            a.insert(
                Attribute::Metadata(META_SHA256.into()),
                AttributeValue::from(sha256.clone()),
            );
            a.insert(
                Attribute::Metadata(META_SIZE.into()),
                AttributeValue::from(size.to_string()),
            );
        }
        Stamp::Streamed(token) => {
            a.insert(
                Attribute::Metadata(META_UPLOAD.into()),
                AttributeValue::from(token.clone()),
            );
        }
    }
    a.insert(
        Attribute::Metadata(META_LAYERS.into()),
        AttributeValue::from(
            layers
                .iter()
                .map(|l| l.name())
                .collect::<Vec<_>>()
                .join(","),
        ),
    );
    a
}

struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

/// Reads `aws_access_key_id = …` (AWS credentials file, first profile) or `AWS_ACCESS_KEY_ID=…`
/// (env-file) lines. Errors never include the values.
fn read_credentials(path: &Path) -> Result<Credentials, OffsiteError> {
    if let Ok(Some(mode)) = crate::fsutil::exposed_mode(path) {
        return Err(OffsiteError::Config(crate::fsutil::exposed_message(
            "credentials file",
            path,
            mode,
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|source| OffsiteError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut id = None;
    let mut secret = None;
    let mut token = None;
    let mut sections = 0;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            sections += 1;
            if sections > 1 {
                break;
            }
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => id = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token: token,
        }),
        _ => Err(OffsiteError::Config(format!(
            "{}: expected aws_access_key_id and aws_secret_access_key (or AWS_ACCESS_KEY_ID= and AWS_SECRET_ACCESS_KEY=) lines",
            path.display()
        ))),
    }
}

/// The time in a talos-backup object's name (`<cluster>-<RFC3339>.snap`, layers removed), or
/// `None` when the name is not one. The cluster name may itself contain dashes.
pub fn parse_talos_backup_name(base: &str) -> Option<Timestamp> {
    let stem = base.strip_suffix(".snap")?;
    stem.match_indices('-')
        .filter(|(i, _)| *i > 0)
        .find_map(|(i, _)| stem[i + 1..].parse::<Timestamp>().ok())
}

/// `e` and every error below it, each only when it adds something to what is already said.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        next = cause.source();
    }
    msg
}

fn set_private(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
}

/// For progress messages only; results carry plain byte counts.
fn human(n: u64) -> String {
    let mib = n as f64 / (1024.0 * 1024.0);
    if mib >= 1.0 {
        format!("{mib:.1} MiB")
    } else {
        format!("{n} B")
    }
}

/// `41.3 MiB/s` of snapshot data.
fn rate(bytes: u64, d: Duration) -> String {
    let secs = d.as_secs_f64().max(1e-3);
    format!("{:.1} MiB/s", bytes as f64 / (1024.0 * 1024.0) / secs)
}

/// Counts bytes read, for progress from another thread.
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_either_format_and_errors_hide_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        let write = |text: &str| crate::fsutil::write_atomic(&p, text.as_bytes(), 0o600).unwrap();
        std::fs::write(&p, "AWS_ACCESS_KEY_ID=A\nAWS_SECRET_ACCESS_KEY=S\n").unwrap();
        let e = read_credentials(&p).err().unwrap().to_string();
        assert!(e.contains("chmod 600") && !e.contains("=S"), "{e}");
        write(
            "[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n[other]\naws_access_key_id = X\n",
        );
        let c = read_credentials(&p).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("AK", "SK")
        );
        write("AWS_ACCESS_KEY_ID=AK2\nAWS_SECRET_ACCESS_KEY=\"SK2\"\n");
        let c = read_credentials(&p).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("AK2", "SK2")
        );
        write("AWS_ACCESS_KEY_ID=SECRETVALUE\n");
        let e = read_credentials(&p).err().unwrap().to_string();
        assert!(!e.contains("SECRETVALUE"), "{e}");
    }

    #[test]
    fn talos_backup_names_are_recognised() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(
            parse_talos_backup_name("prod-2026-11-30T02:00:00Z.snap"),
            Some(t("2026-11-30T02:00:00Z"))
        );
        assert_eq!(
            parse_talos_backup_name("my-lab-cluster-2026-11-30T03:04:05+01:00.snap"),
            Some(t("2026-11-30T02:04:05Z"))
        );
        for n in [
            "prod-2026-11-30T02:00:00Z.snapshot",
            "prod.snap",
            "-2026-11-30T02:00:00Z.snap",
            "prod-yesterday.snap",
            "etcd-20261130-020000.snapshot",
        ] {
            assert_eq!(parse_talos_backup_name(n), None, "{n}");
        }
    }
}
