//! Phase 1C end to end on real inputs, with the teacher and judge behind a fault-injecting
//! OpenAI-compatible server on loopback (llm-client's test server: 20% of calls get a 429 with
//! Retry-After, a 500, a hang, a truncated body, empty choices or an HTML page):
//!
//! - phase 1B runs for real (SmolLM2-135M over a small stratified subset, MiniLM, KMeans);
//! - the scripted teacher plants what the gate must catch: an exact copy of a GSM8K and of an
//!   MMLU item, a paraphrase of the GSM8K item, a near duplicate, a wrong stated answer, an
//!   example the judge cannot score and one it scores low;
//! - phase1c (a real subprocess) is SIGKILLed in the middle of generation, then rerun to the
//!   end, then rerun again: no answer is paid twice (the server's own log), the rerun sends no
//!   request at all, and every output parses as its typed record;
//! - a last rerun asks for ten times the examples under a priced budget cap: it ends cleanly on
//!   what was paid for, never spends past the cap, and counts and reports the refused requests.

#[path = "../../../crates/llm-client/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use records::distill::{GateDecision, JudgeVerdict, TeacherExample, TrainingExample};
use records::jsonl::read_jsonl;
use support::{Fault, FaultServer, Record, ServerConfig};

/// Benchmark texts the scripted teacher copies (set before the server starts).
static PLANTS: OnceLock<Plants> = OnceLock::new();

struct Plants {
    gsm8k: String,
    mmlu: String,
}

/// GSM8K test item 0 (Janet's ducks) reworded: no 13 words in a row shared with it.
const GSM8K_PARAPHRASE: &str = "Every day the ducks that Janet keeps produce sixteen eggs. She \
    has three of them each morning for breakfast and uses four daily to bake muffins for her \
    friends. The eggs left over are sold each day at the farmers' market for $2 apiece. How \
    much money, in dollars, does Janet take in every day at the market?";

/// What the targeted template asks the teacher for (followed by the skill's description).
const TARGETED: &str = "new tasks that exercise the same skill";
/// What the rationalize template gives the teacher before the gold answer.
const RATIONALIZE: &str = "The correct final answer is: ";

/// Numbers that differ per request, so the normal examples are distinct across requests.
fn request_numbers(prompt: &str) -> (u64, u64) {
    let h = prompt
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    (10 + h % 80, 11 + (h / 80) % 80)
}

/// The fourth example of the scripted teacher's answer to a targeted `prompt`.
fn multiplication_task(prompt: &str) -> String {
    let (a, b) = request_numbers(prompt);
    format!(
        "Compute {a} times {b} and explain each step of the multiplication clearly for a student."
    )
}

fn teacher_reply(prompt: &str) -> String {
    let plants = PLANTS.get().expect("plants set");
    if let Some(rest) = prompt.split(RATIONALIZE).nth(1) {
        let gold = rest.lines().next().unwrap_or("").trim();
        return format!("Let us work through the task step by step.\nAnswer: {gold}");
    }
    if prompt.contains(TARGETED) {
        let (a, b) = request_numbers(prompt);
        let examples = serde_json::json!({"examples": [
            {"instruction": plants.gsm8k, "response": "16 - 3 - 4 = 9 eggs, 9 * 2 = 18. Answer: 18",
             "answer": "18"},
            {"instruction": GSM8K_PARAPHRASE, "response": "She sells 9 eggs for 18 dollars.",
             "answer": "the 18 dollars she makes at the market every single day"},
            {"instruction": plants.mmlu, "response": "The first choice is right.",
             "answer": "the first of the listed choices is the right one here"},
            {"instruction": multiplication_task(prompt),
             "response": format!("{a} * {b} = {}. Answer: {}", a * b, a * b), "answer": (a * b).to_string()},
            {"instruction": format!("Compute {a} times {b} and explain each step of the multiplication clearly for a pupil."),
             "response": format!("{a} * {b} = {}. Answer: {}", a * b, a * b), "answer": (a * b).to_string()},
            {"instruction": format!("Add {a} and {b}, then state the sum on its own line."),
             "response": format!("The sum is {}.", a + b + 1), "answer": (a + b + 1).to_string()},
            {"instruction": format!("Describe a ZEBRA crossing in {a} words or fewer."),
             "response": "Black and white stripes across a road where walkers have priority.",
             "answer": "stripes across a road where people on foot have priority"},
            {"instruction": format!("Give a low-quality answer about the number {b}."),
             "response": "It is a number.", "answer": "it is some number that exists somewhere out there"}
        ]});
        return format!("Here are the tasks:\n```json\n{examples}\n```");
    }
    if let Some(task) = prompt.split("Task:\n").nth(1) {
        // Re-derivation: compute what the task asks.
        let numbers: Vec<u64> = task
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        let answer = match numbers.as_slice() {
            _ if task.contains("Janet") => 18,
            [a, b, ..] if task.contains("times") => a * b,
            [a, b, ..] if task.starts_with("Add") => a + b,
            _ => 0,
        };
        return format!("Working it out.\nAnswer: {answer}");
    }
    if prompt.contains("You grade one training example") {
        if prompt.contains("ZEBRA") {
            return "It seems fine to me overall.".into();
        }
        if prompt.contains("low-quality") {
            return r#"{"score": 5, "reason": "too thin"}"#.into();
        }
        return r#"{"score": 9, "reason": "correct and on the pattern"}"#.into();
    }
    format!("unexpected prompt: {prompt}")
}

