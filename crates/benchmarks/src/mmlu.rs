//! MMLU, 5-shot from the dev split of the same subject.
//!
//! - [`MmluProtocol::Loglikelihood`]: lm-evaluation-harness's default `mmlu` task. Context =
//!   `"The following are multiple choice questions (with answers) about {subject}.\n\n"`, then
//!   per shot `"{question}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer: {letter}\n\n"`, then the
//!   target without its letter; the prediction is the continuation among `" A".." D"` with the
//!   highest log-likelihood.
//! - [`MmluProtocol::GenerativeChat`]: Meta's Llama 3 protocol. Each shot is a user turn
//!   ("Given the following question and four candidate answers (A, B, C and D), choose the best
//!   answer.\nQuestion: ...\nYour response should end with \"The best answer is
//!   [the_answer_letter]\" ...") answered by an assistant turn "The best answer is X."; the
//!   model answers the last user turn.
//! - [`MmluProtocol::GenerativeText`]: the log-likelihood prompt, but the model writes the letter.
//!
//! Extraction for the generative protocols ([`extract_letter`]): the letter after "answer is"
//! (`(?i)answer is\W*([ABCD])\b`), else the first standalone capital A–D (`\b([ABCD])\b`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use records::eval::{BenchmarkResult, ChatMessage, EvalRecord, Prompt, Role};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::data::{MmluItem, MmluSplit, load_mmlu};
use crate::error::{Error, Result};
use crate::harness::{self, RunInfo};
use crate::model::{GenerationRequest, LanguageModel, LoglikelihoodRequest};
use crate::record_log::RecordLog;

const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MmluProtocol {
    Loglikelihood,
    GenerativeChat,
    GenerativeText,
}

impl MmluProtocol {
    pub fn name(self) -> &'static str {
        match self {
            MmluProtocol::Loglikelihood => "loglikelihood",
            MmluProtocol::GenerativeChat => "generative-chat",
            MmluProtocol::GenerativeText => "generative-text",
        }
    }
}

#[derive(Clone, Debug)]
pub struct MmluOptions {
    pub protocol: MmluProtocol,
    pub shots: usize,
    /// Items per subject (seeded choice); `None` for all.
    pub limit: Option<usize>,
    /// Subjects to run; `None` for all 57.
    pub subjects: Option<Vec<String>>,
    pub split: MmluSplit,
    pub seed: u64,
    /// Items per model call.
    pub batch_size: usize,
    pub data_dir: std::path::PathBuf,
}

impl Default for MmluOptions {
    fn default() -> Self {
        Self {
            protocol: MmluProtocol::Loglikelihood,
            shots: 5,
            limit: None,
            subjects: None,
            split: MmluSplit::Test,
            seed: 1234,
            batch_size: 8,
            data_dir: crate::data::default_data_dir(),
        }
    }
}

/// `"{question}\nA. ..\nD. ..\nAnswer:"` as lm-evaluation-harness's `doc_to_text`.
pub fn format_question(item: &MmluItem) -> String {
    let mut text = item.question.trim().to_string();
    for (letter, choice) in LETTERS.iter().zip(&item.choices) {
        text.push_str(&format!("\n{letter}. {choice}"));
    }
    text.push_str("\nAnswer:");
    text
}

/// The k-shot context for the log-likelihood (and plain generative) protocol.
pub fn loglikelihood_context(item: &MmluItem, shots: &[&MmluItem]) -> String {
    let mut context = format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        item.subject.replace('_', " ")
    );
    for shot in shots {
        context.push_str(&format!(
            "{} {}\n\n",
            format_question(shot),
            LETTERS[shot.answer]
        ));
    }
    context.push_str(&format_question(item));
    context
}

/// Meta's instruction for one question.
pub fn chat_instruction(item: &MmluItem) -> String {
    format!(
        "Given the following question and four candidate answers (A, B, C and D), choose the best answer.\nQuestion: {}\nA. {}\nB. {}\nC. {}\nD. {}\nYour response should end with \"The best answer is [the_answer_letter]\" where the [the_answer_letter] is one of A, B, C or D.",
        item.question.trim(),
        item.choices[0],
        item.choices[1],
        item.choices[2],
        item.choices[3]
    )
}

