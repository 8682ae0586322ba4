//! Executing a playbook against a checkpoint: fresh runs and resumes alike.
//!
//! For each stage not yet `succeeded`/`skipped`: check `when`, ask for confirmation if the
//! playbook says so, write `running`, run the stage, write `succeeded` + outputs (or `failed` +
//! error). A stage found `running` was interrupted mid-way; it is re-run with `resumed = true`
//! and must check the world before repeating anything.

use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::checkpoint::{Journal, RunStatus, StageStatus};
use super::playbook::{Confirm, Playbook, StageSpec, When};
use super::stage::{Inputs, Services, StageCtx, StageOutcome, confirmation_result};
use crate::error::UserError;
use crate::ui::{self, Event, Prompter, Reporter};

/// Test-only fault injection: abort the process right after this stage's checkpoint is written,
/// as a crash (SIGABRT) would. Only debug builds (what `cargo test` runs) honour it; a release
/// build ignores the variable. Documented in the README's test section.
pub const ENV_CRASH_AFTER: &str = "TALOS_DR_CRASH_AFTER_STAGE";

pub struct Runner<'a> {
    pub services: &'a Services,
    pub reporter: Arc<dyn Reporter>,
    pub prompter: &'a dyn Prompter,
    pub playbook: &'a Playbook,
}

/// Marks the run interrupted if it is dropped before finishing (Ctrl-C drops the future).
struct InterruptGuard<'a> {
    journal: &'a Journal,
    armed: bool,
}

impl Drop for InterruptGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.journal.update(|st| {
                st.status = RunStatus::Interrupted;
                st.error = Some(
                    "interrupted (Ctrl-C); the current stage will re-check the world on resume"
                        .into(),
                );
            });
            self.journal.event("run_interrupted", json!({}));
        }
    }
}

