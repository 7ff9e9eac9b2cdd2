//! Runs a model over test items and grades every reply, through the benchmarks crate's
//! [`LanguageModel`] seam (the local model on CPU or GPU, or an OpenAI-compatible endpoint).
//!
//! Each graded item is appended to `results.jsonl` as one [`EvalRecord`] (benchmark `phase1b`,
//! subject = family, protocol = grader kind and scoring method) as its batch finishes, so a
//! killed run continues where it stopped with no item redone or duplicated, and the benchmarks
//! crate's aggregation gives per-family accuracy with confidence intervals.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use benchmarks::record_log::RecordLog;
use benchmarks::{
    GenerationRequest, LanguageModel, LoglikelihoodRequest, generate_checked,
    loglikelihood_checked, score_pending,
};
use llm_client::LlmSettings;
use records::eval::{ChatMessage, EvalRecord, Prompt, Role};
use records::mining::{Grader, TestItem};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::grade::grade_reply;
use crate::judge::AnswerJudge;
use crate::phase::with_client;
use crate::pool::letter;

/// The `benchmark` field of phase 1B result records.
pub const BENCHMARK: &str = "phase1b";

/// How multiple-choice items are scored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChoiceScoring {
    /// By log-likelihood where the model gives it, else generatively.
    #[default]
    Auto,
    /// The choice whose text has the highest log-likelihood per character after
    /// `Question: ...\nAnswer:` (lm-evaluation-harness's `acc_norm`).
    Loglikelihood,
    /// The model's reply names a letter or a choice's text.
    Generative,
}

/// New-token limits per grader kind: a letter needs few, a constrained essay many.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaxNewTokens {
    pub multiple_choice: usize,
    pub short_answer: usize,
    pub number: usize,
    pub exact_text: usize,
    pub constraints: usize,
    /// Open answers graded by the LLM judge.
    pub judge: usize,
}

impl Default for MaxNewTokens {
    fn default() -> Self {
        Self {
            multiple_choice: 24,
            short_answer: 32,
            number: 96,
            exact_text: 48,
            constraints: 192,
            judge: 256,
        }
    }
}

impl MaxNewTokens {
    fn for_grader(&self, grader: &Grader) -> usize {
        match grader {
            Grader::MultipleChoice { .. } => self.multiple_choice,
            Grader::ShortAnswer { .. } => self.short_answer,
            Grader::Number { .. } => self.number,
            Grader::ExactText { .. } => self.exact_text,
            Grader::Constraints { .. } => self.constraints,
            Grader::Judge { .. } => self.judge,
        }
    }
}

/// Settings of [`run_items`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Items per model call.
    pub batch_size: usize,
    pub multiple_choice: ChoiceScoring,
    /// A system message before every prompt (none: the model's chat template decides).
    pub system_prompt: Option<String>,
    pub max_new_tokens: MaxNewTokens,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            batch_size: 16,
            multiple_choice: ChoiceScoring::Auto,
            system_prompt: None,
            max_new_tokens: MaxNewTokens::default(),
        }
    }
}

