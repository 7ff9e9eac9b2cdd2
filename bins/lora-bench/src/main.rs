//! LoRA training throughput with random weights at a real shape: the step the trainer runs
//! (forward, token-normalised loss, backward into the adapters only, clipping, AdamW), timed
//! after warm-up. Prints one JSON line per measured configuration.
//!
//! `lora-bench --device cuda --shape llama31-8b --seq 2048 --batch 1 --steps 5`
//!
//! Mixed lengths: `--lengths tools/bench/chat_lengths.txt --batch 16` draws each step's examples
//! from real chat lengths, right-padded or, with `--padding-free`, packed into one row; tokens/s
//! then counts real tokens only.
//!
//! Data-parallel: `--gpus N` runs N processes, one per GPU, that split each step's
//! `--micro-batches` (every process builds the same random rows and takes its share); the
//! printed losses then equal a one-GPU run with the same `--micro-batches`.

use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;
use llama::device::{Precision, select_device};
use llama::{Llama, LlamaConfig};
use lora_training::distributed::{launch, rank_device};
use lora_training::{
    Batch, Group, LoraConfig, StepGraph, TrainConfig, attach_adapters, freeze_base, new_optimizer,
    optimizer_step, training_device,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32 or bf16 (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long)]
    precision: Option<String>,
    /// llama31-8b, smollm2-135m or tiny.
    #[arg(long, default_value = "tiny")]
    shape: String,
    /// Override the number of layers (e.g. to fit a quick run).
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long, default_value_t = 2048)]
    seq: usize,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed optimiser steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value_t = 16)]
    rank: usize,
    #[arg(long, default_value_t = 32.0)]
    alpha: f64,
    /// Keep only each decoder layer's input and recompute the layer in the backward pass.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Micro-batches per optimiser step (over all GPUs), each of `--batch` sequences.
    #[arg(long, default_value_t = 1)]
    micro_batches: usize,
    /// Data-parallel over this many GPUs of this host (one process each, NCCL).
    #[arg(long, default_value_t = 1)]
    gpus: usize,
    /// Draw the random weights with the device's own generator (an 8B-shaped model on a GPU in
    /// under a second, against ~50 s for the seeded host numbers); the weights then differ
    /// between devices, so leave it off for CPU-vs-GPU comparisons.
    #[arg(long)]
    device_random: bool,
    /// Record the first timed step with PyTorch's profiler into this Chrome trace (JSON;
    /// LibTorch builds only; summarise with tools/bench/trace_summary.py).
    #[arg(long)]
    torch_profile: Option<std::path::PathBuf>,
    /// Run the adapters' matmuls in f32 (PEFT's way, and ours before 2026-12-04) instead of the
    /// model's dtype, for before/after measurements.
    #[arg(long)]
    adapter_f32: bool,
    /// Capture a micro-batch's forward and backward as a CUDA graph and replay it
    /// (`train.cuda_graph`; LibTorch GPUs).
    #[arg(long)]
    cuda_graph: bool,
    /// Example lengths, one per line (tools/bench/chat_lengths.txt): each step then draws
    /// `--micro-batches` × `--batch` examples of the next lengths in the file (random tokens,
    /// every position trained) instead of fixed `--seq` rows, and tokens/s counts real tokens.
    #[arg(long)]
    lengths: Option<std::path::PathBuf>,
    /// With `--lengths`: pack each micro-batch's examples into one row (padding-free) instead
    /// of right-padding them to the longest (with `--cuda-graph`, to a multiple of
    /// `PACKED_WIDTH_MULTIPLE` positions, as `train.padding_free` does).
    #[arg(long)]
    padding_free: bool,
}

/// One example: its tokens and which of them are trained.
type Row = (Vec<u32>, Vec<bool>);

/// Example lengths from `path`, one per line; an error names the line that is not a length.
fn read_lengths(path: &std::path::Path) -> Result<Vec<usize>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let lengths = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| match line.trim().parse::<usize>() {
            Ok(length) if length >= 2 => Ok(length),
            _ => bail!(
                "{}:{}: `{line}` is not a length of 2 or more tokens",
                path.display(),
                index + 1
            ),
        })
        .collect::<Result<Vec<_>>>()?;
    if lengths.is_empty() {
        bail!("{}: no lengths", path.display());
    }
    Ok(lengths)
}

fn shape(name: &str) -> Result<LlamaConfig> {
    Ok(match name {
        "llama31-8b" => LlamaConfig::llama31_8b(),
        "smollm2-135m" => LlamaConfig {
            vocab_size: 49_152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: Some(3),
            tie_word_embeddings: true,
            rope_theta: 100_000.0,
            ..LlamaConfig::tiny_for_tests()
        },
        "tiny" => LlamaConfig::tiny_for_tests(),
        other => bail!("unknown shape `{other}` (llama31-8b, smollm2-135m, tiny)"),
    })
}

