//! Running external tools (talosctl, kubectl) with a timeout, captured output and redaction.
//!
//! Binaries come from `PATH` unless overridden by an environment variable
//! (`TALOS_DR_TALOSCTL`, `TALOS_DR_KUBECTL`), so tests and unusual installs can point elsewhere.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;

pub const ENV_TALOSCTL: &str = "TALOS_DR_TALOSCTL";
pub const ENV_KUBECTL: &str = "TALOS_DR_KUBECTL";

#[derive(Debug, Error)]
pub enum ExecError {
    #[error("{tool} not found: set {env} to its path or put it on PATH")]
    NotFound { tool: String, env: String },
    #[error("{env}={path} does not point to an executable file")]
    BadOverride { env: String, path: PathBuf },
    #[error("could not start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {}s and was stopped", timeout.as_secs())]
    Timeout { command: String, timeout: Duration },
}

/// Captured result of a finished process.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// Exit code; `None` if the process was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Finds a tool: the override variable first (which must point to an executable), then `PATH`.
pub fn resolve_tool(tool: &str, env: &str) -> Result<PathBuf, ExecError> {
    if let Some(value) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(ExecError::BadOverride {
                env: env.to_owned(),
                path,
            })
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(tool))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| ExecError::NotFound {
            tool: tool.to_owned(),
            env: env.to_owned(),
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Renders a command line for messages and logs, with secrets masked.
pub fn display_command(program: &Path, args: &[String]) -> String {
    let name = program.file_name().map_or_else(
        || program.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut out = name;
    for arg in args {
        out.push(' ');
        let arg = redact(arg);
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            out.push_str(&format!("{arg:?}"));
        } else {
            out.push_str(&arg);
        }
    }
    out
}

/// Masks the secret part of anything that looks like a credential.
pub fn redact(text: &str) -> String {
    // A PVE token is USER@REALM!TOKENID=SECRET; keep the id, hide the secret.
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let lower = word.to_ascii_lowercase();
        if let Some(eq) = word
            .rfind('=')
            .filter(|&eq| word[..eq].contains('!') && word[..eq].contains('@'))
        {
            out.push_str(&word[..=eq]);
            out.push_str("***");
        } else if let Some(eq) = word.find('=').filter(|_| {
            [
                "token=",
                "password=",
                "secret=",
                "secret_access_key=",
                "identity=",
            ]
            .iter()
            .any(|k| lower.contains(k))
        }) {
            out.push_str(&word[..=eq]);
            out.push_str("***");
        } else {
            out.push_str(word);
        }
    }
    out
}

/// Runs `program args…` to completion, capturing stdout and stderr, killing it after `timeout`.
pub async fn run(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<CmdOutput, ExecError> {
    let command_line = display_command(program, args);
    tracing::debug!(command = %command_line, "running");
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A timed-out or abandoned call must not outlive us.
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| ExecError::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let output = CmdOutput {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            tracing::debug!(command = %command_line, code = ?output.code, "finished");
            Ok(output)
        }
        Ok(Err(source)) => Err(ExecError::Spawn {
            program: program.display().to_string(),
            source,
        }),
        Err(_) => Err(ExecError::Timeout {
            command: command_line,
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_pve_tokens_and_named_secrets() {
        assert_eq!(
            redact("PVEAPIToken=root@pam!dr=aaaa-bbbb"),
            "PVEAPIToken=root@pam!dr=***"
        );
        assert_eq!(redact("--token=abc"), "--token=***");
        assert_eq!(redact("-n 10.0.0.1"), "-n 10.0.0.1");
    }

    #[test]
    fn display_quotes_arguments_with_spaces() {
        let s = display_command(
            Path::new("/usr/bin/talosctl"),
            &["-n".into(), "10.0.0.1".into(), "a b".into()],
        );
        assert_eq!(s, "talosctl -n 10.0.0.1 \"a b\"");
    }

    #[tokio::test]
    async fn timeout_kills_the_process_and_names_the_command() {
        let err = run(
            Path::new("/bin/sleep"),
            &["5".into()],
            &[],
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("sleep 5"), "{err}");
    }
}
