//! LoRA training throughput with random weights at a real shape: the step the trainer runs
//! (forward, token-normalised loss, backward into the adapters only, clipping, AdamW), timed
//! after warm-up. Prints one JSON line per measured configuration.
//!
//! `lora-bench --device cuda --shape llama31-8b --seq 2048 --batch 1 --steps 5`

use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;
use llama::device::{Precision, select_device};
use llama::{Llama, LlamaConfig};
use lora_training::{
    Batch, LoraConfig, TrainConfig, attach_adapters, freeze_base, new_optimizer, optimizer_step,
    training_device,
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
    /// Recompute activations in the backward pass.
    #[arg(long)]
    gradient_checkpointing: bool,
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

fn main() -> Result<()> {
    let args = Args::parse();
    let precision = args
        .precision
        .as_deref()
        .map(str::parse::<Precision>)
        .transpose()?;
    let device = select_device(&args.device, precision)?;
    let train_device = training_device(&device, args.gradient_checkpointing);
    let mut config = shape(&args.shape)?;
    if let Some(layers) = args.layers {
        config.num_hidden_layers = layers;
    }
    let loading = Instant::now();
    let mut model = freeze_base(Llama::random(&config, 0, &train_device)?);
    let lora = LoraConfig {
        rank: args.rank,
        alpha: args.alpha,
        dropout: 0.0,
        ..Default::default()
    };
    attach_adapters(&mut model, &lora, 0)?;
    eprintln!("model ready in {:.1}s", loading.elapsed().as_secs_f64());
    let train = TrainConfig::default();
    let mut optimizer = new_optimizer(&model);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let rows: Vec<(Vec<u32>, Vec<bool>)> = (0..args.batch)
        .map(|_| {
            let tokens: Vec<u32> = (0..args.seq)
                .map(|_| rng.random_range(0..config.vocab_size as u32))
                .collect();
            (tokens, vec![true; args.seq])
        })
        .collect();
    let batch = Batch::from_rows(&rows, 0, &train_device);
    let targets = batch.target_tokens;
    let mut times = Vec::new();
    let mut last_loss = 0.0;
    for step in 0..args.steps + 2 {
        let started = Instant::now();
        let (loss, _) = optimizer_step(
            &mut model,
            &mut optimizer,
            std::slice::from_ref(&batch),
            targets,
            1e-4,
            &train,
        );
        // The loss read-back synchronises the device.
        last_loss = loss;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("step {step}: {seconds:.3}s loss {loss:.4}");
        if step >= 2 {
            times.push(seconds);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let tokens = (args.batch * args.seq) as f64;
    println!(
        "{}",
        json!({
            "bench": "lora_train_step",
            "shape": args.shape,
            "layers": config.num_hidden_layers,
            "device": args.device,
            "seq": args.seq,
            "batch": args.batch,
            "rank": args.rank,
            "gradient_checkpointing": args.gradient_checkpointing,
            "steps": times.len(),
            "seconds_per_step": mean,
            "tokens_per_second": tokens / mean,
            "last_loss": last_loss,
        })
    );
    Ok(())
}
