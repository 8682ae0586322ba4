//! Cluster profiles: one directory per cluster holding `profile.toml`, credentials and backups.
//!
//! A profile is found by name under `$TALOS_DR_HOME` (default `$XDG_CONFIG_HOME/talos-dr`, i.e.
//! `~/.config/talos-dr`), or given directly as a directory with `--config-dir`. Relative paths
//! inside `profile.toml` are relative to that directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

use crate::config::{ByteSize, HumanDuration, Recipients, TargetUrl};
use crate::pack::Packing;
use crate::pve::PveConfig;

pub const PROFILE_FILE: &str = "profile.toml";
pub const ENV_HOME: &str = "TALOS_DR_HOME";

#[derive(Debug, Error)]
pub enum ProfileError {
    #[error("no profile selected: pass `-p NAME` (or set TALOS_DR_PROFILE) or `--config-dir DIR`")]
    NoneSelected,
    #[error("profile {name:?} not found: {path} does not exist")]
    NotFound { name: String, path: PathBuf },
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: InvalidProfile,
    },
    #[error("{}: {source}", source.name)]
    Name {
        #[source]
        source: InvalidName,
    },
    #[error("cannot find the home directory: set TALOS_DR_HOME or use --config-dir")]
    NoHome,
}

/// Where a profile lives.
#[derive(Debug, Clone)]
pub struct Location {
    pub name: Option<String>,
    pub config_dir: PathBuf,
}

/// The directory that holds named profiles.
pub fn profiles_home() -> Result<PathBuf, ProfileError> {
    if let Some(home) = std::env::var_os(ENV_HOME).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("talos-dr"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".config").join("talos-dr"))
        .ok_or(ProfileError::NoHome)
}

/// Resolves `--config-dir` / `--profile` to a directory (which may not exist yet).
pub fn locate(name: Option<&str>, config_dir: Option<&Path>) -> Result<Location, ProfileError> {
    match (config_dir, name) {
        (Some(dir), name) => Ok(Location {
            name: name.map(str::to_owned),
            config_dir: dir.to_path_buf(),
        }),
        (None, Some(name)) => {
            validate_profile_name(name).map_err(|source| ProfileError::Name { source })?;
            Ok(Location {
                name: Some(name.to_owned()),
                config_dir: profiles_home()?.join(name),
            })
        }
        (None, None) => Err(ProfileError::NoneSelected),
    }
}

/// `talos-dr -p NAME` if `dir` is where `-p NAME` leads, else `talos-dr --config-dir DIR`.
pub fn cli_for(dir: &Path, name: &str) -> String {
    match profiles_home() {
        Ok(home) if home.join(name) == dir => format!("talos-dr -p {name}"),
        _ => format!("talos-dr --config-dir {}", dir.display()),
    }
}

/// A profile name that cannot be a directory name under the profiles' home.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "profile name {name:?} is not valid: use letters, digits, '-', '_' or '.' (not first), at most 64 characters"
)]
pub struct InvalidName {
    pub name: String,
}

pub fn validate_profile_name(name: &str) -> Result<(), InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            name: name.to_owned(),
        })
    }
}

/// What is wrong with a `profile.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidProfile {
    /// Not TOML, an unknown key, or a value of the wrong type or that does not parse; toml's
    /// message gives the line and the key's own message what is expected.
    #[error("{0}")]
    Syntax(String),
    /// A value that parses but cannot be used (`key` as written in the file, e.g.
    /// `backup.keep_last` or `nodes[1].address`); the message names it and what is expected.
    #[error("{message}")]
    Key { key: String, message: String },
}

impl InvalidProfile {
    fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidProfile::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[serde(rename = "controlplane")]
    ControlPlane,
    Worker,
}

