//! Playbooks: ordered lists of stages, as TOML. Built-ins are compiled in; a file with the same
//! name in `<config_dir>/playbooks/` overrides one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::HumanDuration;

pub const BUILT_IN: [(&str, &str); 4] = [
    ("restore", include_str!("../../playbooks/restore.toml")),
    ("drill", include_str!("../../playbooks/drill.toml")),
    (
        "pre-upgrade",
        include_str!("../../playbooks/pre-upgrade.toml"),
    ),
    ("rollback", include_str!("../../playbooks/rollback.toml")),
];

/// Every stage kind the engine knows. Unknown kinds are load errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageKind {
    Preflight,
    PreRestoreSnapshot,
    ProxmoxCheck,
    EtcdRecover,
    PostVerify,
    Report,
    UpgradePreflight,
    SetEtcdSnapshot,
    VmSnapshots,
    RecordSet,
    SetRetention,
    RollbackPreflight,
    RollbackVms,
    WaitHealthy,
}

impl StageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Preflight => "preflight",
            StageKind::PreRestoreSnapshot => "pre-restore-snapshot",
            StageKind::ProxmoxCheck => "proxmox-check",
            StageKind::EtcdRecover => "etcd-recover",
            StageKind::PostVerify => "post-verify",
            StageKind::Report => "report",
            StageKind::UpgradePreflight => "upgrade-preflight",
            StageKind::SetEtcdSnapshot => "set-etcd-snapshot",
            StageKind::VmSnapshots => "vm-snapshots",
            StageKind::RecordSet => "record-set",
            StageKind::SetRetention => "set-retention",
            StageKind::RollbackPreflight => "rollback-preflight",
            StageKind::RollbackVms => "rollback-vms",
            StageKind::WaitHealthy => "wait-healthy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confirm {
    #[default]
    No,
    /// A yes/no question.
    Yes,
    /// The profile name must be typed.
    Typed,
}

/// Conditions under which a stage runs at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    /// The profile has a `[proxmox]` section.
    Proxmox,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub id: String,
    pub kind: StageKind,
    #[serde(default)]
    pub confirm: Confirm,
    /// e.g. "10m"; the stage fails (checkpoint saved) when it runs longer. Parsed on load, kept
    /// as written (the plan's fingerprint covers the text).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// A failure is recorded but does not stop the run.
    #[serde(default)]
    pub best_effort: bool,
    #[serde(default)]
    pub when: Option<When>,
}

impl StageSpec {
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.as_ref().map(HumanDuration::get)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    pub name: String,
    pub summary: String,
    #[serde(default)]
    pub destructive: bool,
    pub stages: Vec<StageSpec>,
}

impl Playbook {
    /// sha256 over the canonical JSON of the plan; a checkpoint records it so a changed playbook
    /// is not resumed by accident.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(canonical))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    #[error("no playbook named {0:?} (built-in: restore, drill, pre-upgrade, rollback)")]
    Unknown(String),
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("{origin}: {source}")]
    Parse {
        origin: String,
        #[source]
        source: ParseError,
    },
}

/// What is wrong with a playbook's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not TOML, an unknown kind or key, or a value that does not parse (toml names the line).
    #[error("{0}")]
    Toml(String),
    #[error("stage id {0:?} is used twice")]
    DuplicateId(String),
    #[error("a playbook needs at least one [[stages]] entry")]
    NoStages,
}

/// Where a playbook came from, for messages.
pub fn origin(name: &str, config_dir: &Path) -> (String, Option<PathBuf>) {
    let path = config_dir.join("playbooks").join(format!("{name}.toml"));
    if path.is_file() {
        (path.display().to_string(), Some(path))
    } else {
        (format!("built-in playbook {name}"), None)
    }
}

/// Loads `name`, preferring `<config_dir>/playbooks/<name>.toml`.
pub fn load(name: &str, config_dir: &Path) -> Result<Playbook, PlaybookError> {
    let (origin, path) = origin(name, config_dir);
    let text = match path {
        Some(p) => std::fs::read_to_string(&p).map_err(|e| PlaybookError::Invalid {
            origin: origin.clone(),
            message: e.to_string(),
        })?,
        None => BUILT_IN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| (*t).to_owned())
            .ok_or_else(|| PlaybookError::Unknown(name.to_owned()))?,
    };
    parse(&text).map_err(|source| PlaybookError::Parse { origin, source })
}

/// Parses and checks a playbook; errors carry the line (from toml) and what is expected.
pub fn parse(text: &str) -> Result<Playbook, ParseError> {
    let pb: Playbook =
        toml::from_str(text).map_err(|e| ParseError::Toml(e.to_string().trim().to_owned()))?;
    let mut seen = std::collections::HashSet::new();
    for s in &pb.stages {
        if !seen.insert(s.id.as_str()) {
            return Err(ParseError::DuplicateId(s.id.clone()));
        }
    }
    if pb.stages.is_empty() {
        return Err(ParseError::NoStages);
    }
    Ok(pb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_load() {
        let dir = tempfile::tempdir().unwrap();
        for (name, _) in BUILT_IN {
            let pb = load(name, dir.path()).unwrap();
            assert_eq!(pb.name, name);
            let key = match name {
                "pre-upgrade" => StageKind::VmSnapshots,
                "rollback" => StageKind::RollbackVms,
                _ => StageKind::EtcdRecover,
            };
            assert!(pb.stages.iter().any(|s| s.kind == key), "{name}");
        }
    }

    #[test]
    fn unknown_kind_and_option_name_the_line() {
        let bad =
            "name = \"x\"\nsummary = \"s\"\n\n[[stages]]\nid = \"a\"\nkind = \"etcd-recovr\"\n";
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains("line 6") && e.contains("etcd-recover"), "{e}");
        let bad = "name = \"x\"\nsummary = \"s\"\n\n[[stages]]\nid = \"a\"\nkind = \"report\"\nretries = 3\n";
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains("line 7") && e.contains("retries"), "{e}");
    }

    #[test]
    fn timeouts_parse_on_load_and_keep_their_text() {
        let text = "name = \"x\"\nsummary = \"s\"\n\n[[stages]]\nid = \"a\"\nkind = \"report\"\ntimeout = \"1h30m\"\n";
        let pb = parse(text).unwrap();
        assert_eq!(pb.stages[0].timeout(), Some(Duration::from_secs(5400)));
        // The fingerprint hashes the timeout as written, as before it was parsed.
        let json = serde_json::to_string(&pb).unwrap();
        assert!(json.contains("\"timeout\":\"1h30m\""), "{json}");
        let e = parse(&text.replace("1h30m", "soon"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 7") && e.contains("\"soon\""), "{e}");
    }

    #[test]
    fn override_in_config_dir_wins_and_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let builtin = load("restore", dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("playbooks")).unwrap();
        let text = BUILT_IN[0]
            .1
            .replace("timeout = \"20m\"", "timeout = \"30m\"");
        std::fs::write(dir.path().join("playbooks/restore.toml"), text).unwrap();
        let custom = load("restore", dir.path()).unwrap();
        assert_ne!(builtin.fingerprint(), custom.fingerprint());
    }
}
