//! The harness over a scripted test double (tests/common): scoring, aggregation, records,
//! resume after a crash, and bad input. Uses the real datasets from assets/data.

mod common;

use std::collections::{BTreeMap, HashSet};

use benchmarks::data::{MmluSplit, load_gsm8k, load_humaneval, load_mmlu};
use benchmarks::{
    Error, EvalRecord, Gsm8kOptions, Gsm8kProtocol, HumanEvalMode, HumanEvalOptions, MmluOptions,
    MmluProtocol, run_gsm8k, run_humaneval, run_mmlu,
};
use common::{ScriptedModel, data_dir, mmlu_key};

fn read_records(path: &std::path::Path) -> Vec<EvalRecord> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const SUBJECTS: [&str; 3] = ["anatomy", "college_physics", "world_religions"];

fn mmlu_options(protocol: MmluProtocol) -> MmluOptions {
    MmluOptions {
        protocol,
        limit: Some(20),
        subjects: Some(SUBJECTS.iter().map(|s| s.to_string()).collect()),
        batch_size: 7,
        ..MmluOptions::default()
    }
}

#[test]
fn mmlu_scores_exactly_the_items_the_model_gets_right_under_both_protocols() {
    let test_items = load_mmlu(&data_dir(), MmluSplit::Test).unwrap();
    let model = ScriptedModel::new(0.3, 11).with_mmlu(&test_items);
    for protocol in [
        MmluProtocol::Loglikelihood,
        MmluProtocol::GenerativeChat,
        MmluProtocol::GenerativeText,
    ] {
        let out = tempfile::tempdir().unwrap();
        let result = run_mmlu(&model, &mmlu_options(protocol), out.path()).unwrap();
        assert_eq!(result.n, 60, "{protocol:?}: 20 per subject × 3");
        assert_eq!(result.per_subject.len(), 3);

        let records = read_records(&out.path().join(format!("mmlu_{}.jsonl", protocol.name())));
        assert_eq!(records.len(), 60);
        let by_id: BTreeMap<&str, &EvalRecord> =
            records.iter().map(|r| (r.item_id.as_str(), r)).collect();
        // Expected correctness comes from the double's own decision per item, not the harness.
        let mut expected_per_subject: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for item in test_items
            .iter()
            .filter(|i| by_id.contains_key(i.id.as_str()))
        {
            let record = by_id[item.id.as_str()];
            let right = !model.errs_on(&mmlu_key(item));
            assert_eq!(record.correct, right, "{protocol:?} {}", item.id);
            assert_eq!(record.gold, ["A", "B", "C", "D"][item.answer]);
            let entry = expected_per_subject
                .entry(item.subject.as_str())
                .or_default();
            entry.0 += 1;
            entry.1 += right as usize;
            if protocol == MmluProtocol::Loglikelihood {
                let logprobs = record.logprobs.as_ref().expect("log-probs recorded");
                assert_eq!(logprobs.len(), 4);
                let Some(benchmarks::Prompt::Text(context)) = Some(&record.prompt) else {
                    panic!("text prompt")
                };
                assert!(context.starts_with(&format!(
                    "The following are multiple choice questions (with answers) about {}.\n\n",
                    item.subject.replace('_', " ")
                )));
                assert_eq!(context.matches("\nAnswer:").count(), 6, "5 shots + target");
            }
        }
        let total_right: usize = expected_per_subject.values().map(|v| v.1).sum();
        let micro = result.metrics["acc"].mean;
        assert!(
            (micro - total_right as f64 / 60.0).abs() < 1e-12,
            "{protocol:?}"
        );
        let macro_expected = expected_per_subject
            .values()
            .map(|(n, c)| *c as f64 / *n as f64)
            .sum::<f64>()
            / 3.0;
        assert!((result.macro_average.unwrap() - macro_expected).abs() < 1e-12);
        for (subject, (n, c)) in &expected_per_subject {
            assert_eq!(
                (
                    result.per_subject[*subject].n,
                    result.per_subject[*subject].correct
                ),
                (*n, *c)
            );
        }
        assert!(
            micro > 0.45 && micro < 0.95,
            "error rate 0.3 gives about 0.7, got {micro}"
        );
        let summary = &result.metrics["acc"];
        assert!(summary.ci95[0] < micro && micro < summary.ci95[1] && summary.stderr > 0.0);
        // results.json holds the same result.
        let written: benchmarks::BenchmarkResult = serde_json::from_str(
            &std::fs::read_to_string(
                out.path()
                    .join(format!("mmlu_{}.results.json", protocol.name())),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(written, result);
    }
}

#[test]
fn mmlu_refuses_loglikelihood_on_a_generation_only_model_and_unknown_subjects() {
    let mut model = ScriptedModel::new(0.0, 1);
    model.supports_loglikelihood = false;
    let out = tempfile::tempdir().unwrap();
    let error = run_mmlu(
        &model,
        &mmlu_options(MmluProtocol::Loglikelihood),
        out.path(),
    )
    .unwrap_err();
    assert!(
        matches!(error, Error::LoglikelihoodUnsupported { .. }),
        "{error}"
    );
    let options = MmluOptions {
        subjects: Some(vec!["astrology".into()]),
        ..mmlu_options(MmluProtocol::GenerativeChat)
    };
    let error = run_mmlu(&model, &options, out.path()).unwrap_err();
    assert!(error.to_string().contains("`astrology`"), "{error}");
}

#[test]
fn gsm8k_strict_flexible_and_majority_vote() {
    let items = load_gsm8k(&data_dir()).unwrap();
    assert_eq!(items.len(), 1319);
    let model = ScriptedModel::new(0.25, 5).with_gsm8k(&items);
    for protocol in [Gsm8kProtocol::CotLlamaChat, Gsm8kProtocol::CotText] {
        let out = tempfile::tempdir().unwrap();
        let options = Gsm8kOptions {
            protocol,
            limit: Some(40),
            batch_size: 16,
            ..Gsm8kOptions::default()
        };
        let result = run_gsm8k(&model, &options, out.path()).unwrap();
        assert_eq!(result.n, 40);
        assert_eq!(result.primary_metric, "exact_match_strict");
        let records = read_records(&out.path().join(format!("gsm8k_{}.jsonl", protocol.name())));
        let mut right = 0;
        for record in &records {
            let item = items.iter().find(|i| i.id == record.item_id).unwrap();
            let expected = !model.errs_on(&item.question);
            right += expected as usize;
            assert_eq!(
                record.correct, expected,
                "{}: {:?}",
                record.item_id, record.output
            );
            assert_eq!(
                record.metrics["exact_match_flexible"],
                expected as u8 as f64
            );
            // Stop strings cut the text protocol's trailing "Q: next".
            assert!(!record.output.contains("Q:"), "{:?}", record.output);
        }
        assert!((result.metrics["exact_match_strict"].mean - right as f64 / 40.0).abs() < 1e-12);
    }

    // maj@5: sampled answers are wrong on a seeded 25% of samples; the vote must follow them.
    let out = tempfile::tempdir().unwrap();
    let options = Gsm8kOptions {
        samples: 5,
        limit: Some(30),
        ..Gsm8kOptions::default()
    };
    let result = run_gsm8k(&model, &options, out.path()).unwrap();
    assert_eq!(result.primary_metric, "maj@5_strict");
    let records = read_records(&out.path().join("gsm8k_cot-llama-chat.jsonl"));
    for record in &records {
        assert_eq!(record.samples.len(), 4);
        let sample_right: Vec<bool> = std::iter::once(record.metrics["exact_match_strict"] == 1.0)
            .chain(record.samples.iter().map(|s| s.correct))
            .collect();
        let right_votes = sample_right.iter().filter(|&&r| r).count();
        // Wrong samples all say gold+1, so the vote is right iff right samples outnumber them
        // (ties go to the first seen).
        let expected = right_votes > 5 - right_votes || (right_votes * 2 == 5 && sample_right[0]);
        assert_eq!(
            record.metrics["maj@5_strict"] == 1.0,
            expected,
            "{}",
            record.item_id
        );
    }
}

#[test]
fn humaneval_completion_and_chat_modes_with_pass_at_k() {
    let problems = load_humaneval(&data_dir()).unwrap();
    let model = ScriptedModel::new(0.3, 9).with_humaneval(&problems);
    for mode in [HumanEvalMode::Completion, HumanEvalMode::Chat] {
        let out = tempfile::tempdir().unwrap();
        let options = HumanEvalOptions {
            mode,
            limit: Some(16),
            ..HumanEvalOptions::default()
        };
        let result = run_humaneval(&model, &options, out.path()).unwrap();
        assert_eq!(result.n, 16);
        assert!(
            result
                .notes
                .iter()
                .any(|n| n.starts_with("sandbox isolation:")),
            "{:?}",
            result.notes
        );
        let records = read_records(&out.path().join(format!("humaneval_{}.jsonl", mode.name())));
        let mut right = 0;
        for record in &records {
            let expected = !model.errs_on(&record.item_id);
            right += expected as usize;
            assert_eq!(
                record.correct, expected,
                "{mode:?} {}: {:?}",
                record.item_id, record.detail
            );
            assert_eq!(record.metrics["pass@1"], expected as u8 as f64);
            if mode == HumanEvalMode::Completion {
                assert!(
                    !record.output.contains("def unrelated"),
                    "stop sequences applied"
                );
            }
        }
        assert!(right > 0 && right < 16);
        assert!((result.metrics["pass@1"].mean - right as f64 / 16.0).abs() < 1e-12);
    }
}

#[test]
fn resume_after_a_crash_recomputes_nothing_already_scored() {
    let items = load_gsm8k(&data_dir()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let options = Gsm8kOptions {
        limit: Some(30),
        batch_size: 4,
        ..Gsm8kOptions::default()
    };
    // Crash on the 4th model call: 3 batches (12 items) are on disk.
    let mut crashing = ScriptedModel::new(0.2, 3).with_gsm8k(&items);
    crashing.fail_after_calls = Some(3);
    let error = run_gsm8k(&crashing, &options, out.path()).unwrap_err();
    assert!(error.to_string().contains("scripted crash"), "{error}");
    let path = out.path().join("gsm8k_cot-llama-chat.jsonl");
    let first = read_records(&path);
    assert_eq!(first.len(), 12);
    assert!(
        !out.path()
            .join("gsm8k_cot-llama-chat.results.json")
            .exists()
    );

    // A torn last line, as a crash mid-write leaves it: dropped and recomputed.
    let mut bytes = std::fs::read(&path).unwrap();
    let last_start = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    let torn_id = first.last().unwrap().item_id.clone();
    bytes.truncate(last_start + 25);
    std::fs::write(&path, &bytes).unwrap();

    let resumed = ScriptedModel::new(0.2, 3).with_gsm8k(&items);
    let result = run_gsm8k(&resumed, &options, out.path()).unwrap();
    assert_eq!(result.n, 30);
    let asked: Vec<String> = resumed.asked.lock().unwrap().clone();
    assert_eq!(
        asked.len(),
        30 - 11,
        "only the 18 unscored items plus the torn one are asked"
    );
    let already: HashSet<&str> = first[..11].iter().map(|r| r.item_id.as_str()).collect();
    let asked_ids: HashSet<String> = asked
        .iter()
        .map(|q| items.iter().find(|i| &i.question == q).unwrap().id.clone())
        .collect();
    assert!(asked_ids.contains(&torn_id));
    assert!(asked_ids.iter().all(|id| !already.contains(id.as_str())));
    let records = read_records(&path);
    assert_eq!(records.len(), 30, "no duplicates, every line complete");

    // Same as an uninterrupted run.
    let fresh_out = tempfile::tempdir().unwrap();
    let fresh = run_gsm8k(
        &ScriptedModel::new(0.2, 3).with_gsm8k(&items),
        &options,
        fresh_out.path(),
    )
    .unwrap();
    assert_eq!(fresh.metrics, result.metrics);

    // A rerun with everything scored asks nothing; a rerun with other options is refused.
    let idle = ScriptedModel::new(0.2, 3).with_gsm8k(&items);
    run_gsm8k(&idle, &options, out.path()).unwrap();
    assert_eq!(idle.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    let other = Gsm8kOptions {
        shots: 4,
        ..options.clone()
    };
    let error = run_gsm8k(&idle, &other, out.path()).unwrap_err();
    assert!(
        matches!(error, Error::ConfigMismatch { .. })
            && error.to_string().contains("shots: was 8, now 4"),
        "{error}"
    );
}

#[test]
fn missing_dataset_names_the_assets_step() {
    let empty = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let model = ScriptedModel::new(0.0, 0);
    let options = Gsm8kOptions {
        data_dir: empty.path().to_path_buf(),
        ..Gsm8kOptions::default()
    };
    let error = run_gsm8k(&model, &options, out.path()).unwrap_err();
    assert!(error.to_string().contains("cargo xtask assets"), "{error}");
    let options = MmluOptions {
        data_dir: empty.path().to_path_buf(),
        ..MmluOptions::default()
    };
    let error = run_mmlu(&model, &options, out.path()).unwrap_err();
    assert!(
        error.to_string().contains("mmlu/dev.jsonl")
            && error.to_string().contains("cargo xtask assets"),
        "{error}"
    );
}
