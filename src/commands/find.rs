//! `find --namespace X`: which local snapshots hold objects of a namespace, newest first.

use serde_json::json;
use talos_dr::snapshot::store;
use talos_dr::snapshot::xray::{self, Filter, SummaryOptions};
use talos_dr::{Exit, UserError};

use super::inspect::{filter_json, identity, open};
use super::{Ctx, human_bytes};
use crate::cli::FindArgs;

struct Found {
    name: String,
    taken_at: jiff::Timestamp,
    result: Result<(i64, u64, u64), String>,
}

pub async fn run(ctx: &Ctx, args: &FindArgs) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    let dir = profile.backup_dir();
    let entries = store::list(&dir)
        .map_err(|e| UserError::failed(format!("cannot read {}: {e}", dir.display())))?;
    let id = identity(ctx, args.identity.as_deref());
    let filter = Filter {
        namespace: Some(args.namespace.clone()),
        resource: args.resource.clone(),
        name: args.name.clone(),
    };
    let mut found = Vec::new();
    for e in &entries {
        let path = e.path.display().to_string();
        let result = match open(ctx, &path, id.as_deref()).await {
            Ok(o) => {
                let s = xray::summarize(&o.contents, &filter, SummaryOptions::default());
                Ok((s.revision, s.objects, s.bytes))
            }
            // One unreadable snapshot does not hide what the others hold.
            Err(err) => Err(err.to_string().replace('\n', " ")),
        };
        found.push(Found {
            name: e.name.clone(),
            taken_at: e.taken_at,
            result,
        });
    }
    let what = match (&args.resource, &args.name) {
        (Some(r), Some(n)) => format!("{r} {n} in namespace {}", args.namespace),
        (Some(r), None) => format!("{r} in namespace {}", args.namespace),
        (None, Some(n)) => format!("objects named {n} in namespace {}", args.namespace),
        (None, None) => format!("objects in namespace {}", args.namespace),
    };
    let holding = found
        .iter()
        .filter(|f| matches!(f.result, Ok((_, n, _)) if n > 0))
        .count();
    let mut out = format!(
        "{what}: in {holding} of {} snapshots in {}\n",
        found.len(),
        dir.display()
    );
    if !found.is_empty() {
        let mut rows = vec![
            ["SNAPSHOT", "REVISION", "OBJECTS", "BYTES"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for f in &found {
            rows.push(match &f.result {
                Ok((rev, n, b)) => vec![
                    f.name.clone(),
                    rev.to_string(),
                    n.to_string(),
                    human_bytes(*b),
                ],
                Err(e) => vec![
                    f.name.clone(),
                    "-".into(),
                    "-".into(),
                    format!("unreadable: {e}"),
                ],
            });
        }
        out.push('\n');
        out.push_str(&talos_dr::table::render(&rows));
    }
    ctx.printer.text(&out);
    ctx.printer.json(&json!({
        "directory": dir,
        "filter": filter_json(&filter),
        "snapshots": found.iter().map(|f| match &f.result {
            Ok((rev, n, b)) => json!({
                "file": f.name, "taken_at": f.taken_at, "revision": rev,
                "objects": n, "bytes": b,
            }),
            Err(e) => json!({ "file": f.name, "taken_at": f.taken_at, "error": e }),
        }).collect::<Vec<_>>(),
    }));
    Ok(Exit::Success)
}
