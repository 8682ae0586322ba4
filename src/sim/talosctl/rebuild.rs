//! What replacing a node needs from talosctl (`reference/talos.md` §14): reading a node's
//! machine config, the maintenance API (`--insecure`), `apply-config --insecure`, and
//! `etcd remove-member`.

use std::io::Write;
use std::path::Path;

use super::{Ctx, from_node, output_flag, write_resource};
use crate::sim::state::{Cluster, DialError, Node, machine};

const CREATED: &str = "2026-11-01T10:00:00Z";
const NOT_AUTHORIZED: &str = "rpc error: code = PermissionDenied desc = not authorized";
/// A normal (mutual TLS) call to a node in maintenance mode: its certificate comes from the
/// maintenance CA.
pub(super) const UNKNOWN_AUTHORITY: &str = "rpc error: code = Unavailable desc = connection error: desc = \"transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority\"";
/// An `--insecure` call to a configured node: apid demands a client certificate.
const CERT_REQUIRED: &str = "rpc error: code = Unavailable desc = connection error: desc = \"transport: authentication handshake failed: remote error: tls: certificate required\"";

pub(super) fn is_machine_config(kind: &str) -> bool {
    matches!(
        kind,
        "machineconfig" | "machineconfigs" | "mc" | "machineconfigs.config.talos.dev"
    )
}

/// `get` errors: 1.14 per node, ≤ 1.13 go-multierror's list without node names.
fn get_errors(ctx: &Ctx, errors: &[(String, String)]) -> Result<(), String> {
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
    let lines: Vec<String> = errors.iter().map(|(_, e)| format!("* {e}")).collect();
    let head = if lines.len() == 1 {
        "1 error occurred:".to_owned()
    } else {
        format!("{} errors occurred:", lines.len())
    };
    Err(format!("{head}\n\t{}\n", lines.join("\n\t")))
}

/// `get machineconfig [-o yaml|json|table]` (aliases `mc`, `machineconfigs`): the spec is the
/// whole config as one string. Sensitive: `os:admin` only.
pub(super) fn get_machine_config(
    ctx: &Ctx,
    rest: &[&str],
    out: &mut dyn Write,
) -> Result<(), String> {
    let format = output_flag(rest).unwrap_or("table");
    if !matches!(format, "table" | "yaml" | "json") {
        return Err(format!("simulator: `-o {format}` is not simulated"));
    }
    let reached = ctx.reach_all();
    if let Some(e) = reached.endpoint_down {
        return Err(e);
    }
    let mut errors = Vec::new();
    let mut table = vec![
        ["NODE", "NAMESPACE", "TYPE", "ID", "VERSION"]
            .map(str::to_owned)
            .to_vec(),
    ];
    let mut first = true;
    for (address, result) in &reached.nodes {
        let node = match result {
            Ok(n) => n,
            Err(e) => {
                errors.push((address.clone(), e.clone()));
                continue;
            }
        };
        if ctx.cluster.talosconfig_role != "os:admin" {
            errors.push((address.clone(), NOT_AUTHORIZED.to_owned()));
            continue;
        }
        let Some(config) = ctx.cluster.machine_config(node) else {
            errors.push((address.clone(), "rpc error: code = NotFound desc = resource MachineConfigs.config.talos.dev(config/v1alpha1@undefined) doesn't exist".to_owned()));
            continue;
        };
        match format {
            "json" => write_resource(
                out,
                &serde_json::json!({
                    "metadata": mc_metadata(ctx),
                    "node": address,
                    "spec": config,
                }),
            ),
            "yaml" => {
                if !first {
                    let _ = writeln!(out, "---");
                }
                first = false;
                let _ = out.write_all(mc_yaml(ctx, address, &config).as_bytes());
            }
            _ => table.push(vec![
                address.clone(),
                "config".into(),
                "MachineConfig".into(),
                "v1alpha1".into(),
                "1".into(),
            ]),
        }
    }
    if format == "table" && table.len() > 1 {
        let _ = out.write_all(crate::table::render(&table).as_bytes());
    }
    get_errors(ctx, &errors)
}

fn mc_metadata(ctx: &Ctx) -> serde_json::Value {
    let mut m = serde_json::json!({
        "created": CREATED,
        "id": "v1alpha1",
        "namespace": "config",
        "owner": null,
        "phase": "running",
        "type": "MachineConfigs.config.talos.dev",
        "updated": CREATED,
        "version": 1,
    });
    if ctx.minor >= 12 {
        m["annotations"] = serde_json::json!({"talos.dev/yaml-spec": "1"});
    }
    m
}

