//! Phase 1A: LoRA-train a model on an instruction set, merge the adapter into the base (checked
//! against base + adapter logits), and validate base and merged model on held-out exact match
//! and MMLU / GSM8K / HumanEval (`lora_training::phase`). Everything lands in the run directory;
//! `report.md` sums it up.
//!
//! `phase1a --config FILE [--resume]`, or `phase1a --demo` for the embedded default
//! (SmolLM2-135M-Instruct on arithmetic from the assets' task pool).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Parser;
use llama::device::select_device_named;
use lora_training::Group;
use lora_training::distributed::{launch, rank_device};
use lora_training::phase::{
    DEFAULT_CONFIG, Phase1aConfig, Phase1aOptions, run_phase1a, write_demo_data,
};

#[derive(Parser, Debug)]
#[command(about = "Phase 1A: LoRA training, verified merge, validation before and after")]
struct Args {
    /// Configuration file (TOML); see crates/lora-training/phase1a.toml for every field.
    #[arg(long, conflicts_with = "demo")]
    config: Option<PathBuf>,
    /// Run the embedded default: SmolLM2-135M-Instruct on arithmetic from the task pool.
    #[arg(long)]
    demo: bool,
    /// Continue from the newest checkpoint in the run directory.
    #[arg(long)]
    resume: bool,
    /// Override the configuration's run directory.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Stop after training (no merge or validation).
    #[arg(long)]
    train_only: bool,
    /// Train data-parallel on this many GPUs of this host: one process per GPU (the model's
    /// device must be `cuda`), NCCL between them; rank 0 writes every file, then merges and
    /// validates alone. Under torchrun's variables (several hosts) leave it at 1.
    #[arg(long, default_value_t = 1)]
    gpus: usize,
    /// Override one configuration field, e.g. `--set train.max_steps=2` or
    /// `--set validate.benchmarks='["mmlu"]'` (repeatable; values are TOML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

fn main() -> Result<()> {
    pipeline::init_logging();
    let args = Args::parse();
    let mut config = match (&args.config, args.demo) {
        (Some(path), false) => Phase1aConfig::load(path, &args.overrides)?,
        (None, true) => Phase1aConfig::parse_with_overrides(
            DEFAULT_CONFIG,
            "embedded phase1a.toml",
            &args.overrides,
        )?,
        _ => bail!("give --config FILE or --demo"),
    };
    if args.gpus > 1 && std::env::var_os("WORLD_SIZE").is_none() {
        if config.model.device != "cuda" {
            bail!(
                "--gpus {} runs one process per GPU: set model.device = \"cuda\" (it is \"{}\")",
                args.gpus,
                config.model.device
            );
        }
        let forwarded: Vec<_> = std::env::args_os().skip(1).collect();
        return Ok(launch(args.gpus, &forwarded)?);
    }
    if let Some(run_dir) = &args.run_dir {
        config.run_dir = run_dir.clone();
    }
    let device = select_device_named(
        &rank_device(&config.model.device),
        config.model.precision.as_deref(),
    )?;
    let group = Group::from_env(&device)?;
    if args.demo {
        let dir = config.run_dir.join("demo-data");
        // Rank 0 writes the files every rank then reads.
        let (train, eval) = (dir.join("train.jsonl"), dir.join("eval.jsonl"));
        if group.is_writer() {
            write_demo_data(&dir)?;
        }
        group.barrier();
        config.data.train = train;
        config.data.eval = Some(eval);
    }
    let options = Phase1aOptions {
        resume: args.resume,
        train_only: args.train_only,
    };
    let outcome = run_phase1a(&config, &options, &device, &group)?;
    if let Some(report) = &outcome.report_markdown {
        println!("{}", std::fs::read_to_string(report)?);
    }
    println!("run directory: {}", outcome.run_dir.display());
    Ok(())
}
