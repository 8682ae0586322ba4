//! Playbooks: ordered lists of stages, as TOML. Built-ins are compiled in; a file with the same
//! name in `<config_dir>/playbooks/` overrides one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::stage::{Registry, Stage};
use crate::config::HumanDuration;

pub const BUILT_IN: [(&str, &str); 6] = [
    ("restore", include_str!("../../playbooks/restore.toml")),
    ("drill", include_str!("../../playbooks/drill.toml")),
    (
        "pre-upgrade",
        include_str!("../../playbooks/pre-upgrade.toml"),
    ),
    ("rollback", include_str!("../../playbooks/rollback.toml")),
    (
        "rebuild-node",
        include_str!("../../playbooks/rebuild-node.toml"),
    ),
    (
        "restore-rebuild",
        include_str!("../../playbooks/restore-rebuild.toml"),
    ),
];

/// A stage kind from the registry. It serialises as its name, so plan fingerprints and
/// checkpoints read the same as before the registry existed.
#[derive(Clone, Copy)]
pub struct StageKind(&'static dyn Stage);

impl StageKind {
    pub fn stage(self) -> &'static dyn Stage {
        self.0
    }
    pub fn as_str(self) -> &'static str {
        self.0.kind()
    }
}

impl PartialEq for StageKind {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for StageKind {}

impl std::fmt::Debug for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for StageKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Ordered from weakest to strictest: the confirmation that runs is the stricter of the
/// playbook's and the stage's minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
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

/// One `[[stages]]` entry, resolved against the registry. Field order is the canonical JSON of
/// the plan fingerprint: keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageSpec {
    pub id: String,
    pub kind: StageKind,
    /// What the playbook asked for; see [`StageSpec::confirm`] for what runs.
    #[serde(rename = "confirm")]
    pub declared_confirm: Confirm,
    /// e.g. "10m"; the stage fails (checkpoint saved) when it runs longer. Parsed on load, kept
    /// as written (the plan's fingerprint covers the text).
    pub timeout: Option<HumanDuration>,
    /// A failure is recorded but does not stop the run.
    pub best_effort: bool,
    pub when: Option<When>,
}

impl StageSpec {
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.as_ref().map(HumanDuration::get)
    }
    /// The confirmation that runs: the stricter of the playbook's and the stage's own minimum,
    /// so no playbook can remove the typed confirmation of a destructive stage.
    pub fn confirm(&self) -> Confirm {
        self.declared_confirm.max(self.kind.stage().min_confirm())
    }
    pub fn stage(&self) -> &'static dyn Stage {
        self.kind.stage()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Playbook {
    pub name: String,
    pub summary: String,
    /// Derived from the stages: a playbook is destructive when one of its stages is.
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

/// A playbook file as written; [`parse`] resolves it against the registry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaybookFile {
    name: String,
    summary: String,
    /// Older playbooks declared it; it is derived from the stages now and ignored here.
    #[serde(default, rename = "destructive")]
    _destructive: Option<bool>,
    stages: Vec<StageEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StageEntry {
    id: String,
    kind: toml::Spanned<String>,
    #[serde(default)]
    confirm: Confirm,
    #[serde(default)]
    timeout: Option<HumanDuration>,
    #[serde(default)]
    best_effort: bool,
    #[serde(default)]
    when: Option<When>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    #[error("no playbook named {0:?} (built-in: restore, drill, pre-upgrade, rollback)")]
    Unknown(String),
    #[error("{origin}: {source}")]
    Invalid {
        origin: String,
        #[source]
        source: ParseError,
    },
    #[error("{origin}: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
}

/// What is wrong with a playbook's text; messages name the line or the stage.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{0}")]
    Toml(String),
    #[error("line {line}: unknown stage kind `{kind}`, expected one of {expected}")]
    UnknownKind {
        line: usize,
        kind: String,
        expected: String,
    },
    #[error("stage id {0:?} is used twice")]
    DuplicateId(String),
    #[error(
        "stage {stage:?} ({kind}) reads the outputs of a `{needs}` stage, which must come before it in the playbook"
    )]
    MissingInput {
        stage: String,
        kind: &'static str,
        needs: &'static str,
    },
    #[error("a playbook needs at least one [[stages]] entry")]
    Empty,
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
pub fn load(name: &str, config_dir: &Path, registry: &Registry) -> Result<Playbook, PlaybookError> {
    let (origin, path) = origin(name, config_dir);
    let text = match path {
        Some(p) => std::fs::read_to_string(&p).map_err(|source| PlaybookError::Read {
            origin: origin.clone(),
            source,
        })?,
        None => BUILT_IN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| (*t).to_owned())
            .ok_or_else(|| PlaybookError::Unknown(name.to_owned()))?,
    };
    parse(&text, registry).map_err(|source| PlaybookError::Invalid { origin, source })
}

/// Parses and checks a playbook: known kinds, unique ids, valid timeouts, and every stage's
/// required inputs produced by an earlier stage.
pub fn parse(text: &str, registry: &Registry) -> Result<Playbook, ParseError> {
    let file: PlaybookFile =
        toml::from_str(text).map_err(|e| ParseError::Toml(e.to_string().trim().to_owned()))?;
    if file.stages.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut seen = std::collections::HashSet::new();
    let mut stages: Vec<StageSpec> = Vec::with_capacity(file.stages.len());
    for e in file.stages {
        if !seen.insert(e.id.clone()) {
            return Err(ParseError::DuplicateId(e.id));
        }
        let stage = registry
            .get(e.kind.get_ref())
            .ok_or_else(|| ParseError::UnknownKind {
                line: text[..e.kind.span().start].lines().count().max(1),
                kind: e.kind.get_ref().clone(),
                expected: registry
                    .kinds()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        for needs in stage.requires() {
            if !stages.iter().any(|s| s.kind.as_str() == *needs) {
                return Err(ParseError::MissingInput {
                    stage: e.id.clone(),
                    kind: stage.kind(),
                    needs,
                });
            }
        }
        stages.push(StageSpec {
            id: e.id,
            kind: StageKind(stage),
            declared_confirm: e.confirm,
            timeout: e.timeout,
            best_effort: e.best_effort,
            when: e.when,
        });
    }
    Ok(Playbook {
        name: file.name,
        summary: file.summary,
        destructive: stages
            .iter()
            .any(|s| s.stage().min_confirm() == Confirm::Typed),
        stages,
    })
}
