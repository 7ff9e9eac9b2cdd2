//! The same models on the CPU (burn flex, f32: the reference) and on a GPU (LibTorch), compared
//! number by number.
//!
//! Tolerances, fixed before the first GPU run:
//! - f32: every comparison's relative error `max|gpu − cpu| / max|cpu|` below 1e-4, and greedy
//!   generations identical token for token.
//! - bf16: the GPU runs bf16 weights and activations; the CPU reference runs the *same*
//!   bf16-rounded weights in f32, so the difference is the arithmetic alone. bf16 keeps 8
//!   significant bits (unit roundoff 2⁻⁹ ≈ 0.2%); the residual stream is rounded after every
//!   block (as in HF), so errors compound over the layers. Tolerance: relative error below
//!   3e-2 (~15 unit roundoffs) and cosine similarity of every position's logit vector above
//!   0.999. Greedy tokens are reported, not required to match (one near-tie flips the rest).
//! - Training attention (the custom differentiable causal attention, flash kernels for bf16 on
//!   a GPU): output and the query/key/value gradients against the CPU's f32 reference on the
//!   same (for bf16: bf16-rounded) inputs, with the tolerances above.
//! - MiniLM embeddings: cosine between CPU and GPU sentence vectors above 0.99999 in f32,
//!   0.999 in bf16.

use std::path::Path;

use anyhow::{Context, Result, bail};
use llama::burn::tensor::{Device, FloatDType, Int, Tensor};
use llama::device::{Precision, select_device};
use llama::generate::{
    DecodeGraphs, GenerationConfig, decode_stats, generate, generate_with, left_padded,
};
use llama::loglikelihood::{LoglikelihoodRequest, loglikelihood};
use llama::{KvCache, Llama, LlamaConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

const SEED: u64 = 20261125;
const F32_RELATIVE: f64 = 1e-4;
const BF16_RELATIVE: f64 = 3e-2;
const BF16_COSINE: f64 = 0.999;
const MINILM_COSINE_F32: f64 = 0.99999;
const MINILM_COSINE_BF16: f64 = 0.999;

/// Runs `run_one` for f32 and bf16 in child processes (a device's float dtype is fixed once it
/// holds tensors) and merges their reports.
pub fn run_all(device: &str, minilm: Option<&Path>) -> Result<Value> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut reports = Vec::new();
    for precision in ["f32", "bf16"] {
        let mut command = std::process::Command::new(&exe);
        command.args(["parity", "--device", device, "--precision", precision]);
        if let Some(dir) = minilm {
            command.arg("--minilm").arg(dir);
        }
        let output = command
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {} parity --precision {precision}", exe.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let report: Value = serde_json::from_str(text.trim()).with_context(|| {
            format!("parity --precision {precision} printed no JSON report:\n{text}")
        })?;
        reports.push(report);
    }
    let passed = reports.iter().all(|r| r["passed"].as_bool() == Some(true));
    Ok(json!({ "device": device, "passed": passed, "runs": reports }))
}

