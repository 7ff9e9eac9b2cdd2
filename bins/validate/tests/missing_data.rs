//! A missing dataset stops `validate` with a message naming the benchmark, the missing file and
//! the step that provides it (a real run of the binary on the real SmolLM2 weights).

use std::process::Command;

#[test]
fn missing_dataset_names_the_benchmark_file_and_assets_step() {
    let model = assets::AssetPaths::locate().smollm2_dir();
    let empty = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_validate"))
        .arg(&model)
        .args(["--benchmarks", "mmlu", "--limit", "1", "--data-dir"])
        .arg(empty.path())
        .arg("--out")
        .arg(out.path())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("MMLU failed"), "{stderr}");
    let missing = empty.path().join("mmlu").join("dev.jsonl");
    assert!(stderr.contains(&*missing.to_string_lossy()), "{stderr}");
    assert!(stderr.contains("cargo xtask assets"), "{stderr}");
}
