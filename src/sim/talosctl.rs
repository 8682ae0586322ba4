//! `talosctl` as the simulator plays it. Output formats follow `reference/talos.md`: v1.9 by
//! default; the state's `talos_version` (the simulated talosctl and the nodes run the same
//! version) switches to the 1.10–1.14 forms of §13.
//!
//! Every call goes to an endpoint (apid): `-e`, else the talosconfig context's `endpoints`. Like
//! talosctl's round-robin balancer, the call uses any endpoint that answers. A node's address
//! answers while the node is reachable; the cluster's VIP only while etcd has quorum (its owner
//! campaigns through etcd). apid then proxies the call to each `-n` node. Whatever is down fails
//! after a dial delay ([`state::Timing`]) with the dial error talosctl prints.

mod files;
mod rebuild;
mod volumes;

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::state::{self, Cluster, DialError, Node, ViolationKind};
use crate::table as tabwriter;

/// Global flags talosctl accepts anywhere on the command line, and what is left.
#[derive(Debug, Default)]
struct Parsed {
    talosconfig: Option<String>,
    context: Option<String>,
    nodes: Vec<String>,
    endpoints: Vec<String>,
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
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        match flag {
            "--talosconfig" => p.talosconfig = Some(value("--talosconfig")?),
            "--context" => p.context = Some(value("--context")?),
            "-n" | "--nodes" => p.nodes.extend(list(value("--nodes")?)),
            "-e" | "--endpoints" => p.endpoints.extend(list(value("--endpoints")?)),
            "--cluster" => {
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
        // Already reported (talosctl's progress reporter prints errors itself).
        Err(e) if e.is_empty() => 1,
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
    nodes: Vec<String>,
    endpoints: Vec<String>,
    /// Talos minor version (9 for v1.9.5): picks the output and error formats.
    minor: u32,
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
        let version = Cluster::load(state_path)
            .map(|c| c.talos_version)
            .unwrap_or_else(|_| "v1.9.5".into());
        return version_client(&version, &words, out);
    }
    // Every call first lets simulated time pass (reboots finish, etcd starts…).
    let cluster =
        Cluster::update(state_path, |c| c.clone()).map_err(|e| format!("simulator state: {e}"))?;
    // The maintenance client: no talosconfig, the `-n` nodes are the endpoints.
    if words.iter().any(|w| *w == "--insecure" || *w == "-i") {
        if p.nodes.is_empty() {
            return Err("nodes are not set for the command: please use `--nodes` flag or configuration file to set the nodes to run the command against".into());
        }
        let minor = state::minor_version(&cluster.talos_version);
        let ctx = Ctx {
            cluster,
            nodes: p.nodes.clone(),
            endpoints: p.nodes.clone(),
            minor,
        };
        return match words.as_slice() {
            ["version", ..] => rebuild::version_insecure(&ctx, out),
            ["get", kind, rest @ ..]
                if matches!(
                    *kind,
                    "machinestatus" | "machinestatuses" | "disks" | "disk"
                ) =>
            {
                rebuild::get_plain(&ctx, kind, rest, true, out)
            }
            ["apply-config", flags @ ..] => {
                rebuild::apply_config(&ctx, state_path, flags, true, err)
            }
            _ => Err(format!(
                "simulator: unsupported command with --insecure: talosctl {}",
                words.join(" ")
            )),
        };
    }
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
        return config_info(
            &talosconfig,
            &context_name,
            &words,
            &cluster.talosconfig_role,
            out,
        );
    }
    if ctx_value.is_null() {
        return Err(if context_name.is_empty() {
            "error constructing client: failed to determine endpoints".into()
        } else {
            format!("context {context_name:?} not found in config")
        });
    }
    let strings = |key: &str| -> Vec<String> {
        ctx_value[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let nodes = if p.nodes.is_empty() {
        strings("nodes")
    } else {
        p.nodes.clone()
    };
    if nodes.is_empty() {
        return Err("nodes are not set for the command: please use `--nodes` flag or configuration file to set the nodes to run the command against".into());
    }
    let endpoints = if p.endpoints.is_empty() {
        strings("endpoints")
    } else {
        p.endpoints.clone()
    };
    if endpoints.is_empty() {
        return Err("error constructing client: failed to determine endpoints".into());
    }
    let minor = state::minor_version(&cluster.talos_version);
    let ctx = Ctx {
        cluster,
        nodes,
        endpoints,
        minor,
    };
    match words.as_slice() {
        ["version", ..] => version(&ctx, out, err),
        ["get", kind, rest @ ..] => get(&ctx, kind, rest, out, err),
        ["health", ..] => health(&ctx, &words, err),
        ["etcd", "snapshot", path] => etcd_snapshot(&ctx, path, out),
        ["etcd", "snapshot", ..] => Err("accepts 1 arg(s), received 0".into()),
        ["service", "etcd"] | ["services", "etcd"] => service_etcd(&ctx, out, err),
        ["reset", flags @ ..] => reset(&ctx, state_path, flags, err),
        ["bootstrap", flags @ ..] => bootstrap(&ctx, state_path, flags, out),
        ["etcd", "members"] => etcd_members(&ctx, out, err),
        ["etcd", "remove-member", id] => rebuild::remove_member(&ctx, state_path, id, err),
        ["etcd", "remove-member", ..] => Err("accepts 1 arg(s), received 0".into()),
        ["apply-config", flags @ ..] => rebuild::apply_config(&ctx, state_path, flags, false, err),
        ["etcd", "status"] => etcd_status(&ctx, out, err),
        ["cp" | "copy", rest @ ..] => files::copy(&ctx, rest, out),
        ["ls" | "list", rest @ ..] => files::list(&ctx, rest, out),
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

/// Why a call did not get through, and how long talosctl took to find out.
#[derive(Debug, Clone)]
struct Down {
    error: String,
    delay_ms: u64,
}

/// A call that did not reach its node: the endpoint itself is down, or apid could not reach
/// the node behind it. The dial delay has already passed.
#[derive(Debug)]
struct Unreached {
    endpoint: bool,
    error: String,
}

/// Every target node of a multi-node call as the endpoint reached it.
struct Reached<'a> {
    /// The endpoint did not answer: every node failed with this.
    endpoint_down: Option<String>,
    nodes: Vec<(String, Result<&'a Node, String>)>,
}

fn sleep_ms(ms: u64) {
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// `10.5.0.11:50000` → `10.5.0.11`.
fn host_of(endpoint: &str) -> &str {
    match endpoint.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => endpoint,
    }
}

impl Ctx {
    /// talosctl 1.14 formats: per-node `error from node …`, `requires exactly one node`.
    fn modern(&self) -> bool {
        self.minor >= 14
    }

    fn dial_failure(&self, address: &str, kind: DialError) -> Down {
        let delay_ms = match kind {
            DialError::NoRouteToHost => self.cluster.timing.no_route_ms,
            DialError::Timeout => self.cluster.timing.dial_timeout_ms,
        };
        Down {
            error: kind.message(address),
            delay_ms,
        }
    }

    /// The endpoint that takes the call: the first that answers, or the first one's error once
    /// every one has failed (the balancer waits for all of them).
    fn endpoint(&self) -> Result<String, Down> {
        let mut first: Option<Down> = None;
        let mut slowest = 0;
        for ep in &self.endpoints {
            let host = host_of(ep);
            let answer = match self.cluster.node(host) {
                Some(n) if n.reachable && n.maintenance => Err(Down {
                    error: rebuild::UNKNOWN_AUTHORITY.into(),
                    delay_ms: 0,
                }),
                Some(n) if n.reachable => Ok(()),
                Some(n) => Err(self.dial_failure(host, n.dial_error)),
                // An unowned VIP on the nodes' L2: nobody answers ARP for it.
                None if self.cluster.vip.as_deref() == Some(host) && self.cluster.has_quorum() => {
                    Ok(())
                }
                None => Err(self.dial_failure(host, DialError::NoRouteToHost)),
            };
            match answer {
                Ok(()) => return Ok(host.to_owned()),
                Err(d) => {
                    slowest = slowest.max(d.delay_ms);
                    first.get_or_insert(d);
                }
            }
        }
        let mut down = first.unwrap_or(Down {
            error: "error constructing client: failed to determine endpoints".into(),
            delay_ms: 0,
        });
        down.delay_ms = slowest;
        Err(down)
    }

    /// apid on `via` proxies the call to `address`.
    fn proxy(&self, via: &str, address: &str) -> Result<&Node, Down> {
        if address != via
            && self
                .cluster
                .node(via)
                .is_some_and(|n| !n.is_control_plane())
        {
            // A worker's apid does not forward (siderolabs/talos#9485).
            return Err(Down {
                error: "rpc error: code = PermissionDenied desc = no request forwarding".into(),
                delay_ms: 0,
            });
        }
        match self.cluster.node(address) {
            Some(n) if n.reachable && n.maintenance => Err(Down {
                error: rebuild::UNKNOWN_AUTHORITY.into(),
                delay_ms: 0,
            }),
            Some(n) if n.reachable => Ok(n),
            Some(n) => Err(self.dial_failure(address, n.dial_error)),
            None => Err(self.dial_failure(address, DialError::NoRouteToHost)),
        }
    }

    /// `address` through the endpoint (a `get` of one node among several).
    fn one_node_of(&self, address: &str) -> Result<&Node, String> {
        let via = self.endpoint().map_err(|d| {
            sleep_ms(d.delay_ms);
            d.error
        })?;
        self.proxy(&via, address).map_err(|d| {
            sleep_ms(d.delay_ms);
            d.error
        })
    }

    fn dial_delay(&self, kind: DialError) -> u64 {
        self.dial_failure("", kind).delay_ms
    }

    /// Every target node, asked in parallel: waits for the slowest failure.
    fn reach_all(&self) -> Reached<'_> {
        let via = match self.endpoint() {
            Ok(via) => via,
            Err(d) => {
                sleep_ms(d.delay_ms);
                return Reached {
                    endpoint_down: Some(d.error),
                    nodes: Vec::new(),
                };
            }
        };
        let results: Vec<(String, Result<&Node, Down>)> = self
            .nodes
            .iter()
            .map(|a| (a.clone(), self.proxy(&via, a)))
            .collect();
        sleep_ms(
            results
                .iter()
                .filter_map(|(_, r)| r.as_ref().err().map(|d| d.delay_ms))
                .max()
                .unwrap_or(0),
        );
        Reached {
            endpoint_down: None,
            nodes: results
                .into_iter()
                .map(|(a, r)| (a, r.map_err(|d| d.error)))
                .collect(),
        }
    }

    /// A single-node command: the node count is checked first (client side), then the node is
    /// reached through the endpoint.
    fn one_node(&self, command: &str) -> Result<Result<&Node, Unreached>, String> {
        if self.nodes.len() != 1 {
            return Err(if self.modern() {
                format!(
                    "command {command:?} requires exactly one node (got {})",
                    self.nodes.len()
                )
            } else {
                format!("command {command:?} is not supported with multiple nodes")
            });
        }
        let via = match self.endpoint() {
            Ok(via) => via,
            Err(d) => {
                sleep_ms(d.delay_ms);
                return Ok(Err(Unreached {
                    endpoint: true,
                    error: d.error,
                }));
            }
        };
        Ok(self.proxy(&via, &self.nodes[0]).map_err(|d| {
            sleep_ms(d.delay_ms);
            Unreached {
                endpoint: false,
                error: d.error,
            }
        }))
    }

    /// Ends a multi-node command. ≤ 1.13: a dead endpoint fails the call with `legacy`
    /// wrapped around the error; per-node failures are a WARNING and exit 0 (one node alone:
    /// exit 1). 1.14: one `modern(node, error)` line per failed node, exit 1.
    fn finish(
        &self,
        endpoint_down: Option<String>,
        failures: Vec<(String, String)>,
        err: &mut dyn Write,
        legacy: &str,
        modern: impl Fn(&str, &str) -> String,
    ) -> Result<(), String> {
        if self.modern() {
            let mut lines: Vec<String> = Vec::new();
            if let Some(e) = &endpoint_down {
                lines.extend(self.nodes.iter().map(|n| modern(n, e)));
            }
            lines.extend(failures.iter().map(|(n, e)| modern(n, e)));
            return if lines.is_empty() {
                Ok(())
            } else {
                Err(lines.join("\n"))
            };
        }
        if let Some(e) = endpoint_down {
            return Err(format!("{legacy}: {e}"));
        }
        multi_node_result(self, failures, err, legacy)
    }
}

/// 1.14's most common per-node error form.
fn from_node(node: &str, e: &str) -> String {
    format!("error from node {node}: {e}")
}

/// ≤ 1.13 multi-node semantics: some failures → WARNING and exit 0; one node that failed → exit 1.
fn multi_node_result(
    ctx: &Ctx,
    failures: Vec<(String, String)>,
    err: &mut dyn Write,
    wrapper: &str,
) -> Result<(), String> {
    if failures.is_empty() {
        return Ok(());
    }
    if failures.len() == ctx.nodes.len() && ctx.nodes.len() == 1 {
        return Err(format!("{wrapper}: {}", failures[0].1));
    }
    // cli.Warning around go-multierror's list format.
    let lines: Vec<String> = failures
        .iter()
        .map(|(n, e)| format!("* {n}: {e}"))
        .collect();
    let head = if lines.len() == 1 {
        "1 error occurred:".to_owned()
    } else {
        format!("{} errors occurred:", lines.len())
    };
    let _ = write!(err, "WARNING: {head}\n\t{}\n\n\n", lines.join("\n\t"));
    Ok(())
}

fn version_client(version: &str, words: &[&str], out: &mut dyn Write) -> Result<(), String> {
    if words.contains(&"--short") {
        let _ = writeln!(out, "Client:\n\tTalos {version}");
    } else {
        let _ = write!(
            out,
            "Client:\n\tTag:         {version}\n\tSHA:         3b3c0a1e\n\tBuilt:       \n\tGo version:  go1.23.8\n\tOS/Arch:     linux/amd64\n"
        );
    }
    Ok(())
}

fn version(ctx: &Ctx, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), String> {
    let v = &ctx.cluster.talos_version;
    let _ = write!(
        out,
        "Client:\n\tTag:         {v}\n\tSHA:         3b3c0a1e\n\tBuilt:       \n\tGo version:  go1.23.8\n\tOS/Arch:     linux/amd64\nServer:\n"
    );
    let reached = ctx.reach_all();
    let mut failures = Vec::new();
    for (node, result) in reached.nodes {
        match result {
            Ok(n) => {
                let _ = write!(
                    out,
                    "\tNODE:        {}\n\tTag:         {v}\n\tSHA:         3b3c0a1e\n\tBuilt:       \n\tGo version:  go1.23.8\n\tOS/Arch:     linux/amd64\n\tEnabled:     RBAC\n",
                    n.address
                );
            }
            Err(e) => failures.push((node, e)),
        }
    }
    ctx.finish(
        reached.endpoint_down,
        failures,
        err,
        "error getting version",
        |n, e| format!("error getting version from node {n}: {e}"),
    )
}

fn config_info(
    tc: &serde_json::Value,
    context: &str,
    words: &[&str],
    role: &str,
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
    let format = output_flag(words).unwrap_or("text");
    match format {
        "json" => {
            let v = serde_json::json!({
                "context": tc["context"],
                "nodes": list("nodes"),
                "endpoints": list("endpoints"),
                "roles": [role],
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
                "Current context:     {}\nNodes:               {}\nEndpoints:           {}\nRoles:               {role}\nCertificate expires: 10 years from now (2035-11-30)\n",
                tc["context"].as_str().unwrap_or_default(),
                join("nodes"),
                join("endpoints")
            );
            Ok(())
        }
        other => Err(format!("unknown output format: {other:?}")),
    }
}

/// The value of `-o X`, `-o=X`, `--output X` or `--output=X`.
fn output_flag<'a>(words: &[&'a str]) -> Option<&'a str> {
    words
        .iter()
        .enumerate()
        .find_map(|(i, w)| match w.split_once('=') {
            Some(("-o" | "--output", v)) => Some(v),
            _ if *w == "-o" || *w == "--output" => words.get(i + 1).copied(),
            _ => None,
        })
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
    rest: &[&str],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), String> {
    if volumes::is_volume_status(kind) {
        return volumes::get_volume_status(ctx, rest, out);
    }
    if rebuild::is_machine_config(kind) {
        return rebuild::get_machine_config(ctx, rest, out);
    }
    if matches!(kind, "machinestatus" | "machinestatuses" | "disks" | "disk") {
        return rebuild::get_plain(ctx, kind, rest, false, out);
    }
    if output_flag(rest) != Some("json") {
        return Err("simulator: only `-o json` is simulated for `get`".into());
    }
    let reached = ctx.reach_all();
    let mut failures = Vec::new();
    for (node, result) in &reached.nodes {
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                failures.push((node.clone(), e.clone()));
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
                    if m.is_control_plane() {
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
    ctx.finish(
        reached.endpoint_down,
        failures,
        err,
        "error getting resources",
        |n, e| format!("error listing resources on node {n}: {e}"),
    )
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn health(ctx: &Ctx, words: &[&str], err: &mut dyn Write) -> Result<(), String> {
    let server = !words.contains(&"--server=false");
    if server && let Err(u) = ctx.one_node("health")? {
        return Err(u.error);
    }
    let flag_list = |name: &str| -> Vec<String> {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let control_planes = flag_list("--control-plane-nodes");
    let mut discovered = control_planes.clone();
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
    // The checks look at the control-plane nodes the caller names (all of them otherwise).
    let checked: Vec<String> = if control_planes.is_empty() {
        ctx.cluster
            .nodes
            .iter()
            .filter(|n| n.is_control_plane())
            .map(|n| n.address.clone())
            .collect()
    } else {
        control_planes
    };
    let etcd_problem = checked.iter().find_map(|a| match ctx.cluster.node(a) {
        None => Some(format!("{a}: {}", DialError::NoRouteToHost.message(a))),
        Some(n) if !n.reachable => Some(format!("{a}: {}", n.dial_error.message(a))),
        Some(n) if n.etcd.state != "Running" => {
            let last = n
                .etcd
                .events
                .first()
                .map(|e| e.1.clone())
                .unwrap_or_default();
            Some(format!(
                "{a}: service \"etcd\" not in expected state \"Running\": current state [{}] {last}",
                n.etcd.state
            ))
        }
        Some(n) if n.etcd.health != "OK" => Some(format!("{a}: service is not healthy: etcd")),
        Some(_) => None,
    });
    let nodes_problem = k8s_nodes_match(&ctx.cluster, &discovered);
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
            (9, None, _) => nodes_problem.clone(),
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

/// `all k8s nodes to report`: every expected node has a Kubernetes Node and no Node is left
/// over (talos:pkg/cluster/cluster.go:101-132@release-1.9 `NodesMatch`). A Node object comes
/// back with a restored snapshot even when its machine is gone.
fn k8s_nodes_match(cluster: &Cluster, expected: &[String]) -> Option<String> {
    let mut actual: Vec<&str> = cluster
        .nodes
        .iter()
        .filter(|n| !n.maintenance && !cluster.kube.deleted_nodes.contains(&n.hostname))
        .map(|n| n.address.as_str())
        .collect();
    for e in expected {
        match actual.iter().position(|a| a == e) {
            Some(i) => {
                actual.remove(i);
            }
            None => return Some(format!("can't find expected node with IPs [{e:?}]")),
        }
    }
    if actual.is_empty() {
        return None;
    }
    actual.sort_by_key(|a| a.parse::<std::net::Ipv4Addr>().ok());
    let quoted: Vec<String> = actual.iter().map(|a| format!("{a:?}")).collect();
    Some(format!("unexpected nodes with IPs [{}]", quoted.join(" ")))
}

fn etcd_snapshot(ctx: &Ctx, path: &str, out: &mut dyn Write) -> Result<(), String> {
    let final_path = PathBuf::from(path);
    let part = PathBuf::from(format!("{path}.part"));
    let node = match ctx.one_node("etcd snapshot")? {
        Ok(n) => n,
        // The stream opens at the endpoint; a node apid cannot reach fails it when read.
        Err(u) if u.endpoint => return Err(format!("error reading file: {}", u.error)),
        Err(u) => return Err(format!("error reading: {}", u.error)),
    };
    if node.machine_type == "worker" {
        return Err("error reading file: rpc error: code = Unimplemented desc = etcd snapshot is only available on control plane nodes".into());
    }
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

/// `etcd status` (`reference/talos.md` §7): one row per node whose etcd runs; DB SIZE is the
/// size of its bbolt data (go-humanize SI, as talosctl prints it), all of it in use.
fn etcd_status(ctx: &Ctx, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), String> {
    let mut rows = vec![
        [
            "NODE",
            "MEMBER",
            "DB SIZE",
            "IN USE",
            "LEADER",
            "RAFT INDEX",
            "RAFT TERM",
            "RAFT APPLIED INDEX",
            "LEARNER",
            "ERRORS",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    let reached = ctx.reach_all();
    let mut failures = Vec::new();
    for (address, result) in &reached.nodes {
        let node = match result {
            Ok(n) if n.etcd.state == "Running" => n,
            Ok(_) => {
                failures.push((address.clone(), "rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:2379: connect: connection refused\"".to_owned()));
                continue;
            }
            Err(e) => {
                failures.push((address.clone(), e.clone()));
                continue;
            }
        };
        let data = node_data(ctx, node)?;
        let db = if data.len() % 512 == 32 {
            data.len() - 32
        } else {
            data.len()
        } as u64;
        let member = format!("{:016x}", fnv(&node.hostname));
        rows.push(vec![
            address.clone(),
            member.clone(),
            humanize_si(db),
            format!("{} (100.00%)", humanize_si(db)),
            member,
            "53391".into(),
            "4".into(),
            "53391".into(),
            "false".into(),
            String::new(),
        ]);
    }
    if rows.len() > 1 {
        let _ = out.write_all(tabwriter::render(&rows).as_bytes());
    }
    ctx.finish(
        reached.endpoint_down,
        failures,
        err,
        "error getting status",
        from_node,
    )
}

/// go-humanize's `Bytes`: SI units, one decimal below 10 (`4.5 MB`, `21 MB`, `115 kB`).
fn humanize_si(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let v = ((n as f64 / 1000f64.powi(e as i32)) * 10.0 + 0.5).floor() / 10.0;
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[e])
    } else {
        format!("{v:.0} {}", UNITS[e])
    }
}

/// The node's own etcd data, as bytes of a snapshot file (with or without trailer).
fn node_data(ctx: &Ctx, node: &Node) -> Result<Vec<u8>, String> {
    let source = node
        .etcd
        .data
        .as_ref()
        .or(ctx.cluster.snapshot_source.as_ref())
        .ok_or("simulator: snapshot_source is not set")?;
    let mut data = Vec::new();
    std::fs::File::open(source)
        .and_then(|mut s| s.read_to_end(&mut data))
        .map_err(|e| format!("simulator: reading {}: {e}", source.display()))?;
    Ok(data)
}

/// Splits a data file into the raw bbolt `db` and the sha256 trailer etcd's snapshot ends with.
fn db_and_trailer(mut data: Vec<u8>) -> (Vec<u8>, [u8; 32]) {
    if data.len() % 512 == 32 {
        let trailer = data.split_off(data.len() - 32);
        let mut t = [0u8; 32];
        t.copy_from_slice(&trailer);
        (data, t)
    } else {
        let t: [u8; 32] = Sha256::digest(&data).into();
        (data, t)
    }
}

fn write_part(ctx: &Ctx, node: &Node, part: &Path) -> Result<u64, String> {
    let faults = &ctx.cluster.faults;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(part)
        .map_err(|e| format!("error creating temporary file: {e}"))?;
    // machined streams the local etcd's snapshot with no quorum check (talos.md §13.1): a member
    // that kept running serves it even without quorum; one that restarted without quorum never
    // becomes ready to serve clients, so the call hangs.
    if node.etcd.state != "Running" {
        return Err("error reading file: rpc error: code = Unavailable desc = etcdserver: request timed out".into());
    }
    if node.etcd.restarted_without_quorum {
        sleep_ms(ctx.cluster.timing.snapshot_hang_ms);
        return Err(
            "error reading: rpc error: code = DeadlineExceeded desc = context deadline exceeded"
                .into(),
        );
    }
    let mut data = Vec::new();
    if !faults.snapshot_empty {
        let (db, trailer) = db_and_trailer(node_data(ctx, node)?);
        data = db;
        data.extend_from_slice(&trailer);
    }
    if faults.snapshot_bitflip && data.len() > 64 * 1024 {
        // The last byte of the body (slack or value bytes, never a page header): bbolt's
        // structure stays intact, so only the sha256 trailer can notice.
        let i = data.len() - 33;
        data[i] ^= 0x01;
    }
    sleep_ms(faults.snapshot_delay_ms);
    if let Some(cut) = faults.snapshot_cut_after {
        let cut = usize::try_from(cut).unwrap_or(usize::MAX).min(data.len());
        let _ = f.write_all(&data[..cut]);
        return Err(
            "error reading: rpc error: code = Unavailable desc = error reading from server: EOF"
                .into(),
        );
    }
    write_paced(&mut f, &data, ctx.cluster.timing.snapshot_bytes_per_s)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("failed to fsync: {e}"))?;
    Ok(data.len() as u64)
}

/// Writes `data` at `bytes_per_s` (0: at once) in chunks of a 20th of a second (4 KiB to
/// 1 MiB), each when the rate allows it, so a reader sees the file grow the way a network
/// stream fills it.
fn write_paced(f: &mut std::fs::File, data: &[u8], bytes_per_s: u64) -> std::io::Result<()> {
    if bytes_per_s == 0 {
        return f.write_all(data);
    }
    let chunk = usize::try_from(bytes_per_s / 20)
        .unwrap_or(usize::MAX)
        .clamp(4 << 10, 1 << 20);
    let start = std::time::Instant::now();
    let mut written = 0u64;
    for chunk in data.chunks(chunk) {
        f.write_all(chunk)?;
        written += chunk.len() as u64;
        let due = std::time::Duration::from_secs_f64(written as f64 / bytes_per_s as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

fn service_etcd(ctx: &Ctx, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), String> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let reached = ctx.reach_all();
    let mut failures = Vec::new();
    for (address, result) in &reached.nodes {
        let node = match result {
            Ok(n) => n,
            Err(e) => {
                failures.push((address.clone(), e.clone()));
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
    ctx.finish(
        reached.endpoint_down,
        failures,
        err,
        "error getting service",
        from_node,
    )
}

/// The recovery form of reset: `--graceful=false --reboot --system-labels-to-wipe=L[,L…]`
/// (the flag may repeat). Anything else is refused loudly so a test notices a wrong flag.
fn reset_labels(flags: &[&str]) -> Result<Vec<String>, String> {
    let (mut graceful, mut reboot) = (true, false);
    let mut labels: Vec<String> = Vec::new();
    let mut it = flags.iter();
    while let Some(f) = it.next() {
        match *f {
            "--graceful=false" => graceful = false,
            "--graceful" | "--graceful=true" => graceful = true,
            "--reboot" | "--reboot=true" => reboot = true,
            "--system-labels-to-wipe" => labels.extend(
                it.next()
                    .ok_or("flag needs an argument: --system-labels-to-wipe")?
                    .split(',')
                    .map(str::to_owned),
            ),
            _ => match f.strip_prefix("--system-labels-to-wipe=") {
                Some(v) => labels.extend(v.split(',').map(str::to_owned)),
                None => labels.push(format!("?{f}")),
            },
        }
    }
    labels.retain(|l| !l.is_empty());
    let simulated = labels.iter().all(|l| l == "EPHEMERAL" || l == "ETCD");
    if graceful || !reboot || labels.is_empty() || !simulated {
        return Err(format!(
            "simulator: only `reset --graceful=false --reboot --system-labels-to-wipe=EPHEMERAL[,ETCD]` is simulated, got `reset {}`",
            flags.join(" ")
        ));
    }
    labels.dedup();
    Ok(labels)
}

fn reset(ctx: &Ctx, state_path: &Path, flags: &[&str], err: &mut dyn Write) -> Result<(), String> {
    let labels = reset_labels(flags)?;
    let reached = ctx.reach_all();
    if let Some(e) = reached.endpoint_down {
        return Err(e);
    }
    for (address, result) in &reached.nodes {
        if let Err(e) = result {
            return Err(e.clone());
        }
        if ctx.cluster.faults.reset_fails.contains(address) {
            return Err(format!(
                "error executing reset: 1 error occurred:\n\t* {address}: rpc error: code = Unavailable desc = connection reset by peer"
            ));
        }
    }
    // The server checks every node on its own; a refused reset changes nothing on that node.
    let mut refused = Vec::new();
    let mut accepted = Vec::new();
    for (address, result) in &reached.nodes {
        let Ok(node) = result else { continue };
        match volumes::reset_check(ctx.minor, node, &labels) {
            Ok(wipes_etcd) => accepted.push((address.clone(), wipes_etcd)),
            Err(e) => refused.push((address.clone(), e)),
        }
    }
    let timing = ctx.cluster.timing.clone();
    let never = ctx.cluster.faults.never_preparing.clone();
    Cluster::update(state_path, |c| {
        for (address, wipes_etcd) in &accepted {
            let Some(n) = c.node_mut(address) else {
                continue;
            };
            n.etcd.pending.clear();
            n.etcd.set("Stopping", "?", "Stopping task etcd");
            let mut waiting = state::later(
                timing.reset_ms / 2,
                "Waiting",
                "?",
                "Waiting for service \"cri\" to be \"up\", time sync",
            );
            if *wipes_etcd {
                n.etcd.data_empty = true;
                n.etcd.data = None;
                n.etcd.data_corrupt = false;
                n.etcd.restarted_without_quorum = false;
                n.etcd.health_from_quorum = false;
                waiting.data_empty = Some(true);
            }
            n.etcd.pending.push(waiting);
            if never.contains(address) {
                continue;
            }
            n.etcd.pending.push(state::later(
                timing.reset_ms,
                "Preparing",
                "?",
                "Running pre state",
            ));
            if !*wipes_etcd {
                // The pre-stage finds `member` and starts etcd on it: Preparing lasts only as
                // long as pulling the etcd image again.
                let mut start = state::later(timing.reset_ms + timing.reset_ms / 4, "", "", "");
                start.old_data = true;
                n.etcd.pending.push(start);
            }
        }
    })
    .map_err(|e| format!("simulator state: {e}"))?;
    // Non-TTY progress, one line per update, on stderr (talos.md §4); the reporter prints a
    // node's error itself and the command exits 1 without printing it again.
    for (address, _) in &accepted {
        let _ = writeln!(err, "{address:?}: waiting for actor ID");
        let _ = writeln!(err, "{address:?}: events check condition met");
        let _ = writeln!(err, "{address:?}: unavailable, retrying...");
        let _ = writeln!(err, "{address:?}: post check passed");
    }
    for (address, e) in &refused {
        let _ = writeln!(err, "{address:?}: waiting for actor ID");
        let _ = writeln!(err, "{address:?}: rpc error: code = Unknown desc = {e}");
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(String::new())
    }
}

fn bootstrap(
    ctx: &Ctx,
    state_path: &Path,
    flags: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
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
    let target = ctx.one_node("bootstrap")?;
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
    let node = match target {
        Ok(n) => n.clone(),
        Err(u) => return Err(format!("error uploading snapshot: {}", u.error)),
    };
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
    let minor = ctx.minor;
    Cluster::update(state_path, |c| -> Result<(), String> {
        let n = c.node(&node.address).ok_or("unknown node")?;
        // EtcdRecover (the upload) needs EPHEMERAL mounted, i.e. not in the middle of a reboot
        // (talos:srv.go:1913-1916@release-1.9), and a control plane.
        if n.etcd.state == "Stopping" {
            return Err("error uploading snapshot: rpc error: code = FailedPrecondition desc = etcd service is not ready for recovery yet".into());
        }
        if !n.is_control_plane() {
            return Err("error uploading snapshot: rpc error: code = Unimplemented desc = etcd recover is only available on control plane nodes".into());
        }
        let refusal = if c.faults.bootstrap_refusals > 0 {
            c.faults.bootstrap_refusals -= 1;
            Some("FailedPrecondition desc = bootstrap is not available yet")
        } else {
            bootstrap_refusal(minor, n)
        };
        if let Some(r) = refusal {
            return Err(format!("error executing bootstrap: rpc error: code = {r}"));
        }
        accept_bootstrap(c, state_path, &node.address, &path, hash_failure.clone());
        Ok(())
    })
    .map_err(|e| format!("simulator state: {e}"))?
}

/// The Bootstrap RPC's checks, in order (talos:srv.go:404-424@release-1.9,
/// :410-437@release-1.14). `None`: accepted.
fn bootstrap_refusal(minor: u32, n: &Node) -> Option<&'static str> {
    let cri_up = match minor {
        // The simulator's original rule for 1.9 (pinned by a golden test): anything but
        // Preparing counts as not available yet.
        ..=9 => n.etcd.state == "Preparing",
        // CRI is not up while the node reboots or waits for it.
        _ => !matches!(n.etcd.state.as_str(), "Stopping" | "Waiting"),
    };
    if !cri_up {
        return Some("FailedPrecondition desc = bootstrap is not available yet");
    }
    if minor >= 14 && n.etcd_unconfigured {
        return Some("InvalidArgument desc = etcd is not configured, bootstrap is not possible");
    }
    if n.time_unsynced {
        return Some("FailedPrecondition desc = time is not in sync yet");
    }
    if !n.etcd.data_empty {
        return Some("AlreadyExists desc = etcd data directory is not empty");
    }
    None
}

/// An accepted bootstrap: the node becomes a new single-member cluster from the snapshot; the
/// nodes waiting in the join loop with empty data join it. A cluster made by an earlier
/// bootstrap that is still alive, or another node running older data, is a split.
fn accept_bootstrap(
    c: &mut Cluster,
    state_path: &Path,
    address: &str,
    snapshot: &Path,
    failure: Option<String>,
) {
    let now = jiff::Timestamp::now().as_millisecond();
    let saw = c
        .nodes
        .iter()
        .filter(|n| n.is_control_plane())
        .map(|n| (n.address.clone(), n.etcd.state.clone()))
        .collect();
    let previous = c.etcd_generation;
    if previous > 0 && c.generation_alive(previous) {
        c.violation(
            now,
            ViolationKind::SecondBootstrap,
            address,
            format!(
                "bootstrap accepted on {address} while cluster {previous} from an earlier bootstrap is alive"
            ),
        );
    }
    let running: Vec<(String, u32)> = c
        .nodes
        .iter()
        .filter(|o| {
            o.address != address
                && o.is_control_plane()
                && o.reachable
                && !o.etcd.data_empty
                && o.etcd.state == "Running"
                && !(previous > 0 && o.etcd.generation == previous)
        })
        .map(|o| (o.address.clone(), o.etcd.generation))
        .collect();
    for (other, generation) in running {
        c.violation(
            now,
            ViolationKind::SplitCluster,
            address,
            format!(
                "bootstrap accepted on {address} while {other} runs etcd on its old data (cluster {generation}): two clusters"
            ),
        );
    }
    let generation = previous + 1;
    // The node's data is now the restored snapshot; keep a copy, as the caller may delete
    // the file it uploaded.
    let copy = restored_copy(state_path, generation, snapshot);
    c.pin_node_data();
    c.etcd_generation = generation;
    c.etcd_members.insert(generation, vec![address.to_owned()]);
    let timing = c.timing.clone();
    let joiners: Vec<String> = c
        .nodes
        .iter()
        .filter(|o| {
            o.address != address
                && o.is_control_plane()
                && o.etcd.state == "Preparing"
                && o.etcd.data_empty
        })
        .map(|o| o.address.clone())
        .collect();
    let Some(n) = c.node_mut(address) else {
        return;
    };
    n.etcd.data_empty = false;
    n.etcd.generation = generation;
    n.etcd.data = Some(copy.clone());
    n.etcd.data_corrupt = false;
    n.etcd.restarted_without_quorum = false;
    n.etcd.health_from_quorum = false;
    n.etcd.pending.clear();
    match failure.or_else(|| c.faults.bootstrap_failure.clone()) {
        Some(msg) => {
            let n = c.node_mut(address).expect("checked above");
            n.etcd.pending.push(state::later(
                timing.bootstrap_ms,
                "Failed",
                "?",
                &format!("Failed to run pre stage: error recovering from the snapshot: {msg}"),
            ));
        }
        None => {
            let n = c.node_mut(address).expect("checked above");
            n.etcd.pending.push(state::later(
                timing.bootstrap_ms / 2,
                "Running",
                "?",
                "Started task etcd (PID 4242) for container etcd",
            ));
            n.etcd.pending.push(state::later(
                timing.bootstrap_ms,
                "Running",
                "OK",
                "Health check successful",
            ));
            for other in &joiners {
                if let Some(o) = c.node_mut(other) {
                    let mut join = state::later(
                        timing.bootstrap_ms + timing.join_ms,
                        "Running",
                        "OK",
                        "Health check successful",
                    );
                    join.data_empty = Some(false);
                    join.joins = Some(generation);
                    o.etcd.pending.push(join);
                }
            }
            // From now on the cluster serves the restored data, and the Kubernetes objects of
            // the snapshot (deleted Node objects among them) are back.
            c.snapshot_source = Some(copy);
            c.kube.deleted_nodes.clear();
        }
    }
    c.bootstrapped.push(address.to_owned());
    c.bootstrap_saw.push(saw);
}

/// `<state>.data/cluster-<generation>.snapshot`, a copy of the uploaded snapshot (the upload
/// itself when copying fails).
fn restored_copy(state_path: &Path, generation: u32, snapshot: &Path) -> PathBuf {
    let mut dir = state_path.as_os_str().to_owned();
    dir.push(".data");
    let dest = PathBuf::from(dir).join(format!("cluster-{generation}.snapshot"));
    let copied = dest
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::copy(snapshot, &dest));
    match copied {
        Ok(_) => dest,
        Err(_) => snapshot.to_path_buf(),
    }
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
    let reached = ctx.reach_all();
    let mut failures = Vec::new();
    for (address, result) in &reached.nodes {
        let node = match result {
            Ok(n) if n.etcd.state == "Running" => n,
            Ok(_) => {
                failures.push((address.clone(), "rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:2379: connect: connection refused\"".to_owned()));
                continue;
            }
            Err(e) => {
                failures.push((address.clone(), e.clone()));
                continue;
            }
        };
        // The local member's view: the members of the cluster its data belongs to (a member
        // keeps the name it registered with; a learner says so).
        for m in ctx.cluster.members_of(node.etcd.generation) {
            let Some(n) = ctx.cluster.node(&m) else {
                continue;
            };
            let hostname = ctx
                .cluster
                .member_hostnames_of(&m)
                .unwrap_or_else(|| n.hostname.clone());
            let learner = n.etcd.learner && n.etcd.generation == node.etcd.generation;
            rows.push(vec![
                address.clone(),
                format!("{:016x}", ctx.cluster.member_id(&m)),
                hostname,
                format!("https://{m}:2380"),
                format!("https://{m}:2379"),
                learner.to_string(),
            ]);
        }
    }
    // 1.14 prints the header whatever happens; 1.9 only with rows.
    if rows.len() > 1 || ctx.modern() {
        let _ = out.write_all(tabwriter::render(&rows).as_bytes());
    }
    ctx.finish(
        reached.endpoint_down,
        failures,
        err,
        "error getting members",
        from_node,
    )
}