#[cfg(feature = "tch")]
type Profiler = llama::torch_profiler::TorchProfiler;
#[cfg(not(feature = "tch"))]
type Profiler = ();

#[cfg(feature = "tch")]
fn start_profiler() -> Result<Profiler> {
    Ok(llama::torch_profiler::TorchProfiler::start()?)
}

#[cfg(not(feature = "tch"))]
fn start_profiler() -> Result<Profiler> {
    bail!("--torch-profile needs a LibTorch build (cargo xtask gpu-build)")
}

#[cfg(feature = "tch")]
fn save_profile(profiler: Profiler, path: &std::path::Path) -> Result<()> {
    profiler.save(path)?;
    eprintln!("profile of one step written to {}", path.display());
    Ok(())
}

#[cfg(not(feature = "tch"))]
fn save_profile(_: Profiler, _: &std::path::Path) -> Result<()> {
    Ok(())
}

/// PyTorch's allocator peaks on `device` in GiB (allocated, reserved), the figures
/// `torch.cuda.max_memory_allocated` / `max_memory_reserved` give HF's side.
#[cfg(feature = "tch")]
fn allocator_peaks_gib(device: &llama::burn::tensor::Device) -> Result<(f64, f64)> {
    let peaks = llama::cuda_memory::peaks(device)?;
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    Ok((gib(peaks.allocated), gib(peaks.reserved)))
}

#[cfg(not(feature = "tch"))]
fn allocator_peaks_gib(_: &llama::burn::tensor::Device) -> Result<(f64, f64)> {
    unreachable!("a build without LibTorch has no CUDA device")
}

/// Starts the allocator peaks afresh once the model is built, as hf_lora.py does, so both
/// sides count the training steps (with the weights they hold), not model construction.
#[cfg(feature = "tch")]
fn reset_allocator_peaks(device: &llama::burn::tensor::Device) -> Result<()> {
    Ok(llama::cuda_memory::reset_peaks(device)?)
}

#[cfg(not(feature = "tch"))]
fn reset_allocator_peaks(_: &llama::burn::tensor::Device) -> Result<()> {
    unreachable!("a build without LibTorch has no CUDA device")
}

