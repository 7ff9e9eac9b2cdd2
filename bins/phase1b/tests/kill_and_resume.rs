//! A real interruption: `phase1b` is killed with SIGKILL while it grades, run again with the same
//! command, and must end with the results of an uninterrupted run: every item once, none redone.
//! A small random Llama with SmolLM2's real tokenizer keeps it to seconds; clusters are named by
//! keywords (no labelling model) so the run is all local.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llama::burn::tensor::Device;
use llama::{ExportOptions, Llama, LlamaConfig, Tokenizer};
use records::eval::EvalRecord;
use records::mining::{FailureRecord, HoldoutMembership};

fn tiny_model_dir(root: &Path) -> PathBuf {
    let assets = assets::AssetPaths::locate();
    let tokenizer_file = assets
        .require(&assets.smollm2_dir().join("tokenizer.json"))
        .expect("SmolLM2 assets missing: run `cargo xtask assets`");
    let tokenizer = Tokenizer::from_hf_dir(tokenizer_file.parent().unwrap()).unwrap();
    let config = LlamaConfig {
        vocab_size: 49_152,
        tie_word_embeddings: true,
        ..LlamaConfig::tiny_for_tests()
    };
    let model = Llama::random(&config, 11, &Device::flex()).unwrap();
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

fn phase1b(model: &Path, run_dir: &Path) -> Command {
    let assets = assets::AssetPaths::locate();
    let mut command = Command::new(env!("CARGO_BIN_EXE_phase1b"));
    command
        .arg("--demo")
        .arg("--set")
        .arg(format!("run_dir={:?}", run_dir.display().to_string()))
        .arg("--set")
        .arg(format!("model.path={:?}", model.display().to_string()))
        .arg("--set")
        .arg(format!(
            "embedding_model={:?}",
            assets.minilm_dir().display().to_string()
        ))
        .args([
            "--set",
            "testset.size=72",
            "--set",
            "testset.families=[\"arc_easy\", \"copa\", \"trivia_qa\", \"boolq\"]",
            "--set",
            "run.batch_size=4",
            "--set",
            "run.multiple_choice=\"generative\"",
            "--set",
            "run.max_new_tokens.multiple_choice=6",
            "--set",
            "run.max_new_tokens.short_answer=6",
            "--set",
            "patterns.k=3",
            "--set",
            "labels.labeller=\"keywords\"",
        ])
        .env("TUNELOOP_ASSETS", &assets.root);
    command
}

fn results(run_dir: &Path) -> Vec<EvalRecord> {
    records::jsonl::read_jsonl(run_dir.join("results.jsonl")).unwrap()
}

#[test]
fn a_killed_run_resumes_to_the_results_of_an_uninterrupted_one() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(root.path());

    let straight = root.path().join("straight");
    let output = phase1b(&model, &straight).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected = results(&straight);
    assert_eq!(expected.len(), 72);

    // Kill it once some batches are on disk, but before the end.
    let interrupted = root.path().join("interrupted");
    let mut child = phase1b(&model, &interrupted)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let results_path = interrupted.join("results.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lines = std::fs::read_to_string(&results_path)
            .map(|text| text.lines().count())
            .unwrap_or(0);
        if lines >= 8 {
            break;
        }
        assert!(Instant::now() < deadline, "no results after 120 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = results(&interrupted).len();
    assert!(before < 72, "{before} of 72 done when killed");

    let output = phase1b(&model, &interrupted).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("resuming"), "{stderr}");
    let resumed = results(&interrupted);
    assert_eq!(resumed.len(), 72, "every item exactly once");
    let ids: HashSet<&str> = resumed.iter().map(|r| r.item_id.as_str()).collect();
    assert_eq!(ids.len(), 72, "no duplicates");
    let key = |records: &[EvalRecord]| {
        let mut key: Vec<(String, String, bool)> = records
            .iter()
            .map(|r| (r.item_id.clone(), r.output.clone(), r.correct))
            .collect();
        key.sort();
        key
    };
    assert_eq!(key(&resumed), key(&expected));

    // The later stages ran on the whole set and agree with the uninterrupted run.
    let failures: Vec<FailureRecord> =
        records::jsonl::read_jsonl(interrupted.join("failures.jsonl")).unwrap();
    let expected_failures: Vec<FailureRecord> =
        records::jsonl::read_jsonl(straight.join("failures.jsonl")).unwrap();
    assert_eq!(failures, expected_failures);
    let membership: Vec<HoldoutMembership> =
        records::jsonl::read_jsonl(interrupted.join("holdout_membership.jsonl")).unwrap();
    assert!(!membership.is_empty());

    // A third run changes nothing: the test set and patterns are reused, no item is rerun.
    let output = phase1b(&model, &interrupted).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("unchanged"), "{stderr}");
    assert_eq!(results(&interrupted).len(), 72);
}

#[test]
fn two_ranks_grade_disjoint_shards_that_merge_into_the_single_process_results() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(root.path());
    let single = root.path().join("single");
    let output = phase1b(&model, &single).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // `--gpus 2` on the CPU: the same sharding and merge as on two GPUs.
    let sharded = root.path().join("sharded");
    let output = phase1b(&model, &sharded)
        .args(["--gpus", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let shards: Vec<Vec<EvalRecord>> = (0..2)
        .map(|rank| {
            records::jsonl::read_jsonl(sharded.join(format!("results.rank-{rank}.jsonl"))).unwrap()
        })
        .collect();
    assert_eq!(shards[0].len() + shards[1].len(), 72);
    let first: HashSet<&str> = shards[0].iter().map(|r| r.item_id.as_str()).collect();
    assert!(
        shards[1]
            .iter()
            .all(|r| !first.contains(r.item_id.as_str())),
        "disjoint shards"
    );
    assert!(stderr.contains("merged into"), "{stderr}");
    let key = |records: Vec<EvalRecord>| {
        let mut key: Vec<(String, String, bool)> = records
            .into_iter()
            .map(|r| (r.item_id, r.output, r.correct))
            .collect();
        key.sort();
        key
    };
    assert_eq!(key(results(&sharded)), key(results(&single)));
}
