//! What a person trying the off-site copies ran into (issue 15 §5), each against a real
//! S3-compatible server (moto): `profile check` checks `[offsite]` and the age keys, talos-backup's
//! objects are listed and never pruned, a dead endpoint keeps its cause, a damaged copy without
//! manifest says what is wrong, and an identity file others can read is exit 2 everywhere.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use predicates::prelude::*;

use crate::common::*;
use crate::offsite::{Moto, s3_cmd, s3_profile};
use crate::pack::{keygen, ok, small};

/// PUT an object with a body (moto does not check signatures).
fn put_object(port: u16, key: &str, body: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "PUT /backups/{key} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// small.snapshot packed (zstd + age) to `recipient`, as bytes.
fn packed_small(dir: &Path, recipient: &str) -> Vec<u8> {
    let p = talos_dr::pack::Packing {
        compress: true,
        recipients: talos_dr::config::Recipients::parse(&[recipient]).unwrap(),
    };
    let out = dir.join("packed.tmp");
    talos_dr::pack::pack_file(&small(), &out, &p).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    bytes
}

fn set_profile_line(env: &Env, from: &str, to: &str) {
    let p = env.config_dir.join("profile.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{text}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

fn code_and_text(out: &std::process::Output) -> (Option<i32>, String) {
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn profile_check_checks_offsite_and_the_age_keys_with_the_exit_codes_snapshot_gives() {
    let mut moto = Moto::start();
    let env = Env::new();
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    s3_profile(&env, &moto.endpoint(), &recipient, &key);
    let creds = env.config_dir.join("s3-credentials");
    talos_dr::fsutil::write_atomic(
        &creds,
        b"[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
        0o600,
    )
    .unwrap();
    set_profile_line(
        &env,
        "[offsite]\n",
        "[offsite]\ncredentials_file = \"s3-credentials\"\n",
    );

    // All good: the bucket answers and the probe object is written and deleted.
    let out = s3_cmd(&env)
        .args(["-o", "json", "profile", "check"])
        .output()
        .unwrap();
    ok(&out);
    let doc = stdout_json(&out);
    let checks = doc["checks"].as_array().unwrap();
    let find = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {doc}"))
            .clone()
    };
    assert_eq!(find("offsite")["ok"], true, "{doc}");
    assert!(
        find("offsite")["detail"]
            .as_str()
            .unwrap()
            .contains("probe object was written and deleted")
    );
    assert_eq!(find("offsite credentials")["ok"], true);
    assert_eq!(find("age identity")["ok"], true);
    assert!(
        find("age identity")["detail"]
            .as_str()
            .unwrap()
            .contains(&recipient)
    );
    assert_eq!(
        moto.keys("talos/lab/"),
        Vec::<String>::new(),
        "the probe is deleted"
    );

    // A malformed credentials file: `snapshot` exits 2, and so does `profile check`.
    talos_dr::fsutil::write_atomic(&creds, b"aws_access_key_id = testing\n", 0o600).unwrap();
    let (code, text) = code_and_text(&s3_cmd(&env).args(["snapshot"]).output().unwrap());
    assert_eq!(code, Some(2), "{text}");
    let (code, text) = code_and_text(&s3_cmd(&env).args(["profile", "check"]).output().unwrap());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("expected aws_access_key_id"), "{text}");
    assert!(text.contains("profile has problems"), "{text}");

    // Readable by others: the same code, with the fix.
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _) = code_and_text(&s3_cmd(&env).args(["snapshot"]).output().unwrap());
    assert_eq!(code, Some(2));
    let (code, text) = code_and_text(&s3_cmd(&env).args(["profile", "check"]).output().unwrap());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("chmod 600"), "{text}");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();

    // An identity that is not one of the recipients could never decrypt the copies.
    let (other, other_recipient) = keygen(env.tmp.path(), "other.txt");
    set_profile_line(
        &env,
        &format!("identity_file = {:?}", key.display().to_string()),
        &format!("identity_file = {:?}", other.display().to_string()),
    );
    let (code, text) = code_and_text(&s3_cmd(&env).args(["profile", "check"]).output().unwrap());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains(&other_recipient), "{text}");
    assert!(text.contains("not among backup.recipients"), "{text}");
    set_profile_line(
        &env,
        &format!("identity_file = {:?}", other.display().to_string()),
        &format!("identity_file = {:?}", key.display().to_string()),
    );

    // The server is gone: exit 1, as the failed copy of `snapshot`, with the cause kept.
    moto.child.kill().unwrap();
    moto.child.wait().unwrap();
    let (code, text) = code_and_text(&s3_cmd(&env).args(["profile", "check"]).output().unwrap());
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection refused"),
        "{text}"
    );
}

