//! `profile init|show|check`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use talos_dr::exec;
use talos_dr::profile::{self as prof, Backup, Node, ProfileFile, Role};
use talos_dr::talos::{Member, Talosctl};
use talos_dr::{Exit, UserError};

use super::Ctx;
use crate::cli::ProfileInitArgs;

pub async fn init(ctx: &Ctx, args: ProfileInitArgs) -> anyhow::Result<Exit> {
    prof::validate_profile_name(&args.name).map_err(|e| UserError::usage(e.to_string()))?;
    let loc = prof::locate(Some(&args.name), ctx.global.config_dir.as_deref())
        .map_err(|e| UserError::usage(e.to_string()))?;
    let dir = &loc.config_dir;
    let file_path = dir.join(prof::PROFILE_FILE);
    if file_path.exists() && !args.force {
        return Err(
            UserError::usage(format!("{} already exists", file_path.display()))
                .hint("pass --force to overwrite it, or edit it by hand")
                .into(),
        );
    }
    let talosconfig = pick_talosconfig(dir, args.talosconfig.as_deref())?;
    let kubeconfig = match &args.kubeconfig {
        Some(p) => absolute(p)?,
        None => PathBuf::from("kubeconfig"),
    };

    let (nodes, source) = if args.control_plane.is_empty() {
        let talos_path = if talosconfig.is_absolute() {
            talosconfig.clone()
        } else {
            dir.join(&talosconfig)
        };
        let members = discover(&talos_path, args.context.clone()).await.map_err(|e| {
            UserError::precondition(format!(
                "could not list the cluster members with talosctl: {e}"
            ))
            .hint("pass the nodes yourself: --control-plane 10.0.0.11,10.0.0.12 --workers 10.0.0.21")
        })?;
        (nodes_from_members(&members, ctx), "talosctl get members")
    } else {
        let mut nodes: Vec<Node> = args
            .control_plane
            .iter()
            .map(|a| node(a, Role::ControlPlane, None))
            .collect();
        nodes.extend(args.workers.iter().map(|a| node(a, Role::Worker, None)));
        (nodes, "--control-plane/--workers")
    };

    let file = ProfileFile {
        name: args.name.clone(),
        talosconfig,
        kubeconfig,
        context: args.context.clone(),
        nodes,
        backup: Backup::default(),
        offsite: None,
        proxmox: None,
    };
    let text = prof::render(&file);
    // Validate what we are about to write, exactly as `load` will read it.
    prof::parse(&text)
        .map_err(|m| UserError::usage(format!("generated profile is invalid: {m}")))?;
    talos_dr::fsutil::create_private_dir(dir)?;
    talos_dr::fsutil::create_private_dir(&dir.join(&file.backup.dir))?;
    talos_dr::fsutil::write_atomic(&file_path, text.as_bytes(), 0o644)?;

    let cp = file
        .nodes
        .iter()
        .filter(|n| n.role == Role::ControlPlane)
        .count();
    let cli = prof::cli_for(dir, &args.name);
    ctx.printer.text(&format!(
        "created {}\n  {} control-plane and {} worker nodes (from {source})\n  talosconfig: {}\nnext: `{cli} profile check`, then `{cli} snapshot`\n",
        file_path.display(),
        cp,
        file.nodes.len() - cp,
        file.talosconfig.display(),
    ));
    ctx.printer.json(&json!({
        "created": file_path,
        "config_dir": dir,
        "nodes_from": source,
        "profile": file,
    }));
    Ok(Exit::Success)
}

fn node(address: &str, role: Role, hostname: Option<String>) -> Node {
    Node {
        address: address.trim().to_owned(),
        role,
        hostname,
        vm: None,
        mac: None,
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// `--talosconfig`, else one already in the profile directory, else $TALOSCONFIG, else
/// ~/.talos/config. Paths outside the profile directory are stored absolute.
fn pick_talosconfig(dir: &Path, given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidate = match given {
        Some(p) => absolute(p)?,
        None if dir.join("talosconfig").is_file() => return Ok(PathBuf::from("talosconfig")),
        None => match std::env::var_os("TALOSCONFIG").filter(|v| !v.is_empty()) {
            Some(v) => PathBuf::from(v),
            None => std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".talos/config"))
                .unwrap_or_default(),
        },
    };
    if !candidate.is_file() {
        return Err(
            UserError::usage(format!("no talosconfig found at {}", candidate.display()))
                .hint("pass --talosconfig PATH (the file `talosctl gen config` or Omni gave you)")
                .into(),
        );
    }
    Ok(candidate)
}

