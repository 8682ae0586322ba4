//! The project's own maker of REAL etcd snapshots, for the tests, the fixtures and the benchmarks.
//!
//! It starts a throwaway single-member etcd (Debian's `etcd-server`, 3.4) on free 127.0.0.1
//! ports with a private temporary data directory, loads Kubernetes-looking keys through etcd's
//! JSON gateway (one transaction per batch), optionally overwrites, deletes, compacts and
//! defragments, and saves the snapshot with the real `etcdctl snapshot save` — a bbolt database
//! plus its sha256 trailer, exactly what a user backs up. It only ever stops the etcd it started
//! (it owns that `Child`), also when loading fails or the caller panics.
//!
//! The tests use it as a module of the test binary; `examples/make_etcd_snapshot.rs` includes
//! this same file (`#[path]`) so fixtures and benchmark snapshots come from the same code.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

/// What to put into etcd before the snapshot; `Recipe::from_args` reads the option syntax the
/// tests and the example use (`--keys 150 --value-bytes 400 --updates 0.5 --compact …`).
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// Distinct keys to create.
    pub keys: usize,
    /// Mean value size; sizes are uniform in [B/2, 3B/2] unless `fixed_size`.
    pub value_bytes: usize,
    pub fixed_size: bool,
    /// Fraction (0..=1) of the keys overwritten once more afterwards (history, revisions).
    pub updates: f64,
    /// Fraction (0..=1) of the keys deleted afterwards (tombstones).
    pub deletes: f64,
    /// Compact history at the final revision before saving.
    pub compact: bool,
    /// Defragment before saving (a smaller file with a different page layout).
    pub defrag: bool,
    /// Attach one lease to the `/registry/events/` keys, as Kubernetes does.
    pub leases: bool,
    /// Seed of the key names and value bytes; `None` picks one from the clock.
    pub seed: Option<u64>,
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            keys: 1000,
            value_bytes: 1024,
            fixed_size: false,
            updates: 0.0,
            deletes: 0.0,
            compact: false,
            defrag: false,
            leases: true,
            seed: None,
        }
    }
}

impl Recipe {
    /// Parses `--keys N --value-bytes B --fixed-size --updates F --deletes F --compact --defrag
    /// --no-leases --seed S`; anything else is an error naming the option.
    pub fn from_args<S: AsRef<str>>(args: &[S]) -> Result<Self> {
        let mut r = Self::default();
        let mut it = args.iter().map(AsRef::as_ref);
        while let Some(opt) = it.next() {
            let mut value = || it.next().ok_or_else(|| anyhow!("{opt} needs a value"));
            match opt {
                "--keys" => r.keys = parse(opt, value()?)?,
                "--value-bytes" => r.value_bytes = parse(opt, value()?)?,
                "--fixed-size" => r.fixed_size = true,
                "--updates" => r.updates = fraction(opt, value()?)?,
                "--deletes" => r.deletes = fraction(opt, value()?)?,
                "--compact" => r.compact = true,
                "--defrag" => r.defrag = true,
                "--no-leases" => r.leases = false,
                "--seed" => r.seed = Some(parse(opt, value()?)?),
                other => bail!("unknown option {other:?}"),
            }
        }
        if r.value_bytes == 0 {
            bail!("--value-bytes must be at least 1");
        }
        Ok(r)
    }
}

fn parse<T: std::str::FromStr>(opt: &str, v: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e| anyhow!("{opt} {v:?}: {e}"))
}

fn fraction(opt: &str, v: &str) -> Result<f64> {
    let f: f64 = parse(opt, v)?;
    if !(0.0..=1.0).contains(&f) {
        bail!("{opt} takes a fraction between 0 and 1, got {v}");
    }
    Ok(f)
}