impl Runner<'_> {
    pub async fn execute(&self, journal: &Journal) -> anyhow::Result<()> {
        let mut guard = InterruptGuard {
            journal,
            armed: true,
        };
        let result = self.execute_inner(journal).await;
        guard.armed = false;
        let (status, error) = match &result {
            Ok(()) => (RunStatus::Succeeded, None),
            Err(e) => (RunStatus::Failed, Some(format!("{e:#}"))),
        };
        journal.update(|st| {
            st.status = status;
            st.error = error;
        })?;
        journal.event("run_finished", json!({ "status": status }));
        result
    }

    async fn execute_inner(&self, journal: &Journal) -> anyhow::Result<()> {
        journal.update(|st| {
            st.status = RunStatus::Running;
            st.error = None;
        })?;
        // Never resume with silently defaulted inputs (a lost --no-start would start VMs).
        let inputs: Inputs = serde_json::from_value(journal.snapshot().inputs).map_err(|e| {
            UserError::usage(format!(
                "the run's inputs in {} cannot be read: {e}",
                journal.dir().join("state.json").display()
            ))
        })?;
        for spec in &self.playbook.stages {
            let record = journal
                .snapshot()
                .stage(&spec.id)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("checkpoint has no stage {:?}", spec.id))?;
            if matches!(record.status, StageStatus::Succeeded | StageStatus::Skipped) {
                continue;
            }
            // A best-effort stage that failed before stays failed; don't run it again.
            if record.status == StageStatus::Failed && spec.best_effort {
                continue;
            }
            let resumed = record.status == StageStatus::Running;
            if let Some(When::Proxmox) = spec.when
                && self.services.profile.file.proxmox.is_none()
            {
                self.finish(
                    journal,
                    &spec.id,
                    StageStatus::Skipped,
                    json!({"reason": "the profile has no [proxmox] section"}),
                    None,
                    Instant::now(),
                )?;
                continue;
            }
            self.confirm(spec, &inputs)?;

            let started = Instant::now();
            journal.update(|st| {
                if let Some(s) = st.stage_mut(&spec.id) {
                    s.status = StageStatus::Running;
                    s.attempt += 1;
                    s.started_at = Some(Timestamp::now());
                    s.finished_at = None;
                    s.error = None;
                }
            })?;
            journal.event(
                "stage_started",
                json!({ "stage": spec.id, "kind": spec.kind.as_str(), "resumed": resumed }),
            );
            self.reporter.report(Event::StageStarted {
                stage: spec.id.clone(),
                title: spec.stage().title().to_owned(),
            });
            let ctx = StageCtx {
                services: self.services,
                reporter: self.reporter.as_ref(),
                prompter: self.prompter,
                journal,
                inputs: &inputs,
                spec,
                resumed,
            };
            let fut = spec.stage().run(&ctx);
            let result = match spec.timeout() {
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(UserError::failed(format!(
                        "stage {} did not finish within {}",
                        spec.id,
                        spec.timeout.as_ref().map_or("its timeout", |t| t.as_str())
                    ))
                    .into()),
                },
                None => fut.await,
            };
            match result {
                Ok(StageOutcome::Done(outputs)) => {
                    self.finish(
                        journal,
                        &spec.id,
                        StageStatus::Succeeded,
                        outputs,
                        None,
                        started,
                    )?;
                }
                Ok(StageOutcome::Skipped(reason)) => {
                    self.finish(
                        journal,
                        &spec.id,
                        StageStatus::Skipped,
                        json!({ "reason": reason }),
                        None,
                        started,
                    )?;
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    // A confirmation declined inside a stage stops the run, even a best-effort
                    // one, and leaves the stage to run (and ask) again on resume.
                    let declined = crate::error::classify(&e).0 == crate::error::Exit::Declined;
                    let status = if declined {
                        StageStatus::Pending
                    } else {
                        StageStatus::Failed
                    };
                    self.finish(
                        journal,
                        &spec.id,
                        status,
                        Value::Null,
                        Some(text.clone()),
                        started,
                    )?;
                    if spec.best_effort && !declined {
                        self.reporter.warn(&format!(
                            "stage {} failed but is best effort; continuing: {text}",
                            spec.id
                        ));
                        continue;
                    }
                    if declined {
                        return Err(e);
                    }
                    return Err(e.context(format!("stage {} failed", spec.id)));
                }
            }
        }
        Ok(())
    }

    /// Asks before a stage: the stricter of the playbook's confirmation and the stage's own
    /// minimum (`StageSpec::confirm`), so an edited playbook cannot remove a typed confirmation.
    fn confirm(&self, spec: &StageSpec, inputs: &Inputs) -> anyhow::Result<()> {
        let profile = &self.services.profile;
        let answer = match spec.confirm() {
            Confirm::No => return Ok(()),
            Confirm::Yes => {
                self.prompter
                    .confirm(&format!("Run stage {} ({})?", spec.id, spec.kind.as_str()))
            }
            Confirm::Typed => self.prompter.confirm_typed(
                &spec.stage().typed_warning(profile, inputs, &spec.id),
                profile.name(),
            ),
        }?;
        confirmation_result(answer, &spec.id)
    }

    fn finish(
        &self,
        journal: &Journal,
        id: &str,
        status: StageStatus,
        outputs: Value,
        error: Option<String>,
        started: Instant,
    ) -> anyhow::Result<()> {
        journal.update(|st| {
            if let Some(s) = st.stage_mut(id) {
                s.status = status;
                s.finished_at = Some(Timestamp::now());
                if s.started_at.is_none() {
                    s.started_at = s.finished_at;
                }
                if let (Value::Object(new), Value::Object(old)) = (&outputs, &mut s.outputs) {
                    old.extend(new.clone());
                } else if !outputs.is_null() {
                    s.outputs = outputs.clone();
                }
                s.error = error.clone();
            }
        })?;
        let status_text = serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        journal.event(
            "stage_finished",
            json!({ "stage": id, "status": status_text, "error": error }),
        );
        self.reporter.report(Event::StageFinished {
            stage: id.to_owned(),
            status: status_text,
            elapsed_ms: ui::ms(started.elapsed()),
            message: error.or_else(|| {
                outputs
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .map(str::to_owned)
            }),
        });
        #[cfg(debug_assertions)]
        if std::env::var(ENV_CRASH_AFTER).is_ok_and(|v| v == id) {
            std::process::abort();
        }
        Ok(())
    }
}
