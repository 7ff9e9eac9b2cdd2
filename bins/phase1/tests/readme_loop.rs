//! The README's first command, `cargo xtask phase1`, as a new user meets it: a fresh checkout
//! with the assets fetched and no `runs/`. The embedded loop runs end to end on real inputs —
//! SmolLM2-135M trained (1A), its failures mined and clustered with MiniLM (1B; keyword labels
//! here, to save CI the labeller's minute), targeted data from `serve` as teacher and judge,
//! trained and measured on the holdout (1C) — with every size cut down to fit CI. Then the
//! manifest's promise that a rerun reuses every stage and pays for nothing, bad input named,
//! and `--gpus 2` (refused for training on a CPU; 1B's runner sharded over two processes).
//! (A hand-edited output rerunning its stage, and --resume, are tested on `run_stage` in
//! crates/closed-loop, without paying for three phases again.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use distillation::report::Phase1cReport;
use failure_mining::report::Phase1bReport;
use lora_training::phase::Phase1aReport;
use records::clusters::{ClusterAssignment, ClusterRecord};
use records::distill::{GateDecision, JudgeVerdict, TeacherExample, TrainingExample};
use records::eval::EvalRecord;
use records::jsonl::read_jsonl;
use records::mining::{FailureRecord, HoldoutMembership, TestItem};

/// Sizes cut down for CI; everything else is the embedded default.
const CI_SIZES: &[&str] = &[
    "phase1a.train.max_steps=2",
    "phase1a.train.micro_batch_size=2",
    "phase1a.data.eval_examples=8",
    "phase1a.train.eval_every=0",
    "phase1a.train.checkpoint_every=0",
    "phase1a.merge.probes=2",
    "phase1a.validate.exact_match_examples=2",
    "phase1a.validate.benchmarks=[\"mmlu\"]",
    "phase1a.validate.mmlu_subjects=[\"anatomy\"]",
    "phase1b.testset.size=24",
    "phase1b.patterns.k=3",
    "phase1b.labels.labeller=\"keywords\"",
    "phase1b.run.max_new_tokens.number=24",
    "phase1b.run.max_new_tokens.constraints=48",
    "phase1c.generate.total_examples=3",
    "phase1c.generate.max_tokens=96",
    "phase1c.judge.max_tokens=32",
    "phase1c.judge.calibrate=false",
    "phase1c.decontaminate.embedding_sources=[\"holdout\"]",
    "phase1c.train.max_seq_len=128",
    "phase1c.train.train.max_steps=2",
    "phase1c.train.train.micro_batch_size=2",
    "phase1c.train.validate.enabled=false",
    "phase1c.holdout.max_new_tokens.number=24",
    "phase1c.holdout.max_new_tokens.constraints=48",
];

