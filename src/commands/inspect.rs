//! `inspect SNAPSHOT`: what a snapshot holds, per resource and namespace.
//!
//! Also home of [`open`], which `diff` and `find` share: a local file, an off-site URL or
//! `latest`, unpacked when compressed or encrypted, verified and read in one pass.

use std::path::{Path, PathBuf};

use serde_json::json;
use talos_dr::offsite::{OffsiteError, Target};
use talos_dr::pack::{self, Identities, Layer};
use talos_dr::snapshot::store;
use talos_dr::snapshot::xray::{self, Contents, Filter, Group, Summary, SummaryOptions};
use talos_dr::{Exit, UserError};

use super::{Ctx, human_bytes};
use crate::cli::{InspectArgs, ObjectFilterArgs};

/// A snapshot read for inspection. Temporary files (downloads, unpacked copies) live as long
/// as this does.
pub struct Opened {
    /// What the user named (the path, URL, or the file `latest` stood for).
    pub label: String,
    pub layers: Vec<Layer>,
    pub contents: Contents,
    _tmp: Option<tempfile::TempDir>,
}

impl ObjectFilterArgs {
    pub fn to_filter(&self) -> Filter {
        Filter {
            namespace: self
                .namespace
                .as_ref()
                .map(|n| if n == "-" { String::new() } else { n.clone() }),
            resource: self.resource.clone(),
            name: self.name.clone(),
        }
    }
}

/// The identity for encrypted snapshots: the flag, else the profile's (when there is one).
pub fn identity(ctx: &Ctx, flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf)
        .or_else(|| ctx.profile().ok().and_then(|p| p.identity_file()))
}

/// Resolves SNAPSHOT (file, `s3://`/`file://` URL, or `latest`), unpacks it if needed, and
/// reads it. An invalid snapshot is exit 3 with verify's problems; a missing one is exit 2.
pub async fn open(ctx: &Ctx, arg: &str, identity: Option<&Path>) -> anyhow::Result<Opened> {
    let tmp = || {
        tempfile::Builder::new()
            .prefix("talos-dr-inspect-")
            .tempdir()
            .map_err(|e| UserError::failed(format!("cannot create a temporary directory: {e}")))
    };
    let mut dir: Option<tempfile::TempDir> = None;
    let (label, path) = if arg == "latest" {
        let profile = ctx.profile()?;
        let backups = profile.backup_dir();
        let newest = store::list(&backups)
            .map_err(|e| UserError::failed(format!("cannot read {}: {e}", backups.display())))?
            .into_iter()
            .next()
            .ok_or_else(|| {
                UserError::usage(format!(
                    "`latest`: there are no snapshots in {}",
                    backups.display()
                ))
                .hint("take one with `talos-dr snapshot`")
            })?;
        (newest.path.display().to_string(), newest.path)
    } else if arg.starts_with("s3://") || arg.starts_with("file://") {
        let profile = ctx.profile().ok();
        let (target, name) = Target::for_object_url(
            arg,
            profile.as_ref().and_then(|p| p.file.offsite.as_ref()),
            profile
                .as_ref()
                .and_then(|p| p.offsite_credentials_file())
                .as_deref(),
        )
        .map_err(|e| UserError::usage(e.to_string()))?;
        let d = tmp()?;
        let dst = d.path().join(&name);
        target
            .download(&name, &dst, ctx.reporter.as_ref())
            .await
            .map_err(|e| match e {
                OffsiteError::Store {
                    source: object_store::Error::NotFound { .. },
                    ..
                } => UserError::usage(format!("{arg} does not exist"))
                    .hint("list the off-site copies with `talos-dr list --remote`"),
                OffsiteError::Check { .. } => UserError::new(Exit::InvalidSnapshot, e.to_string()),
                other => UserError::failed(other.to_string()),
            })?;
        dir = Some(d);
        (arg.to_owned(), dst)
    } else {
        let path = PathBuf::from(arg);
        if !path.is_file() {
            return Err(UserError::usage(format!("{arg} does not exist"))
                .hint("name a snapshot file, an s3:// or file:// URL, or `latest`")
                .into());
        }
        (arg.to_owned(), path)
    };

    let packed = pack::sniff_file(&path)
        .map_err(|e| UserError::failed(format!("cannot read {}: {e}", path.display())))?
        .is_some();
    let (plain, layers) = if packed {
        let ids = identity
            .map(Identities::load)
            .transpose()
            .map_err(|e| UserError::usage(format!("{label}: {e}")))?;
        let d = match &dir {
            Some(d) => d.path().to_path_buf(),
            None => {
                let d = tmp()?;
                let p = d.path().to_path_buf();
                dir = Some(d);
                p
            }
        };
        let out = d.join("snapshot");
        let layers = pack::unpack_file(&path, &out, ids.as_ref()).map_err(|e| match e {
            pack::PackError::NoIdentity
            | pack::PackError::WrongIdentity { .. }
            | pack::PackError::Identity { .. } => UserError::usage(format!("{label}: {e}")),
            other => UserError::new(
                Exit::InvalidSnapshot,
                format!("{label}: cannot unpack: {other}"),
            ),
        })?;
        (out, layers)
    } else {
        (path, Vec::new())
    };

    let (report, contents) = xray::read(&plain)
        .map_err(|e| UserError::failed(format!("cannot read {}: {e}", plain.display())))?;
    let Some(contents) = contents else {
        return Err(UserError::new(
            Exit::InvalidSnapshot,
            format!(
                "{label} is not a valid snapshot:\n  {}",
                report.problems.join("\n  ")
            ),
        )
        .hint(format!("`talos-dr verify {arg}` shows the details"))
        .into());
    };
    Ok(Opened {
        label,
        layers,
        contents,
        _tmp: dir,
    })
}