fn phase1b_fixture(dir: &Path, assets: &assets::AssetPaths) {
    let config: failure_mining::Phase1bConfig = pipeline::parse_config(
        &format!(
            r#"
run_dir = {run:?}
embedding_model = {minilm:?}
[model]
path = {model:?}
[testset]
size = 32
[patterns]
k = 3
[labels]
labeller = "keywords"
[run.max_new_tokens]
number = 24
constraints = 48
"#,
            run = dir,
            minilm = assets.root.join("all-minilm-l6-v2"),
            model = assets.smollm2_dir(),
        ),
        "phase 1B fixture",
        &[],
    )
    .unwrap();
    failure_mining::run_phase1b(&config).unwrap();
}

fn write_config(
    dir: &Path,
    phase1b: &Path,
    base_url: &str,
    assets: &assets::AssetPaths,
) -> PathBuf {
    let original = dir.join("original.jsonl");
    let rows: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("What is {i} plus {}?", i * 7 % 13)},
                {"role": "assistant", "content": format!("{}", i + i * 7 % 13)},
            ]})
        })
        .collect();
    records::jsonl::write_jsonl_atomic(&original, &rows).unwrap();
    let path = dir.join("phase1c.toml");
    let text = format!(
        r#"
run_dir = {run:?}
phase1b_dir = {phase1b:?}
embedding_model = {minilm:?}
[model]
path = {model:?}
[teacher]
kind = "endpoint"
endpoint = {{ base_url = "{base_url}", model = "scripted-teacher" }}
max_concurrency = 4
timeout_s = 3
[judge]
threshold = 8.0
retries = 2
[judge.llm]
kind = "endpoint"
endpoint = {{ base_url = "{base_url}", model = "scripted-judge" }}
max_concurrency = 4
timeout_s = 3
[generate]
total_examples = 48
floor = 8
rationalize_fraction = 0.3
examples_per_request = 8
seeds_per_request = 2
max_tokens = 2000
[verify]
rederive = 1
[decontaminate]
embedding_sources = ["holdout", "gsm8k"]
cache_dir = {cache:?}
[mix]
original_data = {original:?}
[train]
max_seq_len = 128
eval_examples = 2
[train.train]
max_steps = 2
micro_batch_size = 4
eval_every = 0
checkpoint_every = 0
[train.validate]
enabled = false
[holdout]
batch_size = 16
[holdout.max_new_tokens]
number = 24
constraints = 48
"#,
        run = dir.join("p1c"),
        minilm = assets.root.join("all-minilm-l6-v2"),
        model = assets.smollm2_dir(),
        cache = dir.join("cache"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn phase1c(config: &Path, assets: &assets::AssetPaths) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_phase1c"));
    command
        .args(["--config".as_ref(), config.as_os_str()])
        .env("TUNELOOP_ASSETS", &assets.root)
        .env("RUST_LOG", "info");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_a_kill_and_reruns_never_pay_twice_and_the_gate_catches_every_plant() {
    let assets = assets::AssetPaths::locate();
    assets
        .require(&assets.smollm2_dir().join("config.json"))
        .expect("SmolLM2 assets missing: run `cargo xtask assets`");
    let data = assets.root.join("data");
    let gsm8k = benchmarks::data::load_gsm8k(&data).unwrap();
    let mmlu = benchmarks::data::load_mmlu(&data, benchmarks::data::MmluSplit::Test).unwrap();
    let long_mmlu = mmlu
        .iter()
        .find(|item| item.question.split_whitespace().count() >= 20)
        .unwrap();
    assert!(gsm8k[0].question.contains("Janet"));
    let _ = PLANTS.set(Plants {
        gsm8k: gsm8k[0].question.clone(),
        mmlu: long_mmlu.question.clone(),
    });

    let dir = tempfile::tempdir().unwrap();
    let phase1b = dir.path().join("p1b");
    tokio::task::block_in_place(|| phase1b_fixture(&phase1b, &assets));

    let server = FaultServer::start(ServerConfig {
        fail_rate: 0.2,
        random_faults: vec![
            Fault::RateLimit {
                retry_after: Some("1".into()),
                retry_after_ms: None,
            },
            Fault::Status(500),
            Fault::Hang,
            Fault::Truncated,
            Fault::EmptyChoices,
            Fault::WrongContentType,
        ],
        seed: 7,
        delay: Duration::from_millis(150),
        reply: Some(teacher_reply),
        ..ServerConfig::default()
    })
    .await;
    let config = write_config(dir.path(), &phase1b, &server.base_url, &assets);
    let run = dir.path().join("p1c");

    // 1. Killed with SIGKILL once some teacher answers are paid for, then again once some
    // judge answers are.
    let judge_answers = |server: &FaultServer| {
        server
            .records()
            .iter()
            .filter(|r| r.delivered_ok && r.prompt.contains("You grade one training example"))
            .count()
    };
    let mut kills = Vec::new();
    for (what, reached) in [
        (
            "teacher",
            &(|s: &FaultServer| s.delivered_ok_count() >= 3) as &dyn Fn(&FaultServer) -> bool,
        ),
        ("judge", &|s: &FaultServer| judge_answers(s) >= 3),
    ] {
        let mut child = phase1c(&config, &assets)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !reached(&server) {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "no {what} answers"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "phase1c ended before the {what} kill"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Taken once the process is dead: an answer delivered between `reached` and the kill
        // is one the killed run paid for and never recorded.
        kills.push(Instant::now());
    }
    let paid_before_kill = server.delivered_ok_count();

    // 2. The rerun finishes.
    let output = tokio::task::block_in_place(|| phase1c(&config, &assets).output().unwrap());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "phase1c failed:\n{stderr}");
    let faults: BTreeMap<String, usize> = server
        .records()
        .iter()
        .filter_map(|r| r.fault.clone())
        .fold(BTreeMap::new(), |mut counts, fault| {
            *counts.entry(fault).or_default() += 1;
            counts
        });
    assert!(faults.len() >= 4, "the faults were exercised: {faults:?}");
    assert!(server.delivered_ok_count() > paid_before_kill);
    // No prompt was answered (and paid for) twice across the retries and the reruns, except
    // those whose answer was on the wire when a process died (at most one per request in
    // flight: max_concurrency = 4 for teacher and judge alike, per kill).
    let mut delivered: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
    for record in server.records().iter().filter(|r| r.delivered_ok) {
        delivered
            .entry(record.body.to_string())
            .or_default()
            .push(record.at);
    }
    // The other way to pay twice is a client timeout on an answer the server did send (a
    // loaded machine reads it late): the ledgers count those attempts as abandoned.
    let abandoned: u64 = ["teacher-ledger.sqlite", "judge-ledger.sqlite"]
        .iter()
        .map(|name| {
            llm_client::Ledger::open(&run.join(name))
                .unwrap()
                .counts()
                .unwrap()
                .abandoned
        })
        .sum();
    let twice: Vec<&Vec<Instant>> = delivered.values().filter(|at| at.len() > 1).collect();
    let across_a_kill =
        |at: &[Instant]| at.len() == 2 && kills.iter().any(|&kill| at[0] <= kill && at[1] > kill);
    let (across, other): (Vec<&Vec<Instant>>, Vec<&Vec<Instant>>) =
        twice.into_iter().partition(|at| across_a_kill(at));
    assert!(
        across.len() <= 8,
        "{} requests paid twice across the kills",
        across.len()
    );
    let extra_payments: usize = other.iter().map(|at| at.len() - 1).sum();
    assert!(
        extra_payments as u64 <= abandoned,
        "{extra_payments} answers paid again other than across a kill, but only {abandoned} \
         attempts were abandoned after a timeout"
    );

    // 3. Every output parses as its record; the gate caught every plant, with its reason.
    let generated: Vec<TeacherExample> = read_jsonl(run.join("generated.jsonl")).unwrap();
    let gate: Vec<GateDecision> = read_jsonl(run.join("gate.jsonl")).unwrap();
    let judged: Vec<JudgeVerdict> = read_jsonl(run.join("judged.jsonl")).unwrap();
    let mix: Vec<TrainingExample> = read_jsonl(run.join("mix.jsonl")).unwrap();
    assert!(!generated.is_empty());
    // Every generated example left the gate exactly once, kept or with a stage and reason.
    assert_eq!(gate.len(), generated.len(), "one decision per example");
    let reasons = |stage: &str, needle: &str| {
        gate.iter()
            .filter(|d| d.stage == stage && d.reason.contains(needle))
            .count()
    };
    assert!(
        reasons("decontaminate", "13-gram shared with gsm8k") >= 1,
        "{gate:#?}"
    );
    assert!(
        reasons("decontaminate", "13-gram shared with mmlu") >= 1,
        "{gate:#?}"
    );
    assert!(
        reasons("decontaminate", "embedding neighbour of a gsm8k item") >= 1,
        "{gate:#?}"
    );
    assert!(reasons("dedup", "near duplicate") >= 1, "{gate:#?}");
    assert!(reasons("verify", "re-derived answer") >= 1, "{gate:#?}");
    assert!(reasons("judge", "no score in 3 answers") >= 1, "{gate:#?}");
    assert!(reasons("judge", "score 5") >= 1, "{gate:#?}");
    for plant in [&PLANTS.get().unwrap().gsm8k, &PLANTS.get().unwrap().mmlu] {
        assert!(
            mix.iter().all(|e| e.messages[0].content != *plant),
            "a benchmark copy reached the mix"
        );
    }
    assert!(
        mix.iter()
            .all(|e| !e.messages[0].content.starts_with("Every day the ducks")),
        "the paraphrase reached the mix"
    );
    // Unparsable judge answers were retried and counted, never read as a score.
    let zebra = judged
        .iter()
        .find(|v| v.score.is_none())
        .expect("an unscorable example");
    assert_eq!(zebra.unparsed_answers, 3);
    // Provenance of every teacher example in the mix; the 90/10 ratio within one example.
    let teacher: Vec<&TrainingExample> = mix.iter().filter(|e| e.origin == "teacher").collect();
    let original = mix.len() - teacher.len();
    assert!(!teacher.is_empty());
    assert!(
        (original as f64 - teacher.len() as f64 / 9.0).abs() <= 1.0,
        "{} teacher, {original} original",
        teacher.len()
    );
    for example in &teacher {
        let provenance = example.example.as_ref().expect("provenance");
        assert!(!provenance.seed_item_ids.is_empty());
        assert_eq!(provenance.teacher_model, "scripted-teacher");
        assert_eq!(provenance.template_sha256.len(), 64);
        assert_eq!(provenance.request_hash.len(), 64);
        assert!(example.judge_score.unwrap() > 8.0);
    }
    for file in [
        "report.md",
        "report.html",
        "report.json",
        "holdout_after.jsonl",
        "train/merged/config.json",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("McNemar"), "{report}");
    // The scripted judge scores every calibration example 9: all 12 kept, the 6 good among
    // them, so precision 0.5 and recall 1.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
    let calibration = &json["calibration"];
    assert_eq!(calibration["examples"], 12, "{calibration}");
    assert_eq!(calibration["kept"], 12, "{calibration}");
    assert_eq!(calibration["precision"], 0.5, "{calibration}");
    assert_eq!(calibration["recall"], 1.0, "{calibration}");

    // 4. A second rerun sends nothing: every answer comes from the ledgers.
    let requests = server.request_count();
    let output = tokio::task::block_in_place(|| phase1c(&config, &assets).output().unwrap());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        server.request_count(),
        requests,
        "the rerun called the server"
    );
    let again: Vec<TeacherExample> = read_jsonl(run.join("generated.jsonl")).unwrap();
    assert_eq!(again, generated);

    // 5. The budget cap is a hard stop: ten times the examples, priced, under a cap that pays
    // for a few of the new requests. The run ends cleanly on what was paid for, the ledger's
    // total never passes the cap, and every refused request is counted and reported.
    // A targeted request reserves about $0.4 (its prompt plus max_tokens at $100 per million
    // tokens) and an answer costs about $0.03: the cap leaves room for a dozen or more answers
    // of every kind before it refuses, far below the ~$2 the tenfold request needs.
    const CAP_USD: f64 = 1.0;
    let capped = [
        "generate.total_examples=480",
        "teacher.prices.input_per_mtok=100.0",
        "teacher.prices.output_per_mtok=100.0",
        &format!("teacher.budget_usd={CAP_USD}"),
    ];
    let requests = server.request_count();
    let abandoned_before = llm_client::Ledger::open(&run.join("teacher-ledger.sqlite"))
        .unwrap()
        .counts()
        .unwrap()
        .abandoned;
    let output = tokio::task::block_in_place(|| {
        let mut command = phase1c(&config, &assets);
        for assignment in capped {
            command.args(["--set", assignment]);
        }
        command.output().unwrap()
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "capped phase1c failed:\n{stderr}");
    let spent = llm_client::Ledger::open(&run.join("teacher-ledger.sqlite"))
        .unwrap()
        .total_spend_usd()
        .unwrap();
    println!(
        "capped rerun: {} requests, teacher spend ${spent:.4} of ${CAP_USD}",
        server.request_count() - requests
    );
    assert!(
        spent > 0.0,
        "no new teacher answer was paid for under the cap"
    );
    assert!(
        spent <= CAP_USD,
        "teacher spend {spent} passed the cap {CAP_USD}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
    let refused: u64 = json["funnels"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|funnel| {
            funnel["dropped"]["generate: request failed (budget_exceeded)"].as_u64()
        })
        .sum();
    assert!(
        refused > 0,
        "no request was refused by the cap: {}",
        json["funnels"]
    );
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(
        report.contains(&format!(
            "Teacher budget cap of ${CAP_USD:.2} reached: {refused} generation requests were \
             not sent"
        )),
        "{report}"
    );
    // Everything paid for is kept: each targeted answer delivered in this run is in
    // generated.jsonl (its fourth example, where the prompt asked for at least four), but for
    // answers the client gave up on after a timeout (counted as abandoned in the ledger). Which
    // requests the cap lets through depends on the order answers settle in, so the check is
    // over those that were paid, and at least one generation answer was.
    let generated: Vec<TeacherExample> = read_jsonl(run.join("generated.jsonl")).unwrap();
    let gate: Vec<GateDecision> = read_jsonl(run.join("gate.jsonl")).unwrap();
    assert_eq!(
        gate.len(),
        generated.len(),
        "one decision per example under the cap"
    );
    let instructions: std::collections::BTreeSet<&str> =
        generated.iter().map(|e| e.instruction.as_str()).collect();
    let asked_for = |prompt: &str| -> usize {
        // "... Write {count} new tasks that exercise the same skill ..."
        let count = prompt
            .split(TARGETED)
            .next()
            .and_then(|before| before.split_whitespace().last())
            .and_then(|n| n.parse().ok());
        count.expect("the targeted prompt says how many tasks it wants")
    };
    let delivered: Vec<Record> = server.records()[requests..]
        .iter()
        .filter(|r| r.delivered_ok)
        .cloned()
        .collect();
    assert!(
        delivered
            .iter()
            .any(|r| r.prompt.contains(TARGETED) || r.prompt.contains(RATIONALIZE)),
        "no generation answer was paid for under the cap"
    );
    let paid: Vec<String> = delivered
        .iter()
        .filter(|r| r.prompt.contains(TARGETED) && asked_for(&r.prompt) >= 4)
        .map(|r| multiplication_task(&r.prompt))
        .collect();
    let missing = paid
        .iter()
        .filter(|task| !instructions.contains(task.as_str()))
        .count() as u64;
    println!(
        "capped rerun: {} answers delivered, {} targeted ones checked, {missing} missing",
        delivered.len(),
        paid.len()
    );
    let abandoned_after = llm_client::Ledger::open(&run.join("teacher-ledger.sqlite"))
        .unwrap()
        .counts()
        .unwrap()
        .abandoned;
    assert!(
        missing <= abandoned_after - abandoned_before,
        "{missing} of {} paid targeted answers are not in generated.jsonl",
        paid.len()
    );
}
