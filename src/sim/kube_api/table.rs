//! Server-side printing: the `meta.k8s.io/v1 Table` that plain `kubectl get nodes|pods` asks
//! for, so the demo's human-readable kubectl output has the usual columns.
//!
//! Rows are derived from the same JSON objects the list endpoints serve, so the table and
//! `-o json` never disagree.

use serde_json::{Value, json};

/// The Table for a `NodeList`/`PodList` (or one `Node`/`Pod`); `None` for anything else.
pub(super) fn to_table(body: &Value) -> Option<Value> {
    let items: Vec<&Value> = match body["kind"].as_str()? {
        "NodeList" | "PodList" => body["items"].as_array()?.iter().collect(),
        "Node" | "Pod" => vec![body],
        _ => return None,
    };
    let pods = matches!(body["kind"].as_str(), Some("PodList" | "Pod"));
    let (columns, rows): (Value, Vec<Value>) = if pods {
        (
            columns(&[
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Status", "string", 0),
                ("Restarts", "string", 0),
                ("Age", "string", 0),
                ("IP", "string", 1),
                ("Node", "string", 1),
            ]),
            items.iter().map(|p| row(p, pod_cells(p))).collect(),
        )
    } else {
        (
            columns(&[
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Roles", "string", 0),
                ("Age", "string", 0),
                ("Version", "string", 0),
                ("Internal-IP", "string", 1),
                ("OS-Image", "string", 1),
                ("Kernel-Version", "string", 1),
                ("Container-Runtime", "string", 1),
            ]),
            items.iter().map(|n| row(n, node_cells(n))).collect(),
        )
    };
    Some(json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
        "columnDefinitions": columns,
        "rows": rows,
    }))
}

fn columns(defs: &[(&str, &str, u8)]) -> Value {
    defs.iter()
        .map(|(name, kind, priority)| {
            json!({
                "name": name,
                "type": kind,
                "format": if *name == "Name" { "name" } else { "" },
                "description": "",
                "priority": priority,
            })
        })
        .collect()
}

/// kubectl takes the NAMESPACE column (for `-A`) from the row's object metadata.
fn row(object: &Value, cells: Vec<Value>) -> Value {
    json!({
        "cells": cells,
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object["metadata"],
        },
    })
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn node_cells(node: &Value) -> Vec<Value> {
    let ready = node["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .is_some_and(|c| c["status"] == "True");
    let mut roles: Vec<&str> = node["metadata"]["labels"]
        .as_object()
        .map(|labels| {
            labels
                .keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect()
        })
        .unwrap_or_default();
    if roles.is_empty() {
        roles.push("<none>");
    }
    let internal_ip = node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .map(|a| text(&a["address"]))
        .unwrap_or_else(|| "<none>".into());
    let info = &node["status"]["nodeInfo"];
    vec![
        json!(text(&node["metadata"]["name"])),
        json!(if ready { "Ready" } else { "NotReady" }),
        json!(roles.join(",")),
        json!(age(&node["metadata"]["creationTimestamp"])),
        json!(text(&info["kubeletVersion"])),
        json!(internal_ip),
        json!(text(&info["osImage"])),
        json!(text(&info["kernelVersion"])),
        json!(text(&info["containerRuntimeVersion"])),
    ]
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
    let restarts: u64 = statuses
        .iter()
        .filter_map(|c| c["restartCount"].as_u64())
        .sum();
    // kubectl shows a waiting or terminated container's reason instead of the phase.
    let reason = statuses.iter().find_map(|c| {
        let state = &c["state"];
        state["waiting"]["reason"]
            .as_str()
            .or_else(|| state["terminated"]["reason"].as_str())
            .map(str::to_owned)
    });
    let status = reason.unwrap_or_else(|| text(&pod["status"]["phase"]));
    let or_none = |v: &Value| {
        v.as_str()
            .map_or_else(|| "<none>".to_owned(), str::to_owned)
    };
    vec![
        json!(text(&pod["metadata"]["name"])),
        json!(format!("{ready}/{}", statuses.len())),
        json!(status),
        json!(restarts.to_string()),
        json!(age(&pod["metadata"]["creationTimestamp"])),
        json!(or_none(&pod["status"]["hostIP"])),
        json!(or_none(&pod["spec"]["nodeName"])),
    ]
}

/// kubectl's short age format (`45s`, `12m`, `5h`, `3d`).
fn age(created: &Value) -> String {
    let Some(created) = created
        .as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
    else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - created.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
