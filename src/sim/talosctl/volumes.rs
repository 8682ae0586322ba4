//! The `ETCD` volume (`reference/talos.md` §13.3): `get volumestatus ETCD` and the checks the
//! Reset API makes on `--system-labels-to-wipe`, per Talos version.

use std::io::Write;

use super::{Ctx, Node, write_resource};
use crate::sim::state::EtcdVolume;

const NOT_FOUND: &str = "rpc error: code = NotFound desc = resource VolumeStatuses.block.talos.dev(runtime/ETCD@undefined) doesn't exist";

pub(super) fn is_volume_status(kind: &str) -> bool {
    matches!(
        kind.to_ascii_lowercase().as_str(),
        "volumestatus" | "volumestatuses" | "volumestatuses.block.talos.dev"
    )
}

/// The node's `ETCD` volume as Talos `minor` has it: 1.9 has none, 1.10–1.13 always a directory
/// on EPHEMERAL, 1.14 a directory or (when created so) a partition.
fn volume(minor: u32, node: &Node) -> Option<EtcdVolume> {
    match minor {
        ..=9 => None,
        10..=13 => Some(EtcdVolume::Directory),
        _ => Some(node.etcd_volume.clone()),
    }
}

/// Server side of `reset --system-labels-to-wipe`: whether the wipe takes etcd's data, or the
/// error text the node refuses the whole reset with (talos:srv.go:686-733@release-1.14,
/// :663@release-1.10 … :717-719@release-1.13, :641-645@release-1.9).
pub(super) fn reset_check(minor: u32, node: &Node, labels: &[String]) -> Result<bool, String> {
    let ephemeral = labels.iter().any(|l| l == "EPHEMERAL");
    let etcd = labels.iter().any(|l| l == "ETCD");
    if etcd {
        match volume(minor, node) {
            None => {
                return Err(format!(
                    "failed to get volume status with label \"ETCD\": {}",
                    NOT_FOUND.trim_start_matches("rpc error: code = NotFound desc = ")
                ));
            }
            Some(_) if minor < 14 => {
                return Err("failed to reset: volume \"ETCD\" is not located".into());
            }
            Some(EtcdVolume::Directory) if !ephemeral => {
                return Err("failed to reset: volume \"ETCD\" resides on volume \"EPHEMERAL\", and therefore \"ETCD\" cannot be wiped without wiping \"EPHEMERAL\"".into());
            }
            Some(_) => {}
        }
    }
    Ok(match volume(minor, node) {
        Some(EtcdVolume::Partition { .. }) => etcd,
        _ => ephemeral,
    })
}

