//! The off-site copy made while the snapshot streams: packed and sent from the bytes the
//! follower reads, completed only once the snapshot is verified, and replaced by the ordinary
//! upload of the stored file whenever the stream has to be read again.

use std::path::Path;
use std::process::{Command, Stdio};

use predicates::prelude::*;

use crate::common::*;
use crate::offsite::{Moto, http, s3_cmd, s3_profile};
use crate::pack::{append_profile, keygen, ok, small, tool};

/// A stream a real network would deliver: the follower reads it while it grows.
fn paced(env: &Env) {
    env.edit_cluster(|c| c.timing.snapshot_bytes_per_s = 400_000);
}

/// A moto server and a cluster whose profile compresses locally and copies to it, encrypted;
/// the age identity file.
fn s3_env() -> (Moto, Env, std::path::PathBuf) {
    let moto = Moto::start();
    let env = Env::new();
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    s3_profile(&env, &moto.endpoint(), &recipient, &key);
    (moto, env, key)
}

/// `age -d -i key | zstd -d` of `packed`.
fn unpack_with_clis(key: &Path, packed: &[u8]) -> Vec<u8> {
    let mut age = Command::new(tool("age"))
        .args(["-d", "-i"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = age.stdin.take().unwrap();
    let input = packed.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        stdin.write_all(&input).unwrap();
    });
    let out = Command::new(tool("zstd"))
        .args(["-d", "-c"])
        .stdin(age.stdout.take().unwrap())
        .output()
        .unwrap();
    writer.join().unwrap();
    assert!(age.wait().unwrap().success());
    assert!(out.status.success());
    out.stdout
}

/// Multipart uploads the bucket still has open (ListMultipartUploads).
fn open_uploads(moto: &Moto) -> usize {
    http(moto.port, "GET", "/backups?uploads")
        .matches("<UploadId>")
        .count()
}

/// An object's bytes (path-style GET, unsigned: moto does not check signatures).
fn object(moto: &Moto, key: &str) -> Vec<u8> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", moto.port)).unwrap();
    write!(
        s,
        "GET /backups/{key} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        moto.port
    )
    .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "GET {key}: {}",
        String::from_utf8_lossy(&reply[..reply.len().min(600)])
    );
    let at = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    reply.split_off(at + 4)
}

#[test]
fn a_copy_sent_during_the_stream_is_the_stored_snapshot_packed() {
    let env = Env::new();
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    let target = env.tmp.path().join("nfs/talos");
    append_profile(
        &env,
        &format!(
            "\n[backup]\ncompress = true\nrecipients = [\"{recipient}\"]\nidentity_file = {:?}\n\n[offsite]\nurl = \"file://{}\"\n",
            key.display().to_string(),
            target.display()
        ),
    );
    paced(&env);
    let out = env.cmd().args(["-o", "json", "snapshot"]).output().unwrap();
    ok(&out);
    let doc = stdout_json(&out);
    // What the user sees: the copy and the packed local file were made during the stream,
    // not from the stored file.
    assert_eq!(doc["offsite"]["during_stream"], true, "{doc}");
    assert_eq!(doc["snapshot"]["packed_during_stream"], true, "{doc}");
    let url = doc["offsite"]["url"].as_str().unwrap();
    let name = url.rsplit('/').next().unwrap();
    let packed = std::fs::read(target.join(name)).unwrap();
    assert_eq!(
        unpack_with_clis(&key, &packed),
        std::fs::read(small()).unwrap()
    );
    // The local copy (compressed) holds the same snapshot.
    let local = env
        .backups()
        .join(doc["snapshot"]["path"].as_str().unwrap());
    let plain = Command::new(tool("zstd"))
        .args(["-d", "-c"])
        .arg(&local)
        .output()
        .unwrap();
    assert_eq!(plain.stdout, std::fs::read(small()).unwrap());
    // Nothing but the packed file and its sidecar (and the configs) in the backup directory.
    let files = env.backup_files();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files.iter().all(|f| f.contains(".snapshot.zst")),
        "{files:?}"
    );
    // The manifest describes the object and the verified snapshot.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(target.join(format!("{name}.json"))).unwrap())
            .unwrap();
    assert_eq!(manifest["size"], packed.len() as u64);
    assert_eq!(manifest["snapshot"]["sha256"], sha256_hex(&small()));
    assert_eq!(manifest["snapshot"]["valid"], true);
    // Only the object and its manifest (and the configs): no staging file left.
    let mut names: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "configs")
        .collect();
    names.sort();
    assert_eq!(names, [name.to_owned(), format!("{name}.json")]);

    env.cmd()
        .arg("snapshot")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("sent while the snapshot streamed"))
        .stdout(predicate::str::contains(
            "packed while the snapshot streamed",
        ));
}