/// yaml.v3's rendering: `spec: |` and the config indented by 4.
fn mc_yaml(ctx: &Ctx, node: &str, config: &str) -> String {
    let mut y = format!(
        "node: {node}\nmetadata:\n    namespace: config\n    type: MachineConfigs.config.talos.dev\n    id: v1alpha1\n    version: 1\n    owner:\n    phase: running\n    created: {CREATED}\n    updated: {CREATED}\n"
    );
    if ctx.minor >= 12 {
        y.push_str("    annotations:\n        talos.dev/yaml-spec: \"1\"\n");
    }
    y.push_str("spec: |\n");
    for l in config.lines() {
        if l.is_empty() {
            y.push('\n');
        } else {
            y.push_str("    ");
            y.push_str(l);
            y.push('\n');
        }
    }
    y
}

/// `get machinestatus` (maintenance API or normal): `spec.stage` and readiness.
fn machine_status(node: &Node, address: &str) -> serde_json::Value {
    let stage = node.machine_stage();
    let ready = stage == "running" || stage == "maintenance";
    serde_json::json!({
        "metadata": {
            "created": CREATED, "id": "machine", "namespace": "runtime", "owner": "runtime.MachineStatusController",
            "phase": "running", "type": "MachineStatuses.runtime.talos.dev", "updated": CREATED, "version": 3,
        },
        "node": address,
        "spec": {
            "stage": stage,
            "status": { "ready": ready, "unmetConditions": [] },
        },
    })
}

fn disks(address: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "created": CREATED, "id": "sda", "namespace": "runtime", "owner": "block.DisksController",
            "phase": "running", "type": "Disks.block.talos.dev", "updated": CREATED, "version": 1,
        },
        "node": address,
        "spec": {
            "dev_path": "/dev/sda", "size": 34_359_738_368_u64, "pretty_size": "34 GB",
            "io_size": 512, "sector_size": 512, "readonly": false, "cdrom": false,
            "model": "QEMU HARDDISK", "serial": "drive-scsi0", "bus_path": "/pci0000:00/0000:00:05.0/0000:01:01.0/virtio2/host2/target2:0:0/2:0:0:0",
            "sub_system": "/sys/class/block", "transport": "virtio", "rotational": true,
        },
    })
}

/// A `get` of a non-sensitive resource: `machinestatus` on any node, `disks` in maintenance.
pub(super) fn get_plain(
    ctx: &Ctx,
    kind: &str,
    rest: &[&str],
    insecure: bool,
    out: &mut dyn Write,
) -> Result<(), String> {
    let format = output_flag(rest).unwrap_or("table");
    let mut errors = Vec::new();
    let mut table: Vec<Vec<String>> = Vec::new();
    for address in &ctx.nodes {
        let node = match reach(ctx, address, insecure) {
            Ok(n) => n,
            Err(e) => {
                errors.push((address.clone(), e));
                continue;
            }
        };
        // Without apid (maintenance API before 1.14) responses carry no node name.
        let shown = if insecure && ctx.minor < 14 {
            ""
        } else {
            address.as_str()
        };
        let (v, header, row): (serde_json::Value, &[&str], Vec<String>) = match kind {
            "machinestatus" | "machinestatuses" => {
                let v = machine_status(node, shown);
                let stage = v["spec"]["stage"].as_str().unwrap_or_default().to_owned();
                let ready = v["spec"]["status"]["ready"].to_string();
                (
                    v,
                    &["STAGE", "READY"],
                    vec![
                        "runtime".into(),
                        "MachineStatus".into(),
                        "machine".into(),
                        "3".into(),
                        stage,
                        ready,
                    ],
                )
            }
            _ => (
                disks(shown),
                &[
                    "SIZE",
                    "READ ONLY",
                    "TRANSPORT",
                    "ROTATIONAL",
                    "WWID",
                    "MODEL",
                    "SERIAL",
                ],
                vec![
                    "runtime".into(),
                    "Disk".into(),
                    "sda".into(),
                    "1".into(),
                    "34 GB".into(),
                    "false".into(),
                    "virtio".into(),
                    "true".into(),
                    String::new(),
                    "QEMU HARDDISK".into(),
                    "drive-scsi0".into(),
                ],
            ),
        };
        match format {
            "json" => write_resource(out, &v),
            _ => {
                if table.is_empty() {
                    let mut h: Vec<String> = ["NODE", "NAMESPACE", "TYPE", "ID", "VERSION"]
                        .iter()
                        .map(|s| (*s).to_owned())
                        .collect();
                    h.extend(header.iter().map(|s| (*s).to_owned()));
                    table.push(h);
                }
                let mut r = vec![shown.to_owned()];
                r.extend(row);
                table.push(r);
            }
        }
    }
    if !table.is_empty() {
        let _ = out.write_all(crate::table::render(&table).as_bytes());
    }
    get_errors(ctx, &errors)
}

