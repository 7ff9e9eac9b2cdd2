//! The README's `cargo xtask phase1b` path on real inputs, cut down to fit CI: SmolLM2-135M
//! answers a small stratified subset, its failures are embedded with MiniLM and clustered, and
//! `serve` (a real subprocess over the same model) names the clusters. Every output the README
//! names exists and parses as its typed record.

use std::process::Command;

use records::clusters::ClusterRecord;
use records::eval::EvalRecord;
use records::mining::{FailureRecord, HoldoutMembership, Split, TestItem};

#[test]
fn the_embedded_demo_mines_clusters_and_names_failures() {
    let assets = assets::AssetPaths::locate();
    let fresh = assets
        .fresh_checkout()
        .expect("SmolLM2 assets missing: run `cargo xtask assets`");
    let serve = std::path::Path::new(env!("CARGO_BIN_EXE_phase1b"))
        .parent()
        .unwrap()
        .join("serve");
    assert!(
        serve.is_file(),
        "serve is built beside phase1b (cargo build --workspace)"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_phase1b"))
        .arg("--demo")
        .args([
            "--set",
            "testset.size=32",
            "--set",
            "patterns.k=3",
            "--set",
            "run.max_new_tokens.number=24",
            "--set",
            "run.max_new_tokens.constraints=48",
        ])
        .current_dir(fresh.path())
        .env("TUNELOOP_ASSETS", &assets.root)
        .env("TUNELOOP_SERVE_BIN", &serve)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "phase1b --demo failed:\n{stderr}");
    let run = fresh.path().join("runs/phase1b");
    let read = |name: &str| run.join(name);
    let items: Vec<TestItem> = records::jsonl::read_jsonl(read("testset.jsonl")).unwrap();
    let results: Vec<EvalRecord> = records::jsonl::read_jsonl(read("results.jsonl")).unwrap();
    let failures: Vec<FailureRecord> = records::jsonl::read_jsonl(read("failures.jsonl")).unwrap();
    let clusters: Vec<ClusterRecord> = records::jsonl::read_jsonl(read("clusters.jsonl")).unwrap();
    let membership: Vec<HoldoutMembership> =
        records::jsonl::read_jsonl(read("holdout_membership.jsonl")).unwrap();
    assert_eq!(items.len(), 32);
    assert_eq!(results.len(), 32);
    let mine_failed = results
        .iter()
        .filter(|r| !r.correct)
        .filter(|r| {
            items
                .iter()
                .any(|i| i.id == r.item_id && i.split == Split::Mine)
        })
        .count();
    assert_eq!(failures.len(), mine_failed);
    assert_eq!(clusters.len(), 3);
    assert_eq!(
        clusters.iter().map(|c| c.size).sum::<usize>(),
        failures.len()
    );
    assert_eq!(
        membership.len(),
        items.iter().filter(|i| i.split == Split::Holdout).count()
    );
    // Every cluster has a name; which labeller made it is recorded, and the report says how
    // many fell back to keywords.
    for cluster in &clusters {
        let label = cluster.label.as_ref().expect("every cluster is labelled");
        assert!(!label.name.is_empty());
        assert!(!label.labelled_by.is_empty());
    }
    let html = std::fs::read_to_string(read("report.html")).unwrap();
    let markdown = std::fs::read_to_string(read("report.md")).unwrap();
    for cluster in &clusters {
        let name = &cluster.label.as_ref().unwrap().name;
        assert!(markdown.contains(name.as_str()), "report.md lacks {name}");
    }
    assert!(html.contains("<svg") && html.contains("Failure rate per family"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("3 patterns"), "{stdout}");
}