fn phase1(dir: &Path, assets: &Path, extra: &[&str]) -> Output {
    let serve = Path::new(env!("CARGO_BIN_EXE_phase1"))
        .parent()
        .unwrap()
        .join("serve");
    assert!(
        serve.is_file(),
        "serve is built beside phase1 (cargo build --workspace)"
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_phase1"));
    for assignment in CI_SIZES {
        command.args(["--set", assignment]);
    }
    command
        .args(extra)
        .current_dir(dir)
        .env("TUNELOOP_ASSETS", assets)
        .env("TUNELOOP_SERVE_BIN", &serve)
        .output()
        .unwrap()
}

fn succeeded(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "phase1 failed:\n{stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `stage | action` pairs from phase1's stdout table.
fn actions(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .skip_while(|line| !line.starts_with("stage |"))
        .skip(1)
        .filter_map(|line| {
            let mut cells = line.split(" | ");
            Some((cells.next()?.to_string(), cells.next()?.to_string()))
        })
        .collect()
}

fn paid_attempts(run: &Path) -> u64 {
    ["teacher-ledger.sqlite", "judge-ledger.sqlite"]
        .iter()
        .map(|name| {
            llm_client::Ledger::open(&run.join("1c").join(name))
                .unwrap()
                .counts()
                .unwrap()
                .attempts
        })
        .sum()
}

/// Debian's chromium, fetched rootless into the target directory by
/// tools/chromium/fetch-chromium.sh (about 125 MB once; later runs only check it).
fn headless_chromium() -> PathBuf {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/chromium/fetch-chromium.sh");
    let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chromium");
    let output = Command::new("bash")
        .arg(&script)
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// The page as the browser lays it out: its screenshot shows drawn charts and text (not a
/// blank page, and not text lost to missing fonts), and the DOM after scripts names every
/// cluster and holds every chart.
fn renders_in_headless_chromium(page: &Path, cluster_names: &[&str]) {
    let chromium = headless_chromium();
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    // Kept in the target directory for a look after the test.
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("phase1-report.png");
    // Chromium's stderr is noisy (no D-Bus here) and says nothing the exit code does not.
    let status = Command::new(&chromium)
        .arg(format!("--screenshot={}", screenshot.display()))
        .args(["--window-size=1200,12000", &url])
        .output()
        .unwrap()
        .status;
    assert!(status.success(), "chromium --screenshot: {status}");
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&screenshot).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    let channels = frame.color_type.samples();
    assert!(
        channels >= 3,
        "an RGB screenshot, got {:?}",
        frame.color_type
    );
    let rgb: Vec<&[u8]> = pixels[..frame.buffer_size()]
        .chunks(channels)
        .map(|p| &p[..3])
        .collect();
    let distinct: std::collections::HashSet<&[u8]> = rgb.iter().copied().collect();
    let dark = rgb
        .iter()
        .filter(|p| p.iter().map(|&v| u32::from(v)).sum::<u32>() < 200)
        .count();
    let coloured = rgb
        .iter()
        .filter(|p| p.iter().max().unwrap() - p.iter().min().unwrap() > 60)
        .count();
    eprintln!(
        "{}: {} colours, {dark} dark and {coloured} coloured pixels",
        screenshot.display(),
        distinct.len()
    );
    assert!(
        distinct.len() > 50,
        "{} colours: a blank page",
        distinct.len()
    );
    assert!(dark > 2_000, "{dark} dark pixels: the text did not render");
    assert!(
        coloured > 2_000,
        "{coloured} coloured pixels: the charts did not render"
    );

    let dom = Command::new(&chromium)
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    assert!(dom.status.success(), "chromium --dump-dom: {}", dom.status);
    let dom = String::from_utf8(dom.stdout).unwrap();
    for name in cluster_names {
        // How a serialised DOM writes text: only &, < and > escaped.
        let text = name
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        assert!(
            dom.contains(&text),
            "the rendered page lacks cluster {name}"
        );
    }
    assert!(
        dom.matches("<svg").count() >= 3,
        "the charts are in the page"
    );
}

fn report_json<T: serde::de::DeserializeOwned>(dir: PathBuf) -> T {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn the_embedded_loop_runs_end_to_end_and_reruns_for_free() {
    let assets = assets::AssetPaths::locate();
    let fresh = assets
        .fresh_checkout()
        .expect("SmolLM2 assets missing: run `cargo xtask assets`");
    let run = fresh.path().join("runs/phase1");

    // 1. The whole loop from nothing.
    let stdout = succeeded(&phase1(fresh.path(), &assets.root, &[]));
    let ran: Vec<(String, String)> = ["1a", "1b", "1c"]
        .iter()
        .map(|s| (s.to_string(), "ran".to_string()))
        .collect();
    assert_eq!(actions(&stdout), ran, "{stdout}");

    // Every stage's outputs parse as their typed records and connect.
    let a: Phase1aReport = report_json(run.join("1a"));
    assert_eq!(a.steps, 2);
    assert!(!a.after.is_empty(), "1A validated its merged model");
    assert!(run.join("1a/merged/config.json").is_file());
    let items: Vec<TestItem> = read_jsonl(run.join("1b/testset.jsonl")).unwrap();
    let results: Vec<EvalRecord> = read_jsonl(run.join("1b/results.jsonl")).unwrap();
    let failures: Vec<FailureRecord> = read_jsonl(run.join("1b/failures.jsonl")).unwrap();
    let clusters: Vec<ClusterRecord> = read_jsonl(run.join("1b/clusters.jsonl")).unwrap();
    let assignments: Vec<ClusterAssignment> = read_jsonl(run.join("1b/assignments.jsonl")).unwrap();
    let membership: Vec<HoldoutMembership> =
        read_jsonl(run.join("1b/holdout_membership.jsonl")).unwrap();
    let b: Phase1bReport = report_json(run.join("1b"));
    assert_eq!((items.len(), results.len(), clusters.len()), (24, 24, 3));
    assert_eq!(assignments.len(), failures.len());
    assert!(!membership.is_empty());
    // 1B tested 1A's merged model, not the base.
    assert!(b.model.ends_with("1a/merged"), "{}", b.model);
    let generated: Vec<TeacherExample> = read_jsonl(run.join("1c/generated.jsonl")).unwrap();
    let gate: Vec<GateDecision> = read_jsonl(run.join("1c/gate.jsonl")).unwrap();
    let _: Vec<JudgeVerdict> = read_jsonl(run.join("1c/judged.jsonl")).unwrap();
    let mix: Vec<TrainingExample> = read_jsonl(run.join("1c/mix.jsonl")).unwrap();
    assert_eq!(gate.len(), generated.len(), "one gate decision per example");
    assert!(!mix.is_empty());
    let c: Phase1cReport = report_json(run.join("1c"));
    assert!(c.config.phase1b_dir.ends_with("1b"));
    assert!(c.config.model.path.ends_with("1a/merged"));
    assert!(
        c.config
            .mix
            .original_data
            .ends_with("demo-data/train.jsonl")
    );
    assert!(!c.patterns.is_empty());
    assert!(run.join("1c/train/merged/config.json").is_file());
    let report: closed_loop::Phase1Report = report_json(run.clone());
    assert_eq!(report.rounds_run, 1);
    assert_eq!(report.patterns.len(), 3);

    // One report names every cluster and carries every phase's sections and charts.
    let markdown = std::fs::read_to_string(run.join("report.md")).unwrap();
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    for cluster in &clusters {
        let name = &cluster.label.as_ref().expect("labelled").name;
        assert!(markdown.contains(name.as_str()), "report.md lacks {name}");
        assert!(
            html.contains(&pipeline::report::escape(name)),
            "report.html lacks {name}"
        );
    }
    for heading in [
        "Stages",
        "Benchmarks after each phase",
        "1a · Training",
        "1b · Failure patterns",
        "1c/train · Training",
    ] {
        assert!(markdown.contains(heading), "report.md lacks {heading}");
    }
    assert!(
        html.matches("<svg").count() >= 3,
        "loss curves, cluster map, bars"
    );
    assert!(
        markdown.contains("](1a/loss.svg)"),
        "links relative to the run"
    );
    let cluster_names: Vec<&str> = clusters
        .iter()
        .map(|c| c.label.as_ref().unwrap().name.as_str())
        .collect();
    renders_in_headless_chromium(&run.join("report.html"), &cluster_names);

    // 2. A rerun reuses every stage and pays for nothing.
    let paid = paid_attempts(&run);
    assert!(paid > 0);
    let stdout = succeeded(&phase1(fresh.path(), &assets.root, &[]));
    let reused: Vec<(String, String)> = ["1a", "1b", "1c"]
        .iter()
        .map(|s| (s.to_string(), "reused".to_string()))
        .collect();
    assert_eq!(actions(&stdout), reused, "{stdout}");
    assert_eq!(paid_attempts(&run), paid);

    // 3. A second round continues from the first: round 1's stages are reused, and round 2
    // either runs or, since two optimiser steps improve no pattern's holdout CI, is skipped by
    // the early stop, which the report states.
    let stdout = succeeded(&phase1(fresh.path(), &assets.root, &["--rounds", "2"]));
    let round_actions = actions(&stdout);
    assert_eq!(round_actions[..3], reused[..], "{stdout}");
    let report: closed_loop::Phase1Report = report_json(run.clone());
    let round2: Vec<&str> = round_actions[3..].iter().map(|(_, a)| a.as_str()).collect();
    let names: Vec<&str> = round_actions[3..].iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names, ["1b-r2", "1c-r2"], "{stdout}");
    match report.stopped_early.as_deref() {
        Some(reason) => {
            assert!(reason.starts_with("after round 1:"), "{reason}");
            assert_eq!(round2, ["skipped", "skipped"], "{stdout}");
            assert_eq!(report.rounds_run, 1);
            assert!(
                std::fs::read_to_string(run.join("report.md"))
                    .unwrap()
                    .contains(reason)
            );
        }
        None => {
            assert_eq!(round2, ["ran", "ran"], "{stdout}");
            assert_eq!(report.rounds_run, 2);
        }
    }

    // 4. Bad input is named before any work.
    let output = phase1(fresh.path(), &assets.root, &["--from", "2z"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("2z") && stderr.contains("1a, 1b, 1c"),
        "{stderr}"
    );
    let output = phase1(
        fresh.path(),
        &assets.root,
        &["--set", "model.path=\"assets/no-such-model\""],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no-such-model"), "{stderr}");

    // 5. `--gpus 2`. Training runs one process per GPU over NCCL, so on this CPU it is refused
    // before 1A's directory is touched; 1B's runner shards the test set over two processes of
    // phase1 (CPU ranks here) and folds their results into one.
    let output = phase1(fresh.path(), &assets.root, &["--from", "1a", "--gpus", "2"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("model.device = \"cuda\""), "{stderr}");
    assert!(run.join("1a/merged/config.json").is_file());
    assert!(!run.join("1a.superseded").exists());
    let stdout = succeeded(&phase1(
        fresh.path(),
        &assets.root,
        &["--from", "1b", "--gpus", "2"],
    ));
    let sharded: Vec<(String, String)> = [("1a", "reused"), ("1b", "ran"), ("1c", "ran")]
        .iter()
        .map(|(s, a)| (s.to_string(), a.to_string()))
        .collect();
    assert_eq!(actions(&stdout), sharded, "{stdout}");
    let shards: Vec<Vec<EvalRecord>> = (0..2)
        .map(|rank| read_jsonl(run.join(format!("1b/results.rank-{rank}.jsonl"))).unwrap())
        .collect();
    assert_eq!((shards[0].len(), shards[1].len()), (12, 12));
    let results: Vec<EvalRecord> = read_jsonl(run.join("1b/results.jsonl")).unwrap();
    let ids = |records: &[EvalRecord]| -> std::collections::BTreeSet<String> {
        records.iter().map(|r| r.item_id.clone()).collect()
    };
    let graded_by_ranks: Vec<EvalRecord> = shards.concat();
    assert_eq!(results.len(), 24, "one record per item, no duplicates");
    assert_eq!(ids(&results), ids(&graded_by_ranks));
    assert_eq!(
        ids(&results),
        items.iter().map(|item| item.id.clone()).collect()
    );
}
