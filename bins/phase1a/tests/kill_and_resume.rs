//! A real interruption: `phase1a` is killed with SIGKILL mid-run, restarted with `--resume`,
//! and must produce the loss curve of an uninterrupted run bit for bit. Uses a small random
//! Llama saved as an HF directory with SmolLM2's real tokenizer, so it runs in seconds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llama::burn::tensor::Device;
use llama::{ExportOptions, Llama, LlamaConfig, Tokenizer};
use serde_json::{Value, json};

fn tiny_model_dir(root: &Path) -> PathBuf {
    let assets = assets::AssetPaths::locate();
    let smollm2 = assets
        .require(&assets.smollm2_dir().join("tokenizer.json"))
        .expect("SmolLM2 assets missing: run `cargo xtask assets`");
    let tokenizer = Tokenizer::from_hf_dir(smollm2.parent().unwrap()).unwrap();
    let config = LlamaConfig {
        // The test shape with SmolLM2's vocabulary, so its real tokenizer applies.
        vocab_size: 49_152,
        tie_word_embeddings: true,
        ..LlamaConfig::tiny_for_tests()
    };
    let model = Llama::random(&config, 5, &Device::flex()).unwrap();
    let dir = root.join("tiny-model");
    llama::write_hf_dir(
        &dir,
        &config,
        &model.tensors(),
        &tokenizer,
        ExportOptions::default(),
    )
    .unwrap();
    dir
}

fn write_data(path: &Path) {
    let lines: Vec<Value> = (0..240)
        .map(|i| {
            json!({"instruction": format!("What is {} plus {}?", i % 17, i % 11),
                   "output": format!("{}", i % 17 + i % 11)})
        })
        .collect();
    records::jsonl::write_jsonl_atomic(path, &lines).unwrap();
}

fn config(root: &Path, model: &Path, run_dir: &Path) -> PathBuf {
    let text = format!(
        r#"run_dir = "{run}"
[model]
path = "{model}"
[data]
train = "{train}"
eval_examples = 16
max_seq_len = 64
[lora]
rank = 4
alpha = 8.0
dropout = 0.1
target_modules = ["q_proj", "v_proj", "up_proj"]
[train]
max_steps = 40
micro_batch_size = 4
gradient_accumulation_steps = 2
learning_rate = 3e-3
warmup_steps = 3
eval_every = 10
checkpoint_every = 5
keep_checkpoints = 2
[validate]
enabled = false
"#,
        run = run_dir.display(),
        model = model.display(),
        train = root.join("train.jsonl").display(),
    );
    let path = run_dir.with_extension("toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn phase1a(config: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_phase1a"));
    command
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Train-step and eval losses as exact strings (equal strings = equal bits).
fn loss_curve(run_dir: &Path) -> Vec<String> {
    let metrics: Vec<Value> = records::jsonl::read_jsonl(run_dir.join("metrics.jsonl")).unwrap();
    metrics
        .iter()
        .map(|m| {
            format!(
                "{} {} {} {}",
                m["kind"], m["step"], m["loss"], m["eval_loss"]
            )
        })
        .collect()
}

#[test]
fn killed_and_resumed_run_repeats_the_loss_curve_exactly() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(root.path());
    write_data(&root.path().join("train.jsonl"));

    let straight_dir = root.path().join("straight");
    let straight = phase1a(&config(root.path(), &model, &straight_dir), &[])
        .status()
        .unwrap();
    assert!(straight.success());
    let reference = loss_curve(&straight_dir);
    assert_eq!(reference.len(), 40 + 4);
    assert!(straight_dir.join("merged/model.safetensors").exists());
    assert!(
        straight_dir
            .join("adapter/adapter_model.safetensors")
            .exists()
    );

    let run_dir = root.path().join("interrupted");
    let config = config(root.path(), &model, &run_dir);
    let mut child = phase1a(&config, &[]).spawn().unwrap();
    let started = Instant::now();
    let checkpoint = run_dir.join("checkpoints/step-000015/trainer_state.json");
    while !checkpoint.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was not interrupted");
    let partial = loss_curve(&run_dir);
    assert!(partial.len() < reference.len(), "killed after finishing");

    let resumed = phase1a(&config, &["--resume"]).status().unwrap();
    assert!(resumed.success());
    assert_eq!(loss_curve(&run_dir), reference);
    // The last checkpoints are kept, older ones pruned.
    let kept: Vec<_> = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
}

#[test]
fn bad_configuration_names_the_field() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("bad.toml");
    std::fs::write(
        &path,
        "run_dir = \"r\"\n[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\nformat = \"xml\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_phase1a"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("xml") && stderr.contains("alpaca"),
        "{stderr}"
    );
}

/// `--gpus N` launches one process per GPU: asked of a CPU configuration it refuses at once,
/// naming the setting to change, and starts nothing.
#[test]
fn gpus_without_a_cuda_device_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let run_dir = root.path().join("run");
    let output = Command::new(env!("CARGO_BIN_EXE_phase1a"))
        .args(["--demo", "--gpus", "2", "--run-dir"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("model.device = \"cuda\"") && stderr.contains("\"cpu\""),
        "{stderr}"
    );
    assert!(!run_dir.exists(), "nothing written before the refusal");
}