fn main() -> Result<()> {
    let args = Args::parse();
    let precision = args
        .precision
        .as_deref()
        .map(str::parse::<Precision>)
        .transpose()?;
    if args.gpus > 1 && std::env::var_os("WORLD_SIZE").is_none() {
        let forwarded: Vec<_> = std::env::args_os().skip(1).collect();
        return Ok(launch(args.gpus, &forwarded)?);
    }
    let device = select_device(&rank_device(&args.device), precision)?;
    let group = Group::from_env(&device)?;
    let train_device = training_device(&device);
    let mut config = shape(&args.shape)?;
    if let Some(layers) = args.layers {
        config.num_hidden_layers = layers;
    }
    let loading = Instant::now();
    let base = if args.device_random {
        // The same seed on every rank: data-parallel ranks must hold the same base.
        train_device.seed(0);
        Llama::random_on_device(&config, &train_device)?
    } else {
        Llama::random(&config, 0, &train_device)?
    };
    let mut model = freeze_base(base);
    model.checkpoint_layers = args.gradient_checkpointing;
    let lora = LoraConfig {
        rank: args.rank,
        alpha: args.alpha,
        dropout: 0.0,
        ..Default::default()
    };
    attach_adapters(&mut model, &lora, 0)?;
    for (layer, kind) in model.adapted_projections() {
        if let Some(adapter) = model.projection_mut(layer, kind).lora.as_mut() {
            adapter.f32_compute = args.adapter_f32;
        }
    }
    eprintln!("model ready in {:.1}s", loading.elapsed().as_secs_f64());
    // PyTorch's allocator counts only on a CUDA device (select_device refused `cuda` otherwise).
    let on_cuda = args.device.starts_with("cuda");
    if on_cuda {
        reset_allocator_peaks(&device)?;
    }
    let train = TrainConfig {
        cuda_graph: args.cuda_graph,
        padding_free: args.padding_free,
        ..TrainConfig::default()
    };
    let mut optimizer = new_optimizer(&model);
    let mut graph = StepGraph::new(train.cuda_graph);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut random_row = |length: usize| -> Row {
        let tokens = (0..length)
            .map(|_| rng.random_range(0..config.vocab_size as u32))
            .collect();
        (tokens, vec![true; length])
    };
    let profiled = usize::from(args.torch_profile.is_some());
    let per_step = args.micro_batches.max(1) * args.batch;
    // Each step's micro-batches as (tokens, trained) rows: fixed `--seq` rows, or the next
    // lengths of `--lengths` (cycling through the file). Every rank draws the same rows and
    // takes its share of the micro-batches.
    let lengths = args.lengths.as_deref().map(read_lengths).transpose()?;
    let step_rows: Vec<Vec<Vec<Row>>> = match &lengths {
        None => {
            let rows: Vec<Vec<_>> = (0..args.micro_batches.max(1))
                .map(|_| (0..args.batch).map(|_| random_row(args.seq)).collect())
                .collect();
            vec![rows]
        }
        Some(lengths) => (0..args.steps + 2 + profiled)
            .map(|step| {
                (0..args.micro_batches.max(1))
                    .map(|micro| {
                        (0..args.batch)
                            .map(|row| {
                                let at = step * per_step + micro * args.batch + row;
                                random_row(lengths[at % lengths.len()])
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect(),
    };
    let make_batches = |rows: &[Vec<Row>]| -> Vec<Batch> {
        group
            .share(rows)
            .iter()
            .map(|rows| match train.packed_width_multiple() {
                Some(multiple) => Batch::packed_from_rows(rows, multiple, &train_device),
                None => Batch::from_rows(rows, 0, &train_device),
            })
            .collect()
    };
    // Fixed rows are built once, as a trainer whose batches all share one shape sees them;
    // rows of `--lengths` are built inside each timed step, as the trainer builds them.
    let fixed_batches = lengths.is_none().then(|| make_batches(&step_rows[0]));
    let mut times = Vec::new();
    let mut losses = Vec::new();
    let (mut real_tokens, mut computed_tokens) = (0usize, 0usize);
    for step in 0..args.steps + 2 + profiled {
        let profiler = match &args.torch_profile {
            Some(path) if step == 2 => Some((start_profiler()?, path)),
            _ => None,
        };
        let started = Instant::now();
        let rows = &step_rows[step % step_rows.len()];
        let targets: usize = rows
            .iter()
            .flatten()
            .map(|(_, trained)| trained.iter().skip(1).filter(|&&t| t).count())
            .sum();
        let built;
        let batches = match &fixed_batches {
            Some(batches) => batches,
            None => {
                built = make_batches(rows);
                &built
            }
        };
        let outcome = optimizer_step(
            &mut model,
            &mut optimizer,
            batches,
            targets,
            1e-4,
            &train,
            &group,
            &mut graph,
        );
        // The loss read-back synchronises the device.
        losses.push(outcome.loss);
        let seconds = started.elapsed().as_secs_f64();
        if let Some((profiler, path)) = profiler {
            eprintln!("step {step} (profiled, not timed): {seconds:.3}s");
            save_profile(profiler, path)?;
            // The profiled step ran slower than the others: it is not timed.
            continue;
        }
        if group.is_writer() {
            eprintln!("step {step}: {seconds:.3}s loss {:.4}", outcome.loss);
        }
        if step >= 2 {
            times.push(seconds);
            real_tokens += outcome.tokens;
            computed_tokens += outcome.computed_tokens;
        }
    }
    if !group.is_writer() {
        return Ok(());
    }
    let last_loss = losses.last().copied().unwrap_or(0.0);
    let total: f64 = times.iter().sum();
    let mean = total / times.len().max(1) as f64;
    let peaks = on_cuda.then(|| allocator_peaks_gib(&device)).transpose()?;
    println!(
        "{}",
        json!({
            "bench": "lora_train_step",
            "shape": args.shape,
            "layers": config.num_hidden_layers,
            "device": args.device,
            "seq": args.seq,
            "batch": args.batch,
            "micro_batches": args.micro_batches.max(1),
            "lengths": args.lengths.as_ref().map(|path| path.display().to_string()),
            "padding_free": args.padding_free,
            "real_tokens": real_tokens,
            "computed_tokens": computed_tokens,
            "gpus": group.world_size(),
            "rank": args.rank,
            "gradient_checkpointing": args.gradient_checkpointing,
            "adapter_f32": args.adapter_f32,
            "cuda_graph": graph.captured_shapes() > 0,
            "cuda_graph_shapes": graph.captured_shapes(),
            "cuda_graph_failure": graph.failure(),
            "steps": times.len(),
            "seconds_per_step": mean,
            // Real (non-padding) tokens: with fixed rows every token is real.
            "tokens_per_second": real_tokens as f64 / total,
            "last_loss": last_loss,
            "losses": losses,
            "peak_allocated_gib": peaks.map(|(allocated, _)| allocated),
            "peak_reserved_gib": peaks.map(|(_, reserved)| reserved),
        })
    );
    Ok(())
}
