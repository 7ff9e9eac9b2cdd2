//! The test-set builder on the real task pool and the real validation benchmarks (assets step):
//! deterministic, stratified, split by id with no item on both sides, and a benchmark question
//! planted in the pool is caught by the leakage check and counted.

use std::collections::HashSet;
use std::path::Path;

use failure_mining::pool::POOL_FAMILIES;
use failure_mining::testset::{TestSetConfig, build_testset, read_testset, write_testset};
use records::mining::Split;

fn config(size: usize) -> TestSetConfig {
    let assets = assets::AssetPaths::locate();
    assets
        .require(&assets.pool())
        .expect("the task pool is missing: run `cargo xtask assets`");
    TestSetConfig::new(size)
}

#[test]
fn build_is_deterministic_stratified_and_split_disjointly() {
    let config = config(400);
    let (items, manifest) = build_testset(&config).unwrap();
    assert_eq!(items.len(), 400);
    assert_eq!(manifest.total, 400);
    let (again, again_manifest) = build_testset(&config).unwrap();
    assert_eq!(items, again);
    assert_eq!(manifest.testset_sha256, again_manifest.testset_sha256);

    // Every family is represented, none dominates.
    let families = config.family_names().unwrap();
    for family in &families {
        let count = items.iter().filter(|item| &item.family == family).count();
        assert!(
            (1..=400 / families.len() + 1).contains(&count),
            "{family}: {count}"
        );
        let counts = &manifest.families[family];
        assert_eq!(counts.mine + counts.holdout, count, "{family}");
    }
    // Ids are unique, and no id is on both sides.
    let ids: HashSet<&str> = items.iter().map(|item| item.id.as_str()).collect();
    assert_eq!(ids.len(), items.len());
    let holdout = items.iter().filter(|i| i.split == Split::Holdout).count();
    assert!(
        (40..=130).contains(&holdout),
        "{holdout} holdout items of 400"
    );

    // A larger set contains the smaller one's items of each pool family's quota order, and an
    // item keeps its split.
    let (larger, _) = build_testset(&TestSetConfig {
        size: 800,
        ..config.clone()
    })
    .unwrap();
    let larger_split: std::collections::HashMap<&str, Split> = larger
        .iter()
        .map(|item| (item.id.as_str(), item.split))
        .collect();
    for item in &items {
        if let Some(split) = larger_split.get(item.id.as_str()) {
            assert_eq!(*split, item.split, "{} changed sides", item.id);
        }
    }
    // The reference n-grams came from all three benchmarks.
    for benchmark in ["mmlu", "gsm8k", "humaneval"] {
        assert!(
            manifest.leakage.reference_ngrams[benchmark] > 1000,
            "{benchmark}"
        );
    }

    // Written and read back; a hand-edited test set is refused.
    let dir = tempfile::tempdir().unwrap();
    write_testset(dir.path(), &items, &manifest).unwrap();
    let (read, _) = read_testset(dir.path()).unwrap();
    assert_eq!(read, items);
    let path = dir.path().join("testset.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"mine\"", "\"holdout\"", 1)).unwrap();
    let error = read_testset(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("testset.jsonl") && error.contains("rebuild"),
        "{error}"
    );
}

#[test]
fn a_planted_benchmark_question_is_dropped_and_counted() {
    let base = config(60);
    let pool = tempfile::tempdir().unwrap();
    for family in POOL_FAMILIES {
        std::fs::copy(family.path(&base.pool_dir), family.path(pool.path())).unwrap();
    }
    // An MMLU test question (with its choices) dressed as an ARC-Easy row.
    let mmlu =
        benchmarks::data::load_mmlu(&base.benchmark_data_dir, benchmarks::data::MmluSplit::Test)
            .unwrap();
    let planted = mmlu
        .iter()
        .find(|item| item.question.split_whitespace().count() > 20)
        .unwrap();
    let row = serde_json::json!({
        "id": "planted", "question": planted.question,
        "choices": {"text": planted.choices, "label": ["A", "B", "C", "D"]},
        "answerKey": "A",
    });
    let arc = POOL_FAMILIES.iter().find(|f| f.name == "arc_easy").unwrap();
    append_line(&arc.path(pool.path()), &row.to_string());
    let config = TestSetConfig {
        pool_dir: pool.path().to_path_buf(),
        families: Some(vec!["arc_easy".into(), "copa".into()]),
        size: 5000,
        ..base
    };
    let (items, manifest) = build_testset(&config).unwrap();
    assert_eq!(manifest.leakage.dropped.get("mmlu"), Some(&1));
    assert_eq!(manifest.families["arc_easy"].leaked, 1);
    assert!(items.iter().all(|item| item.question != planted.question));
    assert!(manifest.leakage.examples[0].contains("arc_easy (mmlu)"));
    // Everything else of the two families is there: 570 ARC-Easy + 100 COPA rows.
    assert_eq!(items.len(), 670);
    assert!(
        manifest
            .notes
            .iter()
            .any(|note| note.contains("5000 items asked for"))
    );
}

#[test]
fn bad_configs_are_named() {
    let mut config = config(10);
    config.families = Some(vec!["arc_easy".into(), "astrology".into()]);
    let error = build_testset(&config).unwrap_err().to_string();
    assert!(
        error.contains("astrology") && error.contains("arc_challenge"),
        "{error}"
    );
    let error = build_testset(&TestSetConfig {
        size: 0,
        ..TestSetConfig::new(0)
    })
    .unwrap_err()
    .to_string();
    assert!(error.contains("empty"), "{error}");
    let mut config = TestSetConfig::new(10);
    config.holdout_percent = 0;
    let error = build_testset(&config).unwrap_err().to_string();
    assert!(error.contains("holdout_percent"), "{error}");
}

fn append_line(path: &Path, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(file, "{line}").unwrap();
}
