//! The HTTP client: endpoint and TLS setup, the token header, retries for reads, typed endpoints.
//!
//! Reads (GET) are retried with backon while [`PveError::is_transient`] says so. Writes that start
//! a task are sent once: a blind retry could snapshot twice or roll back twice. After a transient
//! failure of a snapshot create or delete, the snapshot list tells whether it took effect.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::pve::auth::ApiToken;
use crate::pve::error::{PveError, Target, api_message};
use crate::pve::names::SnapshotName;
use crate::pve::task::{PollConfig, TaskOutcome, Upid};
use crate::pve::tls::{self, PinnedVerifier, TlsMode};
use crate::pve::types::{
    AgentInterface, AgentReply, ClusterVm, Feature, NodeInfo, Snapshot, Version, VmConfig, VmRef,
    VmStatus,
};
use crate::pve::{ENV_API_TOKEN, ENV_ENDPOINT, PveConfig};
use crate::ui::{Event, NoopReporter, Reporter, ms};

mod rebuild;
pub use rebuild::{BackupVolume, CloneRequest, RestoreRequest, StorageInfo, mac_of, with_mac};

/// Retries of transient read failures.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub max_times: usize,
    pub jitter: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(5),
            max_times: 3,
            jitter: true,
        }
    }
}

impl RetryConfig {
    /// Millisecond delays for tests.
    pub fn fast() -> Self {
        Self {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_times: 3,
            jitter: false,
        }
    }
}

/// Parameters of `POST …/snapshot`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub name: SnapshotName,
    pub description: Option<String>,
    /// Include RAM (briefly pauses the guest; needs ~2×RAM of storage).
    pub vmstate: bool,
}

/// Result of [`PveClient::snapshot_and_wait`] and friends.
#[derive(Debug, Clone, Serialize)]
pub struct TaskDone {
    /// The finished task, unless the outcome was found by listing snapshots after a lost answer.
    pub task: Option<TaskOutcome>,
    /// The request's answer was lost and the snapshot list showed it had taken effect.
    pub recovered: bool,
}

/// Builds a [`PveClient`] with explicit settings (tests use this directly).
pub struct PveClientBuilder {
    endpoint: String,
    token: ApiToken,
    tls: TlsMode,
    retry: RetryConfig,
    poll: PollConfig,
    reporter: Arc<dyn Reporter>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl PveClientBuilder {
    pub fn tls(mut self, tls: TlsMode) -> Self {
        self.tls = tls;
        self
    }
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }
    pub fn poll(mut self, poll: PollConfig) -> Self {
        self.poll = poll;
        self
    }
    pub fn reporter(mut self, reporter: Arc<dyn Reporter>) -> Self {
        self.reporter = reporter;
        self
    }
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Per request. The agent endpoint alone can take 3 s when the agent is missing.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    pub fn build(self) -> Result<PveClient, PveError> {
        let base = normalize_endpoint(&self.endpoint)?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .user_agent(concat!("talos-dr/", env!("CARGO_PKG_VERSION")));
        let mut pin = None;
        match &self.tls {
            TlsMode::WebPki => {}
            TlsMode::Pinned(pins) => {
                let verifier = Arc::new(PinnedVerifier::new(pins.clone()));
                pin = Some(PinState {
                    seen: verifier.mismatch_slot(),
                    expected: verifier.expected(),
                });
                http = http.use_preconfigured_tls(tls::pinned_config(verifier)?);
            }
            TlsMode::CaFile(path) => {
                http = http.use_preconfigured_tls(tls::ca_config(path)?);
            }
            // The only place certificate checks are switched off, on explicit request.
            TlsMode::Insecure => http = http.danger_accept_invalid_certs(true),
        }
        let http = http
            .build()
            .map_err(|e| PveError::Config(format!("HTTP client setup: {e}")))?;
        let mut auth = HeaderValue::from_str(&self.token.header_value())
            .map_err(|_| PveError::Config("API token contains invalid characters".into()))?;
        auth.set_sensitive(true);
        Ok(PveClient {
            inner: Arc::new(Inner {
                http,
                base,
                auth,
                retry: self.retry,
                poll: self.poll,
                reporter: self.reporter,
                pin,
            }),
        })
    }
}

