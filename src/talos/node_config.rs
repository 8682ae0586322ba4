//! talosctl calls that read and put back a node's machine config and change etcd membership:
//! what replacing a lost control-plane node needs (talos.md §14).

use std::path::Path;
use std::time::Duration;

use super::{TalosError, Talosctl, clean_stderr, exec};

/// What `get machinestatus --insecure` says about a node in maintenance mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineStage {
    /// `maintenance`, `installing`, `booting`, `running`, `rebooting`, …
    pub stage: String,
    pub ready: bool,
}

impl Talosctl {
    /// The node's whole machine config as `apply-config` takes it: the `spec` string of
    /// `get machineconfig -o json` (needs the `os:admin` role; `read /system/state/config.yaml`
    /// fails from Talos 1.10 on, talos.md §14.1).
    pub async fn machine_config(&self, node: &str) -> Result<String, TalosError> {
        let out = self
            .call(
                Some(node),
                &["get", "machineconfig", "-o", "json"],
                self.timeout,
            )
            .await?;
        parse_machine_config(&out.stdout).ok_or_else(|| TalosError::Parse {
            command: "talosctl get machineconfig -o json".into(),
            reason: "no spec string".into(),
        })
    }

    /// `etcd remove-member ID` through `node` (a healthy control plane). Prints nothing on
    /// success; etcd refuses to remove the last voter or a live member of an unhealthy cluster.
    pub async fn etcd_remove_member(&self, node: &str, member_id: &str) -> Result<(), TalosError> {
        self.call(
            Some(node),
            &["etcd", "remove-member", member_id],
            self.timeout,
        )
        .await
        .map(|_| ())
    }

    /// Runs a maintenance-mode call: `--insecure` with `-n` used as the endpoint, no client
    /// certificate and no talosconfig (a maintenance node has no cluster CA yet, talos.md §14.2).
    async fn call_insecure(
        &self,
        address: &str,
        rest: &[&str],
        timeout: Duration,
    ) -> Result<exec::CmdOutput, TalosError> {
        let mut args: Vec<String> = vec!["-n".into(), address.into()];
        args.extend(rest.iter().map(|s| (*s).to_owned()));
        args.push("--insecure".into());
        let started = std::time::Instant::now();
        let result = exec::run(&self.bin, &args, &[], timeout).await;
        if let Some(obs) = &self.observer {
            (obs.0)(&super::CallRecord {
                command: exec::display_command(&self.bin, &args),
                exit_code: result.as_ref().ok().and_then(|o| o.code),
                elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                error: match &result {
                    Ok(o) if o.success() => None,
                    Ok(o) => Some(clean_stderr(&o.stderr).lines().next().unwrap_or("").into()),
                    Err(e) => Some(e.to_string()),
                },
            });
        }
        let out = result?;
        if out.success() {
            Ok(out)
        } else {
            Err(TalosError::Failed {
                node: Some(address.to_owned()),
                command: format!("talosctl {} --insecure", rest.join(" ")),
                stderr: clean_stderr(&out.stderr),
            })
        }
    }

    /// The machine stage of a node that runs without a config (`version --insecure` is not
    /// implemented in maintenance mode before Talos 1.14; `get machinestatus` is).
    pub async fn maintenance_stage(&self, address: &str) -> Result<MachineStage, TalosError> {
        let out = self
            .call_insecure(
                address,
                &["get", "machinestatus", "-o", "json"],
                self.timeout,
            )
            .await?;
        parse_machine_status(&out.stdout).ok_or_else(|| TalosError::Parse {
            command: "talosctl get machinestatus --insecure -o json".into(),
            reason: "no spec.stage".into(),
        })
    }

    /// `apply-config --insecure --file F` to a node in maintenance mode: it installs, saves the
    /// config and reboots into it. Prints nothing on success.
    pub async fn apply_config_insecure(
        &self,
        address: &str,
        file: &Path,
        timeout: Duration,
    ) -> Result<(), TalosError> {
        let file = file.display().to_string();
        self.call_insecure(address, &["apply-config", "--file", &file], timeout)
            .await
            .map(|_| ())
    }
}

/// The `spec` string of `get machineconfig -o json` (the first resource when several nodes
/// answered).
pub fn parse_machine_config(stdout: &str) -> Option<String> {
    serde_json::Deserializer::from_str(stdout)
        .into_iter::<serde_json::Value>()
        .next()?
        .ok()?
        .get("spec")?
        .as_str()
        .map(str::to_owned)
}

/// `spec.stage` and `spec.status.ready` of `get machinestatus -o json`.
pub fn parse_machine_status(stdout: &str) -> Option<MachineStage> {
    let v: serde_json::Value = serde_json::Deserializer::from_str(stdout)
        .into_iter::<serde_json::Value>()
        .next()?
        .ok()?;
    Some(MachineStage {
        stage: v["spec"]["stage"].as_str()?.to_owned(),
        ready: v["spec"]["status"]["ready"].as_bool().unwrap_or(false),
    })
}

/// The talosconfig lacks the `os:admin` role that reading a machine config needs.
pub fn is_permission_denied(err: &TalosError) -> bool {
    err.stderr().contains("PermissionDenied")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_config_is_the_spec_string() {
        let out = r#"{
    "node": "10.5.0.11",
    "metadata": {"namespace": "config", "type": "MachineConfigs.config.talos.dev", "id": "v1alpha1"},
    "spec": "version: v1alpha1\nmachine:\n  type: controlplane\n---\napiVersion: v1alpha1\nkind: HostnameConfig\n"
}"#;
        let spec = parse_machine_config(out).unwrap();
        assert!(spec.starts_with("version: v1alpha1\nmachine:"));
        assert!(
            spec.contains("\n---\n"),
            "multi-document configs stay whole"
        );
        assert_eq!(parse_machine_config("{\"spec\": {}}"), None);
    }

    #[test]
    fn machine_status_stage() {
        let out = r#"{"node":"10.5.0.12","metadata":{"id":"machine"},"spec":{"stage":"maintenance","status":{"ready":false}}}"#;
        assert_eq!(
            parse_machine_status(out),
            Some(MachineStage {
                stage: "maintenance".into(),
                ready: false
            })
        );
    }
}
