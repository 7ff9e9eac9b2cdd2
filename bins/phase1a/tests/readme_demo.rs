//! The README's `cargo xtask phase1a` as a new user meets it: a fresh checkout with the assets
//! fetched and no `runs/` directory. The embedded demo runs end to end (demo data, training,
//! verified merge, validation before and after) with its step count and validation cut down so
//! it fits CI, and every output the README names exists.

use std::path::Path;
use std::process::Command;

#[test]
fn the_embedded_demo_runs_in_a_fresh_directory() {
    let assets = assets::AssetPaths::locate();
    let fresh = assets
        .fresh_checkout()
        .expect("SmolLM2 assets missing: run `cargo xtask assets`");
    assert!(!fresh.path().join("runs").exists());
    let output = Command::new(env!("CARGO_BIN_EXE_phase1a"))
        .arg("--demo")
        .args([
            "--set",
            "train.max_steps=2",
            "--set",
            "train.micro_batch_size=2",
            "--set",
            "data.eval_examples=8",
            "--set",
            "train.eval_every=0",
            "--set",
            "train.checkpoint_every=0",
            "--set",
            "merge.probes=2",
            "--set",
            "validate.exact_match_examples=2",
            "--set",
            "validate.benchmarks=[\"mmlu\"]",
            "--set",
            "validate.mmlu_subjects=[\"anatomy\"]",
        ])
        .current_dir(fresh.path())
        .env("TUNELOOP_ASSETS", &assets.root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "phase1a --demo failed:\n{stderr}");
    let run = fresh.path().join("runs/phase1a");
    for file in [
        "config.toml",
        "demo-data/train.jsonl",
        "demo-data/eval.jsonl",
        "metrics.jsonl",
        "loss.svg",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "merged/config.json",
        "merged/model.safetensors",
        "validate/base/mmlu_loglikelihood.results.json",
        "validate/merged/mmlu_loglikelihood.results.json",
        "report.md",
    ] {
        assert!(run.join(file).is_file(), "{file} missing after the demo");
    }
    let steps = records::jsonl::read_jsonl::<serde_json::Value>(run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter(|line| line.get("loss").is_some())
        .count();
    assert!(steps >= 2, "{steps} training steps logged");
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(
        report.contains("Merge check") && report.contains("mmlu"),
        "{report}"
    );
    assert_no_temporary_files(&run);
}

/// Atomic writers leave nothing half-written behind: no `.tmp` files or staging directories.
fn assert_no_temporary_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(".tmp"),
            "{} left behind",
            entry.path().display()
        );
        if entry.file_type().unwrap().is_dir() {
            assert_no_temporary_files(&entry.path());
        }
    }
}