/// What was loaded, as etcd itself reported it just before the snapshot was saved.
#[derive(Debug, Clone)]
pub struct Made {
    pub path: PathBuf,
    pub put: usize,
    pub updated: usize,
    pub deleted: usize,
    /// Keys under `/registry/` that etcd counted (a range with `count_only`).
    pub live: u64,
    /// etcd's revision before compaction and saving.
    pub revision: i64,
    /// Size of etcd's backend database before saving, as `maintenance/status` reported it.
    pub db_size: u64,
    /// The PID of the etcd this run started (gone once `make_snapshot` returns).
    pub etcd_pid: u32,
    pub etcd_version: String,
}

/// Makes a real snapshot at `out` (written as `out.tmp.<pid>` and renamed when complete, so no
/// partial file is ever left at `out`).
pub fn make_snapshot(out: &Path, recipe: &Recipe) -> Result<Made> {
    let etcd_bin = tool("etcd", "etcd-server")?;
    let etcdctl = tool("etcdctl", "etcd-client")?;
    let version = etcd_version(&etcd_bin)?;
    let dir = tempfile::Builder::new()
        .prefix("talos-dr-etcd-")
        .tempdir()
        .context("cannot create a temporary directory for etcd")?;
    let etcd = Etcd::start(&etcd_bin, dir.path(), recipe)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")?;
    let loaded = runtime
        .block_on(load(etcd.port, recipe))
        .map_err(|e| e.context(etcd.describe()))?;

    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = PathBuf::from(format!("{}.tmp.{}", out.display(), std::process::id()));
    let save = Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=127.0.0.1:{}", etcd.port))
        .args([
            "--dial-timeout=10s",
            "--command-timeout=600s",
            "snapshot",
            "save",
        ])
        .arg(&tmp)
        .output()
        .with_context(|| format!("cannot run {}", etcdctl.display()))?;
    if !save.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "etcdctl snapshot save {} failed ({}): {}\n{}",
            tmp.display(),
            save.status,
            String::from_utf8_lossy(&save.stderr).trim(),
            etcd.describe()
        );
    }
    std::fs::rename(&tmp, out)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))?;
    let etcd_pid = etcd.child.id();
    drop(etcd);
    Ok(Made {
        path: out.to_path_buf(),
        put: loaded.put,
        updated: loaded.updated,
        deleted: loaded.deleted,
        live: loaded.live,
        revision: loaded.revision,
        db_size: loaded.db_size,
        etcd_pid,
        etcd_version: version,
    })
}

/// `etcdctl snapshot status -w json` of `path`, as etcd prints it.
pub fn etcdctl_status_json(path: &Path) -> Result<String> {
    let etcdctl = tool("etcdctl", "etcd-client")?;
    let out = Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {}", etcdctl.display()))?;
    if !out.status.success() {
        bail!(
            "etcdctl snapshot status {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A tool from PATH, or an error that says which Debian package has it and who installs it.
pub fn tool(name: &str, package: &str) -> Result<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "`{name}` is not installed (Debian package {package}): real etcd snapshots need \
                 etcd 3.4; run `scripts/test`, which installs what the tests need, or \
                 apt-get install etcd-server etcd-client as root"
            )
        })
}

fn etcd_version(etcd: &Path) -> Result<String> {
    let out = Command::new(etcd)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {} --version", etcd.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{} --version printed no version: {text}", etcd.display()))
}

// ------------------------------------------------------------------------------------------
// A live etcd for tests that write their own keys.

