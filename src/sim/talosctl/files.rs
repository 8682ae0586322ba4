//! `talosctl cp` and `talosctl ls` on a node's `/var/lib/etcd` (`reference/talos.md` §13.2,
//! §13.4): the raw-copy fallback when `etcd snapshot` cannot work, and the check that a node
//! waiting for bootstrap really has an empty data directory.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Ctx, Node, db_and_trailer, node_data};

const DB: &str = "/var/lib/etcd/member/snap/db";
/// etcd's uid/gid on Talos (`constants.EtcdUserID`).
const ETCD_UID: u64 = 60;

/// What the node's filesystem holds at `path` (only `/var/lib/etcd` and below are modelled):
/// the directory's entries, or `None` for a regular file.
enum Entry {
    Dir(Vec<&'static str>),
    File,
}

/// `lstat PATH: no such file or directory`, as machined's walker reports it.
fn lstat_error(path: &str) -> String {
    format!("rpc error: code = Unknown desc = lstat {path}: no such file or directory")
}

/// Looks `path` up on `node`. `Err` is the node's error; a path outside the model is a
/// simulator error (`Ok(Err)`), so a test notices it.
fn lookup(node: &Node, path: &str) -> Result<Result<Entry, String>, String> {
    let path = path.trim_end_matches('/');
    if !path.starts_with("/var/lib/etcd") {
        return Err(format!(
            "simulator: only paths under /var/lib/etcd are simulated, got {path:?}"
        ));
    }
    // EPHEMERAL (with /var/lib/etcd on it) is unmounted while the node reboots; workers have
    // no /var/lib/etcd at all.
    let mounted = node.is_control_plane() && node.etcd.state != "Stopping";
    let data = mounted && !node.etcd.data_empty;
    let entry = match path {
        "/var/lib/etcd" if mounted => Some(if data {
            Entry::Dir(vec![".", "member"])
        } else {
            Entry::Dir(vec!["."])
        }),
        "/var/lib/etcd/member" if data => Some(Entry::Dir(vec![".", "snap", "wal"])),
        "/var/lib/etcd/member/snap" if data => Some(Entry::Dir(vec![".", "db"])),
        "/var/lib/etcd/member/wal" if data => Some(Entry::Dir(vec![
            ".",
            "0000000000000000-0000000000000000.wal",
        ])),
        DB if data => Some(Entry::File),
        "/var/lib/etcd"
        | "/var/lib/etcd/member"
        | "/var/lib/etcd/member/snap"
        | "/var/lib/etcd/member/wal"
        | DB => None,
        other => {
            return Err(format!(
                "simulator: {other:?} is not simulated (only /var/lib/etcd, member, member/snap, member/wal and {DB})"
            ));
        }
    };
    Ok(entry.ok_or_else(|| lstat_error(path)))
}

/// The raw bbolt file etcd keeps: the node's data without the snapshot's sha256 trailer.
/// Damaged data comes out damaged: the root page of the bucket tree gets a page type bbolt
/// does not have (what etcd's "invalid page type" panic means).
fn raw_db(ctx: &Ctx, node: &Node) -> Result<Vec<u8>, String> {
    let (mut db, _) = db_and_trailer(node_data(ctx, node)?);
    if node.etcd.data_corrupt {
        damage_root_pages(&mut db);
    }
    Ok(db)
}

/// Both meta pages name a root page (`meta.root.root` at byte 32 of the page; the page size at
/// byte 24); each root page's `flags` (byte 8 of its header) becomes invalid.
fn damage_root_pages(db: &mut [u8]) {
    let u32_at = |db: &[u8], at: usize| {
        db.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let u64_at = |db: &[u8], at: usize| {
        db.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let Some(page_size) = u32_at(db, 24).map(|p| p as usize).filter(|p| *p >= 512) else {
        return;
    };
    for meta in [0, page_size] {
        let root = u64_at(db, meta + 32).and_then(|r| usize::try_from(r).ok());
        if let Some(at) = root.and_then(|r| r.checked_mul(page_size)).map(|o| o + 8)
            && at + 2 <= db.len()
        {
            db[at] = 0xff;
            db[at + 1] = 0x7f;
        }
    }
}

/// `talosctl cp SRC -|DEST` (alias of `copy`).
pub(super) fn copy(ctx: &Ctx, args: &[&str], out: &mut dyn Write) -> Result<(), String> {
    let [src, dest] = args else {
        return Err(format!("accepts 2 arg(s), received {}", args.len()));
    };
    let node = match ctx.one_node("copy")? {
        Ok(n) => n,
        Err(u) if u.endpoint => return Err(format!("error copying: {}", u.error)),
        Err(u) => {
            // The stream opened at the endpoint; its first read fails.
            return Err(if *dest == "-" {
                u.error
            } else {
                prepare_dest(dest)?;
                format!("error initializing gzip: {}", u.error)
            });
        }
    };
    if src.trim_end_matches('/') != DB {
        // Directories would be tarred recursively; only the db file is simulated.
        lookup(node, src)?.map_err(|e| format!("error initializing gzip: {e}"))?;
        return Err(format!(
            "simulator: only `cp {DB} DEST` is simulated, got {src:?}"
        ));
    }
    let found = lookup(node, DB)?;
    if *dest == "-" {
        found?;
        let db = raw_db(ctx, node)?;
        return write_tar_gz(out, &db);
    }
    let local = prepare_dest(dest)?;
    found.map_err(|e| format!("error initializing gzip: {e}"))?;
    let db = raw_db(ctx, node)?;
    let path = local.join("db");
    let shown = path.display().to_string();
    // talosctl creates every extracted file with O_EXCL and the archived mode.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| {
            let cause = if e.kind() == std::io::ErrorKind::AlreadyExists {
                "file exists".to_owned()
            } else {
                e.to_string()
            };
            format!("error creating file {shown:?} mode -rw-------: open {shown}: {cause}")
        })?;
    f.write_all(&db)
        .map_err(|e| format!("error copying data to {shown:?}: {e}"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("error updating mode -rw------- for {shown:?}: {e}"))?;
    Ok(())
}

/// talosctl's handling of the local path: an existing non-directory is refused; a missing one
/// is created (before anything is read from the node).
fn prepare_dest(dest: &str) -> Result<PathBuf, String> {
    let local = clean(dest);
    match std::fs::metadata(&local) {
        Ok(m) if !m.is_dir() => Err(format!("local path {dest:?} should be a directory")),
        Ok(_) => Ok(local),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&local).map_err(|e| {
                format!(
                    "error creating local path {:?}: {e}",
                    local.display().to_string()
                )
            })?;
            Ok(local)
        }
        Err(e) => Err(format!("failed to stat local path: {e}")),
    }
}

