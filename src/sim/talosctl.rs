//! `talosctl` v1.9 as the simulator plays it. Output formats follow `reference/talos.md`.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::state::{self, Cluster, Node};
use crate::table as tabwriter;

/// Global flags talosctl accepts anywhere on the command line, and what is left.
#[derive(Debug, Default)]
struct Parsed {
    talosconfig: Option<String>,
    context: Option<String>,
    nodes: Vec<String>,
    rest: Vec<String>,
}

fn parse(args: &[String]) -> Result<Parsed, String> {
    let mut p = Parsed::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("flag needs an argument: {name}"))
        };
        match flag {
            "--talosconfig" => p.talosconfig = Some(value("--talosconfig")?),
            "--context" => p.context = Some(value("--context")?),
            "-n" | "--nodes" => p.nodes.extend(
                value("--nodes")?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            "-e" | "--endpoints" | "--cluster" => {
                value(flag)?;
            }
            _ => p.rest.push(arg.clone()),
        }
    }
    Ok(p)
}

/// Runs one simulated talosctl invocation; returns the exit code (0 or 1, like talosctl).
pub fn main(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let Some(state_path) = std::env::var_os(super::ENV_STATE).map(PathBuf::from) else {
        let _ = writeln!(err, "simulator: {} is not set", super::ENV_STATE);
        return 1;
    };
    let _ = state::log_call(&state_path, args);
    match run(&state_path, args, out, err) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            if e.contains("arg(s)") || e.contains("flag") || e.contains("command") {
                let _ = writeln!(err, "\nUsage:\n  talosctl [command]\n");
            }
            1
        }
    }
}

struct Ctx {
    cluster: Cluster,
    talosconfig: serde_json::Value,
    nodes: Vec<String>,
    context_name: String,
}

fn run(
    state_path: &Path,
    args: &[String],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), String> {
    let p = parse(args)?;
    let words: Vec<&str> = p.rest.iter().map(String::as_str).collect();
    // Client-only commands first: they need no nodes.
    if words.first() == Some(&"version") && words.contains(&"--client") {
        return version_client(&words, out);
    }
    // Every call first lets simulated time pass (reboots finish, etcd starts…).
    let cluster =
        Cluster::update(state_path, |c| c.clone()).map_err(|e| format!("simulator state: {e}"))?;
    let tc_path = p
        .talosconfig
        .clone()
        .or_else(|| std::env::var("TALOSCONFIG").ok())
        .ok_or("simulator: pass --talosconfig")?;
    let talosconfig = read_talosconfig(Path::new(&tc_path))?;
    let context_name = p
        .context
        .clone()
        .or_else(|| talosconfig["context"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let ctx_value = talosconfig["contexts"][&context_name].clone();
    if words.starts_with(&["config", "info"]) {
        return config_info(&talosconfig, &context_name, &words, out);
    }
    if ctx_value.is_null() {
        return Err(if context_name.is_empty() {
            "error constructing client: failed to determine endpoints".into()
        } else {
            format!("context {context_name:?} not found in config")
        });
    }
    let nodes = if p.nodes.is_empty() {
        ctx_value["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        p.nodes.clone()
    };
    if nodes.is_empty() {
        return Err("nodes are not set for the command: please use `--nodes` flag or configuration file to set the nodes to run the command against".into());
    }
    let ctx = Ctx {
        cluster,
        talosconfig,
        nodes,
        context_name,
    };
    let _ = &ctx.talosconfig;
    let _ = &ctx.context_name;
    match words.as_slice() {
        ["version", ..] => version(&ctx, out, err),
        ["get", kind, ..] => get(&ctx, kind, &words, out, err),
        ["health", ..] => health(&ctx, &words, err),
        ["etcd", "snapshot", path] => etcd_snapshot(&ctx, path, out),
        ["etcd", "snapshot", ..] => Err("accepts 1 arg(s), received 0".into()),
        ["service", "etcd"] | ["services", "etcd"] => service_etcd(&ctx, out, err),
        ["reset", flags @ ..] => reset(&ctx, state_path, flags, err),
        ["bootstrap", flags @ ..] => bootstrap(&ctx, state_path, flags, out),
        ["etcd", "members"] => etcd_members(&ctx, out, err),
        _ => Err(format!(
            "simulator: unsupported command: talosctl {}",
            words.join(" ")
        )),
    }
}

fn read_talosconfig(path: &Path) -> Result<serde_json::Value, String> {
    match std::fs::read_to_string(path) {
        // The simulator's talosconfig is JSON (which is also valid YAML).
        Ok(text) if text.trim().is_empty() => Ok(serde_json::Value::Null),
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            format!("failed to parse config: {e} (the simulator reads JSON talosconfigs)")
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Real talosctl creates a missing --talosconfig as an empty config.
            let _ = std::fs::write(path, "");
            Ok(serde_json::Value::Null)
        }
        Err(e) => Err(format!("open {}: {e}", path.display())),
    }
}

fn unreachable(node: &str) -> String {
    format!(
        "rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp {node}:50000: connect: no route to host\""
    )
}

fn single_node<'a>(ctx: &'a Ctx, command: &str) -> Result<&'a Node, String> {
    if ctx.nodes.len() > 1 {
        return Err(format!(
            "command \"{command}\" is not supported with multiple nodes"
        ));
    }
    lookup(ctx, &ctx.nodes[0])
}