async fn discover(talosconfig: &Path, context: Option<String>) -> anyhow::Result<Vec<Member>> {
    let bin = exec::resolve_tool("talosctl", exec::ENV_TALOSCTL)?;
    let talos = Talosctl::new(bin, talosconfig.to_path_buf(), context);
    let info = talos.config_info().await?;
    let mut last_err = anyhow::anyhow!("the talosconfig context lists no endpoints");
    for endpoint in info.endpoints.iter().chain(info.nodes.iter()) {
        match talos.members(endpoint).await {
            Ok(m) if !m.is_empty() => return Ok(m),
            Ok(_) => last_err = anyhow::anyhow!("{endpoint} reported no members"),
            Err(e) => last_err = e.into(),
        }
    }
    Err(last_err)
}

fn nodes_from_members(members: &[Member], ctx: &Ctx) -> Vec<Node> {
    let mut nodes = Vec::new();
    for m in members {
        let Some(address) = m.addresses.first() else {
            continue;
        };
        if m.machine_type == "init" {
            ctx.reporter.warn(&format!(
                "node {address} has machine type `init`, which etcd recovery does not support; convert it to `controlplane` (talos.md §3C)"
            ));
        }
        let role = if m.is_control_plane() {
            Role::ControlPlane
        } else {
            Role::Worker
        };
        nodes.push(node(address, role, Some(m.hostname.clone())));
    }
    // Control plane first, then workers, each sorted by address for a stable file.
    nodes.sort_by(|a, b| {
        (a.role != Role::ControlPlane, &a.address).cmp(&(b.role != Role::ControlPlane, &b.address))
    });
    nodes
}

pub fn show(ctx: &Ctx) -> anyhow::Result<Exit> {
    let p = ctx.profile()?;
    ctx.printer.text(&format!(
        "profile {} ({})\n  talosconfig  {}\n  kubeconfig   {}\n  backups      {}\n  runs         {}\n\n{}",
        p.name(),
        p.config_dir.display(),
        p.talosconfig().display(),
        p.kubeconfig().display(),
        p.backup_dir().display(),
        p.runs_dir().display(),
        prof::render(&p.file)
    ));
    ctx.printer.json(&json!({
        "config_dir": p.config_dir,
        "paths": {
            "talosconfig": p.talosconfig(),
            "kubeconfig": p.kubeconfig(),
            "backups": p.backup_dir(),
            "runs": p.runs_dir(),
        },
        "profile": p.file,
    }));
    Ok(Exit::Success)
}

#[derive(serde::Serialize)]
struct Check {
    name: String,
    ok: bool,
    /// A failed warning does not fail the command.
    warning_only: bool,
    detail: String,
}

