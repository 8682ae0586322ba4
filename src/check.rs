//! `check`: deep verification of what is stored, as `restic check --read-data-subset` does.
//!
//! Local snapshots are read in full (or an N % sample): a plain one is verified again (sha256
//! trailer, bbolt walk, etcd status) and must still equal its sidecar; a packed one must still
//! have the sha256 recorded when it was packed, and, with an identity, unpacks to the plain
//! snapshot's recorded sha256. Off-site copies are checked against their manifests without
//! downloading; with `--read-data` they are downloaded streaming and decrypted, decompressed and
//! digested on the way, nothing written to disk and memory bounded (see
//! [`crate::offsite::Target::read_copy`]).
//!
//! A streamed copy cannot be walked as a bbolt tree (that needs random access), and does not need
//! to be: its plain sha256 must equal the one recorded when the snapshot was verified at upload,
//! so it is byte for byte the snapshot whose etcd status the manifest holds. The etcd sha256
//! trailer is checked as well. talos-backup's copies (no manifest) get the trailer check only.
//!
//! The result is written to `<config_dir>/check.json` and, with `backup.metrics_file`, as
//! `talos_dr_check_*` metrics, for `status` and for alerts.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;
use sha2::Sha256;

use crate::offsite::{Origin, RemoteEntry, Target};
use crate::pack::{self, Identities, Layer};
use crate::profile::Profile;
use crate::snapshot::store::{self, Entry};
use crate::snapshot::verify::{self, Trailer};
use crate::ui::{Event, Reporter};

pub const CHECK_FILE: &str = "check.json";

/// How much stored data is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadData {
    /// Every local snapshot; off-site copies only against their manifests (no download).
    Off,
    /// Every local snapshot and, with `--remote`, every off-site copy in full.
    All,
    /// This percentage (1–100) of the local snapshots and of the off-site copies, chosen by the
    /// seed.
    Sample(u32),
}

impl ReadData {
    /// `--read-data` (all) or `--read-data=10%` (or `10`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let n = s.trim().trim_end_matches('%');
        let p: u32 = n
            .parse()
            .map_err(|_| format!("{s:?} is not a percentage: expected e.g. 10%"))?;
        match p {
            1..=99 => Ok(ReadData::Sample(p)),
            100 => Ok(ReadData::All),
            _ => Err(format!("{s:?}: the percentage must be between 1 and 100")),
        }
    }

    fn describe(self) -> String {
        match self {
            ReadData::Off => "local: all; off-site: manifests only".into(),
            ReadData::All => "all".into(),
            ReadData::Sample(p) => format!("{p}% sample"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub remote: bool,
    pub read_data: ReadData,
    /// Chooses the sample; the same seed picks the same snapshots.
    pub seed: u64,
}

/// One stored snapshot and what checking it found.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub location: String,
    /// Whether its data was read (not only its metadata).
    pub read: bool,
    pub ok: bool,
    pub detail: String,
}

/// A damaged copy, named with what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    pub location: String,
    pub problem: String,
    pub action: String,
}

/// What `check` writes to `check.json` (and prints with `-o json`).
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub schema: u32,
    pub finished_at: Timestamp,
    pub remote: bool,
    pub read_data: ReadData,
    pub seed: u64,
    /// Snapshots looked at (local and off-site).
    pub checked: usize,
    pub damaged: Vec<Damage>,
    /// Copies that could not be read for another reason (network, permissions): not known to be
    /// damaged, not known to be good.
    pub errors: Vec<String>,
    pub local: Vec<Item>,
    pub offsite: Vec<Item>,
}

