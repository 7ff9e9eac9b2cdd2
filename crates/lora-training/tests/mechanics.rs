//! Training mechanics on a small random model with SmolLM2's real tokenizer and chat template:
//! data errors, the masking audit, exact resume, PEFT files and merge verification.

mod common;

use std::path::Path;
use std::sync::Mutex;

use llama::burn::module::Module;
use llama::burn::tensor::Device;
use llama::{Llama, ProjectionKind};
use lora_training::trainer::{CHECKPOINTS_DIR, LOSS_PLOT_FILE, METRICS_FILE, read_metrics};
use lora_training::{
    Batch, DataConfig, DataFormat, Error, Group, LoraConfig, Metric, StepGraph, TokenizedData,
    TrainConfig, TrainingSetup, attach_adapters, freeze_base, load_peft_adapter, merge_verified,
    new_optimizer, optimizer_step, save_peft_adapter, tokenize_data, train, training_device,
    verify_merged,
};

/// burn's CPU backend has one process-wide RNG (adapter dropout draws from it), so trainings
/// that must repeat exactly do not run concurrently in this test process.
static ONE_TRAINING_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_TRAINING_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn data_config(dir: &Path, items: usize) -> DataConfig {
    let train = dir.join("train.jsonl");
    let all = common::arithmetic_items();
    common::write_messages_jsonl(&train, &all[..items]);
    DataConfig {
        train,
        eval_examples: 8,
        max_seq_len: 96,
        ..Default::default()
    }
}

fn tokenized(config: &DataConfig, dir: &Path) -> TokenizedData {
    let tokenizer = common::tokenizer();
    let template = tokenizer.chat_template().unwrap().unwrap();
    tokenize_data(config, &tokenizer, &template, &dir.join("data")).unwrap()
}

fn lora() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
    }
}

fn train_config() -> TrainConfig {
    TrainConfig {
        max_steps: Some(6),
        micro_batch_size: 4,
        gradient_accumulation_steps: 2,
        learning_rate: 5e-3,
        warmup_steps: 2,
        eval_every: 3,
        checkpoint_every: 2,
        ..Default::default()
    }
}

fn adapted_tiny(device: &Device) -> Llama {
    let mut model = freeze_base(common::tiny_model(device, 3));
    attach_adapters(&mut model, &lora(), 11).unwrap();
    model
}

fn setup<'a>(
    data: &'a TokenizedData,
    train: &'a TrainConfig,
    lora: &'a LoraConfig,
    run_dir: &'a Path,
) -> TrainingSetup<'a> {
    TrainingSetup {
        data,
        train,
        lora,
        run_dir,
        pad_token_id: 2,
        base_model: Some("tiny"),
        resume: false,
        stop_after: None,
        group: None,
    }
}

fn losses(metrics: &[Metric]) -> Vec<(usize, String)> {
    metrics
        .iter()
        .map(|m| match m {
            // Exact decimal of the f64: equal strings mean equal bits.
            Metric::Train(s) => (s.step, format!("train {:?} {:?}", s.loss, s.grad_norm)),
            Metric::Eval(e) => (e.step, format!("eval {:?}", e.eval_loss)),
        })
        .collect()
}

#[test]
fn resumed_run_repeats_the_uninterrupted_loss_curve_bit_for_bit() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = data_config(dir.path(), 80);
    let data = tokenized(&config, dir.path());
    let device = training_device(&Device::flex());
    let (train_config, lora) = (train_config(), lora());

    let straight_dir = dir.path().join("straight");
    let straight = train(
        adapted_tiny(&device),
        &setup(&data, &train_config, &lora, &straight_dir),
    )
    .unwrap();
    assert_eq!(straight.steps, 6);
    let reference = losses(&read_metrics(&straight_dir.join(METRICS_FILE)).unwrap());
    assert_eq!(reference.len(), 6 + 2, "6 steps and evals at 3 and 6");
    assert!(straight_dir.join(LOSS_PLOT_FILE).exists());

    // Interrupted after step 3 (last checkpoint at step 2), then resumed from a fresh model.
    let resumed_dir = dir.path().join("resumed");
    let interrupted = TrainingSetup {
        stop_after: Some(3),
        ..setup(&data, &train_config, &lora, &resumed_dir)
    };
    train(adapted_tiny(&device), &interrupted).unwrap();
    std::fs::remove_dir_all(resumed_dir.join(CHECKPOINTS_DIR).join("step-000003")).unwrap();
    let resumed = train(
        adapted_tiny(&device),
        &TrainingSetup {
            resume: true,
            ..setup(&data, &train_config, &lora, &resumed_dir)
        },
    )
    .unwrap();
    assert_eq!(resumed.resumed_from, Some(2));
    let again = losses(&read_metrics(&resumed_dir.join(METRICS_FILE)).unwrap());
    assert_eq!(again, reference);
    // Training did something: the loss moved.
    assert_ne!(reference[0].1, reference[5].1);
}

