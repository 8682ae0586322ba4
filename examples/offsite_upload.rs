//! Bench driver for `benches/offsite.sh`: packs (zstd + age) and uploads one snapshot file to an
//! off-site target exactly as `talos-dr snapshot` does, and prints the wall time in seconds.
//!
//! Usage: offsite_upload FILE URL RECIPIENT [ENDPOINT]
//! S3 credentials come from the AWS_* environment variables.

#![allow(clippy::print_stdout)]

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, url, recipient, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: offsite_upload FILE URL RECIPIENT [ENDPOINT]");
    };
    let cfg = talos_dr::profile::Offsite {
        url: url.parse()?,
        endpoint: rest.first().cloned(),
        region: None,
        path_style: true,
        credentials_file: None,
        retries: 0,
    };
    let path = std::path::Path::new(file);
    // The real snapshot is verified once, as `snapshot` does before uploading (not timed).
    let report = talos_dr::snapshot::verify::verify_file(path)?;
    anyhow::ensure!(report.valid, "{file} is not a valid snapshot");
    let at = jiff::Timestamp::now();
    let sidecar = talos_dr::snapshot::store::Sidecar::from_report(
        &report,
        at,
        &talos_dr::snapshot::store::file_name(at),
    );
    let packing = talos_dr::pack::Packing {
        compress: true,
        recipients: talos_dr::config::Recipients::parse(std::slice::from_ref(recipient))?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let target = talos_dr::offsite::Target::new(&cfg, None)?;
    let t = Instant::now();
    let up = rt.block_on(target.upload(path, &sidecar, &packing, &talos_dr::ui::NoopReporter))?;
    let secs = t.elapsed().as_secs_f64();
    println!("{secs:.3} {} {}", up.manifest.size, up.url);
    Ok(())
}
