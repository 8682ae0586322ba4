//! `list`: the profile's snapshots with time, age, size, revision, keys and verified state.

use serde_json::json;
use talos_dr::Exit;
use talos_dr::snapshot::retention::human_age;
use talos_dr::snapshot::store::{self, Entry};
use talos_dr::snapshot::verify;

use super::{Ctx, human_bytes};

pub fn run(ctx: &Ctx, args: &crate::cli::ListArgs) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    let dir = profile.backup_dir();
    let entries = store::list(&dir)
        .map_err(|e| anyhow::anyhow!("cannot read the backup directory {}: {e}", dir.display()))?;
    let rows: Vec<Row> = entries.iter().map(|e| Row::new(e, args.verify)).collect();
    ctx.printer.text(&render(&dir, &rows));
    ctx.printer.json(&json!({
        "directory": dir,
        "snapshots": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    }));
    Ok(if rows.iter().any(|r| r.valid == Some(false)) {
        Exit::InvalidSnapshot
    } else {
        Exit::Success
    })
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
