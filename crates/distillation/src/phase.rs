//! Phase 1C as one call: targets → teacher generation → verification → judge → dedup →
//! decontamination → mix → training (phase 1A's trainer on the student) → holdout grading →
//! report. Every teacher and judge answer goes through llm-client's ledger before it is used,
//! so a rerun after a crash or a kill pays for nothing twice and loses nothing already paid for;
//! every example that leaves the gate has a row in `gate.jsonl` saying where and why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use benchmarks::LocalModel;
use benchmarks::data::{MmluSplit, load_gsm8k, load_humaneval, load_mmlu};
use benchmarks::stats::stable_hash;
use embeddings::SentenceEncoder;
use failure_mining::grade::grade_reply;
use failure_mining::leakage::NgramIndex;
use failure_mining::run::{JudgeSource, run_items_judged};
use llama::Pretrained;
use llama::device::select_device_named;
use llm_client::{
    ChatRequest, JsonSchema, LlmClient, LlmSettings, Progress, extract_json, parse_judge_score,
    with_llm,
};
use lora_training::phase::{Phase1aConfig, Phase1aOptions, run_phase1a};
use lora_training::{DataConfig, Group};
use records::distill::{
    ChatMessage, Funnel, GateDecision, JudgeVerdict, PatternOutcome, Strategy, TeacherExample,
    TrainingExample,
};
use records::jsonl::{read_jsonl, write_atomic, write_jsonl_atomic};
use records::mining::{Split, TestItem};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::compare::pattern_outcomes;
use crate::config::Phase1cConfig;
use crate::error::{Error, Result, io_error};
use crate::gate::{
    EmbeddingNeighbours, NearDuplicates, answers_agree, count, exact_key, final_answer,
};
use crate::report::{Phase1cReport, write_report};
use crate::targets::{Phase1bOutputs, allocate};
use crate::template::Template;

/// The ledgers of a phase 1C run directory, each holding one role's paid answers: the teacher's,
/// the example judge's, and phase 1B's judge grading the holdout's open answers after training.
/// A rerun of the stage carries them over, so it never pays twice.
pub const TEACHER_LEDGER: &str = "teacher-ledger.sqlite";
pub const JUDGE_LEDGER: &str = "judge-ledger.sqlite";
pub const HOLDOUT_JUDGE_LEDGER: &str = "holdout-judge-ledger.sqlite";
pub const LEDGERS: &[&str] = &[TEACHER_LEDGER, JUDGE_LEDGER, HOLDOUT_JUDGE_LEDGER];

/// What phase 1C aims at, per pattern.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterTarget {
    pub cluster: usize,
    pub label: String,
    pub failures: usize,
    pub targeted: usize,
    pub rationalize: usize,
}

/// What a phase 1C run produced.
#[derive(Debug)]
pub struct Phase1cOutcome {
    pub run_dir: PathBuf,
    pub funnels: BTreeMap<usize, Funnel>,
    pub patterns: Vec<PatternOutcome>,
    pub merged_dir: Option<PathBuf>,
    pub report_markdown: PathBuf,
    pub report_html: PathBuf,
}

