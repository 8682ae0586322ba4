//! Tasks: UPIDs and waiting for a task to finish.
//!
//! Every PVE write returns a UPID and does its work in a background task. We poll
//! `/nodes/{node}/tasks/{upid}/status` (the node taken from the UPID) on a capped geometric
//! schedule (`crate::poll`): spread across the tasks of a batch, and timed by the first of them
//! to finish, so a task of a few seconds needs only a handful of polls and is seen soon after it
//! ends. A fresh task may not be visible yet: a 400 "no such task" is retried for a short grace
//! period. `OK` and `WARNINGS: n` are success; any other `exitstatus` is the error text.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use crate::poll::{Batch, Geometric, Member, task_next_poll};
use crate::pve::client::PveClient;
use crate::pve::error::{PveError, Target};
use crate::pve::types::TaskStatus;
use crate::ui::{Event, ms};

/// A parsed `UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upid {
    raw: String,
    pub node: String,
    pub pid: u32,
    pub pstart: u64,
    /// Unix epoch seconds.
    pub starttime: i64,
    pub task_type: String,
    /// The VMID for qm tasks; may be empty.
    pub id: String,
    /// `user@realm`, with the token name split off into `token`.
    pub user: String,
    pub token: Option<String>,
}

fn is_node_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn field_ok(s: &str, allow_empty: bool) -> bool {
    (allow_empty || !s.is_empty()) && !s.chars().any(|c| c == '/' || c.is_whitespace())
}

impl FromStr for Upid {
    type Err = PveError;

    fn from_str(s: &str) -> Result<Self, PveError> {
        let bad = || PveError::InvalidUpid(s.to_owned());
        // 9 fields: the trailing colon leaves an empty last one.
        let f: Vec<&str> = s.split(':').collect();
        if f.len() != 9 || f[0] != "UPID" || !f[8].is_empty() {
            return Err(bad());
        }
        let hex_n = |v: &str, lens: &[usize]| -> Option<u64> {
            lens.contains(&v.len())
                .then(|| u64::from_str_radix(v, 16).ok())
                .flatten()
        };
        if !is_node_name(f[1])
            || !field_ok(f[5], false)
            || !field_ok(f[6], true)
            || !field_ok(f[7], false)
        {
            return Err(bad());
        }
        let pid = hex_n(f[2], &[8])
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(bad)?;
        let pstart = hex_n(f[3], &[8, 9]).ok_or_else(bad)?;
        let starttime = hex_n(f[4], &[8])
            .and_then(|t| i64::try_from(t).ok())
            .ok_or_else(bad)?;
        let (user, token) = match f[7].split_once('!') {
            Some((u, t)) => (u.to_owned(), Some(t.to_owned())),
            None => (f[7].to_owned(), None),
        };
        Ok(Self {
            raw: s.to_owned(),
            node: f[1].to_owned(),
            pid,
            pstart,
            starttime,
            task_type: f[5].to_owned(),
            id: f[6].to_owned(),
            user,
            token,
        })
    }
}

impl Upid {
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Serialize for Upid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> serde::Deserialize<'de> for Upid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How to poll a task.
#[derive(Debug, Clone)]
pub struct PollConfig {
    /// First poll after this long (then ×`factor` each time).
    pub min_delay: Duration,
    /// Cap on the delay between polls.
    pub max_delay: Duration,
    pub factor: f32,
    /// A task waited for alone polls on a schedule shifted by a phase taken from its UPID, so
    /// unrelated waits do not poll in step (tasks of a batch are spread by the batch).
    pub jitter: bool,
    /// Give up waiting after this long (the task itself is not cancelled).
    pub timeout: Duration,
    /// How long a 400 "no such task" right after creation counts as "not visible yet".
    pub not_found_grace: Duration,
    /// Transient errors in a row (5xx, resets) tolerated while polling.
    pub max_transient_errors: u32,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(800),
            max_delay: Duration::from_secs(5),
            // Each task polls rarely (3 times in its first 3 s); the six tasks of a batch,
            // shifted by a sixth of a step each, together look every 8 % of the time waited.
            factor: 1.6,
            jitter: true,
            timeout: Duration::from_secs(600),
            not_found_grace: Duration::from_secs(10),
            max_transient_errors: 5,
        }
    }
}

impl PollConfig {
    /// The polls of a task's wait before anything is known about its duration.
    pub fn schedule(&self) -> Geometric {
        Geometric {
            first: self.min_delay,
            factor: f64::from(self.factor),
            max: self.max_delay,
        }
    }

    /// Millisecond delays for tests.
    pub fn fast() -> Self {
        Self {
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            factor: 2.0,
            jitter: false,
            timeout: Duration::from_secs(10),
            not_found_grace: Duration::from_secs(2),
            max_transient_errors: 5,
        }
    }
}

