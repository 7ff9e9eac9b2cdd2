//! The training loop: token-normalised gradient accumulation, clipping, AdamW with warm-up and
//! cosine decay, held-out loss, atomic checkpoints and exact resume.
//!
//! Exact resume rests on three things: the adapter and optimiser state are saved as raw f32;
//! the batches of an epoch are a pure function of (seed, epoch) (see [`crate::batches`]); and
//! the backend's RNG (adapter dropout) is re-seeded from (seed, step) before every step, so the
//! RNG state of a step is its number.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use llama::burn::module::{Module, Param};
use llama::burn::tensor::{DType, Device, Int, Tensor, TensorData};
use llama::causal_attention::Segments;
use llama::cross_entropy::target_log_probs;
use llama::{HostDType, Llama, OwnedTensors, ProjectionKind, host_tensor};
use serde::{Deserialize, Serialize};

use crate::adapter::{
    PeftAdapterConfig, f32_values, load_peft_adapter, peft_tensor_name, read_matrix,
    write_peft_files,
};
use crate::batches::{epoch_batches, packed_width, padding_fraction};
use crate::config::{LoraConfig, TrainConfig};
use crate::distributed::Group;
use crate::optim::{AdamW, clip_grad_norm};
use crate::plot::write_loss_plot;
use crate::step_graph::StepGraph;
use crate::tokenized::{TokenizedData, TokenizedSplit};
use crate::{Error, Result, error::io_error};

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const LOSS_PLOT_FILE: &str = "loss.svg";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Metric {
    Train(StepMetrics),
    Eval(EvalMetrics),
}

impl Metric {
    pub fn step(&self) -> usize {
        match self {
            Metric::Train(m) => m.step,
            Metric::Eval(m) => m.step,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimiser steps completed (1-based).
    pub step: usize,
    pub epoch: f64,
    /// Mean loss per target token over the step's micro-batches.
    pub loss: f64,
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub target_tokens: usize,
    /// Real (non-padding) tokens through the model.
    pub tokens: usize,
    /// Positions computed, padding included.
    pub computed_tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub step: usize,
    pub eval_loss: f64,
    pub eval_tokens: usize,
}

/// Checkpointed bookkeeping beside the adapter and optimiser tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    total_steps: usize,
    optimizer_steps: u64,
    seed: u64,
    data_fingerprint: String,
    train: TrainConfig,
    lora: LoraConfig,
    /// How the RNG state is restored (documentation for people reading the checkpoint).
    rng: String,
}

/// What a run produced.
#[derive(Debug)]
pub struct TrainingOutcome {
    /// The model with trained adapters (on the training device).
    pub model: Llama,
    pub steps: usize,
    pub resumed_from: Option<usize>,
    pub final_eval_loss: Option<f64>,
    pub metrics: Vec<Metric>,
    /// Padding share of the computed positions over the epoch schedule.
    pub padding_fraction: f64,
}

/// A training device for `device` (autodiff). On a LibTorch CUDA device it also switches
/// PyTorch's allocator to expandable segments (unless `PYTORCH_CUDA_ALLOC_CONF` says otherwise):
/// a step's activations vary in size, and cached segments would strand free blocks between them
/// (at the 8B shape, ~0.7 GiB of what nvidia-smi counts). Call it before loading the model, as
/// the bins do. Activation checkpointing is the model's: [`llama::Llama::checkpoint_layers`],
/// which [`train`] sets from [`TrainConfig::gradient_checkpointing`].
pub fn training_device(device: &Device) -> Device {
    #[cfg(feature = "tch")]
    if let Err(error) = llama::cuda_memory::use_training_allocator_settings(device) {
        tracing::warn!("keeping PyTorch's default allocator settings: {error}");
    }
    device.clone().autodiff()
}

/// Freezes every base weight of a model loaded on a training device (adapters are attached
/// after this and are the only tensors that receive gradients).
pub fn freeze_base(model: Llama) -> Llama {
    model.no_grad()
}

/// Everything [`train`] needs besides the model.
#[derive(Debug)]
pub struct TrainingSetup<'a> {
    pub data: &'a TokenizedData,
    pub train: &'a TrainConfig,
    pub lora: &'a LoraConfig,
    pub run_dir: &'a Path,
    /// Token id written into padding positions (never a target).
    pub pad_token_id: u32,
    /// Base model name for the adapter config.
    pub base_model: Option<&'a str>,
    /// Continue from the newest checkpoint in `run_dir`.
    pub resume: bool,
    /// Stop after this many steps even if the schedule is longer (the schedule, and so the
    /// learning rates, stay those of the full run). For tests that interrupt a run.
    pub stop_after: Option<usize>,
    /// Data-parallel group (one process per GPU); `None` trains alone. With W ranks an
    /// optimiser step covers W × `gradient_accumulation_steps` micro-batches.
    pub group: Option<&'a Group>,
}