#[test]
fn resume_refuses_a_changed_configuration() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = data_config(dir.path(), 40);
    let data = tokenized(&config, dir.path());
    let device = training_device(&Device::flex());
    let (train_config, lora) = (train_config(), lora());
    let run_dir = dir.path().join("run");
    let short = TrainingSetup {
        stop_after: Some(2),
        ..setup(&data, &train_config, &lora, &run_dir)
    };
    train(adapted_tiny(&device), &short).unwrap();
    let changed = TrainConfig {
        learning_rate: 1e-3,
        ..train_config
    };
    let error = train(
        adapted_tiny(&device),
        &TrainingSetup {
            resume: true,
            ..setup(&data, &changed, &lora, &run_dir)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("configuration differs"), "{error}");
}

#[test]
fn peft_adapter_round_trips_and_merging_is_verified() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = data_config(dir.path(), 40);
    let data = tokenized(&config, dir.path());
    let device = training_device(&Device::flex());
    let lora = lora();
    let train_config = TrainConfig {
        max_steps: Some(3),
        ..train_config()
    };
    let run_dir = dir.path().join("run");
    let outcome = train(
        adapted_tiny(&device),
        &setup(&data, &train_config, &lora, &run_dir),
    )
    .unwrap();
    let trained = outcome.model.valid();
    let adapter_dir = dir.path().join("adapter");
    save_peft_adapter(&trained, &lora, Some("tiny"), &adapter_dir).unwrap();
    let config_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config_json["r"], 4);
    assert_eq!(config_json["peft_type"], "LORA");

    // PEFT's key names and layout.
    let bytes = std::fs::read(adapter_dir.join("adapter_model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let a = file
        .tensor("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight")
        .unwrap();
    assert_eq!(a.shape(), [4, 64]);
    let b = file
        .tensor("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight")
        .unwrap();
    assert_eq!(b.shape(), [64, 4]);
    assert_eq!(file.names().len(), 2 * 3 * 2);

    let mut reloaded = common::tiny_model(&Device::flex(), 3);
    let loaded = load_peft_adapter(&mut reloaded, &adapter_dir).unwrap();
    assert_eq!(loaded.targets().unwrap(), lora.targets().unwrap());
    let probes = vec![vec![1u32, 9, 27, 400, 12], vec![5u32, 6, 7]];
    let check = verify_merged(&trained, &reloaded, &probes).unwrap();
    assert_eq!(
        check.max_abs_diff, 0.0,
        "reloaded adapter must be bit-exact"
    );

    let (merged, check) = merge_verified(&reloaded, &probes).unwrap();
    assert!(merged.adapted_projections().is_empty());
    assert!(check.max_abs_diff <= check.tolerance);
    // Trained adapters are not a no-op: the base model differs from the merged one.
    let base = common::tiny_model(&Device::flex(), 3);
    let error = verify_merged(&reloaded, &base, &probes).unwrap_err();
    assert!(matches!(error, Error::MergeMismatch(_)), "{error}");
    // B moved away from zero, so the adapter really changes the output.
    let trained_b = trained
        .projection(0, ProjectionKind::Q)
        .lora
        .as_ref()
        .unwrap();
    let values = trained_b.b.val().abs().max().into_scalar::<f32>();
    assert!(values > 0.0);
}

#[test]
fn masking_audit_trains_only_assistant_tokens_and_reports_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = data_config(dir.path(), 40);
    let data = tokenized(&config, dir.path());
    let audit = &data.meta.train_audit;
    assert_eq!(audit.examples, 32);
    assert_eq!(data.meta.eval_audit.examples, 8);
    let assistant = audit.per_role["assistant"];
    assert!(assistant.trained > 0 && assistant.trained <= assistant.tokens);
    for role in ["user", "system"] {
        if let Some(tokens) = audit.per_role.get(role) {
            assert_eq!(tokens.trained, 0, "{role} tokens are trained");
        }
    }
    assert_eq!(audit.trained_tokens, assistant.trained);
    // The reply and its end-of-turn token are trained; the question is not.
    let (prompt, reply) = audit.sample.split_once("[[").expect("a marked span");
    assert!(
        prompt.contains("<|im_start|>user\nCalculate"),
        "{}",
        audit.sample
    );
    assert!(
        reply.contains("<|im_end|>") && reply.contains("]]"),
        "{}",
        audit.sample
    );
    assert_eq!(audit.truncated, 0);

    // A tiny max length truncates every example and leaves no target in most.
    config.max_seq_len = 24;
    let tokenizer = common::tokenizer();
    let template = tokenizer.chat_template().unwrap().unwrap();
    let short = tokenize_data(&config, &tokenizer, &template, &dir.path().join("short"));
    match short {
        Ok(data) => {
            let audit = &data.meta.train_audit;
            assert!(audit.truncated > 0);
            assert_eq!(
                audit.truncated,
                audit.examples + audit.skipped_no_target_after_truncation
            );
        }
        Err(error) => assert!(error.to_string().contains("empty"), "{error}"),
    }
}