/// A task that finished successfully.
#[derive(Debug, Clone, Serialize)]
pub struct TaskOutcome {
    pub upid: Upid,
    /// `OK` or `WARNINGS: n`.
    pub exitstatus: String,
    /// `n` of `WARNINGS: n`.
    pub warnings: u32,
    pub elapsed_ms: u64,
    /// Status polls made (for diagnostics and tests).
    pub polls: u32,
}

/// `OK` / `WARNINGS: n` → `Some(n)`, anything else → `None`.
pub fn success_warnings(exitstatus: &str) -> Option<u32> {
    if exitstatus == "OK" {
        return Some(0);
    }
    exitstatus
        .strip_prefix("WARNINGS:")
        .and_then(|n| n.trim().parse().ok())
}

impl PveClient {
    /// Status of a task, polled on the node in its UPID. One request, no retries.
    pub async fn task_status(&self, upid: &Upid, target: &Target) -> Result<TaskStatus, PveError> {
        self.get_once(
            &["nodes", &upid.node, "tasks", upid.as_str(), "status"],
            &[],
            target,
        )
        .await
    }

    /// Lines `start..start+limit` of a task log (`limit` 0 = all).
    pub async fn task_log(
        &self,
        upid: &Upid,
        start: u64,
        limit: u64,
        target: &Target,
    ) -> Result<Vec<crate::pve::types::TaskLogLine>, PveError> {
        self.get(
            &["nodes", &upid.node, "tasks", upid.as_str(), "log"],
            &[("start", start.to_string()), ("limit", limit.to_string())],
            target,
        )
        .await
    }

    /// Waits until the task stops; `key` names the spinner (e.g. `"vm 101"`). A task alone:
    /// see [`PveClient::wait_for_task_in`].
    pub async fn wait_for_task(
        &self,
        upid: &Upid,
        key: &str,
        target: &Target,
    ) -> Result<TaskOutcome, PveError> {
        let batch = Batch::new(1);
        let mut member = batch.join();
        if self.poll_config().jitter {
            member = member.with_phase(Batch::solo_phase(upid.as_str()));
        }
        self.wait_for_task_in(upid, key, target, &mut member).await
    }

