//! Typed `talosctl` calls (v1.9) and parsers of their output.
//!
//! Every call passes `--talosconfig` explicitly (talosctl would otherwise create an empty config
//! at a default path) and exactly one `-n` for single-node commands (`etcd snapshot`,
//! `bootstrap`, `health` fail with several nodes). Facts: `reference/talos.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::exec::{self, CmdOutput, ExecError};

mod node_config;
pub use node_config::{MachineStage, is_permission_denied, parse_machine_config};

#[derive(Debug, Error)]
pub enum TalosError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("`{command}` failed{}: {stderr}", node.as_ref().map(|n| format!(" on node {n}")).unwrap_or_default())]
    Failed {
        node: Option<String>,
        command: String,
        stderr: String,
    },
    #[error("could not understand the output of `{command}`: {reason}")]
    Parse { command: String, reason: String },
}

impl TalosError {
    /// The stderr text of a failed call (empty for other errors).
    pub fn stderr(&self) -> &str {
        match self {
            TalosError::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }

    /// The node could not be reached at all: a dial error, a connection refused, an `i/o
    /// timeout` or `no route to host` (a lost host on the same L2), or no answer within our own
    /// timeout. Anything the node itself answered is not this.
    pub fn is_unreachable(&self) -> bool {
        match self {
            TalosError::Exec(ExecError::Timeout { .. }) => true,
            TalosError::Failed { stderr, .. } => is_unreachable_text(stderr),
            _ => false,
        }
    }

    /// The first meaningful line of the node's answer, without talosctl 1.14's
    /// `error from node N: ` prefix.
    pub fn message(&self) -> String {
        match self {
            TalosError::Failed { stderr, .. } => first_error_line(stderr).to_owned(),
            other => other.to_string(),
        }
    }
}

/// See [`TalosError::is_unreachable`].
pub fn is_unreachable_text(stderr: &str) -> bool {
    const MARKERS: [&str; 6] = [
        "code = Unavailable",
        "i/o timeout",
        "no route to host",
        "connection refused",
        "Error while dialing",
        "code = DeadlineExceeded desc = context deadline exceeded",
    ];
    MARKERS.iter().any(|m| stderr.contains(m))
}

/// The first line that is not a warning, with talosctl 1.14's per-node prefix removed
/// (`error from node 10.0.0.1: rpc error: …` → `rpc error: …`).
pub fn first_error_line(stderr: &str) -> &str {
    let line = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("WARNING:"))
        .unwrap_or_default();
    strip_node_prefix(line)
}

fn strip_node_prefix(line: &str) -> &str {
    line.strip_prefix("error from node ")
        .and_then(|rest| rest.split_once(": "))
        .map_or(line, |(_, msg)| msg)
}

/// Where a node keeps etcd's data (`get volumestatus ETCD`, talos.md §13.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum EtcdVolume {
    /// Talos 1.9: no `ETCD` volume; `/var/lib/etcd` is on EPHEMERAL.
    Absent,
    /// 1.10+: a directory on EPHEMERAL; wiping EPHEMERAL wipes it.
    Directory,
    /// 1.14 with a `VolumeConfig` for `ETCD`: its own partition, untouched by an EPHEMERAL wipe.
    Partition { location: String },
}

impl EtcdVolume {
    /// The `--system-labels-to-wipe` that clears etcd's data on this node.
    pub fn labels_to_wipe(&self) -> &'static str {
        match self {
            EtcdVolume::Partition { .. } => "EPHEMERAL,ETCD",
            _ => "EPHEMERAL",
        }
    }
}

/// Parses `get volumestatus ETCD -o json` (one resource).
pub fn parse_volume_status(stdout: &str) -> Option<EtcdVolume> {
    let v: serde_json::Value = serde_json::Deserializer::from_str(stdout)
        .into_iter::<serde_json::Value>()
        .next()?
        .ok()?;
    let spec = &v["spec"];
    match spec["type"].as_str()? {
        "partition" => Some(EtcdVolume::Partition {
            location: spec["location"].as_str().unwrap_or_default().to_owned(),
        }),
        _ => Some(EtcdVolume::Directory),
    }
}

