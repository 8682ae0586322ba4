//! A stand-in `kubectl` for `talos-dr demo` on machines without kubectl. It answers only what
//! talos-dr asks (`version --client -o json`, `get nodes|pods -o json`, `get KIND,KIND,… -A -o json`,
//! `delete node NAME`) from
//! the simulated cluster's state; the tests always use the real kubectl against
//! [`super::kube_api`].

use std::io::Write;
use std::path::PathBuf;

use super::kube_api;
use super::state::Cluster;

pub fn main(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    // Keep the command words; drop connection flags and their values.
    let mut rest: Vec<&str> = Vec::new();
    let mut it = args.iter().map(String::as_str);
    while let Some(a) = it.next() {
        match a {
            "--kubeconfig" | "--cache-dir" => {
                it.next();
            }
            _ if a.starts_with("--kubeconfig=") || a.starts_with("--cache-dir=") => {}
            _ => rest.push(a),
        }
    }
    let state = std::env::var_os(super::ENV_STATE).map(PathBuf::from);
    if let (["delete", "node" | "nodes" | "no", name], Some(path)) = (rest.as_slice(), &state) {
        return delete_node(path, name, out, err);
    }
    let cluster = state.as_deref().map(Cluster::load);
    let value = match (rest.as_slice(), cluster) {
        (["version", ..], _) => serde_json::json!({
            "clientVersion": { "major": "1", "minor": "32", "gitVersion": "v1.32.3-talos-dr-sim" }
        }),
        (["get", "nodes", ..], Some(Ok(c))) if etcd_up(&c) => kube_api::node_list(&c),
        (["get", "pods", ..], Some(Ok(c))) if etcd_up(&c) => kube_api::pod_list(&c, None),
        // The post-restore comparison: `get namespaces,deployments.apps,… -A -o json`.
        (["get", kinds, ..], Some(Ok(c))) if etcd_up(&c) && kinds.contains(',') => {
            match kube_api::kubectl_list(&c, kinds) {
                Some(list) => list,
                None => {
                    let _ = writeln!(err, "simulated kubectl: unsupported resource in {kinds}");
                    return 1;
                }
            }
        }
        (["get", ..], Some(Ok(_))) => {
            let _ = writeln!(
                err,
                "Error from server (ServiceUnavailable): etcdserver: request timed out"
            );
            return 1;
        }
        (_, Some(Err(e))) => {
            let _ = writeln!(err, "simulated kubectl: cannot read the cluster state: {e}");
            return 1;
        }
        _ => {
            let _ = writeln!(
                err,
                "simulated kubectl: unsupported command: {}",
                rest.join(" ")
            );
            return 1;
        }
    };
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
    0
}

/// `kubectl delete node NAME`, as [`kube_api`] serves it.
fn delete_node(
    state: &std::path::Path,
    name: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let result = Cluster::update(state, |c| {
        if !etcd_up(c) {
            return Err(
                "Error from server (ServiceUnavailable): etcdserver: request timed out".to_owned(),
            );
        }
        let listed = c
            .nodes
            .iter()
            .any(|n| n.hostname == name && !c.kube.deleted_nodes.iter().any(|d| d == name));
        if !listed {
            return Err(format!(
                "Error from server (NotFound): nodes \"{name}\" not found"
            ));
        }
        c.kube.deleted_nodes.push(name.to_owned());
        Ok(())
    });
    match result {
        Ok(Ok(())) => {
            let _ = writeln!(out, "node \"{name}\" deleted");
            0
        }
        Ok(Err(e)) => {
            let _ = writeln!(err, "{e}");
            1
        }
        Err(e) => {
            let _ = writeln!(err, "simulated kubectl: cannot read the cluster state: {e}");
            1
        }
    }
}

fn etcd_up(c: &Cluster) -> bool {
    c.nodes
        .iter()
        .any(|n| n.is_control_plane() && n.etcd.state == "Running")
}
