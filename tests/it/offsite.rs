//! Off-site copies to `file://` and to a real S3-compatible server (moto): upload, list,
//! retention, restore from an off-site URL, tampered copies and interrupted uploads.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use predicates::prelude::*;

use crate::common::*;
use crate::pack::{append_profile, keygen, ok, small};

#[test]
fn file_target_upload_list_retention_and_restore() {
    let env = Env::with_kube();
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    let target = env.tmp.path().join("nfs/talos");
    append_profile(
        &env,
        &format!(
            "\n[backup]\nretention_days = 7\nkeep_last = 1\ncompress = true\nrecipients = [\"{recipient}\"]\nidentity_file = {:?}\n\n[offsite]\nurl = \"file://{}\"\n",
            key.display().to_string(),
            target.display()
        ),
    );
    // An old confirmed copy that retention must delete, and a stray object without manifest.
    plant_remote(&target, "etcd-20200101-000000.snapshot.zst.age", &recipient);
    std::fs::write(target.join("notes.txt"), "not ours").unwrap();

    let out = env.cmd().args(["-o", "json", "snapshot"]).output().unwrap();
    ok(&out);
    let doc = stdout_json(&out);
    let url = doc["offsite"]["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("file://{}/etcd-", target.display())),
        "{url}"
    );
    assert!(url.ends_with(".snapshot.zst.age"));
    assert_eq!(
        doc["offsite"]["manifest"]["layers"],
        serde_json::json!(["zstd", "age"])
    );
    assert_eq!(
        doc["offsite_pruned"]["deleted"].as_array().unwrap().len(),
        1,
        "{doc}"
    );
    assert!(
        !target
            .join("etcd-20200101-000000.snapshot.zst.age")
            .exists()
    );
    assert!(
        target.join("notes.txt").exists(),
        "foreign files are never touched"
    );
    // The local copy is compressed but not encrypted (encrypt = false); off-site copies are.
    let local = env.backup_files();
    assert!(
        local.iter().any(|f| f.ends_with(".snapshot.zst")),
        "{local:?}"
    );
    assert!(!local.iter().any(|f| f.ends_with(".snapshot")), "{local:?}");

    let out = env
        .cmd()
        .args(["-o", "json", "list", "--remote"])
        .output()
        .unwrap();
    ok(&out);
    let doc = stdout_json(&out);
    let snaps = doc["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{doc}");
    assert_eq!(snaps[0]["confirmed"], true);
    assert_eq!(snaps[0]["snapshot_sha256"], sha256_hex(&small()));
    env.cmd()
        .args(["list", "--remote"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("zstd → age"))
        .stdout(predicate::str::contains("CONFIRMED"));

    // Restore straight from the off-site URL: download, decrypt, decompress, verify, then run.
    env.disaster();
    let out = env
        .cmd()
        .args([
            "--yes",
            "restore",
            "--poll-max",
            "100ms",
            "--wait-timeout",
            "20s",
            "--snapshot",
        ])
        .arg(&url)
        .output()
        .unwrap();
    ok(&out);
    let boot = env.calls_of(&["bootstrap"]);
    assert_eq!(boot.len(), 1);
    let from = boot[0]
        .iter()
        .find_map(|a| a.strip_prefix("--recover-from="))
        .unwrap();
    assert!(from.starts_with(&env.config_dir.join("unpacked").display().to_string()));
    assert_eq!(
        std::fs::read(from).unwrap(),
        std::fs::read(small()).unwrap()
    );
}

/// Writes an encrypted copy of small.snapshot and its manifest straight into a file target.
pub(crate) fn plant_remote(dir: &Path, name: &str, recipient: &str) {
    use talos_dr::snapshot::{store, verify};
    std::fs::create_dir_all(dir).unwrap();
    let p = talos_dr::pack::Packing {
        compress: true,
        recipients: talos_dr::config::Recipients::parse(&[recipient]).unwrap(),
    };
    let packed = talos_dr::pack::pack_file(&small(), &dir.join(name), &p).unwrap();
    let base = talos_dr::pack::split_name(name).0;
    let report = verify::verify_file(&small()).unwrap();
    let taken = store::parse_name(base).unwrap();
    let m = talos_dr::offsite::Manifest {
        schema: 1,
        object: name.to_owned(),
        size: packed.size,
        sha256: packed.sha256,
        layers: p.layers(),
        uploaded_at: taken,
        snapshot: store::Sidecar::from_report(&report, taken, base),
    };
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// A real S3-compatible server: moto, started per test on a free port.

pub(crate) struct Moto {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Moto {
    pub(crate) fn start() -> Self {
        let port = free_port();
        let python = tool_python();
        let child = Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        let mut moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!(
                    "moto server exited ({status}): install it with `pip install 'moto[server]'` (`scripts/test` does)"
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto.create_bucket("backups");
        moto
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// moto does not check signatures, so a bare PUT creates a bucket.
    fn create_bucket(&mut self, bucket: &str) {
        let reply = http(self.port, "PUT", &format!("/{bucket}"));
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    /// Object keys under `prefix` (path-style ListObjectsV2, unsigned).
    pub(crate) fn keys(&self, prefix: &str) -> Vec<String> {
        let reply = http(
            self.port,
            "GET",
            &format!("/backups?list-type=2&prefix={prefix}"),
        );
        reply
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool_python() -> PathBuf {
    let py = tool_or_none("python3").unwrap_or_else(|| {
        panic!("python3 is not installed: the S3 tests run moto (`scripts/test` installs python3 and moto)")
    });
    let ok = Command::new(&py)
        .args(["-c", "import moto.server, flask"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "moto is not installed for {}: run `pip install 'moto[server]'` (`scripts/test` does)",
        py.display()
    );
    py
}

fn tool_or_none(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn http(port: u16, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

pub(crate) fn s3_cmd(env: &Env) -> assert_cmd::Command {
    let mut c = env.cmd();
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT")
        .env_remove("AWS_ENDPOINT_URL");
    c
}

pub(crate) fn s3_profile(env: &Env, endpoint: &str, recipient: &str, key: &Path) {
    append_profile(
        env,
        &format!(
            "\n[backup]\nretention_days = 7\nkeep_last = 1\ncompress = true\nrecipients = [\"{recipient}\"]\nidentity_file = {:?}\n\n[offsite]\nurl = \"s3://backups/talos/lab\"\nendpoint = \"{endpoint}\"\npath_style = true\nretries = 1\n",
            key.display().to_string()
        ),
    );
}

#[test]
fn s3_upload_list_retention_and_restore_round_trip() {
    let moto = Moto::start();
    let env = Env::with_kube();
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    s3_profile(&env, &moto.endpoint(), &recipient, &key);

    // An old confirmed copy, uploaded through the library as an earlier run would have.
    let creds = env.tmp.path().join("s3-credentials");
    talos_dr::fsutil::write_atomic(
        &creds,
        b"[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
        0o600,
    )
    .unwrap();
    let cfg = talos_dr::profile::Offsite {
        url: "s3://backups/talos/lab".parse().unwrap(),
        endpoint: Some(moto.endpoint()),
        region: Some("us-east-1".into()),
        path_style: true,
        credentials_file: Some(creds.clone()),
        retries: 0,
    };
    let target = talos_dr::offsite::Target::new(&cfg, Some(&creds)).unwrap();
    let report = talos_dr::snapshot::verify::verify_file(&small()).unwrap();
    let old_at: jiff::Timestamp = "2020-01-01T00:00:00Z".parse().unwrap();
    let sidecar = talos_dr::snapshot::store::Sidecar::from_report(
        &report,
        old_at,
        &talos_dr::snapshot::store::file_name(old_at),
    );
    let packing = talos_dr::pack::Packing {
        compress: true,
        recipients: talos_dr::config::Recipients::parse(std::slice::from_ref(&recipient)).unwrap(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(target.upload(&small(), &sidecar, &packing, &talos_dr::ui::NoopReporter))
        .unwrap();
    assert_eq!(
        moto.keys("talos/lab/"),
        [
            "talos/lab/etcd-20200101-000000.snapshot.zst.age",
            "talos/lab/etcd-20200101-000000.snapshot.zst.age.json"
        ]
    );

    let out = s3_cmd(&env)
        .args(["-o", "json", "snapshot"])
        .output()
        .unwrap();
    ok(&out);
    let doc = stdout_json(&out);
    let url = doc["offsite"]["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("s3://backups/talos/lab/etcd-"), "{url}");
    // keep_last = 1 and 7 days: the 2020 copy goes, the new one stays (with its manifest).
    let all = moto.keys("talos/lab/");
    let (configs, keys): (Vec<_>, Vec<_>) = all
        .iter()
        .partition(|k| k.starts_with("talos/lab/configs/"));
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains("2020")), "{keys:?}");
    // Every node's machine config went with it, encrypted (one object per content).
    assert_eq!(configs.len(), 5, "{configs:?}");
    assert!(
        configs.iter().all(|k| k.ends_with(".yaml.age")),
        "{configs:?}"
    );

    // Sent while the snapshot streamed: the upload started before the snapshot's sha256 was
    // known, so the object's metadata (x-amz-meta-*) names the upload, and the manifest holds
    // the sha256. (A copy uploaded after the fact carries the sha256 as metadata, see
    // `a_snapshot_read_again_after_its_stream_is_uploaded_from_the_stored_file`.)
    assert_eq!(doc["offsite"]["during_stream"], true, "{doc}");
    let name = url.rsplit('/').next().unwrap();
    let head = http(moto.port, "HEAD", &format!("/backups/talos/lab/{name}"));
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("x-amz-meta-talos-dr-upload: "), "{head}");
    assert!(
        lower.contains("x-amz-meta-talos-dr-layers: zstd,age"),
        "{head}"
    );
    assert_eq!(
        doc["offsite"]["manifest"]["snapshot"]["sha256"], doc["snapshot"]["metadata"]["sha256"],
        "{doc}"
    );

    let out = s3_cmd(&env)
        .args(["-o", "json", "list", "--remote"])
        .output()
        .unwrap();
    ok(&out);
    let doc = stdout_json(&out);
    assert_eq!(doc["url"], "s3://backups/talos/lab");
    let snaps = doc["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["url"], url.as_str());
    assert_eq!(snaps[0]["confirmed"], true);

    // Download, decrypt, decompress and verify, then the real procedure.
    env.disaster();
    let out = s3_cmd(&env)
        .args([
            "--yes",
            "restore",
            "--poll-max",
            "100ms",
            "--wait-timeout",
            "20s",
            "--snapshot",
        ])
        .arg(&url)
        .output()
        .unwrap();
    ok(&out);
    let boot = env.calls_of(&["bootstrap"]);
    assert_eq!(boot.len(), 1);
    let from = boot[0]
        .iter()
        .find_map(|a| a.strip_prefix("--recover-from="))
        .unwrap();
    assert_eq!(
        std::fs::read(from).unwrap(),
        std::fs::read(small()).unwrap()
    );

    // A name that is not there: exit 2 and nothing touched.
    let env2 = Env::new();
    s3_profile(&env2, &moto.endpoint(), &recipient, &key);
    s3_cmd(&env2)
        .args([
            "--yes",
            "restore",
            "--snapshot",
            "s3://backups/talos/lab/etcd-20990101-000000.snapshot.zst.age",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("does not exist"));
    assert!(env2.calls().is_empty());
}

#[test]
fn a_tampered_remote_copy_is_refused_before_anything_destructive() {
    let moto = Moto::start();
    let env = Env::new();
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    s3_profile(&env, &moto.endpoint(), &recipient, &key);
    let out = s3_cmd(&env)
        .args(["-o", "json", "snapshot"])
        .output()
        .unwrap();
    ok(&out);
    let url = stdout_json(&out)["offsite"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let name = url.rsplit('/').next().unwrap();
    // Overwrite the object with other bytes (moto ignores signatures, so a raw PUT works).
    let mut s = TcpStream::connect(("127.0.0.1", moto.port)).unwrap();
    let body = b"age-encryption.org/v1\ngarbage";
    write!(
        s,
        "PUT /backups/talos/lab/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    s3_cmd(&env)
        .args(["--yes", "restore", "--snapshot"])
        .arg(&url)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("does not match its manifest"));
    assert!(env.calls_of(&["reset"]).is_empty());
    assert!(env.calls_of(&["bootstrap"]).is_empty());
}

/// Forwards TCP to moto until `kill` is set: then every connection is cut and new ones refused,
/// which is what the client sees when the server dies, while moto keeps its state to inspect.
struct Proxy {
    port: u16,
    kill: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
}

impl Proxy {
    fn start(upstream: u16, kill_after: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let kill = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (k, f) = (kill.clone(), forwarded.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if k.load(Ordering::SeqCst) {
                    drop(client);
                    break; // listener dropped: connection refused from now on
                }
                let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    k.clone(),
                    f.clone(),
                    kill_after,
                );
                pump(
                    server,
                    client,
                    k.clone(),
                    Arc::new(AtomicU64::new(0)),
                    u64::MAX,
                );
            }
        });
        Proxy {
            port,
            kill,
            forwarded,
        }
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    kill: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    limit: u64,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if kill.load(Ordering::SeqCst) {
                break;
            }
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if count.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > limit {
                kill.store(true, Ordering::SeqCst);
                break;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(std::net::Shutdown::Both);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

#[test]
fn an_interrupted_upload_leaves_no_object_that_looks_complete() {
    let moto = Moto::start();
    // Cut the connection 20 MiB into a 40 MiB upload (five 8 MiB parts).
    let proxy = Proxy::start(moto.port, 20 << 20);
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.snapshot");
    {
        // Incompressible and unencrypted, so the bytes on the wire are the file's.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..(40 << 20) / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    let creds = dir.path().join("creds");
    talos_dr::fsutil::write_atomic(
        &creds,
        b"AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n",
        0o600,
    )
    .unwrap();
    let cfg = talos_dr::profile::Offsite {
        url: "s3://backups/cut".parse().unwrap(),
        endpoint: Some(format!("http://127.0.0.1:{}", proxy.port)),
        region: Some("us-east-1".into()),
        path_style: true,
        credentials_file: Some(creds.clone()),
        retries: 1,
    };
    let target = talos_dr::offsite::Target::new(&cfg, Some(&creds)).unwrap();
    let at: jiff::Timestamp = "2026-11-30T02:00:00Z".parse().unwrap();
    let mut sidecar = talos_dr::snapshot::store::Sidecar::from_report(
        &talos_dr::snapshot::verify::verify_file(&small()).unwrap(),
        at,
        &talos_dr::snapshot::store::file_name(at),
    );
    sidecar.size = 40 << 20;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let err = rt
        .block_on(target.upload(
            &big,
            &sidecar,
            &talos_dr::pack::Packing::default(),
            &talos_dr::ui::NoopReporter,
        ))
        .unwrap_err();
    assert!(
        proxy.kill.load(Ordering::SeqCst),
        "the proxy never cut the upload"
    );
    assert!(proxy.forwarded.load(Ordering::SeqCst) > 1 << 20);
    let msg = err.to_string();
    assert!(
        msg.contains("s3://backups/cut/etcd-20261130-020000.snapshot"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "gave up too slowly"
    );
    // Nothing under the prefix: no object, no manifest (the multipart upload was never completed).
    assert_eq!(moto.keys("cut/"), Vec::<String>::new());
}

#[test]
fn a_dead_server_fails_the_run_but_keeps_the_local_snapshot() {
    let mut moto = Moto::start();
    let env = Env::new();
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    s3_profile(&env, &moto.endpoint(), &recipient, &key);
    let metrics = env.tmp.path().join("talos-dr.prom");
    let p = env.config_dir.join("profile.toml");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "[backup]\n",
        &format!(
            "[backup]\nmetrics_file = {:?}\n",
            metrics.display().to_string()
        ),
    );
    std::fs::write(&p, text).unwrap();
    // The server dies before the run.
    moto.child.kill().unwrap();
    moto.child.wait().unwrap();
    let started = Instant::now();
    let out = s3_cmd(&env).args(["snapshot"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("but the off-site copy failed"), "{stderr}");
    assert!(stderr.contains("s3://backups/talos/lab/etcd-"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "gave up too slowly"
    );
    // The verified local copy stays; the metrics say the run failed.
    let files = env.backup_files();
    assert!(
        files.iter().any(|f| f.ends_with(".snapshot.zst")),
        "{files:?}"
    );
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("talos_dr_snapshot_last_exit_code{profile=\"lab\"} 1\n"),
        "{prom}"
    );
}
