//! The checkpoint of one run: `runs/<run-id>/state.json` (atomic writes, mode 0600) and an
//! append-only `events.jsonl` beside it (every stage transition and external call, for reports).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::playbook::Playbook;

/// Current schema. Version 1 had no `attempt`, `updated_at` or run-level `error`; serde defaults
/// fill them. Version 3 holds each stage's outputs as that stage's typed record
/// (`engine::stage::StageData`); the records are shaped so that version 2 outputs read as they are.
pub const SCHEMA: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Interrupted,
    Abandoned,
}

impl RunStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Abandoned)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub id: String,
    /// The stage kind's registry name.
    pub kind: String,
    pub status: StageStatus,
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    #[serde(default = "empty_object")]
    pub outputs: Value,
    #[serde(default)]
    pub error: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

impl StageRecord {
    pub fn elapsed_ms(&self) -> Option<u64> {
        let (s, f) = (self.started_at?, self.finished_at?);
        u64::try_from(f.duration_since(s).as_millis()).ok()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub schema: u32,
    pub run_id: String,
    pub playbook: String,
    pub plan_fingerprint: String,
    pub profile: String,
    #[serde(default = "empty_object")]
    pub inputs: Value,
    pub status: RunStatus,
    pub created_at: Timestamp,
    #[serde(default)]
    pub updated_at: Option<Timestamp>,
    #[serde(default)]
    pub error: Option<String>,
    pub stages: Vec<StageRecord>,
}

impl RunState {
    pub fn stage(&self, id: &str) -> Option<&StageRecord> {
        self.stages.iter().find(|s| s.id == id)
    }
    pub fn stage_mut(&mut self, id: &str) -> Option<&mut StageRecord> {
        self.stages.iter_mut().find(|s| s.id == id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot write the checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the checkpoint {path}: {message}")]
    Read { path: PathBuf, message: String },
}

/// A run's checkpoint on disk, shared by the runner and the stages.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    state: Mutex<RunState>,
}

pub fn new_run_id(playbook: &str) -> String {
    format!("{}-{playbook}", Timestamp::now().strftime("%Y%m%d-%H%M%S"))
}

impl Journal {
    /// Creates `runs/<run-id>/` and its first checkpoint.
    pub fn create(
        runs_dir: &Path,
        playbook: &Playbook,
        profile: &str,
        inputs: Value,
    ) -> Result<Self, CheckpointError> {
        let mut run_id = new_run_id(&playbook.name);
        let mut n = 1;
        while runs_dir.join(&run_id).exists() {
            n += 1;
            run_id = format!("{}-{n}", new_run_id(&playbook.name));
        }
        let dir = runs_dir.join(&run_id);
        crate::fsutil::create_private_dir(&dir).map_err(|source| CheckpointError::Write {
            path: dir.clone(),
            source,
        })?;
        let now = Timestamp::now();
        let state = RunState {
            schema: SCHEMA,
            run_id,
            playbook: playbook.name.clone(),
            plan_fingerprint: playbook.fingerprint(),
            profile: profile.to_owned(),
            inputs,
            status: RunStatus::Running,
            created_at: now,
            updated_at: Some(now),
            error: None,
            stages: playbook
                .stages
                .iter()
                .map(|s| StageRecord {
                    id: s.id.clone(),
                    kind: s.kind.as_str().to_owned(),
                    status: StageStatus::Pending,
                    attempt: 0,
                    started_at: None,
                    finished_at: None,
                    outputs: empty_object(),
                    error: None,
                })
                .collect(),
        };
        let j = Self {
            dir,
            state: Mutex::new(state),
        };
        j.save()?;
        Ok(j)
    }

    /// Opens an existing run directory (any schema up to the current one).
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let state = load_state(&dir.join("state.json"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn snapshot(&self) -> RunState {
        self.state.lock().expect("checkpoint lock").clone()
    }

    /// Changes the state and writes it atomically before returning.
    pub fn update<T>(&self, f: impl FnOnce(&mut RunState) -> T) -> Result<T, CheckpointError> {
        let mut st = self.state.lock().expect("checkpoint lock");
        let out = f(&mut st);
        st.updated_at = Some(Timestamp::now());
        write_state(&self.dir.join("state.json"), &st)?;
        Ok(out)
    }

    pub fn save(&self) -> Result<(), CheckpointError> {
        self.update(|_| ())
    }

    /// Appends one event line (best effort: the checkpoint is what matters).
    pub fn event(&self, kind: &str, data: Value) {
        append_event(&self.dir, kind, data);
    }
}

/// Appends one line to `<run dir>/events.jsonl` (mode 0600, secrets redacted).
pub fn append_event(run_dir: &Path, kind: &str, data: Value) {
    let line = serde_json::json!({
        "at": Timestamp::now(),
        "type": kind,
        "data": data,
    });
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(run_dir.join("events.jsonl"));
    if let Ok(mut f) = file {
        let _ = writeln!(f, "{}", crate::exec::redact(&line.to_string()));
    }
}

fn write_state(path: &Path, st: &RunState) -> Result<(), CheckpointError> {
    let text = serde_json::to_vec_pretty(st).map_err(|e| CheckpointError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    crate::fsutil::write_atomic(path, &text, 0o600).map_err(|source| CheckpointError::Write {
        path: path.to_path_buf(),
        source,
    })
}

pub fn load_state(path: &Path) -> Result<RunState, CheckpointError> {
    let err = |message: String| CheckpointError::Read {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let schema = value["schema"].as_u64().unwrap_or(0);
    if schema == 0 || schema > u64::from(SCHEMA) {
        return Err(err(format!(
            "schema {schema} is not supported (this talos-dr reads 1..={SCHEMA}); upgrade talos-dr"
        )));
    }
    let mut st: RunState = serde_json::from_value(value).map_err(|e| err(e.to_string()))?;
    // Upgrade in memory; the next save writes the current schema.
    st.schema = SCHEMA;
    Ok(st)
}

/// All runs of a profile, newest first.
pub fn list_runs(runs_dir: &Path) -> Vec<(PathBuf, Result<RunState, CheckpointError>)> {
    let mut out: Vec<(PathBuf, Result<RunState, CheckpointError>)> = std::fs::read_dir(runs_dir)
        .map(|r| {
            r.filter_map(Result::ok)
                .filter(|e| e.path().join("state.json").is_file())
                .map(|e| {
                    let p = e.path();
                    let st = load_state(&p.join("state.json"));
                    (p, st)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| b.0.cmp(&a.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_schema_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        std::fs::write(&p, r#"{"schema": 99}"#).unwrap();
        let e = load_state(&p).unwrap_err().to_string();
        assert!(e.contains("upgrade talos-dr"), "{e}");
    }
}
