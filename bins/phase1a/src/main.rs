//! Phase 1A: LoRA-train a model on an instruction set, merge the adapter into the base (checked
//! against base + adapter logits), and validate base and merged model on held-out exact match
//! and MMLU / GSM8K / HumanEval. Everything lands in the run directory; `report.md` sums it up.
//!
//! `phase1a --config FILE [--resume]`, or `phase1a --demo` for the embedded default
//! (SmolLM2-135M-Instruct on arithmetic from the assets' task pool).

mod config;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use benchmarks::sandbox::SandboxLimits;
use benchmarks::{
    BenchmarkResult, Gsm8kOptions, HumanEvalOptions, LanguageModel, LocalModel, MmluOptions,
};
use clap::Parser;
use llama::burn::module::Module;
use llama::burn::tensor::Device;
use llama::device::{Precision, select_device};
use llama::generate::{GenerationConfig, generate};
use llama::{ExportOptions, HostDType, Llama, Pretrained};
use lora_training::data::multiple_choice_conversation;
use lora_training::distributed::{launch, rank_device};
use lora_training::tokenized::TokenizedSplit;
use lora_training::{
    Group, MergeCheck, TrainingSetup, attach_adapters, eval_loss, freeze_base, merge_verified,
    save_peft_adapter, tokenize_data, train, training_device,
};
use serde_json::json;

use crate::config::{DEFAULT_CONFIG, Phase1aConfig};

#[derive(Parser, Debug)]
#[command(about = "Phase 1A: LoRA training, verified merge, validation before and after")]
struct Args {
    /// Configuration file (TOML); see bins/phase1a/phase1a.toml for every field.
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
    let precision = config
        .model
        .precision
        .as_deref()
        .map(str::parse::<Precision>)
        .transpose()?;
    let device = select_device(&rank_device(&config.model.device), precision)?;
    let group = Group::from_env(&device)?;
    if args.demo {
        let dir = config.run_dir.join("demo-data");
        let (train, eval) = (dir.join("train.jsonl"), dir.join("eval.jsonl"));
        // Rank 0 writes the files every rank then reads.
        if group.is_writer() {
            write_demo_data(&train, &eval)?;
        }
        group.barrier();
        config.data.train = train;
        config.data.eval = Some(eval);
    }
    run(&config, &args, &device, &group)
}

/// Arithmetic questions from the assets' task pool as chat JSONL: 64 held out, 2,000 to train.
fn write_demo_data(train_path: &Path, eval_path: &Path) -> Result<()> {
    let paths = assets::AssetPaths::locate();
    let pool = paths
        .require(
            &paths
                .pool()
                .join("allenai__basic_arithmetic__none__validation.jsonl"),
        )
        .context("the demo needs the task pool")?;
    let items: Vec<serde_json::Value> = records::jsonl::read_jsonl(&pool)?;
    let conversations: Vec<serde_json::Value> = items
        .iter()
        .filter_map(multiple_choice_conversation)
        .map(|messages| {
            json!({"messages": messages.iter()
                .map(|m| json!({"role": m.role, "content": m.content}))
                .collect::<Vec<_>>()})
        })
        .collect();
    let (eval, train) = conversations.split_at(64);
    records::jsonl::write_jsonl_atomic(train_path, train)?;
    records::jsonl::write_jsonl_atomic(eval_path, eval)?;
    Ok(())
}

