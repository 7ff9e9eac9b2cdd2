//! The Phase 1A configuration file (documented field by field in `phase1a.toml`, which is also
//! the embedded default).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lora_training::{DataConfig, LoraConfig, TrainConfig};
use pipeline::ModelSection;
use serde::{Deserialize, Serialize};

/// The documented default configuration (SmolLM2 on the arithmetic demo task).
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

#[derive(Debug, Clone, Serialize, Deserialize)]
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

impl Phase1aConfig {
    /// Parses `text`, then applies `section.field=value` overrides (`--set`).
    pub fn parse_with_overrides(text: &str, origin: &str, overrides: &[String]) -> Result<Self> {
        let config: Self = pipeline::parse_config(text, origin, overrides)?;
        config.lora.validate()?;
        config.train.validate()?;
        for name in &config.validate.benchmarks {
            if !["mmlu", "gsm8k", "humaneval"].contains(&name.as_str()) {
                bail!(
                    "{origin}: validate.benchmarks: unknown `{name}` (accepted: mmlu, gsm8k, humaneval)"
                );
            }
        }
        Ok(config)
    }

    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse_with_overrides(&text, &path.display().to_string(), overrides)
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
        let error = format!(
            "{:#}",
            Phase1aConfig::parse_with_overrides(&typo, "x.toml", &[]).unwrap_err()
        );
        assert!(error.contains("micro_batch"), "{error}");
        let format = DEFAULT_CONFIG.replace("format = \"auto\"", "format = \"parquet\"");
        let error = format!(
            "{:#}",
            Phase1aConfig::parse_with_overrides(&format, "x.toml", &[]).unwrap_err()
        );
        assert!(
            error.contains("parquet") && error.contains("sharegpt"),
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
        assert!(format!("{error:#}").contains("max_stepz"), "{error:#}");
        let error =
            Phase1aConfig::parse_with_overrides(DEFAULT_CONFIG, "x", &["train".to_string()])
                .unwrap_err();
        assert!(format!("{error:#}").contains("KEY=VALUE"), "{error:#}");
    }
}
