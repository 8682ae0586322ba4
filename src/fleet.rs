//! Fleet runs: one command over several profiles (`--all-profiles`, `-p a,b,c`).
//!
//! Which profiles a run covers, how their exit codes combine, and a bounded parallel map that
//! keeps going when one profile fails. Each profile's work keeps its own lock and output; the
//! binary renders the per-profile results and one summary.

use std::future::Future;
use std::path::Path;

use crate::Exit;
use crate::profile::{self, PROFILE_FILE};

/// The profiles a fleet run covers, in the order they run and are reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every profile directory under the profiles' home.
    All,
    /// The names given with `-p a,b,c`.
    Named(Vec<String>),
}

/// Why a selection cannot be used; a configuration error for the caller (exit 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("{0}")]
    Name(#[from] profile::InvalidName),
    #[error("profile {0:?} is listed twice in -p")]
    Duplicate(String),
    #[error("--all-profiles and --config-dir exclude each other: a fleet run uses named profiles")]
    ConfigDir,
    #[error("--all-profiles and -p exclude each other")]
    Both,
    #[error("no profiles under {0}: every directory there that holds a profile.toml is one")]
    Empty(String),
    #[error("cannot read the profiles' home {path}: {message}")]
    Home { path: String, message: String },
}

/// Reads the fleet selection from the flags: `None` when the command is about one profile.
/// `-p a,b,c` (two or more names, comma-separated) and `--all-profiles` select a fleet.
pub fn select(
    profile: Option<&str>,
    all_profiles: bool,
    config_dir: bool,
) -> Result<Option<Selection>, SelectionError> {
    let list = profile.filter(|p| p.contains(','));
    if all_profiles {
        if config_dir {
            return Err(SelectionError::ConfigDir);
        }
        if profile.is_some() {
            return Err(SelectionError::Both);
        }
        return Ok(Some(Selection::All));
    }
    let Some(list) = list else {
        return Ok(None);
    };
    if config_dir {
        return Err(SelectionError::ConfigDir);
    }
    let mut names: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        profile::validate_profile_name(name)?;
        if names.iter().any(|n| n == name) {
            return Err(SelectionError::Duplicate(name.to_owned()));
        }
        names.push(name.to_owned());
    }
    Ok(Some(Selection::Named(names)))
}

/// The profile names a selection stands for. `All` lists the directories under `home` that hold
/// a `profile.toml`, sorted by name; named profiles are returned as given (a missing one fails
/// in its own run, not here, so the others still run).
pub fn resolve(selection: &Selection, home: &Path) -> Result<Vec<String>, SelectionError> {
    match selection {
        Selection::Named(names) => Ok(names.clone()),
        Selection::All => {
            let entries = match std::fs::read_dir(home) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(SelectionError::Empty(home.display().to_string()));
                }
                Err(e) => {
                    return Err(SelectionError::Home {
                        path: home.display().to_string(),
                        message: e.to_string(),
                    });
                }
            };
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .filter(|e| e.path().join(PROFILE_FILE).is_file())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| profile::validate_profile_name(n).is_ok())
                .collect();
            names.sort();
            if names.is_empty() {
                return Err(SelectionError::Empty(home.display().to_string()));
            }
            Ok(names)
        }
    }
}

/// How bad an exit code is, for combining a fleet's results: interrupted (130) > failed (1) >
/// precondition (4) > invalid snapshot (3) > usage/configuration (2) > declined (5) > success
/// (0). A failure means something broke during the run; a precondition means a backup could not
/// even start (an unhealthy cluster); an invalid snapshot is bad data found; a configuration
/// error is the user's to fix and changes nothing; a declined confirmation is a choice.
pub fn severity(exit: Exit) -> u8 {
    match exit {
        Exit::Success => 0,
        Exit::Declined => 1,
        Exit::Usage => 2,
        Exit::InvalidSnapshot => 3,
        Exit::Precondition => 4,
        Exit::Failed => 5,
        Exit::Interrupted => 6,
    }
}

/// The worst of several exit codes (see [`severity`]); success for none.
pub fn worst(exits: impl IntoIterator<Item = Exit>) -> Exit {
    exits
        .into_iter()
        .max_by_key(|e| severity(*e))
        .unwrap_or(Exit::Success)
}

