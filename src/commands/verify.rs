//! `verify FILE…`: integrity and etcd status of snapshot files.
//!
//! Compressed (`.zst`) and age-encrypted (`.age`) files are unpacked to a private temporary file
//! first (with `--identity` or the profile's `backup.identity_file`), and the layers are named.

use std::path::{Path, PathBuf};

use serde_json::json;
use talos_dr::pack::{self, Identities, Layer};
use talos_dr::snapshot::verify::{self, Report, Trailer};
use talos_dr::{Exit, UserError};

use super::{Ctx, human_bytes};

pub fn run(ctx: &Ctx, args: &crate::cli::VerifyArgs) -> anyhow::Result<Exit> {
    // The profile is optional here: verify also works on files outside any profile.
    let identity: Option<PathBuf> = args
        .identity
        .clone()
        .or_else(|| ctx.profile().ok().and_then(|p| p.identity_file()));
    let mut identities: Option<Identities> = None;
    let mut results: Vec<(Report, Vec<Layer>)> = Vec::new();
    for path in &args.files {
        let packed = pack::sniff_file(path).ok().flatten().is_some();
        let result = if packed {
            // An identity file that cannot be used is a configuration mistake (exit 2, as in
            // `restore`), not a property of the snapshot; it is loaded once, when first needed.
            if let (Some(p), None) = (identity.as_deref(), &identities) {
                identities =
                    Some(Identities::load(p).map_err(|e| UserError::usage(e.to_string()))?);
            }
            verify_packed(path, identities.as_ref())
        } else {
            (verify_plain(path), Vec::new())
        };
        results.push(result);
    }
    let reports: Vec<&Report> = results.iter().map(|(r, _)| r).collect();
    let mut text = String::new();
    for (r, layers) in &results {
        text.push_str(&render(r));
        if !layers.is_empty() {
            text.push_str(&format!("  unpacked: {}\n", pack::describe(layers)));
        }
    }
    ctx.printer.text(&text);
    let files: Vec<serde_json::Value> = results
        .iter()
        .map(|(r, layers)| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["layers"] = json!(layers);
            v
        })
        .collect();
    ctx.printer.json(&json!({ "files": files }));
    Ok(if reports.iter().all(|r| r.valid) {
        Exit::Success
    } else {
        Exit::InvalidSnapshot
    })
}

fn verify_plain(path: &Path) -> Report {
    verify::verify_file(path).unwrap_or_else(|e| failed(path, format!("cannot read the file: {e}")))
}

fn failed(path: &Path, problem: String) -> Report {
    Report {
        path: path.to_path_buf(),
        valid: false,
        size: 0,
        trailer: Trailer::Missing,
        status: None,
        problems: vec![problem],
        notes: Vec::new(),
        sha256: String::new(),
    }
}

/// Unpacks into a private temp directory, verifies the plain snapshot, and reports it under the
/// packed file's path.
fn verify_packed(path: &Path, ids: Option<&Identities>) -> (Report, Vec<Layer>) {
    let tmp = match tempfile::tempdir() {
        Ok(t) => t,
        Err(e) => {
            return (
                failed(path, format!("cannot create a temp directory: {e}")),
                Vec::new(),
            );
        }
    };
    let plain = tmp.path().join("snapshot");
    match pack::unpack_file(path, &plain, ids) {
        Ok(layers) => {
            let mut r = verify_plain(&plain);
            r.path = path.to_path_buf();
            r.notes.push(format!(
                "unpacked {} to verify; size and sha256 are of the plain snapshot",
                pack::describe(&layers)
            ));
            (r, layers)
        }
        Err(e) => (failed(path, format!("cannot unpack: {e}")), Vec::new()),
    }
}

fn render(r: &Report) -> String {
    let mut s = format!(
        "{}: {}\n",
        r.path.display(),
        if r.valid { "OK" } else { "INVALID" }
    );
    let trailer = match r.trailer {
        Trailer::Ok => "sha256 trailer ok",
        Trailer::Missing => "no sha256 trailer",
        Trailer::Mismatch => "sha256 trailer MISMATCH",
    };
    // A file that could not be read or unpacked has no size or trailer worth printing.
    if !(r.sha256.is_empty() && r.size == 0) {
        s.push_str(&format!(
            "  size {} ({} bytes), {trailer}\n",
            human_bytes(r.size),
            r.size
        ));
    }
    if let Some(st) = &r.status {
        s.push_str(&format!(
            "  hash {} ({:08x}), revision {}, total keys {}, total size {}\n",
            st.hash, st.hash, st.revision, st.total_key, st.total_size
        ));
    }
    if !r.sha256.is_empty() {
        s.push_str(&format!("  sha256 {}\n", r.sha256));
    }
    for p in &r.problems {
        s.push_str(&format!("  problem: {p}\n"));
    }
    for n in &r.notes {
        s.push_str(&format!("  note: {n}\n"));
    }
    s
}
