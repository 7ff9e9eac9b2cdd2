//! The phase 1C configuration (`phase1c.toml` documents every field and is the embedded default).

use std::path::{Path, PathBuf};

use failure_mining::run::RunConfig;
use llm_client::LlmSettings;
use lora_training::phase::{MergeSection, ValidateSection};
use lora_training::{LoraConfig, TrainConfig};
use pipeline::ModelSection;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The documented default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("../phase1c.toml");

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase1cConfig {
    pub run_dir: PathBuf,
    /// Phase 1B's run directory: its test set, patterns, failures and holdout membership.
    pub phase1b_dir: PathBuf,
    /// The student: the model phase 1B tested (phase 1A's merged model).
    pub model: ModelSection,
    /// The sentence encoder for embedding-neighbour decontamination.
    pub embedding_model: PathBuf,
    #[serde(default)]
    pub teacher: LlmSettings,
    #[serde(default)]
    pub judge: JudgeSection,
    #[serde(default)]
    pub generate: GenerateSection,
    #[serde(default)]
    pub verify: VerifySection,
    #[serde(default)]
    pub dedup: DedupSection,
    #[serde(default)]
    pub decontaminate: DecontaminateSection,
    pub mix: MixSection,
    #[serde(default)]
    pub train: TrainSection,
    /// How the holdout items are graded after training (keep it equal to phase 1B's `[run]`, so
    /// before and after are graded alike).
    #[serde(default)]
    pub holdout: RunConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeSection {
    /// Examples scoring above this (1-10) are kept.
    pub threshold: f32,
    /// Extra attempts (another seed each) when an answer does not parse as a score.
    pub retries: usize,
    pub max_tokens: u32,
    /// Judge the labelled calibration set too (the shipped one plus `calibration`), and report
    /// the threshold's precision and recall on it.
    pub calibrate: bool,
    /// Your own labelled examples (JSONL: pattern, description, instruction, response, good).
    pub calibration: Option<PathBuf>,
    pub llm: LlmSettings,
}

impl Default for JudgeSection {
    fn default() -> Self {
        Self {
            threshold: 8.0,
            retries: 2,
            max_tokens: 96,
            calibrate: true,
            calibration: None,
            llm: LlmSettings::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateSection {
    /// Examples requested over all patterns (40,000 in production).
    pub total_examples: usize,
    /// Each pattern's share is at least this and at most `cap`.
    pub floor: usize,
    pub cap: usize,
    /// `targeted`, `rationalize` or both.
    pub strategies: Vec<String>,
    /// Of a pattern's share, at most this fraction is `rationalize` (one per mined failure with
    /// a gold answer); the rest is `targeted`.
    pub rationalize_fraction: f64,
    /// Examples asked for in one targeted request.
    pub examples_per_request: usize,
    /// Mined items shown to the teacher per targeted request (question and gold only).
    pub seeds_per_request: usize,
    pub max_tokens: u32,
    pub temperature: f32,
    /// A folder with the user's own `targeted.txt`, `rationalize.txt`, `rederive.txt`,
    /// `judge.txt` (each missing file: the shipped template).
    pub templates_dir: Option<PathBuf>,
}

impl Default for GenerateSection {
    fn default() -> Self {
        Self {
            total_examples: 40_000,
            floor: 200,
            cap: 10_000,
            strategies: vec!["targeted".into(), "rationalize".into()],
            rationalize_fraction: 0.5,
            examples_per_request: 5,
            seeds_per_request: 3,
            max_tokens: 1536,
            temperature: 0.8,
            templates_dir: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifySection {
    /// Independent re-derivations of a targeted example's short answer by the teacher; all must
    /// agree with it (0 = off).
    pub rederive: usize,
    /// Answers longer than this many characters are not re-derived (kept, counted unverified).
    pub max_answer_chars: usize,
}

impl Default for VerifySection {
    fn default() -> Self {
        Self {
            rederive: 2,
            max_answer_chars: 40,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupSection {
    /// Word shingle length for near-duplicate detection.
    pub shingle: usize,
    /// Jaccard similarity of shingle sets at or above which a later example is a near duplicate.
    pub jaccard: f64,
}

impl Default for DedupSection {
    fn default() -> Self {
        Self {
            shingle: 3,
            jaccard: 0.7,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecontaminateSection {
    /// Word n-gram length shared with a benchmark or holdout item that drops an example.
    pub ngram: usize,
    /// MiniLM cosine to a reference text at or above which an example is dropped.
    pub embedding_cosine: f32,
    /// References for the embedding check: any of holdout, gsm8k, humaneval, mmlu (MMLU is
    /// ~16K texts to embed once; they are cached in `cache_dir`).
    pub embedding_sources: Vec<String>,
    pub cache_dir: PathBuf,
    /// Default: the assets' benchmark data.
    pub benchmark_data_dir: Option<PathBuf>,
}

impl Default for DecontaminateSection {
    fn default() -> Self {
        Self {
            ngram: 13,
            embedding_cosine: 0.9,
            embedding_sources: vec![
                "holdout".into(),
                "gsm8k".into(),
                "humaneval".into(),
                "mmlu".into(),
            ],
            cache_dir: PathBuf::from("runs/cache"),
            benchmark_data_dir: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixSection {
    /// The original training data (phase 1A's), chat `messages`, alpaca or sharegpt JSONL.
    pub original_data: PathBuf,
    /// Share of teacher examples in the mix (0.9: 90% teacher, 10% original).
    #[serde(default = "default_teacher_fraction")]
    pub teacher_fraction: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Original examples trained on when no teacher example passed the gate, so that the rest of
    /// the phase (training, validation, the holdout comparison) still runs and reports; the
    /// report says the mix held no teacher data.
    #[serde(default = "default_originals_without_teacher")]
    pub originals_without_teacher: usize,
}

fn default_originals_without_teacher() -> usize {
    64
}
fn default_teacher_fraction() -> f64 {
    0.9
}
fn default_seed() -> u64 {
    1234
}

/// Training on the mix: a new LoRA adapter on the student (phase 1A's merged model), with
/// phase 1A's trainer, checkpoints, merge check and validation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub max_seq_len: Option<usize>,
    pub eval_examples: Option<usize>,
    pub lora: LoraConfig,
    pub train: TrainConfig,
    pub merge: MergeSection,
    pub validate: ValidateSection,
}

impl Phase1cConfig {
    /// Parses `text` (from `origin`) after `--set` overrides, then checks every value that can
    /// be checked before a request is sent (templates, endpoints and their keys included).
    pub fn parse_with_overrides(text: &str, origin: &str, overrides: &[String]) -> Result<Self> {
        let config: Self =
            pipeline::parse_config(text, origin, overrides).map_err(|error| Error::Config {
                field: origin.to_string(),
                message: error.to_string(),
            })?;
        config.check()?;
        Ok(config)
    }

    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
        Self::parse_with_overrides(&text, &path.display().to_string(), overrides)
    }

    pub fn check(&self) -> Result<()> {
        let bad = |field: &str, message: String| {
            Err(Error::Config {
                field: field.into(),
                message,
            })
        };
        self.teacher.check("teacher")?;
        self.judge.llm.check("judge.llm")?;
        for strategy in &self.generate.strategies {
            if !["targeted", "rationalize"].contains(&strategy.as_str()) {
                return bad(
                    "generate.strategies",
                    format!("unknown `{strategy}` (accepted: targeted, rationalize)"),
                );
            }
        }
        if self.generate.strategies.is_empty() {
            return bad("generate.strategies", "empty".into());
        }
        if !(0.0..=1.0).contains(&self.generate.rationalize_fraction) {
            return bad("generate.rationalize_fraction", "must be in [0, 1]".into());
        }
        if self.generate.floor > self.generate.cap {
            return bad("generate.floor", "larger than generate.cap".into());
        }
        if !(self.mix.teacher_fraction > 0.0 && self.mix.teacher_fraction <= 1.0) {
            return bad("mix.teacher_fraction", "must be in (0, 1]".into());
        }
        if !(1.0..=10.0).contains(&self.judge.threshold) {
            return bad("judge.threshold", "must be in [1, 10]".into());
        }
        for source in &self.decontaminate.embedding_sources {
            if !["holdout", "gsm8k", "humaneval", "mmlu"].contains(&source.as_str()) {
                return bad(
                    "decontaminate.embedding_sources",
                    format!("unknown `{source}` (accepted: holdout, gsm8k, humaneval, mmlu)"),
                );
            }
        }
        self.train
            .validate
            .check("train.validate")
            .map_err(|error| Error::Config {
                field: "train.validate".into(),
                message: error.to_string(),
            })?;
        for name in ["targeted", "rationalize", "rederive", "judge"] {
            crate::template::Template::load(name, self.generate.templates_dir.as_deref())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_default_parses_and_bad_fields_are_named() {
        let config =
            Phase1cConfig::parse_with_overrides(DEFAULT_CONFIG, "phase1c.toml", &[]).unwrap();
        assert_eq!(config.mix.teacher_fraction, 0.9);
        assert_eq!(config.judge.threshold, 8.0);
        for (set, field) in [
            ("generate.strategies=[\"distill\"]", "generate.strategies"),
            ("judge.threshold=11", "judge.threshold"),
            ("teacher.kind=\"ollama\"", "teacher.kind"),
            ("teacher.batch.poll_s=60", "teacher.batch"),
            ("mix.teacher_fraction=0", "mix.teacher_fraction"),
            (
                "decontaminate.embedding_sources=[\"mbpp\"]",
                "embedding_sources",
            ),
        ] {
            let error = Phase1cConfig::parse_with_overrides(DEFAULT_CONFIG, "x", &[set.into()])
                .unwrap_err()
                .to_string();
            assert!(error.contains(field), "{set}: {error}");
        }
    }

    #[test]
    fn an_endpoint_without_its_key_fails_before_any_call() {
        let overrides = [
            "teacher.kind=\"endpoint\"".to_string(),
            "teacher.endpoint.base_url=\"https://api.example.com/v1\"".into(),
            "teacher.endpoint.model=\"big\"".into(),
            "teacher.endpoint.api_key_env=\"TUNELOOP_TEST_NO_SUCH_KEY\"".into(),
        ];
        let error = Phase1cConfig::parse_with_overrides(DEFAULT_CONFIG, "x", &overrides)
            .unwrap_err()
            .to_string();
        assert!(error.contains("TUNELOOP_TEST_NO_SUCH_KEY"), "{error}");
    }
}