/// What one optimiser step measured, summed over the group's ranks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Mean loss per target token over the step's micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real (non-padding) tokens through the model.
    pub tokens: usize,
    /// Positions computed, padding included.
    pub computed_tokens: usize,
}

/// Trains the adapters of `model` (on a training device, base frozen, adapters attached or
/// loaded) and writes metrics, checkpoints and the loss plot into the run directory.
pub fn train(mut model: Llama, setup: &TrainingSetup<'_>) -> Result<TrainingOutcome> {
    let TrainingSetup {
        data,
        train: config,
        lora,
        run_dir,
        ..
    } = *setup;
    config.validate()?;
    model.checkpoint_layers = config.gradient_checkpointing;
    if model.adapted_projections().is_empty() {
        return Err(Error::InvalidConfig(
            "the model carries no adapter to train (attach_adapters first)".into(),
        ));
    }
    let single = Group::single();
    let group = setup.group.unwrap_or(&single);
    let writer = group.is_writer();
    let device = model.device();
    if !device.is_autodiff() {
        return Err(Error::InvalidConfig(
            "the model is not on a training device (see training_device)".into(),
        ));
    }
    let lengths = data.train.lengths();
    let batches_per_epoch = lengths.len().div_ceil(config.micro_batch_size);
    let step_micro_batches = config.gradient_accumulation_steps * group.world_size();
    let steps_per_epoch = batches_per_epoch.div_ceil(step_micro_batches);
    let total_steps = config.max_steps.unwrap_or(steps_per_epoch * config.epochs);
    let padding = padding_fraction(
        &epoch_batches(
            &lengths,
            config.micro_batch_size,
            config.length_group_size,
            config.seed,
            0,
        ),
        &lengths,
        config.packed_width_multiple(),
    );
    std::fs::create_dir_all(run_dir).map_err(io_error(run_dir))?;
    let metrics_path = run_dir.join(METRICS_FILE);

    let mut optimizer = new_optimizer(&model);
    let mut metrics: Vec<Metric> = Vec::new();
    let mut start_step = 0;
    let mut resumed_from = None;
    if setup.resume
        && let Some(checkpoint) = latest_checkpoint(run_dir)?
    {
        let state = restore(&mut model, &mut optimizer, &checkpoint)?;
        if state.data_fingerprint != data.meta.fingerprint {
            return Err(Error::InvalidConfig(format!(
                "{}: the training data or tokenizer changed since this checkpoint",
                checkpoint.display()
            )));
        }
        if state.train != *config || state.lora != *lora {
            return Err(Error::InvalidConfig(format!(
                "{}: the train/lora configuration differs from the checkpoint's; \
                 resume with the same configuration",
                checkpoint.display()
            )));
        }
        start_step = state.step;
        resumed_from = Some(state.step);
        metrics = read_metrics(&metrics_path)?
            .into_iter()
            .filter(|m| m.step() <= start_step)
            .collect();
        if writer {
            records::jsonl::write_jsonl_atomic(&metrics_path, &metrics)?;
        }
        tracing::info!("resuming from {} (step {start_step})", checkpoint.display());
    } else if writer {
        records::jsonl::write_jsonl_atomic(&metrics_path, std::iter::empty::<Metric>())?;
    }

    let end_step = setup.stop_after.map_or(total_steps, |s| s.min(total_steps));
    let progress = if writer {
        indicatif::ProgressBar::new(total_steps as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template("train [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    progress.set_position(start_step as u64);
    progress.reset_eta();
    let started = Instant::now();
    let mut epoch_cache: Option<(u64, Vec<Vec<usize>>)> = None;
    let mut graph = StepGraph::new(config.cuda_graph);

    for step in start_step..end_step {
        let step_started = Instant::now();
        let learning_rate = config.learning_rate_at(step, total_steps);
        // The RNG state of a step is its number: dropout masks repeat exactly on resume.
        device.seed(config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step as u64);
        let micro_batches = step_batches(
            step,
            steps_per_epoch,
            step_micro_batches,
            config,
            &lengths,
            &mut epoch_cache,
        );
        // The whole step's targets (every rank's share), known to every rank.
        let target_tokens: usize = micro_batches
            .iter()
            .flatten()
            .map(|&i| targets_of(&data.train, i))
            .sum();
        let batches: Vec<Batch> = group
            .share(&micro_batches)
            .iter()
            .map(|indices| {
                let pad = setup.pad_token_id;
                let packed = config.packed_width_multiple();
                Batch::from_split(&data.train, indices, pad, packed, &device)
            })
            .collect();
        let outcome = optimizer_step(
            &mut model,
            &mut optimizer,
            &batches,
            target_tokens,
            learning_rate,
            config,
            group,
            &mut graph,
        );
        let (loss_sum, grad_norm) = (outcome.loss, outcome.grad_norm);
        let (tokens, computed) = (outcome.tokens, outcome.computed_tokens);

        let seconds = step_started.elapsed().as_secs_f64();
        let done = step + 1;
        let step_metrics = StepMetrics {
            step: done,
            epoch: done as f64 / steps_per_epoch as f64,
            loss: loss_sum,
            learning_rate,
            grad_norm,
            target_tokens,
            tokens,
            computed_tokens: computed,
            seconds,
            tokens_per_second: tokens as f64 / seconds.max(1e-9),
        };
        progress.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            step_metrics.loss, learning_rate, step_metrics.tokens_per_second
        ));
        progress.inc(1);
        if writer {
            append_metric(&metrics_path, &Metric::Train(step_metrics.clone()))?;
        }
        metrics.push(Metric::Train(step_metrics));

        let last = done == end_step;
        // Files are rank 0's: the other ranks' adapters are the same numbers.
        if !writer {
            continue;
        }
        if ((config.eval_every > 0 && done % config.eval_every == 0) || last)
            && !data.eval.is_empty()
        {
            let (eval_loss, eval_tokens) = eval_loss(
                &model,
                &data.eval,
                config.micro_batch_size,
                setup.pad_token_id,
            );
            let metric = Metric::Eval(EvalMetrics {
                step: done,
                eval_loss,
                eval_tokens,
            });
            append_metric(&metrics_path, &metric)?;
            metrics.push(metric);
            progress.println(format!("step {done}: eval loss {eval_loss:.4}"));
        }
        if (config.checkpoint_every > 0 && done % config.checkpoint_every == 0) || last {
            let state = TrainerState {
                step: done,
                total_steps,
                optimizer_steps: optimizer.steps,
                seed: config.seed,
                data_fingerprint: data.meta.fingerprint.clone(),
                train: config.clone(),
                lora: lora.clone(),
                rng: "backend RNG re-seeded from (seed, step) before each step; \
                      batch order is a function of (seed, epoch)"
                    .into(),
            };
            save_checkpoint(run_dir, &model, &optimizer, &state, setup.base_model)?;
            prune_checkpoints(run_dir, config.keep_checkpoints)?;
        }
    }
    progress.finish_and_clear();
    tracing::info!(
        "trained {} steps in {:.1}s",
        end_step - start_step,
        started.elapsed().as_secs_f64()
    );
    if writer {
        write_loss_plot(&run_dir.join(LOSS_PLOT_FILE), &metrics)?;
    }
    let final_eval_loss = metrics.iter().rev().find_map(|m| match m {
        Metric::Eval(e) => Some(e.eval_loss),
        Metric::Train(_) => None,
    });
    Ok(TrainingOutcome {
        model,
        steps: end_step,
        resumed_from,
        final_eval_loss,
        metrics,
        padding_fraction: padding,
    })
}

/// One optimiser step over `batches` (this rank's micro-batches of the step): gradients of the
/// loss summed over all their targets and divided by `target_tokens` (the step's total over
/// every rank, so the step equals one large batch however it is split), summed over the
/// group's ranks, global-norm clipping, AdamW.
#[allow(clippy::too_many_arguments)] // the step's state and inputs, each used once
pub fn optimizer_step(
    model: &mut Llama,
    optimizer: &mut AdamW,
    batches: &[Batch],
    target_tokens: usize,
    learning_rate: f64,
    config: &TrainConfig,
    group: &Group,
    graph: &mut StepGraph,
) -> StepOutcome {
    let layout = optimizer.layout().clone();
    let device = model.device().inner();
    // On the device once per step, so that no micro-batch copies from the host.
    let inv_freq = model.rope.inv_freq_tensor(&model.device());
    let scale = 1.0 / target_tokens.max(1) as f64;
    // The gradients of the step, flat in the optimiser's layout: accumulation, the all-reduce,
    // clipping and AdamW are then a few kernels over one vector.
    let mut grads: Option<Tensor<1>> = None;
    let mut loss_sum = 0.0f64;
    for batch in batches {
        let (loss, batch_grads) = graph.run(model, &layout, batch, scale, &inv_freq);
        loss_sum += f32_values(loss)[0] as f64;
        grads = Some(match grads.take() {
            None => batch_grads,
            Some(sum) => sum + batch_grads,
        });
    }
    // A rank whose share of a short last step is empty still joins the sum, with zeros.
    let grads = grads.unwrap_or_else(|| Tensor::zeros([layout.len()], &device));
    let tokens: usize = batches.iter().map(|b| b.real_tokens).sum();
    let computed: usize = batches.iter().map(|b| b.computed_tokens).sum();
    let (grads, sums) = group.all_reduce_sum(grads, &[loss_sum, tokens as f64, computed as f64]);
    let (grad_norm, grads) = clip_grad_norm(grads, config.max_grad_norm);
    let plain = layout.flatten(
        trainable(model).into_iter().map(Tensor::inner).collect(),
        &device,
    );
    let updated = optimizer.step(plain, grads, learning_rate, config);
    graph.install(model, &layout, updated);
    StepOutcome {
        loss: sums[0],
        grad_norm,
        tokens: sums[1].round() as usize,
        computed_tokens: sums[2].round() as usize,
    }
}

/// Zero AdamW state for the adapters `model` carries.
pub fn new_optimizer(model: &Llama) -> AdamW {
    let plain: Vec<Tensor<2>> = trainable(model).into_iter().map(Tensor::inner).collect();
    AdamW::new(&plain, &model.device().inner())
}

/// Mean loss per target token of `model` over `split` (no dropout, no autodiff).
pub fn eval_loss(
    model: &Llama,
    split: &TokenizedSplit,
    batch_size: usize,
    pad_token_id: u32,
) -> (f64, usize) {
    let model = model.valid();
    let device = model.device();
    let order: Vec<usize> = {
        let lengths = split.lengths();
        let mut order: Vec<usize> = (0..split.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        order
    };
    let inv_freq = model.rope.inv_freq_tensor(&device);
    let (mut total, mut targets) = (0.0f64, 0usize);
    for indices in order.chunks(batch_size) {
        let batch = Batch::from_split(split, indices, pad_token_id, None, &device);
        targets += batch.target_tokens;
        total += f32_values(target_nll_sum(&model, batch.tensors(), &inv_freq))[0] as f64;
    }
    (total / targets.max(1) as f64, targets)
}

/// The micro-batches of 0-based optimiser step `step`.
fn step_batches(
    step: usize,
    steps_per_epoch: usize,
    step_micro_batches: usize,
    config: &TrainConfig,
    lengths: &[usize],
    cache: &mut Option<(u64, Vec<Vec<usize>>)>,
) -> Vec<Vec<usize>> {
    let epoch = (step / steps_per_epoch) as u64;
    if cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
        *cache = Some((
            epoch,
            epoch_batches(
                lengths,
                config.micro_batch_size,
                config.length_group_size,
                config.seed,
                epoch,
            ),
        ));
    }
    let batches = &cache.as_ref().expect("filled above").1;
    let first = (step % steps_per_epoch) * step_micro_batches;
    let last = (first + step_micro_batches).min(batches.len());
    batches[first..last].to_vec()
}

/// Target tokens of one example: trained tokens after the first position (the first token has
/// nothing before it to predict it from).
fn targets_of(split: &TokenizedSplit, example: usize) -> usize {
    split
        .trained(example)
        .iter()
        .skip(1)
        .filter(|&&t| t)
        .count()
}

/// One micro-batch: inputs, next-token labels and a target mask, either right-padded rows
/// (`[B, T-1]`) or, padding-free, every example back to back in one packed row.
#[derive(Debug, Clone)]
pub struct Batch {
    tensors: BatchTensors,
    pub real_tokens: usize,
    pub computed_tokens: usize,
    pub target_tokens: usize,
}

/// What a packed row adds to its tokens: positions counted from 0 at each example's start and
/// the examples' segments (attention stays inside each).
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    pub positions: Tensor<2, Int>,
    pub segments: Segments,
}

