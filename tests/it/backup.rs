//! `talos_dr::backup::run` in this process, against the simulator: the typed outcome that
//! `snapshot` and the pre-upgrade stage render.

use std::path::PathBuf;

use talos_dr::backup::{self, BackupOptions, Destination, OffsiteOutcome, OffsitePolicy};
use talos_dr::pack::Layer;
use talos_dr::profile::{Location, Profile};
use talos_dr::snapshot::store;
use talos_dr::talos::Talosctl;
use talos_dr::ui::NoopReporter;

use crate::common::*;
use crate::pack::append_profile;

/// The profile and a talosctl whose shim carries the simulator's state path (the library runs in
/// this process, so the environment of `Env::cmd` does not apply).
fn library(env: &Env) -> (Profile, Talosctl) {
    let shim = env.bin_dir.join("talosctl-backup");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\nTALOS_DR_SIM_STATE='{}' exec '{BIN}' __sim talosctl \"$@\"\n",
            env.state.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let profile = Profile::load(&Location {
        name: None,
        config_dir: env.config_dir.clone(),
    })
    .unwrap();
    let talos = Talosctl::new(shim, env.config_dir.join("talosconfig"), None);
    (profile, talos)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn recipient() -> String {
    age::x25519::Identity::generate().to_public().to_string()
}

#[test]
fn one_call_stores_packed_copies_off_site_prunes_and_returns_numbers() {
    let env = Env::new();
    let remote = env.tmp.path().join("remote");
    append_profile(
        &env,
        &format!(
            "\n[backup]\nretention_days = 7\nkeep_last = 1\ncompress = true\nencrypt = true\nrecipients = [\"{}\"]\n\n[offsite]\nurl = \"file://{}/\"\n",
            recipient(),
            remote.display()
        ),
    );
    let old = plant_days_ago(&env, &[30]);
    let (profile, talos) = library(&env);

    let done = block_on(backup::run(
        &profile,
        &talos,
        &BackupOptions::default(),
        &NoopReporter,
    ))
    .unwrap();

    // Stored packed under the scheduled name; sizes are the files' own, in bytes.
    let name = done
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.ends_with(".snapshot.zst.age"), "{name}");
    assert_eq!(done.layers, [Layer::Zstd, Layer::Age]);
    assert_eq!(
        done.stored_size,
        std::fs::metadata(&done.path).unwrap().len()
    );
    assert_eq!(
        done.sidecar.size,
        std::fs::metadata(fixture("snapshots/small.snapshot"))
            .unwrap()
            .len()
    );
    assert_eq!(format!("{}.zst.age", done.sidecar.file), name);
    assert!(done.sidecar.valid);
    // No plain copy is left behind, and the old snapshot is gone.
    let files = env.backup_files();
    assert_eq!(files, [name.clone(), format!("{name}.json")], "{files:?}");
    // The machine configs went with it, encrypted like the snapshot.
    assert_eq!(done.sidecar.machine_configs.len(), 5);
    for r in done.sidecar.machine_configs.values() {
        assert!(r.file.ends_with(".yaml.age"), "{}", r.file);
    }
    let pruned = done.pruned.as_ref().unwrap();
    assert_eq!(pruned.deleted, old);
    assert!(pruned.errors.is_empty());

    // The off-site copy: confirmed, at the canonical URL (no doubled slash), same bytes count.
    let up = done.uploaded().expect("uploaded");
    assert_eq!(
        up.url,
        format!("file://{}/{name}", remote.display()),
        "{}",
        up.url
    );
    assert_eq!(
        up.manifest.size,
        std::fs::metadata(remote.join(&name)).unwrap().len()
    );
    let remote_pruned = done.remote_pruned.as_ref().unwrap();
    assert_eq!(remote_pruned.decisions.len(), 1);
    assert!(done.problems().is_empty(), "{:?}", done.problems());
}

#[test]
fn an_offsite_target_that_cannot_be_set_up_stops_a_scheduled_backup_before_it_starts() {
    let env = Env::new();
    // A file where the target directory should be: the target cannot be created.
    let blocker = env.tmp.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    append_profile(
        &env,
        &format!(
            "\n[offsite]\nurl = \"file://{}/remote\"\n",
            blocker.display()
        ),
    );
    let (profile, talos) = library(&env);

    let err = block_on(backup::run(
        &profile,
        &talos,
        &BackupOptions::default(),
        &NoopReporter,
    ))
    .unwrap_err();
    let (exit, _) = talos_dr::error::classify(&err);
    assert_eq!(exit, talos_dr::Exit::Usage, "{err:#}");
    assert!(format!("{err:#}").contains("[offsite]"), "{err:#}");
    assert!(env.calls_of(&["etcd", "snapshot"]).is_empty());
    assert!(snapshots(&env).is_empty());

    // Best effort (before an upgrade): the snapshot is stored, the copy is only reported.
    let out = env.tmp.path().join("set.snapshot");
    let opts = BackupOptions {
        destination: Destination::File(out.clone()),
        offsite: OffsitePolicy::BestEffort,
        prune: false,
        ..BackupOptions::default()
    };
    let done = block_on(backup::run(&profile, &talos, &opts, &NoopReporter)).unwrap();
    assert_eq!(done.path, out);
    assert!(done.layers.is_empty());
    assert!(matches!(done.offsite, Some(OffsiteOutcome::Unavailable(_))));
    assert!(done.pruned.is_none());
    assert_eq!(done.problems().len(), 1, "{:?}", done.problems());
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(fixture("snapshots/small.snapshot")).unwrap()
    );
}

#[test]
fn a_stored_snapshot_is_uploaded_without_taking_another() {
    let env = Env::new();
    let remote = env.tmp.path().join("remote");
    append_profile(
        &env,
        &format!("\n[offsite]\nurl = \"file://{}\"\n", remote.display()),
    );
    let (profile, talos) = library(&env);
    let path = env.tmp.path().join("kept.snapshot");
    let opts = BackupOptions {
        destination: Destination::File(path.clone()),
        offsite: OffsitePolicy::Skip,
        prune: false,
        ..BackupOptions::default()
    };
    let first = block_on(backup::run(&profile, &talos, &opts, &NoopReporter)).unwrap();
    assert!(first.offsite.is_none());
    assert_eq!(env.calls_of(&["etcd", "snapshot"]).len(), 1);

    let opts = BackupOptions {
        destination: Destination::Stored(path.clone()),
        offsite: OffsitePolicy::BestEffort,
        prune: false,
        ..BackupOptions::default()
    };
    let again = block_on(backup::run(&profile, &talos, &opts, &NoopReporter)).unwrap();
    assert_eq!(env.calls_of(&["etcd", "snapshot"]).len(), 1);
    assert_eq!(again.sidecar.sha256, first.sidecar.sha256);
    let up = again.uploaded().expect("uploaded");
    assert_eq!(
        std::fs::read(remote.join("kept.snapshot")).unwrap(),
        std::fs::read(&path).unwrap()
    );
    assert_eq!(up.manifest.snapshot.sha256, first.sidecar.sha256);

    // Without its sidecar a stored file is not trusted.
    std::fs::remove_file(store::sidecar_path(&path)).unwrap();
    let e = block_on(backup::run(&profile, &talos, &opts, &NoopReporter)).unwrap_err();
    assert!(format!("{e:#}").contains("sidecar"), "{e:#}");
}

fn snapshots(env: &Env) -> Vec<PathBuf> {
    store::list(&env.backups())
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect()
}
