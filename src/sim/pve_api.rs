//! A simulated Proxmox VE API server for `talos-dr demo`, the integration tests and the benchmark:
//! the one stateful Proxmox VE fake of the project.
//!
//! HTTPS on `127.0.0.1` (random port) with a self-signed certificate made at start (rcgen), so
//! the client's real TLS pinning runs against [`PveSim::fingerprint`]: tokio-rustls, then axum on
//! hyper (`sim/http.rs`), one request per connection. The cluster is the `pve` section of the
//! state file ([`super::state::Pve`]), re-read and saved under the state lock for every request,
//! so tests inject faults by editing the file while the server runs.
//!
//! Every request is checked against the official schema subset ([`schema`]); one that breaks it
//! gets PVE's 400/501 answer *and* is appended to `pve.violations`, which the demo and the tests
//! require to stay empty. Paths, parameters, bodies, UPIDs and error shapes follow
//! `shared/reference/proxmox.md`; the handlers live in [`handlers`]. Routing is the schema's own
//! (one axum fallback handler), as in pveproxy, so an endpoint exists exactly when the subset
//! has it. Every request received is also kept in memory ([`PveSim::requests`]) for tests and
//! the benchmark to inspect.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::IntoResponse;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::state::{Cluster, Violation};
use crate::pve::tls::{fingerprint_of, format_fingerprint};

mod handlers;
mod rebuild;
pub mod schema;

use schema::{ParamValue, Rejection};

/// A request body larger than this is refused (ours are a few hundred bytes).
const MAX_BODY: usize = 1024 * 1024;

/// A running simulator.
#[derive(Debug)]
pub struct PveSim {
    pub addr: SocketAddr,
    /// sha256 of the certificate, `AA:BB:…` as `pvenode cert info` prints it.
    pub fingerprint: String,
    /// Abort it to stop the server (closes the listener and every open connection).
    pub handle: JoinHandle<()>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// The API token the demo profile uses (any well-formed token is accepted unless `pve.token`
/// names one).
pub const DEMO_TOKEN: &str = "talos-dr@pve!demo=00000000-0000-4000-8000-00000000d3e0";

impl PveSim {
    /// The `[proxmox]` section of a profile for this server: endpoint, pinned fingerprint and
    /// a token file (relative to the profile directory) holding e.g. [`DEMO_TOKEN`].
    pub fn profile_section(&self, token_file: &str) -> String {
        format!(
            "[proxmox]\nendpoint = \"{}\"\nfingerprint = \"{}\"\ntoken_file = \"{token_file}\"\n",
            self.endpoint(),
            self.fingerprint
        )
    }

    /// The endpoint for a profile or `PROXMOX_VE_ENDPOINT`: `https://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Every request received so far, oldest first (whatever its answer).
    pub fn requests(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    /// Path and query as sent (percent-encoded), e.g. `/api2/json/nodes/pve1/qemu`.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Received {
    /// The path without the query string, as sent.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The UPID when this is a task-status poll (`GET /nodes/{node}/tasks/{upid}/status`).
    pub fn polled_task(&self) -> Option<String> {
        if self.method != Method::GET {
            return None;
        }
        let segments: Vec<&str> = self
            .path()
            .strip_prefix("/api2/json/")?
            .split('/')
            .collect();
        match segments.as_slice() {
            ["nodes", _, "tasks", upid, "status"] => Some(percent_decode(upid)),
            _ => None,
        }
    }
}

/// Starts the server; it runs until [`PveSim::handle`] is aborted.
pub async fn serve(state_path: PathBuf) -> io::Result<PveSim> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .map_err(io::Error::other)?;
    let der = ck.cert.der().clone();
    let fingerprint = format_fingerprint(&fingerprint_of(der.as_ref()));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(vec![der], key)
    .map_err(io::Error::other)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));

    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(Mutex::new(Vec::new()));
    let ctx = Arc::new(Ctx {
        state_path,
        fingerprint: fingerprint.clone(),
        received: Arc::clone(&received),
    });
    let app = Router::new()
        .fallback(api)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctx);
    let handle = super::http::spawn(listener, app, Some(acceptor), "pve-api");
    Ok(PveSim {
        addr,
        fingerprint,
        handle,
        received,
    })
}

pub(crate) struct Ctx {
    state_path: PathBuf,
    fingerprint: String,
    received: Arc<Mutex<Vec<Received>>>,
}