pub async fn check(ctx: &Ctx) -> anyhow::Result<Exit> {
    let p = ctx.profile()?;
    let mut checks = Vec::new();
    let mut push = |name: &str, ok: bool, warning_only: bool, detail: String| {
        checks.push(Check {
            name: name.to_owned(),
            ok,
            warning_only,
            detail,
        });
    };
    let mut exit = Exit::Success;

    let talos = match exec::resolve_tool("talosctl", exec::ENV_TALOSCTL) {
        Ok(bin) => {
            // Each node is asked directly, as a restore would: a VIP endpoint says nothing
            // about whether a recovery could reach the nodes.
            let t = Talosctl::new(bin.clone(), p.talosconfig(), p.file.context.clone()).direct();
            match t.client_version().await {
                Ok(v) => push("talosctl", true, false, format!("{v} ({})", bin.display())),
                Err(e) => push("talosctl", false, false, e.to_string()),
            }
            Some(t)
        }
        Err(e) => {
            exit = Exit::Usage;
            push("talosctl", false, false, e.to_string());
            None
        }
    };
    match exec::resolve_tool("kubectl", exec::ENV_KUBECTL) {
        Ok(bin) => {
            let out = exec::run(
                &bin,
                &[
                    "version".into(),
                    "--client".into(),
                    "-o".into(),
                    "json".into(),
                ],
                &[],
                Duration::from_secs(20),
            )
            .await;
            let version = out.ok().and_then(|o| {
                serde_json::from_str::<serde_json::Value>(&o.stdout)
                    .ok()
                    .and_then(|v| v["clientVersion"]["gitVersion"].as_str().map(str::to_owned))
            });
            match version {
                Some(v) => push("kubectl", true, true, format!("{v} ({})", bin.display())),
                None => push(
                    "kubectl",
                    false,
                    true,
                    "found but `kubectl version --client` failed".into(),
                ),
            }
        }
        Err(e) => push(
            "kubectl",
            false,
            true,
            format!("{e} (needed only to verify a restore)"),
        ),
    }
    let tc = p.talosconfig();
    let tc_ok = std::fs::File::open(&tc).is_ok();
    if !tc_ok {
        exit = Exit::Usage;
    }
    push(
        "talosconfig",
        tc_ok,
        false,
        if tc_ok {
            format!("{} is readable", tc.display())
        } else {
            format!("{} cannot be read", tc.display())
        },
    );
    let kc = p.kubeconfig();
    let kc_ok = kc.is_file();
    push(
        "kubeconfig",
        kc_ok,
        true,
        if kc_ok {
            format!("{} exists", kc.display())
        } else {
            format!(
                "{} is missing (needed only to verify a restore)",
                kc.display()
            )
        },
    );
    let backups = p.backup_dir();
    let writable = talos_dr::fsutil::create_private_dir(&backups).is_ok()
        && tempfile::tempfile_in(&backups).is_ok();
    push(
        "backup directory",
        writable,
        false,
        format!(
            "{} {}",
            backups.display(),
            if writable {
                "is writable"
            } else {
                "is not writable"
            }
        ),
    );
    // The same settings `snapshot`, `restore` and `verify` use, failing with the exit code they
    // give: a broken setting is 2, a target that does not answer is 1 (the failed copy).
    for c in offsite_checks(&p).await {
        if let Some(code) = c.fail
            && (code == Exit::Usage || exit == Exit::Success)
        {
            exit = code;
        }
        push(&c.name, c.fail.is_none(), false, c.detail);
    }
    if let (Some(t), true) = (&talos, tc_ok) {
        for node in p.control_plane() {
            match t.server_version(&node.address).await {
                Ok(v) => push(
                    &format!("node {}", node.address),
                    true,
                    false,
                    format!("answers, Talos {v}"),
                ),
                Err(e) => {
                    if exit == Exit::Success {
                        exit = Exit::Precondition;
                    }
                    push(
                        &format!("node {}", node.address),
                        false,
                        false,
                        e.to_string(),
                    );
                }
            }
        }
    }
    if let (Some(t), true) = (&talos, tc_ok)
        && let Some(node) = p.control_plane().next()
    {
        // Backups save every node's machine config; that read needs the os:admin role.
        match t.machine_config(&node.address).await {
            Ok(_) => push(
                "machine configs",
                true,
                false,
                "the talosconfig may read them (os:admin)".into(),
            ),
            Err(e) if talos_dr::talos::is_permission_denied(&e) => push(
                "machine configs",
                false,
                true,
                "the talosconfig lacks the os:admin role (e.g. an os:etcd:backup key): snapshots \
                 cannot save machine configs, so rebuild-node will have none"
                    .into(),
            ),
            Err(_) => {}
        }
    }
    if p.file.backup.recipients.is_empty() {
        push(
            "config encryption",
            false,
            true,
            "machine configs (cluster CA keys, tokens, the Secrets encryption key) are stored \
             unencrypted, mode 0600: set backup.recipients to encrypt them with age"
                .into(),
        );
    }
    if let Some(cfg) = &p.file.proxmox {
        match talos_dr::pve::PveClient::from_config(cfg, &p.config_dir, ctx.reporter.clone()) {
            Err(e) => {
                exit = Exit::Usage;
                push("proxmox", false, false, e.to_string());
            }
            Ok(client) => match client.version().await {
                Err(e) => {
                    if exit == Exit::Success {
                        exit = Exit::Precondition;
                    }
                    push("proxmox", false, false, format!("API does not answer: {e}"));
                }
                Ok(v) => {
                    push(
                        "proxmox",
                        true,
                        false,
                        format!("API answers, Proxmox VE {}", v.version),
                    );
                    let vms: Vec<_> = p.file.nodes.iter().filter_map(|n| n.vm.clone()).collect();
                    let unmapped = p.file.nodes.iter().filter(|n| n.vm.is_none()).count();
                    if unmapped > 0 {
                        push(
                            "vm mapping",
                            false,
                            true,
                            format!(
                                "{unmapped} node(s) have no `vm`; run `talos-dr profile discover --write`"
                            ),
                        );
                    }
                    let checks = talos_dr::pve::check::check_vms(
                        &client,
                        &vms,
                        talos_dr::pve::check::CheckOptions::default(),
                        cfg.max_parallel,
                    )
                    .await;
                    for c in checks {
                        let name = format!("vm {}/{}", c.vm.node, c.vm.vmid);
                        if c.ok {
                            push(
                                &name,
                                true,
                                false,
                                format!(
                                    "{} is running, unlocked, snapshots possible",
                                    c.name.unwrap_or_default()
                                ),
                            );
                        } else {
                            if exit == Exit::Success {
                                exit = Exit::Precondition;
                            }
                            push(&name, false, false, c.problems.join("; "));
                        }
                    }
                }
            },
        }
    }
    if exit == Exit::Success && !writable {
        exit = Exit::Precondition;
    }

    let mut rows = Vec::new();
    for c in &checks {
        let mark = match (c.ok, c.warning_only) {
            (true, _) => "ok",
            (false, true) => "warn",
            (false, false) => "FAIL",
        };
        rows.push(vec![mark.to_owned(), c.name.clone(), c.detail.clone()]);
    }
    let verdict = if exit == Exit::Success {
        "profile is ready".to_owned()
    } else {
        "profile has problems (see FAIL lines)".to_owned()
    };
    ctx.printer.text(&format!(
        "profile {} ({})\n{}{verdict}\n",
        p.name(),
        p.config_dir.display(),
        talos_dr::table::render(&rows)
    ));
    ctx.printer
        .json(&json!({ "ok": exit == Exit::Success, "checks": checks }));
    Ok(exit)
}