#[test]
fn bad_data_gives_errors_that_name_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = common::tokenizer();
    let template = tokenizer.chat_template().unwrap().unwrap();
    let path = dir.path().join("bad.jsonl");
    let good = r#"{"instruction": "Say hi", "output": "hi"}"#;
    let run = |contents: &str, format: DataFormat| {
        std::fs::write(&path, contents).unwrap();
        let config = DataConfig {
            train: path.clone(),
            format,
            eval_examples: 0,
            ..Default::default()
        };
        tokenize_data(&config, &tokenizer, &template, &dir.path().join("cache"))
            .unwrap_err()
            .to_string()
    };
    let error = run(
        &format!("{good}\n\n{{\"instruction\": oops}}\n"),
        DataFormat::Auto,
    );
    assert!(error.contains("bad.jsonl:3"), "{error}");
    let error = run(
        &format!("{good}\n{{\"messages\": [{{\"role\": \"user\", \"content\": \"x\"}}]}}\n"),
        DataFormat::Auto,
    );
    assert!(
        error.contains("bad.jsonl:2") && error.contains("no assistant"),
        "{error}"
    );
    let error = run(&format!("{good}\n"), DataFormat::Sharegpt);
    assert!(
        error.contains("bad.jsonl:1") && error.contains("conversations"),
        "{error}"
    );
    let error = run("\n\n", DataFormat::Auto);
    assert!(error.contains("empty"), "{error}");
    let error = toml::from_str::<DataConfig>("train = \"x.jsonl\"\nformat = \"csv\"")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("csv") && error.contains("sharegpt"),
        "{error}"
    );
}

/// Rows of (tokens, trained) for the step tests: different lengths and target counts, so a
/// per-micro-batch average would weigh tokens differently from the token-normalised loss.
fn rows() -> Vec<(Vec<u32>, Vec<bool>)> {
    (0..4)
        .map(|row| {
            let len = 6 + 5 * row;
            let tokens: Vec<u32> = (0..len)
                .map(|i| ((i * 37 + row * 101) % 49_000) as u32)
                .collect();
            let trained: Vec<bool> = (0..len).map(|i| i >= len - 2 - 2 * row).collect();
            (tokens, trained)
        })
        .collect()
}

