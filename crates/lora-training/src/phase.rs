//! Phase 1A as one library call: LoRA-train a model on an instruction set, merge the adapter into
//! the base (checked against base + adapter logits), and validate base and merged model on
//! held-out exact match and MMLU / GSM8K / HumanEval. Everything lands in the run directory;
//! `report.md` sums it up. Phase 1C trains through the same call (its mix as the data, phase
//! 1A's merged model as the base), so both phases get the same checkpoints, resume, plots and
//! verified merge.
//!
//! ```no_run
//! use lora_training::phase::{Phase1aConfig, Phase1aOptions, run_phase1a, DEFAULT_CONFIG};
//! use lora_training::Group;
//! use llama::burn::tensor::Device;
//!
//! let config = Phase1aConfig::parse_with_overrides(DEFAULT_CONFIG, "phase1a.toml", &[
//!     "data.train=\"my.jsonl\"".into(), "train.max_steps=100".into(),
//! ])?;
//! let outcome = run_phase1a(&config, &Phase1aOptions::default(), &Device::flex(), &Group::single())?;
//! println!("{}", outcome.report_markdown.unwrap().display());
//! # Ok::<(), lora_training::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use benchmarks::sandbox::SandboxLimits;
use benchmarks::{
    BenchmarkResult, Gsm8kOptions, HumanEvalOptions, LanguageModel, LocalModel, MmluOptions,
};
use llama::burn::module::Module;
use llama::burn::tensor::Device;
use llama::generate::{GenerationConfig, generate};
use llama::{ExportOptions, HostDType, Llama, Pretrained};
use pipeline::ModelSection;
use pipeline::report::{Section, Table, benchmark_table, write_report_files};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::multiple_choice_conversation;
use crate::error::{Error, Result, io_error};
use crate::tokenized::TokenizedSplit;
use crate::{
    DataConfig, Group, LoraConfig, MaskingAudit, MergeCheck, TrainConfig, TrainingSetup,
    attach_adapters, eval_loss, freeze_base, merge_verified, save_peft_adapter, tokenize_data,
    train, training_device,
};