/// One node as the maintenance client (`--insecure`: the node itself is the endpoint, no
/// client certificate) or the normal client reaches it.
fn reach<'a>(ctx: &'a Ctx, address: &str, insecure: bool) -> Result<&'a Node, String> {
    if !insecure {
        return ctx.one_node_of(address).map_err(|e| e.clone());
    }
    match ctx.cluster.node(address) {
        Some(n) if n.reachable && n.maintenance => Ok(n),
        Some(n) if n.reachable => Err(CERT_REQUIRED.to_owned()),
        Some(n) => {
            super::sleep_ms(ctx.dial_delay(n.dial_error));
            Err(n.dial_error.message(address))
        }
        None => {
            super::sleep_ms(ctx.dial_delay(DialError::NoRouteToHost));
            Err(DialError::NoRouteToHost.message(address))
        }
    }
}

/// `version --insecure`: not served by the maintenance API before 1.14.
pub(super) fn version_insecure(ctx: &Ctx, out: &mut dyn Write) -> Result<(), String> {
    let v = &ctx.cluster.talos_version;
    let mut server = String::new();
    for address in &ctx.nodes {
        reach(ctx, address, true).map_err(|e| format!("error getting version: {e}"))?;
        if ctx.minor < 14 {
            return Err("error getting version: rpc error: code = Unimplemented desc = API is not implemented in maintenance mode".into());
        }
        server.push_str(&format!(
            "\tNODE:        {address}\n\tTag:         {v}\n\tSHA:         3b3c0a1e\n\tBuilt:       \n\tGo version:  go1.24.6\n\tOS/Arch:     linux/amd64\n\tEnabled:     RBAC\n"
        ));
    }
    let _ = write!(
        out,
        "Client:\n\tTag:         {v}\n\tSHA:         3b3c0a1e\n\tBuilt:       \n\tGo version:  go1.24.6\n\tOS/Arch:     linux/amd64\nServer:\n{server}"
    );
    Ok(())
}

/// `apply-config --insecure -n IP --file F [--mode auto|reboot|try] [--dry-run]`.
pub(super) fn apply_config(
    ctx: &Ctx,
    state_path: &Path,
    flags: &[&str],
    insecure: bool,
    err: &mut dyn Write,
) -> Result<(), String> {
    let mut file = None;
    let mut mode = "auto".to_owned();
    let mut dry_run = false;
    let mut it = flags.iter();
    while let Some(f) = it.next() {
        match *f {
            "--insecure" | "-i" => {}
            "--dry-run" => dry_run = true,
            "-f" | "--file" => file = it.next().map(|s| (*s).to_owned()),
            "-m" | "--mode" => mode = it.next().map(|s| (*s).to_owned()).unwrap_or_default(),
            other => {
                if let Some(v) = other.strip_prefix("--file=") {
                    file = Some(v.to_owned());
                } else if let Some(v) = other.strip_prefix("--mode=") {
                    v.clone_into(&mut mode);
                } else {
                    return Err(format!("unknown flag: {other}"));
                }
            }
        }
    }
    if !insecure {
        return Err("simulator: only `apply-config --insecure` is simulated".into());
    }
    if !matches!(
        mode.as_str(),
        "auto" | "reboot" | "try" | "staged" | "no-reboot" | "interactive"
    ) {
        return Err(format!(
            "invalid argument \"{mode}\" for \"-m, --mode\" flag: valid values are auto, interactive, no-reboot, reboot, staged, try"
        ));
    }
    let file = file.ok_or("no filename supplied for configuration")?;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("failed to read configuration from {file:?}: {e}"))?;
    let wrap = |e: String| format!("error applying new configuration: {e}");
    let mut applied = Vec::new();
    for address in &ctx.nodes {
        reach(ctx, address, true).map_err(wrap)?;
        if !matches!(mode.as_str(), "auto" | "reboot" | "try") {
            return Err(wrap(format!(
                "rpc error: code = Unimplemented desc = apply configuration --mode='{mode}' is not supported in maintenance mode"
            )));
        }
        match machine::check_config(&text) {
            Err(machine::ConfigProblem::Parse(e)) => {
                return Err(wrap(format!(
                    "rpc error: code = Unknown desc = failed to parse config: {e}"
                )));
            }
            Err(machine::ConfigProblem::Invalid(list)) => {
                return Err(wrap(format!(
                    "rpc error: code = InvalidArgument desc = configuration validation failed: {}",
                    machine::multierror(&list)
                )));
            }
            Ok(()) => {}
        }
        if dry_run {
            let _ = writeln!(
                err,
                "Dry run summary:\nNode is running in maintenance mode and does not have a config yet."
            );
            continue;
        }
        applied.push(address.clone());
    }
    if applied.is_empty() {
        return Ok(());
    }
    Cluster::update(state_path, |c| {
        let now = jiff::Timestamp::now().as_millisecond();
        let install = i64::try_from(c.timing.install_ms).unwrap_or(0);
        let reboot = i64::try_from(c.timing.reboot_ms).unwrap_or(0);
        let hangs = c.faults.install_hangs.clone();
        for a in &applied {
            let Some(n) = c.node_mut(a) else { continue };
            n.machine_config = Some(text.clone());
            n.stage = Some("installing".into());
            if hangs.contains(a) {
                continue;
            }
            n.stage_pending = vec![
                (now + install, "rebooting".into()),
                (now + install + reboot, "running".into()),
            ];
        }
    })
    .map_err(|e| format!("simulator state: {e}"))
}