/// The Proxmox VM behind a node.
pub use crate::pve::VmRef as VmLocation;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub address: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmLocation>,
    /// MAC address of the VM's `net0` (`BC:24:11:…`): a VM rebuilt from a template gets it, so
    /// the DHCP reservation gives it the node's address. `profile discover --write` records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    #[serde(default = "default_backup_dir")]
    pub dir: PathBuf,
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    #[serde(default = "default_keep_last")]
    pub keep_last: u32,
    /// Calendar retention (restic's rules, UTC): the newest valid snapshot of each of the newest
    /// N hours / days / ISO weeks / months / years that have one; 0 turns a rule off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_hourly: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_daily: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_weekly: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_monthly: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_yearly: u32,
    /// zstd-compress stored copies (local when `encrypt` is set, and off-site): `.zst`.
    #[serde(default)]
    pub compress: bool,
    /// Encrypt local copies with age to `recipients` (`.age`). Off-site copies are encrypted
    /// whenever `recipients` is set.
    #[serde(default)]
    pub encrypt: bool,
    /// age X25519 recipients (`age1…`) that can decrypt the copies, parsed when the profile loads.
    #[serde(
        default,
        skip_serializing_if = "Recipients::is_empty",
        deserialize_with = "backup_recipients"
    )]
    pub recipients: Recipients,
    /// age identity file (`age-keygen` output) used by `restore` and `verify` to decrypt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<PathBuf>,
    /// Prometheus textfile-collector file written after every `snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_file: Option<PathBuf>,
    /// Shell command run (`sh -c`) when `snapshot` fails; the error is in TALOS_DR_* variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_command: Option<String>,
    /// Recovery point objective for `status`: the newest valid snapshot may be this old (default:
    /// twice the installed schedule's interval, else 24h).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "backup_duration"
    )]
    pub rpo: Option<HumanDuration>,
    /// How often a restore drill (`talos-dr drill`) should succeed, for `status` (default 90d).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "backup_duration"
    )]
    pub drill_every: Option<HumanDuration>,
    /// etcd's backend quota (`quota-backend-bytes`) when the cluster sets one, for `status`:
    /// `"8GiB"`, `"500MB"` or bytes (default: etcd's and Talos' 2 GiB).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "backup_quota"
    )]
    pub etcd_quota: Option<ByteSize>,
}

impl Default for Backup {
    fn default() -> Self {
        Self {
            dir: default_backup_dir(),
            retention_days: default_retention_days(),
            keep_last: default_keep_last(),
            keep_hourly: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            keep_yearly: 0,
            compress: false,
            encrypt: false,
            recipients: Recipients::default(),
            identity_file: None,
            metrics_file: None,
            notify_command: None,
            rpo: None,
            drill_every: None,
            etcd_quota: None,
        }
    }
}

impl Backup {
    /// How scheduled snapshots are stored in the backup directory: compressed when `compress`,
    /// encrypted when `encrypt`.
    pub fn local_packing(&self) -> Packing {
        Packing {
            compress: self.compress,
            recipients: if self.encrypt {
                self.recipients.clone()
            } else {
                Recipients::default()
            },
        }
    }

    /// How copies are packed for `[offsite]`: compressed when `compress`, encrypted whenever
    /// there are recipients.
    pub fn offsite_packing(&self) -> Packing {
        Packing {
            compress: self.compress,
            recipients: self.recipients.clone(),
        }
    }
}

/// Settings' own messages say what is wrong with the value; these name the key it came from.
fn keyed<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D, key: &str) -> Result<T, D::Error> {
    T::deserialize(d).map_err(|e| serde::de::Error::custom(format!("{key}: {e}")))
}

fn backup_recipients<'de, D: Deserializer<'de>>(d: D) -> Result<Recipients, D::Error> {
    keyed(d, "backup.recipients")
}

fn backup_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HumanDuration>, D::Error> {
    keyed(d, "backup.rpo / backup.drill_every").map(Some)
}

fn backup_quota<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
    keyed(d, "backup.etcd_quota").map(Some)
}

fn offsite_url<'de, D: Deserializer<'de>>(d: D) -> Result<TargetUrl, D::Error> {
    keyed(d, "offsite.url")
}

