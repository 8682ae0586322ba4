//! Saved machine configs: every backup also keeps each node's Talos machine config, because an
//! etcd snapshot alone cannot bring back a node whose disk is gone (the config holds the
//! cluster's CA keys, tokens and the secretbox key that encrypts Secrets).
//!
//! Files live in `<backup dir>/configs/<address>-<sha256 prefix>.yaml` (`.yaml.age` when the
//! profile has age recipients), mode 0600 either way. The name carries the hash of the plain
//! text, so an unchanged config is stored once however many snapshots refer to it. Each
//! snapshot's sidecar maps node address → [`ConfigRef`]; a file is kept exactly as long as some
//! sidecar (a scheduled snapshot or a pre-upgrade set) refers to it ([`collect_garbage`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

use crate::config::Recipients;
use crate::pack::{self, Identities, Packing};
use crate::profile::Profile;
use crate::snapshot::store;
use crate::talos::{self, TalosError, Talosctl};

/// Directory name under the backup directory (and under the off-site prefix).
pub const DIR: &str = "configs";

/// What a snapshot's sidecar records about one node's machine config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRef {
    /// File name in the configs directory.
    pub file: String,
    /// sha256 of the plain config text.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
    /// When the node answered with this config (the epoch when a sidecar does not say).
    #[serde(default = "unknown_time")]
    pub read_at: Timestamp,
    /// The node could not be read for this snapshot; this is the last config known for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub carried: bool,
}

fn unknown_time() -> Timestamp {
    Timestamp::UNIX_EPOCH
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Unpack {
        path: PathBuf,
        source: pack::PackError,
    },
    #[error("{}: the file no longer matches its recorded sha256 (damaged or replaced)", path.display())]
    Mismatch { path: PathBuf },
    #[error("not a Talos machine config: {0}")]
    Yaml(String),
}

/// The parts of a config that say which cluster and which machine it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub cluster_name: Option<String>,
    /// sha256 of `cluster.ca.crt`: equal for every node of one cluster, never secret.
    pub cluster_ca: Option<String>,
    pub machine_type: Option<String>,
    pub hostname: Option<String>,
    pub endpoint: Option<String>,
}

impl Identity {
    /// Why this config cannot be put on a node of the cluster `live` describes, if it cannot.
    pub fn mismatch(&self, live: &Identity) -> Option<String> {
        if self.cluster_ca.is_none() || live.cluster_ca.is_none() {
            return Some("a config has no cluster.ca.crt".into());
        }
        if self.cluster_name != live.cluster_name {
            return Some(format!(
                "it belongs to cluster {:?}, the running cluster is {:?}",
                self.cluster_name.as_deref().unwrap_or("?"),
                live.cluster_name.as_deref().unwrap_or("?")
            ));
        }
        if self.cluster_ca != live.cluster_ca {
            return Some(
                "its cluster CA differs from the running cluster's (another cluster with the same name?)"
                    .into(),
            );
        }
        None
    }
}

fn parse(text: &str) -> Result<Vec<Yaml>, ConfigError> {
    YamlLoader::load_from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))
}

/// Reads the identity out of a (possibly multi-document) v1alpha1 config.
pub fn identity(text: &str) -> Result<Identity, ConfigError> {
    let docs = parse(text)?;
    let main = docs
        .iter()
        .find(|d| d["version"].as_str() == Some("v1alpha1"))
        .ok_or_else(|| ConfigError::Yaml("no `version: v1alpha1` document".into()))?;
    let s = |y: &Yaml| y.as_str().map(str::to_owned);
    let hostname = s(&main["machine"]["network"]["hostname"]).or_else(|| {
        // Talos 1.12+ may keep the hostname in its own document.
        docs.iter()
            .find(|d| d["kind"].as_str() == Some("HostnameConfig"))
            .and_then(|d| s(&d["hostname"]))
    });
    Ok(Identity {
        cluster_name: s(&main["cluster"]["clusterName"]),
        cluster_ca: main["cluster"]["ca"]["crt"]
            .as_str()
            .map(|c| hex::encode(Sha256::digest(c.trim().as_bytes()))),
        machine_type: s(&main["machine"]["type"]),
        hostname,
        endpoint: s(&main["cluster"]["controlPlane"]["endpoint"]),
    })
}

