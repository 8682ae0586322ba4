//! One file per stage kind, and [`REGISTRY`], the one list of them.
//!
//! A stage reads the run's inputs and earlier stages' typed outputs from the checkpoint, talks to
//! the world only through `talos`, `kube` and `pve`, and returns its own typed outputs. How to add
//! one: README, "How to add a stage".

pub mod etcd_recover;
pub mod post_verify;
pub mod post_verify_compare;
pub mod post_verify_kube;
pub mod pre_restore_snapshot;
pub mod preflight;
pub mod proxmox_check;
pub mod rebuild_preflight;
pub mod rebuild_verify;
pub mod rebuild_vms;
pub mod record_set;
pub mod recreate_vm;
pub mod rejoin_node;
pub mod remove_member;
pub mod report;
pub mod rollback_preflight;
pub mod rollback_vms;
pub mod set_etcd_snapshot;
pub mod set_retention;
pub mod upgrade_preflight;
pub mod vm_snapshots;
pub mod wait_healthy;

use std::path::Path;

use crate::engine::playbook::{self, Playbook, PlaybookError};
pub use crate::engine::stage::{
    Inputs, Plan, Registry, Services, Stage, StageCtx, StageData, StageOutcome, confirmation_result,
};

/// Every stage kind, in the order `playbooks show` lists them.
pub static REGISTRY: Registry = Registry(&[
    &preflight::Preflight,
    &pre_restore_snapshot::PreRestoreSnapshot,
    &proxmox_check::ProxmoxCheck,
    &etcd_recover::EtcdRecover,
    &post_verify::PostVerify,
    &report::Report,
    &upgrade_preflight::UpgradePreflight,
    &set_etcd_snapshot::SetEtcdSnapshot,
    &vm_snapshots::VmSnapshots,
    &record_set::RecordSet,
    &set_retention::SetRetention,
    &rollback_preflight::RollbackPreflight,
    &rollback_vms::RollbackVms,
    &wait_healthy::WaitHealthy,
    &rebuild_preflight::RebuildPreflight,
    &remove_member::RemoveMember,
    &recreate_vm::RecreateVm,
    &rejoin_node::RejoinNode,
    &rebuild_verify::RebuildVerify,
    &rebuild_vms::RebuildVms,
]);

/// Loads playbook `name` (built-in, or `<config_dir>/playbooks/<name>.toml`) against [`REGISTRY`].
pub fn load_playbook(name: &str, config_dir: &Path) -> Result<Playbook, PlaybookError> {
    playbook::load(name, config_dir, &REGISTRY)
}

/// Parses a playbook's text against [`REGISTRY`].
pub fn parse_playbook(text: &str) -> Result<Playbook, playbook::ParseError> {
    playbook::parse(text, &REGISTRY)
}

/// Paces a wait loop (`crate::poll`): every 0.8 s while a change is due, then backing off.
pub use crate::poll::Poller;