impl CheckReport {
    pub fn describe_read_data(&self) -> String {
        self.read_data.describe()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A setting is unusable (exit 2).
    #[error("{0}")]
    Config(String),
    /// The backup directory or the target could not be listed (exit 1).
    #[error("{0}")]
    Failed(String),
}

/// Checks the profile's stored snapshots as `opts` says. Damage is in the report, not an error.
pub async fn run(
    profile: &Profile,
    opts: &CheckOptions,
    identity: Option<&Path>,
    reporter: &dyn Reporter,
) -> Result<CheckReport, CheckError> {
    let identities = identity
        .map(Identities::load)
        .transpose()
        .map_err(|e| CheckError::Config(e.to_string()))?
        .map(Arc::new);
    let target = if opts.remote {
        Some(
            Target::from_profile(profile)
                .map_err(|e| CheckError::Config(format!("[offsite] in profile {}: {e}", profile.name())))?
                .ok_or_else(|| {
                    CheckError::Config(format!(
                        "profile {} has no [offsite] section, so there is nothing to check remotely",
                        profile.name()
                    ))
                })?,
        )
    } else {
        None
    };
    let cli = profile.cli();
    let mut report = CheckReport {
        schema: 1,
        finished_at: Timestamp::now(),
        remote: opts.remote,
        read_data: opts.read_data,
        seed: opts.seed,
        checked: 0,
        damaged: Vec::new(),
        errors: Vec::new(),
        local: Vec::new(),
        offsite: Vec::new(),
    };

    let dir = profile.backup_dir();
    let entries = store::list(&dir)
        .map_err(|e| CheckError::Failed(format!("cannot list {}: {e}", dir.display())))?;
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let chosen = sample(&names, opts.read_data, opts.seed);
    for entry in entries.iter().filter(|e| chosen.contains(&e.name)) {
        let key = format!("check {}", entry.path.display());
        reporter.report(Event::WaitStarted {
            key: key.clone(),
            message: format!("reading {}", entry.name),
        });
        let result = check_local(entry, identities.clone()).await;
        reporter.report(Event::WaitFinished {
            key,
            ok: result.is_ok(),
            message: format!("checked {}", entry.name),
            elapsed_ms: 0,
        });
        let location = entry.path.display().to_string();
        report.checked += 1;
        match result {
            Ok(detail) => report.local.push(Item {
                location,
                read: true,
                ok: true,
                detail,
            }),
            Err(problem) => {
                report.local.push(Item {
                    location: location.clone(),
                    read: true,
                    ok: false,
                    detail: problem.clone(),
                });
                report.damaged.push(Damage {
                    action: format!(
                        "do not restore from it; take a new snapshot (`{cli} snapshot`), then delete \
                         it: rm {location} {location}.json"
                    ),
                    location,
                    problem,
                });
            }
        }
    }

    if let Some(target) = &target {
        let entries = target
            .list()
            .await
            .map_err(|e| CheckError::Failed(format!("cannot list the off-site copies: {e}")))?;
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let chosen = match opts.read_data {
            ReadData::Off => Vec::new(),
            r => sample(&names, r, opts.seed),
        };
        for entry in &entries {
            let read = chosen.contains(&entry.name);
            report.checked += 1;
            let outcome = check_remote(target, entry, read, identities.clone(), reporter).await;
            let action = format!(
                "do not restore from it; take a new snapshot (`{cli} snapshot`) so a good copy \
                 exists, then delete {} and its manifest {}.json",
                entry.url, entry.url
            );
            match outcome {
                Remote::Ok(detail) => report.offsite.push(Item {
                    location: entry.url.clone(),
                    read,
                    ok: true,
                    detail,
                }),
                Remote::Damaged(problem) => {
                    report.offsite.push(Item {
                        location: entry.url.clone(),
                        read,
                        ok: false,
                        detail: problem.clone(),
                    });
                    report.damaged.push(Damage {
                        location: entry.url.clone(),
                        problem,
                        action,
                    });
                }
                Remote::Unreadable(e) => {
                    report.offsite.push(Item {
                        location: entry.url.clone(),
                        read,
                        ok: false,
                        detail: e.clone(),
                    });
                    report.errors.push(e);
                }
            }
        }
    }
    report.finished_at = Timestamp::now();
    Ok(report)
}

/// Writes `check.json` atomically, mode 0600.
pub fn write_report(profile: &Profile, report: &CheckReport) -> io::Result<PathBuf> {
    let path = profile.config_dir.join(CHECK_FILE);
    let text = serde_json::to_vec_pretty(report).map_err(io::Error::other)?;
    crate::fsutil::write_atomic(&path, &text, 0o600)?;
    Ok(path)
}

/// Reads the last `check.json`, if any (for `status`).
pub fn read_report(profile: &Profile) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(profile.config_dir.join(CHECK_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The names to read: all of them, or `percent` of them (at least one), chosen by sorting on a
/// hash of the seed and the name, so one seed always picks the same snapshots.
pub fn sample(names: &[&str], read: ReadData, seed: u64) -> Vec<String> {
    let percent = match read {
        ReadData::Sample(p) => p,
        ReadData::Off | ReadData::All => return names.iter().map(|n| (*n).to_owned()).collect(),
    };
    use sha2::Digest as _;
    let mut keyed: Vec<([u8; 32], &str)> = names
        .iter()
        .map(|n| {
            let mut h = Sha256::new();
            h.update(seed.to_le_bytes());
            h.update(n.as_bytes());
            (h.finalize().into(), *n)
        })
        .collect();
    keyed.sort();
    let take = (names.len() * percent as usize).div_ceil(100).max(1);
    keyed
        .into_iter()
        .take(take)
        .map(|(_, n)| n.to_owned())
        .collect()
}

async fn check_local(entry: &Entry, identities: Option<Arc<Identities>>) -> Result<String, String> {
    let entry = entry.clone();
    tokio::task::spawn_blocking(move || check_local_blocking(&entry, identities.as_deref()))
        .await
        .unwrap_or_else(|e| Err(format!("the check failed: {e}")))
}

fn check_local_blocking(entry: &Entry, ids: Option<&Identities>) -> Result<String, String> {
    let (_, layers) = pack::split_name(&entry.name);
    let Some(sc) = &entry.sidecar else {
        if !layers.is_empty() {
            return Err(
                "its sidecar (.json) is missing, so nothing says what the packed file should hold"
                    .into(),
            );
        }
        let r = verify::verify_file(&entry.path).map_err(|e| format!("cannot read it: {e}"))?;
        return if r.valid {
            Ok("verified (no sidecar to compare with)".into())
        } else {
            Err(r.problems.join("; "))
        };
    };
    if !sc.valid {
        return Err("its sidecar says it failed verification when it was taken".into());
    }
    match &sc.packed {
        None => {
            let r = verify::verify_file(&entry.path).map_err(|e| format!("cannot read it: {e}"))?;
            if !r.valid {
                return Err(format!("it no longer verifies: {}", r.problems.join("; ")));
            }
            if r.sha256 != sc.sha256 {
                return Err(format!(
                    "its sha256 {} differs from the one recorded when it was taken ({})",
                    r.sha256, sc.sha256
                ));
            }
            if r.status != sc.status {
                return Err(format!(
                    "its etcd status {:?} differs from the recorded one {:?}",
                    r.status, sc.status
                ));
            }
            Ok(match r.status {
                Some(s) => format!(
                    "verified: sha256 and etcd status match (revision {}, {} keys)",
                    s.revision, s.total_key
                ),
                None => "verified: sha256 matches".into(),
            })
        }
        Some(p) => {
            let file =
                std::fs::File::open(&entry.path).map_err(|e| format!("cannot read it: {e}"))?;
            let mut input = HashingReader::new(file);
            let mut plain = PlainDigest::default();
            let encrypted = layers.contains(&Layer::Age);
            let unpacked = if encrypted && ids.is_none() {
                None
            } else {
                Some(
                    pack::unpack(&mut input, &mut plain, ids)
                        .map_err(|e| format!("cannot unpack: {e}")),
                )
            };
            io::copy(&mut input, &mut io::sink()).map_err(|e| format!("cannot read it: {e}"))?;
            let (size, sha) = input.finish();
            if size != p.size || sha != p.sha256 {
                return Err(format!(
                    "the packed file ({size} bytes, sha256 {sha}) differs from what was stored \
                     ({} bytes, sha256 {})",
                    p.size, p.sha256
                ));
            }
            match unpacked {
                None => Ok("packed sha256 matches (not decrypted: no identity)".into()),
                Some(Err(e)) => Err(e),
                Some(Ok(_)) => {
                    let d = plain.finish();
                    compare_plain(&d, &sc.sha256, sc.size)?;
                    Ok(format!(
                        "packed and plain sha256 match; unpacked {}",
                        pack::describe(&p.layers.iter().rev().copied().collect::<Vec<_>>())
                    ))
                }
            }
        }
    }
}

fn compare_plain(d: &Digest, sha256: &str, size: u64) -> Result<(), String> {
    if d.trailer == Trailer::Mismatch {
        return Err("the unpacked snapshot's sha256 trailer does not match its content".into());
    }
    if d.sha256 != sha256 || d.size != size {
        return Err(format!(
            "the unpacked snapshot ({} bytes, sha256 {}) differs from the verified one ({size} \
             bytes, sha256 {sha256})",
            d.size, d.sha256
        ));
    }
    Ok(())
}

enum Remote {
    Ok(String),
    Damaged(String),
    Unreadable(String),
}

async fn check_remote(
    target: &Target,
    entry: &RemoteEntry,
    read: bool,
    identities: Option<Arc<Identities>>,
    reporter: &dyn Reporter,
) -> Remote {
    let manifest = entry.manifest.as_ref();
    if entry.origin == Origin::TalosDr {
        match manifest {
            None => {
                return Remote::Damaged(
                    "it has no manifest: its upload was never confirmed, so nothing says what it \
                     should hold"
                        .into(),
                );
            }
            Some(m) if m.size != entry.size => {
                return Remote::Damaged(format!(
                    "it is {} bytes but its manifest says {}",
                    entry.size, m.size
                ));
            }
            Some(m) if !m.snapshot.valid => {
                return Remote::Damaged(
                    "its manifest says the snapshot failed verification".into(),
                );
            }
            Some(_) => {}
        }
    }
    if !read {
        return Remote::Ok(match entry.origin {
            Origin::TalosDr => "manifest present and matches the size (data not read)".into(),
            Origin::TalosBackup => "not made by talos-dr; no manifest (data not read)".into(),
        });
    }
    let key = format!("check {}", entry.url);
    reporter.report(Event::WaitStarted {
        key: key.clone(),
        message: format!("downloading and verifying {}", entry.url),
    });
    let started = std::time::Instant::now();
    let got = target.read_copy(&entry.name, identities).await;
    reporter.report(Event::WaitFinished {
        key,
        ok: got.is_ok(),
        message: format!("read {}", entry.url),
        elapsed_ms: crate::ui::ms(started.elapsed()),
    });
    let got = match got {
        Ok(g) => g,
        Err(e) => return Remote::Unreadable(e.to_string()),
    };
    // The manifest's hash first: it says the stored bytes changed, whatever unpacking says.
    if let Some(m) = manifest
        && (m.size != got.packed_size || m.sha256 != got.packed_sha256)
    {
        return Remote::Damaged(format!(
            "the download ({} bytes, sha256 {}) does not match its manifest ({} bytes, sha256 {})",
            got.packed_size, got.packed_sha256, m.size, m.sha256
        ));
    }
    if let Some(e) = &got.unpack_error {
        return Remote::Damaged(format!("cannot unpack: {e}"));
    }
    let Some(plain) = got.plain else {
        return Remote::Ok("sha256 matches its manifest (not decrypted: no identity)".into());
    };
    match manifest {
        Some(m) => match compare_plain(&plain, &m.snapshot.sha256, m.snapshot.size) {
            Ok(()) => Remote::Ok(format!(
                "downloaded, unpacked {} and matched the verified snapshot's sha256",
                pack::describe(&got.layers)
            )),
            Err(p) => Remote::Damaged(p),
        },
        None => match plain.trailer {
            Trailer::Ok => Remote::Ok(format!(
                "not made by talos-dr: unpacked {}, sha256 trailer ok",
                pack::describe(&got.layers)
            )),
            Trailer::Mismatch => Remote::Damaged(
                "the unpacked snapshot's sha256 trailer does not match its content".into(),
            ),
            Trailer::Missing => Remote::Ok(format!(
                "not made by talos-dr: unpacked {}, no sha256 trailer to check",
                pack::describe(&got.layers)
            )),
        },
    }
}

/// Counts and hashes what is read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        use sha2::Digest as _;
        Self {
            inner,
            hasher: Sha256::new(),
            n: 0,
        }
    }

    /// Bytes read and their sha256 (hex).
    pub fn finish(self) -> (u64, String) {
        use sha2::Digest as _;
        (self.n, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// A plain snapshot's size, sha256 and etcd trailer state, computed from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub size: u64,
    pub sha256: String,
    pub trailer: Trailer,
}

/// A `Write` sink that digests a plain snapshot as it streams by: the whole-file sha256, and the
/// sha256 of everything but the last 32 bytes, which it keeps to compare (etcd's trailer).
#[derive(Default)]
pub struct PlainDigest {
    all: Sha256,
    body: Sha256,
    tail: Vec<u8>,
    n: u64,
}

impl PlainDigest {
    pub fn finish(self) -> Digest {
        use sha2::Digest as _;
        let trailer = if self.n % 512 == 32 {
            let body: [u8; 32] = self.body.finalize().into();
            if body[..] == self.tail[..] {
                Trailer::Ok
            } else {
                Trailer::Mismatch
            }
        } else {
            Trailer::Missing
        };
        Digest {
            size: self.n,
            sha256: hex::encode(self.all.finalize()),
            trailer,
        }
    }
}

impl Write for PlainDigest {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        self.all.update(data);
        self.n += data.len() as u64;
        if data.len() >= 32 {
            self.body.update(&self.tail);
            self.body.update(&data[..data.len() - 32]);
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - 32..]);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > 32 {
                let extra = self.tail.len() - 32;
                self.body.update(&self.tail[..extra]);
                self.tail.drain(..extra);
            }
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_digest_finds_the_trailer_whatever_the_chunking() {
        use sha2::Digest as _;
        let body: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = body.clone();
        file.extend_from_slice(&Sha256::digest(&body));
        for chunk in [1, 5, 31, 32, 33, 100, 4096] {
            let mut d = PlainDigest::default();
            for c in file.chunks(chunk) {
                d.write_all(c).unwrap();
            }
            let got = d.finish();
            assert_eq!(got.trailer, Trailer::Ok, "chunk {chunk}");
            assert_eq!(got.size, file.len() as u64);
            assert_eq!(got.sha256, hex::encode(Sha256::digest(&file)));
        }
        let mut bad = file.clone();
        bad[10] ^= 1;
        let mut d = PlainDigest::default();
        d.write_all(&bad).unwrap();
        assert_eq!(d.finish().trailer, Trailer::Mismatch);
        let mut d = PlainDigest::default();
        d.write_all(&body).unwrap();
        assert_eq!(d.finish().trailer, Trailer::Missing);
    }

    #[test]
    fn samples_are_deterministic_per_seed_and_never_empty() {
        let names: Vec<String> = (0..40).map(|i| format!("etcd-{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let a = sample(&refs, ReadData::Sample(10), 7);
        assert_eq!(a.len(), 4);
        assert_eq!(a, sample(&refs, ReadData::Sample(10), 7));
        assert_ne!(a, sample(&refs, ReadData::Sample(10), 8));
        assert_eq!(sample(&refs[..3], ReadData::Sample(1), 7).len(), 1);
        assert_eq!(sample(&refs, ReadData::All, 7).len(), 40);
        assert!(sample(&[], ReadData::Sample(50), 7).is_empty());
    }

    #[test]
    fn read_data_parses_percentages() {
        assert_eq!(ReadData::parse("10%"), Ok(ReadData::Sample(10)));
        assert_eq!(ReadData::parse("25"), Ok(ReadData::Sample(25)));
        assert_eq!(ReadData::parse("100%"), Ok(ReadData::All));
        assert!(ReadData::parse("0%").is_err());
        assert!(ReadData::parse("150%").is_err());
        assert!(ReadData::parse("ten").is_err());
    }
}