/// A micro-batch's tensors (cloning copies handles, not data).
#[derive(Debug, Clone)]
pub(crate) struct BatchTensors {
    pub inputs: Tensor<2, Int>,
    pub labels: Tensor<2, Int>,
    pub target_mask: Tensor<2>,
    /// Where the examples of a packed row start and their positions, for a padding-free batch.
    pub packed: Option<Packed>,
}

impl BatchTensors {
    /// `[rows, width]` inputs, labels and target mask from host vectors.
    fn from_host(
        (inputs, labels, mask): (Vec<i64>, Vec<i64>, Vec<f32>),
        shape: [usize; 2],
        packed: Option<Packed>,
        device: &Device,
    ) -> Self {
        Self {
            inputs: Tensor::from_data(TensorData::new(inputs, shape), device),
            labels: Tensor::from_data(TensorData::new(labels, shape), device),
            target_mask: Tensor::from_data(TensorData::new(mask, shape), (device, DType::F32)),
            packed,
        }
    }
}

/// Writes one example's inputs (`tokens[..n-1]`), next-token labels and target mask from
/// `at` on; returns its number of targets.
fn place_example(
    (tokens, trained): &(Vec<u32>, Vec<bool>),
    at: usize,
    inputs: &mut [i64],
    labels: &mut [i64],
    mask: &mut [f32],
) -> usize {
    let mut targets = 0;
    for position in 0..tokens.len().saturating_sub(1) {
        inputs[at + position] = tokens[position] as i64;
        labels[at + position] = tokens[position + 1] as i64;
        if trained[position + 1] {
            mask[at + position] = 1.0;
            targets += 1;
        }
    }
    targets
}