/// Runs `model` over `items`, appending to `results` (a JSONL of [`EvalRecord`]s) and skipping
/// the items it already holds. Open-answer items ([`Grader::Judge`]) are graded by `judge`,
/// which they require. A results file written by another model, judge or other settings is
/// refused rather than mixed. Returns the records of all `items`, in their order.
pub fn run_items(
    model: &dyn LanguageModel,
    items: &[TestItem],
    results: &Path,
    config: &RunConfig,
    judge: Option<&AnswerJudge>,
) -> Result<Vec<EvalRecord>> {
    if judge.is_none()
        && let Some(item) = items.iter().find(|item| needs_judge(item))
    {
        return Err(Error::Config {
            field: "judge".into(),
            message: format!(
                "family {} has open-answer items, graded by an LLM judge: configure one",
                item.family
            ),
        });
    }
    let loglikelihood = match config.multiple_choice {
        ChoiceScoring::Auto => model.supports_loglikelihood(),
        ChoiceScoring::Loglikelihood if !model.supports_loglikelihood() => {
            return Err(Error::Config {
                field: "run.multiple_choice".into(),
                message: format!(
                    "`loglikelihood` needs log-probabilities, which {} does not give; use `generative` or `auto`",
                    model.name()
                ),
            });
        }
        ChoiceScoring::Loglikelihood => true,
        ChoiceScoring::Generative => false,
    };
    let mut settings = serde_json::json!({
        "model": model.name(),
        "multiple_choice": if loglikelihood { "loglikelihood" } else { "generative" },
        "system_prompt": config.system_prompt,
        "max_new_tokens": config.max_new_tokens,
    });
    if let Some(judge) = judge {
        settings["judge"] = judge.model().into();
    }
    let mut log = RecordLog::open(results, &settings).map_err(boxed)?;
    // Items of one grader kind share a token limit: batching them together keeps a batch from
    // running as long as its longest-limit member for everyone.
    let mut ordered: Vec<&TestItem> = items.iter().collect();
    ordered.sort_by_key(|item| (item.grader.kind(), item.prompt.len()));
    let records = score_pending(
        "phase1b",
        &ordered,
        |item| item.id.as_str(),
        &mut log,
        config.batch_size,
        |batch| score_batch(model, batch, loglikelihood, config, judge),
    )
    .map_err(boxed)?;
    let mut by_id: HashMap<String, EvalRecord> = records
        .into_iter()
        .map(|record| (record.item_id.clone(), record))
        .collect();
    Ok(items
        .iter()
        .map(|item| by_id.remove(&item.id).expect("every item was scored"))
        .collect())
}

fn boxed(error: benchmarks::Error) -> Error {
    Error::Benchmark(Box::new(error))
}

/// Where the LLM judge of [`run_items_judged`] comes from.
#[derive(Clone, Copy, Debug)]
pub struct JudgeSource<'a> {
    /// `serve` (naming its `serve_model`) or `endpoint`.
    pub settings: &'a LlmSettings,
    /// The ledger its answers are recorded in (a rerun replays them).
    pub ledger: &'a Path,
    /// Where a served judge runs (`cpu`, `cuda:0`).
    pub device: &'a str,
}

/// [`run_items`] with the judge of `judge` started for it (a served judge before the run and
/// stopped after it) when `items` hold open answers; without such items no judge is started.
/// Blocking: starts its own async runtime for the judge's calls.
pub fn run_items_judged(
    model: &dyn LanguageModel,
    items: &[TestItem],
    results: &Path,
    config: &RunConfig,
    judge: Option<JudgeSource>,
) -> Result<Vec<EvalRecord>> {
    let Some(judge) = judge.filter(|_| items.iter().any(needs_judge)) else {
        return run_items(model, items, results, config, None);
    };
    // A served judge names its model (phase 1B resolves it); an endpoint names its own.
    if judge.settings.kind == "serve" && judge.settings.serve_model.is_none() {
        return Err(Error::Config {
            field: "judge.serve_model".into(),
            message: "a served judge names the model it serves".into(),
        });
    }
    let served_model = judge.settings.serve_model.clone().unwrap_or_default();
    with_client(
        Some(judge.settings),
        "judge",
        &served_model,
        judge.device,
        judge.ledger,
        async |client| {
            let client = client.expect("judge settings give a client");
            let judge = AnswerJudge::new(client, tokio::runtime::Handle::current());
            // The runner blocks on the judge's calls; this thread leaves the runtime for it.
            tokio::task::block_in_place(|| run_items(model, items, results, config, Some(&judge)))
        },
    )
}

/// Whether `item` is graded by the LLM judge.
pub fn needs_judge(item: &TestItem) -> bool {
    matches!(item.grader, Grader::Judge { .. })
}