struct PinState {
    seen: Arc<Mutex<Option<String>>>,
    expected: String,
}

struct Inner {
    http: reqwest::Client,
    /// `https://host:8006/api2/json`.
    base: Url,
    auth: HeaderValue,
    retry: RetryConfig,
    poll: PollConfig,
    reporter: Arc<dyn Reporter>,
    pin: Option<PinState>,
}

/// A Proxmox VE API client. Cheap to clone.
#[derive(Clone)]
pub struct PveClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the Authorization header.
        f.debug_struct("PveClient")
            .field("base", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

/// `host`, `host:port`, `https://host:8006/`, `…/api2/json` → `https://host:port/api2/json`.
/// Without a port, 8006 (pveproxy's port) is used.
pub fn normalize_endpoint(endpoint: &str) -> Result<Url, PveError> {
    let s = endpoint.trim();
    if s.is_empty() {
        return Err(PveError::Config("endpoint is empty".into()));
    }
    let with_scheme = if s.contains("://") {
        s.to_owned()
    } else {
        format!("https://{s}")
    };
    let mut url = Url::parse(&with_scheme)
        .map_err(|e| PveError::Config(format!("endpoint '{endpoint}': {e}")))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(PveError::Config(format!(
            "endpoint '{endpoint}' is not an https URL"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(PveError::Config(format!(
            "endpoint '{endpoint}' must not have a query or fragment"
        )));
    }
    if url.port().is_none() && !has_explicit_port(&with_scheme) {
        let _ = url.set_port(Some(8006));
    }
    let path = url.path().trim_end_matches('/');
    let path = path.strip_suffix("/api2/json").unwrap_or(path).to_owned();
    url.set_path(&format!("{path}/api2/json"));
    Ok(url)
}

/// `Url` hides the default port (`https://h:443` has `port() == None`); look at the text.
fn has_explicit_port(s: &str) -> bool {
    let after_scheme = s.split_once("://").map_or(s, |(_, r)| r);
    let authority = after_scheme.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host_port.rfind(':') {
        Some(i) => !host_port[i..].contains(']'),
        None => false,
    }
}

fn path_of(segments: &[&str]) -> String {
    format!("/{}", segments.join("/"))
}

/// Walks an error chain, looking into `io::Error`s (whose `source()` skips the wrapped error).
fn chain_has_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && chain_has_tls_error(inner)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    data: serde_json::Value,
}

impl PveClient {
    /// A builder with explicit endpoint and token; defaults: web PKI trust, default retries.
    pub fn builder(endpoint: &str, token: ApiToken) -> PveClientBuilder {
        PveClientBuilder {
            endpoint: endpoint.to_owned(),
            token,
            tls: TlsMode::WebPki,
            retry: RetryConfig::default(),
            poll: PollConfig::default(),
            reporter: Arc::new(NoopReporter),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
        }
    }

    /// From the profile's `[proxmox]` section. `PROXMOX_VE_ENDPOINT` and `PROXMOX_VE_API_TOKEN`
    /// win over the profile; relative paths are resolved against `config_dir`.
    pub fn from_config(
        cfg: &PveConfig,
        config_dir: &Path,
        reporter: Arc<dyn Reporter>,
    ) -> Result<PveClient, PveError> {
        Self::from_config_with_env(cfg, config_dir, reporter, |k| std::env::var(k).ok())
    }

    /// [`PveClient::from_config`] with an injectable environment (for tests).
    pub fn from_config_with_env(
        cfg: &PveConfig,
        config_dir: &Path,
        reporter: Arc<dyn Reporter>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PveClient, PveError> {
        let nonempty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let endpoint = nonempty(ENV_ENDPOINT)
            .or_else(|| cfg.endpoint.clone())
            .ok_or_else(|| {
                PveError::Config(format!(
                    "no endpoint: set `endpoint` in [proxmox] or {ENV_ENDPOINT}"
                ))
            })?;
        if normalize_endpoint(&endpoint)?.scheme() != "https" {
            return Err(PveError::Config(format!(
                "endpoint '{endpoint}' must use https (the API token would travel in clear text)"
            )));
        }
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                config_dir.join(p)
            }
        };
        let token = match (nonempty(ENV_API_TOKEN), &cfg.token_file) {
            (Some(t), _) => ApiToken::parse(&t)
                .map_err(|e| PveError::Config(format!("{ENV_API_TOKEN}: {e}")))?,
            (None, Some(file)) => ApiToken::from_file(&resolve(file))?,
            (None, None) => {
                return Err(PveError::Config(format!(
                    "no API token: set {ENV_API_TOKEN}=USER@REALM!TOKENID=SECRET or \
                     `token_file` in [proxmox]"
                )));
            }
        };
        let tls = match (&cfg.fingerprint, &cfg.ca_file, cfg.insecure) {
            (Some(fp), None, false) => TlsMode::Pinned(tls::parse_fingerprints(fp)?),
            (None, Some(ca), false) => TlsMode::CaFile(resolve(ca)),
            (None, None, false) => TlsMode::WebPki,
            (None, None, true) => {
                reporter.warn(
                    "Proxmox VE: insecure = true, the server certificate is NOT checked; pin it \
                     with `fingerprint` (see `pvenode cert info`) or set `ca_file`",
                );
                TlsMode::Insecure
            }
            _ => {
                return Err(PveError::Config(
                    "set only one of `fingerprint`, `ca_file` and `insecure`".into(),
                ));
            }
        };
        Self::builder(&endpoint, token)
            .tls(tls)
            .reporter(reporter)
            .build()
    }

    /// The API base URL (`…/api2/json`), without credentials.
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    pub(crate) fn poll_config(&self) -> &PollConfig {
        &self.inner.poll
    }

    pub(crate) fn reporter(&self) -> &dyn Reporter {
        self.inner.reporter.as_ref()
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .expect("https URLs have a path")
            .extend(segments);
        url
    }

    fn transport_error(
        &self,
        e: reqwest::Error,
        method: &'static str,
        path: String,
        target: &Target,
    ) -> PveError {
        if let Some(pin) = &self.inner.pin
            && let Some(seen) = pin.seen.lock().ok().and_then(|mut s| s.take())
        {
            let mut endpoint = self.inner.base.clone();
            endpoint.set_path("");
            return PveError::FingerprintMismatch {
                endpoint: endpoint.as_str().trim_end_matches('/').to_owned(),
                seen,
                expected: pin.expected.clone(),
            };
        }
        let e = e.without_url();
        let tls = chain_has_tls_error(&e);
        let detail = chain_text(&e);
        PveError::Transport {
            target: Box::new(target.clone()),
            method,
            path,
            transient: !tls && (e.is_connect() || e.is_timeout() || e.is_request()),
            not_sent: e.is_connect(),
            detail,
            source: Some(e),
        }
    }

    /// One request; returns the `data` member of the answer.
    async fn send_once(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        form: Option<&[(&str, String)]>,
        target: &Target,
    ) -> Result<serde_json::Value, PveError> {
        let method_name: &'static str = match method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::DELETE => "DELETE",
            Method::PUT => "PUT",
            _ => "REQUEST",
        };
        let path = path_of(segments);
        let mut req = self
            .inner
            .http
            .request(method, self.url(segments))
            .header(AUTHORIZATION, self.inner.auth.clone());
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(form) = form {
            req = req.form(form);
        }
        tracing::debug!(method = method_name, %path, "PVE request");
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_error(e, method_name, path.clone(), target))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| self.transport_error(e, method_name, path.clone(), target))?;
        if !status.is_success() {
            let (message, errors) = api_message(status.as_u16(), &body);
            return Err(PveError::Api {
                target: Box::new(target.clone()),
                method: method_name,
                path,
                status: status.as_u16(),
                message,
                errors,
            });
        }
        let env: Envelope = serde_json::from_str(&body).map_err(|e| PveError::Decode {
            target: Box::new(target.clone()),
            method: method_name,
            path: path.clone(),
            detail: format!("not a JSON {{\"data\": …}} body: {e}"),
        })?;
        Ok(env.data)
    }

    fn decode<T: DeserializeOwned>(
        data: serde_json::Value,
        method: &'static str,
        segments: &[&str],
        target: &Target,
    ) -> Result<T, PveError> {
        serde_json::from_value(data).map_err(|e| PveError::Decode {
            target: Box::new(target.clone()),
            method,
            path: path_of(segments),
            detail: e.to_string(),
        })
    }

    /// A GET without retries.
    pub(crate) async fn get_once<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        target: &Target,
    ) -> Result<T, PveError> {
        let data = self
            .send_once(Method::GET, segments, query, None, target)
            .await?;
        Self::decode(data, "GET", segments, target)
    }

    /// A GET, retried on transient errors.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        target: &Target,
    ) -> Result<T, PveError> {
        let r = &self.inner.retry;
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(r.min_delay)
            .with_max_delay(r.max_delay)
            .with_max_times(r.max_times);
        if r.jitter {
            backoff = backoff.with_jitter();
        }
        let path = path_of(segments);
        let data = (|| self.send_once(Method::GET, segments, query, None, target))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(PveError::is_transient)
            .notify(|e, delay| {
                tracing::debug!(error = %e, ?delay, "retrying PVE request");
                self.reporter().report(Event::Retry {
                    what: format!("GET {path}"),
                    error: e.to_string(),
                    delay_ms: ms(delay),
                });
            })
            .await?;
        Self::decode(data, "GET", segments, target)
    }

    /// A POST that starts a task; sent once, never retried here.
    async fn post_task(
        &self,
        segments: &[&str],
        form: &[(&str, String)],
        target: &Target,
    ) -> Result<Upid, PveError> {
        let data = self
            .send_once(Method::POST, segments, &[], Some(form), target)
            .await?;
        Self::upid_from(data, "POST", segments, target)
    }

    /// A DELETE that starts a task; parameters go in the query string (bodies are ignored).
    async fn delete_task(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        target: &Target,
    ) -> Result<Upid, PveError> {
        let data = self
            .send_once(Method::DELETE, segments, query, None, target)
            .await?;
        Self::upid_from(data, "DELETE", segments, target)
    }

    fn upid_from(
        data: serde_json::Value,
        method: &'static str,
        segments: &[&str],
        target: &Target,
    ) -> Result<Upid, PveError> {
        let s: String = Self::decode(data, method, segments, target)?;
        s.parse().map_err(|_| PveError::Decode {
            target: Box::new(target.clone()),
            method,
            path: path_of(segments),
            detail: format!("expected a UPID, got '{s}'"),
        })
    }

    // ---- reads -------------------------------------------------------------------------------

    /// `GET /version`: a cheap auth and connectivity probe.
    pub async fn version(&self) -> Result<Version, PveError> {
        self.get(&["version"], &[], &Target::none()).await
    }

    /// `GET /cluster/resources?type=vm`: QEMU and LXC guests of the whole cluster.
    pub async fn cluster_vms(&self) -> Result<Vec<ClusterVm>, PveError> {
        self.get(
            &["cluster", "resources"],
            &[("type", "vm".to_owned())],
            &Target::none(),
        )
        .await
    }

    /// `GET /nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, PveError> {
        self.get(&["nodes"], &[], &Target::none()).await
    }

    /// `GET /nodes/{node}/qemu`: the QEMU VMs whose config lives on `node`.
    pub async fn node_qemu(&self, node: &str) -> Result<Vec<ClusterVm>, PveError> {
        let mut vms: Vec<ClusterVm> = self
            .get(&["nodes", node, "qemu"], &[], &Target::node(node))
            .await?;
        // This endpoint omits `node` and `type`; fill them so the entries are self-contained.
        for vm in &mut vms {
            vm.node = node.to_owned();
            vm.kind = "qemu".to_owned();
        }
        Ok(vms)
    }

    /// `GET /nodes/{node}/qemu/{vmid}/status/current`.
    pub async fn vm_status(&self, vm: &VmRef) -> Result<VmStatus, PveError> {
        let id = vm.vmid.to_string();
        self.get(
            &["nodes", &vm.node, "qemu", &id, "status", "current"],
            &[],
            &Target::vm(vm),
        )
        .await
    }

    /// `GET /nodes/{node}/qemu/{vmid}/config` (pending changes applied, as PVE defaults).
    pub async fn vm_config(&self, vm: &VmRef) -> Result<VmConfig, PveError> {
        let id = vm.vmid.to_string();
        self.get(
            &["nodes", &vm.node, "qemu", &id, "config"],
            &[],
            &Target::vm(vm),
        )
        .await
    }

    /// `GET /nodes/{node}/qemu/{vmid}/feature?feature=snapshot`: can every disk be snapshotted?
    pub async fn snapshot_feature(&self, vm: &VmRef) -> Result<Feature, PveError> {
        let id = vm.vmid.to_string();
        self.get(
            &["nodes", &vm.node, "qemu", &id, "feature"],
            &[("feature", "snapshot".to_owned())],
            &Target::vm(vm),
        )
        .await
    }

    /// `GET …/agent/network-get-interfaces`. Sent once: a missing agent answers 500 after ~3 s,
    /// and retrying that only slows discovery down.
    pub async fn agent_interfaces(&self, vm: &VmRef) -> Result<Vec<AgentInterface>, PveError> {
        let id = vm.vmid.to_string();
        let reply: AgentReply = self
            .get_once(
                &[
                    "nodes",
                    &vm.node,
                    "qemu",
                    &id,
                    "agent",
                    "network-get-interfaces",
                ],
                &[],
                &Target::vm(vm),
            )
            .await?;
        Ok(reply.result)
    }

    /// `GET …/snapshot`: real snapshots in unspecified order, plus the pseudo entry `current`.
    pub async fn list_snapshots(&self, vm: &VmRef) -> Result<Vec<Snapshot>, PveError> {
        let id = vm.vmid.to_string();
        self.get(
            &["nodes", &vm.node, "qemu", &id, "snapshot"],
            &[],
            &Target::vm(vm),
        )
        .await
    }

    // ---- writes (each returns a UPID) --------------------------------------------------------

    /// `POST …/snapshot`. Lock, name clash and storage problems surface in the task, not here.
    pub async fn create_snapshot(
        &self,
        vm: &VmRef,
        req: &SnapshotRequest,
    ) -> Result<Upid, PveError> {
        let id = vm.vmid.to_string();
        let mut form = vec![("snapname", req.name.to_string())];
        if let Some(d) = &req.description {
            form.push(("description", d.clone()));
        }
        form.push(("vmstate", bool01(req.vmstate)));
        self.post_task(
            &["nodes", &vm.node, "qemu", &id, "snapshot"],
            &form,
            &Target::vm(vm),
        )
        .await
    }

    /// `DELETE …/snapshot/{snapname}[?force=1]`.
    pub async fn delete_snapshot(
        &self,
        vm: &VmRef,
        name: &SnapshotName,
        force: bool,
    ) -> Result<Upid, PveError> {
        let id = vm.vmid.to_string();
        let query: Vec<(&str, String)> = if force {
            vec![("force", bool01(true))]
        } else {
            Vec::new()
        };
        self.delete_task(
            &["nodes", &vm.node, "qemu", &id, "snapshot", name.as_str()],
            &query,
            &Target::vm(vm),
        )
        .await
    }

    /// `POST …/snapshot/{snapname}/rollback`. Hard-stops a running VM first (PVE's behaviour).
    pub async fn rollback_snapshot(
        &self,
        vm: &VmRef,
        name: &SnapshotName,
        start: bool,
    ) -> Result<Upid, PveError> {
        let id = vm.vmid.to_string();
        self.post_task(
            &[
                "nodes",
                &vm.node,
                "qemu",
                &id,
                "snapshot",
                name.as_str(),
                "rollback",
            ],
            &[("start", bool01(start))],
            &Target::vm(vm),
        )
        .await
    }

    /// `POST …/status/start`.
    pub async fn start_vm(&self, vm: &VmRef) -> Result<Upid, PveError> {
        self.power(vm, "start", &[]).await
    }

    /// `POST …/status/shutdown` (ACPI or agent; `force_stop` hard-stops after `timeout_s`).
    pub async fn shutdown_vm(
        &self,
        vm: &VmRef,
        timeout_s: Option<u32>,
        force_stop: bool,
    ) -> Result<Upid, PveError> {
        let mut form = vec![("forceStop", bool01(force_stop))];
        if let Some(t) = timeout_s {
            form.push(("timeout", t.to_string()));
        }
        self.power(vm, "shutdown", &form).await
    }

    /// `POST …/status/stop` (immediate).
    pub async fn stop_vm(&self, vm: &VmRef) -> Result<Upid, PveError> {
        self.power(vm, "stop", &[]).await
    }

    async fn power(
        &self,
        vm: &VmRef,
        action: &str,
        form: &[(&str, String)],
    ) -> Result<Upid, PveError> {
        let id = vm.vmid.to_string();
        self.post_task(
            &["nodes", &vm.node, "qemu", &id, "status", action],
            form,
            &Target::vm(vm),
        )
        .await
    }

    // ---- writes that wait --------------------------------------------------------------------

    /// Creates a snapshot and waits for its task.
    ///
    /// If the POST's answer is lost (reset, 5xx, 595/596), the snapshot list decides: present
    /// and complete means done; absent after a connect error (request never sent) means one
    /// more POST; anything else returns the original error.
    pub async fn snapshot_and_wait(
        &self,
        vm: &VmRef,
        req: &SnapshotRequest,
    ) -> Result<TaskDone, PveError> {
        let key = spinner_key(vm);
        let target = Target::vm(vm);
        let first = self.create_snapshot(vm, req).await;
        let upid = match first {
            Ok(upid) => upid,
            Err(e) if e.is_transient() => match self.find_snapshot(vm, &req.name).await {
                Some(s) if s.is_complete() => {
                    self.reporter().info(&format!(
                        "{vm}: snapshot {} exists although its request failed ({e}); \
                             treating it as created",
                        req.name
                    ));
                    return Ok(TaskDone {
                        task: None,
                        recovered: true,
                    });
                }
                None if matches!(e, PveError::Transport { not_sent: true, .. }) => {
                    self.create_snapshot(vm, req).await?
                }
                _ => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let outcome = self.wait_for_task(&upid, &key, &target).await?;
        Ok(TaskDone {
            task: Some(outcome),
            recovered: false,
        })
    }

    /// Deletes a snapshot and waits. A lost answer is resolved by listing: absent means done.
    pub async fn delete_snapshot_and_wait(
        &self,
        vm: &VmRef,
        name: &SnapshotName,
        force: bool,
    ) -> Result<TaskDone, PveError> {
        let upid = match self.delete_snapshot(vm, name, force).await {
            Ok(upid) => upid,
            Err(e) if e.is_transient() => {
                let listed = self.list_snapshots(vm).await;
                return match listed {
                    Ok(list) if !list.iter().any(|s| s.name == name.as_str()) => Ok(TaskDone {
                        task: None,
                        recovered: true,
                    }),
                    _ => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let outcome = self
            .wait_for_task(&upid, &spinner_key(vm), &Target::vm(vm))
            .await?;
        Ok(TaskDone {
            task: Some(outcome),
            recovered: false,
        })
    }

    /// Rolls back to a snapshot and waits. Never retried: whether a lost rollback happened
    /// cannot be told from outside, so the error goes to the operator.
    pub async fn rollback_and_wait(
        &self,
        vm: &VmRef,
        name: &SnapshotName,
        start: bool,
    ) -> Result<TaskOutcome, PveError> {
        let upid = self.rollback_snapshot(vm, name, start).await?;
        self.wait_for_task(&upid, &spinner_key(vm), &Target::vm(vm))
            .await
    }

    async fn find_snapshot(&self, vm: &VmRef, name: &SnapshotName) -> Option<Snapshot> {
        match self.list_snapshots(vm).await {
            Ok(list) => list.into_iter().find(|s| s.name == name.as_str()),
            Err(e) => {
                tracing::debug!(error = %e, "listing snapshots after a failed create");
                None
            }
        }
    }
}

/// The Reporter key of a VM's spinner.
pub fn spinner_key(vm: &VmRef) -> String {
    format!("vm {}", vm.vmid)
}

/// PVE accepts only `1`/`0` for booleans in form and query encoding.
fn bool01(b: bool) -> String {
    if b { "1" } else { "0" }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_normalise() {
        for (input, want) in [
            ("pve1.lan", "https://pve1.lan:8006/api2/json"),
            ("pve1.lan:8006", "https://pve1.lan:8006/api2/json"),
            ("https://pve1.lan:8006/", "https://pve1.lan:8006/api2/json"),
            (
                "https://pve1.lan:8006/api2/json",
                "https://pve1.lan:8006/api2/json",
            ),
            (
                "https://pve1.lan:8006/api2/json/",
                "https://pve1.lan:8006/api2/json",
            ),
            (
                "https://pve.example.com:443",
                "https://pve.example.com/api2/json",
            ),
            ("https://10.0.0.5", "https://10.0.0.5:8006/api2/json"),
            ("https://[fd00::5]", "https://[fd00::5]:8006/api2/json"),
            ("http://127.0.0.1:1234", "http://127.0.0.1:1234/api2/json"),
        ] {
            assert_eq!(normalize_endpoint(input).unwrap().as_str(), want, "{input}");
        }
        assert!(normalize_endpoint("").is_err());
        assert!(normalize_endpoint("ftp://x").is_err());
        assert!(normalize_endpoint("https://x/?a=1").is_err());
    }

    #[test]
    fn from_config_env_wins_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = PveConfig {
            endpoint: Some("https://pve1.lan:8006".into()),
            ..PveConfig::default()
        };
        let env = |k: &str| match k {
            ENV_ENDPOINT => Some("https://pve2.lan:8006".to_owned()),
            ENV_API_TOKEN => Some("a@pve!t=s3cr3t".to_owned()),
            _ => None,
        };
        let c =
            PveClient::from_config_with_env(&cfg, dir.path(), Arc::new(NoopReporter), env).unwrap();
        assert_eq!(c.base_url().host_str(), Some("pve2.lan"));
        assert!(!format!("{c:?}").contains("s3cr3t"));

        // No token anywhere.
        let e = PveClient::from_config_with_env(&cfg, dir.path(), Arc::new(NoopReporter), |_| None)
            .unwrap_err();
        assert!(e.to_string().contains("PROXMOX_VE_API_TOKEN"), "{e}");

        // http is refused outside tests.
        let http = PveConfig {
            endpoint: Some("http://pve1.lan:8006".into()),
            ..PveConfig::default()
        };
        let tok = |k: &str| (k == ENV_API_TOKEN).then(|| "a@pve!t=s".to_owned());
        assert!(
            PveClient::from_config_with_env(&http, dir.path(), Arc::new(NoopReporter), tok)
                .is_err()
        );

        // Conflicting TLS settings.
        let both = PveConfig {
            fingerprint: Some("AA".repeat(32)),
            insecure: true,
            ..cfg.clone()
        };
        assert!(
            PveClient::from_config_with_env(&both, dir.path(), Arc::new(NoopReporter), tok)
                .is_err()
        );

        // insecure warns.
        let rec = Arc::new(crate::ui::RecordingReporter::default());
        let insecure = PveConfig {
            insecure: true,
            ..cfg.clone()
        };
        PveClient::from_config_with_env(&insecure, dir.path(), rec.clone(), tok).unwrap();
        assert!(
            rec.events()
                .iter()
                .any(|e| matches!(e, Event::Warning { message } if message.contains("insecure")))
        );
    }

    #[cfg(unix)]
    #[test]
    fn from_config_token_file_relative() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pve-token");
        std::fs::write(&p, "a@pve!t=s3cr3t\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cfg = PveConfig {
            endpoint: Some("https://pve1.lan:8006".into()),
            token_file: Some("pve-token".into()),
            ..PveConfig::default()
        };
        PveClient::from_config_with_env(&cfg, dir.path(), Arc::new(NoopReporter), |_| None)
            .unwrap();
    }
}