#[test]
fn a_dead_endpoint_keeps_the_cause_in_the_message() {
    let mut moto = Moto::start();
    let env = Env::new();
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    s3_profile(&env, &moto.endpoint(), &recipient, &key);
    moto.child.kill().unwrap();
    moto.child.wait().unwrap();
    let out = s3_cmd(&env).args(["list", "--remote"]).output().unwrap();
    let (code, text) = code_and_text(&out);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("error sending request"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection refused"),
        "the cause is lost: {text}"
    );

    // A name that does not resolve says so (".invalid" never resolves, RFC 2606).
    set_profile_line(
        &env,
        &format!("endpoint = \"{}\"", moto.endpoint()),
        "endpoint = \"http://talos-dr-test.invalid:9000\"",
    );
    let out = s3_cmd(&env).args(["list", "--remote"]).output().unwrap();
    let (code, text) = code_and_text(&out);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("dns error"), "the cause is lost: {text}");
}

#[test]
fn talos_backup_objects_are_listed_as_foreign_and_never_pruned() {
    let moto = Moto::start();
    let env = Env::new();
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    s3_profile(&env, &moto.endpoint(), &recipient, &key);
    let foreign = "talos/lab/prod-2020-01-01T00:00:00Z.snap.zst.age";
    put_object(
        moto.port,
        foreign,
        &packed_small(env.tmp.path(), &recipient),
    );
    // keep_last = 1, retention_days = 7: a talos-dr copy this old would go.
    let out = s3_cmd(&env).args(["snapshot"]).output().unwrap();
    ok(&out);
    assert!(
        moto.keys("talos/lab/").contains(&foreign.to_owned()),
        "retention deleted another tool's copy"
    );

    let out = s3_cmd(&env)
        .args(["-o", "json", "list", "--remote"])
        .output()
        .unwrap();
    ok(&out);
    let doc = stdout_json(&out);
    let snaps = doc["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2, "{doc}");
    let old = snaps
        .iter()
        .find(|s| s["name"] == "prod-2020-01-01T00:00:00Z.snap.zst.age")
        .unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(old["origin"], "talos-backup");
    assert_eq!(old["made_by_talos_dr"], false);
    assert_eq!(old["taken_at"], "2020-01-01T00:00:00Z");
    assert_eq!(old["layers"], serde_json::json!(["zstd", "age"]));
    s3_cmd(&env)
        .args(["list", "--remote"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("not made by talos-dr"))
        .stdout(predicate::str::contains(
            "s3://backups/talos/lab/prod-2020-01-01T00:00:00Z.snap.zst.age",
        ));

    // And it restores (download, decrypt, decompress, verify) like any copy.
    s3_cmd(&env)
        .args(["restore", "--dry-run", "--snapshot"])
        .arg(format!("s3://backups/{foreign}"))
        .assert()
        .code(0);
}

#[test]
fn a_damaged_copy_without_manifest_says_damaged_or_another_key_and_which() {
    let moto = Moto::start();
    let env = Env::new();
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    s3_profile(&env, &moto.endpoint(), &recipient, &key);
    let mut bytes = packed_small(env.tmp.path(), &recipient);
    let at = bytes.len() - 200;
    bytes[at] ^= 0x40;
    put_object(
        moto.port,
        "talos/lab/etcd-20261130-020000.snapshot.zst.age",
        &bytes,
    );
    let out = s3_cmd(&env)
        .args(["--yes", "restore", "--snapshot"])
        .arg("s3://backups/talos/lab/etcd-20261130-020000.snapshot.zst.age")
        .output()
        .unwrap();
    let (code, text) = code_and_text(&out);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("damaged"), "{text}");
    assert!(text.contains("another key"), "{text}");
    assert!(text.contains(&recipient), "{text}");
    assert!(env.calls_of(&["reset"]).is_empty());
}

#[test]
fn an_identity_file_others_can_read_is_exit_2_everywhere() {
    let env = Env::new();
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let packed = env.tmp.path().join("etcd-20261130-020000.snapshot.zst.age");
    std::fs::write(&packed, packed_small(env.tmp.path(), &recipient)).unwrap();
    for args in [
        vec!["verify", "--identity"],
        vec!["--yes", "restore", "--dry-run", "--identity"],
    ] {
        let mut c = env.cmd();
        c.args(&args).arg(&key);
        if args.contains(&"restore") {
            c.arg("--snapshot");
        }
        let out = c.arg(&packed).output().unwrap();
        let (code, text) = code_and_text(&out);
        assert_eq!(code, Some(2), "{args:?}: {text}");
        assert!(text.contains("chmod 600"), "{args:?}: {text}");
    }
    assert!(env.calls().is_empty());
}