fn factors(model: &Llama) -> Vec<f32> {
    model
        .adapted_projections()
        .into_iter()
        .flat_map(|(layer, kind)| {
            let adapter = model.projection(layer, kind).lora.as_ref().unwrap();
            let mut values = lora_training::adapter::adapter_values(adapter);
            values.truncate(64);
            values
        })
        .collect()
}

#[test]
fn accumulated_micro_batches_equal_one_large_batch() {
    let _serial = serial();
    let device = training_device(&Device::flex());
    let config = TrainConfig {
        max_grad_norm: 0.0,
        ..train_config()
    };
    let lora = LoraConfig {
        dropout: 0.0,
        ..lora()
    };
    let fresh = || {
        let mut model = freeze_base(common::tiny_model(&device, 3));
        attach_adapters(&mut model, &lora, 11).unwrap();
        model
    };
    let rows = rows();
    let targets: usize = rows
        .iter()
        .map(|(_, t)| t.iter().skip(1).filter(|&&x| x).count())
        .sum();
    let run = |batches: Vec<Batch>| {
        let mut model = fresh();
        let mut optimizer = new_optimizer(&model);
        let mut losses = Vec::new();
        for _ in 0..2 {
            let outcome = optimizer_step(
                &mut model,
                &mut optimizer,
                &batches,
                targets,
                1e-2,
                &config,
                &Group::single(),
                &mut StepGraph::eager(),
            );
            losses.push(outcome.loss);
        }
        (losses, factors(&model))
    };
    let (one_loss, one) = run(vec![Batch::from_rows(&rows, 0, &device)]);
    let (split_loss, split) = run(vec![
        Batch::from_rows(&rows[..1], 0, &device),
        Batch::from_rows(&rows[1..], 0, &device),
    ]);
    for (a, b) in one_loss.iter().zip(&split_loss) {
        assert!((a - b).abs() < 1e-5, "{one_loss:?} vs {split_loss:?}");
    }
    let worst = one
        .iter()
        .zip(&split)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-5, "factors differ by {worst}");
    assert!(one.iter().any(|&v| v != 0.0));
}

/// Two optimiser steps (no clipping, no dropout) of a fresh adapted tiny model over the batch
/// `make` builds, layers checkpointed or not: the batch, the losses and the first factors.
fn two_steps(make: impl Fn(&Device) -> Batch, checkpointing: bool) -> (Batch, Vec<f64>, Vec<f32>) {
    let config = TrainConfig {
        max_grad_norm: 0.0,
        ..train_config()
    };
    let lora = LoraConfig {
        dropout: 0.0,
        ..lora()
    };
    let device = training_device(&Device::flex());
    let mut model = freeze_base(common::tiny_model(&device, 3));
    model.checkpoint_layers = checkpointing;
    attach_adapters(&mut model, &lora, 11).unwrap();
    let mut optimizer = new_optimizer(&model);
    let batch = make(&device);
    let mut losses = Vec::new();
    for _ in 0..2 {
        let outcome = optimizer_step(
            &mut model,
            &mut optimizer,
            std::slice::from_ref(&batch),
            batch.target_tokens,
            1e-2,
            &config,
            &Group::single(),
            &mut StepGraph::eager(),
        );
        losses.push(outcome.loss);
    }
    (batch, losses, factors(&model))
}