fn lookup<'a>(ctx: &'a Ctx, address: &str) -> Result<&'a Node, String> {
    match ctx.cluster.node(address) {
        Some(n) if n.reachable => Ok(n),
        _ => Err(unreachable(address)),
    }
}

fn version_client(words: &[&str], out: &mut dyn Write) -> Result<(), String> {
    let v = "v1.9.5";
    if words.contains(&"--short") {
        let _ = writeln!(out, "Client:\n\tTalos {v}");
    } else {
        let _ = write!(
            out,
            "Client:\n\tTag:         {v}\n\tSHA:         3b3c0a1e\n\tBuilt:       \n\tGo version:  go1.23.8\n\tOS/Arch:     linux/amd64\n"
        );
    }
    Ok(())
}

fn version(ctx: &Ctx, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), String> {
    let _ = write!(
        out,
        "Client:\n\tTag:         v1.9.5\n\tSHA:         3b3c0a1e\n\tBuilt:       \n\tGo version:  go1.23.8\n\tOS/Arch:     linux/amd64\nServer:\n"
    );
    let mut failures = Vec::new();
    for node in &ctx.nodes {
        match lookup(ctx, node) {
            Ok(n) => {
                let _ = write!(
                    out,
                    "\tNODE:        {}\n\tTag:         {}\n\tSHA:         3b3c0a1e\n\tBuilt:       \n\tGo version:  go1.23.8\n\tOS/Arch:     linux/amd64\n\tEnabled:     RBAC\n",
                    n.address, ctx.cluster.talos_version
                );
            }
            Err(e) => failures.push(format!("{node}: {e}")),
        }
    }
    multi_node_result(ctx, failures, err, "error getting version")
}

/// Multi-node semantics: some failures → WARNING and exit 0; all failed → exit 1.
fn multi_node_result(
    ctx: &Ctx,
    failures: Vec<String>,
    err: &mut dyn Write,
    wrapper: &str,
) -> Result<(), String> {
    if failures.is_empty() {
        return Ok(());
    }
    if failures.len() == ctx.nodes.len() && ctx.nodes.len() == 1 {
        let msg = failures[0]
            .split_once(": ")
            .map_or(failures[0].as_str(), |x| x.1);
        return Err(format!("{wrapper}: {msg}"));
    }
    let _ = writeln!(err, "WARNING: {} error(s) occurred:", failures.len());
    for f in &failures {
        let _ = writeln!(err, "\t* {f}");
    }
    let _ = writeln!(err);
    Ok(())
}

fn config_info(
    tc: &serde_json::Value,
    context: &str,
    words: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    if tc.is_null() || context.is_empty() {
        return Err("no context is set".into());
    }
    let c = &tc["contexts"][context];
    if c.is_null() {
        return Err(format!("context {context:?} is not defined"));
    }
    let list = |k: &str| -> serde_json::Value {
        match c[k].as_array() {
            Some(a) if !a.is_empty() => serde_json::Value::Array(a.clone()),
            _ => serde_json::Value::Null,
        }
    };
    let format = words
        .iter()
        .position(|w| *w == "-o" || *w == "--output")
        .and_then(|i| words.get(i + 1))
        .copied()
        .unwrap_or("text");
    match format {
        "json" => {
            let v = serde_json::json!({
                "context": tc["context"],
                "nodes": list("nodes"),
                "endpoints": list("endpoints"),
                "roles": ["os:admin"],
                "certTTL": "10 years from now",
                "certNotAfter": "2035-11-30",
            });
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            );
            Ok(())
        }
        "text" => {
            let join = |k: &str| match list(k) {
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => "not defined".into(),
            };
            let _ = write!(
                out,
                "Current context:     {}\nNodes:               {}\nEndpoints:           {}\nRoles:               os:admin\nCertificate expires: 10 years from now (2035-11-30)\n",
                tc["context"].as_str().unwrap_or_default(),
                join("nodes"),
                join("endpoints")
            );
            Ok(())
        }
        other => Err(format!("unknown output format: {other:?}")),
    }
}

