//! The closed loop: phase 1A (LoRA training) → 1B (failure mining) → 1C (targeted
//! distillation), and further rounds of 1B → 1C, in one run directory with one report (see
//! `closed_loop`).
//!
//! `phase1 [--config FILE] [--set KEY=VALUE ...] [--resume] [--from STAGE] [--rounds N]
//! [--gpus N]`;
//! without --config it runs the embedded default (crates/closed-loop/phase1.toml). A rerun
//! reuses every stage whose inputs and outputs are unchanged.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use closed_loop::{
    DEFAULT_CONFIG, Phase1Config, Phase1Options, RANK_STAGE_ARG, run_phase1, run_rank_stage,
};

#[derive(Parser, Debug)]
#[command(about = "The closed loop: phase 1A → 1B → 1C as one resumable pipeline")]
struct Args {
    /// Configuration file (TOML); see crates/closed-loop/phase1.toml for every field.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one configuration field, e.g. `--set phase1b.testset.size=500`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue a stage that was killed (or failed) from where it stopped.
    #[arg(long)]
    resume: bool,
    /// Run this stage (1a, 1b, 1c, 1b-r2, ...) and every later one again.
    #[arg(long, value_name = "STAGE")]
    from: Option<String>,
    /// Rounds of 1B → 1C (overrides the config's `rounds`).
    #[arg(long)]
    rounds: Option<usize>,
    /// GPUs of this host for 1A's training (one process per GPU, NCCL; model.device must be
    /// `cuda`) and 1B's runner (items sharded by rank, one merged result). 1C trains on one.
    #[arg(long, default_value_t = 1)]
    gpus: usize,
    /// Internal: run one rank of this stage (started by --gpus, under RANK and WORLD_SIZE).
    #[arg(long = RANK_STAGE_ARG.trim_start_matches('-'), value_name = "STAGE", hide = true)]
    rank_stage: Option<String>,
}

fn main() -> Result<()> {
    pipeline::init_logging();
    let args = Args::parse();
    let mut overrides = args.overrides.clone();
    if let Some(rounds) = args.rounds {
        overrides.push(format!("rounds={rounds}"));
    }
    let config = match &args.config {
        Some(path) => Phase1Config::load(path, &overrides)?,
        None => Phase1Config::parse(DEFAULT_CONFIG, "embedded phase1.toml", &overrides)?,
    };
    if let Some(stage) = &args.rank_stage {
        return Ok(run_rank_stage(&config, stage, args.resume)?);
    }
    // What each rank is started with: the same configuration.
    let mut relaunch_args: Vec<OsString> = Vec::new();
    if let Some(path) = &args.config {
        relaunch_args.extend(["--config".into(), path.into()]);
    }
    for assignment in &overrides {
        relaunch_args.extend(["--set".into(), assignment.into()]);
    }
    let outcome = run_phase1(
        &config,
        &Phase1Options {
            resume: args.resume,
            from: args.from.clone(),
            gpus: args.gpus,
            relaunch_args,
        },
    )?;
    println!("stage | this call | why");
    for stage in &outcome.stages {
        println!("{} | {} | {}", stage.name, stage.action, stage.reason);
    }
    if let Some(reason) = &outcome.stopped_early {
        println!("stopped early {reason}");
    }
    println!(
        "report: {} and {}",
        outcome.report_markdown.display(),
        outcome.report_html.display()
    );
    Ok(())
}