/// `etcd remove-member <hex ID>`: asked of each `-n` node, which talks to etcd through every
/// control-plane address.
pub(super) fn remove_member(
    ctx: &Ctx,
    state_path: &Path,
    id: &str,
    err: &mut dyn Write,
) -> Result<(), String> {
    let member = u64::from_str_radix(id, 16).map_err(|e| {
        let reason = if id.is_empty() {
            "invalid syntax"
        } else if id.chars().all(|c| c.is_ascii_hexdigit()) {
            "value out of range"
        } else {
            "invalid syntax"
        };
        let _ = e;
        format!(
            "error parsing member ID: error parsing etcd member id: strconv.ParseUint: parsing {id:?}: {reason}"
        )
    })?;
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
        if ctx.cluster.talosconfig_role != "os:admin" {
            failures.push((address.clone(), NOT_AUTHORIZED.to_owned()));
            continue;
        }
        if !node.is_control_plane() {
            failures.push((
                address.clone(),
                "rpc error: code = Unimplemented desc = etcd remove member is only available on control plane nodes".to_owned(),
            ));
            continue;
        }
        let outcome = Cluster::update(state_path, |c| {
            if !c.has_quorum() {
                return Err("etcdserver: request timed out".to_owned());
            }
            c.remove_member(member)
        })
        .map_err(|e| format!("simulator state: {e}"))?;
        match outcome {
            Ok(()) => {}
            Err(e) if e == "member not found" => failures.push((
                address.clone(),
                format!(
                    "rpc error: code = NotFound desc = failed to remove member {member}: etcdserver: member not found"
                ),
            )),
            Err(e) => failures.push((
                address.clone(),
                format!(
                    "rpc error: code = Unknown desc = failed to remove member: failed to remove member {member}: {e}"
                ),
            )),
        }
        // One node is enough for a cluster-wide change; asking more removes nothing more.
        break;
    }
    // The unary call's errors come back through apid: 1.14 per node, before that
    // go-multierror's list with node names (and exit 1).
    let _ = err;
    if let Some(e) = reached.endpoint_down {
        return Err(e);
    }
    if failures.is_empty() {
        return Ok(());
    }
    if ctx.modern() {
        return Err(failures
            .iter()
            .map(|(n, e)| from_node(n, e))
            .collect::<Vec<_>>()
            .join("\n"));
    }
    let lines: Vec<String> = failures
        .iter()
        .map(|(n, e)| format!("* {n}: {e}"))
        .collect();
    Err(
        machine::multierror(&lines.iter().map(|l| l[2..].to_owned()).collect::<Vec<_>>())
            .trim_end()
            .to_owned(),
    )
}
