//! `diff A B`: objects added, removed and changed between two snapshots.

use serde_json::json;
use talos_dr::Exit;
use talos_dr::snapshot::xray::{self, DiffGroup};

use super::Ctx;
use super::inspect::{filter_json, identity, open};
use crate::cli::DiffArgs;

pub async fn run(ctx: &Ctx, args: &DiffArgs) -> anyhow::Result<Exit> {
    let id = identity(ctx, args.identity.as_deref());
    let a = open(ctx, &args.a, id.as_deref()).await?;
    let b = open(ctx, &args.b, id.as_deref()).await?;
    let filter = args.filter.to_filter();
    let groups = xray::diff(&a.contents, &b.contents, &filter, args.names);
    let total = |f: fn(&DiffGroup) -> u64| groups.iter().map(f).sum::<u64>();
    let (added, removed, changed) = (
        total(|g| g.added),
        total(|g| g.removed),
        total(|g| g.changed),
    );

    let mut out = format!(
        "A {} (revision {})\nB {} (revision {})\n{added} added, {removed} removed, {changed} changed\n",
        a.label, a.contents.revision, b.label, b.contents.revision
    );
    if !groups.is_empty() {
        let mut rows = vec![
            ["RESOURCE", "NAMESPACE", "ADDED", "REMOVED", "CHANGED"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for g in &groups {
            rows.push(vec![
                g.resource.clone(),
                g.namespace.clone().unwrap_or_else(|| "-".to_owned()),
                g.added.to_string(),
                g.removed.to_string(),
                g.changed.to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&talos_dr::table::render(&rows));
        if args.names {
            for g in &groups {
                out.push_str(&format!(
                    "\n{} in {}:\n",
                    g.resource,
                    g.namespace.as_deref().unwrap_or("-")
                ));
                for (sign, names) in [
                    ('+', &g.added_names),
                    ('-', &g.removed_names),
                    ('~', &g.changed_names),
                ] {
                    for n in names.iter().flatten() {
                        out.push_str(&format!("  {sign} {n}\n"));
                    }
                }
            }
        }
    }
    ctx.printer.text(&out);
    ctx.printer.json(&json!({
        "a": { "snapshot": a.label, "layers": a.layers, "revision": a.contents.revision },
        "b": { "snapshot": b.label, "layers": b.layers, "revision": b.contents.revision },
        "filter": filter_json(&filter),
        "added": added,
        "removed": removed,
        "changed": changed,
        "groups": groups,
    }));
    Ok(Exit::Success)
}