/// Keys whose values are secrets wherever they appear (CA keys, tokens, encryption secrets).
fn is_secret_key(key: &str) -> bool {
    matches!(
        key,
        "key" | "token" | "secret" | "privateKey" | "password" | "bootstrapToken"
    ) || key.ends_with("EncryptionSecret")
}

const REDACTED: &str = "<redacted: use --reveal>";

fn redact_value(y: &mut Yaml) {
    match y {
        Yaml::Hash(h) => {
            for (k, v) in h.iter_mut() {
                if k.as_str().is_some_and(is_secret_key) && !matches!(v, Yaml::Hash(_)) {
                    *v = Yaml::String(REDACTED.into());
                } else {
                    redact_value(v);
                }
            }
        }
        Yaml::Array(a) => a.iter_mut().for_each(redact_value),
        _ => {}
    }
}

/// The config with every secret value replaced, as YAML documents.
pub fn redact(text: &str) -> Result<String, ConfigError> {
    let mut out = String::new();
    for (i, mut doc) in parse(text)?.into_iter().enumerate() {
        redact_value(&mut doc);
        if i > 0 {
            out.push('\n');
        }
        let mut emitter = YamlEmitter::new(&mut out);
        emitter.multiline_strings(true);
        emitter
            .dump(&doc)
            .map_err(|e| ConfigError::Yaml(e.to_string()))?;
    }
    out.push('\n');
    Ok(out)
}