/// `talosctl` calls on every control-plane node, rendered for a plan.
fn on_each_cp(plan: &Plan<'_>, rest: &[&str]) -> Vec<String> {
    plan.profile
        .control_plane_addresses()
        .iter()
        .map(|n| plan.talos.render(Some(n), rest))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::checkpoint::{Journal, StageStatus};
    use crate::engine::playbook::{BUILT_IN, Confirm};

    #[test]
    fn registry_kinds_are_unique_and_every_built_in_loads() {
        let mut kinds: Vec<&str> = REGISTRY.kinds().collect();
        kinds.sort_unstable();
        let n = kinds.len();
        kinds.dedup();
        assert_eq!(kinds.len(), n, "a kind is registered twice");
        let dir = tempfile::tempdir().unwrap();
        for (name, _) in BUILT_IN {
            let pb = load_playbook(name, dir.path()).unwrap();
            assert_eq!(pb.name, name);
            let key = match name {
                "pre-upgrade" => "vm-snapshots",
                "rollback" => "rollback-vms",
                "rebuild-node" => "recreate-vm",
                "restore-rebuild" => "rebuild-vms",
                _ => "etcd-recover",
            };
            assert!(pb.stages.iter().any(|s| s.kind.as_str() == key), "{name}");
        }
    }

    /// Checkpoints written by the release before the registry record these fingerprints; a
    /// change here would make `resume` refuse every run in flight.
    #[test]
    fn built_in_fingerprints_are_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let fp = |n: &str| load_playbook(n, dir.path()).unwrap().fingerprint();
        assert_eq!(
            fp("restore"),
            "1be5377fcd8c4f59c73bf9dd430c9d19f8519ee4006f2a0b3956497230962ef3"
        );
        assert_eq!(
            fp("drill"),
            "02a55c45a1571199553d39383c24a034d696972eac8dd7b09df1ffa9417eae67"
        );
        assert_eq!(
            fp("pre-upgrade"),
            "3cce23f880746df2af2314af8ebb22e660123f167b6030ec669ed45ff10144ca"
        );
        assert_eq!(
            fp("rollback"),
            "f7001a67b8f660f678be1b88c67288ddcd98c7fa76a5060076895ca1718a79c2"
        );
    }

    #[test]
    fn unknown_kind_and_option_name_the_line() {
        let bad =
            "name = \"x\"\nsummary = \"s\"\n\n[[stages]]\nid = \"a\"\nkind = \"etcd-recovr\"\n";
        let e = parse_playbook(bad).unwrap_err().to_string();
        assert!(e.contains("line 6") && e.contains("etcd-recover"), "{e}");
        let bad = "name = \"x\"\nsummary = \"s\"\n\n[[stages]]\nid = \"a\"\nkind = \"report\"\nretries = 3\n";
        let e = parse_playbook(bad).unwrap_err().to_string();
        assert!(e.contains("line 7") && e.contains("retries"), "{e}");
    }

    #[test]
    fn a_stage_whose_inputs_come_from_no_earlier_stage_is_refused() {
        let text = "name = \"x\"\nsummary = \"s\"\n\n[[stages]]\nid = \"wipe\"\nkind = \"etcd-recover\"\n\n[[stages]]\nid = \"pre\"\nkind = \"preflight\"\n";
        let e = parse_playbook(text).unwrap_err().to_string();
        assert!(
            e.contains("\"wipe\"") && e.contains("`preflight`") && e.contains("before it"),
            "{e}"
        );
        // In a file, the error names it too.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("playbooks")).unwrap();
        let path = dir.path().join("playbooks/restore.toml");
        std::fs::write(&path, text).unwrap();
        let e = load_playbook("restore", dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn destructive_stages_keep_their_typed_confirmation_whatever_the_playbook_says() {
        let text = "name = \"restore\"\nsummary = \"s\"\ndestructive = false\n\n[[stages]]\nid = \"preflight\"\nkind = \"preflight\"\n\n[[stages]]\nid = \"etcd-recover\"\nkind = \"etcd-recover\"\nconfirm = \"no\"\n";
        let pb = parse_playbook(text).unwrap();
        assert!(pb.destructive, "derived from the stages, not declared");
        let recover = &pb.stages[1];
        assert_eq!(recover.declared_confirm, Confirm::No);
        assert_eq!(recover.confirm(), Confirm::Typed);
        assert_eq!(pb.stages[0].confirm(), Confirm::No);
        let pre = load_playbook("pre-upgrade", tempfile::tempdir().unwrap().path()).unwrap();
        assert!(!pre.destructive);
        let rb = load_playbook("rollback", tempfile::tempdir().unwrap().path()).unwrap();
        let vms = rb.stages.iter().find(|s| s.kind.as_str() == "rollback-vms");
        assert_eq!(vms.unwrap().stage().min_confirm(), Confirm::Typed);
    }

    #[test]
    fn override_in_config_dir_wins_and_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let builtin = load_playbook("restore", dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("playbooks")).unwrap();
        let text = BUILT_IN[0]
            .1
            .replace("timeout = \"20m\"", "timeout = \"30m\"");
        std::fs::write(dir.path().join("playbooks/restore.toml"), text).unwrap();
        let custom = load_playbook("restore", dir.path()).unwrap();
        assert_ne!(builtin.fingerprint(), custom.fingerprint());
    }

    #[test]
    fn typed_records_round_trip_through_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let pb = load_playbook("restore", dir.path()).unwrap();
        let j = Journal::create(dir.path(), &pb, "lab", serde_json::json!({})).unwrap();
        j.update(|st| {
            let s = st.stage_mut("etcd-recover").unwrap();
            s.outputs = serde_json::json!({"bootstrap": {"node": "10.0.0.1", "issued_at": "2026-11-01T02:00:00Z", "file": "/x"}});
            s.status = StageStatus::Succeeded;
        })
        .unwrap();
        let again = Journal::open(j.dir()).unwrap().snapshot();
        let rec = again
            .data::<etcd_recover::EtcdRecoverRecord>()
            .unwrap()
            .unwrap();
        assert_eq!(rec.bootstrap.unwrap().node, "10.0.0.1");
        // A kind the run never ran (or did not finish) is None, not a default.
        assert!(
            again
                .data::<preflight::PreflightOutputs>()
                .unwrap()
                .is_none()
        );
    }
}