pub async fn run(ctx: &Ctx, args: &InspectArgs) -> anyhow::Result<Exit> {
    let id = identity(ctx, args.identity.as_deref());
    let opened = open(ctx, &args.snapshot, id.as_deref()).await?;
    let filter = args.filter.to_filter();
    let summary = xray::summarize(
        &opened.contents,
        &filter,
        SummaryOptions {
            by_namespace: args.by_namespace,
            names: args.names,
            largest: args.largest,
        },
    );
    ctx.printer.text(&render(&opened, &summary));
    ctx.printer.json(&json!({
        "snapshot": opened.label,
        "layers": opened.layers,
        "filter": filter_json(&filter),
        "revision": summary.revision,
        "compact_revision": summary.compact_revision,
        "objects": summary.objects,
        "bytes": summary.bytes,
        "namespaces": summary.namespaces,
        "database": {
            "size": summary.db_size,
            "used": summary.db_used,
            "free": summary.db_free,
        },
        "resources": summary.groups,
        "values": summary.values,
        "largest": summary.largest,
    }));
    Ok(Exit::Success)
}

pub fn filter_json(f: &Filter) -> serde_json::Value {
    json!({ "namespace": f.namespace, "resource": f.resource, "name": f.name })
}

/// Namespace cell: `-` for cluster-scoped, `(all)` for a row that sums every namespace.
fn ns_cell(g: &Group) -> String {
    match &g.namespace {
        Some(n) => n.clone(),
        None if g.cluster_scoped => "-".to_owned(),
        None => "(all)".to_owned(),
    }
}

fn render(o: &Opened, s: &Summary) -> String {
    let mut out = String::new();
    let compacted = s
        .compact_revision
        .map(|r| format!(" (compacted at {r})"))
        .unwrap_or_default();
    let unpacked = if o.layers.is_empty() {
        String::new()
    } else {
        format!(" (unpacked {})", pack::describe(&o.layers))
    };
    out.push_str(&format!(
        "{}{unpacked}\nrevision {}{compacted}: {} objects in {} namespaces, {} of values\n",
        o.label,
        s.revision,
        s.objects,
        s.namespaces,
        human_bytes(s.bytes)
    ));
    out.push_str(&format!(
        "database {}: {} in use, {} in free pages (what a defrag would give back)\n\n",
        human_bytes(s.db_size),
        human_bytes(s.db_used),
        human_bytes(s.db_free)
    ));
    if s.groups.is_empty() {
        out.push_str("no objects match\n");
        return out;
    }
    let mut rows = vec![vec![
        "RESOURCE".to_owned(),
        "NAMESPACE".to_owned(),
        "OBJECTS".to_owned(),
        "BYTES".to_owned(),
    ]];
    for g in &s.groups {
        rows.push(vec![
            g.resource.clone(),
            ns_cell(g),
            g.objects.to_string(),
            human_bytes(g.bytes),
        ]);
    }
    rows.push(vec![
        "TOTAL".to_owned(),
        String::new(),
        s.objects.to_string(),
        human_bytes(s.bytes),
    ]);
    out.push_str(&talos_dr::table::render(&rows));
    if s.groups.iter().any(|g| g.names.is_some()) {
        for g in &s.groups {
            let Some(names) = &g.names else { continue };
            out.push_str(&format!("\n{} in {}:\n", g.resource, ns_cell(g)));
            for n in names {
                out.push_str(&format!("  {n}\n"));
            }
        }
    }
    if !s.values.is_empty() {
        let mut rows = vec![vec![
            "VALUES".to_owned(),
            "OBJECTS".to_owned(),
            "BYTES".to_owned(),
        ]];
        for v in &s.values {
            rows.push(vec![
                v.class.describe(),
                v.objects.to_string(),
                human_bytes(v.bytes),
            ]);
        }
        out.push('\n');
        out.push_str(&talos_dr::table::render(&rows));
    }
    if !s.largest.is_empty() {
        let mut rows = vec![vec![
            "LARGEST".to_owned(),
            "BYTES".to_owned(),
            "VALUE".to_owned(),
        ]];
        for l in &s.largest {
            rows.push(vec![l.key.clone(), human_bytes(l.bytes), l.value.clone()]);
        }
        out.push('\n');
        out.push_str(&talos_dr::table::render(&rows));
    }
    out
}
