//! Phase 1B: run a model over a diverse, automatically graded test set, keep every failure with
//! its evidence, and group the failures into named patterns (see `failure_mining`).
//!
//! `phase1b --config FILE [--set KEY=VALUE ...]`, or `phase1b --demo` for the embedded default.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Parser;
use failure_mining::phase::{DEFAULT_CONFIG, grade_shard, prepare_testset};
use failure_mining::{Phase1bConfig, run_phase1b};
use lora_training::distributed::{launch, rank_device};

/// What the embedded demo tests when phase 1A's demo has run: its merged model.
const PHASE1A_MERGED: &str = "runs/phase1a/merged";

#[derive(Parser, Debug)]
#[command(about = "Phase 1B: failure mining over a graded test set, clustered and named")]
struct Args {
    /// Configuration file (TOML); see crates/failure-mining/phase1b.toml for every field.
    #[arg(long, conflicts_with = "demo")]
    config: Option<PathBuf>,
    /// Run the embedded default (SmolLM2, or phase 1A's merged demo model, on the CPU).
    #[arg(long)]
    demo: bool,
    /// Override one configuration field, e.g. `--set testset.size=500` (repeatable; TOML values).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Grade on this many GPUs of this host: the test set is built once, then one process per
    /// GPU (rank r on cuda:r when model.device = "cuda") grades every r-th item, and the shards
    /// are merged into one results.jsonl before the failures are mined.
    #[arg(long, default_value_t = 1)]
    gpus: usize,
}

fn main() -> Result<()> {
    pipeline::init_logging();
    let args = Args::parse();
    let config: Phase1bConfig = match (&args.config, args.demo) {
        (Some(path), false) => pipeline::load_config(path, &args.overrides)?,
        (None, true) => {
            let mut overrides = Vec::new();
            if std::path::Path::new(PHASE1A_MERGED)
                .join("config.json")
                .exists()
            {
                tracing::info!("testing phase 1A's merged demo model ({PHASE1A_MERGED})");
                overrides.push(format!("model.path={PHASE1A_MERGED:?}"));
            }
            overrides.extend(args.overrides.iter().cloned());
            pipeline::parse_config(DEFAULT_CONFIG, "embedded phase1b.toml", &overrides)?
        }
        _ => bail!("give --config FILE or --demo"),
    };
    if let (Ok(rank), Ok(world)) = (std::env::var("RANK"), std::env::var("WORLD_SIZE")) {
        // One rank of `--gpus N`: grade this shard, then leave the rest to the launcher.
        let (rank, world): (usize, usize) = (rank.parse()?, world.parse()?);
        let device = rank_device(&config.model.device);
        let graded = grade_shard(&config, rank, world, &device)?;
        tracing::info!("rank {rank}/{world}: {graded} items graded on {device}");
        return Ok(());
    }
    if args.gpus > 1 {
        prepare_testset(&config)?;
        let forwarded: Vec<_> = std::env::args_os().skip(1).collect();
        launch(args.gpus, &forwarded)?;
    }
    let outcome = run_phase1b(&config)?;
    println!(
        "{} items, {} failures on the mine split, {} patterns ({} named by the LLM, {} keyword fallbacks)",
        outcome.items,
        outcome.failures,
        outcome.clusters.len(),
        outcome.labels.by_llm,
        outcome.labels.fallbacks.len()
    );
    for cluster in &outcome.clusters {
        if let Some(label) = &cluster.label {
            println!("  {:>2}  {:>5}  {}", cluster.id, cluster.size, label.name);
        }
    }
    println!("report: {}", outcome.report_html.display());
    Ok(())
}