/// A throwaway etcd that a test writes to key by key (through the JSON gateway), asks with the
/// real `etcdctl`, and snapshots with `etcdctl snapshot save`. Stopped when dropped.
pub struct LiveEtcd {
    etcd: Etcd,
    gw: Gateway,
    etcdctl: PathBuf,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl LiveEtcd {
    pub fn start() -> Result<Self> {
        let etcd_bin = tool("etcd", "etcd-server")?;
        let etcdctl = tool("etcdctl", "etcd-client")?;
        let dir = tempfile::Builder::new()
            .prefix("talos-dr-etcd-")
            .tempdir()
            .context("cannot create a temporary directory for etcd")?;
        let etcd = Etcd::start(&etcd_bin, dir.path(), &Recipe::default())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a tokio runtime")?;
        let gw = Gateway::new(etcd.port)?;
        Ok(Self {
            etcd,
            gw,
            etcdctl,
            runtime,
            _dir: dir,
        })
    }

    fn call(&self, path: &str, body: Value) -> Result<Value> {
        self.runtime
            .block_on(self.gw.call(path, body))
            .map_err(|e| e.context(self.etcd.describe()))
    }

    pub fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<()> {
        let mut req = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        if let Some(id) = lease {
            req["lease"] = json!(id.to_string());
        }
        self.call("kv/put", req).map(drop)
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.call("kv/deleterange", json!({ "key": b64(key.as_bytes()) }))
            .map(drop)
    }

    pub fn grant_lease(&self, ttl: i64) -> Result<i64> {
        let r = self.call("lease/grant", json!({ "TTL": ttl }))?;
        int(&r["ID"]).context("lease/grant returned no ID")
    }

    /// Compacts (physically) at the current revision and returns it.
    pub fn compact(&self) -> Result<i64> {
        let r = self.call("kv/range", json!({ "key": b64(b"\0"), "count_only": true }))?;
        let rev = int(&r["header"]["revision"]).context("kv/range returned no revision")?;
        self.call(
            "kv/compaction",
            json!({ "revision": rev.to_string(), "physical": true }),
        )?;
        Ok(rev)
    }

    /// Runs the real `etcdctl` against this etcd and returns its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=127.0.0.1:{}", self.etcd.port))
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", self.etcdctl.display()))?;
        if !out.status.success() {
            bail!(
                "etcdctl {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// etcd's own count of live keys under PREFIX: the `count` of the range response of
    /// `etcdctl get PREFIX --prefix --keys-only -w json` (3.5's `--count-only` prints the same
    /// field; etcdctl 3.4 has no such flag).
    pub fn count(&self, prefix: &str) -> Result<u64> {
        let out = self.etcdctl(&["get", prefix, "--prefix", "--keys-only", "-w", "json"])?;
        let v: Value = serde_json::from_str(&out).context("etcdctl printed no JSON")?;
        Ok(v["count"].as_u64().unwrap_or(0))
    }

    /// Every live key under PREFIX with its mod revision (`etcdctl get --prefix -w json`).
    pub fn mod_revisions(&self, prefix: &str) -> Result<std::collections::BTreeMap<String, i64>> {
        let out = self.etcdctl(&["get", prefix, "--prefix", "--keys-only", "-w", "json"])?;
        let v: Value = serde_json::from_str(&out).context("etcdctl printed no JSON")?;
        let mut map = std::collections::BTreeMap::new();
        for kv in v["kvs"].as_array().into_iter().flatten() {
            let key = kv["key"].as_str().context("a key without bytes")?;
            let key = String::from_utf8(unb64(key)?).context("a key that is not UTF-8")?;
            map.insert(key, kv["mod_revision"].as_i64().unwrap_or(0));
        }
        Ok(map)
    }

    /// `etcdctl snapshot save OUT`.
    pub fn save(&self, out: &Path) -> Result<()> {
        let path = out.to_str().context("snapshot path is not UTF-8")?;
        self.etcdctl(&["--command-timeout=120s", "snapshot", "save", path])
            .map(drop)
    }
}

fn unb64(s: &str) -> Result<Vec<u8>> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = T.iter().position(|&t| t == c).context("not base64")? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------
// The throwaway etcd.

struct Etcd {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Etcd {
    /// Starts etcd on two free ports; a port taken between choosing and binding (other tests
    /// start servers too) makes etcd exit, so a few attempts with fresh ports are made.
    fn start(bin: &Path, dir: &Path, recipe: &Recipe) -> Result<Self> {
        let mut last = anyhow!("etcd was not started");
        for attempt in 1..=5 {
            match Self::start_once(bin, dir, recipe, attempt) {
                Ok(etcd) => return Ok(etcd),
                Err(e) => last = e,
            }
        }
        Err(last.context(format!("could not start {}", bin.display())))
    }

    fn start_once(bin: &Path, dir: &Path, recipe: &Recipe, attempt: u32) -> Result<Self> {
        let (client, peer) = (free_port()?, free_port()?);
        let data = dir.join(format!("data-{attempt}"));
        let log = dir.join(format!("etcd-{attempt}.log"));
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        // Big batches need room: a request holds up to ~1.4 MB of JSON, values up to 3B/2.
        let max_request = recipe.value_bytes * 3 + (8 << 20);
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new(bin);
        cmd.arg("--name=maker")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=maker={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg(format!("--max-request-bytes={max_request}"))
            .arg("--max-txn-ops=100000")
            .arg(format!("--quota-backend-bytes={}", 8u64 << 30))
            // No raft snapshots mid-load: they only cost time here.
            .arg("--snapshot-count=100000000")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // etcd refuses to run on other architectures unless told it may.
        match std::env::consts::ARCH {
            "x86_64" => {}
            "aarch64" => {
                cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
            }
            other => {
                cmd.env("ETCD_UNSUPPORTED_ARCH", other);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut etcd = Etcd {
            child,
            port: client,
            log,
        };
        etcd.wait_healthy()?;
        Ok(etcd)
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("etcd exited at start ({status}); {}", self.describe());
            }
            if health_ok(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not become healthy within 60 s; {}",
                    self.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Which etcd this is and the end of its log, for error messages.
    fn describe(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        let mut s = format!(
            "etcd pid {} on 127.0.0.1:{} (log {})",
            self.child.id(),
            self.port,
            self.log.display()
        );
        for line in tail.iter().rev() {
            let _ = write!(s, "\n  {}", line.chars().take(300).collect::<String>());
        }
        s
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Our own child only; the data directory goes with the TempDir.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0)).context("cannot bind a port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// `GET /health` by hand: one short request, no runtime needed while waiting.
fn health_ok(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.") && reply.contains("\"health\":\"true\"")
}

// ------------------------------------------------------------------------------------------
// Loading keys through the JSON gateway (`/v3/...`; bytes are base64, int64s are strings).

struct Loaded {
    put: usize,
    updated: usize,
    deleted: usize,
    live: u64,
    revision: i64,
    db_size: u64,
}

/// Raw key+value bytes per transaction; well under the request limit given to etcd.
const BATCH_BYTES: usize = 512 << 10;
/// Transactions in flight: etcd batches concurrent writes into one backend commit.
const IN_FLIGHT: usize = 2;

async fn load(port: u16, recipe: &Recipe) -> Result<Loaded> {
    let gw = Gateway::new(port)?;
    let seed = recipe.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.as_nanos() as u64 ^ u64::from(std::process::id())
    });
    let mut rng = Rng(seed);
    let lease = if recipe.leases {
        let r = gw.call("lease/grant", json!({ "TTL": 7200 })).await?;
        Some(int(&r["ID"]).context("lease/grant returned no ID")?)
    } else {
        None
    };
    let keys: Vec<String> = (0..recipe.keys).map(|i| key_of(i, &mut rng)).collect();
    let lease_of = |k: &str| lease.filter(|_| k.starts_with("/registry/events/"));

    let mut batches = Batcher::new(&gw);
    for (i, k) in keys.iter().enumerate() {
        let v = value_of(k, i, 1, recipe, &mut rng);
        batches.put(k, &v, lease_of(k)).await?;
    }
    batches.finish().await?;

    let updated = pick(recipe.keys, recipe.updates, &mut rng);
    for &i in &updated {
        let v = value_of(&keys[i], i, 2, recipe, &mut rng);
        batches.put(&keys[i], &v, lease_of(&keys[i])).await?;
    }
    batches.finish().await?;

    let deleted = pick(recipe.keys, recipe.deletes, &mut rng);
    for &i in &deleted {
        batches.delete(&keys[i]).await?;
    }
    batches.finish().await?;

    let count = gw
        .call(
            "kv/range",
            json!({ "key": b64(b"/registry/"), "range_end": b64(b"/registry0"), "count_only": true }),
        )
        .await?;
    let live = int(&count["count"]).unwrap_or(0) as u64;
    let revision = int(&count["header"]["revision"]).context("kv/range returned no revision")?;
    if recipe.compact {
        gw.call(
            "kv/compaction",
            json!({ "revision": revision.to_string(), "physical": true }),
        )
        .await?;
    }
    if recipe.defrag {
        gw.call("maintenance/defragment", json!({})).await?;
    }
    let status = gw.call("maintenance/status", json!({})).await?;
    Ok(Loaded {
        put: keys.len(),
        updated: updated.len(),
        deleted: deleted.len(),
        live,
        revision,
        db_size: int(&status["dbSize"]).unwrap_or(0) as u64,
    })
}

#[derive(Clone)]
struct Gateway {
    http: reqwest::Client,
    base: String,
}

impl Gateway {
    fn new(port: u16) -> Result<Self> {
        Ok(Self {
            // A proxy from the environment must not see requests meant for 127.0.0.1.
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(600))
                .build()?,
            base: format!("http://127.0.0.1:{port}/v3"),
        })
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}/{path}", self.base);
        let reply = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = reply.status();
        let text = reply
            .text()
            .await
            .with_context(|| format!("POST {url}: reading the reply"))?;
        if !status.is_success() {
            bail!(
                "POST {url}: HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            );
        }
        serde_json::from_str(&text).with_context(|| format!("POST {url}: reply is not JSON"))
    }
}

/// Groups operations into transactions of about `BATCH_BYTES` and keeps `IN_FLIGHT` of them
/// in flight.
struct Batcher {
    gw: Gateway,
    ops: Vec<Value>,
    bytes: usize,
    in_flight: std::collections::VecDeque<tokio::task::JoinHandle<Result<Value>>>,
}

impl Batcher {
    fn new(gw: &Gateway) -> Self {
        Self {
            gw: gw.clone(),
            ops: Vec::new(),
            bytes: 0,
            in_flight: Default::default(),
        }
    }

    async fn put(&mut self, key: &str, value: &[u8], lease: Option<i64>) -> Result<()> {
        let mut req = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        if let Some(id) = lease {
            req["lease"] = json!(id.to_string());
        }
        self.push(json!({ "requestPut": req }), key.len() + value.len())
            .await
    }

    async fn delete(&mut self, key: &str) -> Result<()> {
        self.push(
            json!({ "requestDeleteRange": { "key": b64(key.as_bytes()) } }),
            key.len(),
        )
        .await
    }

    async fn push(&mut self, op: Value, bytes: usize) -> Result<()> {
        self.ops.push(op);
        self.bytes += bytes + 16;
        if self.bytes >= BATCH_BYTES {
            self.send().await?;
        }
        Ok(())
    }

    async fn send(&mut self) -> Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= IN_FLIGHT {
            self.wait_one().await?;
        }
        let body = json!({ "success": std::mem::take(&mut self.ops) });
        self.bytes = 0;
        let gw = self.gw.clone();
        self.in_flight
            .push_back(tokio::spawn(async move { gw.call("kv/txn", body).await }));
        Ok(())
    }

    async fn wait_one(&mut self) -> Result<()> {
        if let Some(h) = self.in_flight.pop_front() {
            h.await.context("a txn task panicked")??;
        }
        Ok(())
    }

    /// Sends what is left and waits for everything, so the next phase sees it all.
    async fn finish(&mut self) -> Result<()> {
        self.send().await?;
        while !self.in_flight.is_empty() {
            self.wait_one().await?;
        }
        Ok(())
    }
}

/// An int64 from the gateway's JSON (a string, or a number).
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------
// Content: a busy cluster's key mix with values of the asked size.

/// splitmix64: small, seedable, and good enough for test content.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// (resource, namespaced, weight): roughly what a busy cluster's etcd holds.
const RESOURCES: &[(&str, bool, usize)] = &[
    ("pods", true, 30),
    ("events", true, 15),
    ("secrets", true, 10),
    ("configmaps", true, 10),
    ("replicasets", true, 8),
    ("services/specs", true, 4),
    ("services/endpoints", true, 4),
    ("deployments", true, 4),
    ("serviceaccounts", true, 4),
    ("leases", true, 2),
    ("minions", false, 2),
    ("namespaces", false, 1),
    ("clusterroles", false, 3),
    ("clusterrolebindings", false, 3),
];

const NAMESPACES: &[&str] = &[
    "default",
    "kube-system",
    "kube-public",
    "monitoring",
    "ingress-nginx",
    "cert-manager",
    "team-a",
    "team-b",
    "team-c",
    "team-d",
];

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The i-th key: unique through the index, Kubernetes-shaped through the rest.
fn key_of(i: usize, rng: &mut Rng) -> String {
    let total: usize = RESOURCES.iter().map(|r| r.2).sum();
    let mut x = rng.below(total);
    let (res, namespaced, _) = RESOURCES
        .iter()
        .find(|r| {
            if x < r.2 {
                true
            } else {
                x -= r.2;
                false
            }
        })
        .copied()
        .unwrap_or(RESOURCES[0]);
    let kind = res.rsplit('/').next().unwrap_or(res).trim_end_matches('s');
    let suffix: String = (0..5)
        .map(|_| char::from(ALPHABET[26 + rng.below(26)]))
        .collect();
    let name = format!("{kind}-{i:06}-{suffix}");
    if namespaced {
        let ns = NAMESPACES[rng.below(NAMESPACES.len())];
        format!("/registry/{res}/{ns}/{name}")
    } else {
        format!("/registry/{res}/{name}")
    }
}

/// A value of the recipe's size: encrypted-looking for secrets, a JSON object otherwise, with
/// base64-alphabet filler (about as compressible as real objects, not all zeros).
fn value_of(key: &str, i: usize, generation: u32, recipe: &Recipe, rng: &mut Rng) -> Vec<u8> {
    let b = recipe.value_bytes;
    let n = if recipe.fixed_size {
        b
    } else {
        (b / 2 + rng.below(b + 1)).max(1)
    };
    let resource = key.split('/').nth(2).unwrap_or("pods");
    let name = key.rsplit('/').next().unwrap_or(key);
    let (head, tail) = if resource == "secrets" {
        ("k8s:enc:aescbc:v1:key1:".to_owned(), "")
    } else {
        (
            format!(
                "{{\"kind\":\"{resource}\",\"apiVersion\":\"v1\",\"metadata\":{{\"name\":\"{name}\",\
                 \"uid\":\"{:016x}{:016x}\",\"resourceVersion\":\"{i}\",\"generation\":{generation}}},\
                 \"data\":\"",
                rng.next(),
                rng.next()
            ),
            "\"}",
        )
    };
    let mut v = Vec::with_capacity(n.max(head.len() + tail.len()));
    v.extend_from_slice(head.as_bytes());
    let filler = n.saturating_sub(head.len() + tail.len());
    v.extend((0..filler).map(|_| ALPHABET[rng.below(64)]));
    v.extend_from_slice(tail.as_bytes());
    // A value smaller than the header is the header cut to size.
    v.truncate(n.max(1));
    v
}

/// `floor(n * fraction)` distinct indices below `n`, in ascending order.
fn pick(n: usize, fraction: f64, rng: &mut Rng) -> Vec<usize> {
    let k = ((n as f64) * fraction).floor() as usize;
    let mut all: Vec<usize> = (0..n).collect();
    for j in 0..k {
        let r = j + rng.below(n - j);
        all.swap(j, r);
    }
    let mut chosen = all[..k].to_vec();
    chosen.sort_unstable();
    chosen
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (j, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if j <= chunk.len() {
                out.push(char::from(T[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(b64(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[test]
    fn recipe_reads_every_option_and_rejects_nonsense() {
        let r = Recipe::from_args(&[
            "--keys",
            "150",
            "--value-bytes",
            "400",
            "--fixed-size",
            "--updates",
            "0.5",
            "--deletes",
            "0.2",
            "--compact",
            "--defrag",
            "--no-leases",
            "--seed",
            "7",
        ])
        .unwrap();
        let expected = Recipe {
            keys: 150,
            value_bytes: 400,
            fixed_size: true,
            updates: 0.5,
            deletes: 0.2,
            compact: true,
            defrag: true,
            leases: false,
            seed: Some(7),
        };
        assert_eq!(r, expected);
        for bad in [
            &["--updates", "1.5"][..],
            &["--keys"],
            &["--keys", "many"],
            &["--size", "5M"],
            &["--value-bytes", "0"],
        ] {
            assert!(Recipe::from_args(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn content_follows_the_recipe_and_the_seed() {
        let recipe = Recipe {
            value_bytes: 400,
            ..Recipe::default()
        };
        let mut a = Rng(42);
        let mut b = Rng(42);
        let keys: Vec<String> = (0..500).map(|i| key_of(i, &mut a)).collect();
        let again: Vec<String> = (0..500).map(|i| key_of(i, &mut b)).collect();
        assert_eq!(keys, again, "same seed, same keys");
        let unique: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "keys are distinct");
        assert!(keys.iter().all(|k| k.starts_with("/registry/")));
        assert!(keys.iter().any(|k| k.starts_with("/registry/events/")));
        for (i, k) in keys.iter().enumerate() {
            let v = value_of(k, i, 1, &recipe, &mut a);
            assert!((200..=600).contains(&v.len()), "{k}: {} bytes", v.len());
        }
        let fixed = Recipe {
            fixed_size: true,
            value_bytes: 9000,
            ..Recipe::default()
        };
        assert_eq!(value_of(&keys[0], 0, 1, &fixed, &mut a).len(), 9000);
        let tiny = Recipe {
            fixed_size: true,
            value_bytes: 5,
            ..Recipe::default()
        };
        assert_eq!(value_of(&keys[0], 0, 1, &tiny, &mut a).len(), 5);
    }

    #[test]
    fn pick_chooses_the_floor_of_the_fraction_without_repeats() {
        let mut rng = Rng(1);
        let p = pick(150, 0.3, &mut rng);
        assert_eq!(p.len(), 45);
        assert!(p.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        assert!(p.iter().all(|&i| i < 150));
        assert_eq!(pick(150, 0.0, &mut rng), Vec::<usize>::new());
        assert_eq!(pick(10, 1.0, &mut rng), (0..10).collect::<Vec<_>>());
    }

    /// The maker against a real etcd: what etcd counted before saving matches the recipe, the
    /// file is a snapshot `etcdctl` reads, and the etcd it started is gone afterwards.
    #[test]
    fn real_etcd_applies_the_recipe_and_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("maker.snapshot");
        let recipe = Recipe::from_args(&[
            "--keys",
            "120",
            "--value-bytes",
            "300",
            "--updates",
            "0.25",
            "--deletes",
            "0.1",
            "--seed",
            "3",
        ])
        .unwrap();
        let made = make_snapshot(&out, &recipe).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            (made.put, made.updated, made.deleted),
            (120, 30, 12),
            "{made:?}"
        );
        assert_eq!(made.live, 108, "etcd's own count of live keys: {made:?}");
        assert!(
            !Path::new(&format!("/proc/{}", made.etcd_pid)).exists(),
            "etcd pid {} still runs",
            made.etcd_pid
        );
        let len = std::fs::metadata(&out).unwrap().len();
        assert_eq!(len % 512, 32, "bbolt pages plus a 32-byte sha256 trailer");
        let status: serde_json::Value =
            serde_json::from_str(&etcdctl_status_json(&out).unwrap()).unwrap();
        // Every put, update and delete is one revision in bucket `key` (no compaction), besides
        // the handful of keys in etcd's own buckets.
        let total = status["totalKey"].as_u64().unwrap();
        assert!(total >= 120 + 30 + 12, "{status}");
        assert_eq!(status["revision"].as_i64().unwrap(), made.revision);
        assert!(
            !dir.path()
                .read_dir()
                .unwrap()
                .any(|e| { e.unwrap().file_name().to_string_lossy().contains(".tmp.") })
        );
    }
}