/// How to call talosctl for one profile.
#[derive(Debug, Clone)]
pub struct Talosctl {
    pub bin: PathBuf,
    pub talosconfig: PathBuf,
    pub context: Option<String>,
    /// Default timeout for quick calls (version, service, get).
    pub timeout: Duration,
    /// Told about every finished call (a run's event log uses it).
    pub observer: Option<CallObserver>,
    /// Send every single-node call to that node itself (`-e NODE -n NODE`) instead of through
    /// the talosconfig's endpoints, which may be a VIP that dies with etcd (talos.md §13.7).
    pub direct: bool,
}

/// One finished talosctl call, for event logs.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub command: String,
    pub exit_code: Option<i32>,
    pub elapsed_ms: u64,
    /// First line of stderr on failure.
    pub error: Option<String>,
}

#[derive(Clone)]
pub struct CallObserver(pub std::sync::Arc<dyn Fn(&CallRecord) + Send + Sync>);

impl std::fmt::Debug for CallObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallObserver")
    }
}

/// Output of `talosctl config info -o json`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ConfigInfo {
    #[serde(default)]
    pub context: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub nodes: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub endpoints: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub roles: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// One cluster member from `talosctl get members -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub id: String,
    pub hostname: String,
    pub machine_type: String,
    pub addresses: Vec<String>,
    pub os: String,
}

impl Member {
    pub fn is_control_plane(&self) -> bool {
        matches!(self.machine_type.as_str(), "controlplane" | "init")
    }
}

/// `talosctl service etcd` for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub node: String,
    pub state: String,
    pub health: String,
    /// Newest first, as talosctl prints them: `[State]: message (12s ago)`.
    pub events: Vec<String>,
}

impl ServiceStatus {
    pub fn is_running_ok(&self) -> bool {
        self.state == "Running" && self.health == "OK"
    }
    /// The etcd join loop: waiting for `bootstrap` (or to join).
    pub fn is_preparing(&self) -> bool {
        self.state == "Preparing"
    }
    pub fn last_event(&self) -> Option<&str> {
        self.events.first().map(String::as_str)
    }
}

/// What `talosctl etcd snapshot` reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotSaved {
    pub bytes: u64,
    pub info_line: Option<String>,
}

impl Talosctl {
    pub fn new(bin: PathBuf, talosconfig: PathBuf, context: Option<String>) -> Self {
        Self {
            bin,
            talosconfig,
            context,
            timeout: Duration::from_secs(30),
            observer: None,
            direct: false,
        }
    }

    /// The same talosctl, talking to each node directly (`-e NODE -n NODE`).
    pub fn direct(mut self) -> Self {
        self.direct = true;
        self
    }