/// One precision: every check, with its numbers and verdict.
pub fn run_one(device_spec: &str, precision: Precision, minilm: Option<&Path>) -> Result<Value> {
    let cpu = select_device("cpu", Some(Precision::F32))?;
    // `cpu` against itself only tests this harness (a device is configured once).
    let gpu = if device_spec == "cpu" {
        cpu.clone()
    } else {
        crate::open_device(device_spec, Some(precision))?
    };
    let config = parity_config();
    let gpu_model = Llama::random(&config, SEED, &gpu)?;
    // The reference holds exactly the GPU's weights: for bf16, the bf16-rounded numbers in f32.
    let cpu_model = match precision {
        Precision::F32 => Llama::random(&config, SEED, &cpu)?,
        Precision::Bf16 => Llama::from_source(&config, &gpu_model.tensors(), &cpu)?,
    };
    let tolerance = match precision {
        Precision::F32 => Tolerance {
            relative: F32_RELATIVE,
            cosine: 0.999_999,
        },
        Precision::Bf16 => Tolerance {
            relative: BF16_RELATIVE,
            cosine: BF16_COSINE,
        },
    };
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let vocab = config.vocab_size as u32;
    let mut prompt =
        |len: usize| -> Vec<u32> { (0..len).map(|_| rng.random_range(1..vocab)).collect() };
    // Left padding of 0 to 14 positions, and a row of one token.
    let padded: Vec<Vec<u32>> = [5, 16, 11, 1, 9].iter().map(|&n| prompt(n)).collect();
    let unpadded: Vec<Vec<u32>> = (0..2).map(|_| prompt(24)).collect();

    let mut checks = vec![
        compare_forward(
            "left-padded batch (masked attention, grouped-query path)",
            &cpu_model,
            &gpu_model,
            &padded,
            &cpu,
            &gpu,
            tolerance,
        ),
        compare_forward(
            "unpadded batch (plain causal, fused kernel)",
            &cpu_model,
            &gpu_model,
            &unpadded,
            &cpu,
            &gpu,
            tolerance,
        ),
        compare_cache_decode(&cpu_model, &gpu_model, &padded, &cpu, &gpu, tolerance),
        compare_loglikelihood(&cpu_model, &gpu_model, &padded, &cpu, &gpu, precision)?,
        compare_generation(&cpu_model, &gpu_model, &padded, &cpu, &gpu, precision)?,
        compare_attention_gradients(&cpu, &gpu, precision, tolerance),
    ];
    match minilm {
        Some(dir) if dir.join("model.safetensors").exists() => {
            checks.push(compare_minilm(dir, &cpu, &gpu, precision)?)
        }
        Some(dir) => checks.push(json!({
            "check": "MiniLM embeddings",
            "skipped": format!("no model.safetensors in {}", dir.display()),
            "passed": true,
        })),
        None => checks.push(json!({
            "check": "MiniLM embeddings",
            "skipped": "no --minilm directory given",
            "passed": true,
        })),
    }
    let passed = checks.iter().all(|c| c["passed"].as_bool() == Some(true));
    Ok(json!({
        "precision": format!("{precision:?}").to_lowercase(),
        "device": device_spec,
        "model": {
            "hidden": config.hidden_size,
            "layers": config.num_hidden_layers,
            "heads": config.num_attention_heads,
            "kv_heads": config.num_kv_heads(),
            "ffn": config.intermediate_size,
            "vocab": config.vocab_size,
            "rope": "llama3 scaling, theta 500000",
        },
        "tolerance": { "relative": tolerance.relative, "cosine": tolerance.cosine },
        "mask_convention_on_device": mask_convention(&gpu),
        "checks": checks,
        "decode_stats": format!("{:?}", llama::generate::decode_stats()),
        "passed": passed,
    }))
}

/// A small Llama with the 8B model's structure: grouped-query attention (4 query heads per
/// KV head), llama3 RoPE scaling, untied head.
fn parity_config() -> LlamaConfig {
    let mut config = LlamaConfig::llama31_8b();
    config.vocab_size = 2048;
    config.hidden_size = 256;
    config.intermediate_size = 704;
    config.num_hidden_layers = 4;
    config.num_attention_heads = 8;
    config.num_key_value_heads = Some(2);
    config.max_position_embeddings = 4096;
    config
}

/// What the device's fused attention does with a boolean mask (burn says true = masked;
/// burn-tch 0.22 passes it to PyTorch, where true = attend). The llama model probes the same.
fn mask_convention(device: &Device) -> String {
    match embeddings::MaskPolarity::probe(device) {
        Ok(polarity) => format!("{polarity:?}"),
        Err(error) => format!("probe failed: {error}"),
    }
}

#[derive(Debug, Clone, Copy)]
struct Tolerance {
    relative: f64,
    cosine: f64,
}

/// Differences between two sets of logit rows (each `vocab` long).
#[derive(Debug, Default)]
struct Diff {
    max_abs_diff: f64,
    max_abs_ref: f64,
    min_cosine: f64,
    argmax_agreement: f64,
    rows: usize,
}

impl Diff {
    fn of(reference: &[Vec<f32>], other: &[Vec<f32>]) -> Self {
        assert_eq!(reference.len(), other.len());
        let mut diff = Diff {
            min_cosine: 1.0,
            rows: reference.len(),
            ..Default::default()
        };
        let mut agree = 0usize;
        for (r, o) in reference.iter().zip(other) {
            assert_eq!(r.len(), o.len());
            let (mut dot, mut rr, mut oo) = (0.0f64, 0.0f64, 0.0f64);
            for (&a, &b) in r.iter().zip(o) {
                let (a, b) = (a as f64, b as f64);
                diff.max_abs_diff = diff.max_abs_diff.max((a - b).abs());
                diff.max_abs_ref = diff.max_abs_ref.max(a.abs());
                dot += a * b;
                rr += a * a;
                oo += b * b;
            }
            diff.min_cosine = diff
                .min_cosine
                .min(dot / (rr.sqrt() * oo.sqrt()).max(1e-30));
            if llama::generate::argmax(r) == llama::generate::argmax(o) {
                agree += 1;
            }
        }
        diff.argmax_agreement = agree as f64 / diff.rows.max(1) as f64;
        diff
    }

