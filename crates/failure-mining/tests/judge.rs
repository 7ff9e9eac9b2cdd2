//! Open-answer items graded by an LLM judge, end to end through `run_phase1b`: SmolLM2-135M on
//! the CPU answers a user's open questions (beside COPA items from the real pool), and a judge
//! behind llm-client's fault-injecting server on loopback (a share of its calls get 429s and
//! 5xx) grades each reply against its reference. Checked:
//! - the open-answer file goes through the leakage check (a GSM8K question planted in it is
//!   dropped and counted) and every other row becomes a judge item on its hashed split;
//! - every judged record carries the verdict the scripted judge gives for that very reply, a
//!   wrong one with the judge's words as its reason;
//! - every judge answer was delivered once, and a rerun that has lost `results.jsonl` grades
//!   every item again with no new judge call (the ledger replays what was paid);
//! - `judge.json` records the judge for phase 1C, and grading the holdout with it (as 1C does
//!   after training) gives the same verdicts; a test set with open answers but no `[judge]` is
//!   refused naming the field, before any item is graded.

#[path = "../../llm-client/tests/support/mod.rs"]
mod support;

use std::path::Path;

use benchmarks::LocalModel;
use failure_mining::judge::OPEN_ANSWER_FAMILY;
use failure_mining::phase::{
    DEFAULT_CONFIG, JUDGE_SETTINGS, Phase1bConfig, read_judge_settings, run_phase1b,
};
use failure_mining::run::{JudgeSource, run_items_judged};
use llama::Pretrained;
use llama::burn::tensor::Device;
use llm_client::LlmSettings;
use records::eval::EvalRecord;
use records::jsonl::read_jsonl;
use records::mining::{Grader, Split, TestItem, TestSetManifest};
use support::{Fault, FaultServer, ServerConfig};

const OPEN_QUESTIONS: [(&str, &str); 6] = [
    ("What is the capital of France?", "Paris"),
    ("Which planet is known as the Red Planet?", "Mars"),
    (
        "What gas do plants take in from the air to make sugar?",
        "carbon dioxide",
    ),
    ("How many legs does a spider have?", "eight"),
    ("What is frozen water called?", "ice"),
    ("Who wrote the play Romeo and Juliet?", "Shakespeare"),
];

/// The scripted judge: CORRECT when the candidate mentions the reference (case-insensitive).
fn judge_says_correct(reference: &str, candidate: &str) -> bool {
    candidate.to_lowercase().contains(&reference.to_lowercase())
}

/// The scripted judge's reply to a judge prompt: a sentence of reasoning, then the verdict.
fn scripted_judge(prompt: &str) -> String {
    let between = |start: &str, end: &str| {
        let from = prompt.find(start).expect("judge prompt layout") + start.len();
        let to = prompt[from..].find(end).expect("judge prompt layout") + from;
        prompt[from..to].to_string()
    };
    let reference = between("Reference answer:\n", "\n\nCandidate answer:");
    let candidate = between("Candidate answer:\n", "\n\nEnd your reply");
    if judge_says_correct(&reference, &candidate) {
        "The candidate states the reference.\nCORRECT".into()
    } else {
        "The candidate does not state the reference.\nINCORRECT".into()
    }
}

fn config(dir: &Path, overrides: &[String]) -> Phase1bConfig {
    let assets = assets::AssetPaths::locate();
    let model = assets
        .require(&assets.smollm2_dir())
        .expect("SmolLM2 is missing: run `cargo xtask assets`");
    let mut all = vec![
        format!("run_dir={:?}", dir.join("run")),
        format!("model.path={model:?}"),
        format!("embedding_model={:?}", assets.minilm_dir()),
        "testset.size=12".into(),
        r#"testset.families=["copa"]"#.into(),
        format!("testset.open_answer_files=[{:?}]", dir.join("open.jsonl")),
        "run.max_new_tokens.judge=24".into(),
        "patterns.k=2".into(),
        r#"labels.labeller="keywords""#.into(),
    ];
    all.extend_from_slice(overrides);
    pipeline::parse_config(DEFAULT_CONFIG, "embedded phase1b.toml", &all).unwrap()
}

