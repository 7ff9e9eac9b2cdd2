//! Phase 1C's records: teacher examples with their provenance, the quality gate's verdicts, and
//! the per-pattern before/after measurements.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How an example was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// New tasks exercising a failure pattern's skill, written from its label and seed items.
    Targeted,
    /// A worked answer to a mined failure, written with the gold answer as a hint.
    Rationalize,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Targeted => "targeted",
            Strategy::Rationalize => "rationalize",
        }
    }
}

/// One example the teacher wrote, with where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeacherExample {
    /// Stable: `tc-` + 16 hex digits of the request hash and the example's index in the answer.
    pub id: String,
    /// The failure pattern (phase 1B cluster id) it targets.
    pub cluster: usize,
    pub strategy: Strategy,
    pub instruction: String,
    pub response: String,
    /// The short final answer the teacher gave (targeted) or the gold (rationalize), if any.
    pub answer: Option<String>,
    /// Phase 1B `mine` items shown to the teacher.
    pub seed_item_ids: Vec<String>,
    pub teacher_model: String,
    /// sha256 of the prompt template the request was rendered from.
    pub template_sha256: String,
    /// The ledger's hash of the request that produced it (`llm-ledger.sqlite`).
    pub request_hash: String,
}

/// The judge's verdict on one example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeVerdict {
    pub example_id: String,
    /// 1 to 10; `None` when no answer parsed after every retry (never read as a score).
    pub score: Option<f32>,
    pub reason: String,
    pub judge_model: String,
    pub template_sha256: String,
    /// Answers that did not parse before this verdict (retried with another seed).
    pub unparsed_answers: usize,
    pub request_hash: Option<String>,
}

/// Where an example left the quality gate, or that it was kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    pub example_id: String,
    pub cluster: usize,
    /// `kept`, or the stage that dropped it: `verify`, `judge`, `dedup`, `decontaminate`.
    pub stage: String,
    /// Why (e.g. "13-gram shared with gsm8k", "score 6 ≤ threshold 8").
    pub reason: String,
}

/// A kept example as trained: chat messages plus its provenance and judge score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingExample {
    pub messages: Vec<ChatMessage>,
    /// `teacher` or `original`.
    pub origin: String,
    /// For teacher examples: their provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<TeacherExample>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_score: Option<f32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Per cluster: how many examples each stage saw and kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Funnel {
    pub requested: usize,
    pub generated: usize,
    /// Teacher answers that could not be read as examples (counted, not retried forever).
    pub unreadable_answers: usize,
    pub verified: usize,
    pub judged: usize,
    pub deduplicated: usize,
    pub decontaminated: usize,
    pub trained: usize,
    /// Drops by reason within each stage, e.g. `decontaminate: 13-gram mmlu` → 2.
    pub dropped: BTreeMap<String, usize>,
}

/// A failure pattern's holdout failure rate before and after, paired by item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatternOutcome {
    /// Cluster id; `None` for holdout items outside every pattern ("other").
    pub cluster: Option<usize>,
    pub label: String,
    /// Whether phase 1C generated data for it.
    pub targeted: bool,
    pub items: usize,
    pub failure_rate_before: f64,
    pub failure_rate_after: f64,
    /// Items wrong before and right after, and the reverse.
    pub fixed: usize,
    pub broken: usize,
    /// Exact two-sided McNemar p-value over the discordant pairs.
    pub mcnemar_p: f64,
    /// Paired bootstrap 95% CI of (failure rate after − before).
    pub difference_ci95: [f64; 2],
}