/// Every request: record it, then answer it against the state file.
async fn api(
    State(ctx): State<Arc<Ctx>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> axum::response::Response {
    let target = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let req = Request {
        method: method.as_str().to_owned(),
        target: target.clone(),
        authorization: text(header::AUTHORIZATION),
        content_type: text(header::CONTENT_TYPE)
            .unwrap_or_default()
            .to_ascii_lowercase(),
        body: body.as_ref().map(|b| b.to_vec()).unwrap_or_default(),
    };
    ctx.received
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Received {
            method,
            target,
            headers: headers.clone(),
            body: req.body.clone(),
        });
    let response = match body {
        Ok(_) => {
            let ctx = Arc::clone(&ctx);
            // File locking and JSON parsing block; keep them off the async workers.
            tokio::task::spawn_blocking(move || respond(&req, &ctx.state_path, &ctx.fingerprint))
                .await
                .unwrap_or_else(|e| Response::fail(500, &format!("simulator panicked: {e}")))
        }
        Err(e) => Response::fail(400, &format!("bad request: {}", e.body_text())),
    };
    response.into_http()
}

/// A parsed request.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    method: String,
    /// Path and query as sent.
    target: String,
    authorization: Option<String>,
    content_type: String,
    body: Vec<u8>,
}

/// An answer: status, reason phrase (PVE puts the first line of the error there) and body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Response {
    status: u16,
    reason: String,
    /// `None` for the bodiless 401 and 59x answers.
    body: Option<Value>,
}

impl Response {
    fn ok(data: Value) -> Self {
        Self::ok_with(serde_json::json!({ "data": data }))
    }

    /// A 200 with extra top-level keys (the task log's `total`).
    fn ok_with(body: Value) -> Self {
        Self {
            status: 200,
            reason: "OK".into(),
            body: Some(body),
        }
    }

    /// A handler error (`die`): `{"data":null,"message":"…\n"}`, reason = first line.
    fn fail(status: u16, message: &str) -> Self {
        let message = message.trim_end_matches('\n');
        Self {
            status,
            reason: message.lines().next().unwrap_or_default().to_owned(),
            body: Some(serde_json::json!({ "data": null, "message": format!("{message}\n") })),
        }
    }

    /// 400 from parameter checks: `{"data":null,"errors":{…},"message":"Parameter verification failed.\n"}`.
    fn param_errors(errors: impl IntoIterator<Item = (String, String)>) -> Self {
        let errors: serde_json::Map<String, Value> = errors
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        Self {
            status: 400,
            reason: "Parameter verification failed.".into(),
            body: Some(serde_json::json!({
                "data": null,
                "errors": errors,
                "message": "Parameter verification failed.\n",
            })),
        }
    }

    /// 401/59x: reason phrase only.
    fn bare(status: u16, reason: &str) -> Self {
        Self {
            status,
            reason: reason.into(),
            body: None,
        }
    }

    /// The HTTP answer, with pve-api-daemon's headers and its reason phrase.
    fn into_http(self) -> axum::response::Response {
        let mut out = match &self.body {
            Some(body) => (
                [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
                body.to_string(),
            )
                .into_response(),
            None => ().into_response(),
        };
        *out.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = out.headers_mut();
        headers.insert(
            header::SERVER,
            HeaderValue::from_static("pve-api-daemon/3.0"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
        // hyper writes this instead of the canonical phrase (which 59x codes do not have).
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(self.reason.into_bytes()) {
            out.extensions_mut().insert(reason);
        }
        out
    }
}

/// `%XX` decoding of one path segment (PVE URI-unescapes path parameters).
fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi * 16 + lo);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The token id (`user@realm!name`) if the header carries a well-formed API token that the
/// simulated cluster accepts (`pve.token`, or any when unset).
/// PVE delays 401 answers by ~3 s against guessing; the simulator answers at once.
fn authenticate(header: Option<&str>, accepted: Option<&str>) -> Result<String, Response> {
    let Some(header) = header else {
        return Err(Response::bare(401, "No ticket"));
    };
    // Formatter.pm: `(?:^|\s)PVEAPIToken(?:=| )([^;]*)`.
    let value = header
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .strip_prefix("PVEAPIToken")
        .and_then(|r| r.strip_prefix(['=', ' ']))
        .map(|r| r.split(';').next().unwrap_or_default().to_owned());
    let fail = || Response::bare(401, "authentication failure");
    let value = value.ok_or_else(fail)?;
    let (id, secret) = value.rsplit_once('=').ok_or_else(fail)?;
    let (user_realm, name) = id.split_once('!').ok_or_else(fail)?;
    let (user, realm) = user_realm.rsplit_once('@').ok_or_else(fail)?;
    let word = |s: &str| {
        s.len() >= 2
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    let user_ok =
        !user.is_empty() && !user.contains(|c: char| c.is_whitespace() || c == ':' || c == '/');
    if !user_ok || !word(realm) || !word(name) || secret.is_empty() {
        return Err(fail());
    }
    if accepted.is_some_and(|t| t != value) {
        return Err(fail());
    }
    Ok(id.to_owned())
}

/// Parameters from the query string and (for POST/PUT) the body.
fn request_params(req: &Request, query: &str) -> Result<Vec<(String, ParamValue)>, String> {
    let mut params: Vec<(String, ParamValue)> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), ParamValue::Text(v.into_owned())))
        .collect();
    // AnyEvent.pm reads bodies only for POST and PUT; a DELETE body is ignored.
    if matches!(req.method.as_str(), "POST" | "PUT") && !req.body.is_empty() {
        if req.content_type.starts_with("application/json") {
            let v: Value = serde_json::from_slice(&req.body)
                .map_err(|e| format!("unable to parse JSON body: {e}"))?;
            let Value::Object(map) = v else {
                return Err("JSON body is not an object".to_owned());
            };
            params.extend(map.into_iter().map(|(k, v)| (k, ParamValue::Json(v))));
        } else {
            params.extend(
                url::form_urlencoded::parse(&req.body)
                    .map(|(k, v)| (k.into_owned(), ParamValue::Text(v.into_owned()))),
            );
        }
    }
    Ok(params)
}

