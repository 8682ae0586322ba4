//! One exclusive lock per profile, so two runs (a cron snapshot and a restore, say) never overlap.
//!
//! The lock is an OS file lock on `<config_dir>/.lock`: it disappears with the process, so a
//! crash never leaves a stale lock. The file records who holds it, for the error message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LockError {
    #[error("another talos-dr run holds the lock on {path} ({holder})")]
    Held { path: PathBuf, holder: String },
    #[error("could not open the lock file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held for as long as the value lives.
#[derive(Debug)]
pub struct ProfileLock {
    _file: File,
    path: PathBuf,
}

impl ProfileLock {
    /// Takes the lock without waiting; `what` describes this run (e.g. "snapshot").
    pub fn acquire(config_dir: &Path, what: &str) -> Result<Self, LockError> {
        let path = config_dir.join(".lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    path,
                    holder: if holder.is_empty() {
                        "unknown process".into()
                    } else {
                        holder.to_owned()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        let now = jiff::Timestamp::now();
        write!(
            file,
            "pid {} running `{what}` since {now}",
            std::process::id()
        )
        .map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = ProfileLock::acquire(dir.path(), "snapshot").unwrap();
        let err = ProfileLock::acquire(dir.path(), "restore").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("running `snapshot`"), "{msg}");
        drop(first);
        ProfileLock::acquire(dir.path(), "restore").unwrap();
    }
}