pub fn dir(profile: &Profile) -> PathBuf {
    profile.backup_dir().join(DIR)
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Stores `text` as `node`'s config (once per content) and returns its reference.
pub fn store(
    dir: &Path,
    node: &str,
    text: &str,
    recipients: &Recipients,
    read_at: Timestamp,
) -> Result<ConfigRef, ConfigError> {
    let sha256 = sha256_hex(text);
    let ext = if recipients.is_empty() {
        ".yaml"
    } else {
        ".yaml.age"
    };
    let file = format!("{}-{}{ext}", node.replace([':', '/'], "_"), &sha256[..16]);
    let path = dir.join(&file);
    let io = |source| ConfigError::Io {
        path: path.clone(),
        source,
    };
    if !path.exists() {
        crate::fsutil::create_private_dir(dir).map_err(io)?;
        let packing = Packing {
            compress: false,
            recipients: recipients.clone(),
        };
        let (_, bytes) = pack::pack(text.as_bytes(), Vec::new(), &packing).map_err(io)?;
        crate::fsutil::write_atomic(&path, &bytes, 0o600).map_err(io)?;
    }
    let id = identity(text).unwrap_or_default();
    Ok(ConfigRef {
        file,
        sha256,
        hostname: id.hostname,
        machine_type: id.machine_type,
        read_at,
        carried: false,
    })
}

/// Reads a stored config back, decrypting with `identities` when it is encrypted, and checks
/// it against its recorded hash.
pub fn load(
    dir: &Path,
    r: &ConfigRef,
    identities: Option<&Identities>,
) -> Result<String, ConfigError> {
    let path = dir.join(&r.file);
    let file = std::fs::File::open(&path).map_err(|source| ConfigError::Io {
        path: path.clone(),
        source,
    })?;
    let mut plain = Vec::new();
    pack::unpack(file, &mut plain, identities).map_err(|source| ConfigError::Unpack {
        path: path.clone(),
        source,
    })?;
    let text =
        String::from_utf8(plain).map_err(|_| ConfigError::Mismatch { path: path.clone() })?;
    if sha256_hex(&text) != r.sha256 {
        return Err(ConfigError::Mismatch { path });
    }
    Ok(text)
}

/// The plain text of a saved config, decrypted with `identity` or the profile's identity file;
/// errors say what to do (exit 2 for a key problem, 1 for a damaged file).
pub fn read(
    profile: &Profile,
    r: &ConfigRef,
    identity: Option<PathBuf>,
) -> Result<String, crate::error::UserError> {
    use crate::error::UserError;
    let encrypted = r.file.ends_with(".age");
    let ids = match identity.or_else(|| profile.identity_file()) {
        Some(p) if encrypted => {
            Some(Identities::load(&p).map_err(|e| UserError::usage(e.to_string()))?)
        }
        _ => None,
    };
    load(&dir(profile), r, ids.as_ref()).map_err(|e| {
        let hint = if encrypted && ids.is_none() {
            "it is encrypted: pass --identity FILE or set backup.identity_file"
        } else {
            "the file may be damaged; an older snapshot may hold a good copy (`configs show NODE --at SNAPSHOT`)"
        };
        UserError::failed(e.to_string()).hint(hint)
    })
}

/// What [`collect`] found.
#[derive(Debug, Default)]
pub struct Collected {
    pub refs: BTreeMap<String, ConfigRef>,
    /// One line per node whose config could not be read now (and what stands in for it).
    pub warnings: Vec<String>,
    /// The talosconfig lacks `os:admin` (no config could be read for that reason).
    pub permission_denied: bool,
}

/// Reads every node's machine config (directly from each node, in parallel) and stores it. A
/// node that does not answer keeps the newest config an earlier snapshot recorded for it.
pub async fn collect(profile: &Profile, talos: &Talosctl) -> Collected {
    let reads = read_all(profile, talos).await;
    store_all(profile, reads)
}

/// Every node's machine config as it answered, read side by side; nothing is stored.
pub async fn read_all(profile: &Profile, talos: &Talosctl) -> Reads {
    let talos = talos.clone().direct();
    let reads = futures::future::join_all(profile.file.nodes.iter().map(|n| {
        let talos = &talos;
        async move { (n.address.clone(), talos.machine_config(&n.address).await) }
    }))
    .await;
    Reads(reads)
}

/// What [`read_all`] got from each node, in profile order.
#[derive(Debug)]
pub struct Reads(Vec<(String, Result<String, talos::TalosError>)>);

/// Stores what [`read_all`] got (a node that failed keeps its last known config) and says
/// what each sidecar is to refer to.
pub fn store_all(profile: &Profile, reads: Reads) -> Collected {
    let dir = dir(profile);
    let recipients = &profile.file.backup.recipients;
    let Reads(reads) = reads;
    let mut out = Collected::default();
    let mut previous: Option<BTreeMap<String, ConfigRef>> = None;
    for (node, result) in reads {
        let error = match result {
            Ok(text) => match store(&dir, &node, &text, recipients, Timestamp::now()) {
                Ok(r) => {
                    out.refs.insert(node, r);
                    continue;
                }
                Err(e) => format!("cannot store it: {e}"),
            },
            Err(e) => {
                if talos::is_permission_denied(&e) {
                    out.permission_denied = true;
                }
                describe(&e)
            }
        };
        let known = previous
            .get_or_insert_with(|| last_known(profile))
            .get(&node)
            .cloned();
        let stand_in = match known {
            Some(mut r) => {
                let line = format!("keeping the one read at {}", r.read_at);
                r.carried = true;
                out.refs.insert(node.clone(), r);
                line
            }
            None => "no earlier snapshot has one".into(),
        };
        out.warnings.push(format!(
            "machine config of node {node} not saved: {error}; {stand_in}"
        ));
    }
    out
}

fn describe(e: &TalosError) -> String {
    if talos::is_permission_denied(e) {
        "the talosconfig lacks the os:admin role that reading machine configs needs".into()
    } else {
        e.message()
    }
}

/// The newest config each node has in any stored sidecar.
fn last_known(profile: &Profile) -> BTreeMap<String, ConfigRef> {
    let mut best: BTreeMap<String, ConfigRef> = BTreeMap::new();
    for sc in all_sidecars(profile) {
        for (node, r) in sc.machine_configs {
            if !dir(profile).join(&r.file).exists() {
                continue;
            }
            match best.get(&node) {
                Some(b) if b.read_at >= r.read_at => {}
                _ => {
                    best.insert(
                        node,
                        ConfigRef {
                            carried: false,
                            ..r
                        },
                    );
                }
            }
        }
    }
    best
}

/// Every sidecar that may refer to a config: scheduled snapshots and pre-upgrade sets.
pub fn all_sidecars(profile: &Profile) -> Vec<store::Sidecar> {
    let mut out = Vec::new();
    for d in [profile.backup_dir(), profile.sets_dir()] {
        let Ok(read) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in read.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let Ok(mut f) = std::fs::File::open(&p) else {
                continue;
            };
            let mut s = String::new();
            if f.read_to_string(&mut s).is_ok()
                && let Ok(sc) = serde_json::from_str::<store::Sidecar>(&s)
            {
                out.push(sc);
            }
        }
    }
    out
}