fn default_backup_dir() -> PathBuf {
    PathBuf::from("etcd-backups")
}
fn default_retention_days() -> u32 {
    7
}
fn default_keep_last() -> u32 {
    3
}
fn is_zero(n: &u32) -> bool {
    *n == 0
}
fn default_offsite_retries() -> u32 {
    3
}

/// `[offsite]`: where verified snapshots are copied after each `snapshot`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offsite {
    /// `s3://bucket/prefix` (any S3-compatible service) or `file:///mnt/nfs/talos`.
    #[serde(deserialize_with = "offsite_url")]
    pub url: TargetUrl,
    /// S3 endpoint for non-AWS services (MinIO, Ceph RGW, Backblaze B2); `http://` allows plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, then us-east-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as MinIO and Ceph usually need.
    #[serde(default)]
    pub path_style: bool,
    /// File with the S3 keys (`aws_access_key_id = …` / `AWS_ACCESS_KEY_ID=…` lines, mode 0600);
    /// without it the standard AWS_* environment variables are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Whole-upload retries after the per-request ones (exponential backoff).
    #[serde(default = "default_offsite_retries")]
    pub retries: u32,
}

fn default_talosconfig() -> PathBuf {
    PathBuf::from("talosconfig")
}
fn default_kubeconfig() -> PathBuf {
    PathBuf::from("kubeconfig")
}

/// `profile.toml`, as written by the user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    pub name: String,
    #[serde(default = "default_talosconfig")]
    pub talosconfig: PathBuf,
    #[serde(default = "default_kubeconfig")]
    pub kubeconfig: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub backup: Backup,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxmox: Option<PveConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsite: Option<Offsite>,
}

/// A loaded, validated profile with every path resolved.
#[derive(Debug, Clone)]
pub struct Profile {
    pub config_dir: PathBuf,
    pub file: ProfileFile,
}