/// Go's `filepath.Clean` for the simple paths a user types: drops `.` parts, repeated and
/// trailing slashes.
fn clean(path: &str) -> PathBuf {
    let p: PathBuf = Path::new(path)
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    if p.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        p
    }
}

/// The archive machined streams for a single file: one `db` entry, mode 0600, owned by etcd.
fn write_tar_gz(out: &mut dyn Write, db: &[u8]) -> Result<(), String> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(db.len() as u64);
    header.set_mode(0o600);
    header.set_uid(ETCD_UID);
    header.set_gid(ETCD_UID);
    header.set_mtime(u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0));
    header.set_entry_type(tar::EntryType::Regular);
    let bytes = tar
        .append_data(&mut header, "db", db)
        .and_then(|()| tar.into_inner())
        .and_then(|gz| gz.finish())
        .map_err(|e| format!("simulator: building the tar.gz: {e}"))?;
    out.write_all(&bytes)
        .map_err(|e| format!("error writing to stdout: {e}"))
}

/// `talosctl ls [PATH]` (alias of `list`), without flags.
pub(super) fn list(ctx: &Ctx, args: &[&str], out: &mut dyn Write) -> Result<(), String> {
    if let Some(flag) = args.iter().find(|a| a.starts_with('-')) {
        return Err(format!(
            "simulator: `ls {flag}` is not simulated (only `ls PATH`)"
        ));
    }
    let path = match args {
        [] => "/",
        [p] => p,
        _ => return Err(format!("accepts at most 1 arg(s), received {}", args.len())),
    };
    let reached = ctx.reach_all();
    if let Some(e) = &reached.endpoint_down
        && !ctx.modern()
    {
        // 1.9 opens one stream for all nodes; the wording is Talos's own.
        return Err(format!("error fetching logs: {e}"));
    }
    let mut rows: Vec<(String, &str)> = Vec::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    if let Some(e) = &reached.endpoint_down {
        failures.extend(ctx.nodes.iter().map(|n| (n.clone(), e.clone())));
    }
    for (address, result) in &reached.nodes {
        let node = match result {
            Ok(n) => n,
            Err(e) => {
                failures.push((address.clone(), e.clone()));
                continue;
            }
        };
        match lookup(node, path)? {
            Ok(Entry::Dir(names)) => rows.extend(names.into_iter().map(|n| (address.clone(), n))),
            Ok(Entry::File) => rows.push((address.clone(), base_name(path))),
            Err(e) => failures.push((address.clone(), e)),
        }
    }
    if ctx.modern() {
        // 1.14 asks each node on its own: one node prints bare names; several, a table.
        if ctx.nodes.len() == 1 {
            for (_, name) in &rows {
                let _ = writeln!(out, "{name}");
            }
        } else if !rows.is_empty() {
            let mut table = vec![vec!["NODE".to_owned(), "NAME".to_owned()]];
            table.extend(
                rows.iter()
                    .map(|(n, name)| vec![n.clone(), (*name).to_owned()]),
            );
            let _ = out.write_all(crate::table::render(&table).as_bytes());
        }
        return if failures.is_empty() {
            Ok(())
        } else {
            Err(failures
                .iter()
                .map(|(n, e)| super::from_node(n, e))
                .collect::<Vec<_>>()
                .join("\n"))
        };
    }
    // 1.9 always sends node metadata, so apid names the node even for one `-n`.
    let mut table = vec![vec!["NODE".to_owned(), "NAME".to_owned()]];
    table.extend(
        rows.iter()
            .map(|(n, name)| vec![n.clone(), (*name).to_owned()]),
    );
    let _ = out.write_all(crate::table::render(&table).as_bytes());
    if failures.is_empty() {
        return Ok(());
    }
    let count = if failures.len() == 1 {
        "1 error".to_owned()
    } else {
        format!("{} errors", failures.len())
    };
    let lines: Vec<String> = failures.iter().map(|(_, e)| format!(" {e}")).collect();
    Err(format!("{count} occurred:\n{}", lines.join("\n")))
}

fn base_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}
