//! `list --remote`: the off-site copies at the profile's `[offsite]` target.

use serde_json::json;
use talos_dr::offsite::{Origin, RemoteEntry, Target};
use talos_dr::pack;
use talos_dr::snapshot::retention::human_age;
use talos_dr::{Exit, UserError};

use super::{Ctx, human_bytes};

pub async fn list(ctx: &Ctx) -> anyhow::Result<Exit> {
    let profile = ctx.profile()?;
    let target = Target::from_profile(&profile)
        .map_err(|e| UserError::usage(format!("[offsite] in profile {}: {e}", profile.name())))?
        .ok_or_else(|| {
            UserError::usage(format!(
                "profile {} has no [offsite] section",
                profile.name()
            ))
            .hint("add [offsite] url = \"s3://bucket/prefix\" (or file:///path) to profile.toml")
        })?;
    let entries = target
        .list()
        .await
        .map_err(|e| UserError::failed(format!("cannot list the off-site copies: {e}")))?;
    ctx.printer.text(&render(target.url(), &entries));
    ctx.printer.json(&json!({
        "url": target.url(),
        "snapshots": entries.iter().map(to_json).collect::<Vec<_>>(),
    }));
    Ok(Exit::Success)
}

fn to_json(e: &RemoteEntry) -> serde_json::Value {
    let m = e.manifest.as_ref();
    json!({
        "name": e.name,
        "url": e.url,
        "taken_at": e.taken_at,
        "size": e.size,
        "layers": e.layers,
        "confirmed": e.is_good(),
        "origin": e.origin,
        "made_by_talos_dr": e.origin == Origin::TalosDr,
        "sha256": m.map(|m| &m.sha256),
        "snapshot_sha256": m.map(|m| &m.snapshot.sha256),
        "revision": m.and_then(|m| m.snapshot.status.map(|s| s.revision)),
        "total_key": m.and_then(|m| m.snapshot.status.map(|s| s.total_key)),
        "node": m.and_then(|m| m.snapshot.node.clone()),
    })
}

fn render(url: &str, entries: &[RemoteEntry]) -> String {
    if entries.is_empty() {
        return format!("no snapshots at {url}\n");
    }
    let now = jiff::Timestamp::now();
    let mut table = vec![
        [
            "TIME (UTC)",
            "AGE",
            "SIZE",
            "LAYERS",
            "REVISION",
            "KEYS",
            "CONFIRMED",
            "URL",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for e in entries {
        let status = e.manifest.as_ref().and_then(|m| m.snapshot.status);
        table.push(vec![
            e.taken_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
            human_age(now.duration_since(e.taken_at)),
            human_bytes(e.size),
            if e.layers.is_empty() {
                "-".into()
            } else {
                pack::describe(&e.layers)
            },
            status.map_or("-".into(), |s| s.revision.to_string()),
            status.map_or("-".into(), |s| s.total_key.to_string()),
            match (e.origin, e.is_good()) {
                // Another tool's copy: restorable, but never confirmed or pruned here.
                (Origin::TalosBackup, _) => "not made by talos-dr",
                (Origin::TalosDr, true) => "yes",
                (Origin::TalosDr, false) => "NO",
            }
            .into(),
            e.url.clone(),
        ]);
    }
    let mut text = format!("{url}\n{}", talos_dr::table::render(&table));
    if entries.iter().any(|e| e.origin == Origin::TalosBackup) {
        text.push_str(
            "copies \"not made by talos-dr\" (talos-backup's <cluster>-<time>.snap…) can be restored with \
             `restore --snapshot URL`; retention never deletes them\n",
        );
    }
    text
}
