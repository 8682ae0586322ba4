//! The one error type of the Proxmox VE client.
//!
//! Every variant that concerns a request names the method, the API path and the [`Target`]
//! (VM and/or node), so an operator can act on the message alone. The API token never appears
//! here: requests are described by method and path only.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::pve::types::VmRef;

/// What a failed request or task concerns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub node: Option<String>,
    pub vmid: Option<u32>,
}

impl Target {
    pub fn none() -> Self {
        Self::default()
    }
    pub fn node(node: &str) -> Self {
        Self {
            node: Some(node.to_owned()),
            vmid: None,
        }
    }
    pub fn vm(vm: &VmRef) -> Self {
        Self {
            node: Some(vm.node.clone()),
            vmid: Some(vm.vmid),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.vmid, &self.node) {
            (Some(vmid), Some(node)) => write!(f, "VM {vmid} on node {node}: "),
            (Some(vmid), None) => write!(f, "VM {vmid}: "),
            (None, Some(node)) => write!(f, "node {node}: "),
            (None, None) => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PveError {
    /// Bad or missing configuration (endpoint, token, TLS settings).
    #[error("Proxmox VE configuration: {0}")]
    Config(String),

    /// The server's certificate does not match the pinned fingerprint; no request was sent.
    #[error(
        "TLS certificate of {endpoint} does not match the pinned fingerprint: the server presented \
         {seen}, expected {expected} (check `pvenode cert info` on the node, then update \
         `fingerprint` in the profile)"
    )]
    FingerprintMismatch {
        endpoint: String,
        seen: String,
        expected: String,
    },

    /// No HTTP response (connect error, reset, timeout, TLS failure).
    #[error("{target}{method} {path}: {detail}")]
    Transport {
        target: Box<Target>,
        method: &'static str,
        path: String,
        detail: String,
        /// Whether a retry may help (connect errors, resets, timeouts; not TLS certificate errors).
        transient: bool,
        /// Whether the request certainly never reached the server (connect failed).
        not_sent: bool,
        #[source]
        source: Option<reqwest::Error>,
    },

    /// The API answered with a non-2xx status.
    #[error("{target}{method} {path}: HTTP {status}: {message}")]
    Api {
        target: Box<Target>,
        method: &'static str,
        path: String,
        status: u16,
        /// From the body's `message`, else the flattened `errors`, else the reason phrase.
        message: String,
        /// The body's `errors` object (parameter name → text), if any.
        errors: BTreeMap<String, String>,
    },

    /// A 2xx answer whose body is not what the schema promises.
    #[error("{target}{method} {path}: unexpected response: {detail}")]
    Decode {
        target: Box<Target>,
        method: &'static str,
        path: String,
        detail: String,
    },

    /// A task ended with an `exitstatus` other than `OK` / `WARNINGS: n`.
    #[error("{target}task {task_type} ({upid}) failed: {exitstatus}")]
    TaskFailed {
        target: Box<Target>,
        upid: String,
        task_type: String,
        exitstatus: String,
        /// Last lines of the task log, best effort.
        log_tail: Vec<String>,
    },

    /// The task was still running when we stopped waiting (it is not cancelled).
    #[error(
        "{target}task {task_type} ({upid}) still running after {}s; it was not cancelled, check \
         the task log in the Proxmox VE UI",
        elapsed.as_secs()
    )]
    TaskTimeout {
        target: Box<Target>,
        upid: String,
        task_type: String,
        elapsed: Duration,
    },

    #[error("invalid UPID '{0}'")]
    InvalidUpid(String),

    #[error("invalid snapshot name '{name}': {reason}")]
    InvalidSnapshotName { name: String, reason: String },

    #[error("invalid snapshot label '{label}': {reason}")]
    InvalidLabel { label: String, reason: String },

    /// `vm-check` found problems; each line names the VMID and the reason.
    #[error("VM check failed:\n  {}", problems.join("\n  "))]
    VmCheckFailed { problems: Vec<String> },
}

/// 500 texts that describe a state, not a hiccup: retrying them only wastes time.
const PERMANENT_500: &[&str] = &[
    "does not exist",
    "no such cluster node",
    "no qemu guest agent configured",
    "guest agent is not running",
    "is not running",
    "reserved name",
    "cannot live-migrate",
];

impl PveError {
    /// Whether repeating the same request may succeed: connect errors, resets, timeouts, 5xx
    /// (except 501 and 500s that describe a state) and the proxy errors 595/596.
    pub fn is_transient(&self) -> bool {
        match self {
            PveError::Transport { transient, .. } => *transient,
            PveError::Api {
                status, message, ..
            } => match *status {
                501 => false,
                500 => {
                    let m = message.to_lowercase();
                    !PERMANENT_500.iter().any(|p| m.contains(p))
                }
                s => (500..600).contains(&s),
            },
            _ => false,
        }
    }

    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            PveError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The transient 400 `{"errors":{"upid":"no such task"}}` of a task not yet visible.
    pub fn is_no_such_task(&self) -> bool {
        matches!(self, PveError::Api { status: 400, errors, message, .. }
            if errors.get("upid").is_some_and(|e| e.contains("no such task"))
                || message.contains("no such task"))
    }