#[test]
fn open_answers_are_judged_once_through_faults_and_replayed_on_a_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let assets = assets::AssetPaths::locate();
    let gsm8k = benchmarks::data::load_gsm8k(&assets.data()).unwrap();
    let mut rows: Vec<serde_json::Value> = OPEN_QUESTIONS
        .iter()
        .map(|(question, reference)| serde_json::json!({"question": question, "reference": reference}))
        .collect();
    rows.push(
        serde_json::json!({"question": gsm8k[0].question, "reference": "18", "family": "planted"}),
    );
    records::jsonl::write_jsonl_atomic(dir.path().join("open.jsonl"), &rows).unwrap();

    // Without a judge, the run stops before grading anything, naming the field.
    let error = run_phase1b(&config(dir.path(), &[]))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("judge") && error.contains("6 open-answer items"),
        "{error}"
    );
    assert!(!dir.path().join("run/results.jsonl").exists());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(FaultServer::start(ServerConfig {
        fail_rate: 0.3,
        random_faults: vec![
            Fault::RateLimit {
                retry_after: None,
                retry_after_ms: Some(10),
            },
            Fault::Status(503),
        ],
        seed: 7,
        reply: Some(scripted_judge),
        ..ServerConfig::default()
    }));
    let judged = config(
        dir.path(),
        &[
            r#"judge.kind="endpoint""#.into(),
            format!("judge.endpoint.base_url={:?}", server.base_url),
            r#"judge.endpoint.model="scripted-judge""#.into(),
            "judge.timeout_s=5".into(),
        ],
    );
    let outcome = run_phase1b(&judged).unwrap();
    let run = dir.path().join("run");

    // The test set: six judge items, the GSM8K plant dropped and counted.
    let items: Vec<TestItem> = read_jsonl(run.join("testset.jsonl")).unwrap();
    let open: Vec<&TestItem> = items
        .iter()
        .filter(|item| item.family == OPEN_ANSWER_FAMILY)
        .collect();
    assert_eq!(open.len(), 6);
    assert!(open.iter().all(
        |item| matches!(&item.grader, Grader::Judge { reference } if *reference == item.gold)
    ));
    assert_eq!(outcome.items, items.len());
    let manifest: TestSetManifest =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.families["planted"].leaked, 1);
    assert_eq!(manifest.leakage.dropped["gsm8k"], 1);
    let counts = &manifest.families[OPEN_ANSWER_FAMILY];
    assert_eq!((counts.available, counts.mine + counts.holdout), (6, 6));

    // Every open item's record holds the scripted judge's verdict on its own reply.
    let records: Vec<EvalRecord> = read_jsonl(run.join("results.jsonl")).unwrap();
    assert_eq!(records.len(), items.len());
    for item in &open {
        let record = records.iter().find(|r| r.item_id == item.id).unwrap();
        assert_eq!(record.protocol, "judge/generative");
        let reply = record.output.trim();
        let expected = !reply.is_empty() && judge_says_correct(&item.gold, reply);
        assert_eq!(record.correct, expected, "{}: {reply:?}", item.question);
        if !record.correct && !reply.is_empty() {
            let detail = record.detail.as_deref().unwrap();
            assert!(
                detail.starts_with("judge `scripted-judge`: ") && detail.contains("INCORRECT"),
                "{detail}"
            );
        }
    }
    // SmolLM2's greedy replies give both verdicts (e.g. "The capital of France is Paris." and
    // a spider's legs counted as "two pairs").
    let right = open
        .iter()
        .filter(|item| records.iter().any(|r| r.item_id == item.id && r.correct))
        .count();
    assert!((1..6).contains(&right), "{right} of 6 judged correct");
    // Faults were met, and each judge prompt was answered (paid) exactly once.
    let log = server.records();
    assert!(log.iter().any(|r| r.fault.is_some()), "no fault was drawn");
    let delivered: Vec<&str> = log
        .iter()
        .filter(|r| r.delivered_ok)
        .map(|r| r.prompt.as_str())
        .collect();
    let distinct: std::collections::BTreeSet<&str> = delivered.iter().copied().collect();
    assert_eq!(
        delivered.len(),
        distinct.len(),
        "a judge answer was paid twice"
    );
    assert!(!delivered.is_empty() && delivered.len() <= 6);
    // Every judge request asks for the structured verdict (enforced where the endpoint can).
    assert!(log.iter().all(|r| r.had_response_format));

    let report = std::fs::read_to_string(&outcome.report_markdown).unwrap();
    assert!(
        report.contains("6 open-answer items were graded by the LLM judge `scripted-judge` at"),
        "{report}"
    );

    // Phase 1C's copy of the judge names the endpoint, and grading the holdout's open answers
    // with it (as 1C does after training, into its own results and ledger) gives the same
    // verdicts for the same replies.
    let settings: LlmSettings = read_judge_settings(&run, &items).unwrap().unwrap();
    assert_eq!(settings.kind, "endpoint");
    assert_eq!(settings.endpoint.model.as_deref(), Some("scripted-judge"));
    let holdout: Vec<TestItem> = items
        .iter()
        .filter(|item| item.split == Split::Holdout)
        .cloned()
        .collect();
    let model = LocalModel::new(
        judged.model.path.display().to_string(),
        Pretrained::load(&judged.model.path, &Device::flex()).unwrap(),
        8,
    );
    let after_dir = dir.path().join("1c");
    let after = run_items_judged(
        &model,
        &holdout,
        &after_dir.join("holdout_after.jsonl"),
        &judged.run,
        Some(JudgeSource {
            settings: &settings,
            ledger: &after_dir.join("judge-ledger.sqlite"),
            device: "cpu",
        }),
    )
    .unwrap();
    assert!(after.iter().any(|r| r.protocol == "judge/generative"));
    for record in &after {
        let before = records
            .iter()
            .find(|r| r.item_id == record.item_id)
            .unwrap();
        assert_eq!(
            (record.correct, &record.detail),
            (before.correct, &before.detail)
        );
    }

    // Without judge.json, phase 1C could not grade those holdout items alike: refused.
    let kept = std::fs::read(run.join(JUDGE_SETTINGS)).unwrap();
    std::fs::remove_file(run.join(JUDGE_SETTINGS)).unwrap();
    let error = read_judge_settings(&run, &items).unwrap_err().to_string();
    assert!(
        error.contains(JUDGE_SETTINGS) && error.contains("is an open answer"),
        "{error}"
    );
    assert!(read_judge_settings(&run, &[]).unwrap().is_none());
    std::fs::write(run.join(JUDGE_SETTINGS), kept).unwrap();

    // A rerun that lost its results grades everything again; the judge is not called again.
    std::fs::remove_file(run.join("results.jsonl")).unwrap();
    let requests_before = server.request_count();
    run_phase1b(&judged).unwrap();
    assert_eq!(server.request_count(), requests_before);
    let again: Vec<EvalRecord> = read_jsonl(run.join("results.jsonl")).unwrap();
    let verdicts = |records: &[EvalRecord]| {
        let mut pairs: Vec<(String, bool, Option<String>)> = records
            .iter()
            .map(|r| (r.item_id.clone(), r.correct, r.detail.clone()))
            .collect();
        pairs.sort();
        pairs
    };
    assert_eq!(verdicts(&again), verdicts(&records));
}