/// `get volumestatus ETCD [-o yaml|json]`.
pub(super) fn get_volume_status(
    ctx: &Ctx,
    rest: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let id = rest.iter().find(|w| !w.starts_with('-')).copied();
    let format = super::output_flag(rest).unwrap_or("table");
    if id != Some("ETCD") || rest.iter().filter(|w| !w.starts_with('-')).count() > 2 {
        return Err("simulator: only `get volumestatus ETCD` is simulated".into());
    }
    if !matches!(format, "table" | "yaml" | "json") {
        return Err(format!("simulator: `-o {format}` is not simulated"));
    }
    let reached = ctx.reach_all();
    // The resource kind is resolved through the first node: if that fails, so does the call.
    if let Some(e) = reached.endpoint_down {
        return Err(e);
    }
    if let Some((_, Err(e))) = reached.nodes.first() {
        return Err(e.clone());
    }
    let mut errors: Vec<(String, String)> = Vec::new();
    let mut table = vec![
        [
            "NODE",
            "NAMESPACE",
            "TYPE",
            "ID",
            "VERSION",
            "TYPE",
            "PHASE",
            "LOCATION",
            "SIZE",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    let mut first_doc = true;
    for (address, result) in &reached.nodes {
        let node = match result {
            Ok(n) => n,
            Err(e) => {
                errors.push((address.clone(), e.clone()));
                continue;
            }
        };
        let Some(vol) = volume(ctx.minor, node) else {
            errors.push((address.clone(), NOT_FOUND.to_owned()));
            continue;
        };
        let spec = spec(&vol);
        match format {
            "json" => write_resource(out, &resource_json(address, &spec)),
            "yaml" => {
                if !first_doc {
                    let _ = writeln!(out, "---");
                }
                first_doc = false;
                let _ = out.write_all(resource_yaml(address, &vol).as_bytes());
            }
            _ => table.push(vec![
                address.clone(),
                "runtime".into(),
                "VolumeStatus".into(),
                "ETCD".into(),
                "3".into(),
                spec["type"].as_str().unwrap_or_default().to_owned(),
                "ready".into(),
                spec["location"].as_str().unwrap_or_default().to_owned(),
                spec["prettySize"].as_str().unwrap_or_default().to_owned(),
            ]),
        }
    }
    if format == "table" {
        let _ = out.write_all(crate::table::render(&table).as_bytes());
    }
    if errors.is_empty() {
        return Ok(());
    }
    if ctx.modern() {
        return Err(errors
            .iter()
            .map(|(n, e)| format!("error getting resource on node {n}: {e}"))
            .collect::<Vec<_>>()
            .join("\n"));
    }
    // 1.9: go-multierror's list format, without node names.
    let lines: Vec<String> = errors.iter().map(|(_, e)| format!("* {e}")).collect();
    let head = if lines.len() == 1 {
        "1 error occurred:".to_owned()
    } else {
        format!("{} errors occurred:", lines.len())
    };
    Err(format!("{head}\n\t{}\n", lines.join("\n\t")))
}

const PARTITION_SIZE: u64 = 4_294_967_296;

/// `VolumeStatusSpec` (talos:pkg/machinery/resources/block/volume_status.go@release-1.14) of the
/// `ETCD` volume; `mountSpec.parentId` is `/var/lib` either way (system_volumes.go:352-366).
fn spec(vol: &EtcdVolume) -> serde_json::Value {
    let mount = serde_json::json!({
        "targetPath": "etcd",
        "selinuxLabel": "system_u:object_r:etcd_data_t:s0",
        "projectQuotaSupport": false,
        "parentId": "/var/lib",
        "fileMode": 448,
        "uid": 60,
        "gid": 60,
        "recursiveRelabel": true,
    });
    match vol {
        EtcdVolume::Directory => serde_json::json!({
            "phase": "ready",
            "type": "directory",
            "mountSpec": mount,
        }),
        EtcdVolume::Partition { location } => {
            let disk = location.trim_end_matches(|c: char| c.is_ascii_digit());
            let index: u64 = location[disk.len()..].parse().unwrap_or(0);
            serde_json::json!({
                "phase": "ready",
                "type": "partition",
                "location": location,
                "mountLocation": location,
                "partitionIndex": index,
                "parentLocation": disk,
                "uuid": "5e1f1f4c-9c8e-4bde-9b35-5e0d7b0c6f11",
                "partitionUUID": "0a6e3d57-2b2f-4c44-8a5b-0f3b5b1d2e60",
                "size": PARTITION_SIZE,
                "prettySize": "4.3 GB",
                "filesystem": "xfs",
                "mountSpec": mount,
            })
        }
    }
}

fn metadata() -> serde_json::Value {
    serde_json::json!({
        "namespace": "runtime",
        "type": "VolumeStatuses.block.talos.dev",
        "id": "ETCD",
        "version": 3,
        "owner": "block.VolumeManagerController",
        "phase": "running",
        "created": "2026-11-01T10:00:00Z",
        "updated": "2026-11-01T10:00:00Z",
    })
}

fn resource_json(node: &str, spec: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "metadata": metadata(), "node": node, "spec": spec })
}

/// `node:` then yaml.v3's rendering of the resource (4-space indent, fields in struct order).
fn resource_yaml(node: &str, vol: &EtcdVolume) -> String {
    let mut y = format!(
        "node: {node}\nmetadata:\n    namespace: runtime\n    type: VolumeStatuses.block.talos.dev\n    id: ETCD\n    version: 3\n    owner: block.VolumeManagerController\n    phase: running\n    created: 2026-11-01T10:00:00Z\n    updated: 2026-11-01T10:00:00Z\nspec:\n    phase: ready\n"
    );
    match vol {
        EtcdVolume::Directory => y.push_str("    type: directory\n"),
        EtcdVolume::Partition { location } => {
            let s = spec(vol);
            y.push_str(&format!(
                "    type: partition\n    location: {location}\n    mountLocation: {location}\n    partitionIndex: {}\n    parentLocation: {}\n    uuid: {}\n    partitionUUID: {}\n    size: {PARTITION_SIZE}\n    prettySize: 4.3 GB\n    filesystem: xfs\n",
                s["partitionIndex"],
                s["parentLocation"].as_str().unwrap_or_default(),
                s["uuid"].as_str().unwrap_or_default(),
                s["partitionUUID"].as_str().unwrap_or_default(),
            ));
        }
    }
    y.push_str("    mountSpec:\n        targetPath: etcd\n        selinuxLabel: system_u:object_r:etcd_data_t:s0\n        projectQuotaSupport: false\n        parentId: /var/lib\n        fileMode: 448\n        uid: 60\n        gid: 60\n        recursiveRelabel: true\n");
    y
}