impl Profile {
    pub fn load(location: &Location) -> Result<Self, ProfileError> {
        let path = location.config_dir.join(PROFILE_FILE);
        if !location.config_dir.exists() {
            return Err(ProfileError::NotFound {
                name: location
                    .name
                    .clone()
                    .unwrap_or_else(|| location.config_dir.display().to_string()),
                path: location.config_dir.clone(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ProfileError::Read {
            path: path.clone(),
            source,
        })?;
        let file = parse(&text).map_err(|source| ProfileError::Invalid {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            config_dir: location.config_dir.clone(),
            file,
        })
    }

    pub fn name(&self) -> &str {
        &self.file.name
    }

    /// How to name this profile on the command line, for hints: `talos-dr -p NAME` when it is
    /// the named profile's directory, else `talos-dr --config-dir DIR`.
    pub fn cli(&self) -> String {
        cli_for(&self.config_dir, self.name())
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.config_dir.join(p)
        }
    }

    pub fn talosconfig(&self) -> PathBuf {
        self.resolve(&self.file.talosconfig)
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.resolve(&self.file.kubeconfig)
    }
    pub fn backup_dir(&self) -> PathBuf {
        self.resolve(&self.file.backup.dir)
    }
    pub fn runs_dir(&self) -> PathBuf {
        self.config_dir.join("runs")
    }
    pub fn sets_dir(&self) -> PathBuf {
        self.config_dir.join("sets")
    }
    /// Where `restore` unpacks compressed, encrypted or downloaded snapshots.
    pub fn unpacked_dir(&self) -> PathBuf {
        self.config_dir.join("unpacked")
    }
    pub fn identity_file(&self) -> Option<PathBuf> {
        self.file
            .backup
            .identity_file
            .as_deref()
            .map(|p| self.resolve(p))
    }
    pub fn metrics_file(&self) -> Option<PathBuf> {
        self.file
            .backup
            .metrics_file
            .as_deref()
            .map(|p| self.resolve(p))
    }
    pub fn offsite_credentials_file(&self) -> Option<PathBuf> {
        self.file
            .offsite
            .as_ref()
            .and_then(|o| o.credentials_file.as_deref())
            .map(|p| self.resolve(p))
    }

    pub fn control_plane(&self) -> impl Iterator<Item = &Node> {
        self.file
            .nodes
            .iter()
            .filter(|n| n.role == Role::ControlPlane)
    }
    pub fn workers(&self) -> impl Iterator<Item = &Node> {
        self.file.nodes.iter().filter(|n| n.role == Role::Worker)
    }
    pub fn control_plane_addresses(&self) -> Vec<String> {
        self.control_plane().map(|n| n.address.clone()).collect()
    }
    pub fn worker_addresses(&self) -> Vec<String> {
        self.workers().map(|n| n.address.clone()).collect()
    }
}

/// Parses and validates `profile.toml` text. Errors name the key and what is expected.
pub fn parse(text: &str) -> Result<ProfileFile, InvalidProfile> {
    let file: ProfileFile = toml::from_str(text)
        .map_err(|e| InvalidProfile::Syntax(e.to_string().trim().to_owned()))?;
    validate(&file)?;
    Ok(file)
}

/// What deserializing cannot check alone: ranges, duplicates, and keys that need each other.
fn validate(file: &ProfileFile) -> Result<(), InvalidProfile> {
    if file.name.trim().is_empty() {
        return Err(InvalidProfile::key("name", "key `name` must not be empty"));
    }
    if !file.nodes.iter().any(|n| n.role == Role::ControlPlane) {
        return Err(InvalidProfile::key(
            "nodes",
            "no control-plane node: add at least one [[nodes]] entry with role = \"controlplane\"",
        ));
    }
    let mut seen = HashSet::new();
    for (i, node) in file.nodes.iter().enumerate() {
        let a = node.address.trim();
        if a.is_empty() || a.contains(char::is_whitespace) || a.contains(',') {
            return Err(InvalidProfile::key(
                format!("nodes[{i}].address"),
                format!(
                    "nodes[{i}].address {:?} is not valid: expected one IP address or hostname",
                    node.address
                ),
            ));
        }
        if !seen.insert(a) {
            return Err(InvalidProfile::key(
                format!("nodes[{i}].address"),
                format!("nodes[{i}].address {a:?} appears twice: every node must be listed once"),
            ));
        }
        if let Some(vm) = &node.vm
            && (vm.vmid < 100 || vm.node.trim().is_empty())
        {
            return Err(InvalidProfile::key(
                format!("nodes[{i}].vm"),
                format!(
                    "nodes[{i}].vm is not valid: expected {{ node = \"pve1\", vmid = 101 }} (Proxmox VMIDs start at 100)"
                ),
            ));
        }
    }
    if file.backup.keep_last == 0 {
        return Err(InvalidProfile::key(
            "backup.keep_last",
            "backup.keep_last must be at least 1: the newest snapshot is never deleted",
        ));
    }
    if let Some(px) = &file.proxmox
        && px.max_parallel == 0
    {
        return Err(InvalidProfile::key(
            "proxmox.max_parallel",
            "proxmox.max_parallel must be at least 1",
        ));
    }
    // Recipients and the off-site URL were parsed with the file; only their combination is left.
    if file.backup.encrypt && file.backup.recipients.is_empty() {
        return Err(InvalidProfile::key(
            "backup.encrypt",
            "backup.encrypt = true needs backup.recipients = [\"age1…\"] (see `age-keygen -y KEYFILE`)",
        ));
    }
    Ok(())
}

/// What to record about one `[[nodes]]` entry (see [`update_nodes`]).
#[derive(Debug, Clone, Default)]
pub struct NodeUpdate {
    pub address: String,
    pub vm: Option<VmLocation>,
    pub mac: Option<String>,
}

/// Sets `vm = { node, vmid }` (and `mac`) on the matching `[[nodes]]` entries of the profile file
/// at `path`, keeping everything else (comments, order, formatting) as the user wrote it. The
/// result must load, or nothing is written. Returns how many entries changed.
pub fn update_nodes(path: &Path, updates: &[NodeUpdate]) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut written = 0;
    if let Some(nodes) = doc
        .get_mut("nodes")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
    {
        for table in nodes.iter_mut() {
            let address = table
                .get("address")
                .and_then(toml_edit::Item::as_str)
                .unwrap_or_default()
                .to_owned();
            let Some(u) = updates.iter().find(|u| u.address == address) else {
                continue;
            };
            if let Some(vm) = &u.vm {
                let mut inline = toml_edit::InlineTable::new();
                inline.insert("node", vm.node.as_str().into());
                inline.insert("vmid", i64::from(vm.vmid).into());
                table.insert("vm", toml_edit::value(inline));
            }
            if let Some(mac) = &u.mac {
                table.insert("mac", toml_edit::value(mac.as_str()));
            }
            if u.vm.is_some() || u.mac.is_some() {
                written += 1;
            }
        }
    }
    let new_text = doc.to_string();
    parse(&new_text).map_err(|m| format!("the updated profile would be invalid: {m}"))?;
    crate::fsutil::write_atomic(path, new_text.as_bytes(), 0o644)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(written)
}

/// Renders a profile as commented TOML for `profile init`.
pub fn render(file: &ProfileFile) -> String {
    let mut out = String::new();
    out.push_str("# talos-dr profile. Reference: README.md, section \"Profile reference\".\n");
    out.push_str(&format!("name = {}\n", toml_str(&file.name)));
    out.push_str(&format!(
        "talosconfig = {}   # relative to this directory, or absolute\n",
        toml_str(&file.talosconfig.display().to_string())
    ));
    out.push_str(&format!(
        "kubeconfig = {}\n",
        toml_str(&file.kubeconfig.display().to_string())
    ));
    if let Some(ctx) = &file.context {
        out.push_str(&format!("context = {}\n", toml_str(ctx)));
    }
    for (i, node) in file.nodes.iter().enumerate() {
        out.push_str("\n[[nodes]]\n");
        out.push_str(&format!("address = {}\n", toml_str(&node.address)));
        let role = match node.role {
            Role::ControlPlane => "controlplane",
            Role::Worker => "worker",
        };
        out.push_str(&format!("role = \"{role}\"\n"));
        if let Some(h) = &node.hostname {
            out.push_str(&format!("hostname = {}\n", toml_str(h)));
        }
        match &node.vm {
            Some(vm) => out.push_str(&format!(
                "vm = {{ node = {}, vmid = {} }}\n",
                toml_str(&vm.node),
                vm.vmid
            )),
            None if i == 0 => out.push_str(
                "# vm = { node = \"pve1\", vmid = 101 }   # the Proxmox VM behind this node\n",
            ),
            None => {}
        }
    }
    out.push_str("\n[backup]\n");
    out.push_str(&format!(
        "dir = {}\n",
        toml_str(&file.backup.dir.display().to_string())
    ));
    out.push_str(&format!(
        "retention_days = {}   # delete snapshots older than this…\n",
        file.backup.retention_days
    ));
    out.push_str(&format!(
        "keep_last = {}        # …but never the newest N valid ones\n",
        file.backup.keep_last
    ));
    out.push_str(
        "# keep_daily = 7                 # calendar retention (UTC): newest of each of 7 days,\n\
         # keep_weekly = 4                #   4 ISO weeks, 6 months… (also keep_hourly, keep_yearly)\n\
         # keep_monthly = 6\n",
    );
    out.push_str(
        "# compress = true                # zstd (.zst) for stored and off-site copies\n\
         # recipients = [\"age1…\"]        # encrypt copies with age (`age-keygen -y KEYFILE`)\n\
         # identity_file = \"/root/talos-dr-age.key\"   # to decrypt for restore/verify\n\
         # metrics_file = \"/var/lib/prometheus/node-exporter/talos-dr.prom\"\n\
         # notify_command = 'logger -t talos-dr \"$TALOS_DR_ERROR\"'\n\
         \n# [offsite]\n# url = \"s3://bucket/prefix\"   # or \"file:///mnt/nfs/talos\"\n\
         # endpoint = \"https://minio.lan:9000\"   # S3-compatible services\n\
         # path_style = true\n\
         # S3 keys: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or credentials_file = \"s3-credentials\" (mode 0600)\n",
    );
    out.push_str(
        "\n# [proxmox]\n# endpoint = \"https://pve1.lan:8006\"\n# fingerprint = \"AA:BB:…\"   # or ca_file = \"pve-root-ca.pem\"\n# token: PROXMOX_VE_API_TOKEN=USER@REALM!TOKENID=SECRET, or token_file = \"pve-token\" (mode 0600)\n",
    );
    out
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "homelab"
talosconfig = "talosconfig"
context = "homelab"

[[nodes]]
address = "10.0.0.11"
role = "controlplane"
vm = { node = "pve1", vmid = 101 }

[[nodes]]
address = "10.0.0.21"
role = "worker"

[backup]
dir = "etcd-backups"
retention_days = 7
keep_last = 3

[proxmox]
endpoint = "https://pve1.lan:8006"
fingerprint = "AA:BB"
snapshot_before_restore = true
"#;

    #[test]
    fn design_example_parses() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.name, "homelab");
        assert_eq!(p.nodes.len(), 2);
        assert_eq!(
            p.nodes[0].vm,
            Some(VmLocation {
                node: "pve1".into(),
                vmid: 101
            })
        );
        assert_eq!(p.backup.keep_last, 3);
        assert!(p.proxmox.unwrap().snapshot_before_restore);
    }

    #[test]
    fn render_round_trips() {
        let p = parse(GOOD).unwrap();
        let again = parse(&render(&p)).unwrap();
        assert_eq!(again.nodes.len(), 2);
        assert_eq!(again.nodes[0].vm, p.nodes[0].vm);
        assert_eq!(again.backup.retention_days, 7);
    }

    #[test]
    fn errors_name_the_key_and_expectation() {
        let bad_role = GOOD.replace("role = \"worker\"", "role = \"wrker\"");
        let e = parse(&bad_role).unwrap_err().to_string();
        assert!(e.contains("wrker") && e.contains("controlplane"), "{e}");

        let unknown = GOOD.replace("keep_last = 3", "keep_lst = 3");
        let e = parse(&unknown).unwrap_err().to_string();
        assert!(e.contains("keep_lst"), "{e}");

        let zero = GOOD.replace("keep_last = 3", "keep_last = 0");
        let e = parse(&zero).unwrap_err().to_string();
        assert!(e.contains("backup.keep_last"), "{e}");

        let no_cp = GOOD.replace("role = \"controlplane\"", "role = \"worker\"");
        assert!(
            parse(&no_cp)
                .unwrap_err()
                .to_string()
                .contains("control-plane")
        );

        let dup = GOOD.replace("10.0.0.21", "10.0.0.11");
        assert!(
            parse(&dup)
                .unwrap_err()
                .to_string()
                .contains("appears twice")
        );
    }

    #[test]
    fn packing_and_offsite_keys_are_checked() {
        let with = |extra: &str| GOOD.replace("keep_last = 3", &format!("keep_last = 3\n{extra}"));
        let e = parse(&with("encrypt = true")).unwrap_err().to_string();
        assert!(e.contains("backup.recipients"), "{e}");
        let e = parse(&with("recipients = [\"age1nope\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("backup.recipients") && e.contains("age1nope"),
            "{e}"
        );
        let e = parse(&format!("{GOOD}\n[offsite]\nurl = \"ftp://x/y\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("offsite.url") && e.contains("ftp"), "{e}");
        let p = parse(&format!(
            "{GOOD}\n[offsite]\nurl = \"s3://b/p\"\nendpoint = \"http://127.0.0.1:9000\"\npath_style = true\n"
        ))
        .unwrap();
        let o = p.offsite.unwrap();
        assert!(o.path_style);
        assert_eq!(o.retries, 3);
    }
}
