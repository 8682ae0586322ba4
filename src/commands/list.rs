//! `list`: the profile's snapshots with time, age, size, revision, keys and verified state.

use serde_json::json;
use talos_dr::Exit;
use talos_dr::snapshot::retention::human_age;
use talos_dr::snapshot::store::{self, Entry};
use talos_dr::snapshot::verify;
use talos_dr::snapshot::xray::{self, ObjectSummary};

use super::{Ctx, human_bytes};

pub fn run(ctx: &Ctx, args: &crate::cli::ListArgs) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    let dir = profile.backup_dir();
    let entries = store::list(&dir)
        .map_err(|e| anyhow::anyhow!("cannot read the backup directory {}: {e}", dir.display()))?;
    let rows: Vec<Row> = entries.iter().map(|e| Row::new(e, args.verify)).collect();
    let objects: Option<Vec<Objects>> = args.objects.then(|| {
        let identity = profile.identity_file();
        entries
            .iter()
            .map(|e| objects_of(e, identity.as_deref()))
            .collect()
    });
    let mut text = render(&dir, &rows);
    if let Some(objects) = &objects
        && !rows.is_empty()
    {
        text = add_objects_column(&text, objects);
    }
    ctx.printer.text(&text);
    let mut snapshots: Vec<serde_json::Value> = rows.iter().map(Row::to_json).collect();
    if let Some(objects) = &objects {
        for (s, o) in snapshots.iter_mut().zip(objects) {
            s["objects"] = match &o.summary {
                Ok(sum) => json!({ "from": o.source, "objects": sum.objects,
                    "namespaces": sum.namespaces, "bytes": sum.bytes }),
                Err(e) => json!({ "from": o.source, "error": e }),
            };
        }
    }
    ctx.printer.json(&json!({
        "directory": dir,
        "snapshots": snapshots,
    }));
    Ok(if rows.iter().any(|r| r.valid == Some(false)) {
        Exit::InvalidSnapshot
    } else {
        Exit::Success
    })
}

/// What one snapshot holds, for `--objects`.
struct Objects {
    summary: Result<ObjectSummary, String>,
    /// `sidecar` (no second pass) or `read now`.
    source: &'static str,
}

fn objects_of(e: &Entry, identity: Option<&std::path::Path>) -> Objects {
    if let Some(sum) = e
        .sidecar
        .as_ref()
        .filter(|s| s.stored_size() == e.size)
        .and_then(|s| s.objects)
    {
        return Objects {
            summary: Ok(sum),
            source: "sidecar",
        };
    }
    Objects {
        summary: read_objects(&e.path, identity),
        source: "read now",
    }
}

/// Reads a snapshot's contents, unpacking a packed one into a private temporary directory.
fn read_objects(
    path: &std::path::Path,
    identity: Option<&std::path::Path>,
) -> Result<ObjectSummary, String> {
    let packed = talos_dr::pack::sniff_file(path)
        .map_err(|e| e.to_string())?
        .is_some();
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let plain = if packed {
        let ids = identity
            .map(talos_dr::pack::Identities::load)
            .transpose()
            .map_err(|e| e.to_string())?;
        let out = tmp.path().join("snapshot");
        talos_dr::pack::unpack_file(path, &out, ids.as_ref()).map_err(|e| e.to_string())?;
        out
    } else {
        path.to_path_buf()
    };
    match xray::read(&plain).map_err(|e| e.to_string())? {
        (_, Some(c)) => Ok(c.totals()),
        (report, None) => Err(format!("invalid: {}", report.problems.join("; "))),
    }
}

/// Appends OBJECTS to the table `render` made (header line first, then one line per row).
fn add_objects_column(text: &str, objects: &[Objects]) -> String {
    let mut lines = text.lines();
    let mut out = String::new();
    if let Some(dir) = lines.next() {
        out.push_str(dir);
        out.push('\n');
    }
    let table: Vec<&str> = lines.collect();
    let width = table.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    for (i, line) in table.iter().enumerate() {
        let cell = match i.checked_sub(1).map(|j| &objects[j].summary) {
            None => "OBJECTS".to_owned(),
            Some(Ok(s)) => format!("{} in {} namespaces", s.objects, s.namespaces),
            Some(Err(e)) => e.clone(),
        };
        let pad = width + 3 - line.chars().count();
        out.push_str(&format!("{line}{}{cell}\n", " ".repeat(pad)));
    }
    out
}

pub struct Row<'a> {
    pub entry: &'a Entry,
    pub valid: Option<bool>,
    pub revision: Option<i64>,
    pub keys: Option<u64>,
    pub source: &'static str,
}

impl<'a> Row<'a> {
    pub fn new(entry: &'a Entry, reverify: bool) -> Self {
        // Packed files need the identity to be re-verified; their sidecar speaks for them.
        let packed = !talos_dr::pack::split_name(&entry.name).1.is_empty();
        if reverify && !packed {
            let r = verify::verify_file(&entry.path).ok();
            return Self {
                entry,
                valid: Some(r.as_ref().is_some_and(|r| r.valid)),
                revision: r.as_ref().and_then(|r| r.status.map(|s| s.revision)),
                keys: r.as_ref().and_then(|r| r.status.map(|s| s.total_key)),
                source: "verified now",
            };
        }
        match &entry.sidecar {
            // A sidecar describes the file only if the size still matches.
            Some(s) if s.stored_size() == entry.size => Self {
                entry,
                valid: Some(s.valid),
                revision: s.status.map(|x| x.revision),
                keys: s.status.map(|x| x.total_key),
                source: "sidecar",
            },
            _ => Self {
                entry,
                valid: None,
                revision: None,
                keys: None,
                source: "none",
            },
        }
    }

    fn verified(&self) -> &'static str {
        match self.valid {
            Some(true) => "ok",
            Some(false) => "INVALID",
            None => "unknown",
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "file": self.entry.name,
            "path": self.entry.path,
            "taken_at": self.entry.taken_at,
            "age_seconds": jiff::Timestamp::now().duration_since(self.entry.taken_at).as_secs(),
            "size": self.entry.size,
            "revision": self.revision,
            "total_key": self.keys,
            "valid": self.valid,
            "verified_from": self.source,
            "node": self.entry.sidecar.as_ref().and_then(|s| s.node.clone()),
        })
    }
}

fn render(dir: &std::path::Path, rows: &[Row]) -> String {
    if rows.is_empty() {
        return format!(
            "no snapshots in {}\nhint: take one with `talos-dr snapshot`\n",
            dir.display()
        );
    }
    let now = jiff::Timestamp::now();
    let mut table = vec![
        [
            "TIME (UTC)",
            "AGE",
            "SIZE",
            "REVISION",
            "KEYS",
            "VERIFIED",
            "FILE",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for r in rows {
        table.push(vec![
            r.entry.taken_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
            human_age(now.duration_since(r.entry.taken_at)),
            human_bytes(r.entry.size),
            r.revision.map_or("-".into(), |v| v.to_string()),
            r.keys.map_or("-".into(), |v| v.to_string()),
            r.verified().to_owned(),
            r.entry.name.clone(),
        ]);
    }
    format!("{}\n{}", dir.display(), talos_dr::table::render(&table))
}
