//! Training configuration. Every field has a default that suits a small model on a CPU and
//! is spelled as in PEFT/TRL where they have a name for it; unknown fields are errors so a
//! typo never silently falls back to a default.

use std::collections::BTreeSet;
use std::path::PathBuf;

use llama::ProjectionKind;
use serde::{Deserialize, Serialize};

use crate::data::DataFormat;
use crate::{Error, Result};

/// Which projections get an adapter and how large it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank `r` of each update `A·B`.
    pub rank: usize,
    /// The update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training (PEFT's `lora_dropout`).
    pub dropout: f64,
    /// HF module names: any of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.05,
            target_modules: ProjectionKind::ALL
                .iter()
                .map(|k| k.hf_name().to_string())
                .collect(),
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The targets, parsed, deduplicated and in model order.
    pub fn targets(&self) -> Result<Vec<ProjectionKind>> {
        let mut targets = BTreeSet::new();
        for name in &self.target_modules {
            targets.insert(
                name.parse::<ProjectionKind>()
                    .map_err(|e| Error::InvalidConfig(format!("lora.target_modules: {e}")))?,
            );
        }
        if targets.is_empty() {
            return Err(Error::InvalidConfig(
                "lora.target_modules is empty: name at least one projection".into(),
            ));
        }
        Ok(targets.into_iter().collect())
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::InvalidConfig("lora.rank must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::InvalidConfig(format!(
                "lora.alpha must be positive, got {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::InvalidConfig(format!(
                "lora.dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        self.targets().map(|_| ())
    }
}

/// Where the examples come from and how they become token sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Training JSONL.
    pub train: PathBuf,
    /// Held-out JSONL for the eval loss (its first `eval_examples` are used). Without one,
    /// `eval_examples` are split off the training file (deterministic, never trained on).
    pub eval: Option<PathBuf>,
    /// `auto`, `messages`, `alpaca` or `sharegpt`.
    pub format: DataFormat,
    /// Longer examples are cut to this many tokens (counted and reported).
    pub max_seq_len: usize,
    /// Examples for the eval loss: the first of `eval`, or split off the training file.
    pub eval_examples: usize,
    /// A system message prepended to examples that have none (none by default).
    pub system_prompt: Option<String>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: PathBuf::new(),
            eval: None,
            format: DataFormat::Auto,
            max_seq_len: 1024,
            eval_examples: 64,
            system_prompt: None,
        }
    }
}

/// Optimisation and bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Passes over the training data (ignored when `max_steps` is set).
    pub epochs: usize,
    /// Optimiser steps to take; overrides `epochs` when set.
    pub max_steps: Option<usize>,
    /// Sequences per forward pass.
    pub micro_batch_size: usize,
    /// Micro-batches per optimiser step. The loss is normalised by the target tokens of all of
    /// them together, so a step equals one large batch whatever the split.
    pub gradient_accumulation_steps: usize,
    /// Peak learning rate (AdamW).
    pub learning_rate: f64,
    /// Linear warm-up steps from 0 to the peak, then cosine decay to `min_lr_ratio`·peak.
    pub warmup_steps: usize,
    pub min_lr_ratio: f64,
    /// Decoupled weight decay on the adapter weights.
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Held-out loss every this many steps (0 = only at the end).
    pub eval_every: usize,
    /// Checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: usize,
    /// Checkpoints kept on disk (the newest).
    pub keep_checkpoints: usize,
    /// Keep only each decoder layer's input and recompute the layer in the backward pass
    /// ([`llama::layer_checkpoint`]): activation memory of one layer instead of all of them,
    /// for one more forward. For long sequences and large batches. With adapter dropout each
    /// layer also reads one random seed back from the device (so the recompute draws the same
    /// masks), a synchronisation per layer on a GPU.
    pub gradient_checkpointing: bool,
    /// Examples per length-sorted group: batches draw from groups of this many examples
    /// sorted by length, so little padding is computed (1 = plain random batches).
    pub length_group_size: usize,
    /// On a LibTorch GPU, capture a micro-batch's forward and backward as a CUDA graph and
    /// replay it for the next micro-batches of the same shape ([`crate::step_graph`]): the
    /// ~5,000 kernels of an 8B-shaped micro-batch leave the host in one launch. The first
    /// micro-batch warms up eagerly; after it a packed shape is captured when it appears and a
    /// padded shape when it appears again (up to [`crate::step_graph::MAX_GRAPHS`] shapes, in
    /// one shared memory pool); adapter dropout keeps the eager path.
    pub cuda_graph: bool,
    /// Padding-free micro-batches: each micro-batch's examples back to back in one packed row,
    /// attention kept within each example (variable-length flash attention on a GPU). The loss
    /// and gradients are those of padded rows. No padding is computed, except with
    /// `cuda_graph`, where the row is padded to a multiple of [`PACKED_WIDTH_MULTIPLE`]
    /// positions so that micro-batches of nearby sizes share one captured graph.
    pub padding_free: bool,
}

