//! Sets up every asset tuneloop's demo and tests use (see the `assets` crate).

use std::time::Instant;

use anyhow::Result;

fn main() -> Result<()> {
    let started = Instant::now();
    let paths = assets::AssetPaths::locate();
    let report = assets::fetch_all(&paths, &mut |line| eprintln!("assets: {line}"))?;
    eprintln!(
        "assets: ready in {} ({} wheels downloaded, {} outputs rebuilt) in {:.1}s",
        paths.root.display(),
        report.downloaded,
        report.rebuilt,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
