//! GPU checks and benchmarks, built with `cargo xtask gpu-build` (the `tch` feature).
//!
//! - `gpu-bench parity --device cuda` runs the same small random Llama (and all-MiniLM-L6-v2)
//!   on the CPU and the GPU, in f32 and bf16: logits of a left-padded batch, of an unpadded
//!   batch, through KV-cache decoding, log-likelihoods and greedy generations. Prints JSON and
//!   exits non-zero when a tolerance is exceeded.
//! - `gpu-bench infer --device cuda` measures the Llama-3.1-8B shape with random bf16 weights:
//!   MMLU-like log-likelihood prefill, batched greedy decode, peak GPU memory.
//! - `gpu-bench runner --device cuda --testset T --tokenizer DIR` runs the Phase 1B runner
//!   (`failure_mining::run::run_items` over `benchmarks::LocalModel`) on a test set with a
//!   random 8B-shape model: items/s by grading method, tokens/s, peak GPU memory.
//!
//! `tools/bench/gpu_bench.sh` runs both plus the HF transformers baseline and prints one table.

mod gpu_memory;
mod infer;
mod parity;
mod runner;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use llama::device::Precision;

#[derive(Debug, Parser)]
#[command(about = "CPU-vs-GPU parity checks and 8B-shape inference benchmarks")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The same random models on the CPU and on `--device`; exit status 1 on a mismatch.
    Parity {
        /// The device compared with the CPU: cuda, cuda:N (or cpu, to test the harness).
        #[arg(long, default_value = "cuda")]
        device: String,
        /// Check one precision only (default: f32 and bf16, each in its own process, since a
        /// device's float dtype is fixed once it holds tensors).
        #[arg(long)]
        precision: Option<Precision>,
        /// all-MiniLM-L6-v2 directory (config.json, model.safetensors, tokenizer.json) for the
        /// embeddings check; skipped with a note when absent.
        #[arg(long)]
        minilm: Option<PathBuf>,
        /// Also write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Llama-3.1-8B-shaped inference speed with random weights in the device's dtype.
    Infer {
        #[arg(long, default_value = "cuda")]
        device: String,
        /// f32 or bf16 (default: bf16 on a GPU).
        #[arg(long)]
        precision: Option<Precision>,
        /// Model shape: llama31-8b; 8b-ops (its 32 layers on tiny matrices: the host's share of
        /// a step); tiny (to test the harness on a CPU).
        #[arg(long, default_value = "llama31-8b")]
        shape: String,
        /// Rows of the MMLU-like prefill batch.
        #[arg(long, default_value_t = 8)]
        prefill_batch: usize,
        /// Tokens per prefill row (a 5-shot MMLU prompt is about 700).
        #[arg(long, default_value_t = 704)]
        prefill_len: usize,
        /// Timed repetitions of each prefill measurement (the median is reported).
        #[arg(long, default_value_t = 3)]
        prefill_repeats: usize,
        /// Batch sizes for greedy decoding.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
        decode_batches: Vec<usize>,
        /// Prompt tokens per row before decoding.
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        /// New tokens per row (every row generates exactly this many).
        #[arg(long, default_value_t = 128)]
        new_tokens: usize,
        /// Also write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The Phase 1B runner over a test set with a random model of the given shape; every
    /// generation runs to `--max-new-tokens` (no stop tokens).
    Runner {
        #[arg(long, default_value = "cuda")]
        device: String,
        /// f32 or bf16 (default: bf16 on a GPU).
        #[arg(long)]
        precision: Option<Precision>,
        /// llama31-8b, or tiny (to test the harness on a CPU).
        #[arg(long, default_value = "llama31-8b")]
        shape: String,
        /// A phase1b testset.jsonl.
        #[arg(long)]
        testset: PathBuf,
        /// HF tokenizer directory (tokenizer.json, tokenizer_config.json), e.g.
        /// assets/smollm2-135m-instruct.
        #[arg(long)]
        tokenizer: PathBuf,
        /// Only the first N items.
        #[arg(long)]
        limit: Option<usize>,
        /// Items per model call (phase1b's default `run.batch_size`).
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// New tokens of every generated reply, whatever its grader kind.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// Batches of each method run untimed first.
        #[arg(long, default_value_t = 1)]
        warmup_batches: usize,
        /// Also write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Command::Parity {
            device,
            precision,
            minilm,
            json,
        } => {
            let report = match precision {
                Some(precision) => parity::run_one(&device, precision, minilm.as_deref())?,
                None => parity::run_all(&device, minilm.as_deref())?,
            };
            let passed = report["passed"].as_bool() == Some(true);
            emit(&report, json.as_deref())?;
            if !passed {
                eprintln!("parity: FAILED (see the report above)");
                std::process::exit(1);
            }
            eprintln!("parity: passed");
            Ok(())
        }
        Command::Infer {
            device,
            precision,
            shape,
            prefill_batch,
            prefill_len,
            prefill_repeats,
            decode_batches,
            prompt_len,
            new_tokens,
            json,
        } => {
            let options = infer::Options {
                device,
                precision,
                shape,
                prefill_batch,
                prefill_len,
                prefill_repeats,
                decode_batches,
                prompt_len,
                new_tokens,
            };
            let report = infer::run(&options)?;
            emit(&report, json.as_deref())
        }
        Command::Runner {
            device,
            precision,
            shape,
            testset,
            tokenizer,
            limit,
            batch_size,
            max_new_tokens,
            warmup_batches,
            json,
        } => {
            let options = runner::Options {
                device,
                precision,
                shape,
                testset,
                tokenizer,
                limit,
                batch_size,
                max_new_tokens,
                warmup_batches,
                work_dir: None,
            };
            let report = runner::run(&options)?;
            emit(&report, json.as_deref())
        }
    }
}

/// `select_device`, plus `libtorch-cpu` (LibTorch's CPU device, `tch` builds only): it runs
/// the GPU code path (SDPA, its mask convention) on a machine without a GPU.
pub fn open_device(
    spec: &str,
    precision: Option<Precision>,
) -> Result<llama::burn::tensor::Device> {
    if spec != "libtorch-cpu" {
        return Ok(llama::device::select_device(spec, precision)?);
    }
    #[cfg(feature = "tch")]
    {
        use llama::burn::tensor::FloatDType;
        #[allow(deprecated)]
        // burn-tch is deprecated upstream; it is the backend that links LibTorch
        let mut device = llama::burn::tensor::Device::libtorch();
        let dtype = match precision.unwrap_or(Precision::F32) {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
        };
        device
            .configure(dtype)
            .map_err(|error| anyhow::anyhow!("configuring libtorch-cpu: {error:?}"))?;
        Ok(device)
    }
    #[cfg(not(feature = "tch"))]
    anyhow::bail!("libtorch-cpu needs a build with the `tch` feature")
}

/// Prints the report as one JSON line and writes it to `path` (temp file + rename).
fn emit(report: &serde_json::Value, path: Option<&std::path::Path>) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    println!("{text}");
    if let Some(path) = path {
        let temp = path.with_extension("json.tmp");
        std::fs::write(&temp, format!("{text}\n"))?;
        std::fs::rename(&temp, path)?;
    }
    Ok(())
}