    /// For a task that failed with `VM is locked (<lock>)`, the lock.
    pub fn locked_by(&self) -> Option<&str> {
        let PveError::TaskFailed { exitstatus, .. } = self else {
            return None;
        };
        exitstatus
            .strip_prefix("VM is locked (")
            .and_then(|s| s.strip_suffix(')'))
    }

    /// The text the server (or the task) gave, without our context prefix.
    pub fn server_message(&self) -> Option<&str> {
        match self {
            PveError::Api { message, .. } => Some(message),
            PveError::TaskFailed { exitstatus, .. } => Some(exitstatus),
            _ => None,
        }
    }

    pub fn target(&self) -> Option<&Target> {
        match self {
            PveError::Transport { target, .. }
            | PveError::Api { target, .. }
            | PveError::Decode { target, .. }
            | PveError::TaskFailed { target, .. }
            | PveError::TaskTimeout { target, .. } => Some(&**target),
            _ => None,
        }
    }
}

/// Builds the message of a non-2xx answer: body `message`, else flattened `errors`, else the
/// reason phrase (401 and 595/596 come without a body).
pub(crate) fn api_message(status: u16, body: &str) -> (String, BTreeMap<String, String>) {
    let mut errors = BTreeMap::new();
    let mut message = None;
    if let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(body) {
        if let Some(serde_json::Value::Object(errs)) = obj.get("errors") {
            for (k, v) in errs {
                let text = match v {
                    serde_json::Value::String(s) => s.trim_end().to_owned(),
                    other => other.to_string(),
                };
                errors.insert(k.clone(), text);
            }
        }
        if let Some(serde_json::Value::String(m)) = obj.get("message") {
            let m = m.trim_end();
            if !m.is_empty() {
                message = Some(m.to_owned());
            }
        }
    }
    let flattened = (!errors.is_empty()).then(|| {
        errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    });
    let message = match (message, flattened) {
        // "Parameter verification failed." alone says nothing; keep the details next to it.
        (Some(m), Some(f)) => format!("{m} ({f})"),
        (Some(m), None) => m,
        (None, Some(f)) => f,
        (None, None) => reason_phrase(status),
    };
    (message, errors)
}

fn reason_phrase(status: u16) -> String {
    match status {
        // pveproxy's own codes for a failed hop to another cluster node (AnyEvent::HTTP).
        595 => "connection to the target cluster node failed (HTTP 595, node down?)".into(),
        596 => "request to the target cluster node failed (HTTP 596: TLS error or timeout)".into(),
        401 => "authentication failure (check the API token and its privileges)".into(),
        s => reqwest::StatusCode::from_u16(s)
            .ok()
            .and_then(|c| c.canonical_reason())
            .map_or_else(|| format!("HTTP status {s}"), str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_precedence() {
        let (m, e) = api_message(
            400,
            r#"{"data":null,"errors":{"snapname":"invalid format - invalid configuration ID '1bad'\n"},"message":"Parameter verification failed.\n"}"#,
        );
        assert_eq!(
            m,
            "Parameter verification failed. (snapname: invalid format - invalid configuration ID '1bad')"
        );
        assert_eq!(e.len(), 1);
        let (m, _) = api_message(400, r#"{"data":null,"errors":{"upid":"no such task"}}"#);
        assert_eq!(m, "upid: no such task");
        let (m, _) = api_message(
            500,
            r#"{"data":null,"message":"QEMU guest agent is not running\n"}"#,
        );
        assert_eq!(m, "QEMU guest agent is not running");
        assert_eq!(
            api_message(500, r#"{"data":null}"#).0,
            "Internal Server Error"
        );
        assert!(api_message(401, "").0.starts_with("authentication failure"));
        assert!(api_message(596, "").0.contains("596"));
    }

    fn api(status: u16, message: &str) -> PveError {
        PveError::Api {
            target: Box::new(Target::none()),
            method: "GET",
            path: "/x".into(),
            status,
            message: message.into(),
            errors: BTreeMap::new(),
        }
    }

    #[test]
    fn transient_classification() {
        assert!(api(500, "Internal Server Error").is_transient());
        assert!(api(503, "x").is_transient());
        assert!(api(595, "").is_transient());
        assert!(api(596, "").is_transient());
        assert!(!api(501, "Method 'GET /foo' not implemented").is_transient());
        assert!(
            !api(
                500,
                "Configuration file 'nodes/pve2/qemu-server/101.conf' does not exist"
            )
            .is_transient()
        );
        assert!(!api(401, "").is_transient());
        assert!(!api(400, "x").is_transient());
    }

    #[test]
    fn target_display() {
        let vm = VmRef {
            node: "pve1".into(),
            vmid: 101,
        };
        assert_eq!(Target::vm(&vm).to_string(), "VM 101 on node pve1: ");
        assert_eq!(Target::none().to_string(), "");
    }
}