impl Batch {
    fn from_split(
        split: &TokenizedSplit,
        indices: &[usize],
        pad: u32,
        packed_width_multiple: Option<usize>,
        device: &Device,
    ) -> Self {
        let rows: Vec<(Vec<u32>, Vec<bool>)> = indices
            .iter()
            .map(|&i| (split.tokens(i), split.trained(i)))
            .collect();
        match packed_width_multiple {
            Some(multiple) => Self::packed_from_rows(&rows, multiple, device),
            None => Self::from_rows(&rows, pad, device),
        }
    }

    /// From `(tokens, trained)` rows, right-padded with `pad` to the longest.
    pub fn from_rows(rows: &[(Vec<u32>, Vec<bool>)], pad: u32, device: &Device) -> Self {
        let longest = rows.iter().map(|(t, _)| t.len()).max().unwrap_or(1);
        let width = longest.max(2) - 1;
        let count = rows.len();
        let mut inputs = vec![pad as i64; count * width];
        let mut labels = vec![pad as i64; count * width];
        let mut mask = vec![0.0f32; count * width];
        let mut targets = 0;
        for (row, example) in rows.iter().enumerate() {
            targets += place_example(example, row * width, &mut inputs, &mut labels, &mut mask);
        }
        Self {
            tensors: BatchTensors::from_host((inputs, labels, mask), [count, width], None, device),
            real_tokens: rows.iter().map(|(t, _)| t.len()).sum(),
            computed_tokens: count * longest,
            target_tokens: targets,
        }
    }

