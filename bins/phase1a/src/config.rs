//! The Phase 1A configuration file (documented field by field in `phase1a.toml`, which is also
//! the embedded default).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lora_training::{DataConfig, LoraConfig, TrainConfig};
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
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub path: PathBuf,
    #[serde(default = "cpu")]
    pub device: String,
    #[serde(default)]
    pub precision: Option<String>,
}

fn cpu() -> String {
    "cpu".into()
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
            gsm8k_limit: Some(4),
            humaneval_limit: Some(4),
            batch_size: 8,
            seed: 1234,
        }
    }
}

impl Phase1aConfig {
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let config: Self =
            toml::from_str(text).with_context(|| format!("{origin}: invalid config"))?;
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

    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_default_parses_and_names_bad_fields() {
        let config = Phase1aConfig::parse(DEFAULT_CONFIG, "phase1a.toml").unwrap();
        assert_eq!(config.lora.rank, 8);
        assert_eq!(config.train.max_steps, Some(40));
        let typo = DEFAULT_CONFIG.replace("micro_batch_size", "micro_batch");
        let error = format!("{:#}", Phase1aConfig::parse(&typo, "x.toml").unwrap_err());
        assert!(error.contains("micro_batch"), "{error}");
        let format = DEFAULT_CONFIG.replace("format = \"auto\"", "format = \"parquet\"");
        let error = format!("{:#}", Phase1aConfig::parse(&format, "x.toml").unwrap_err());
        assert!(
            error.contains("parquet") && error.contains("sharegpt"),
            "{error}"
        );
    }
}