/// Runs `f` on every item with at most `jobs` at once, each on its own task (so one profile's
/// CPU work does not hold up another's waits), and returns the results in the items' order.
/// A task that panics yields `on_panic(item)`: one profile's bug never loses the others.
pub async fn run_bounded<T, R, F, Fut>(
    items: Vec<T>,
    jobs: usize,
    f: F,
    on_panic: impl Fn(&T) -> R,
) -> Vec<R>
where
    T: Clone + Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
{
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut handles = Vec::with_capacity(items.len());
    for item in &items {
        let permits = permits.clone();
        let fut = f(item.clone());
        handles.push(tokio::spawn(async move {
            // The semaphore is never closed, so acquiring cannot fail.
            let _permit = permits.acquire_owned().await;
            fut.await
        }));
    }
    let mut out = Vec::with_capacity(items.len());
    for (item, h) in items.iter().zip(handles) {
        out.push(h.await.unwrap_or_else(|_| on_panic(item)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn selection_from_flags() {
        assert_eq!(select(Some("lab"), false, false), Ok(None));
        assert_eq!(select(None, false, true), Ok(None));
        assert_eq!(select(None, true, false), Ok(Some(Selection::All)));
        assert_eq!(
            select(Some("a, b,c"), false, false),
            Ok(Some(Selection::Named(vec![
                "a".into(),
                "b".into(),
                "c".into()
            ])))
        );
        assert_eq!(
            select(Some("a,a"), false, false),
            Err(SelectionError::Duplicate("a".into()))
        );
        assert!(matches!(
            select(Some("a,../x"), false, false),
            Err(SelectionError::Name(_))
        ));
        assert_eq!(select(None, true, true), Err(SelectionError::ConfigDir));
        assert_eq!(select(Some("a"), true, false), Err(SelectionError::Both));
        assert_eq!(
            select(Some("a,b"), false, true),
            Err(SelectionError::ConfigDir)
        );
    }

    #[test]
    fn all_profiles_are_the_directories_with_a_profile() {
        let home = tempfile::tempdir().unwrap();
        for name in ["prod", "lab", "empty", ".hidden"] {
            std::fs::create_dir(home.path().join(name)).unwrap();
            if name != "empty" {
                std::fs::write(home.path().join(name).join(PROFILE_FILE), "").unwrap();
            }
        }
        std::fs::write(home.path().join("stray.toml"), "").unwrap();
        assert_eq!(
            resolve(&Selection::All, home.path()).unwrap(),
            vec!["lab".to_owned(), "prod".to_owned()]
        );
        let none = tempfile::tempdir().unwrap();
        assert!(matches!(
            resolve(&Selection::All, none.path()),
            Err(SelectionError::Empty(_))
        ));
        assert!(matches!(
            resolve(&Selection::All, &none.path().join("missing")),
            Err(SelectionError::Empty(_))
        ));
    }

    #[test]
    fn worst_exit_follows_the_documented_order() {
        use Exit::*;
        let order = [
            Success,
            Declined,
            Usage,
            InvalidSnapshot,
            Precondition,
            Failed,
            Interrupted,
        ];
        for (i, a) in order.iter().enumerate() {
            for b in &order[..i] {
                assert_eq!(worst([*a, *b]), *a);
                assert_eq!(worst([*b, *a, Success]), *a);
            }
        }
        assert_eq!(worst([]), Success);
        assert_eq!(worst([Usage, Precondition, Usage]).code(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bounded_keeps_order_bound_and_survives_a_panic() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let items: Vec<u64> = (0..6).collect();
        let out = run_bounded(
            items,
            2,
            |i| {
                let running = running.clone();
                let peak = peak.clone();
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Later items finish first: the order of results must not follow that.
                    tokio::time::sleep(Duration::from_millis(60 - 10 * i)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    assert!(i != 3, "item 3 fails");
                    i * 10
                }
            },
            |i| 1000 + i,
        )
        .await;
        assert_eq!(out, vec![0, 10, 20, 1003, 40, 50]);
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }
}