/// Go's yaml→map→json path: sorted keys, 4-space indent, one object per resource.
fn write_resource(out: &mut dyn Write, value: &serde_json::Value) {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    let _ = serde::Serialize::serialize(value, &mut ser);
    let _ = out.write_all(&buf);
    let _ = writeln!(out);
}

fn get(
    ctx: &Ctx,
    kind: &str,
    words: &[&str],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), String> {
    if !words.windows(2).any(|w| w == ["-o", "json"]) {
        return Err("simulator: only `-o json` is simulated for `get`".into());
    }
    let mut failures = Vec::new();
    for node in &ctx.nodes {
        let n = match lookup(ctx, node) {
            Ok(n) => n,
            Err(e) => {
                failures.push(format!("{node}: {e}"));
                continue;
            }
        };
        match kind {
            "members" | "member" => {
                for m in &ctx.cluster.nodes {
                    let mut spec = serde_json::json!({
                        "addresses": [m.address],
                        "hostname": m.hostname,
                        "machineType": m.machine_type,
                        "nodeId": format!("{:x}", fnv(&m.hostname)),
                        "operatingSystem": format!("Talos ({})", ctx.cluster.talos_version),
                    });
                    if m.machine_type != "worker" {
                        spec["controlPlane"] = serde_json::json!({"port": 6443});
                    }
                    write_resource(
                        out,
                        &serde_json::json!({
                            "metadata": {
                                "created": "2026-11-01T10:00:00Z",
                                "id": m.hostname,
                                "namespace": "cluster",
                                "owner": "cluster.MemberController",
                                "phase": "running",
                                "type": "Members.cluster.talos.dev",
                                "updated": "2026-11-01T10:00:00Z",
                                "version": 1
                            },
                            "node": node,
                            "spec": spec,
                        }),
                    );
                }
            }
            "machinetype" | "machinetypes" => write_resource(
                out,
                &serde_json::json!({
                    "metadata": {
                        "created": "2026-11-01T10:00:00Z",
                        "id": "machine-type",
                        "namespace": "config",
                        "owner": null,
                        "phase": "running",
                        "type": "MachineTypes.config.talos.dev",
                        "updated": "2026-11-01T10:00:00Z",
                        "version": 2
                    },
                    "node": node,
                    "spec": n.machine_type,
                }),
            ),
            other => return Err(format!("simulator: resource {other:?} is not simulated")),
        }
    }
    multi_node_result(ctx, failures, err, "error getting resources")
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn health(ctx: &Ctx, words: &[&str], err: &mut dyn Write) -> Result<(), String> {
    let server = !words.contains(&"--server=false");
    if server {
        single_node(ctx, "health")?;
    }
    let flag_list = |name: &str| -> Vec<String> {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let mut discovered = flag_list("--control-plane-nodes");
    discovered.extend(flag_list("--worker-nodes"));
    if discovered.is_empty() {
        discovered = ctx
            .cluster
            .nodes
            .iter()
            .map(|n| n.address.clone())
            .collect();
    }
    let quoted: Vec<String> = discovered.iter().map(|d| format!("{d:?}")).collect();
    let _ = writeln!(err, "discovered nodes: [{}]", quoted.join(" "));
    let etcd_problem = ctx
        .cluster
        .nodes
        .iter()
        .filter(|n| n.machine_type != "worker")
        .find_map(|n| {
            if !n.reachable {
                Some(format!("{}: {}", n.address, unreachable(&n.address)))
            } else if n.etcd.state != "Running" {
                let last = n.etcd.events.first().map(|e| e.1.clone()).unwrap_or_default();
                Some(format!(
                    "{}: service \"etcd\" not in expected state \"Running\": current state [{}] {last}",
                    n.address, n.etcd.state
                ))
            } else if n.etcd.health != "OK" {
                Some(format!("{}: service is not healthy: etcd", n.address))
            } else {
                None
            }
        });
    let checks = [
        "etcd to be healthy",
        "etcd members to be consistent across nodes",
        "etcd members to be control plane nodes",
        "apid to be ready",
        "all nodes memory sizes",
        "all nodes disk sizes",
        "no diagnostics",
        "kubelet to be healthy",
        "all nodes to finish boot sequence",
        "all k8s nodes to report",
        "all control plane static pods to be running",
        "all control plane components to be ready",
        "all k8s nodes to report ready",
        "kube-proxy to report ready",
        "coredns to report ready",
        "all k8s nodes to report schedulable",
    ];
    for (i, check) in checks.iter().enumerate() {
        let _ = writeln!(err, "waiting for {check}: ...");
        let failure = match (i, &etcd_problem, &ctx.cluster.faults.health_error) {
            (0, Some(p), _) => Some(format!("1 error occurred:\n    * {p}")),
            (7, None, Some(h)) => Some(h.clone()),
            _ => None,
        };
        if let Some(f) = failure {
            let _ = writeln!(err, "waiting for {check}: {f}");
            return Err("healthcheck error: rpc error: code = DeadlineExceeded desc = context deadline exceeded".into());
        }
        let _ = writeln!(err, "waiting for {check}: OK");
    }
    Ok(())
}

fn etcd_snapshot(ctx: &Ctx, path: &str, out: &mut dyn Write) -> Result<(), String> {
    let node = single_node(ctx, "etcd snapshot")?;
    if node.machine_type == "worker" {
        return Err("error reading file: rpc error: code = Unimplemented desc = etcd snapshot is only available on control plane nodes".into());
    }
    let final_path = PathBuf::from(path);
    let part = PathBuf::from(format!("{path}.part"));
    // talosctl removes the .part file on every exit.
    let result = write_part(ctx, node, &part).and_then(|size| {
        if size % 512 != 32 {
            return Err(format!("sha256 checksum not found (size {size})"));
        }
        std::fs::rename(&part, &final_path)
            .map_err(|e| format!("error renaming to final location: {e}"))?;
        Ok(size)
    });
    let _ = std::fs::remove_file(&part);
    let size = result?;
    let _ = writeln!(out, "etcd snapshot saved to {path:?} ({size} bytes)");
    let report = crate::snapshot::verify::verify_file(&final_path)
        .map_err(|e| format!("failed to get snapshot status: {e}"))?;
    let status = report.status.ok_or_else(|| {
        format!(
            "snapshot file integrity check failed. {} errors found.",
            report.problems.len().max(1)
        )
    })?;
    let _ = writeln!(
        out,
        "snapshot info: hash {:08x}, revision {}, total keys {}, total size {}",
        status.hash, status.revision, status.total_key, status.total_size
    );
    Ok(())
}

fn write_part(ctx: &Ctx, node: &Node, part: &Path) -> Result<u64, String> {
    let faults = &ctx.cluster.faults;
    if node.etcd.state != "Running" || node.etcd.health != "OK" {
        return Err("error reading file: rpc error: code = Unavailable desc = etcdserver: request timed out".into());
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(part)
        .map_err(|e| format!("error creating temporary file: {e}"))?;
    let source = ctx
        .cluster
        .snapshot_source
        .as_ref()
        .ok_or("simulator: snapshot_source is not set")?;
    let mut data = Vec::new();
    if !faults.snapshot_empty {
        std::fs::File::open(source)
            .and_then(|mut s| s.read_to_end(&mut data))
            .map_err(|e| format!("simulator: reading {}: {e}", source.display()))?;
    }
    if faults.snapshot_bitflip && data.len() > 64 * 1024 {
        // The last byte of the body (slack or value bytes, never a page header): bbolt's
        // structure stays intact, so only the sha256 trailer can notice.
        let i = data.len() - 33;
        data[i] ^= 0x01;
    }
    if faults.snapshot_delay_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(faults.snapshot_delay_ms));
    }
    if let Some(cut) = faults.snapshot_cut_after {
        let cut = usize::try_from(cut).unwrap_or(usize::MAX).min(data.len());
        let _ = f.write_all(&data[..cut]);
        return Err(
            "error reading: rpc error: code = Unavailable desc = error reading from server: EOF"
                .into(),
        );
    }
    f.write_all(&data)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("failed to fsync: {e}"))?;
    Ok(data.len() as u64)
}