/// A padding-free micro-batch (every example packed into one row, attention kept within each)
/// gives the padded batch's loss and update, with and without layer checkpointing, and
/// computes no padding; padded to a width multiple (the CUDA-graph layout: one more segment of
/// padding, the whole width as the longest example) it gives the same step again.
#[test]
fn padding_free_batches_give_the_padded_step() {
    let _serial = serial();
    let rows = rows();
    let run = |packed: Option<usize>, checkpointing: bool| {
        let make = |device: &Device| match packed {
            Some(multiple) => Batch::packed_from_rows(&rows, multiple, device),
            None => Batch::from_rows(&rows, 0, device),
        };
        two_steps(make, checkpointing)
    };
    let (padded, padded_loss, padded_factors) = run(None, false);
    let real: usize = rows.iter().map(|(t, _)| t.len()).sum();
    let positions = real - rows.len();
    assert_eq!(padded.shape(), [4, 20]);
    assert!(padded.computed_tokens > real);
    for (multiple, checkpointing) in [(1, false), (1, true), (16, false), (16, true)] {
        let (packed, loss, values) = run(Some(multiple), checkpointing);
        assert!(packed.is_packed());
        let width = if multiple == 1 {
            positions
        } else {
            (positions + 1).next_multiple_of(multiple)
        };
        assert_eq!(packed.shape(), [1, width]);
        assert_eq!(packed.computed_tokens, real + width - positions);
        assert_eq!(packed.target_tokens, padded.target_tokens);
        for (a, b) in padded_loss.iter().zip(&loss) {
            assert!(
                (a - b).abs() < 1e-5 * a.abs(),
                "multiple {multiple}: {padded_loss:?} vs {loss:?}"
            );
        }
        let worst = padded_factors
            .iter()
            .zip(&values)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            worst < 1e-5,
            "multiple {multiple}, checkpointing {checkpointing}: factors differ by {worst}"
        );
    }
    assert!(padded_factors.iter().any(|&v| v != 0.0));
}

/// A whole padding-free training run on the real tokenizer's data follows the padded run's
/// loss curve, and its metrics say no padding was computed.
#[test]
fn padding_free_training_follows_the_padded_loss_curve() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = data_config(dir.path(), 48);
    let data = tokenized(&config, dir.path());
    let device = training_device(&Device::flex());
    let lora = LoraConfig {
        dropout: 0.0,
        ..lora()
    };
    let curve = |padding_free: bool| {
        let train_config = TrainConfig {
            max_steps: Some(3),
            eval_every: 3,
            // Random batches, so that padded rows do pad.
            length_group_size: 1,
            padding_free,
            ..train_config()
        };
        let run_dir = dir.path().join(format!("padding-free-{padding_free}"));
        let mut model = freeze_base(common::tiny_model(&device, 3));
        attach_adapters(&mut model, &lora, 11).unwrap();
        let outcome = train(model, &setup(&data, &train_config, &lora, &run_dir)).unwrap();
        assert_eq!(outcome.padding_fraction == 0.0, padding_free);
        read_metrics(&run_dir.join(METRICS_FILE)).unwrap()
    };
    let (padded, packed) = (curve(false), curve(true));
    assert_eq!(padded.len(), packed.len());
    let mut steps = 0;
    for (a, b) in padded.iter().zip(&packed) {
        match (a, b) {
            (Metric::Train(a), Metric::Train(b)) => {
                steps += 1;
                assert!(
                    (a.loss - b.loss).abs() < 1e-4 * a.loss,
                    "step {}: {} vs {}",
                    a.step,
                    a.loss,
                    b.loss
                );
                assert_eq!(a.tokens, b.tokens);
                assert!(a.computed_tokens > a.tokens, "padded rows compute padding");
                assert_eq!(b.computed_tokens, b.tokens, "packed rows compute none");
            }
            (Metric::Eval(a), Metric::Eval(b)) => {
                assert!((a.eval_loss - b.eval_loss).abs() < 1e-4 * a.eval_loss);
            }
            other => panic!("metrics out of step: {other:?}"),
        }
    }
    assert_eq!(steps, 3);
}

#[test]
fn activation_checkpointing_gives_the_same_step() {
    let _serial = serial();
    let rows = rows();
    let run = |checkpointing: bool| {
        let (_, losses, factors) =
            two_steps(|device| Batch::from_rows(&rows, 0, device), checkpointing);
        (losses, factors)
    };
    let (plain_loss, plain) = run(false);
    let (recomputed_loss, recomputed) = run(true);
    for (a, b) in plain_loss.iter().zip(&recomputed_loss) {
        assert!(
            (a - b).abs() < 1e-6 * a.abs(),
            "losses {plain_loss:?} vs {recomputed_loss:?}"
        );
    }
    let worst = plain
        .iter()
        .zip(&recomputed)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-6, "factors differ by {worst}");
}