/// Config files no sidecar refers to any more (retention removed their last snapshot).
pub fn unreferenced(profile: &Profile) -> Vec<PathBuf> {
    let dir = dir(profile);
    let Ok(read) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let used: BTreeSet<String> = all_sidecars(profile)
        .into_iter()
        .flat_map(|sc| sc.machine_configs.into_values().map(|r| r.file))
        .collect();
    read.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yaml.age")) && !used.contains(n))
        .map(|n| dir.join(n))
        .collect()
}

/// Removes the configs no snapshot refers to; returns the paths removed.
pub fn collect_garbage(profile: &Profile) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for p in unreferenced(profile) {
        std::fs::remove_file(&p)?;
        removed.push(p);
    }
    Ok(removed)
}

/// Where a node's config is: the newest snapshot (or the named one) that records it.
#[derive(Debug, Clone)]
pub struct Located {
    pub snapshot: String,
    pub taken_at: Timestamp,
    pub config: ConfigRef,
}

/// The sidecars that record configs, newest first.
pub fn snapshots_with_configs(profile: &Profile) -> Vec<store::Sidecar> {
    let mut v: Vec<store::Sidecar> = all_sidecars(profile)
        .into_iter()
        .filter(|sc| !sc.machine_configs.is_empty())
        .collect();
    v.sort_by(|a, b| b.taken_at.cmp(&a.taken_at).then(b.file.cmp(&a.file)));
    v.dedup_by(|a, b| a.file == b.file && a.taken_at == b.taken_at);
    v
}

/// The config saved for `node` at `at` (a snapshot file name, or its time prefix), or in the
/// newest snapshot that has one.
pub fn locate(profile: &Profile, node: &str, at: Option<&str>) -> Option<Located> {
    snapshots_with_configs(profile)
        .into_iter()
        .filter(|sc| at.is_none_or(|a| sc.file.starts_with(a) || a.ends_with(&sc.file)))
        .find_map(|sc| {
            let config = sc.machine_configs.get(node)?.clone();
            Some(Located {
                snapshot: sc.file.clone(),
                taken_at: sc.taken_at,
                config,
            })
        })
}

/// Copies the referenced config files to the off-site target (`configs/<file>`), each once.
/// Returns how many were uploaded now.
pub async fn copy_offsite(
    profile: &Profile,
    target: &crate::offsite::Target,
    refs: &BTreeMap<String, ConfigRef>,
) -> Result<usize, String> {
    let dir = dir(profile);
    let mut uploaded = 0;
    let files: BTreeSet<&str> = refs.values().map(|r| r.file.as_str()).collect();
    for file in files {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if target
            .put_aux_if_absent(DIR, file, bytes)
            .await
            .map_err(|e| e.to_string())?
        {
            uploaded += 1;
        }
    }
    Ok(uploaded)
}