struct SetupCheck {
    name: String,
    /// The exit code this problem gives; `None` when the check passed.
    fail: Option<Exit>,
    detail: String,
}

/// `[offsite]` (credentials, bucket, a write+delete probe) and the age keys.
async fn offsite_checks(p: &prof::Profile) -> Vec<SetupCheck> {
    let mut out = Vec::new();
    let mut add = |name: &str, fail: Option<Exit>, detail: String| {
        out.push(SetupCheck {
            name: name.to_owned(),
            fail,
            detail,
        })
    };
    if let Some(cfg) = &p.file.offsite {
        match talos_dr::offsite::Target::from_profile(p) {
            Err(e) => add("offsite", Some(Exit::Usage), format!("[offsite]: {e}")),
            Ok(None) => {}
            Ok(Some(t)) => {
                if let Some(c) = p.offsite_credentials_file() {
                    add(
                        "offsite credentials",
                        None,
                        format!("{} is readable and private", c.display()),
                    );
                }
                match t.probe().await {
                    Ok(()) => add(
                        "offsite",
                        None,
                        format!(
                            "{} answers; a probe object was written and deleted",
                            cfg.url
                        ),
                    ),
                    Err(e) => add("offsite", Some(Exit::Failed), e.to_string()),
                }
            }
        }
    }
    let recipients: Vec<String> = p
        .file
        .backup
        .recipients
        .iter()
        .map(|r| r.to_string())
        .collect();
    if !recipients.is_empty() {
        add(
            "age recipients",
            None,
            format!("{} valid recipient(s)", recipients.len()),
        );
    }
    if let Some(path) = p.identity_file() {
        match talos_dr::pack::Identities::load(&path) {
            Err(e) => add("age identity", Some(Exit::Usage), e.to_string()),
            Ok(ids)
                if !recipients.is_empty()
                    && !ids.recipients().iter().any(|r| recipients.contains(r)) =>
            {
                add(
                    "age identity",
                    Some(Exit::Usage),
                    format!(
                        "{} holds {}, which is not among backup.recipients: it could not decrypt the copies",
                        path.display(),
                        ids.recipients().join(", ")
                    ),
                )
            }
            Ok(ids) => add(
                "age identity",
                None,
                format!(
                    "{} opens copies for {}",
                    path.display(),
                    ids.recipients().join(", ")
                ),
            ),
        }
    }
    out
}