fn run(config: &Phase1aConfig, args: &Args, device: &Device, group: &Group) -> Result<()> {
    let run_dir = &config.run_dir;
    if group.is_writer() {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        records::jsonl::write_atomic(
            run_dir.join("config.toml"),
            toml::to_string_pretty(config)?.as_bytes(),
        )?;
    }
    let started = Instant::now();
    let train_device = training_device(device);
    tracing::info!("loading {}", config.model.path.display());
    let pretrained = Pretrained::load(&config.model.path, &train_device)
        .with_context(|| format!("loading {}", config.model.path.display()))?;
    let tokenizer = pretrained.tokenizer.clone();
    let template = tokenizer
        .chat_template()?
        .context("the model has no chat template: training renders data through it")?;
    // Rank 0 builds the token cache; the others wait for it, then find it and reuse it.
    if !group.is_writer() {
        group.barrier();
    }
    let data = tokenize_data(&config.data, &tokenizer, &template, &run_dir.join("data"))?;
    if group.is_writer() {
        group.barrier();
    }
    let audit = &data.meta.train_audit;
    tracing::info!(
        "train: {} examples, {} tokens ({} trained), {} truncated, {} skipped; eval: {} examples",
        audit.examples,
        audit.tokens,
        audit.trained_tokens,
        audit.truncated,
        audit.skipped_no_target_after_truncation,
        data.meta.eval_audit.examples
    );
    let pad = tokenizer
        .pad_token_id()
        .or_else(|| tokenizer.eos_token_ids().first().copied())
        .unwrap_or(0);

    let base_name = config.model.path.display().to_string();
    let mut model = freeze_base(pretrained.model);
    attach_adapters(&mut model, &config.lora, config.train.seed)?;
    let outcome = train(
        model,
        &TrainingSetup {
            data: &data,
            train: &config.train,
            lora: &config.lora,
            run_dir,
            pad_token_id: pad,
            base_model: Some(&base_name),
            resume: args.resume,
            stop_after: None,
            group: Some(group),
        },
    )?;
    if !group.is_writer() {
        // The adapters are the same on every rank: rank 0 exports, merges and validates.
        return Ok(());
    }
    let trained = outcome.model.valid();
    save_peft_adapter(
        &trained,
        &config.lora,
        Some(&base_name),
        &run_dir.join("adapter"),
    )?;
    tracing::info!(
        "adapter written to {} (final eval loss {:?})",
        run_dir.join("adapter").display(),
        outcome.final_eval_loss
    );
    if args.train_only {
        return Ok(());
    }

    let probes = prompts(&data.eval, config.merge.probes);
    let probes = if probes.is_empty() {
        prompts(&data.train, config.merge.probes)
    } else {
        probes
    };
    let (merged, check) = merge_verified(&trained, &probes)?;
    tracing::info!(
        "merge verified on {} probes: max |Δlogit| {:.2e} (tolerance {:.2e})",
        check.probes,
        check.max_abs_diff,
        check.tolerance
    );
    let dtype = match config.merge.dtype.as_deref() {
        None => None,
        Some("f32") => Some(HostDType::F32),
        Some("bf16") => Some(HostDType::BF16),
        Some("f16") => Some(HostDType::F16),
        Some(other) => bail!("merge.dtype: unknown `{other}` (accepted: f32, bf16, f16)"),
    };
    let merged_tensors = merged.tensors();
    let dtype = dtype.unwrap_or_else(|| {
        llama::TensorSource::tensor(&merged_tensors, "model.norm.weight")
            .map(|t| t.dtype)
            .unwrap_or(HostDType::F32)
    });
    let merged_dir = run_dir.join("merged");
    llama::write_hf_dir(
        &merged_dir,
        merged.config(),
        &merged_tensors,
        &tokenizer,
        ExportOptions {
            dtype,
            max_shard_bytes: config.merge.max_shard_bytes,
        },
    )?;
    tracing::info!("merged model written to {}", merged_dir.display());

    let base = trained.clone().remove_adapters();
    let (base_loss, _) = eval_loss(&base, &data.eval, config.train.micro_batch_size, pad);
    let tuned_loss = outcome.final_eval_loss;
    let mut report = Report {
        config,
        steps: outcome.steps,
        train_seconds: started.elapsed().as_secs_f64(),
        padding: outcome.padding_fraction,
        base_loss,
        tuned_loss,
        check,
        exact_match: None,
        before: Vec::new(),
        after: Vec::new(),
        audit: data.meta.train_audit.clone(),
    };
    if config.validate.enabled {
        let examples = exact_match_examples(&data.eval, config.validate.exact_match_examples);
        if !examples.is_empty() {
            let before = exact_match(&base, &tokenizer, &examples, config.validate.batch_size)?;
            let after = exact_match(&merged, &tokenizer, &examples, config.validate.batch_size)?;
            tracing::info!("held-out exact match {before:.3} -> {after:.3}");
            report.exact_match = Some((examples.len(), before, after));
        }
        // The base is already in memory; the merged model is read back from what was written,
        // so validation also proves the exported directory loads.
        let base_model = Pretrained {
            model: base,
            tokenizer: tokenizer.clone(),
        };
        report.before = validate(base_model, "base", config, &run_dir.join("validate/base"))?;
        let merged_model = Pretrained::load(&merged_dir, device)?;
        report.after = validate(
            merged_model,
            "merged",
            config,
            &run_dir.join("validate/merged"),
        )?;
    }
    let markdown = report.markdown();
    records::jsonl::write_atomic(run_dir.join("report.md"), markdown.as_bytes())?;
    println!("{markdown}");
    println!("run directory: {}", run_dir.display());
    Ok(())
}

/// Prompt tokens (everything before the first trained token) of the first `count` examples.
fn prompts(split: &TokenizedSplit, count: usize) -> Vec<Vec<u32>> {
    exact_match_examples(split, count)
        .into_iter()
        .map(|(prompt, _)| prompt)
        .collect()
}

/// `(prompt tokens, reference reply tokens)` of single-reply examples.
fn exact_match_examples(split: &TokenizedSplit, count: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    (0..split.len())
        .filter_map(|index| {
            let tokens = split.tokens(index);
            let trained = split.trained(index);
            let first = trained.iter().position(|&t| t)?;
            let last = trained.iter().rposition(|&t| t)?;
            // Only examples with one contiguous reply: the prompt is everything before it.
            if trained[first..=last].iter().any(|&t| !t) {
                return None;
            }
            Some((tokens[..first].to_vec(), tokens[first..=last].to_vec()))
        })
        .take(count)
        .collect()
}