/// Removes off-site configs that no off-site snapshot's manifest refers to. Does nothing when a
/// talos-dr snapshot there has no readable manifest (its references are unknown).
pub async fn prune_offsite(target: &crate::offsite::Target) -> Result<Vec<String>, String> {
    let entries = target.list().await.map_err(|e| e.to_string())?;
    if entries.iter().any(|e| e.manifest.is_none()) {
        return Ok(Vec::new());
    }
    let used: BTreeSet<String> = entries
        .iter()
        .filter_map(|e| e.manifest.as_ref())
        .flat_map(|m| m.snapshot.machine_configs.values().map(|r| r.file.clone()))
        .collect();
    let mut removed = Vec::new();
    for name in target.list_aux(DIR).await.map_err(|e| e.to_string())? {
        if !used.contains(&name) {
            target
                .delete_aux(DIR, &name)
                .await
                .map_err(|e| e.to_string())?;
            removed.push(target.url_of(&format!("{DIR}/{name}")));
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "version: v1alpha1\nmachine:\n  type: controlplane\n  token: abc.def\n  ca:\n    crt: Q1JU\n    key: S0VZ\n  network:\n    hostname: cp-2\ncluster:\n  clusterName: homelab\n  controlPlane:\n    endpoint: https://10.5.0.10:6443\n  ca:\n    crt: Q0xVU1RFUkNB\n    key: U0VDUkVU\n  secretboxEncryptionSecret: c2VjcmV0Ym94\n  token: tok.en\n---\napiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: x\n";

    #[test]
    fn identity_of_a_config() {
        let id = identity(CFG).unwrap();
        assert_eq!(id.cluster_name.as_deref(), Some("homelab"));
        assert_eq!(id.machine_type.as_deref(), Some("controlplane"));
        assert_eq!(id.hostname.as_deref(), Some("cp-2"));
        assert!(id.cluster_ca.is_some());
        assert_eq!(id.mismatch(&id.clone()), None);
        let other = identity(&CFG.replace("Q0xVU1RFUkNB", "T1RIRVI=")).unwrap();
        assert!(id.mismatch(&other).unwrap().contains("cluster CA differs"));
        let named = identity(&CFG.replace("homelab", "lab2")).unwrap();
        assert!(id.mismatch(&named).unwrap().contains("\"lab2\""));
        assert!(identity("kind: Pod\n").is_err());
    }

    #[test]
    fn redaction_hides_every_secret_and_keeps_the_rest() {
        let r = redact(CFG).unwrap();
        for secret in ["abc.def", "S0VZ", "U0VDUkVU", "c2VjcmV0Ym94", "tok.en"] {
            assert!(!r.contains(secret), "{secret} leaked:\n{r}");
        }
        assert!(r.contains("homelab") && r.contains("Q0xVU1RFUkNB") && r.contains("cp-2"));
        assert!(
            r.contains("ExtensionServiceConfig"),
            "every document is shown"
        );
    }

    #[test]
    fn store_dedups_and_round_trips_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let id = age::x25519::Identity::generate();
        let recipients = Recipients::parse(&[id.to_public().to_string()]).unwrap();
        let now = Timestamp::now();
        let a = store(dir.path(), "10.5.0.12", CFG, &recipients, now).unwrap();
        let b = store(dir.path(), "10.5.0.12", CFG, &recipients, now).unwrap();
        assert_eq!(a.file, b.file);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let path = dir.path().join(&a.file);
        let raw = std::fs::read(&path).unwrap();
        assert!(raw.starts_with(b"age-encryption.org/v1"));
        assert!(!String::from_utf8_lossy(&raw).contains("homelab"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let key = dir.path().join("key.txt");
        crate::fsutil::write_atomic(&key, id.to_string().expose_secret().as_bytes(), 0o600)
            .unwrap();
        let ids = Identities::load(&key).unwrap();
        assert_eq!(load(dir.path(), &a, Some(&ids)).unwrap(), CFG);
        assert!(matches!(
            load(dir.path(), &a, None),
            Err(ConfigError::Unpack { .. })
        ));
        let c = store(
            dir.path(),
            "10.5.0.12",
            &CFG.replace("cp-2", "cp-9"),
            &recipients,
            now,
        )
        .unwrap();
        assert_ne!(a.file, c.file);
    }
    use age::secrecy::ExposeSecret;
}