    /// From `(tokens, trained)` rows, padding-free: the examples' input positions back to back
    /// in one row (HF's `DataCollatorWithFlattening`), each attending to itself only. The loss
    /// and gradients equal those of [`Batch::from_rows`] on the same rows. With `width_multiple`
    /// 1 no padding is computed; a larger multiple pads the row to [`packed_width`] (one more
    /// segment, no targets) and gives the attention the whole width as its longest example, so
    /// that every micro-batch of that width and example count has one shape and replays one
    /// CUDA graph.
    pub fn packed_from_rows(
        rows: &[(Vec<u32>, Vec<bool>)],
        width_multiple: usize,
        device: &Device,
    ) -> Self {
        let spans: Vec<usize> = rows
            .iter()
            .map(|(t, _)| t.len().saturating_sub(1))
            .filter(|&span| span > 0)
            .collect();
        let positions: usize = spans.iter().sum();
        // At least one position, so that a batch of one-token examples is well-formed.
        let width = packed_width(positions, width_multiple);
        let mut inputs = vec![0i64; width];
        let mut labels = vec![0i64; width];
        let mut mask = vec![0.0f32; width];
        let mut position_ids = vec![0i64; width];
        let (mut at, mut targets) = (0, 0);
        for example in rows {
            targets += place_example(example, at, &mut inputs, &mut labels, &mut mask);
            let span = example.0.len().saturating_sub(1);
            for (offset, position) in position_ids[at..at + span].iter_mut().enumerate() {
                *position = offset as i64;
            }
            at += span;
        }
        let mut segments = Segments::from_row_lengths(&[spans], width, device);
        if width_multiple > 1 {
            segments.max_len = width;
        }
        let real: usize = rows.iter().map(|(t, _)| t.len()).sum();
        let packed = Packed {
            positions: Tensor::from_data(TensorData::new(position_ids, [1, width]), device),
            segments,
        };
        let host = (inputs, labels, mask);
        Self {
            tensors: BatchTensors::from_host(host, [1, width], Some(packed), device),
            real_tokens: real,
            computed_tokens: real + width - positions,
            target_tokens: targets,
        }
    }

