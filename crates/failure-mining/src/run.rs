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
use records::eval::{ChatMessage, EvalRecord, Prompt, Role};
use records::mining::{Grader, TestItem};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::grade::grade_reply;
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
}

impl Default for MaxNewTokens {
    fn default() -> Self {
        Self {
            multiple_choice: 24,
            short_answer: 32,
            number: 96,
            exact_text: 48,
            constraints: 192,
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
            Grader::Constraints { .. } | Grader::Judge { .. } => self.constraints,
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
/// the items it already holds. A results file written by another model or other settings is
/// refused rather than mixed. Returns the records of all `items`, in their order.
pub fn run_items(
    model: &dyn LanguageModel,
    items: &[TestItem],
    results: &Path,
    config: &RunConfig,
) -> Result<Vec<EvalRecord>> {
    if let Some(item) = items
        .iter()
        .find(|item| matches!(item.grader, Grader::Judge { .. }))
    {
        return Err(Error::Config {
            field: format!("family {}", item.family),
            message: "its items need an LLM judge, which this runner does not call yet".into(),
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
    let settings = serde_json::json!({
        "model": model.name(),
        "multiple_choice": if loglikelihood { "loglikelihood" } else { "generative" },
        "system_prompt": config.system_prompt,
        "max_new_tokens": config.max_new_tokens,
    });
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
        |batch| score_batch(model, batch, loglikelihood, config),
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

fn score_batch(
    model: &dyn LanguageModel,
    batch: &[&&TestItem],
    loglikelihood: bool,
    config: &RunConfig,
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
    for ((&i, request), output) in by_generation.iter().zip(requests).zip(outputs) {
        let item = batch[i];
        let grade = grade_reply(&item.grader, &output);
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
