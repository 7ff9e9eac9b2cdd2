//! The README's `validate assets/smollm2-135m-instruct --benchmarks mmlu --limit N` from a fresh
//! checkout (assets fetched, no `runs/`): it creates its default output directory and writes the
//! per-item records and the results file, which parse as their typed records.

use std::process::Command;

use records::eval::{BenchmarkResult, EvalRecord};

#[test]
fn validate_writes_records_and_results_in_a_fresh_directory() {
    let assets = assets::AssetPaths::locate();
    let fresh = assets
        .fresh_checkout()
        .expect("SmolLM2 assets missing: run `cargo xtask assets`");
    let output = Command::new(env!("CARGO_BIN_EXE_validate"))
        .args([
            "assets/smollm2-135m-instruct",
            "--benchmarks",
            "mmlu",
            "--limit",
            "2",
            "--subjects",
            "anatomy",
        ])
        .current_dir(fresh.path())
        .env("TUNELOOP_ASSETS", &assets.root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let out = fresh.path().join("runs/validate");
    let items: Vec<EvalRecord> =
        records::jsonl::read_jsonl(out.join("mmlu_loglikelihood.jsonl")).unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items
            .iter()
            .all(|item| item.subject.as_deref() == Some("anatomy"))
    );
    let result: BenchmarkResult = serde_json::from_str(
        &std::fs::read_to_string(out.join("mmlu_loglikelihood.results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(result.n, 2);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("mmlu"), "the table is printed: {stdout}");
}