fn score_batch(
    model: &dyn LanguageModel,
    batch: &[&&TestItem],
    loglikelihood: bool,
    config: &RunConfig,
    judge: Option<&AnswerJudge>,
) -> benchmarks::Result<Vec<EvalRecord>> {
    let (by_likelihood, by_generation): (Vec<usize>, Vec<usize>) = (0..batch.len())
        .partition(|&i| loglikelihood && matches!(batch[i].grader, Grader::MultipleChoice { .. }));
    let mut records: Vec<Option<EvalRecord>> = vec![None; batch.len()];

    let requests: Vec<GenerationRequest> = by_generation
        .iter()
        .map(|&i| GenerationRequest {
            prompt: chat_prompt(batch[i], config),
            max_new_tokens: config.max_new_tokens.for_grader(&batch[i].grader),
            stop: Vec::new(),
            temperature: 0.0,
            seed: 0,
        })
        .collect();
    let outputs = generate_checked(model, &requests)?;
    let judged: Vec<(&TestItem, &str)> = by_generation
        .iter()
        .zip(&outputs)
        .filter(|&(&i, _)| needs_judge(batch[i]))
        .map(|(&i, output)| (*batch[i], output.as_str()))
        .collect();
    let mut judge_grades = match (judged.is_empty(), judge) {
        (true, _) => Vec::new(),
        (false, Some(judge)) => judge
            .grade(&judged)
            .map_err(|error| benchmarks::Error::Model {
                model: judge.model().to_string(),
                source: error.into(),
            })?,
        (false, None) => unreachable!("run_items refuses judge items without a judge"),
    }
    .into_iter();
    for ((&i, request), output) in by_generation.iter().zip(requests).zip(outputs) {
        let item = batch[i];
        let grade = if needs_judge(item) {
            judge_grades.next().expect("one grade per judged item")
        } else {
            grade_reply(&item.grader, &output)
        };
        records[i] = Some(record(
            item,
            "generative",
            request.prompt,
            output,
            grade.extracted,
            grade.correct,
            grade.reason,
            None,
        ));
    }

    let mut requests = Vec::new();
    for &i in &by_likelihood {
        let Grader::MultipleChoice { choices, .. } = &batch[i].grader else {
            unreachable!("partitioned on multiple choice");
        };
        let context = choice_context(batch[i]);
        requests.extend(choices.iter().map(|choice| LoglikelihoodRequest {
            context: context.clone(),
            continuation: format!(" {choice}"),
        }));
    }
    let answers = loglikelihood_checked(model, &requests)?;
    let mut answers = answers.into_iter();
    for &i in &by_likelihood {
        let item = batch[i];
        let Grader::MultipleChoice { choices, answer } = &item.grader else {
            unreachable!("partitioned on multiple choice");
        };
        let logprobs: Vec<f64> = answers
            .by_ref()
            .take(choices.len())
            .map(|a| a.logprob)
            .collect();
        let chosen = (0..choices.len())
            .max_by(|&a, &b| {
                let per_char = |c: usize| logprobs[c] / (choices[c].chars().count() + 1) as f64;
                per_char(a).total_cmp(&per_char(b)).then(b.cmp(&a))
            })
            .expect("multiple choice has choices");
        let correct = chosen == *answer;
        let reason = (!correct).then(|| {
            format!(
                "chose {}. {} over {}. {} by log-likelihood per character",
                letter(chosen),
                choices[chosen],
                letter(*answer),
                choices[*answer]
            )
        });
        records[i] = Some(record(
            item,
            "loglikelihood",
            Prompt::Text(choice_context(item)),
            choices[chosen].clone(),
            Some(letter(chosen).to_string()),
            correct,
            reason,
            Some(logprobs),
        ));
    }
    Ok(records
        .into_iter()
        .map(|record| record.expect("every item of the batch was scored"))
        .collect())
}

/// `Question: ...\nAnswer:`, continued by each choice's text.
fn choice_context(item: &TestItem) -> String {
    format!("Question: {}\nAnswer:", item.question)
}

fn chat_prompt(item: &TestItem, config: &RunConfig) -> Prompt {
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = &config.system_prompt {
        messages.push(ChatMessage::new(Role::System, system.clone()));
    }
    messages.push(ChatMessage::new(Role::User, item.prompt.clone()));
    Prompt::Chat(messages)
}

#[allow(clippy::too_many_arguments)]
fn record(
    item: &TestItem,
    method: &str,
    prompt: Prompt,
    output: String,
    extracted: Option<String>,
    correct: bool,
    reason: Option<String>,
    logprobs: Option<Vec<f64>>,
) -> EvalRecord {
    EvalRecord {
        benchmark: BENCHMARK.to_string(),
        protocol: format!("{}/{method}", item.grader.kind()),
        item_id: item.id.clone(),
        subject: Some(item.family.clone()),
        prompt,
        output,
        extracted,
        gold: item.gold.clone(),
        correct,
        metrics: BTreeMap::from([("accuracy".to_string(), f64::from(u8::from(correct)))]),
        logprobs,
        samples: Vec::new(),
        detail: reason,
    }
}