/// Share of examples whose greedy reply equals the reference reply (special tokens and
/// surrounding whitespace ignored).
fn exact_match(
    model: &Llama,
    tokenizer: &llama::Tokenizer,
    examples: &[(Vec<u32>, Vec<u32>)],
    batch_size: usize,
) -> Result<f64> {
    let longest = examples.iter().map(|(_, r)| r.len()).max().unwrap_or(1);
    let config = GenerationConfig {
        max_new_tokens: longest + 8,
        batch_size,
        stop_token_ids: tokenizer.eos_token_ids().to_vec(),
        ..Default::default()
    };
    let prompts: Vec<Vec<u32>> = examples.iter().map(|(p, _)| p.clone()).collect();
    let outputs = generate(model, &prompts, &config, &model.device())?;
    let mut hits = 0;
    for (output, (_, reference)) in outputs.iter().zip(examples) {
        let got = tokenizer.decode(&output.tokens, true)?;
        let want = tokenizer.decode(reference, true)?;
        if got.trim() == want.trim() {
            hits += 1;
        }
    }
    Ok(hits as f64 / examples.len() as f64)
}

fn validate(
    pretrained: Pretrained,
    name: &str,
    config: &Phase1aConfig,
    out: &Path,
) -> Result<Vec<BenchmarkResult>> {
    let settings = &config.validate;
    let model = LocalModel::new(name, pretrained, settings.batch_size);
    let data_dir = benchmarks::data::default_data_dir();
    let mut results = Vec::new();
    for benchmark in &settings.benchmarks {
        tracing::info!("validating {name}: {benchmark}");
        let result = match benchmark.as_str() {
            "mmlu" => benchmarks::run_mmlu(
                &model as &dyn LanguageModel,
                &MmluOptions {
                    limit: settings.mmlu_limit,
                    subjects: settings.mmlu_subjects.clone(),
                    seed: settings.seed,
                    batch_size: settings.batch_size,
                    data_dir: data_dir.clone(),
                    ..MmluOptions::default()
                },
                out,
            ),
            "gsm8k" => benchmarks::run_gsm8k(
                &model,
                &Gsm8kOptions {
                    limit: settings.gsm8k_limit,
                    seed: settings.seed,
                    batch_size: settings.batch_size,
                    data_dir: data_dir.clone(),
                    ..Gsm8kOptions::default()
                },
                out,
            ),
            "humaneval" => benchmarks::run_humaneval(
                &model,
                &HumanEvalOptions {
                    limit: settings.humaneval_limit,
                    seed: settings.seed,
                    batch_size: settings.batch_size,
                    sandbox_limits: SandboxLimits::default(),
                    data_dir: data_dir.clone(),
                    ..HumanEvalOptions::default()
                },
                out,
            ),
            other => bail!("validate.benchmarks: unknown `{other}`"),
        }
        .with_context(|| format!("{benchmark} on the {name} model"))?;
        results.push(result);
    }
    Ok(results)
}

struct Report<'a> {
    config: &'a Phase1aConfig,
    steps: usize,
    train_seconds: f64,
    padding: f64,
    base_loss: f64,
    tuned_loss: Option<f64>,
    check: MergeCheck,
    exact_match: Option<(usize, f64, f64)>,
    before: Vec<BenchmarkResult>,
    after: Vec<BenchmarkResult>,
    audit: lora_training::MaskingAudit,
}

impl Report<'_> {
    fn markdown(&self) -> String {
        let c = self.config;
        let mut out = format!(
            "# Phase 1A report\n\nModel `{}` on `{}`, LoRA r={} alpha={} on {}; {} steps ({:.0} s \
             including data preparation), padding {:.1}% of computed positions.\n\n\
             ![loss](loss.svg)\n\n## Held-out\n\n| | base | tuned |\n|---|---:|---:|\n\
             | loss per target token | {:.4} | {} |\n",
            c.model.path.display(),
            c.data.train.display(),
            c.lora.rank,
            c.lora.alpha,
            c.lora.target_modules.join(", "),
            self.steps,
            self.train_seconds,
            100.0 * self.padding,
            self.base_loss,
            self.tuned_loss
                .map_or("–".to_string(), |l| format!("{l:.4}")),
        );
        if let Some((n, before, after)) = self.exact_match {
            out += &format!("| exact match ({n} examples) | {before:.3} | {after:.3} |\n");
        }
        out += &format!(
            "\n## Merge check\n\nMerged logits vs base + adapter on {} probes: max |Δ| {:.3e}, \
             tolerance {:.3e} (largest logit {:.2}).\n",
            self.check.probes,
            self.check.max_abs_diff,
            self.check.tolerance,
            self.check.max_abs_logit
        );
        if !self.after.is_empty() {
            out += "\n## Benchmarks (base → merged)\n\n";
            out += &benchmarks::comparison_markdown(&self.before, &self.after);
            out += "\n";
        }
        out += &format!(
            "\n## Data\n\n{} examples, {} tokens, {} trained; truncated {}, skipped (no target \
             left after truncation) {}.\n\n| role | tokens | trained |\n|---|---:|---:|\n",
            self.audit.examples,
            self.audit.tokens,
            self.audit.trained_tokens,
            self.audit.truncated,
            self.audit.skipped_no_target_after_truncation
        );
        for (role, counts) in &self.audit.per_role {
            out += &format!("| {role} | {} | {} |\n", counts.tokens, counts.trained);
        }
        out
    }
}