    fn relative(&self) -> f64 {
        self.max_abs_diff / self.max_abs_ref.max(1e-30)
    }

    fn passes(&self, tolerance: Tolerance) -> bool {
        self.relative() < tolerance.relative && self.min_cosine > tolerance.cosine
    }

    fn report(&self, check: &str, tolerance: Tolerance) -> Value {
        json!({
            "check": check,
            "rows": self.rows,
            "max_abs_diff": self.max_abs_diff,
            "max_abs_logit": self.max_abs_ref,
            "relative": self.relative(),
            "min_cosine": self.min_cosine,
            "argmax_agreement": self.argmax_agreement,
            "passed": self.passes(tolerance),
        })
    }
}

/// The training path's causal attention (`llama::causal_attention`) on autodiff devices: the
/// output and the gradients of `sum(out ⊙ W)` with respect to Q, K and V (`[2, 8, 200, 128]`:
/// the 8B model's head size, a length that is no multiple of a kernel's block), per (batch,
/// head) row, against the CPU.
fn compare_attention_gradients(
    cpu: &Device,
    gpu: &Device,
    precision: Precision,
    tolerance: Tolerance,
) -> Value {
    use llama::causal_attention::causal_attention;
    let shape = [2, 8, 200, 128];
    let count: usize = shape.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(SEED + 1);
    let mut random =
        || -> Vec<f32> { (0..count).map(|_| rng.random_range(-2.0f32..2.0)).collect() };
    let host = [random(), random(), random(), random()];
    let gpu_dtype = match precision {
        Precision::F32 => FloatDType::F32,
        Precision::Bf16 => FloatDType::BF16,
    };
    let on = |device: &Device, data: Vec<f32>, dtype: FloatDType| {
        Tensor::<4>::from_data(llama::burn::tensor::TensorData::new(data, shape), device)
            .cast(dtype)
    };
    let run = |device: &Device, dtype: FloatDType, inputs: &[Vec<f32>; 4]| {
        let device = device.clone().autodiff();
        let tensor = |data: &Vec<f32>| on(&device, data.clone(), dtype);
        let [q, k, v] = [0, 1, 2].map(|i| tensor(&inputs[i]).require_grad());
        let weights = tensor(&inputs[3]);
        let out = causal_attention(q.clone(), k.clone(), v.clone(), 1.0 / (128f64).sqrt());
        let grads = (out.clone() * weights).sum().backward();
        let rows = |t: Tensor<4>| -> Vec<Vec<f32>> {
            host_f32(t)
                .chunks(shape[2] * shape[3])
                .map(<[f32]>::to_vec)
                .collect()
        };
        let grad = |t: &Tensor<4>| rows(t.grad(&grads).expect("gradient"));
        vec![rows(out.inner()), grad(&q), grad(&k), grad(&v)]
    };
    // The GPU's inputs, read back, are the CPU's: for bf16 that is the rounding of `host`.
    let other: Vec<Vec<Vec<f32>>> = run(gpu, gpu_dtype, &host);
    let rounded = host.clone().map(|data| host_f32(on(gpu, data, gpu_dtype)));
    let reference = run(cpu, FloatDType::F32, &rounded);
    let parts: Vec<Value> = ["output", "dQ", "dK", "dV"]
        .iter()
        .zip(reference.iter().zip(&other))
        .map(|(name, (r, o))| Diff::of(r, o).report(name, tolerance))
        .collect();
    let passed = parts.iter().all(|p| p["passed"].as_bool() == Some(true));
    json!({
        "check": "training attention: output and Q/K/V gradients (custom backward)",
        "shape": shape,
        "parts": parts,
        "passed": passed,
    })
}

fn host_f32<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .cast(FloatDType::F32)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

fn host_i64<const D: usize>(tensor: Tensor<D, Int>) -> Vec<i64> {
    tensor
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("int data")
}

/// Logit rows `[vocab]` of the real (unpadded) positions of a left-padded batch, row-major.
fn real_rows(logits: &[f32], mask: &[i64], vocab: usize) -> Vec<Vec<f32>> {
    mask.iter()
        .enumerate()
        .filter(|(_, m)| **m == 1)
        .map(|(position, _)| logits[position * vocab..(position + 1) * vocab].to_vec())
        .collect()
}

fn full_forward(model: &Llama, prompts: &[Vec<u32>], device: &Device) -> Vec<Vec<f32>> {
    let batch: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let (tokens, mask) = left_padded(&batch, device);
    let mask_host = host_i64(mask.clone());
    let logits = host_f32(model.forward(tokens, mask, None));
    real_rows(&logits, &mask_host, model.config().vocab_size)
}

