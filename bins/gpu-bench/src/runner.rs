//! The Phase 1B runner (`failure_mining::run::run_items` over `benchmarks::LocalModel`) at a
//! model shape with random weights created on the device: items/s split by how items are
//! graded (multiple choice by log-likelihood, the rest by greedy generation), and tokens/s.
//!
//! Random weights rarely pick an end-of-sequence token, but they may, and then a row would stop
//! early and make the token count (and the comparison with HF's fixed-length `generate`)
//! uncertain. So the model gets no stop tokens at all and every generated row runs to the cap:
//! every grader kind's `max_new_tokens` is set to `--max-new-tokens`.
//!
//! The tokenizer is a real one (SmolLM2's, ids < 49,152, inside any shape's vocabulary of at
//! least that size) so that prompts have real lengths; the chat template comes with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use benchmarks::model::{GenerationRequest, Loglikelihood, LoglikelihoodRequest};
use benchmarks::{LanguageModel, LocalModel, ModelError};
use failure_mining::run::{ChoiceScoring, MaxNewTokens, RunConfig, run_items};
use llama::device::Precision;
use llama::tokenizer::Tokenizer;
use llama::{Llama, LlamaConfig, Pretrained};
use records::mining::{Grader, TestItem};
use serde_json::{Value, json};

use crate::gpu_memory::{MemoryPoller, gpu_index, start_global};

#[derive(Debug, Clone)]
pub struct Options {
    pub device: String,
    pub precision: Option<Precision>,
    pub shape: String,
    /// A phase1b `testset.jsonl`.
    pub testset: PathBuf,
    /// An HF tokenizer directory (tokenizer.json, tokenizer_config.json with a chat template).
    pub tokenizer: PathBuf,
    pub limit: Option<usize>,
    pub batch_size: usize,
    pub max_new_tokens: usize,
    /// Items of each method run once before the timed run (CUDA graph capture, allocator growth).
    pub warmup_batches: usize,
    /// Where results.jsonl files go (default: a fresh folder under the system temp dir).
    pub work_dir: Option<PathBuf>,
}