fn service_etcd(ctx: &Ctx, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), String> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut failures = Vec::new();
    for address in &ctx.nodes {
        let node = match lookup(ctx, address) {
            Ok(n) => n,
            Err(e) => {
                failures.push(format!("{address}: {e}"));
                continue;
            }
        };
        let r = |k: &str, v: &str| vec![k.to_owned(), v.to_owned()];
        rows.push(r("NODE", address));
        rows.push(r("ID", "etcd"));
        rows.push(r("STATE", &node.etcd.state));
        rows.push(r("HEALTH", &node.etcd.health));
        for (i, (state, msg)) in node.etcd.events.iter().enumerate() {
            let ago = 10 * (i + 1);
            rows.push(r(
                if i == 0 { "EVENTS" } else { "" },
                &format!("[{state}]: {msg} ({ago}s ago)"),
            ));
        }
    }
    let _ = out.write_all(tabwriter::render(&rows).as_bytes());
    multi_node_result(ctx, failures, err, "error getting service")
}

fn reset(ctx: &Ctx, state_path: &Path, flags: &[&str], err: &mut dyn Write) -> Result<(), String> {
    // The simulator models only the recovery form of reset; anything else is refused loudly so
    // a test notices a wrong flag.
    let expected = [
        "--graceful=false",
        "--reboot",
        "--system-labels-to-wipe=EPHEMERAL",
    ];
    let mut sorted: Vec<&str> = flags.to_vec();
    sorted.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    if sorted != want {
        return Err(format!(
            "simulator: only `reset {}` is simulated, got `reset {}`",
            expected.join(" "),
            flags.join(" ")
        ));
    }
    for address in &ctx.nodes {
        lookup(ctx, address)?;
        if ctx.cluster.faults.reset_fails.contains(address) {
            return Err(format!(
                "error executing reset: 1 error occurred:\n\t* {address}: rpc error: code = Unavailable desc = connection reset by peer"
            ));
        }
    }
    let timing = ctx.cluster.timing.clone();
    let never = ctx.cluster.faults.never_preparing.clone();
    Cluster::update(state_path, |c| {
        for address in &ctx.nodes {
            if let Some(n) = c.node_mut(address) {
                n.etcd.pending.clear();
                n.etcd.set("Stopping", "?", "Stopping task etcd");
                n.etcd.data_empty = true;
                let mut waiting = state::later(
                    timing.reset_ms / 2,
                    "Waiting",
                    "?",
                    "Waiting for service \"cri\" to be \"up\", time sync",
                );
                waiting.data_empty = Some(true);
                n.etcd.pending.push(waiting);
                if !never.contains(address) {
                    n.etcd.pending.push(state::later(
                        timing.reset_ms,
                        "Preparing",
                        "?",
                        "Running pre state",
                    ));
                }
            }
        }
    })
    .map_err(|e| format!("simulator state: {e}"))?;
    // Non-TTY progress, one line per update, on stderr (talos.md §4).
    for address in &ctx.nodes {
        let _ = writeln!(err, "{address:?}: waiting for actor ID");
        let _ = writeln!(err, "{address:?}: events check condition met");
        let _ = writeln!(err, "{address:?}: unavailable, retrying...");
        let _ = writeln!(err, "{address:?}: post check passed");
    }
    Ok(())
}