fn compare_forward(
    check: &str,
    cpu_model: &Llama,
    gpu_model: &Llama,
    prompts: &[Vec<u32>],
    cpu: &Device,
    gpu: &Device,
    tolerance: Tolerance,
) -> Value {
    let reference = full_forward(cpu_model, prompts, cpu);
    let other = full_forward(gpu_model, prompts, gpu);
    Diff::of(&reference, &other).report(check, tolerance)
}

/// Prefill the first positions of the padded batch into a cache (the shortest rows are still
/// all padding there), then one token per step; every real position's logits against the CPU's
/// full forward.
fn compare_cache_decode(
    cpu_model: &Llama,
    gpu_model: &Llama,
    prompts: &[Vec<u32>],
    cpu: &Device,
    gpu: &Device,
    tolerance: Tolerance,
) -> Value {
    let reference = full_forward(cpu_model, prompts, cpu);
    let batch: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let (tokens, mask) = left_padded(&batch, gpu);
    let [rows, width] = tokens.dims();
    let vocab = gpu_model.config().vocab_size;
    let prefill = 6;
    let mut cache = KvCache::new();
    let mut pieces = vec![host_f32(gpu_model.forward(
        tokens.clone().narrow(1, 0, prefill),
        mask.clone().narrow(1, 0, prefill),
        Some(&mut cache),
    ))];
    for position in prefill..width {
        pieces.push(host_f32(gpu_model.forward(
            tokens.clone().narrow(1, position, 1),
            mask.clone().narrow(1, position, 1),
            Some(&mut cache),
        )));
    }
    let mask_host = host_i64(mask);
    let mut decoded = Vec::new();
    for row in 0..rows {
        for position in 0..width {
            if mask_host[row * width + position] == 0 {
                continue;
            }
            let logits = if position < prefill {
                &pieces[0][(row * prefill + position) * vocab..][..vocab]
            } else {
                &pieces[1 + position - prefill][row * vocab..][..vocab]
            };
            decoded.push(logits.to_vec());
        }
    }
    let mut report = Diff::of(&reference, &decoded).report(
        "KV-cache decode of the left-padded batch (6-position prefill, then 1 token per step)",
        tolerance,
    );
    report["cache_positions"] = json!(cache.seq_len());
    report
}

fn compare_loglikelihood(
    cpu_model: &Llama,
    gpu_model: &Llama,
    prompts: &[Vec<u32>],
    cpu: &Device,
    gpu: &Device,
    precision: Precision,
) -> Result<Value> {
    let requests: Vec<LoglikelihoodRequest> = prompts
        .iter()
        .filter(|p| p.len() >= 3)
        .map(|p| LoglikelihoodRequest {
            context: p[..p.len() - 2].to_vec(),
            continuation: p[p.len() - 2..].to_vec(),
        })
        .collect();
    let reference = loglikelihood(cpu_model, &requests, 4, cpu)?;
    let other = loglikelihood(gpu_model, &requests, 4, gpu)?;
    let max_diff = reference
        .iter()
        .zip(&other)
        .map(|(a, b)| (a.logprob - b.logprob).abs())
        .fold(0.0, f64::max);
    let max_ref = reference
        .iter()
        .map(|a| a.logprob.abs())
        .fold(0.0, f64::max);
    let relative = max_diff / max_ref.max(1e-30);
    let limit = match precision {
        Precision::F32 => F32_RELATIVE,
        Precision::Bf16 => BF16_RELATIVE,
    };
    Ok(json!({
        "check": "log-likelihood of 2-token continuations (batch 4)",
        "requests": requests.len(),
        "max_abs_diff": max_diff,
        "max_abs_logprob": max_ref,
        "relative": relative,
        "passed": relative < limit,
    }))
}