/// With `padding_free` and `cuda_graph`, packed rows are padded to a multiple of this many
/// positions: ~64 positions of padding on average, against a graph per distinct width. 256
/// padded twice as much, which cost more than the graphs saved on a fast host
/// (docs/benchmarks.md, 2026-12-06).
pub const PACKED_WIDTH_MULTIPLE: usize = 128;

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            max_steps: None,
            micro_batch_size: 4,
            gradient_accumulation_steps: 4,
            learning_rate: 2e-4,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            seed: 42,
            eval_every: 50,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            gradient_checkpointing: false,
            length_group_size: 64,
            cuda_graph: false,
            padding_free: false,
        }
    }
}

impl TrainConfig {
    /// The width multiple of packed rows (see `padding_free`), `None` for padded rows.
    pub fn packed_width_multiple(&self) -> Option<usize> {
        self.padding_free.then_some(if self.cuda_graph {
            PACKED_WIDTH_MULTIPLE
        } else {
            1
        })
    }

    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("train.micro_batch_size", self.micro_batch_size),
            (
                "train.gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
            ("train.length_group_size", self.length_group_size),
            ("train.keep_checkpoints", self.keep_checkpoints),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(Error::InvalidConfig(format!("{name} must be at least 1")));
            }
        }
        if self.max_steps.is_none() && self.epochs == 0 {
            return Err(Error::InvalidConfig(
                "train.epochs must be at least 1 (or set train.max_steps)".into(),
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::InvalidConfig(format!(
                "train.learning_rate must be positive, got {}",
                self.learning_rate
            )));
        }
        for (name, beta) in [
            ("train.adam_beta1", self.adam_beta1),
            ("train.adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::InvalidConfig(format!(
                    "{name} must be in [0, 1), got {beta}"
                )));
            }
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::InvalidConfig(format!(
                "train.min_lr_ratio must be in [0, 1], got {}",
                self.min_lr_ratio
            )));
        }
        Ok(())
    }

    /// Learning rate at optimiser step `step` (0-based) of `total`: linear warm-up, then cosine.
    pub fn learning_rate_at(&self, step: usize, total: usize) -> f64 {
        let peak = self.learning_rate;
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / (self.warmup_steps + 1) as f64;
        }
        let decay_steps = total.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        peak * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let config = TrainConfig {
            learning_rate: 1e-3,
            warmup_steps: 4,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        let lrs: Vec<f64> = (0..20).map(|s| config.learning_rate_at(s, 20)).collect();
        assert!(lrs[..5].windows(2).all(|w| w[0] < w[1]), "{lrs:?}");
        assert!((lrs[4] - 1e-3).abs() < 1e-12);
        assert!(lrs[4..].windows(2).all(|w| w[0] >= w[1]), "{lrs:?}");
        assert!(lrs[19] > 1e-4 && lrs[19] < 1.2e-4, "{}", lrs[19]);
    }

    #[test]
    fn bad_values_name_their_field() {
        let lora = LoraConfig {
            target_modules: vec!["q_proj".into(), "attn".into()],
            ..Default::default()
        };
        let error = lora.validate().unwrap_err().to_string();
        assert!(
            error.contains("lora.target_modules") && error.contains("attn"),
            "{error}"
        );
        let train = TrainConfig {
            micro_batch_size: 0,
            ..Default::default()
        };
        let error = train.validate().unwrap_err().to_string();
        assert!(error.contains("train.micro_batch_size"), "{error}");
    }

    #[test]
    fn targets_are_deduplicated_in_model_order() {
        let lora = LoraConfig {
            target_modules: vec!["down_proj".into(), "q_proj".into(), "q_proj".into()],
            ..Default::default()
        };
        assert_eq!(
            lora.targets().unwrap(),
            vec![ProjectionKind::Q, ProjectionKind::Down]
        );
    }
}