    fn args(&self, nodes: &[&str], rest: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--talosconfig".to_owned(),
            self.talosconfig.display().to_string(),
        ];
        if let Some(ctx) = &self.context {
            args.push("--context".into());
            args.push(ctx.clone());
        }
        if self.direct && nodes.len() == 1 && !nodes[0].contains(',') && !nodes[0].starts_with('<')
        {
            args.push("-e".into());
            args.push(nodes[0].to_owned());
        }
        if !nodes.is_empty() {
            args.push("-n".into());
            args.push(nodes.join(","));
        }
        args.extend(rest.iter().map(|s| (*s).to_owned()));
        args
    }

    /// Runs talosctl; a non-zero exit becomes [`TalosError::Failed`] with stderr.
    async fn call(
        &self,
        node: Option<&str>,
        rest: &[&str],
        timeout: Duration,
    ) -> Result<CmdOutput, TalosError> {
        let nodes: Vec<&str> = node.into_iter().collect();
        let args = self.args(&nodes, rest);
        let started = std::time::Instant::now();
        let result = exec::run(&self.bin, &args, &[], timeout).await;
        if let Some(obs) = &self.observer {
            (obs.0)(&CallRecord {
                command: exec::display_command(&self.bin, &args),
                exit_code: result.as_ref().ok().and_then(|o| o.code),
                elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                error: match &result {
                    Ok(o) if o.success() => None,
                    Ok(o) => Some(
                        clean_stderr(&o.stderr)
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_owned(),
                    ),
                    Err(e) => Some(e.to_string()),
                },
            });
        }
        let out = result?;
        if out.success() {
            Ok(out)
        } else {
            Err(TalosError::Failed {
                node: node.map(str::to_owned),
                command: format!("talosctl {}", rest.join(" ")),
                stderr: clean_stderr(&out.stderr),
            })
        }
    }

    /// The talosctl client version tag (`v1.9.5`).
    pub async fn client_version(&self) -> Result<String, TalosError> {
        let out = exec::run(
            &self.bin,
            &["version".into(), "--client".into(), "--short".into()],
            &[],
            self.timeout,
        )
        .await?;
        if !out.success() {
            return Err(TalosError::Failed {
                node: None,
                command: "talosctl version --client".into(),
                stderr: clean_stderr(&out.stderr),
            });
        }
        parse_client_version(&out.stdout).ok_or_else(|| TalosError::Parse {
            command: "talosctl version --client --short".into(),
            reason: "no version tag".into(),
        })
    }

    /// The Talos version running on `node` (also proves the node answers).
    pub async fn server_version(&self, node: &str) -> Result<String, TalosError> {
        let out = self.call(Some(node), &["version"], self.timeout).await?;
        parse_server_tag(&out.stdout).ok_or_else(|| TalosError::Parse {
            command: "talosctl version".into(),
            reason: "no Server Tag line".into(),
        })
    }

    pub async fn config_info(&self) -> Result<ConfigInfo, TalosError> {
        let out = self
            .call(None, &["config", "info", "-o", "json"], self.timeout)
            .await?;
        serde_json::from_str(&out.stdout).map_err(|e| TalosError::Parse {
            command: "talosctl config info -o json".into(),
            reason: e.to_string(),
        })
    }

    pub async fn members(&self, node: &str) -> Result<Vec<Member>, TalosError> {
        let out = self
            .call(Some(node), &["get", "members", "-o", "json"], self.timeout)
            .await?;
        parse_members(&out.stdout).map_err(|e| TalosError::Parse {
            command: "talosctl get members -o json".into(),
            reason: e.to_string(),
        })
    }

    /// `talosctl health` run on one node, with the expected node sets pinned.
    pub async fn health(
        &self,
        node: &str,
        control_plane: &[String],
        workers: &[String],
        wait: Duration,
    ) -> Result<(), TalosError> {
        let wait_arg = format!("{}s", wait.as_secs());
        let cp = control_plane.join(",");
        let wk = workers.join(",");
        let mut rest = vec!["health", "--wait-timeout", &wait_arg];
        if !cp.is_empty() {
            rest.extend(["--control-plane-nodes", &cp]);
        }
        if !wk.is_empty() {
            rest.extend(["--worker-nodes", &wk]);
        }
        // talosctl's own wait-timeout governs; ours is a safety net on top.
        self.call(Some(node), &rest, wait + Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// Streams an etcd snapshot from `node` to `path` (talosctl writes `path.part`, then renames).
    pub async fn etcd_snapshot(
        &self,
        node: &str,
        path: &Path,
        timeout: Duration,
    ) -> Result<SnapshotSaved, TalosError> {
        let p = path.display().to_string();
        let out = self
            .call(Some(node), &["etcd", "snapshot", &p], timeout)
            .await?;
        Ok(parse_snapshot_saved(&out.stdout))
    }

    pub async fn service_etcd(&self, node: &str) -> Result<ServiceStatus, TalosError> {
        let out = self
            .call(Some(node), &["service", "etcd"], self.timeout)
            .await?;
        parse_service(&out.stdout)
            .into_iter()
            .next()
            .ok_or_else(|| TalosError::Parse {
                command: "talosctl service etcd".into(),
                reason: "no NODE block".into(),
            })
    }
}

impl Talosctl {
    /// Wipes `labels` (`EPHEMERAL`, which holds /var/lib/etcd, or `EPHEMERAL,ETCD` where etcd has
    /// its own partition) and reboots; keeps STATE (the machine config). `--graceful=false`
    /// because a graceful reset needs etcd quorum to leave the cluster.
    pub async fn reset_labels(
        &self,
        node: &str,
        labels: &str,
        timeout: Duration,
    ) -> Result<(), TalosError> {
        let wipe = format!("--system-labels-to-wipe={labels}");
        self.call(
            Some(node),
            &["reset", "--graceful=false", "--reboot", &wipe],
            timeout,
        )
        .await
        .map(|_| ())
    }

    /// Where `node` keeps etcd's data. Talos 1.9 has no `ETCD` volume (NotFound).
    pub async fn etcd_volume(&self, node: &str) -> Result<EtcdVolume, TalosError> {
        match self
            .call(
                Some(node),
                &["get", "volumestatus", "ETCD", "-o", "json"],
                self.timeout,
            )
            .await
        {
            Ok(out) => parse_volume_status(&out.stdout).ok_or_else(|| TalosError::Parse {
                command: "talosctl get volumestatus ETCD -o json".into(),
                reason: "no spec.type".into(),
            }),
            Err(e) if e.stderr().contains("NotFound") || e.stderr().contains("doesn't exist") => {
                Ok(EtcdVolume::Absent)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `/var/lib/etcd/member` still exists on `node` (`ls`; a missing path is lstat's
    /// "no such file or directory").
    pub async fn etcd_data_present(&self, node: &str) -> Result<bool, TalosError> {
        match self
            .call(Some(node), &["ls", ETCD_MEMBER_DIR], self.timeout)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.stderr().contains("no such file or directory") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Copies the node's raw etcd database into `dest_dir` (which must not hold a `db` yet),
    /// giving `dest_dir/db`: no sha256 trailer, and possibly inconsistent while etcd runs.
    pub async fn copy_etcd_db(
        &self,
        node: &str,
        dest_dir: &Path,
        timeout: Duration,
    ) -> Result<PathBuf, TalosError> {
        let dest = dest_dir.display().to_string();
        self.call(Some(node), &["cp", ETCD_DB, &dest], timeout)
            .await?;
        Ok(dest_dir.join("db"))
    }

    /// `bootstrap --recover-from=FILE` on exactly one node. Exits 0 *before* the restore runs on
    /// the node: the caller must watch `service etcd` afterwards.
    pub async fn bootstrap_recover(
        &self,
        node: &str,
        snapshot: &Path,
        skip_hash_check: bool,
        timeout: Duration,
    ) -> Result<String, TalosError> {
        let from = format!("--recover-from={}", snapshot.display());
        let mut rest = vec!["bootstrap", from.as_str()];
        if skip_hash_check {
            rest.push("--recover-skip-hash-check");
        }
        Ok(self.call(Some(node), &rest, timeout).await?.stdout)
    }

    /// `etcd members` as seen by `node`'s local etcd.
    pub async fn etcd_members(&self, node: &str) -> Result<Vec<EtcdMember>, TalosError> {
        let out = self
            .call(Some(node), &["etcd", "members"], self.timeout)
            .await?;
        Ok(parse_etcd_members(&out.stdout))
    }

    /// etcd's database size on `node` in bytes (`etcd status`, column DB SIZE).
    pub async fn etcd_db_size(&self, node: &str) -> Result<u64, TalosError> {
        let out = self
            .call(Some(node), &["etcd", "status"], self.timeout)
            .await?;
        parse_etcd_db_size(&out.stdout).ok_or_else(|| TalosError::Parse {
            command: "talosctl etcd status".into(),
            reason: "no DB SIZE value".into(),
        })
    }

    /// Machine type per node (`controlplane`, `worker`, `init`), asking each node directly.
    pub async fn machine_types(
        &self,
        nodes: &[String],
    ) -> Result<Vec<(String, String)>, TalosError> {
        if self.direct && nodes.len() > 1 {
            let mut all = Vec::new();
            for n in nodes {
                all.extend(self.machine_types_of(n).await?);
            }
            return Ok(all);
        }
        self.machine_types_of(&nodes.join(",")).await
    }

    async fn machine_types_of(&self, nodes: &str) -> Result<Vec<(String, String)>, TalosError> {
        let out = self
            .call(
                Some(nodes),
                &["get", "machinetype", "-o", "json"],
                self.timeout,
            )
            .await?;
        let mut types = Vec::new();
        for value in
            serde_json::Deserializer::from_str(&out.stdout).into_iter::<serde_json::Value>()
        {
            let value = value.map_err(|e| TalosError::Parse {
                command: "talosctl get machinetype -o json".into(),
                reason: e.to_string(),
            })?;
            types.push((
                value["node"].as_str().unwrap_or_default().to_owned(),
                value["spec"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        Ok(types)
    }

    /// The exact argv (after `talosctl`) a call would use, for plans and dry runs.
    pub fn render(&self, node: Option<&str>, rest: &[&str]) -> String {
        let nodes: Vec<&str> = node.into_iter().collect();
        exec::display_command(&self.bin, &self.args(&nodes, rest))
    }
}

/// The path whose absence proves a node's etcd data is gone (talos.md §13.4).
pub const ETCD_MEMBER_DIR: &str = "/var/lib/etcd/member";
/// The raw bbolt database of a node's etcd (talos.md §13.2).
pub const ETCD_DB: &str = "/var/lib/etcd/member/snap/db";

/// The reset flags of the recovery procedure (talos.md §3D, §11.11).
pub const RESET_ARGS: [&str; 4] = [
    "reset",
    "--graceful=false",
    "--reboot",
    "--system-labels-to-wipe=EPHEMERAL",
];

/// One row of `talosctl etcd members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    pub id: String,
    pub hostname: String,
    pub peer_urls: String,
    pub learner: bool,
}

pub fn parse_etcd_members(stdout: &str) -> Vec<EtcdMember> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("NODE"))
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            // NODE ID HOSTNAME PEER-URLS CLIENT-URLS LEARNER
            (cols.len() >= 6).then(|| EtcdMember {
                id: cols[1].to_owned(),
                hostname: cols[2].to_owned(),
                peer_urls: cols[3].to_owned(),
                learner: cols[5] == "true",
            })
        })
        .collect()
}

/// The largest DB SIZE in `etcd status` output (go-humanize SI sizes: `21 MB`, `4.5 MB`).
/// Columns are separated by at least two spaces (tabwriter pads by three); values such as
/// `21 MB` hold one.
pub fn parse_etcd_db_size(stdout: &str) -> Option<u64> {
    let cols = |l: &str| -> Vec<String> {
        l.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut lines = stdout.lines().skip_while(|l| !l.contains("DB SIZE"));
    let header = cols(lines.next()?);
    let at = header.iter().position(|c| c == "DB SIZE")?;
    lines
        .filter_map(|l| cols(l).get(at).cloned())
        .filter_map(|v| crate::config::ByteSize::parse(&v).ok())
        .map(|b| b.0)
        .max()
}

/// Drops talosctl's usage text (printed after errors mentioning "flag"/"command") and blank lines.
pub fn clean_stderr(stderr: &str) -> String {
    let mut lines = Vec::new();
    for line in stderr.lines() {
        if line.starts_with("Usage:") {
            break;
        }
        if !line.trim().is_empty() {
            lines.push(line.trim_end());
        }
    }
    lines.join("\n")
}

pub fn parse_client_version(stdout: &str) -> Option<String> {
    // `--short` prints "Client:\n\tTalos v1.9.5"; the long form has "Tag: v1.9.5".
    stdout.lines().find_map(|l| {
        let l = l.trim();
        l.strip_prefix("Talos ")
            .or_else(|| l.strip_prefix("Tag:"))
            .map(|v| v.trim().to_owned())
    })
}

pub fn parse_server_tag(stdout: &str) -> Option<String> {
    let server = stdout.split("Server:").nth(1)?;
    server
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tag:").map(|v| v.trim().to_owned()))
}

/// Parses the concatenated JSON stream of `get members -o json`.
pub fn parse_members(stdout: &str) -> Result<Vec<Member>, serde_json::Error> {
    let mut members = Vec::new();
    for value in serde_json::Deserializer::from_str(stdout).into_iter::<serde_json::Value>() {
        let value = value?;
        let spec = &value["spec"];
        let s = |k: &str| spec[k].as_str().unwrap_or_default().to_owned();
        members.push(Member {
            id: value["metadata"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            hostname: s("hostname"),
            machine_type: s("machineType"),
            addresses: spec["addresses"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            os: s("operatingSystem"),
        });
    }
    Ok(members)
}

pub fn parse_snapshot_saved(stdout: &str) -> SnapshotSaved {
    let mut bytes = 0;
    let mut info_line = None;
    for line in stdout.lines() {
        if line.starts_with("etcd snapshot saved to")
            && let Some(open) = line.rfind('(')
        {
            bytes = line[open + 1..]
                .trim_end_matches(" bytes)")
                .trim()
                .parse()
                .unwrap_or(0);
        } else if line.starts_with("snapshot info:") {
            info_line = Some(line.to_owned());
        }
    }
    SnapshotSaved { bytes, info_line }
}

/// Parses the vertical `service <id>` blocks (one per node, in one tabwriter table).
pub fn parse_service(stdout: &str) -> Vec<ServiceStatus> {
    let mut out: Vec<ServiceStatus> = Vec::new();
    let mut in_events = false;
    for line in stdout.lines() {
        if line.trim().is_empty() {
            continue;
        }
        // Columns are separated by runs of >= 2 spaces (tabwriter padding of 3).
        let (key, value) = match line.find("  ") {
            Some(i) => (line[..i].trim(), line[i..].trim()),
            None => (line.trim(), ""),
        };
        let value = value.to_owned();
        if line.starts_with(' ') || line.starts_with('\t') {
            // Continuation: older events with an empty first column.
            if in_events && let Some(cur) = out.last_mut() {
                cur.events.push(line.trim().to_owned());
            }
            continue;
        }
        in_events = false;
        match key {
            "NODE" => out.push(ServiceStatus {
                node: value,
                state: String::new(),
                health: String::new(),
                events: Vec::new(),
            }),
            "STATE" => {
                if let Some(cur) = out.last_mut() {
                    cur.state = value;
                }
            }
            "HEALTH" => {
                if let Some(cur) = out.last_mut() {
                    cur.health = value;
                }
            }
            "EVENTS" => {
                in_events = true;
                if let Some(cur) = out.last_mut() {
                    cur.events.push(value);
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod etcd_status_tests {
    /// The docs' sample (`reference/talos.md` §7), with a second node.
    #[test]
    fn db_size_from_the_docs_sample() {
        let out = "NODE         MEMBER             DB SIZE   IN USE            LEADER             RAFT INDEX   RAFT TERM   RAFT APPLIED INDEX   LEARNER   ERRORS\n\
172.20.0.3   ecebb05b59a776f1   21 MB     6.0 MB (29.08%)   ecebb05b59a776f1   53391        4           53391                false     \n\
172.20.0.4   a49c021e76e707db   4.5 MB    3.0 MB (66.67%)   ecebb05b59a776f1   53391        4           53391                false     \n";
        assert_eq!(super::parse_etcd_db_size(out), Some(21_000_000));
        assert_eq!(super::parse_etcd_db_size("error getting status"), None);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn volume_status_decides_the_labels_to_wipe() {
        let part = r#"{"node":"10.5.0.11","metadata":{"id":"ETCD"},"spec":{"type":"partition","phase":"ready","location":"/dev/sda7"}}"#;
        let v = super::parse_volume_status(part).unwrap();
        assert_eq!(
            v,
            super::EtcdVolume::Partition {
                location: "/dev/sda7".into()
            }
        );
        assert_eq!(v.labels_to_wipe(), "EPHEMERAL,ETCD");
        let dir = r#"{"metadata":{"id":"ETCD"},"spec":{"type":"directory","phase":"ready"}}"#;
        assert_eq!(
            super::parse_volume_status(dir).unwrap().labels_to_wipe(),
            "EPHEMERAL"
        );
        assert_eq!(super::EtcdVolume::Absent.labels_to_wipe(), "EPHEMERAL");
        assert!(super::parse_volume_status("").is_none());
    }

    #[test]
    fn unreachable_nodes_and_1_14_error_prefixes_are_recognised() {
        use super::{first_error_line, is_unreachable_text};
        for e in [
            "error from node 10.5.0.13: rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp 10.5.0.13:50000: i/o timeout\"",
            "rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp 10.5.0.10:50000: connect: no route to host\"",
            "dial tcp 10.5.0.13:50000: connect: connection refused",
        ] {
            assert!(is_unreachable_text(e), "{e}");
        }
        assert!(!is_unreachable_text(
            "rpc error: code = Unknown desc = lstat /var/lib/etcd/member: no such file or directory"
        ));
        assert_eq!(
            first_error_line(
                "WARNING: x\nerror from node 10.5.0.11: rpc error: code = Unknown desc = boom\n"
            ),
            "rpc error: code = Unknown desc = boom"
        );
        assert_eq!(first_error_line("plain"), "plain");
    }

    use super::*;

    #[test]
    fn parses_service_block_from_the_docs() {
        let text = "NODE     172.20.0.2\nID       etcd\nSTATE    Preparing\nHEALTH   ?\nEVENTS   [Preparing]: Running pre state (17s ago)\n         [Waiting]: Waiting for service \"cri\" to be \"up\", time sync (18s ago)\n";
        let s = parse_service(text);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].node, "172.20.0.2");
        assert!(s[0].is_preparing());
        assert_eq!(s[0].health, "?");
        assert_eq!(s[0].events.len(), 2);
        assert_eq!(
            s[0].last_event(),
            Some("[Preparing]: Running pre state (17s ago)")
        );
    }

    #[test]
    fn parses_snapshot_lines_from_the_docs() {
        let s = parse_snapshot_saved(
            "etcd snapshot saved to \"db.snapshot\" (2015264 bytes)\nsnapshot info: hash c25fd181, revision 4193, total keys 1287, total size 3035136\n",
        );
        assert_eq!(s.bytes, 2015264);
        assert!(s.info_line.unwrap().contains("revision 4193"));
    }

    #[test]
    fn parses_member_stream_and_versions() {
        let one = r#"{"metadata":{"id":"cp1"},"node":"10.0.0.11","spec":{"addresses":["10.0.0.11"],"hostname":"cp1","machineType":"controlplane","operatingSystem":"Talos (v1.9.5)"}}"#;
        let two = one
            .replace("cp1", "w1")
            .replace("controlplane", "worker")
            .replace("10.0.0.11", "10.0.0.21");
        let m = parse_members(&format!("{one}\n{two}\n")).unwrap();
        assert_eq!(m.len(), 2);
        assert!(m[0].is_control_plane() && !m[1].is_control_plane());
        assert_eq!(m[1].addresses, vec!["10.0.0.21"]);
        assert_eq!(
            parse_server_tag("Client:\n\tTag:         v1.9.5\nServer:\n\tNODE:        10.0.0.11\n\tTag:         v1.9.4\n").as_deref(),
            Some("v1.9.4")
        );
        assert_eq!(
            parse_client_version("Client:\n\tTalos v1.9.5\n").as_deref(),
            Some("v1.9.5")
        );
    }

    #[test]
    fn parses_etcd_members_table() {
        let t = "NODE           ID                 HOSTNAME   PEER URLS                   CLIENT URLS                 LEARNER\n192.168.4.10   9806a7859559874a   cp0        https://192.168.4.10:2380   https://192.168.4.10:2379   false\n";
        let m = parse_etcd_members(t);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].id, "9806a7859559874a");
        assert_eq!(m[0].hostname, "cp0");
        assert!(!m[0].learner);
    }

    #[test]
    fn clean_stderr_drops_usage() {
        let e = "command \"etcd snapshot\" is not supported with multiple nodes\n\nUsage:\n  talosctl etcd snapshot <path> [flags]\n";
        assert_eq!(
            clean_stderr(e),
            "command \"etcd snapshot\" is not supported with multiple nodes"
        );
    }
}
