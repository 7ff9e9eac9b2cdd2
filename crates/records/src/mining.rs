//! Phase 1B records: the graded test set, what the model got wrong, and which failure pattern
//! each holdout item belongs to.
//!
//! Files in a phase1b run directory:
//! - `testset.jsonl`: one [`TestItem`] per item, both splits;
//! - `results.jsonl`: one [`crate::eval::EvalRecord`] per item (benchmark `phase1b`, subject =
//!   family), appended as items finish, so the benchmarks crate's resume applies;
//! - `failures.jsonl`: one [`FailureRecord`] per failed `mine` item, with the text that was
//!   embedded;
//! - `clusters.jsonl` / `assignments.jsonl`: [`crate::clusters`] records over the failures;
//! - `holdout_membership.jsonl`: one [`HoldoutMembership`] per holdout item.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which side of the split an item is on. Failures are mined on `Mine` (a teacher may see those
/// items); every before/after claim is measured on `Holdout`, which no teacher sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Mine,
    Holdout,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Mine => "mine",
            Split::Holdout => "holdout",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an item's answer is checked: every grader is exact, except [`Grader::Judge`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Grader {
    /// One of `choices` is right (`answer` is its index). Scored by the log-likelihood of each
    /// choice's text where the model gives log-probabilities, else generatively: the reply names
    /// the right letter (A, B, ...) or the right choice's text.
    MultipleChoice { choices: Vec<String>, answer: usize },
    /// A short free-form answer: right when it equals any alias after SQuAD-style normalisation
    /// (lowercase, punctuation and articles removed, whitespace collapsed).
    ShortAnswer { aliases: Vec<String> },
    /// A number: right when the reply's final number is within `tolerance` of `value`
    /// (absolute); thousands separators, a currency sign or a unit after it are accepted.
    Number { value: f64, tolerance: f64 },
    /// An exact string (string and list manipulation, dates, times): right when the reply's
    /// answer equals `expected` after trimming whitespace, quotes and a final period.
    ExactText { expected: String },
    /// Checkable format constraints on the whole reply (IFEval-style): right when all hold.
    Constraints { constraints: Vec<Constraint> },
    /// An LLM judge compares the reply with a reference answer (open answers).
    Judge { reference: String },
}

impl Grader {
    /// A short name for reports and the protocol field of results.
    pub fn kind(&self) -> &'static str {
        match self {
            Grader::MultipleChoice { .. } => "multiple_choice",
            Grader::ShortAnswer { .. } => "short_answer",
            Grader::Number { .. } => "number",
            Grader::ExactText { .. } => "exact_text",
            Grader::Constraints { .. } => "constraints",
            Grader::Judge { .. } => "judge",
        }
    }
}

/// One checkable format constraint on a reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Constraint {
    /// At most `max` words (whitespace-separated tokens with a letter or digit, so a bullet's
    /// dash is not a word).
    MaxWords { max: usize },
    /// At least `min` words.
    MinWords { min: usize },
    /// Every keyword appears (case-insensitive, as a whole word or phrase).
    IncludeKeywords { keywords: Vec<String> },
    /// None of these words appears (case-insensitive, whole words).
    ExcludeWords { words: Vec<String> },
    /// The reply is (or contains, in a code fence) one JSON object with at least these keys.
    JsonObject { keys: Vec<String> },
    /// Exactly `count` bullet lines (starting with `-`, `*` or `•`).
    BulletCount { count: usize },
    /// No uppercase letters.
    AllLowercase,
    /// No lowercase letters.
    AllUppercase,
    /// The reply, trimmed, ends with this phrase (case-insensitive, as in IFEval).
    EndsWith { phrase: String },
    /// The reply, trimmed, starts with this phrase (case-insensitive, as in IFEval).
    StartsWith { phrase: String },
    /// No comma anywhere.
    NoCommas,
}

/// One item of the phase 1B test set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestItem {
    /// Stable content hash of family, prompt and grader (`tl-` + 16 hex digits).
    pub id: String,
    /// Task family, e.g. `arc_challenge`, `trivia_qa`, `arithmetic_multistep`.
    pub family: String,
    /// Where it came from: a pool file name, or `generated:<family>` with the builder's seed.
    pub source: String,
    pub split: Split,
    /// The user turn the model is given (instructions and lettered choices included).
    pub prompt: String,
    /// The bare task text (no instructions, no choices): what leakage checks and failure texts use.
    pub question: String,
    /// The right answer in words, for reports and failure texts.
    pub gold: String,
    pub grader: Grader,
}