    /// `[rows, width]` of the inputs (and of the labels and the target mask).
    pub fn shape(&self) -> [usize; 2] {
        self.tensors.inputs.dims()
    }

    /// Whether the examples are packed into one row (padding-free).
    pub fn is_packed(&self) -> bool {
        self.tensors.packed.is_some()
    }

    pub(crate) fn tensors(&self) -> BatchTensors {
        self.tensors.clone()
    }
}

/// Summed negative log-likelihood of the targets (f32, `[1]`) of a micro-batch.
///
/// In right-padded rows padding sits only at the end of a row, so real tokens never see it
/// under a plain causal mask: the model runs its causal forward (no attention mask, the fused
/// causal attention path); packed rows run the packed forward. Neither reads from the device
/// nor copies from the host, so a captured CUDA graph can hold them ([`crate::step_graph`]).
pub(crate) fn target_nll_sum(
    model: &Llama,
    batch: BatchTensors,
    inv_freq: &Tensor<1>,
) -> Tensor<1> {
    let hidden = match &batch.packed {
        None => model.forward_hidden_causal(batch.inputs, inv_freq),
        Some(packed) => model.forward_hidden_packed(
            batch.inputs,
            packed.positions.clone(),
            &packed.segments,
            inv_freq,
        ),
    };
    let logits = model.logits(hidden);
    // One operation: PyTorch's fused log-softmax on LibTorch, and a backward that keeps the
    // logits alone instead of several f32 copies of them.
    let picked = target_log_probs(logits, batch.labels);
    (picked * batch.target_mask).sum().neg()
}

