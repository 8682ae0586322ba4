//! `verify FILE…`: integrity and etcd status of snapshot files.

use serde_json::json;
use talos_dr::Exit;
use talos_dr::snapshot::verify::{self, Report, Trailer};

use super::{Ctx, human_bytes};

pub fn run(ctx: &Ctx, args: &crate::cli::VerifyArgs) -> anyhow::Result<Exit> {
    let reports: Vec<Report> = args
        .files
        .iter()
        .map(|path| {
            verify::verify_file(path).unwrap_or_else(|e| Report {
                path: path.clone(),
                valid: false,
                size: 0,
                trailer: Trailer::Missing,
                status: None,
                problems: vec![format!("cannot read the file: {e}")],
                notes: Vec::new(),
                sha256: String::new(),
            })
        })
        .collect();
    let mut text = String::new();
    for r in &reports {
        text.push_str(&render(r));
    }
    ctx.printer.text(&text);
    ctx.printer.json(&json!({ "files": reports }));
    Ok(if reports.iter().all(|r| r.valid) {
        Exit::Success
    } else {
        Exit::InvalidSnapshot
    })
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
    s.push_str(&format!(
        "  size {} ({} bytes), {trailer}\n",
        human_bytes(r.size),
        r.size
    ));
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