/// Counts of one family in the built test set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyCounts {
    /// Items the source offered (pool rows read, or items generated).
    pub available: usize,
    /// Rows of a pool file that could not be turned into an item (each reason counted in the manifest's notes).
    pub unusable: usize,
    /// Items dropped because they overlap a validation benchmark.
    pub leaked: usize,
    /// Exact duplicates of an earlier item (same id), dropped.
    pub duplicates: usize,
    /// Items not chosen because the family's quota was smaller.
    pub not_sampled: usize,
    pub mine: usize,
    pub holdout: usize,
}

/// What the leakage check compared against and what it removed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeakageReport {
    /// Word n-gram length (13, as in GPT-3's and lm-evaluation-harness's decontamination).
    pub ngram: usize,
    /// Benchmark name → distinct n-grams it contributed.
    pub reference_ngrams: BTreeMap<String, usize>,
    /// Benchmark name → items dropped for sharing an n-gram with it.
    pub dropped: BTreeMap<String, usize>,
    /// A few dropped items as `family: question` (for the report).
    pub examples: Vec<String>,
}

/// `manifest.json` of a built test set: how it was made and what is in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestSetManifest {
    pub seed: u64,
    /// Items asked for.
    pub requested: usize,
    /// Items written (both splits).
    pub total: usize,
    /// Share of items in the holdout split, in percent.
    pub holdout_percent: u32,
    pub families: BTreeMap<String, FamilyCounts>,
    pub leakage: LeakageReport,
    /// sha256 of `testset.jsonl`, so later stages can tell the set they were given.
    pub testset_sha256: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A failed `mine` item, with what was embedded to group it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub item_id: String,
    pub family: String,
    pub question: String,
    /// The model's reply, as generated (or the chosen option, for log-likelihood scoring).
    pub output: String,
    /// What the grader read from the reply; `None` when nothing matched.
    pub extracted: Option<String>,
    pub gold: String,
    /// Why the grader marked it wrong.
    pub reason: String,
    /// An LLM-written one-line description of what skill failed and how, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The text that was embedded (composed from the fields above, or the description).
    pub embedded_text: String,
    /// Whether `embedded_text` was longer than the encoder's window and cut.
    pub truncated: bool,
}

/// The failure pattern a holdout item belongs to, fixed before any teacher runs, so Phase 1C can
/// report each pattern's failure rate on items no teacher saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HoldoutMembership {
    pub item_id: String,
    pub family: String,
    /// Nearest failure pattern; `None` ("other") when farther from every centroid than that
    /// pattern's own failures are.
    pub cluster: Option<usize>,
    /// Euclidean distance to the nearest centroid.
    pub distance: f32,
    /// Whether the phase 1B model answered it correctly.
    pub correct: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grader_and_constraint_json_is_tagged_and_round_trips() {
        let item = TestItem {
            id: "tl-0123456789abcdef".into(),
            family: "instruction_following".into(),
            source: "generated:instruction_following".into(),
            split: Split::Holdout,
            prompt: "Describe rain in at most 5 words, lowercase.".into(),
            question: "Describe rain.".into(),
            gold: "at most 5 words; all lowercase".into(),
            grader: Grader::Constraints {
                constraints: vec![Constraint::MaxWords { max: 5 }, Constraint::AllLowercase],
            },
        };
        let json = serde_json::to_string(&item).unwrap();
        assert!(json.contains(r#""split":"holdout""#), "{json}");
        assert!(
            json.contains(
                r#""grader":{"kind":"constraints","constraints":[{"kind":"max_words","max":5},{"kind":"all_lowercase"}]}"#
            ),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<TestItem>(&json).unwrap(), item);
        let number: Grader =
            serde_json::from_str(r#"{"kind":"number","value":1000,"tolerance":0.001}"#).unwrap();
        assert_eq!(
            number,
            Grader::Number {
                value: 1000.0,
                tolerance: 0.001
            }
        );
        assert_eq!(number.kind(), "number");
        let unknown = serde_json::from_str::<Grader>(r#"{"kind":"vibes"}"#).unwrap_err();
        assert!(unknown.to_string().contains("vibes"), "{unknown}");
    }
}
