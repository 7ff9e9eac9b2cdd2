//! Sets up every asset tuneloop's demo and tests use (see the `assets` crate), then converts
//! SmolLM2's GGUF into an HF directory with the model crate's own GGUF importer.

use std::time::Instant;

use anyhow::{Context, Result};

/// Bump when the conversion's output changes, so existing directories are rebuilt.
const CONVERSION_VERSION: &str = "gguf-to-hf-f32-v1";

fn main() -> Result<()> {
    let started = Instant::now();
    let paths = assets::AssetPaths::locate();
    let report = assets::fetch_all(&paths, &mut |line| eprintln!("assets: {line}"))?;

    let hf_dir = paths.smollm2_dir();
    let key = format!("{} {CONVERSION_VERSION}", assets::SMOLLM2.sha256);
    let converted =
        if paths.stamp_matches("smollm2-hf", &key) && hf_dir.join("config.json").exists() {
            false
        } else {
            eprintln!(
                "assets: converting {} to {}",
                paths.smollm2_gguf().display(),
                hf_dir.display()
            );
            llama::convert_gguf_to_hf_dir(paths.smollm2_gguf(), &hf_dir, llama::HostDType::F32)
                .with_context(|| format!("converting {}", paths.smollm2_gguf().display()))?;
            paths.write_stamp("smollm2-hf", &key)?;
            true
        };
    eprintln!(
        "assets: ready in {} ({} wheels downloaded, {} outputs rebuilt) in {:.1}s",
        paths.root.display(),
        report.downloaded,
        report.rebuilt + usize::from(converted),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
