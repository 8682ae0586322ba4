//! `check`: local snapshots re-verified against their sidecars, off-site copies against their
//! manifests and, with --read-data, downloaded from a real S3 server (moto) and verified.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;

use crate::common::*;
use crate::offsite::{Moto, s3_cmd, s3_profile};
use crate::pack::{append_profile, keygen, ok, small};

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

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn check_finds_a_damaged_local_snapshot_and_records_the_result() {
    let env = Env::new();
    let metrics = env.tmp.path().join("talos-dr.prom");
    append_profile(
        &env,
        &format!(
            "\n[backup]\nmetrics_file = {:?}\n",
            metrics.display().to_string()
        ),
    );
    let planted = plant_days_ago(&env, &[1, 2, 3]);
    let out = env.cmd().args(["-o", "json", "check"]).output().unwrap();
    ok(&out);
    let doc = stdout_json(&out);
    assert_eq!(doc["checked"], 3, "{doc}");
    assert_eq!(doc["damaged"], serde_json::json!([]));

    // One bit flipped in the middle of the second one: same size, so only reading finds it.
    let mut bytes = std::fs::read(&planted[1]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&planted[1], bytes).unwrap();
    let out = env.cmd().arg("check").output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(
        t.contains(&format!("damaged: {}", planted[1].display())),
        "{t}"
    );
    assert!(t.contains("what to do: do not restore from it"), "{t}");
    assert!(t.contains("checked 3 snapshot(s)"), "{t}");

    let path = env.config_dir.join("check.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(saved["schema"], 1);
    assert_eq!(saved["remote"], false);
    assert_eq!(saved["checked"], 3);
    assert!(saved["finished_at"].as_str().unwrap().ends_with('Z'));
    let damaged = saved["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{saved}");
    assert_eq!(
        damaged[0]["location"],
        planted[1].display().to_string().as_str()
    );
    assert!(!damaged[0]["problem"].as_str().unwrap().is_empty());
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("talos_dr_check_damaged{profile=\"lab\",remote=\"false\"} 1\n"),
        "{prom}"
    );

    // A sample: the seed is in the result, and the same seed checks the same snapshots.
    let sample = |seed: &str| {
        let out = env
            .cmd()
            .args(["-o", "json", "check", "--read-data=34%", "--seed", seed])
            .output()
            .unwrap();
        let doc = stdout_json(&out);
        assert_eq!(doc["seed"], seed.parse::<u64>().unwrap());
        assert_eq!(doc["checked"], 2, "{doc}");
        doc["local"].clone()
    };
    assert_eq!(sample("5"), sample("5"));
}

#[test]
fn check_remote_catches_a_tampered_off_site_object() {
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
    let name = url.rsplit('/').next().unwrap().to_owned();

    let out = s3_cmd(&env)
        .args(["-o", "json", "check", "--remote", "--read-data"])
        .output()
        .unwrap();
    ok(&out);
    let doc = stdout_json(&out);
    assert_eq!(doc["remote"], true);
    assert_eq!(doc["checked"], 2, "one local, one off-site: {doc}");
    assert_eq!(doc["offsite"][0]["read"], true, "{doc}");
    assert!(
        doc["offsite"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("matched the verified snapshot's sha256"),
        "{doc}"
    );

    // Replace the object with another encryption of the same snapshot, cut or padded to the
    // stored size: same size, other bytes.
    let size = doc["offsite"][0]["location"]
        .as_str()
        .map(|_| {
            stdout_json(
                &s3_cmd(&env)
                    .args(["-o", "json", "list", "--remote"])
                    .output()
                    .unwrap(),
            )["snapshots"][0]["size"]
                .as_u64()
                .unwrap()
        })
        .unwrap() as usize;
    let p = talos_dr::pack::Packing {
        compress: true,
        recipients: talos_dr::config::Recipients::parse(std::slice::from_ref(&recipient)).unwrap(),
    };
    let other = env.tmp.path().join("other.zst.age");
    talos_dr::pack::pack_file(&small(), &other, &p).unwrap();
    let mut tampered = std::fs::read(&other).unwrap();
    tampered.resize(size, 0);
    put_object(moto.port, &format!("talos/lab/{name}"), &tampered);
    // Without reading the data, sizes and manifests still agree.
    s3_cmd(&env).args(["check", "--remote"]).assert().code(0);
    let out = s3_cmd(&env)
        .args(["check", "--remote", "--read-data"])
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(t.contains(&format!("damaged: {url}")), "{t}");
    assert!(t.contains("does not match its manifest"), "{t}");
    assert!(t.contains("take a new snapshot"), "{t}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.config_dir.join("check.json")).unwrap())
            .unwrap();
    assert_eq!(saved["remote"], true);
    assert_eq!(saved["damaged"][0]["location"], url.as_str());

    // A copy without a manifest was never confirmed: named as damaged without downloading.
    put_object(
        moto.port,
        "talos/lab/etcd-20261101-000000.snapshot.zst.age",
        &std::fs::read(&other).unwrap(),
    );
    let out = s3_cmd(&env)
        .args(["-o", "json", "check", "--remote"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let doc = stdout_json(&out);
    let damaged = doc["damaged"].as_array().unwrap();
    assert!(
        damaged.iter().any(|d| d["location"]
            .as_str()
            .unwrap()
            .ends_with("etcd-20261101-000000.snapshot.zst.age")
            && d["problem"].as_str().unwrap().contains("no manifest")),
        "{doc}"
    );
}