/// Answers one request against the state file.
fn respond(req: &Request, state_path: &Path, fingerprint: &str) -> Response {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let api_path = path.strip_prefix("/api2/json");
    let segments: Vec<String> = api_path
        .unwrap_or_default()
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let outcome = Cluster::update(state_path, |cluster| {
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let mut refuse = |rej: Rejection| {
            cluster.pve.violations.push(Violation {
                at_ms: now_ms,
                method: req.method.clone(),
                path: req
                    .target
                    .strip_prefix("/api2/json")
                    .unwrap_or(&req.target)
                    .to_owned(),
                errors: rej.errors(),
            });
            match rej {
                Rejection::NotImplemented(m) => Response::fail(501, &m),
                Rejection::Invalid(errors) => Response::param_errors(errors),
            }
        };
        if api_path.is_none() {
            return refuse(Rejection::NotImplemented(format!(
                "Method '{} {path}' not implemented",
                req.method
            )));
        }
        let user = match authenticate(req.authorization.as_deref(), cluster.pve.token.as_deref()) {
            Ok(u) => u,
            Err(r) => return r,
        };
        let checked = match request_params(req, query) {
            Ok(params) => schema::check(&req.method, &segments, &params),
            Err(body_error) => Err(Rejection::Invalid(
                [("_root".to_owned(), body_error)].into_iter().collect(),
            )),
        };
        let matched = match checked {
            Ok(m) => m,
            Err(rej) => return refuse(rej),
        };
        cluster.pve.requests += 1;
        let call = handlers::Call {
            method: &req.method,
            matched: &matched,
            user: &user,
            fingerprint,
            now_ms,
        };
        handlers::handle(&mut cluster.pve, &call)
    });
    outcome.unwrap_or_else(|e| Response::fail(500, &format!("simulator state: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_header_forms() {
        let ok = authenticate(Some("PVEAPIToken=k8s-dr@pve!cli=s3cr3t"), None).unwrap();
        assert_eq!(ok, "k8s-dr@pve!cli");
        assert!(
            authenticate(
                Some("PVEAPIToken=k8s-dr@pve!cli=s3cr3t"),
                Some("k8s-dr@pve!cli=s3cr3t")
            )
            .is_ok()
        );
        for bad in [
            None,
            Some("Bearer x"),
            Some("PVEAPIToken=k8s-dr@pve=s"),
            Some("PVEAPIToken=k8s-dr@pve!cli="),
            Some("PVEAPIToken=k8s-dr!cli=s"),
        ] {
            let r = authenticate(bad, None).unwrap_err();
            assert_eq!((r.status, r.body), (401, None), "{bad:?}");
        }
        assert!(
            authenticate(
                Some("PVEAPIToken=k8s-dr@pve!cli=other"),
                Some("k8s-dr@pve!cli=s3cr3t")
            )
            .is_err()
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("UPID%3Apve1%21x"), "UPID:pve1!x");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("plain"), "plain");
    }
}