pub fn run(options: &Options) -> Result<Value> {
    let mut items: Vec<TestItem> = records::jsonl::read_jsonl(&options.testset)
        .with_context(|| format!("reading {}", options.testset.display()))?;
    if let Some(limit) = options.limit {
        items.truncate(limit);
    }
    if items.is_empty() {
        bail!("{}: no items", options.testset.display());
    }
    let work_dir = match &options.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("gpu-bench-runner-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work_dir)?;
    let tokenizer = tokenizer_without_stop_tokens(&options.tokenizer, &work_dir)?;

    let mut config = match options.shape.as_str() {
        "llama31-8b" => LlamaConfig::llama31_8b(),
        // A CPU check of the harness: small matrices, the tokenizer's whole vocabulary.
        "tiny" => {
            let mut config = LlamaConfig::tiny_for_tests();
            config.vocab_size = tokenizer.vocab_size();
            config.max_position_embeddings = 4096;
            config
        }
        other => bail!("unknown --shape `{other}` (llama31-8b or tiny)"),
    };
    if tokenizer.vocab_size() > config.vocab_size {
        bail!(
            "the tokenizer's {} ids do not fit the model's vocabulary of {}",
            tokenizer.vocab_size(),
            config.vocab_size
        );
    }
    // No stop ids from the model config either (the 8B config names Llama 3's).
    config.eos_token_id = None;

    let on_gpu = options.device.starts_with("cuda");
    let memory = if on_gpu {
        start_global(gpu_index(&options.device))
    } else {
        None
    };
    let device = crate::open_device(&options.device, options.precision)?;
    let started = Instant::now();
    let model = Llama::random_on_device(&config, &device)?;
    device.sync()?;
    let load_s = started.elapsed().as_secs_f64();
    eprintln!(
        "runner: {} random weights on {} in {load_s:.1}s",
        options.shape, options.device
    );
    let dtype = format!("{:?}", model.embed_tokens.weight.val().dtype());
    let pretrained = Pretrained { model, tokenizer };
    let work = token_counts(&pretrained, &items)?;
    let local = LocalModel::new(
        format!("random {}", options.shape),
        pretrained,
        options.batch_size,
    );
    let model = Timed::new(&local);
    let cap = options.max_new_tokens;
    let run_config = RunConfig {
        batch_size: options.batch_size,
        multiple_choice: ChoiceScoring::Loglikelihood,
        system_prompt: None,
        max_new_tokens: MaxNewTokens {
            multiple_choice: cap,
            short_answer: cap,
            number: cap,
            exact_text: cap,
            constraints: cap,
            judge: cap,
        },
    };

    // Warm-up on a few batches of each method (the first items of each, in the runner's order),
    // into their own results file: a long run meets these costs once.
    let warmup = warmup_items(&items, options.batch_size * options.warmup_batches);
    let warmup_s = if warmup.is_empty() {
        0.0
    } else {
        let results = work_dir.join("warmup.results.jsonl");
        let _ = std::fs::remove_file(&results);
        let started = Instant::now();
        run_items(&model, &warmup, &results, &run_config, None)?;
        started.elapsed().as_secs_f64()
    };
    model.reset();
    let warmup_stats = local.loglikelihood_stats();
    eprintln!(
        "runner: warm-up on {} items in {warmup_s:.1}s",
        warmup.len()
    );

    let results = work_dir.join("results.jsonl");
    let _ = std::fs::remove_file(&results);
    let started = Instant::now();
    let records = run_items(&model, &items, &results, &run_config, None)?;
    let run_s = started.elapsed().as_secs_f64();
    if records.len() != items.len() {
        bail!("{} records for {} items", records.len(), items.len());
    }
    let stats = local.loglikelihood_stats();
    let positions_computed = stats.positions_computed - warmup_stats.positions_computed;
    let positions_reused = stats.positions_reused - warmup_stats.positions_reused;
    let peak_mib = memory.map(MemoryPoller::peak_mib);
    if let Some(poller) = memory {
        poller.stop();
    }

    let mut by_method: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for record in &records {
        let method = record.protocol.rsplit('/').next().unwrap_or("?");
        let entry = by_method.entry(method).or_default();
        entry.0 += 1;
        entry.1 += usize::from(record.correct);
    }
    let timing = model.totals();
    let method_report = |method: &str, seconds: f64, extra: Value| {
        let (n, correct) = by_method.get(method).copied().unwrap_or_default();
        let mut report = json!({
            "items": n,
            "correct": correct,
            "model_seconds": seconds,
            "items_per_s": n as f64 / seconds.max(1e-9),
        });
        if let (Value::Object(report), Value::Object(extra)) = (&mut report, extra) {
            report.extend(extra);
        }
        report
    };
    let generate_s = timing.generate.as_secs_f64();
    let loglikelihood_s = timing.loglikelihood.as_secs_f64();
    let report = json!({
        "implementation": "tuneloop: failure_mining::run::run_items over benchmarks::LocalModel (burn 0.22.1)",
        "device": options.device,
        "dtype": dtype,
        "shape": options.shape,
        "config": {
            "hidden": config.hidden_size, "layers": config.num_hidden_layers,
            "heads": config.num_attention_heads, "kv_heads": config.num_kv_heads(),
            "ffn": config.intermediate_size, "vocab": config.vocab_size,
        },
        "testset": options.testset.display().to_string(),
        "batch_size": options.batch_size,
        "max_new_tokens": cap,
        "stop_tokens": "none: every generated row runs to max_new_tokens",
        "load_s": load_s,
        "warmup": {"items": warmup.len(), "seconds": warmup_s},
        "items": items.len(),
        "run_seconds": run_s,
        "items_per_s": items.len() as f64 / run_s,
        "loglikelihood": method_report("loglikelihood", loglikelihood_s, json!({
            "calls": timing.loglikelihood_calls,
            "requests": timing.loglikelihood_requests,
            "request_tokens": work.loglikelihood_tokens,
            "request_tokens_per_s": work.loglikelihood_tokens as f64 / loglikelihood_s.max(1e-9),
            "positions_computed": positions_computed,
            "positions_reused_from_shared_prefix": positions_reused,
        })),
        "generative": method_report("generative", generate_s, json!({
            "calls": timing.generate_calls,
            "requests": timing.generate_requests,
            "prompt_tokens": work.prompt_tokens,
            "new_tokens": timing.new_tokens,
            "new_tokens_per_s": timing.new_tokens as f64 / generate_s.max(1e-9),
        })),
        "outside_model_seconds": run_s - generate_s - loglikelihood_s,
        "gpu_memory_mib": {
            "source": "nvidia-smi memory.used, sampled every 20 ms (device-wide)",
            "peak": peak_mib,
        },
    });
    let _ = std::fs::remove_dir_all(work_dir.join("tokenizer"));
    Ok(report)
}

/// The tokenizer in `dir` with no end-of-sequence ids (see the module doc), loaded from a copy
/// whose tokenizer_config.json names no `eos_token` and which has no generation_config.json.
fn tokenizer_without_stop_tokens(dir: &Path, work_dir: &Path) -> Result<Tokenizer> {
    let copy = work_dir.join("tokenizer");
    std::fs::create_dir_all(&copy)?;
    std::fs::copy(dir.join("tokenizer.json"), copy.join("tokenizer.json"))
        .with_context(|| format!("copying {}/tokenizer.json", dir.display()))?;
    let config_path = dir.join("tokenizer_config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let mut config: Value = serde_json::from_str(&text)?;
    if let Value::Object(fields) = &mut config {
        fields.remove("eos_token");
    }
    std::fs::write(
        copy.join("tokenizer_config.json"),
        serde_json::to_string(&config)?,
    )?;
    let tokenizer = Tokenizer::from_hf_dir(&copy)?;
    if !tokenizer.eos_token_ids().is_empty() {
        bail!("the tokenizer copy still has stop ids");
    }
    Ok(tokenizer)
}

/// The first `n` items of each method in the runner's order (grader kind, then prompt length).
fn warmup_items(items: &[TestItem], n: usize) -> Vec<TestItem> {
    let mut ordered: Vec<&TestItem> = items.iter().collect();
    ordered.sort_by_key(|item| (item.grader.kind(), item.prompt.len()));
    let (choice, other): (Vec<&TestItem>, Vec<&TestItem>) = ordered
        .into_iter()
        .partition(|item| matches!(item.grader, Grader::MultipleChoice { .. }));
    choice
        .into_iter()
        .take(n)
        .chain(other.into_iter().take(n))
        // Other ids than the timed run's, so nothing is shared between the two.
        .map(|item| TestItem {
            id: format!("warmup-{}", item.id),
            ..item.clone()
        })
        .collect()
}

/// Token counts of the work, tokenised as `LocalModel` does: log-likelihood requests
/// (`Question: ...\nAnswer:` + " choice", context and continuation), chat prompts.
struct Work {
    loglikelihood_tokens: usize,
    prompt_tokens: usize,
}

fn token_counts(model: &Pretrained, items: &[TestItem]) -> Result<Work> {
    let mut work = Work {
        loglikelihood_tokens: 0,
        prompt_tokens: 0,
    };
    for item in items {
        match &item.grader {
            Grader::MultipleChoice { choices, .. } => {
                let context = format!("Question: {}\nAnswer:", item.question);
                for choice in choices {
                    let (context, continuation) =
                        LocalModel::encode_pair(model, &context, &format!(" {choice}"))?;
                    work.loglikelihood_tokens += context.len() + continuation.len();
                }
            }
            _ => {
                let messages = [llama::ChatMessage::new("user", item.prompt.clone())];
                work.prompt_tokens += model.chat_prompt(&messages)?.len();
            }
        }
    }
    Ok(work)
}

/// Times each call of the wrapped model by method (the runner calls one batch at a time).
struct Timed<'a> {
    inner: &'a LocalModel,
    totals: Mutex<Totals>,
}

#[derive(Clone, Copy, Default)]
struct Totals {
    loglikelihood: Duration,
    loglikelihood_calls: usize,
    loglikelihood_requests: usize,
    generate: Duration,
    generate_calls: usize,
    generate_requests: usize,
    new_tokens: usize,
}

impl<'a> Timed<'a> {
    fn new(inner: &'a LocalModel) -> Self {
        Self {
            inner,
            totals: Mutex::new(Totals::default()),
        }
    }

    fn reset(&self) {
        *self.totals.lock().expect("timer lock") = Totals::default();
    }

    fn totals(&self) -> Totals {
        *self.totals.lock().expect("timer lock")
    }
}

impl LanguageModel for Timed<'_> {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn supports_loglikelihood(&self) -> bool {
        self.inner.supports_loglikelihood()
    }

    fn loglikelihood(
        &self,
        requests: &[LoglikelihoodRequest],
    ) -> std::result::Result<Vec<Loglikelihood>, ModelError> {
        let started = Instant::now();
        let answers = self.inner.loglikelihood(requests)?;
        let mut totals = self.totals.lock().map_err(|_| "timer lock poisoned")?;
        totals.loglikelihood += started.elapsed();
        totals.loglikelihood_calls += usize::from(!requests.is_empty());
        totals.loglikelihood_requests += requests.len();
        Ok(answers)
    }

    fn generate(
        &self,
        requests: &[GenerationRequest],
    ) -> std::result::Result<Vec<String>, ModelError> {
        let started = Instant::now();
        let outputs = self.inner.generate(requests)?;
        let mut totals = self.totals.lock().map_err(|_| "timer lock poisoned")?;
        totals.generate += started.elapsed();
        totals.generate_calls += usize::from(!requests.is_empty());
        totals.generate_requests += requests.len();
        // No stop tokens or strings: every row generates exactly its limit.
        totals.new_tokens += requests.iter().map(|r| r.max_new_tokens).sum::<usize>();
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, prompt: &str, grader: Grader) -> TestItem {
        TestItem {
            id: id.into(),
            family: "test".into(),
            source: "test".into(),
            split: records::mining::Split::Mine,
            prompt: prompt.into(),
            question: prompt.into(),
            gold: "x".into(),
            grader,
        }
    }

    /// The whole path on the CPU with a tiny random model: one record per item, every
    /// generation at the cap, both methods timed.
    #[test]
    fn tiny_model_on_cpu_grades_every_item() {
        let dir = tempfile::tempdir().unwrap();
        let items = [
            item(
                "a",
                "Which is a colour?",
                Grader::MultipleChoice {
                    choices: vec!["red".into(), "seven".into(), "table".into()],
                    answer: 0,
                },
            ),
            item(
                "b",
                "Which is larger?",
                Grader::MultipleChoice {
                    choices: vec!["two".into(), "nine".into()],
                    answer: 1,
                },
            ),
            item(
                "c",
                "Name the capital of France.",
                Grader::ShortAnswer {
                    aliases: vec!["Paris".into()],
                },
            ),
            item(
                "d",
                "What is 2 + 3?",
                Grader::Number {
                    value: 5.0,
                    tolerance: 0.0,
                },
            ),
        ];
        let testset = dir.path().join("testset.jsonl");
        records::jsonl::write_jsonl_atomic(&testset, items.iter()).unwrap();
        let options = Options {
            device: "cpu".into(),
            precision: Some(Precision::F32),
            shape: "tiny".into(),
            testset,
            tokenizer: assets::AssetPaths::locate().smollm2_dir(),
            limit: None,
            batch_size: 2,
            max_new_tokens: 5,
            warmup_batches: 1,
            work_dir: Some(dir.path().join("work")),
        };
        let report = run(&options).unwrap();
        assert_eq!(report["items"], 4);
        assert_eq!(report["loglikelihood"]["items"], 2);
        assert_eq!(report["loglikelihood"]["requests"], 5);
        assert_eq!(report["generative"]["items"], 2);
        assert_eq!(report["generative"]["new_tokens"], 10);
        let results: Vec<records::eval::EvalRecord> =
            records::jsonl::read_jsonl(dir.path().join("work/results.jsonl")).unwrap();
        assert_eq!(results.len(), 4);
    }
}