/// Runs phase 1C. Blocking; starts its own async runtime for the teacher and judge calls.
pub fn run_phase1c(config: &Phase1cConfig) -> Result<Phase1cOutcome> {
    config.check()?;
    let started = Instant::now();
    let run_dir = &config.run_dir;
    std::fs::create_dir_all(run_dir).map_err(io_error(run_dir))?;
    let phase1b = Phase1bOutputs::read(&config.phase1b_dir)?;
    let templates = Templates::load(config)?;
    // Everything that can fail without a model fails here, before any paid call.
    let data_dir = config
        .decontaminate
        .benchmark_data_dir
        .clone()
        .unwrap_or_else(benchmarks::data::default_data_dir);
    let mut ngrams = NgramIndex::validation_benchmarks(&data_dir, config.decontaminate.ngram)?;
    let holdout_items: Vec<&TestItem> = phase1b
        .items
        .iter()
        .filter(|item| item.split == Split::Holdout)
        .collect();
    ngrams.add(
        "holdout",
        holdout_items.iter().map(|item| item.question.as_str()),
    );
    let original = read_original(&config.mix.original_data)?;

    let targets = plan_targets(config, &phase1b);
    write_json(&run_dir.join("targets.json"), &targets)?;
    let mut funnels: BTreeMap<usize, Funnel> = targets
        .iter()
        .map(|t| {
            (
                t.cluster,
                Funnel {
                    requested: t.targeted + t.rationalize,
                    ..Funnel::default()
                },
            )
        })
        .collect();
    let mut decisions: Vec<GateDecision> = Vec::new();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_error(run_dir))?;

    // 1-2. Teacher: generate, then verify (re-derivations are teacher calls too).
    tracing::info!(
        "teacher: {} examples requested over {} patterns",
        funnels.values().map(|f| f.requested).sum::<usize>(),
        targets.len()
    );
    let teacher_ledger = run_dir.join(TEACHER_LEDGER);
    let (generated, verified, teacher_model) = runtime.block_on(with_llm(
        &config.teacher,
        &config.model.path,
        &config.model.device,
        &teacher_ledger,
        async |client: LlmClient| -> Result<_> {
            let model = client.config().endpoint.model.clone();
            let generated = generate(
                &client,
                config,
                &phase1b,
                &targets,
                &templates,
                &mut funnels,
            )
            .await;
            write_jsonl_atomic(run_dir.join("generated.jsonl"), &generated)?;
            let verified = verify(
                &client,
                config,
                &phase1b,
                &templates,
                generated.clone(),
                &mut funnels,
                &mut decisions,
            )
            .await;
            Ok((generated, verified, model))
        },
    ))?;
    tracing::info!(
        "teacher: {} examples generated, {} verified",
        generated.len(),
        verified.len()
    );

    // 3. Judge.
    let judge_ledger = run_dir.join(JUDGE_LEDGER);
    let (verdicts, judge_model, calibration) = runtime.block_on(with_llm(
        &config.judge.llm,
        &config.model.path,
        &config.model.device,
        &judge_ledger,
        async |client: LlmClient| -> Result<_> {
            let model = client.config().endpoint.model.clone();
            let prompts: Vec<(String, BTreeMap<&'static str, String>)> = verified
                .iter()
                .map(|example| {
                    let mut values = cluster_context(&phase1b, example.cluster);
                    values.insert("instruction", example.instruction.clone());
                    values.insert("response", example.response.clone());
                    (example.id.clone(), values)
                })
                .collect();
            let verdicts = judge(&client, config, &templates, &prompts).await;
            let calibration = calibrate(&client, config, &templates).await?;
            Ok((verdicts, model, calibration))
        },
    ))?;
    write_jsonl_atomic(run_dir.join("judged.jsonl"), &verdicts)?;
    let mut judged: Vec<(TeacherExample, f32)> = Vec::new();
    for (example, verdict) in verified.into_iter().zip(&verdicts) {
        let funnel = funnels.get_mut(&example.cluster).expect("a target");
        match verdict.score {
            Some(score) if score > config.judge.threshold => {
                funnel.judged += 1;
                judged.push((example, score));
            }
            Some(score) => drop_example(
                &mut decisions,
                funnel,
                &example,
                "judge",
                format!("score {score} ≤ threshold {}", config.judge.threshold),
                "judge: below threshold",
            ),
            None => drop_example(
                &mut decisions,
                funnel,
                &example,
                "judge",
                format!("no score in {} answers", verdict.unparsed_answers),
                "judge: unparsable",
            ),
        }
    }

    // 4. Dedup: best-scored first, exact then near duplicates, within the set and against the
    // original data.
    judged.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.id.cmp(&b.0.id)));
    let mut near = NearDuplicates::new(config.dedup.shingle, config.dedup.jaccard);
    let mut exact: BTreeMap<u64, String> = BTreeMap::new();
    for example in &original {
        let prompt = user_text(&example.messages);
        exact
            .entry(exact_key(&prompt))
            .or_insert_with(|| "original data".into());
        near.add("original data", &prompt);
    }
    let mut unique: Vec<(TeacherExample, f32)> = Vec::new();
    for (example, score) in judged {
        let funnel = funnels.get_mut(&example.cluster).expect("a target");
        if let Some(source) = exact.get(&exact_key(&example.instruction)) {
            let reason = format!("exact duplicate of {source}");
            drop_example(
                &mut decisions,
                funnel,
                &example,
                "dedup",
                reason,
                "dedup: exact",
            );
            continue;
        }
        if let Some((source, jaccard)) = near.find(&example.instruction) {
            let reason = format!("near duplicate of {source} (Jaccard {jaccard:.2})");
            drop_example(
                &mut decisions,
                funnel,
                &example,
                "dedup",
                reason,
                "dedup: near",
            );
            continue;
        }
        exact.insert(exact_key(&example.instruction), example.id.clone());
        near.add(&example.id, &example.instruction);
        funnel.deduplicated += 1;
        unique.push((example, score));
    }

    // 5. Decontamination: n-grams, then embedding neighbours.
    let neighbours = reference_embeddings(config, &data_dir, &holdout_items)?;
    let clean = decontaminate(
        config,
        &ngrams,
        &neighbours,
        unique,
        &mut funnels,
        &mut decisions,
    )?;

    // 6. Mix.
    let (mix, held_out) = mix_examples(
        config,
        &clean,
        &original,
        config.train.eval_examples.unwrap_or(16),
    );
    for (example, _) in &clean {
        funnels.get_mut(&example.cluster).expect("a target").trained += 1;
        decisions.push(GateDecision {
            example_id: example.id.clone(),
            cluster: example.cluster,
            stage: "kept".into(),
            reason: String::new(),
        });
    }
    write_jsonl_atomic(run_dir.join("gate.jsonl"), &decisions)?;
    let mix_path = run_dir.join("mix.jsonl");
    let mix_sha256 = write_jsonl_if_changed(&mix_path, &mix)?;
    tracing::info!(
        "mix: {} teacher + {} original examples",
        clean.len(),
        mix.len() - clean.len()
    );
    if clean.is_empty() {
        tracing::warn!(
            "no teacher example passed the gate: the model is trained on original data only"
        );
    }

    let eval_path = run_dir.join("eval.jsonl");
    write_jsonl_if_changed(&eval_path, &held_out)?;

    // 7. Train on the mix with phase 1A's trainer, merge, validate before and after.
    let device = model_device(config)?;
    let trained = train_on_mix(
        config,
        &device,
        &mix_sha256,
        &mix_path,
        (!held_out.is_empty()).then_some(eval_path.as_path()),
    )?;

    // 8. Holdout items, graded with the new model; paired with phase 1B's grades.
    let after = grade_holdout(
        config,
        &device,
        &trained.merged_dir,
        &holdout_items,
        phase1b.judge.as_ref(),
    )?;
    let targeted: BTreeSet<usize> = targets
        .iter()
        .filter(|t| t.targeted + t.rationalize > 0)
        .map(|t| t.cluster)
        .collect();
    let patterns = pattern_outcomes(
        &phase1b.holdout,
        &after,
        &|cluster| phase1b.cluster_name(cluster),
        &|cluster| targeted.contains(&cluster),
        config.mix.seed,
    );
    let teacher_ledger = llm_client::Ledger::open(&teacher_ledger)?;
    let judge_ledger = llm_client::Ledger::open(&judge_ledger)?;
    let report = Phase1cReport {
        config: config.clone(),
        targets,
        funnels: funnels.clone(),
        judge_scores: verdicts.iter().filter_map(|v| v.score).collect(),
        judge_unparsed: verdicts.iter().map(|v| v.unparsed_answers).sum(),
        teacher_model,
        judge_model,
        calibration,
        teacher_spend: teacher_ledger.counts()?,
        judge_spend: judge_ledger.counts()?,
        teacher_usd: teacher_ledger.total_spend_usd()?,
        judge_usd: judge_ledger.total_spend_usd()?,
        mix_teacher: clean.len(),
        mix_original: mix.len() - clean.len(),
        before: trained.before,
        after: trained.after,
        patterns: patterns.clone(),
        holdout_graded: after.len(),
        holdout_total: holdout_items.len(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let (report_markdown, report_html) = write_report(run_dir, &report)?;
    Ok(Phase1cOutcome {
        run_dir: run_dir.clone(),
        funnels,
        patterns,
        merged_dir: Some(trained.merged_dir),
        report_markdown,
        report_html,
    })
}

struct Templates {
    targeted: Template,
    rationalize: Template,
    rederive: Template,
    judge: Template,
}

impl Templates {
    fn load(config: &Phase1cConfig) -> Result<Self> {
        let dir = config.generate.templates_dir.as_deref();
        Ok(Self {
            targeted: Template::load("targeted", dir)?,
            rationalize: Template::load("rationalize", dir)?,
            rederive: Template::load("rederive", dir)?,
            judge: Template::load("judge", dir)?,
        })
    }
}

/// Each pattern's share of the budget, split between the strategies.
pub fn plan_targets(config: &Phase1cConfig, phase1b: &Phase1bOutputs) -> Vec<ClusterTarget> {
    let mut failures: BTreeMap<usize, usize> = phase1b.clusters.iter().map(|c| (c.id, 0)).collect();
    for (_, cluster) in &phase1b.failures {
        *failures.entry(*cluster).or_default() += 1;
    }
    let generate = &config.generate;
    let shares = allocate(
        &failures,
        generate.total_examples,
        generate.floor,
        generate.cap,
    );
    let uses = |name: &str| generate.strategies.iter().any(|s| s == name);
    shares
        .into_iter()
        .map(|(cluster, share)| {
            let rationalize = if uses("rationalize") {
                let most = if uses("targeted") {
                    (share as f64 * generate.rationalize_fraction).round() as usize
                } else {
                    share
                };
                most.min(failures[&cluster])
            } else {
                0
            };
            let targeted = if uses("targeted") {
                share - rationalize
            } else {
                0
            };
            ClusterTarget {
                cluster,
                label: phase1b.cluster_name(cluster),
                failures: failures[&cluster],
                targeted,
                rationalize,
            }
        })
        .collect()
}

fn cluster_context(phase1b: &Phase1bOutputs, cluster: usize) -> BTreeMap<&'static str, String> {
    let record = phase1b.clusters.iter().find(|c| c.id == cluster);
    let description = record
        .and_then(|c| c.label.as_ref())
        .map(|label| label.description.clone())
        .unwrap_or_else(|| "(no description: see the examples)".into());
    let keywords = record
        .map(|c| {
            c.keywords
                .iter()
                .take(8)
                .map(|k| k.term.clone())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    BTreeMap::from([
        ("label", phase1b.cluster_name(cluster)),
        ("description", description),
        ("keywords", keywords),
    ])
}

/// A chat request with the sampling settings every phase 1C call shares.
fn request(prompt: String, max_tokens: u32, temperature: f32, seed: u64) -> ChatRequest {
    ChatRequest::user(prompt)
        .with_max_tokens(max_tokens)
        .with_temperature(temperature)
        .with_seed(seed)
}

/// The shape the targeted template asks for, as a schema the endpoint enforces where it can
/// (OpenAI structured outputs, vLLM, `serve`): exactly `count` examples, each with its
/// instruction before its response and answer. Where it cannot, the client puts the schema in
/// the prompt, and [`parse_targeted`] reads whatever comes back either way.
pub fn targeted_schema(count: usize) -> JsonSchema {
    JsonSchema {
        name: "targeted_examples".into(),
        schema: serde_json::json!({
            "type": "object",
            "properties": {
                "examples": {
                    "type": "array",
                    "minItems": count,
                    "maxItems": count,
                    "items": {
                        "type": "object",
                        "properties": {
                            "instruction": {"type": "string"},
                            "response": {"type": "string"},
                            "answer": {"type": "string"}
                        },
                        "required": ["instruction", "response", "answer"],
                        "additionalProperties": false
                    }
                }
            },
            "required": ["examples"],
            "additionalProperties": false
        }),
        strict: true,
    }
}

/// The judge's verdict as the judge template asks for it: an integer score from 1 to 10, then
/// a one-line reason (bounded, so a small judge cannot ramble past its token limit).
pub fn judge_schema() -> JsonSchema {
    JsonSchema {
        name: "judge_verdict".into(),
        schema: serde_json::json!({
            "type": "object",
            "properties": {
                "score": {"type": "integer", "minimum": 1, "maximum": 10},
                "reason": {"type": "string", "maxLength": 200}
            },
            "required": ["score", "reason"],
            "additionalProperties": false
        }),
        strict: true,
    }
}

fn example_id(request_hash: &str, index: usize) -> String {
    let digest = Sha256::digest(format!("{request_hash}:{index}").as_bytes());
    format!("tc-{}", &hex::encode(digest)[..16])
}

async fn generate(
    client: &LlmClient,
    config: &Phase1cConfig,
    phase1b: &Phase1bOutputs,
    targets: &[ClusterTarget],
    templates: &Templates,
    funnels: &mut BTreeMap<usize, Funnel>,
) -> Vec<TeacherExample> {
    let generate = &config.generate;
    let teacher = client.config().endpoint.model.clone();
    // (request, cluster, strategy, seed item ids, examples wanted from it)
    let mut planned: Vec<(ChatRequest, usize, Strategy, Vec<String>, usize)> = Vec::new();
    for target in targets {
        // The pattern's failures in a fixed, id-hashed order: seeds rotate through them.
        let mut failures: Vec<&TestItem> = phase1b
            .failures
            .iter()
            .filter(|(_, cluster)| *cluster == target.cluster)
            .filter_map(|(failure, _)| phase1b.item(&failure.item_id))
            .collect();
        failures.sort_by_key(|item| stable_hash(&item.id));
        for (index, item) in failures.iter().take(target.rationalize).enumerate() {
            let values = BTreeMap::from([
                ("question", item.prompt.clone()),
                ("gold", item.gold.clone()),
            ]);
            planned.push((
                request(
                    templates.rationalize.render(&values),
                    generate.max_tokens,
                    0.0,
                    index as u64,
                ),
                target.cluster,
                Strategy::Rationalize,
                vec![item.id.clone()],
                1,
            ));
        }
        let per_request = generate.examples_per_request.max(1);
        let requests = target.targeted.div_ceil(per_request);
        for index in 0..requests {
            let wanted = per_request.min(target.targeted - index * per_request);
            let seeds: Vec<&TestItem> = (0..generate.seeds_per_request.min(failures.len()))
                .map(|k| failures[(index * generate.seeds_per_request + k) % failures.len()])
                .collect();
            let mut values = cluster_context(phase1b, target.cluster);
            values.insert(
                "seeds",
                seeds
                    .iter()
                    .enumerate()
                    .map(|(k, item)| {
                        format!(
                            "{}. Task: {}\n   Correct answer: {}",
                            k + 1,
                            item.question,
                            item.gold
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            values.insert("count", wanted.to_string());
            planned.push((
                request(
                    templates.targeted.render(&values),
                    generate.max_tokens,
                    generate.temperature,
                    index as u64,
                )
                .with_json_schema(targeted_schema(wanted)),
                target.cluster,
                Strategy::Targeted,
                seeds.iter().map(|item| item.id.clone()).collect(),
                wanted,
            ));
        }
    }
    let hashes: Vec<String> = planned
        .iter()
        .map(|(request, ..)| {
            client
                .effective_request(request.clone())
                .hash(&client.config().endpoint)
        })
        .collect();
    let report = client
        .chat_batch(
            planned
                .iter()
                .map(|(request, ..)| request.clone())
                .collect(),
            Progress::Auto,
        )
        .await;
    let mut examples = Vec::new();
    for (((_, cluster, strategy, seeds, wanted), hash), result) in
        planned.into_iter().zip(hashes).zip(report.results)
    {
        let funnel = funnels.get_mut(&cluster).expect("a target");
        let answer = match result {
            Ok(answer) => answer,
            Err(error) => {
                tracing::warn!("teacher request failed: {error}");
                count(
                    &mut funnel.dropped,
                    format!("generate: request failed ({})", error.kind()),
                );
                funnel.unreadable_answers += 1;
                continue;
            }
        };
        let template = match strategy {
            Strategy::Targeted => &templates.targeted,
            Strategy::Rationalize => &templates.rationalize,
        };
        let make = |index: usize, instruction: String, response: String, answer: Option<String>| {
            TeacherExample {
                id: example_id(&hash, index),
                cluster,
                strategy,
                instruction,
                response,
                answer,
                seed_item_ids: seeds.clone(),
                teacher_model: teacher.clone(),
                template_sha256: template.sha256.clone(),
                request_hash: hash.clone(),
            }
        };
        match strategy {
            Strategy::Rationalize => {
                let item = phase1b.item(&seeds[0]).expect("a mined item");
                let response = answer.content.trim().to_string();
                if response.is_empty() {
                    funnel.unreadable_answers += 1;
                    count(&mut funnel.dropped, "generate: empty answer");
                    continue;
                }
                funnel.generated += 1;
                examples.push(make(
                    0,
                    item.prompt.clone(),
                    response,
                    Some(item.gold.clone()),
                ));
            }
            Strategy::Targeted => {
                let parsed = parse_targeted(&answer.content);
                if parsed.is_empty() {
                    funnel.unreadable_answers += 1;
                    count(&mut funnel.dropped, "generate: no examples in the answer");
                    continue;
                }
                let extra = parsed.len().saturating_sub(wanted);
                if extra > 0 {
                    // Paid for but not asked for: counted, so the funnel adds up.
                    *funnel
                        .dropped
                        .entry("generate: more examples than requested".into())
                        .or_default() += extra;
                }
                for (index, (instruction, response, short)) in
                    parsed.into_iter().take(wanted).enumerate()
                {
                    funnel.generated += 1;
                    examples.push(make(index, instruction, response, short));
                }
            }
        }
    }
    examples
}

/// `(instruction, response, answer)` triples from a targeted answer: JSON `{"examples": [...]}`
/// or a bare array, tolerant of code fences and prose around it; items without an instruction
/// or a response are skipped.
pub fn parse_targeted(content: &str) -> Vec<(String, String, Option<String>)> {
    let Some(value) = extract_json(content) else {
        return Vec::new();
    };
    let items = match &value {
        serde_json::Value::Array(items) => items.clone(),
        serde_json::Value::Object(map) => match map.get("examples") {
            Some(serde_json::Value::Array(items)) => items.clone(),
            _ => vec![value.clone()],
        },
        _ => Vec::new(),
    };
    items
        .iter()
        .filter_map(|item| {
            let text = |key: &str| match item.get(key)? {
                serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            Some((text("instruction")?, text("response")?, text("answer")))
        })
        .collect()
}

fn drop_example(
    decisions: &mut Vec<GateDecision>,
    funnel: &mut Funnel,
    example: &TeacherExample,
    stage: &str,
    reason: String,
    key: &str,
) {
    count(&mut funnel.dropped, key);
    decisions.push(GateDecision {
        example_id: example.id.clone(),
        cluster: example.cluster,
        stage: stage.into(),
        reason,
    });
}

/// Rationalized examples must reach the gold (graded by the item's own grader); targeted ones
/// with a short answer must be re-derived to the same answer `verify.rederive` times.
async fn verify(
    client: &LlmClient,
    config: &Phase1cConfig,
    phase1b: &Phase1bOutputs,
    templates: &Templates,
    examples: Vec<TeacherExample>,
    funnels: &mut BTreeMap<usize, Funnel>,
    decisions: &mut Vec<GateDecision>,
) -> Vec<TeacherExample> {
    let short = |example: &TeacherExample| {
        example.strategy == Strategy::Targeted
            && config.verify.rederive > 0
            && example
                .answer
                .as_ref()
                .is_some_and(|a| a.chars().count() <= config.verify.max_answer_chars)
    };
    let mut requests = Vec::new();
    let mut owners = Vec::new();
    for (index, example) in examples.iter().enumerate() {
        if short(example) {
            for k in 0..config.verify.rederive {
                let values = BTreeMap::from([("instruction", example.instruction.clone())]);
                requests.push(request(
                    templates.rederive.render(&values),
                    config.generate.max_tokens,
                    0.7,
                    k as u64 + 1,
                ));
                owners.push(index);
            }
        }
    }
    // Each re-derivation's final answer, or the kind of error its request ended with (a
    // refused budget reservation, retries used up): an unpaid check is not a disagreement.
    let mut rederived: Vec<Vec<std::result::Result<Option<String>, &'static str>>> =
        vec![Vec::new(); examples.len()];
    if !requests.is_empty() {
        let report = client.chat_batch(requests, Progress::Auto).await;
        for (owner, result) in owners.into_iter().zip(report.results) {
            rederived[owner].push(
                result
                    .map(|a| final_answer(&a.content))
                    .map_err(|error| error.kind()),
            );
        }
    }
    let mut kept = Vec::new();
    for (example, answers) in examples.into_iter().zip(rederived) {
        let funnel = funnels.get_mut(&example.cluster).expect("a target");
        if let Some(kind) = answers.iter().find_map(|a| a.as_ref().err().copied()) {
            // Unverified examples do not pass: dropped, with the request's failure as the reason.
            drop_example(
                decisions,
                funnel,
                &example,
                "verify",
                format!("re-derivation request failed ({kind})"),
                &format!("verify: request failed ({kind})"),
            );
            continue;
        }
        let answers: Vec<Option<String>> = answers.into_iter().flatten().collect();
        let verdict: std::result::Result<(), String> = match example.strategy {
            Strategy::Rationalize => {
                let item = phase1b
                    .item(&example.seed_item_ids[0])
                    .expect("a mined item");
                let grade = grade_reply(&item.grader, &example.response);
                if grade.correct {
                    Ok(())
                } else {
                    Err(format!(
                        "does not reach the gold: {}",
                        grade.reason.unwrap_or_default()
                    ))
                }
            }
            Strategy::Targeted if answers.is_empty() => {
                count(&mut funnel.dropped, "verify: not re-derivable (kept)");
                Ok(())
            }
            Strategy::Targeted => {
                let stated = example.answer.clone().unwrap_or_default();
                match answers
                    .iter()
                    .find(|a| !a.as_deref().is_some_and(|a| answers_agree(a, &stated)))
                {
                    None => Ok(()),
                    Some(other) => Err(format!(
                        "re-derived answer {:?} differs from {stated:?}",
                        other.as_deref().unwrap_or("(none)")
                    )),
                }
            }
        };
        match verdict {
            Ok(()) => {
                funnel.verified += 1;
                kept.push(example);
            }
            Err(reason) => {
                let key = format!("verify: {}", example.strategy.as_str());
                drop_example(decisions, funnel, &example, "verify", reason, &key);
            }
        }
    }
    kept
}

/// The judge's verdict on each `(id, template values)`: attempt 0 for all, then another seed
/// for those whose answer did not parse, `judge.retries` times; never a score from an
/// unparsable answer.
async fn judge(
    client: &LlmClient,
    config: &Phase1cConfig,
    templates: &Templates,
    examples: &[(String, BTreeMap<&'static str, String>)],
) -> Vec<JudgeVerdict> {
    let model = client.config().endpoint.model.clone();
    let mut verdicts: Vec<JudgeVerdict> = examples
        .iter()
        .map(|(id, _)| JudgeVerdict {
            example_id: id.clone(),
            score: None,
            reason: String::new(),
            judge_model: model.clone(),
            template_sha256: templates.judge.sha256.clone(),
            unparsed_answers: 0,
            request_hash: None,
        })
        .collect();
    // Attempt 0 for everyone, then another seed for those whose answer did not parse.
    for attempt in 0..=config.judge.retries {
        let pending: Vec<usize> = (0..examples.len())
            .filter(|&i| verdicts[i].score.is_none())
            .collect();
        if pending.is_empty() {
            break;
        }
        let requests: Vec<ChatRequest> = pending
            .iter()
            .map(|&i| {
                request(
                    templates.judge.render(&examples[i].1),
                    config.judge.max_tokens,
                    0.0,
                    attempt as u64,
                )
                .with_json_schema(judge_schema())
            })
            .collect();
        let hashes: Vec<String> = requests
            .iter()
            .map(|r| {
                client
                    .effective_request(r.clone())
                    .hash(&client.config().endpoint)
            })
            .collect();
        let report = client.chat_batch(requests, Progress::Auto).await;
        for ((index, hash), result) in pending.into_iter().zip(hashes).zip(report.results) {
            let verdict = &mut verdicts[index];
            let answer = match result {
                Ok(answer) => answer,
                Err(error) => {
                    verdict.unparsed_answers += 1;
                    verdict.reason = format!("the judge request failed ({})", error.kind());
                    continue;
                }
            };
            match parse_judge_score(&answer.content).filter(|s| (1.0..=10.0).contains(s)) {
                Some(score) => {
                    verdict.score = Some(score);
                    verdict.request_hash = Some(hash);
                    verdict.reason = answer
                        .json()
                        .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
                        .unwrap_or_else(|| answer.content.lines().next().unwrap_or("").to_string());
                }
                None => {
                    verdict.unparsed_answers += 1;
                    verdict.reason = format!(
                        "unparsable: {:?}",
                        answer.content.chars().take(80).collect::<String>()
                    );
                }
            }
        }
    }
    verdicts
}

/// One labelled example of the judge's calibration set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationExample {
    pub pattern: String,
    pub description: String,
    pub instruction: String,
    pub response: String,
    /// Whether a careful grader would keep it.
    pub good: bool,
}

/// How the judge's threshold sorts the labelled calibration set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub examples: usize,
    pub good: usize,
    /// Kept (score above the threshold) and good / kept / good but dropped / bad but kept.
    pub true_keeps: usize,
    pub kept: usize,
    pub unparsed: usize,
    /// `None` when nothing was kept (precision) or nothing is good (recall).
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

/// The shipped calibration set (`calibration.jsonl`).
pub const SHIPPED_CALIBRATION: &str = include_str!("../calibration.jsonl");

/// Judges the calibration set (the shipped one, plus `judge.calibration` when given) with the
/// same template and threshold as the real examples.
async fn calibrate(
    client: &LlmClient,
    config: &Phase1cConfig,
    templates: &Templates,
) -> Result<Option<Calibration>> {
    if !config.judge.calibrate {
        return Ok(None);
    }
    let mut rows: Vec<CalibrationExample> = SHIPPED_CALIBRATION
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("the shipped calibration set parses"))
        .collect();
    if let Some(path) = &config.judge.calibration {
        rows.extend(
            read_jsonl::<CalibrationExample>(path).map_err(|error| Error::Config {
                field: "judge.calibration".into(),
                message: error.to_string(),
            })?,
        );
    }
    let prompts: Vec<(String, BTreeMap<&'static str, String>)> = rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            (
                format!("calibration-{index}"),
                BTreeMap::from([
                    ("label", row.pattern.clone()),
                    ("description", row.description.clone()),
                    ("keywords", String::new()),
                    ("instruction", row.instruction.clone()),
                    ("response", row.response.clone()),
                ]),
            )
        })
        .collect();
    let verdicts = judge(client, config, templates, &prompts).await;
    let kept: Vec<bool> = verdicts
        .iter()
        .map(|v| v.score.is_some_and(|s| s > config.judge.threshold))
        .collect();
    let good = rows.iter().filter(|r| r.good).count();
    let kept_count = kept.iter().filter(|&&k| k).count();
    let true_keeps = rows
        .iter()
        .zip(&kept)
        .filter(|(r, k)| r.good && **k)
        .count();
    Ok(Some(Calibration {
        examples: rows.len(),
        good,
        true_keeps,
        kept: kept_count,
        unparsed: verdicts.iter().filter(|v| v.score.is_none()).count(),
        precision: (kept_count > 0).then(|| true_keeps as f64 / kept_count as f64),
        recall: (good > 0).then(|| true_keeps as f64 / good as f64),
    }))
}

/// Embeddings of the configured reference texts, cached in `cache_dir` by content hash.
fn reference_embeddings(
    config: &Phase1cConfig,
    data_dir: &Path,
    holdout: &[&TestItem],
) -> Result<Option<(SentenceEncoder, EmbeddingNeighbours)>> {
    let sources = &config.decontaminate.embedding_sources;
    if sources.is_empty() {
        return Ok(None);
    }
    let encoder = SentenceEncoder::load(
        &config.embedding_model,
        &embeddings::burn::tensor::Device::flex(),
    )?;
    let benchmark = |error: benchmarks::Error| Error::Config {
        field: "decontaminate.benchmark_data_dir".into(),
        message: error.to_string(),
    };
    let mut index = EmbeddingNeighbours::new(encoder.dim());
    for source in sources {
        let texts: Vec<String> = match source.as_str() {
            "holdout" => holdout.iter().map(|item| item.question.clone()).collect(),
            "gsm8k" => load_gsm8k(data_dir)
                .map_err(benchmark)?
                .into_iter()
                .map(|item| item.question)
                .collect(),
            "humaneval" => load_humaneval(data_dir)
                .map_err(benchmark)?
                .into_iter()
                .map(|p| p.prompt)
                .collect(),
            "mmlu" => load_mmlu(data_dir, MmluSplit::Test)
                .map_err(benchmark)?
                .into_iter()
                .map(|item| item.question)
                .collect(),
            other => unreachable!("checked: {other}"),
        };
        let digest = hex::encode(Sha256::digest(texts.join("\n").as_bytes()));
        let cache = config
            .decontaminate
            .cache_dir
            .join(format!("minilm-{source}-{}.f32", &digest[..16]));
        let flat = match std::fs::read(&cache) {
            Ok(bytes) if bytes.len() == texts.len() * encoder.dim() * 4 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            _ => {
                tracing::info!(
                    "embedding {} {source} texts for decontamination",
                    texts.len()
                );
                let flat = encoder.encode(&texts, 64)?.into_flat();
                let bytes: Vec<u8> = flat.iter().flat_map(|x| x.to_le_bytes()).collect();
                write_atomic(&cache, &bytes)?;
                flat
            }
        };
        index.add(source, &flat);
    }
    Ok(Some((encoder, index)))
}

fn decontaminate(
    config: &Phase1cConfig,
    ngrams: &NgramIndex,
    neighbours: &Option<(SentenceEncoder, EmbeddingNeighbours)>,
    examples: Vec<(TeacherExample, f32)>,
    funnels: &mut BTreeMap<usize, Funnel>,
    decisions: &mut Vec<GateDecision>,
) -> Result<Vec<(TeacherExample, f32)>> {
    let embedded = match neighbours {
        Some((encoder, _)) if !examples.is_empty() => {
            let texts: Vec<&str> = examples
                .iter()
                .map(|(e, _)| e.instruction.as_str())
                .collect();
            Some(encoder.encode(&texts, 32)?)
        }
        _ => None,
    };
    let mut clean = Vec::new();
    for (index, (example, score)) in examples.into_iter().enumerate() {
        let funnel = funnels.get_mut(&example.cluster).expect("a target");
        let text = format!("{}\n{}", example.instruction, example.response);
        if let Some(source) = ngrams.overlap(&text) {
            let reason = format!("{}-gram shared with {source}", ngrams.n());
            let key = format!("decontaminate: {}-gram {source}", ngrams.n());
            drop_example(decisions, funnel, &example, "decontaminate", reason, &key);
            continue;
        }
        if let (Some((_, index_of)), Some(embedded)) = (neighbours, &embedded)
            && let Some((source, cosine)) = index_of.nearest(embedded.row(index))
            && cosine >= config.decontaminate.embedding_cosine
        {
            let reason = format!("embedding neighbour of a {source} item (cosine {cosine:.3})");
            let key = format!("decontaminate: embedding {source}");
            drop_example(decisions, funnel, &example, "decontaminate", reason, &key);
            continue;
        }
        funnel.decontaminated += 1;
        clean.push((example, score));
    }
    Ok(clean)
}

/// The original training data as chat messages (any format lora-training reads).
fn read_original(path: &Path) -> Result<Vec<TrainingExample>> {
    let rows: Vec<serde_json::Value> = read_jsonl(path).map_err(|error| Error::Config {
        field: "mix.original_data".into(),
        message: error.to_string(),
    })?;
    rows.iter()
        .enumerate()
        .map(|(line, row)| {
            let messages =
                lora_training::data::conversation(row, lora_training::DataFormat::Auto, None)
                    .map_err(|message| Error::Config {
                        field: format!("mix.original_data ({}:{})", path.display(), line + 1),
                        message,
                    })?;
            Ok(TrainingExample {
                messages: messages
                    .into_iter()
                    .map(|m| ChatMessage {
                        role: m.role,
                        content: m.content,
                    })
                    .collect(),
                origin: "original".into(),
                example: None,
                judge_score: None,
            })
        })
        .collect()
}

fn user_text(messages: &[ChatMessage]) -> String {
    messages
        .iter()
        .filter(|m| m.role == "user")
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Teacher examples plus original ones so that teacher examples are `teacher_fraction` of the
/// whole (rounded to the nearest example; `originals_without_teacher` originals when there is no
/// teacher example), originals picked by a seeded hash order; and up to
/// `eval` further originals, not in the mix, for the held-out loss (every teacher example is
/// trained on).
pub fn mix_examples(
    config: &Phase1cConfig,
    teacher: &[(TeacherExample, f32)],
    original: &[TrainingExample],
    eval: usize,
) -> (Vec<TrainingExample>, Vec<TrainingExample>) {
    let fraction = config.mix.teacher_fraction;
    let wanted = if teacher.is_empty() {
        original.len().min(config.mix.originals_without_teacher)
    } else {
        ((teacher.len() as f64 * (1.0 - fraction) / fraction).round() as usize).min(original.len())
    };
    let mut order: Vec<usize> = (0..original.len()).collect();
    order.sort_by_key(|&i| stable_hash(&format!("{}:{i}", config.mix.seed)));
    let mut mix: Vec<TrainingExample> = teacher
        .iter()
        .map(|(example, score)| TrainingExample {
            messages: vec![
                ChatMessage {
                    role: "user".into(),
                    content: example.instruction.clone(),
                },
                ChatMessage {
                    role: "assistant".into(),
                    content: example.response.clone(),
                },
            ],
            origin: "teacher".into(),
            example: Some(example.clone()),
            judge_score: Some(*score),
        })
        .collect();
    mix.extend(order.iter().take(wanted).map(|&i| original[i].clone()));
    let held_out: Vec<TrainingExample> = order
        .iter()
        .skip(wanted)
        .take(eval)
        .map(|&i| original[i].clone())
        .collect();
    // Interleave deterministically so no batch is all of one kind.
    mix.sort_by_key(|example| {
        stable_hash(&format!(
            "{}:{}",
            config.mix.seed,
            user_text(&example.messages)
        ))
    });
    (mix, held_out)
}

struct Trained {
    merged_dir: PathBuf,
    before: Vec<benchmarks::BenchmarkResult>,
    after: Vec<benchmarks::BenchmarkResult>,
}

fn train_on_mix(
    config: &Phase1cConfig,
    device: &llama::burn::tensor::Device,
    mix_sha256: &str,
    mix: &Path,
    eval: Option<&Path>,
) -> Result<Trained> {
    let section = &config.train;
    // Training resumes from its checkpoints only on the mix it started on; a changed mix (more
    // answers paid for since, another gate setting) trains afresh: the old run is derived data.
    let train_dir = config.run_dir.join("train");
    let stamp = train_dir.join("mix.sha256");
    let same_mix = std::fs::read_to_string(&stamp).is_ok_and(|sha| sha.trim() == mix_sha256);
    if train_dir.exists() && !same_mix {
        tracing::warn!("the mix changed: training again from the start");
        std::fs::remove_dir_all(&train_dir).map_err(io_error(&train_dir))?;
    }
    write_atomic(&stamp, mix_sha256.as_bytes())?;
    let phase1a = Phase1aConfig {
        run_dir: train_dir,
        model: config.model.clone(),
        data: DataConfig {
            train: mix.to_path_buf(),
            eval: eval.map(Path::to_path_buf),
            max_seq_len: section.max_seq_len.unwrap_or(1024),
            eval_examples: 0,
            ..DataConfig::default()
        },
        lora: section.lora.clone(),
        train: section.train.clone(),
        merge: section.merge.clone(),
        validate: section.validate.clone(),
    };
    let outcome = run_phase1a(
        &phase1a,
        &Phase1aOptions {
            resume: phase1a.run_dir.join("checkpoints").is_dir(),
            train_only: false,
        },
        device,
        &Group::single(),
    )?;
    Ok(Trained {
        merged_dir: outcome.merged_dir.expect("a single-process run merges"),
        before: outcome.before,
        after: outcome.after,
    })
}

fn model_device(config: &Phase1cConfig) -> Result<llama::burn::tensor::Device> {
    select_device_named(&config.model.device, config.model.precision.as_deref()).map_err(|error| {
        Error::Config {
            field: "model".into(),
            message: error.to_string(),
        }
    })
}

/// Grades the holdout items with the trained model (resumable: `holdout_after.jsonl`), open
/// answers by phase 1B's judge (`judge`; [`Phase1bOutputs::read`] requires it when the holdout
/// has any), so before and after are graded alike.
fn grade_holdout(
    config: &Phase1cConfig,
    device: &llama::burn::tensor::Device,
    merged: &Path,
    items: &[&TestItem],
    judge: Option<&LlmSettings>,
) -> Result<BTreeMap<String, bool>> {
    let pretrained = Pretrained::load(merged, device).map_err(lora_training::Error::from)?;
    let model = LocalModel::new(
        merged.display().to_string(),
        pretrained,
        config.holdout.batch_size,
    );
    let items: Vec<TestItem> = items.iter().map(|item| (*item).clone()).collect();
    // Not the examples' judge ledger: its budget and the report's counts are the examples'.
    let ledger = config.run_dir.join(HOLDOUT_JUDGE_LEDGER);
    let records = run_items_judged(
        &model,
        &items,
        &config.run_dir.join("holdout_after.jsonl"),
        &config.holdout,
        judge.map(|settings| JudgeSource {
            settings,
            ledger: &ledger,
            device: &config.model.device,
        }),
    )?;
    Ok(records
        .into_iter()
        .map(|record| (record.item_id, record.correct))
        .collect())
}

/// Writes `rows` as JSONL unless the file already holds exactly that (its modification time
/// is part of the token cache's fingerprint, so an unchanged mix must stay untouched for
/// training to resume). Returns the content's sha256.
fn write_jsonl_if_changed(path: &Path, rows: &[impl Serialize]) -> Result<String> {
    let mut bytes = Vec::new();
    for row in rows {
        serde_json::to_writer(&mut bytes, row).expect("records serialise");
        bytes.push(b'\n');
    }
    if std::fs::read(path).ok().as_deref() != Some(bytes.as_slice()) {
        write_atomic(path, &bytes)?;
    }
    Ok(hex::encode(Sha256::digest(&bytes)))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(value).expect("serialisable");
    json.push(b'\n');
    Ok(write_atomic(path, &json)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targeted_answers_parse_in_the_shapes_models_write() {
        let fenced = "Here you go:\n```json\n{\"examples\": [{\"instruction\": \"Add 2 and 3.\", \"response\": \"2 + 3 = 5\", \"answer\": 5}, {\"instruction\": \"\", \"response\": \"x\"}]}\n```";
        assert_eq!(
            parse_targeted(fenced),
            vec![("Add 2 and 3.".into(), "2 + 3 = 5".into(), Some("5".into()))]
        );
        let bare = "[{\"instruction\": \"Q\", \"response\": \"R\"}]";
        assert_eq!(parse_targeted(bare), vec![("Q".into(), "R".into(), None)]);
        assert!(parse_targeted("{\"examples\": [{\"instruction\": ...").is_empty());
        assert!(parse_targeted("no json here").is_empty());
    }

    fn original(i: usize) -> TrainingExample {
        TrainingExample {
            messages: vec![
                ChatMessage {
                    role: "user".into(),
                    content: format!("original question {i}"),
                },
                ChatMessage {
                    role: "assistant".into(),
                    content: format!("answer {i}"),
                },
            ],
            origin: "original".into(),
            example: None,
            judge_score: None,
        }
    }

    fn teacher(i: usize) -> (TeacherExample, f32) {
        let example = TeacherExample {
            id: format!("tc-{i}"),
            cluster: i % 3,
            strategy: records::distill::Strategy::Targeted,
            instruction: format!("teacher question {i}"),
            response: format!("worked answer {i}"),
            answer: None,
            seed_item_ids: vec![format!("seed-{i}")],
            teacher_model: "teacher".into(),
            template_sha256: "t".into(),
            request_hash: format!("r{i}"),
        };
        (example, 9.0)
    }

    /// 18 teacher examples at 90% take 2 originals; none take `originals_without_teacher`; the
    /// held-out originals are never in the mix; every teacher example keeps its provenance and
    /// score; the same seed gives the same mix.
    #[test]
    fn the_mix_has_the_configured_shares_and_keeps_provenance() {
        let mut config =
            Phase1cConfig::parse_with_overrides(crate::config::DEFAULT_CONFIG, "x", &[]).unwrap();
        config.mix.originals_without_teacher = 5;
        let originals: Vec<TrainingExample> = (0..40).map(original).collect();
        let teachers: Vec<(TeacherExample, f32)> = (0..18).map(teacher).collect();

        let (mix, held_out) = mix_examples(&config, &teachers, &originals, 4);
        let count = |origin: &str| mix.iter().filter(|e| e.origin == origin).count();
        assert_eq!((count("teacher"), count("original")), (18, 2));
        assert_eq!(held_out.len(), 4);
        assert!(held_out.iter().all(|h| !mix.contains(h)), "held-out apart");
        assert!(mix.iter().filter(|e| e.origin == "teacher").all(|e| {
            e.judge_score == Some(9.0)
                && e.example
                    .as_ref()
                    .is_some_and(|x| !x.seed_item_ids.is_empty())
        }));
        assert_eq!(mix_examples(&config, &teachers, &originals, 4).0, mix);

        let (alone, _) = mix_examples(&config, &[], &originals, 4);
        assert_eq!(alone.len(), 5);
        assert!(alone.iter().all(|e| e.origin == "original"));
    }
}