    /// Waits until the task stops, as one of a [`Batch`] of similar tasks: polled on the
    /// member's spread schedule until one task of the batch finished, then at the time that one
    /// took (`crate::poll`).
    ///
    /// Success is `OK` or `WARNINGS: n`; any other exit status becomes
    /// [`PveError::TaskFailed`] with the tail of the task log. A 400 "no such task" within
    /// `not_found_grace` and up to `max_transient_errors` transient errors in a row are polled
    /// again (after a growing pause); anything else ends the wait.
    pub async fn wait_for_task_in(
        &self,
        upid: &Upid,
        key: &str,
        target: &Target,
        member: &mut Member<'_>,
    ) -> Result<TaskOutcome, PveError> {
        let cfg = self.poll_config().clone();
        let reporter = self.reporter();
        let started = Instant::now();
        reporter.report(Event::WaitStarted {
            key: key.to_owned(),
            message: format!("{key}: {} task started ({upid})", upid.task_type),
        });
        let schedule = cfg.schedule();
        let mut polls = 0u32;
        let waiting = async {
            let mut errors_in_row = 0u32;
            let mut last_poll: Option<Duration> = None;
            // When the last poll began, and the least pause after it (after an error).
            let (mut at, mut pause) = (Duration::ZERO, Duration::ZERO);
            loop {
                // The first poll too waits for its time: a task is never done at once.
                loop {
                    let now = started.elapsed();
                    let next =
                        task_next_poll(&schedule, member.phase, member.known(), now, last_poll)
                            .max(at + pause);
                    if next <= now {
                        break;
                    }
                    // Wakes early when another task of the batch finishes: then asks again.
                    member
                        .sleep_until(tokio::time::Instant::from_std(started + next))
                        .await;
                    if started.elapsed() >= next {
                        break;
                    }
                }
                at = started.elapsed();
                polls += 1;
                last_poll = Some(at);
                pause = match self.task_status(upid, target).await {
                    Ok(s) if !s.is_running() => {
                        // Only a task that did its work times the others (a refusal is quick).
                        if s.exitstatus.as_deref().and_then(success_warnings).is_some() {
                            member.finished(at);
                        }
                        return Ok(s);
                    }
                    Ok(s) => {
                        errors_in_row = 0;
                        member.running(at);
                        reporter.report(Event::WaitProgress {
                            key: key.to_owned(),
                            message: format!("{key}: {} task {}", s.task_type, s.status),
                            elapsed_ms: ms(started.elapsed()),
                        });
                        Duration::ZERO
                    }
                    Err(e) if e.is_no_such_task() && started.elapsed() < cfg.not_found_grace => {
                        reporter.report(Event::WaitProgress {
                            key: key.to_owned(),
                            message: format!("{key}: {} task not visible yet", upid.task_type),
                            elapsed_ms: ms(started.elapsed()),
                        });
                        cfg.min_delay
                    }
                    Err(e) if e.is_transient() && errors_in_row < cfg.max_transient_errors => {
                        errors_in_row += 1;
                        // As before: a growing pause between retries of a failing status call.
                        let pause = cfg
                            .min_delay
                            .mul_f64(f64::from(cfg.factor).powi(errors_in_row as i32 - 1))
                            .min(cfg.max_delay);
                        reporter.report(Event::Retry {
                            what: format!("status of task {}", upid.task_type),
                            error: e.to_string(),
                            delay_ms: ms(pause),
                        });
                        pause
                    }
                    Err(e) => return Err(e),
                };
            }
        };

        let finish = |ok: bool, message: String| {
            reporter.report(Event::WaitFinished {
                key: key.to_owned(),
                ok,
                message,
                elapsed_ms: ms(started.elapsed()),
            });
        };
        let status = match tokio::time::timeout(cfg.timeout, waiting).await {
            Err(_elapsed) => {
                let err = PveError::TaskTimeout {
                    target: Box::new(target.clone()),
                    upid: upid.to_string(),
                    task_type: upid.task_type.clone(),
                    elapsed: started.elapsed(),
                };
                finish(false, err.to_string());
                return Err(err);
            }
            Ok(Err(e)) => {
                finish(false, e.to_string());
                return Err(e);
            }
            Ok(Ok(s)) => s,
        };

        let exitstatus = status
            .exitstatus
            .clone()
            .unwrap_or_else(|| "unexpected status".to_owned());
        if let Some(warnings) = success_warnings(&exitstatus) {
            finish(true, format!("{key}: {} task {exitstatus}", upid.task_type));
            return Ok(TaskOutcome {
                upid: upid.clone(),
                exitstatus,
                warnings,
                elapsed_ms: ms(started.elapsed()),
                polls,
            });
        }
        // Best effort: the log often explains more than the exit status.
        let log_tail = match self.task_log(upid, 0, 500, target).await {
            Ok(lines) => {
                let skip = lines.len().saturating_sub(10);
                lines.into_iter().skip(skip).map(|l| l.t).collect()
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not read the task log");
                Vec::new()
            }
        };
        let err = PveError::TaskFailed {
            target: Box::new(target.clone()),
            upid: upid.to_string(),
            task_type: upid.task_type.clone(),
            exitstatus,
            log_tail,
        };
        finish(false, err.to_string());
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_upid() {
        let u: Upid = "UPID:pve1:000B2F4C:0197A1E3:6650A1B2:qmsnapshot:101:k8s-dr@pve!cli:"
            .parse()
            .unwrap();
        assert_eq!(u.node, "pve1");
        assert_eq!(u.pid, 733_004);
        assert_eq!(u.pstart, 26_714_595);
        assert_eq!(u.starttime, 1_716_560_306);
        assert_eq!(u.task_type, "qmsnapshot");
        assert_eq!(u.id, "101");
        assert_eq!(u.user, "k8s-dr@pve");
        assert_eq!(u.token.as_deref(), Some("cli"));
        let u: Upid = "UPID:pve-2:00001234:012345678:6650A1B2:imgcopy::root@pam:"
            .parse()
            .unwrap();
        assert_eq!(u.id, "");
        assert_eq!(u.token, None);
        for bad in [
            "UPID:pve1:000B2F4C:0197A1E3:6650A1B2:qmsnapshot:101:root@pam",
            "UPID:pve1:0B2F4C:0197A1E3:6650A1B2:qmsnapshot:101:root@pam:",
            "UPID:-pve:000B2F4C:0197A1E3:6650A1B2:qmsnapshot:101:root@pam:",
            "UPID:pve1:000B2F4C:0197A1E3:6650A1B2::101:root@pam:",
            "XPID:pve1:000B2F4C:0197A1E3:6650A1B2:qmsnapshot:101:root@pam:",
        ] {
            assert!(bad.parse::<Upid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_status() {
        assert_eq!(success_warnings("OK"), Some(0));
        assert_eq!(success_warnings("WARNINGS: 3"), Some(3));
        assert_eq!(success_warnings("VM is locked (backup)"), None);
        assert_eq!(success_warnings("unexpected status"), None);
    }
}