#[test]
fn an_invalid_stream_completes_no_upload_and_keeps_the_good_copy() {
    let (moto, env, _key) = s3_env();
    paced(&env);
    let out = s3_cmd(&env)
        .args(["-o", "json", "snapshot"])
        .output()
        .unwrap();
    ok(&out);
    let good_url = stdout_json(&out)["offsite"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let good = format!("talos/lab/{}", good_url.rsplit('/').next().unwrap());
    let before = moto.keys("talos/lab/");
    let local_before = env.backup_files();
    let good_bytes = object(&moto, &good);
    let listed = || {
        let out = s3_cmd(&env)
            .args(["-o", "json", "list", "--remote"])
            .output()
            .unwrap();
        ok(&out);
        stdout_json(&out)
    };
    let good_listing = listed();
    assert_eq!(good_listing["snapshots"][0]["confirmed"], true);

    // A new second, so the bad snapshot gets a name of its own.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.edit_cluster(|c| c.faults.snapshot_bitflip = true);
    s3_cmd(&env)
        .arg("snapshot")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("failed verification"))
        .stderr(predicate::str::contains("nothing was stored"));
    assert_eq!(moto.keys("talos/lab/"), before, "no new object or manifest");
    assert_eq!(
        env.backup_files(),
        local_before,
        "no packed file, no temp file"
    );
    assert_eq!(
        open_uploads(&moto),
        0,
        "the upload sent during the stream was aborted"
    );
    assert_eq!(object(&moto, &good), good_bytes);
    // Its manifest too: the listing (manifests included) is the same.
    assert_eq!(listed(), good_listing);
}

#[test]
fn a_stream_read_again_after_it_ended_is_uploaded_from_the_stored_file() {
    let (moto, env, key) = s3_env();
    // A valid snapshot whose meta page 1 is damaged: its meta pages do not tell the follower
    // the size for sure, so the finished file is verified (and uploaded) the ordinary way.
    let mut body = std::fs::read(small()).unwrap();
    body.truncate(body.len() - 32);
    body[4096 + 16 + 56] ^= 0xff;
    let mut data = body.clone();
    {
        use sha2::Digest as _;
        data.extend_from_slice(&sha2::Sha256::digest(&body));
    }
    let source = env.tmp.path().join("meta1-damaged.snapshot");
    std::fs::write(&source, &data).unwrap();
    env.edit_cluster(|c| c.snapshot_source = Some(source.clone()));
    paced(&env);

    let out = s3_cmd(&env)
        .args(["-o", "json", "snapshot"])
        .output()
        .unwrap();
    ok(&out);
    let doc = stdout_json(&out);
    assert_eq!(doc["offsite"]["during_stream"], false, "{doc}");
    assert_eq!(doc["snapshot"]["packed_during_stream"], false, "{doc}");
    let local = Path::new(doc["snapshot"]["path"].as_str().unwrap());
    let plain = Command::new(tool("zstd"))
        .args(["-d", "-c"])
        .arg(local)
        .output()
        .unwrap();
    assert_eq!(plain.stdout, data);
    let url = doc["offsite"]["url"].as_str().unwrap();
    let name = url.rsplit('/').next().unwrap();
    assert_eq!(
        moto.keys("talos/lab/")
            .into_iter()
            .filter(|k| !k.starts_with("talos/lab/configs/"))
            .collect::<Vec<_>>(),
        [
            format!("talos/lab/{name}"),
            format!("talos/lab/{name}.json")
        ]
    );
    assert_eq!(open_uploads(&moto), 0);
    // Uploaded after the fact, as before: the metadata carries the snapshot's sha256.
    let head = http(moto.port, "HEAD", &format!("/backups/talos/lab/{name}"));
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "x-amz-meta-talos-dr-sha256: {}",
            sha256_hex(&source)
        )),
        "{head}"
    );
    let packed = object(&moto, &format!("talos/lab/{name}"));
    assert_eq!(unpack_with_clis(&key, &packed), data);
}