/// The trainable factors, in [`Llama::adapted_projections`] order, A then B.
pub(crate) fn trainable(model: &Llama) -> Vec<Tensor<2>> {
    model
        .adapted_projections()
        .into_iter()
        .flat_map(|(layer, kind)| {
            let adapter = model
                .projection(layer, kind)
                .lora
                .as_ref()
                .expect("adapted");
            [adapter.a.val(), adapter.b.val()]
        })
        .collect()
}

/// Installs updated factors (plain tensors) as new trainable leaves on the model's device.
pub(crate) fn set_trainable(model: &mut Llama, values: Vec<Tensor<2>>) {
    let strategy = model.device().gradient_checkpointing_strategy();
    let leaf = |value: Tensor<2>| {
        let mut value = value.autodiff();
        if let Some(strategy) = strategy {
            value = value.with_gradient_checkpointing_strategy(strategy);
        }
        Param::from_tensor(value.require_grad())
    };
    let mut values = values.into_iter();
    for (layer, kind) in model.adapted_projections() {
        let adapter = model
            .projection_mut(layer, kind)
            .lora
            .as_mut()
            .expect("adapted");
        adapter.a = leaf(values.next().expect("A"));
        adapter.b = leaf(values.next().expect("B"));
    }
}

fn append_metric(path: &Path, metric: &Metric) -> Result<()> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_error(path))?;
    let line = serde_json::to_string(metric).expect("metric serialises");
    writeln!(file, "{line}").map_err(io_error(path))
}

pub fn read_metrics(path: &Path) -> Result<Vec<Metric>> {
    Ok(records::jsonl::read_jsonl(path)?)
}

fn checkpoint_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir
        .join(CHECKPOINTS_DIR)
        .join(format!("step-{step:06}"))
}

fn checkpoint_steps(run_dir: &Path) -> Result<Vec<usize>> {
    let dir = run_dir.join(CHECKPOINTS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut steps = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse().ok())
            && entry.path().join(STATE_FILE).exists()
        {
            steps.push(step);
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

/// The newest complete checkpoint of a run, if any.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(checkpoint_steps(run_dir)?
        .last()
        .map(|&step| checkpoint_dir(run_dir, step)))
}

