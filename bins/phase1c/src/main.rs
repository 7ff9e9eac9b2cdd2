//! Phase 1C: for each failure pattern phase 1B found, a teacher writes targeted examples; the
//! verified, well-judged, clean ones train the model (with a share of its original data); each
//! pattern is measured before and after on holdout items (see `distillation`).
//!
//! `phase1c --config FILE [--set KEY=VALUE ...]`, or `phase1c --demo` for the embedded default
//! (after the phase 1A and 1B demos). A rerun continues where a killed run stopped: every
//! teacher and judge answer is read back from the run's ledgers, never paid twice.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Parser;
use distillation::config::DEFAULT_CONFIG;
use distillation::{Phase1cConfig, run_phase1c};

/// What the embedded demo trains when phase 1A's demo has run: its merged model.
const PHASE1A_MERGED: &str = "runs/phase1a/merged";

#[derive(Parser, Debug)]
#[command(about = "Phase 1C: targeted teacher data per failure pattern, distilled and measured")]
struct Args {
    /// Configuration file (TOML); see crates/distillation/phase1c.toml for every field.
    #[arg(long, conflicts_with = "demo")]
    config: Option<PathBuf>,
    /// Run the embedded default (SmolLM2, or phase 1A's merged demo model, as student, teacher
    /// and judge on the CPU) on phase 1B's demo run.
    #[arg(long)]
    demo: bool,
    /// Accepted for symmetry with phase1a: every run resumes (ledgers, checkpoints, graded
    /// holdout items are reused).
    #[arg(long)]
    resume: bool,
    /// Override one configuration field, e.g. `--set generate.total_examples=400`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

fn main() -> Result<()> {
    pipeline::init_logging();
    let args = Args::parse();
    let mut config = match (&args.config, args.demo) {
        (Some(path), false) => Phase1cConfig::load(path, &args.overrides)?,
        (None, true) => {
            let mut overrides = Vec::new();
            if Path::new(PHASE1A_MERGED).join("config.json").exists() {
                tracing::info!("the student is phase 1A's merged demo model ({PHASE1A_MERGED})");
                overrides.push(format!("model.path={PHASE1A_MERGED:?}"));
            }
            overrides.extend(args.overrides.iter().cloned());
            Phase1cConfig::parse_with_overrides(
                DEFAULT_CONFIG,
                "embedded phase1c.toml",
                &overrides,
            )?
        }
        _ => bail!("give --config FILE or --demo"),
    };
    if args.demo && !config.mix.original_data.exists() {
        // Phase 1A's demo data, rebuilt from the task pool when its run is not here.
        let dir = config.run_dir.join("original-data");
        let (train, _) = lora_training::phase::write_demo_data(&dir)?;
        config.mix.original_data = train;
    }
    let outcome = run_phase1c(&config)?;
    println!("pattern | targeted | holdout items | failure rate before -> after | McNemar p");
    for pattern in &outcome.patterns {
        println!(
            "{} | {} | {} | {:.3} -> {:.3} | {:.4}",
            pattern.label,
            pattern.targeted,
            pattern.items,
            pattern.failure_rate_before,
            pattern.failure_rate_after,
            pattern.mcnemar_p
        );
    }
    println!("report: {}", outcome.report_html.display());
    Ok(())
}
