//! MMLU log-likelihood scoring of the real SmolLM2 against the independent reference scorer
//! (tools/reference/mmlu_reference.py: float64 numpy model, lm-eval's prompt and
//! context/continuation split) → fixtures/golden/mmlu_loglik_smollm2.jsonl.
//!
//! CI checks the first `TUNELOOP_MMLU_REFERENCE_ITEMS` items (default 24); the whole golden
//! (120 items) runs with `TUNELOOP_MMLU_REFERENCE_ITEMS=120 cargo test -p benchmarks --test
//! mmlu_reference`.

use std::collections::BTreeMap;
use std::path::Path;

use benchmarks::data::{MmluItem, MmluSplit, load_mmlu};
use benchmarks::mmlu::loglikelihood_context;
use benchmarks::{LanguageModel, LocalModel, LoglikelihoodRequest};
use llama::Pretrained;
use llama::burn::tensor::Device;
use serde::Deserialize;

#[derive(Deserialize)]
struct ReferenceItem {
    index: usize,
    subject: String,
    loglik: [f64; 4],
    context_token_ids: Vec<u32>,
    continuation_token_ids: Vec<Vec<u32>>,
}

fn reference_items() -> Vec<ReferenceItem> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/golden/mmlu_loglik_smollm2.jsonl");
    let limit: usize = std::env::var("TUNELOOP_MMLU_REFERENCE_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .take(limit)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

struct Setup {
    model: LocalModel,
    contexts: Vec<String>,
    reference: Vec<ReferenceItem>,
}

fn setup(batch_size: usize) -> Setup {
    let paths = assets::AssetPaths::locate();
    let dir = paths
        .require(&paths.smollm2_dir())
        .unwrap_or_else(|e| panic!("{e}"));
    let pretrained = Pretrained::load(&dir, &Device::flex()).unwrap();
    let test = load_mmlu(&paths.data(), MmluSplit::Test).unwrap();
    let dev = load_mmlu(&paths.data(), MmluSplit::Dev).unwrap();
    let mut shots: BTreeMap<&str, Vec<&MmluItem>> = BTreeMap::new();
    for item in &dev {
        let entry = shots.entry(item.subject.as_str()).or_default();
        if entry.len() < 5 {
            entry.push(item);
        }
    }
    let reference = reference_items();
    let contexts = reference
        .iter()
        .map(|r| {
            let item = &test[r.index];
            assert_eq!(
                item.subject, r.subject,
                "item {} is the reference's",
                r.index
            );
            loglikelihood_context(item, &shots[item.subject.as_str()])
        })
        .collect();
    Setup {
        model: LocalModel::new("smollm2", pretrained, batch_size),
        contexts,
        reference,
    }
}

fn requests(contexts: &[String]) -> Vec<LoglikelihoodRequest> {
    contexts
        .iter()
        .flat_map(|context| {
            [" A", " B", " C", " D"].map(|letter| LoglikelihoodRequest {
                context: context.clone(),
                continuation: letter.to_string(),
            })
        })
        .collect()
}

#[test]
fn mmlu_loglikelihoods_agree_with_the_reference_scorer_per_item() {
    let setup = setup(8);
    let scores = setup
        .model
        .loglikelihood(&requests(&setup.contexts))
        .unwrap();
    let mut worst = 0f64;
    for (item, (reference, context)) in setup.reference.iter().zip(&setup.contexts).enumerate() {
        for (choice, letter) in [" A", " B", " C", " D"].iter().enumerate() {
            let got = scores[item * 4 + choice].logprob;
            let want = reference.loglik[choice];
            worst = worst.max((got - want).abs());
            assert!(
                (got - want).abs() < 2e-3,
                "item {} choice{letter}: {got} vs reference {want}",
                reference.index
            );
        }
        let argmax = |v: &[f64]| (0..4).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        let ours: Vec<f64> = (0..4).map(|c| scores[item * 4 + c].logprob).collect();
        let mut sorted = reference.loglik;
        sorted.sort_by(f64::total_cmp);
        if sorted[3] - sorted[2] > 4e-3 {
            assert_eq!(
                argmax(&ours),
                argmax(&reference.loglik),
                "item {}",
                reference.index
            );
        }
        assert!(!context.is_empty());
    }
    eprintln!(
        "{} items, max |Δ loglik| = {worst:.2e}",
        setup.reference.len()
    );
}

#[test]
fn tokenisation_follows_lm_evals_context_continuation_split() {
    let paths = assets::AssetPaths::locate();
    let dir = paths
        .require(&paths.smollm2_dir())
        .unwrap_or_else(|e| panic!("{e}"));
    let pretrained = Pretrained::load(&dir, &Device::flex()).unwrap();
    let setup_contexts = {
        let test = load_mmlu(&paths.data(), MmluSplit::Test).unwrap();
        let dev = load_mmlu(&paths.data(), MmluSplit::Dev).unwrap();
        reference_items()
            .into_iter()
            .map(|r| {
                let item = &test[r.index];
                let shots: Vec<&MmluItem> = dev
                    .iter()
                    .filter(|d| d.subject == item.subject)
                    .take(5)
                    .collect();
                (loglikelihood_context(item, &shots), r)
            })
            .collect::<Vec<_>>()
    };
    for (context, reference) in &setup_contexts {
        for (choice, letter) in [" A", " B", " C", " D"].iter().enumerate() {
            let (context_ids, continuation_ids) =
                LocalModel::encode_pair(&pretrained, context, letter).unwrap();
            assert_eq!(
                context_ids, reference.context_token_ids,
                "item {}",
                reference.index
            );
            assert_eq!(continuation_ids, reference.continuation_token_ids[choice]);
        }
    }
}

#[test]
fn batch_size_changes_no_score() {
    let one = setup(1);
    let contexts = &one.contexts[..one.contexts.len().min(6)];
    let alone = one.model.loglikelihood(&requests(contexts)).unwrap();
    let eight = setup(8);
    let batched = eight.model.loglikelihood(&requests(contexts)).unwrap();
    for (a, b) in alone.iter().zip(&batched) {
        assert!(
            (a.logprob - b.logprob).abs() < 1e-4,
            "{} vs {}",
            a.logprob,
            b.logprob
        );
        assert_eq!(a.is_greedy, b.is_greedy);
    }
}