/// Meta's k-shot conversation: shots as prior user/assistant turns.
pub fn chat_prompt(item: &MmluItem, shots: &[&MmluItem]) -> Vec<ChatMessage> {
    let mut messages = Vec::new();
    for shot in shots {
        messages.push(ChatMessage::new(Role::User, chat_instruction(shot)));
        messages.push(ChatMessage::new(
            Role::Assistant,
            format!("The best answer is {}.", LETTERS[shot.answer]),
        ));
    }
    messages.push(ChatMessage::new(Role::User, chat_instruction(item)));
    messages
}

static ANSWER_IS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)answer is\W*([ABCD])\b").expect("valid regex"));
static LONE_LETTER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b([ABCD])\b").expect("valid regex"));

/// The answer letter in a generated text (see the module docs for the rule).
pub fn extract_letter(text: &str) -> Option<String> {
    ANSWER_IS
        .captures(text)
        .or_else(|| LONE_LETTER.captures(text))
        .map(|c| c[1].to_uppercase())
}

/// Runs MMLU and writes `<out_dir>/mmlu_<protocol>.jsonl` and `.results.json`.
pub fn run_mmlu(
    model: &dyn LanguageModel,
    options: &MmluOptions,
    out_dir: &Path,
) -> Result<BenchmarkResult> {
    if options.protocol == MmluProtocol::Loglikelihood && !model.supports_loglikelihood() {
        return Err(Error::LoglikelihoodUnsupported {
            model: model.name(),
            reason: model.loglikelihood_unsupported_reason(),
        });
    }
    if options.shots > 5 {
        return Err(Error::InvalidOption {
            option: "shots",
            message: format!(
                "MMLU dev has 5 items per subject, asked for {}",
                options.shots
            ),
        });
    }
    let dev = load_mmlu(&options.data_dir, MmluSplit::Dev)?;
    let all = load_mmlu(&options.data_dir, options.split)?;
    let mut by_subject: BTreeMap<String, Vec<MmluItem>> = BTreeMap::new();
    for item in all {
        by_subject
            .entry(item.subject.clone())
            .or_default()
            .push(item);
    }
    if let Some(subjects) = &options.subjects {
        let path = options
            .data_dir
            .join("mmlu")
            .join(format!("{}.jsonl", options.split.name()));
        for subject in subjects {
            if !by_subject.contains_key(subject) {
                return Err(Error::UnknownSubject {
                    subject: subject.clone(),
                    path,
                });
            }
        }
        by_subject.retain(|s, _| subjects.contains(s));
    }
    let items: Vec<MmluItem> = by_subject
        .into_values()
        .flat_map(|items| harness::select(items, options.limit, options.seed, |i| i.id.as_str()))
        .collect();
    let mut shots_by_subject: BTreeMap<&str, Vec<&MmluItem>> = BTreeMap::new();
    for item in &dev {
        let shots = shots_by_subject.entry(item.subject.as_str()).or_default();
        if shots.len() < options.shots {
            shots.push(item);
        }
    }

    let protocol = options.protocol.name();
    let config = serde_json::json!({
        "benchmark": "mmlu",
        "protocol": protocol,
        "shots": options.shots,
        "split": options.split.name(),
    });
    let (records_path, results_path) = harness::output_paths(out_dir, "mmlu", protocol);
    let mut log = RecordLog::open(&records_path, &config)?;
    let records = harness::score_pending(
        &format!("mmlu {protocol}"),
        &items,
        |i| i.id.as_str(),
        &mut log,
        options.batch_size,
        |batch| {
            let shots = |item: &MmluItem| -> Vec<&MmluItem> {
                shots_by_subject
                    .get(item.subject.as_str())
                    .cloned()
                    .unwrap_or_default()
            };
            match options.protocol {
                MmluProtocol::Loglikelihood => score_loglikelihood(model, batch, &shots),
                MmluProtocol::GenerativeChat | MmluProtocol::GenerativeText => {
                    score_generative(model, batch, &shots, options.protocol)
                }
            }
        },
    )?;
    let mut full_config = config;
    full_config["limit_per_subject"] = serde_json::json!(options.limit);
    full_config["subjects"] = serde_json::json!(options.subjects);
    full_config["seed"] = serde_json::json!(options.seed);
    let result = harness::aggregate(
        RunInfo {
            benchmark: "mmlu",
            protocol,
            model: model.name(),
            primary_metric: "acc".into(),
            config: full_config,
            seed: options.seed,
            notes: vec![],
        },
        &records,
    );
    harness::write_result(&results_path, &result)?;
    Ok(result)
}

