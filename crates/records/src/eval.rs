//! Evaluation records: one [`EvalRecord`] per scored benchmark item (JSONL, appended as items
//! finish) and one [`BenchmarkResult`] per benchmark run (results JSON).
//!
//! Failure mining reads the per-item records, so they keep the exact prompt the model saw,
//! its raw output and what the scorer extracted from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who said a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One turn of a chat conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// What a model is asked: raw text (continued as is) or a chat conversation (rendered through
/// the model's chat template, or sent to a chat-completions endpoint).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Chat(Vec<ChatMessage>),
}

/// One generated sample when an item is sampled several times (maj@k, pass@k).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub output: String,
    pub extracted: Option<String>,
    pub correct: bool,
    /// Why a sample failed where the scorer knows more than right/wrong (sandbox outcome).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One scored benchmark item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// `mmlu`, `gsm8k` or `humaneval`.
    pub benchmark: String,
    /// Which prompt/scoring protocol, e.g. `loglikelihood`, `generative-chat`, `cot-llama`.
    pub protocol: String,
    /// Stable id of the item within its dataset (`HumanEval/12`, `gsm8k/41`, `mmlu/anatomy/3`).
    pub item_id: String,
    /// MMLU subject; absent for benchmarks without subjects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub prompt: Prompt,
    /// The model's (first or greedy) output; for log-likelihood protocols the chosen continuation.
    pub output: String,
    /// What the scorer read from `output` (a letter, a number, a program); `None` when nothing matched.
    pub extracted: Option<String>,
    pub gold: String,
    /// Whether the item counts as correct under the benchmark's primary metric.
    pub correct: bool,
    /// Every metric this item contributes to, e.g. `exact_match_strict`, `pass@1`.
    pub metrics: BTreeMap<String, f64>,
    /// Log-probabilities of each candidate continuation, where the protocol uses them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<f64>>,
    /// Further samples when an item is sampled several times.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<SampleRecord>,
    /// Scorer detail for the primary output (sandbox outcome for HumanEval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Mean with its uncertainty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    pub mean: f64,
    /// Sample standard deviation over items divided by sqrt(n).
    pub stderr: f64,
    /// Percentile bootstrap 95% confidence interval of the mean.
    pub ci95: [f64; 2],
}

/// Accuracy of one MMLU subject.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubjectResult {
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
}

/// The result of one benchmark run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkResult {
    pub benchmark: String,
    pub protocol: String,
    pub model: String,
    /// Items scored.
    pub n: usize,
    /// The metric quoted in summaries (a key of `metrics`).
    pub primary_metric: String,
    /// Every metric averaged over all items (micro average).
    pub metrics: BTreeMap<String, MetricSummary>,
    /// Per-subject accuracy of the primary metric (MMLU); empty otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_subject: BTreeMap<String, SubjectResult>,
    /// Mean of per-subject accuracies (MMLU); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macro_average: Option<f64>,
    /// The options the run used, so a result can be reproduced.
    pub config: serde_json::Value,
    /// Facts a reader needs to trust the number (e.g. which sandbox isolation was in force).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl BenchmarkResult {
    /// The summary of the primary metric.
    pub fn primary(&self) -> Option<&MetricSummary> {
        self.metrics.get(&self.primary_metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_serialises_as_string_or_message_list() {
        let text = Prompt::Text("Q: 1+1?\nA:".into());
        assert_eq!(serde_json::to_string(&text).unwrap(), r#""Q: 1+1?\nA:""#);
        let chat = Prompt::Chat(vec![ChatMessage::new(Role::User, "hi")]);
        let json = serde_json::to_string(&chat).unwrap();
        assert_eq!(json, r#"[{"role":"user","content":"hi"}]"#);
        assert_eq!(serde_json::from_str::<Prompt>(&json).unwrap(), chat);
    }

    #[test]
    fn eval_record_round_trips_and_omits_empty_fields() {
        let record = EvalRecord {
            benchmark: "gsm8k".into(),
            protocol: "cot-llama".into(),
            item_id: "gsm8k/0".into(),
            subject: None,
            prompt: Prompt::Text("p".into()),
            output: "The final answer is 18".into(),
            extracted: Some("18".into()),
            gold: "18".into(),
            correct: true,
            metrics: BTreeMap::from([("exact_match_strict".to_string(), 1.0)]),
            logprobs: None,
            samples: vec![],
            detail: None,
        };
        let line = serde_json::to_string(&record).unwrap();
        assert!(
            !line.contains("logprobs") && !line.contains("samples") && !line.contains("subject")
        );
        assert_eq!(serde_json::from_str::<EvalRecord>(&line).unwrap(), record);
    }
}