/// Keeps the newest `keep` checkpoints. A checkpoint is first renamed out of the `step-N`
/// namespace and then deleted, so a kill mid-deletion leaves no half-deleted `step-N` behind;
/// such leftovers (and any from older runs) are swept here.
fn prune_checkpoints(run_dir: &Path, keep: usize) -> Result<()> {
    let steps = checkpoint_steps(run_dir)?;
    let dir = run_dir.join(CHECKPOINTS_DIR);
    for &step in steps.iter().take(steps.len().saturating_sub(keep)) {
        let checkpoint = checkpoint_dir(run_dir, step);
        let doomed = dir.join(format!(".deleting-step-{step:06}"));
        std::fs::rename(&checkpoint, &doomed).map_err(io_error(&checkpoint))?;
    }
    for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
        let path = entry.map_err(io_error(&dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        // Ours being deleted, or staging/backup directories a killed save left behind.
        let leftover = name.is_some_and(|n| {
            n.starts_with(".deleting-step-")
                || (n.starts_with(".step-") && (n.contains(".tmp-") || n.contains(".old-")))
        });
        if leftover {
            std::fs::remove_dir_all(&path).map_err(io_error(&path))?;
        }
    }
    Ok(())
}

/// A checkpoint directory is a loadable PEFT adapter plus the optimiser moments and the
/// trainer state, written whole or not at all.
fn save_checkpoint(
    run_dir: &Path,
    model: &Llama,
    optimizer: &AdamW,
    state: &TrainerState,
    base_model: Option<&str>,
) -> Result<()> {
    let mut moments = OwnedTensors::new("optimizer state");
    let (exp_avg, exp_avg_sq) = optimizer.moments();
    for ((name, first), second) in factor_names(model).iter().zip(exp_avg).zip(exp_avg_sq) {
        moments.insert(&format!("{name}.exp_avg"), host_tensor(first));
        moments.insert(&format!("{name}.exp_avg_sq"), host_tensor(second));
    }
    let peft = PeftAdapterConfig::from_lora(&state.lora, base_model)?;
    llama::replace_dir_atomically(checkpoint_dir(run_dir, state.step), |staging| {
        write_peft_files(staging, model, &peft)?;
        llama::write_safetensors_file(&staging.join(OPTIMIZER_FILE), &moments, HostDType::F32)?;
        // The state file goes last: a directory without it is not a checkpoint.
        llama::export::write_file_atomically(
            &staging.join(STATE_FILE),
            serde_json::to_string_pretty(state)
                .expect("state serialises")
                .as_bytes(),
        )?;
        Ok::<(), Error>(())
    })?;
    Ok(())
}

/// PEFT names of the trainable factors in [`trainable`] order.
fn factor_names(model: &Llama) -> Vec<String> {
    model
        .adapted_projections()
        .into_iter()
        .flat_map(|(layer, kind): (usize, ProjectionKind)| {
            [
                peft_tensor_name(layer, kind, "lora_A"),
                peft_tensor_name(layer, kind, "lora_B"),
            ]
        })
        .collect()
}

fn restore(model: &mut Llama, optimizer: &mut AdamW, checkpoint: &Path) -> Result<TrainerState> {
    let state_path = checkpoint.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(io_error(&state_path))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| Error::InvalidFile {
        path: state_path,
        message: e.to_string(),
    })?;
    let device = model.device();
    load_peft_adapter(model, checkpoint)?;
    // Loaded factors become trainable leaves like freshly attached ones.
    let values: Vec<Tensor<2>> = trainable(model).into_iter().map(Tensor::inner).collect();
    set_trainable(model, values);
    let path = checkpoint.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&path).map_err(io_error(&path))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::InvalidFile {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let inner = device.clone().inner();
    let shapes: Vec<[usize; 2]> = trainable(model).iter().map(Tensor::dims).collect();
    let read = |name: String, index: usize| read_matrix(&file, &path, &name, shapes[index], &inner);
    let names = factor_names(model);
    let exp_avg = names
        .iter()
        .enumerate()
        .map(|(i, n)| read(format!("{n}.exp_avg"), i))
        .collect::<Result<_>>()?;
    let exp_avg_sq = names
        .iter()
        .enumerate()
        .map(|(i, n)| read(format!("{n}.exp_avg_sq"), i))
        .collect::<Result<_>>()?;
    optimizer.set_moments(exp_avg, exp_avg_sq);
    optimizer.steps = state.optimizer_steps;
    Ok(state)
}