fn bootstrap(
    ctx: &Ctx,
    state_path: &Path,
    flags: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let node = single_node(ctx, "bootstrap")?.clone();
    let mut from = None;
    let mut skip_hash = false;
    for f in flags {
        if let Some(v) = f.strip_prefix("--recover-from=") {
            from = Some(v.to_owned());
        } else if *f == "--recover-skip-hash-check" {
            skip_hash = true;
        } else {
            return Err(format!("unknown flag: {f}"));
        }
    }
    let Some(from) = from else {
        return Err("simulator: only `bootstrap --recover-from=FILE` is simulated".into());
    };
    let path = PathBuf::from(&from);
    std::fs::metadata(&path).map_err(|_| format!("stat {from}: no such file or directory"))?;
    let report =
        crate::snapshot::verify::verify_file(&path).map_err(|e| format!("open {from}: {e}"))?;
    let status = report.status.ok_or("invalid database")?;
    let _ = writeln!(
        out,
        "recovering from snapshot {from:?}: hash {:08x}, revision {}, total keys {}, total size {}",
        status.hash, status.revision, status.total_key, status.total_size
    );
    if ctx.cluster.faults.bootstrap_delay_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(
            ctx.cluster.faults.bootstrap_delay_ms,
        ));
    }
    let hash_failure = match report.trailer {
        crate::snapshot::verify::Trailer::Mismatch if !skip_hash => {
            Some("expected sha256 [...], got [...]".to_owned())
        }
        crate::snapshot::verify::Trailer::Missing if !skip_hash => {
            Some("snapshot missing hash but --skip-hash-check=false".to_owned())
        }
        _ => None,
    };
    Cluster::update(state_path, |c| -> Result<(), String> {
        let timing = c.timing.clone();
        let failure = c
            .faults
            .bootstrap_failure
            .clone()
            .or_else(|| hash_failure.clone());
        let cp: Vec<String> = c
            .nodes
            .iter()
            .filter(|n| n.machine_type != "worker" && n.address != node.address)
            .map(|n| n.address.clone())
            .collect();
        let saw = c
            .nodes
            .iter()
            .filter(|n| n.machine_type != "worker")
            .map(|n| (n.address.clone(), n.etcd.state.clone()))
            .collect();
        if c.faults.bootstrap_refusals > 0 {
            c.faults.bootstrap_refusals -= 1;
            return Err("error executing bootstrap: rpc error: code = FailedPrecondition desc = bootstrap is not available yet".into());
        }
        let n = c.node_mut(&node.address).ok_or("unknown node")?;
        if n.machine_type == "worker" {
            return Err("error executing bootstrap: rpc error: code = FailedPrecondition desc = bootstrap can only be performed on a control plane node".into());
        }
        if n.etcd.state != "Preparing" {
            return Err("error executing bootstrap: rpc error: code = FailedPrecondition desc = bootstrap is not available yet".into());
        }
        if !n.etcd.data_empty {
            return Err("error executing bootstrap: rpc error: code = AlreadyExists desc = etcd data directory is not empty".into());
        }
        n.etcd.data_empty = false;
        match failure {
            Some(msg) => n.etcd.pending.push(state::later(
                timing.bootstrap_ms,
                "Failed",
                "?",
                &format!("Failed to run pre stage: error recovering from the snapshot: {msg}"),
            )),
            None => {
                n.etcd.pending.push(state::later(
                    timing.bootstrap_ms / 2,
                    "Running",
                    "?",
                    "Started task etcd (PID 4242) for container etcd",
                ));
                n.etcd
                    .pending
                    .push(state::later(timing.bootstrap_ms, "Running", "OK", "Health check successful"));
                for other in &cp {
                    if let Some(o) = c.node_mut(other)
                        && o.etcd.state == "Preparing"
                    {
                        o.etcd.data_empty = false;
                        o.etcd.pending.push(state::later(
                            timing.bootstrap_ms + timing.join_ms,
                            "Running",
                            "OK",
                            "Health check successful",
                        ));
                    }
                }
                // From now on the cluster serves the restored data.
                c.snapshot_source = Some(path.clone());
            }
        }
        c.bootstrapped.push(node.address.clone());
        c.bootstrap_saw.push(saw);
        Ok(())
    })
    .map_err(|e| format!("simulator state: {e}"))?
}

fn etcd_members(ctx: &Ctx, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), String> {
    let mut rows = vec![
        [
            "NODE",
            "ID",
            "HOSTNAME",
            "PEER URLS",
            "CLIENT URLS",
            "LEARNER",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    let mut failures = Vec::new();
    for address in &ctx.nodes {
        let node = match lookup(ctx, address) {
            Ok(n) if n.etcd.state == "Running" => n,
            Ok(_) => {
                failures.push(format!(
                    "{address}: rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:2379: connect: connection refused\""
                ));
                continue;
            }
            Err(e) => {
                failures.push(format!("{address}: {e}"));
                continue;
            }
        };
        let _ = node;
        for m in ctx
            .cluster
            .nodes
            .iter()
            .filter(|m| m.machine_type != "worker" && m.etcd.state == "Running")
        {
            rows.push(vec![
                address.clone(),
                format!("{:016x}", fnv(&m.hostname)),
                m.hostname.clone(),
                format!("https://{}:2380", m.address),
                format!("https://{}:2379", m.address),
                "false".into(),
            ]);
        }
    }
    if rows.len() > 1 {
        let _ = out.write_all(tabwriter::render(&rows).as_bytes());
    }
    multi_node_result(ctx, failures, err, "error getting members")
}