/// `profile discover [--write]`: map every node to its Proxmox VM and say why.
pub async fn discover_vms(ctx: &Ctx, write: bool) -> anyhow::Result<Exit> {
    use talos_dr::pve::PveClient;
    use talos_dr::pve::discover::{self, MatchMethod, NodeIdentity};

    let p = ctx.profile()?;
    let Some(cfg) = &p.file.proxmox else {
        return Err(UserError::usage(format!(
            "profile {} has no [proxmox] section",
            p.name()
        ))
        .hint("add [proxmox] with `endpoint` and `fingerprint` (or `ca_file`), and set PROXMOX_VE_API_TOKEN")
        .into());
    };
    let client = PveClient::from_config(cfg, &p.config_dir, ctx.reporter.clone())
        .map_err(|e| UserError::usage(format!("[proxmox] in profile {}: {e}", p.name())))?;
    // Hostnames come from the profile; ask talosctl only when some are missing.
    let mut identities: Vec<NodeIdentity> = p
        .file
        .nodes
        .iter()
        .map(|n| NodeIdentity {
            address: n.address.clone(),
            hostname: n.hostname.clone(),
        })
        .collect();
    if identities.iter().any(|n| n.hostname.is_none())
        && let Ok(t) = ctx.talosctl(&p)
    {
        for cp in p.control_plane() {
            if let Ok(members) = t.members(&cp.address).await {
                for id in identities.iter_mut().filter(|i| i.hostname.is_none()) {
                    id.hostname = members
                        .iter()
                        .find(|m| m.addresses.contains(&id.address))
                        .map(|m| m.hostname.clone());
                }
                break;
            }
        }
    }
    let mappings = discover::map_nodes(&client, &identities)
        .await
        .map_err(|e| UserError::precondition(format!("cannot read the Proxmox inventory: {e}")))?;

    let mut rows = vec![
        ["NODE", "HOSTNAME", "VM", "HOW", "WHY"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for m in &mappings {
        rows.push(vec![
            m.address.clone(),
            m.hostname.clone().unwrap_or_else(|| "-".into()),
            m.vm.as_ref()
                .map_or("-".into(), |v| format!("{}/{}", v.node, v.vmid)),
            serde_json::to_value(m.method)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            m.reason.clone(),
        ]);
    }
    let unmapped = mappings
        .iter()
        .filter(|m| m.method == MatchMethod::None)
        .count();
    let mut text = talos_dr::table::render(&rows);
    if write {
        let path = p.config_dir.join(prof::PROFILE_FILE);
        let written = write_mappings(&path, &mappings)?;
        text.push_str(&format!(
            "wrote {written} VM mappings to {}\n",
            path.display()
        ));
    } else if unmapped < mappings.len() {
        text.push_str("pass --write to save the mapping in profile.toml\n");
    }
    if unmapped > 0 {
        text.push_str(&format!(
            "{unmapped} node(s) could not be mapped: name the VM after the node's hostname, or set `vm = {{ node = \"pve1\", vmid = 101 }}` by hand\n"
        ));
    }
    ctx.printer.text(&text);
    ctx.printer
        .json(&json!({ "mappings": mappings, "written": write }));
    Ok(if unmapped == 0 {
        Exit::Success
    } else {
        Exit::Precondition
    })
}

/// Records each mapped node's VM (and its net0 MAC, for a rebuild from a template).
fn write_mappings(
    path: &Path,
    mappings: &[talos_dr::pve::discover::Mapping],
) -> anyhow::Result<usize> {
    let updates: Vec<prof::NodeUpdate> = mappings
        .iter()
        .filter(|m| m.vm.is_some())
        .map(|m| prof::NodeUpdate {
            address: m.address.clone(),
            vm: m.vm.clone(),
            mac: m.mac.clone(),
        })
        .collect();
    Ok(prof::update_nodes(path, &updates).map_err(UserError::failed)?)
}