fn record(
    item: &MmluItem,
    protocol: MmluProtocol,
    prompt: Prompt,
    output: String,
    extracted: Option<String>,
) -> EvalRecord {
    let gold = LETTERS[item.answer].to_string();
    let correct = extracted.as_deref() == Some(gold.as_str());
    EvalRecord {
        benchmark: "mmlu".into(),
        protocol: protocol.name().into(),
        item_id: item.id.clone(),
        subject: Some(item.subject.clone()),
        prompt,
        output,
        extracted,
        gold,
        correct,
        metrics: BTreeMap::from([("acc".to_string(), correct as u8 as f64)]),
        logprobs: None,
        samples: vec![],
        detail: None,
    }
}

fn score_loglikelihood<'a>(
    model: &dyn LanguageModel,
    batch: &[&'a MmluItem],
    shots: &dyn Fn(&'a MmluItem) -> Vec<&'a MmluItem>,
) -> Result<Vec<EvalRecord>> {
    let contexts: Vec<String> = batch
        .iter()
        .map(|item| loglikelihood_context(item, &shots(item)))
        .collect();
    let requests: Vec<LoglikelihoodRequest> = contexts
        .iter()
        .flat_map(|context| {
            LETTERS.iter().map(move |letter| LoglikelihoodRequest {
                context: context.clone(),
                continuation: format!(" {letter}"),
            })
        })
        .collect();
    let answers = harness::loglikelihood(model, &requests)?;
    Ok(batch
        .iter()
        .zip(contexts)
        .zip(answers.chunks(4))
        .map(|((item, context), answers)| {
            let logprobs: Vec<f64> = answers.iter().map(|a| a.logprob).collect();
            // First maximum wins ties, as numpy.argmax in lm-evaluation-harness.
            let best = (0..4).fold(0, |best, i| {
                if logprobs[i] > logprobs[best] {
                    i
                } else {
                    best
                }
            });
            let mut record = record(
                item,
                MmluProtocol::Loglikelihood,
                Prompt::Text(context),
                format!(" {}", LETTERS[best]),
                Some(LETTERS[best].to_string()),
            );
            record.logprobs = Some(logprobs);
            record
        })
        .collect())
}

fn score_generative<'a>(
    model: &dyn LanguageModel,
    batch: &[&'a MmluItem],
    shots: &dyn Fn(&'a MmluItem) -> Vec<&'a MmluItem>,
    protocol: MmluProtocol,
) -> Result<Vec<EvalRecord>> {
    let requests: Vec<GenerationRequest> = batch
        .iter()
        .map(|item| match protocol {
            MmluProtocol::GenerativeChat => GenerationRequest {
                prompt: Prompt::Chat(chat_prompt(item, &shots(item))),
                max_new_tokens: 64,
                stop: vec![],
                temperature: 0.0,
                seed: 0,
            },
            _ => GenerationRequest {
                prompt: Prompt::Text(loglikelihood_context(item, &shots(item))),
                max_new_tokens: 8,
                stop: vec!["\n".into()],
                temperature: 0.0,
                seed: 0,
            },
        })
        .collect();
    let outputs = harness::generate(model, &requests)?;
    Ok(batch
        .iter()
        .zip(requests)
        .zip(outputs)
        .map(|((item, request), output)| {
            let extracted = extract_letter(&output);
            record(item, protocol, request.prompt, output, extracted)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(subject: &str, question: &str, answer: usize) -> MmluItem {
        MmluItem {
            id: format!("mmlu/test/{subject}/0"),
            subject: subject.into(),
            question: question.into(),
            choices: ["w".into(), "x".into(), "y".into(), "z".into()],
            answer,
        }
    }

    #[test]
    fn context_matches_lm_eval_format() {
        let shot = item("high_school_physics", "  Shot?\n", 2);
        let target = item("high_school_physics", "Target?", 0);
        assert_eq!(
            loglikelihood_context(&target, &[&shot]),
            "The following are multiple choice questions (with answers) about high school physics.\n\n\
             Shot?\nA. w\nB. x\nC. y\nD. z\nAnswer: C\n\n\
             Target?\nA. w\nB. x\nC. y\nD. z\nAnswer:"
        );
    }

    #[test]
    fn letter_extraction() {
        assert_eq!(extract_letter("The best answer is C."), Some("C".into()));
        assert_eq!(extract_letter("the answer is: (b)"), Some("B".into()));
        assert_eq!(extract_letter(" D"), Some("D".into()));
        // The fallback takes the first standalone capital, so an article counts (documented).
        assert_eq!(extract_letter("A plane is B"), Some("A".into()));
        assert_eq!(extract_letter("I think it is E"), None);
    }
}
