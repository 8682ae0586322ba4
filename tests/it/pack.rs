//! zstd + age packing against the real `age` and `zstd` CLIs, both ways: what talos-dr writes
//! opens with `age -d | zstd -d`, and what they write (talos-backup's layout) verifies and restores.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use predicates::prelude::*;

use crate::common::*;

pub(crate) fn small() -> PathBuf {
    fixture("snapshots/small.snapshot")
}

/// A tool the tests need; fails (never skips) with the way to get it.
pub(crate) fn tool(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: these tests need the Debian packages age and zstd (run `scripts/test`, which installs them, or apt-get install age zstd as root)")
        })
}

pub(crate) fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An age key pair made by `age-keygen`: (identity file, recipient).
pub(crate) fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    run(Command::new(tool("age-keygen")).arg("-o").arg(&key));
    let out = run(Command::new(tool("age-keygen")).arg("-y").arg(&key));
    (
        key,
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
    )
}

pub(crate) fn append_profile(env: &Env, toml: &str) {
    let p = env.config_dir.join("profile.toml");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str(toml);
    std::fs::write(p, text).unwrap();
}

pub(crate) fn ok(out: &std::process::Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn encrypted_local_copies_open_with_age_and_zstd_clis() {
    let env = Env::new();
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    append_profile(
        &env,
        &format!("\n[backup]\ncompress = true\nencrypt = true\nrecipients = [\"{recipient}\"]\n"),
    );
    // A plain copy a crashed run left under its hidden name is removed by the next run.
    std::fs::create_dir_all(env.backups()).unwrap();
    std::fs::write(
        env.backups().join(".etcd-20261101-000000.snapshot.plain"),
        "x",
    )
    .unwrap();
    let out = env.cmd().args(["-o", "json", "snapshot"]).output().unwrap();
    ok(&out);
    // Only the packed file and its sidecar remain: no plain copy on disk.
    let files = env.backup_files();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].ends_with(".snapshot.zst.age"), "{files:?}");
    let stored = env.backups().join(&files[0]);
    let mode = std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Standard tools undo it: age -d | zstd -d.
    let mut age = Command::new(tool("age"))
        .args(["-d", "-i"])
        .arg(&key)
        .arg(&stored)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Command::new(tool("zstd"))
        .args(["-d", "-c"])
        .stdin(age.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(age.wait().unwrap().success());
    assert!(out.status.success());
    assert_eq!(out.stdout, std::fs::read(small()).unwrap());

    // list trusts the sidecar (it describes the stored file) and says it is valid.
    let out = env.cmd().args(["-o", "json", "list"]).output().unwrap();
    ok(&out);
    let doc = stdout_json(&out);
    assert_eq!(doc["snapshots"][0]["valid"], true, "{doc}");

    // verify unpacks with the profile's identity_file or --identity, and names the layers.
    let out = env
        .cmd()
        .args(["verify", "--identity"])
        .arg(&key)
        .arg(&stored)
        .output()
        .unwrap();
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(": OK"), "{text}");
    assert!(text.contains("unpacked: age → zstd"), "{text}");
    let out = env
        .cmd()
        .args(["-o", "json", "verify", "--identity"])
        .arg(&key)
        .arg(&stored)
        .output()
        .unwrap();
    let doc = stdout_json(&out);
    assert_eq!(
        doc["files"][0]["layers"],
        serde_json::json!(["age", "zstd"])
    );
    assert_eq!(doc["files"][0]["sha256"], sha256_hex(&small()));

    // Without an identity, and with the wrong one: exit 3 and a clear reason.
    env.cmd()
        .arg("verify")
        .arg(&stored)
        .assert()
        .code(3)
        .stdout(predicate::str::contains("no identity was given"))
        .stdout(predicate::str::contains("--identity"));
    let (other, _) = keygen(env.tmp.path(), "other.txt");
    env.cmd()
        .args(["verify", "--identity"])
        .arg(&other)
        .arg(&stored)
        .assert()
        .code(3)
        .stdout(predicate::str::contains("none of the identities in"))
        .stdout(predicate::str::contains("other.txt"));
}

#[test]
fn files_packed_by_the_clis_like_talos_backup_verify_and_restore() {
    let env = Env::new();
    let (key, recipient) = keygen(env.tmp.path(), "key.txt");
    // talos-backup's layout: <cluster>-<time>.snap.zst.age
    let zst = env.tmp.path().join("lab-2026-11-30T02:00:00Z.snap.zst");
    run(Command::new(tool("zstd"))
        .args(["-q", "-o"])
        .arg(&zst)
        .arg(small()));
    let aged = env.tmp.path().join("lab-2026-11-30T02:00:00Z.snap.zst.age");
    run(Command::new(tool("age"))
        .args(["-r", &recipient, "-o"])
        .arg(&aged)
        .arg(&zst));

    // zstd alone needs no identity.
    env.cmd()
        .arg("verify")
        .arg(&zst)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("unpacked: zstd"));
    env.cmd()
        .args(["verify", "--identity"])
        .arg(&key)
        .arg(&aged)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("unpacked: age → zstd"));

    // restore unpacks first (dry run: nothing is changed, but the file is unpacked and verified).
    let out = env
        .cmd()
        .args(["restore", "--dry-run", "--identity"])
        .arg(&key)
        .arg("--snapshot")
        .arg(&aged)
        .output()
        .unwrap();
    ok(&out);
    let plain = env
        .config_dir
        .join("unpacked/lab-2026-11-30T02:00:00Z.snap");
    assert_eq!(
        std::fs::read(&plain).unwrap(),
        std::fs::read(small()).unwrap()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("--recover-from={}", plain.display())),
        "{stdout}"
    );

    // A wrong identity stops restore before anything (exit 2: fix the argument).
    let (other, _) = keygen(env.tmp.path(), "other.txt");
    env.cmd()
        .args(["--yes", "restore", "--identity"])
        .arg(&other)
        .arg("--snapshot")
        .arg(&aged)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("none of the identities"));
    // Only the dry run's reads of the ETCD volumes reached the nodes.
    assert!(
        env.calls()
            .iter()
            .all(|c| strip_globals(c) == ["get", "volumestatus", "ETCD", "-o", "json"])
    );
}

#[test]
fn zstd_output_round_trips_through_the_zstd_cli() {
    let env = Env::new();
    append_profile(&env, "\n[backup]\ncompress = true\n");
    ok(&env.cmd().args(["snapshot"]).output().unwrap());
    let files = env.backup_files();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].ends_with(".snapshot.zst"), "{files:?}");
    let out = run(Command::new(tool("zstd"))
        .args(["-d", "-c"])
        .arg(env.backups().join(&files[0])));
    assert_eq!(out.stdout, std::fs::read(small()).unwrap());
    // ...and what the zstd CLI compresses, talos-dr unpacks.
    let zst = env.tmp.path().join("cli.snapshot.zst");
    run(Command::new(tool("zstd"))
        .args(["-q", "-19", "-o"])
        .arg(&zst)
        .arg(small()));
    env.cmd()
        .arg("verify")
        .arg(&zst)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("unpacked: zstd"));
}