/// The documented default configuration (SmolLM2 on the arithmetic demo task); every field is
/// explained in this file.
pub const DEFAULT_CONFIG: &str = include_str!("../phase1a.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase1aConfig {
    pub run_dir: PathBuf,
    pub model: ModelSection,
    pub data: DataConfig,
    #[serde(default)]
    pub lora: LoraConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub merge: MergeSection,
    #[serde(default)]
    pub validate: ValidateSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergeSection {
    pub probes: usize,
    pub dtype: Option<String>,
    pub max_shard_bytes: u64,
}

impl Default for MergeSection {
    fn default() -> Self {
        Self {
            probes: 8,
            dtype: None,
            max_shard_bytes: 5_000_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateSection {
    pub enabled: bool,
    pub exact_match_examples: usize,
    pub benchmarks: Vec<String>,
    pub mmlu_limit: Option<usize>,
    /// MMLU subjects to run; all 57 when absent.
    pub mmlu_subjects: Option<Vec<String>>,
    pub gsm8k_limit: Option<usize>,
    pub humaneval_limit: Option<usize>,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for ValidateSection {
    fn default() -> Self {
        Self {
            enabled: true,
            exact_match_examples: 40,
            benchmarks: vec!["mmlu".into(), "gsm8k".into(), "humaneval".into()],
            mmlu_limit: Some(1),
            mmlu_subjects: None,
            gsm8k_limit: Some(4),
            humaneval_limit: Some(4),
            batch_size: 8,
            seed: 1234,
        }
    }
}

impl ValidateSection {
    /// Checks the benchmark names (`field` prefixes the error, e.g. `validate`).
    pub fn check(&self, field: &str) -> Result<()> {
        for name in &self.benchmarks {
            if !["mmlu", "gsm8k", "humaneval"].contains(&name.as_str()) {
                return Err(Error::InvalidConfig(format!(
                    "{field}.benchmarks: unknown `{name}` (accepted: mmlu, gsm8k, humaneval)"
                )));
            }
        }
        Ok(())
    }
}

impl Phase1aConfig {
    /// Parses `text` (from `origin`, named in errors), then applies `section.field=value`
    /// overrides (`--set`), then checks the values.
    pub fn parse_with_overrides(text: &str, origin: &str, overrides: &[String]) -> Result<Self> {
        let config: Self = pipeline::parse_config(text, origin, overrides)
            .map_err(|error| Error::InvalidConfig(error.to_string()))?;
        config.check(origin)?;
        Ok(config)
    }

    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        Self::parse_with_overrides(&text, &path.display().to_string(), overrides)
    }

    fn check(&self, origin: &str) -> Result<()> {
        let named = |error: Error| Error::InvalidConfig(format!("{origin}: {error}"));
        self.lora.validate().map_err(named)?;
        self.train.validate().map_err(named)?;
        self.validate.check("validate").map_err(named)
    }
}

/// How a phase 1A call runs (what the command line says beyond the config file).
#[derive(Debug, Clone, Default)]
pub struct Phase1aOptions {
    /// Continue from the newest checkpoint in the run directory.
    pub resume: bool,
    /// Stop after training and the adapter export (no merge, no validation).
    pub train_only: bool,
}

/// What a phase 1A call produced. On a non-writer rank only the training fields are set.
#[derive(Debug, Clone)]
pub struct Phase1aOutcome {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub final_eval_loss: Option<f64>,
    pub adapter_dir: PathBuf,
    /// The merged HF directory (absent with `train_only` and on non-writer ranks).
    pub merged_dir: Option<PathBuf>,
    /// `(examples, before, after)` greedy exact match of the held-out replies.
    pub exact_match: Option<(usize, f64, f64)>,
    pub before: Vec<BenchmarkResult>,
    pub after: Vec<BenchmarkResult>,
    pub report_markdown: Option<PathBuf>,
}

/// Arithmetic questions from the assets' task pool as chat JSONL: 64 held out, 2,000 to train.
/// Returns `(train, eval)` paths under `dir`.
pub fn write_demo_data(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let paths = assets::AssetPaths::locate();
    let pool = paths
        .require(
            &paths
                .pool()
                .join("allenai__basic_arithmetic__none__validation.jsonl"),
        )
        .map_err(|error| Error::InvalidConfig(format!("the demo needs the task pool: {error}")))?;
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
    let (eval, train) = conversations.split_at(64.min(conversations.len()));
    let (train_path, eval_path) = (dir.join("train.jsonl"), dir.join("eval.jsonl"));
    records::jsonl::write_jsonl_atomic(&train_path, train)?;
    records::jsonl::write_jsonl_atomic(&eval_path, eval)?;
    Ok((train_path, eval_path))
}

/// Runs phase 1A on `device` (already configured for the model's precision) as one rank of
/// `group`: train, export the PEFT adapter, then on the writer rank merge with verification,
/// validate before and after, and write `report.md`.
pub fn run_phase1a(
    config: &Phase1aConfig,
    options: &Phase1aOptions,
    device: &Device,
    group: &Group,
) -> Result<Phase1aOutcome> {
    let run_dir = &config.run_dir;
    if group.is_writer() {
        std::fs::create_dir_all(run_dir).map_err(io_error(run_dir))?;
        let text = toml::to_string_pretty(config)
            .map_err(|error| Error::InvalidConfig(error.to_string()))?;
        records::jsonl::write_atomic(run_dir.join("config.toml"), text.as_bytes())?;
    }
    let started = Instant::now();
    let train_device = training_device(device);
    tracing::info!("loading {}", config.model.path.display());
    let pretrained = Pretrained::load(&config.model.path, &train_device)?;
    let tokenizer = pretrained.tokenizer.clone();
    let template = tokenizer.chat_template()?.ok_or_else(|| {
        Error::InvalidConfig(format!(
            "model.path {}: the model has no chat template, and training renders data through it",
            config.model.path.display()
        ))
    })?;
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
            resume: options.resume,
            stop_after: None,
            group: Some(group),
        },
    )?;
    let adapter_dir = run_dir.join("adapter");
    let mut result = Phase1aOutcome {
        run_dir: run_dir.clone(),
        steps: outcome.steps,
        final_eval_loss: outcome.final_eval_loss,
        adapter_dir: adapter_dir.clone(),
        merged_dir: None,
        exact_match: None,
        before: Vec::new(),
        after: Vec::new(),
        report_markdown: None,
    };
    if !group.is_writer() {
        // The adapters are the same on every rank: rank 0 exports, merges and validates.
        return Ok(result);
    }
    let trained = outcome.model.valid();
    save_peft_adapter(&trained, &config.lora, Some(&base_name), &adapter_dir)?;
    tracing::info!(
        "adapter written to {} (final eval loss {:?})",
        adapter_dir.display(),
        outcome.final_eval_loss
    );
    if options.train_only {
        return Ok(result);
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
        Some(other) => {
            return Err(Error::InvalidConfig(format!(
                "merge.dtype: unknown `{other}` (accepted: f32, bf16, f16)"
            )));
        }
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
    result.merged_dir = Some(merged_dir.clone());

    let base = trained.clone().remove_adapters();
    let (base_loss, _) = eval_loss(&base, &data.eval, config.train.micro_batch_size, pad);
    if config.validate.enabled {
        let examples = exact_match_examples(&data.eval, config.validate.exact_match_examples);
        if !examples.is_empty() {
            let before = exact_match(&base, &tokenizer, &examples, config.validate.batch_size)?;
            let after = exact_match(&merged, &tokenizer, &examples, config.validate.batch_size)?;
            tracing::info!("held-out exact match {before:.3} -> {after:.3}");
            result.exact_match = Some((examples.len(), before, after));
        }
        // The base is already in memory; the merged model is read back from what was written,
        // so validation also proves the exported directory loads.
        let base_model = Pretrained {
            model: base,
            tokenizer: tokenizer.clone(),
        };
        result.before = validate_model(
            base_model,
            "base",
            &config.validate,
            &run_dir.join("validate/base"),
        )?;
        let merged_model = Pretrained::load(&merged_dir, device)?;
        result.after = validate_model(
            merged_model,
            "merged",
            &config.validate,
            &run_dir.join("validate/merged"),
        )?;
    }
    let c = config;
    let report = Phase1aReport {
        model: c.model.path.display().to_string(),
        train_data: c.data.train.display().to_string(),
        lora: format!(
            "LoRA r={} alpha={} on {}",
            c.lora.rank,
            c.lora.alpha,
            c.lora.target_modules.join(", ")
        ),
        steps: outcome.steps,
        train_seconds: started.elapsed().as_secs_f64(),
        padding: outcome.padding_fraction,
        base_loss,
        tuned_loss: outcome.final_eval_loss,
        merge_check: check,
        exact_match: result.exact_match,
        before: result.before.clone(),
        after: result.after.clone(),
        audit: data.meta.train_audit.clone(),
        loss_svg: std::fs::read_to_string(run_dir.join(crate::trainer::LOSS_PLOT_FILE))
            .unwrap_or_default(),
    };
    let (report_path, _) = report.write(run_dir)?;
    result.report_markdown = Some(report_path);
    Ok(result)
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

/// Runs the configured benchmarks on `pretrained` (named `name` in the records), writing their
/// records and results under `out`.
pub fn validate_model(
    pretrained: Pretrained,
    name: &str,
    settings: &ValidateSection,
    out: &Path,
) -> Result<Vec<BenchmarkResult>> {
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
            other => {
                return Err(Error::InvalidConfig(format!(
                    "validate.benchmarks: unknown `{other}`"
                )));
            }
        }
        .map_err(|error| Error::Validation {
            benchmark: benchmark.clone(),
            model: name.to_string(),
            source: Box::new(error),
        })?;
        results.push(result);
    }
    Ok(results)
}

/// What phase 1A did, as `report.{md,html,json}` show it (the JSON is what the loop's combined
/// report reads back when it reuses this phase).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase1aReport {
    pub model: String,
    pub train_data: String,
    pub lora: String,
    pub steps: usize,
    pub train_seconds: f64,
    pub padding: f64,
    pub base_loss: f64,
    pub tuned_loss: Option<f64>,
    pub merge_check: MergeCheck,
    /// `(examples, before, after)` greedy exact match of the held-out replies.
    pub exact_match: Option<(usize, f64, f64)>,
    pub before: Vec<BenchmarkResult>,
    pub after: Vec<BenchmarkResult>,
    pub audit: MaskingAudit,
    /// The training and held-out loss curves (`loss.svg`), inlined into the HTML.
    pub loss_svg: String,
}

impl Phase1aReport {
    /// The report as sections (the loop's report embeds them).
    pub fn sections(&self) -> Vec<Section> {
        let mut held_out = vec![vec![
            "loss per target token".to_string(),
            format!("{:.4}", self.base_loss),
            self.tuned_loss
                .map_or("–".to_string(), |l| format!("{l:.4}")),
        ]];
        if let Some((n, before, after)) = self.exact_match {
            held_out.push(vec![
                format!("exact match ({n} examples)"),
                format!("{before:.3}"),
                format!("{after:.3}"),
            ]);
        }
        let mut sections = vec![Section {
            title: "Training".into(),
            paragraphs: vec![format!(
                "Model `{}` on `{}`, {}; {} steps ({:.0} s including data preparation), padding \
                 {:.1}% of computed positions.",
                self.model,
                self.train_data,
                self.lora,
                self.steps,
                self.train_seconds,
                100.0 * self.padding,
            )],
            table: Some(Table {
                headers: vec!["held out".into(), "base".into(), "tuned".into()],
                rows: held_out,
            }),
            markdown_extra: "\n![loss](loss.svg)\n".into(),
            html_extra: format!("{}\n", self.loss_svg),
        }];
        sections.push(Section {
            title: "Merge check".into(),
            paragraphs: vec![format!(
                "Merged logits vs base + adapter on {} probes: max |Δ| {:.3e}, tolerance {:.3e} \
                 (largest logit {:.2}).",
                self.merge_check.probes,
                self.merge_check.max_abs_diff,
                self.merge_check.tolerance,
                self.merge_check.max_abs_logit
            )],
            ..Section::default()
        });
        if !self.after.is_empty() {
            sections.push(Section {
                title: "Benchmarks (base → merged)".into(),
                paragraphs: vec!["Means with 95% bootstrap intervals.".into()],
                table: Some(benchmark_table(&[
                    ("base", &self.before),
                    ("merged", &self.after),
                ])),
                ..Section::default()
            });
        }
        let audit = &self.audit;
        sections.push(Section {
            title: "Data".into(),
            paragraphs: vec![format!(
                "{} examples, {} tokens, {} trained; truncated {}, skipped (no target left after \
                 truncation) {}.",
                audit.examples,
                audit.tokens,
                audit.trained_tokens,
                audit.truncated,
                audit.skipped_no_target_after_truncation
            )],
            table: Some(Table {
                headers: vec!["role".into(), "tokens".into(), "trained".into()],
                rows: audit
                    .per_role
                    .iter()
                    .map(|(role, counts)| {
                        vec![
                            role.clone(),
                            counts.tokens.to_string(),
                            counts.trained.to_string(),
                        ]
                    })
                    .collect(),
            }),
            ..Section::default()
        });
        sections
    }

    /// Writes `report.md`, `report.html` and `report.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        Ok(write_report_files(
            dir,
            "Phase 1A: LoRA training",
            &self.sections(),
            self,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_default_parses_and_names_bad_fields() {
        let config =
            Phase1aConfig::parse_with_overrides(DEFAULT_CONFIG, "phase1a.toml", &[]).unwrap();
        assert_eq!(config.lora.rank, 8);
        assert_eq!(config.train.max_steps, Some(40));
        let typo = DEFAULT_CONFIG.replace("micro_batch_size", "micro_batch");
        let error = Phase1aConfig::parse_with_overrides(&typo, "x.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("micro_batch"), "{error}");
        let format = DEFAULT_CONFIG.replace("format = \"auto\"", "format = \"parquet\"");
        let error = Phase1aConfig::parse_with_overrides(&format, "x.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("parquet") && error.contains("sharegpt"),
            "{error}"
        );
        let unknown = DEFAULT_CONFIG.replace(
            "benchmarks = [\"mmlu\", \"gsm8k\", \"humaneval\"]",
            "benchmarks = [\"mmlu\", \"mbpp\"]",
        );
        let error = Phase1aConfig::parse_with_overrides(&unknown, "x.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("x.toml") && error.contains("mbpp"),
            "{error}"
        );
    }

    #[test]
    fn overrides_set_typed_values_and_bad_keys_are_named() {
        let overrides = [
            "train.max_steps=2".to_string(),
            "validate.benchmarks=[\"mmlu\"]".to_string(),
            "validate.mmlu_subjects=[\"anatomy\"]".to_string(),
            "run_dir=elsewhere/run".to_string(),
        ];
        let config = Phase1aConfig::parse_with_overrides(DEFAULT_CONFIG, "x", &overrides).unwrap();
        assert_eq!(config.train.max_steps, Some(2));
        assert_eq!(config.validate.benchmarks, ["mmlu"]);
        assert_eq!(
            config.validate.mmlu_subjects.as_deref(),
            Some(&["anatomy".to_string()][..])
        );
        assert_eq!(config.run_dir, Path::new("elsewhere/run"));
        let error = Phase1aConfig::parse_with_overrides(
            DEFAULT_CONFIG,
            "x",
            &["train.max_stepz=2".to_string()],
        )
        .unwrap_err();
        assert!(error.to_string().contains("max_stepz"), "{error}");
        let error =
            Phase1aConfig::parse_with_overrides(DEFAULT_CONFIG, "x", &["train".to_string()])
                .unwrap_err();
        assert!(error.to_string().contains("KEY=VALUE"), "{error}");
    }
}