fn compare_generation(
    cpu_model: &Llama,
    gpu_model: &Llama,
    prompts: &[Vec<u32>],
    cpu: &Device,
    gpu: &Device,
    precision: Precision,
) -> Result<Value> {
    let config = GenerationConfig {
        max_new_tokens: 24,
        batch_size: prompts.len(),
        ..Default::default()
    };
    // A second batch of the same shape (other tokens, same lengths) restarts the decoder that
    // the first call kept and replays its graph: the check covers both calls.
    let others: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| p.iter().map(|&t| (t * 7 + 3) % 1000 + 1).collect())
        .collect();
    let graphs = DecodeGraphs::new();
    let mut calls = serde_json::Map::new();
    let (mut tokens, mut matching, mut identical) = (0, 0, true);
    for (label, batch) in [
        ("first_call", prompts),
        ("second_call_kept_graph", &others[..]),
    ] {
        let captures_before = decode_stats().graph_captures;
        let reference = generate(cpu_model, batch, &config, cpu)?;
        let other = generate_with(gpu_model, &graphs, batch, &config, gpu)?;
        let total: usize = reference.iter().map(|g| g.tokens.len()).sum();
        let same: usize = reference
            .iter()
            .zip(&other)
            .map(|(a, b)| {
                a.tokens
                    .iter()
                    .zip(&b.tokens)
                    .take_while(|(x, y)| x == y)
                    .count()
            })
            .sum();
        tokens += total;
        matching += same;
        identical &= reference == other;
        calls.insert(
            label.to_string(),
            json!({
                "tokens": total,
                "matching_prefix_tokens": same,
                "identical": reference == other,
                "graph_captures": decode_stats().graph_captures - captures_before,
            }),
        );
    }
    Ok(json!({
        "check": "greedy generation, 24 new tokens, left-padded batch of 5 (KV cache), two calls: the second replays the graph the first kept",
        "tokens": tokens,
        "matching_prefix_tokens": matching,
        "identical": identical,
        "calls": calls,
        "required": precision == Precision::F32,
        "passed": identical || precision != Precision::F32,
    }))
}

/// Sentences of varied length (1 to ~60 tokens) for the embeddings comparison.
const SENTENCES: &[&str] = &[
    "A man is playing a guitar.",
    "What is the capital of France?",
    "Paris",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch of his old wooden house.",
    "Gradient checkpointing trades compute for memory by recomputing activations in the backward pass.",
    "def add(a, b):\n    return a + b",
    "Which of the following is a prime number? (A) 21 (B) 27 (C) 29 (D) 33",
    "She sold seashells by the seashore.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong and Buzz Aldrin walked on its surface while Michael Collins orbited above in the command module, and the mission returned safely to Earth eight days after launch.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
    "ok",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
];

fn compare_minilm(dir: &Path, cpu: &Device, gpu: &Device, precision: Precision) -> Result<Value> {
    let on_cpu = embeddings::SentenceEncoder::load(dir, cpu)?;
    let on_gpu = embeddings::SentenceEncoder::load(dir, gpu)?;
    let reference = on_cpu.encode(SENTENCES, 8)?;
    let other = on_gpu.encode(SENTENCES, 8)?;
    if reference.len() != other.len() || reference.dim() != other.dim() {
        bail!("embedding shapes differ between CPU and GPU");
    }
    let mut min_cosine = 1.0f64;
    let mut max_abs_diff = 0.0f64;
    for (a, b) in reference.rows().zip(other.rows()) {
        let (mut dot, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (x as f64, y as f64);
            dot += x * y;
            aa += x * x;
            bb += y * y;
            max_abs_diff = max_abs_diff.max((x - y).abs());
        }
        min_cosine = min_cosine.min(dot / (aa.sqrt() * bb.sqrt()).max(1e-30));
    }
    let limit = match precision {
        Precision::F32 => MINILM_COSINE_F32,
        Precision::Bf16 => MINILM_COSINE_BF16,
    };
    Ok(json!({
        "check": "all-MiniLM-L6-v2 sentence embeddings (real weights), batch 8",
        "weights": dir.join("model.safetensors").display().to_string(),
        "sentences": reference.len(),
        "min_cosine": min_cosine,
        "max_abs_diff": max_abs_diff,
        "passed": min_cosine > limit,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_measures_relative_error_cosine_and_argmax() {
        let reference = vec![vec![1.0f32, 4.0, 2.0], vec![-2.0, 0.5, 1.0]];
        let same = Diff::of(&reference, &reference);
        assert_eq!(same.max_abs_diff, 0.0);
        assert!((same.min_cosine - 1.0).abs() < 1e-12);
        assert_eq!(same.argmax_agreement, 1.0);
        // Second row's argmax moves from 2 to 1; largest difference 0.6 against max |ref| 4.
        let other = vec![vec![1.0f32, 4.0, 2.0], vec![-2.0, 1.1, 1.0]];
        let diff = Diff::of(&reference, &other);
        assert!((diff.relative() - 0.6 / 4.0).abs() < 1e-6, "{diff:?}");
        assert_eq!(diff.argmax_agreement, 0.5);
        assert!(diff.min_cosine < 0.99);
        let tolerance = Tolerance {
            relative: 0.2,
            cosine: 0.9,
        };
        assert!(diff.passes(tolerance));
        assert!(!diff.passes(Tolerance {
            relative: 0.1,
            ..tolerance
        }));
    }
}
