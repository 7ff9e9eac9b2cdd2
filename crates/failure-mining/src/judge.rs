//! Open answers: questions a user brings with a reference answer ([`read_open_answers`]), and
//! the LLM judge that grades a model's reply against that reference ([`AnswerJudge`]).
//!
//! Every exact grader decides from the reply alone; an open answer ("Why does ice float?") has
//! no single right string, so a judge model reads the question, the reference and the reply and
//! answers CORRECT or INCORRECT. Its calls go through llm-client, so each answer is recorded in
//! the judge's ledger before it is trusted, and a rerun replays paid answers instead of paying
//! again.

use std::path::Path;

use llm_client::{ChatRequest, JsonSchema, LlmClient, Progress};
use records::jsonl::JsonlReader;
use records::mining::{Grader, TestItem};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::grade::{Grade, answer_text};
use crate::item::ItemDraft;
use crate::patterns::{clip, collapse};

/// The family of an open-answer row that names none.
pub const OPEN_ANSWER_FAMILY: &str = "open_answer";

/// One line of an open-answer file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAnswerRow {
    question: String,
    reference: String,
    #[serde(default)]
    family: Option<String>,
}

/// Reads a JSONL file of `{"question": ..., "reference": ..., "family": ...}` rows (family
/// optional, default `open_answer`) as items graded by the judge. A malformed line, an empty
/// question or reference, a family named like a built-in one, or a file with no rows is an
/// error naming the file (and line).
pub fn read_open_answers(path: &Path, builtin_families: &[&str]) -> Result<Vec<ItemDraft>> {
    let mut reader = JsonlReader::<OpenAnswerRow>::open(path)?;
    let mut drafts = Vec::new();
    while let Some(row) = reader.next() {
        let row = row?;
        let line = reader.line_number();
        let row_error = |message: String| Error::PoolRow {
            path: path.to_path_buf(),
            line,
            message,
        };
        for (field, value) in [("question", &row.question), ("reference", &row.reference)] {
            if value.trim().is_empty() {
                return Err(row_error(format!("`{field}` is empty")));
            }
        }
        let family = row.family.unwrap_or_else(|| OPEN_ANSWER_FAMILY.to_string());
        if builtin_families.contains(&family.as_str()) {
            return Err(row_error(format!(
                "family `{family}` is a built-in family with its own grader; name open-answer \
                 families differently"
            )));
        }
        drafts.push(ItemDraft {
            family,
            source: path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            prompt: row.question.clone(),
            question: row.question,
            gold: row.reference.clone(),
            grader: Grader::Judge {
                reference: row.reference,
            },
        });
    }
    if drafts.is_empty() {
        return Err(Error::EmptyTestSet(format!(
            "{} holds no open-answer rows",
            path.display()
        )));
    }
    Ok(drafts)
}

/// Grades replies to [`Grader::Judge`] items with an LLM behind an OpenAI-compatible API.
pub struct AnswerJudge {
    client: LlmClient,
    runtime: tokio::runtime::Handle,
}

impl AnswerJudge {
    /// `runtime` drives the client's calls: [`AnswerJudge::grade`] blocks on it, so call that
    /// from outside async code (or inside `tokio::task::block_in_place`).
    pub fn new(client: LlmClient, runtime: tokio::runtime::Handle) -> Self {
        Self { client, runtime }
    }

    /// The judge's model name (part of a results log's settings: another judge is another run).
    pub fn model(&self) -> &str {
        &self.client.config().endpoint.model
    }

    /// One grade per `(item, reply)`. A reply the judge calls wrong keeps the judge's words as
    /// its reason; an unreadable verdict is graded wrong and says so. A call that fails (after
    /// the client's retries, or refused by the budget) is an error for the whole batch, so no
    /// item is recorded with a grade nobody gave; answers already paid for stay in the ledger
    /// and are replayed on the rerun.
    pub fn grade(&self, cases: &[(&TestItem, &str)]) -> std::result::Result<Vec<Grade>, String> {
        // A reply with nothing to read is wrong without asking anyone.
        let texts: Vec<std::result::Result<&str, Grade>> =
            cases.iter().map(|(_, reply)| answer_text(reply)).collect();
        let requests: Vec<ChatRequest> = cases
            .iter()
            .zip(&texts)
            .filter_map(|((item, _), text)| {
                let text = text.as_ref().ok()?;
                let Grader::Judge { reference } = &item.grader else {
                    panic!("{} is not a judge item", item.id);
                };
                let mut request = ChatRequest::user(judge_prompt(&item.question, reference, text))
                    .with_max_tokens(256)
                    .with_json_schema(verdict_schema());
                request.temperature = Some(0.0);
                request.seed = Some(0);
                Some(request)
            })
            .collect();
        let report = self
            .runtime
            .block_on(self.client.chat_batch(requests, Progress::Hidden));
        let mut answers = report.results.into_iter();
        let mut grades = Vec::with_capacity(cases.len());
        for ((item, _), text) in cases.iter().zip(texts) {
            let text = match text {
                Ok(text) => text,
                Err(grade) => {
                    grades.push(grade);
                    continue;
                }
            };
            let answer = answers
                .next()
                .expect("one answer per request")
                .map_err(|error| {
                    format!(
                        "judge `{}` failed on item {}: {error}",
                        self.model(),
                        item.id
                    )
                })?;
            let extracted = clip(text.trim(), 200);
            let verdict = clip(&collapse(&answer.content), 300);
            grades.push(match parse_verdict(&answer.content) {
                Some(true) => Grade::right(extracted),
                Some(false) => Grade::wrong(
                    Some(extracted),
                    format!("judge `{}`: {verdict}", self.model()),
                ),
                None => Grade::wrong(
                    Some(extracted),
                    format!(
                        "judge `{}` gave no CORRECT/INCORRECT verdict: {verdict}",
                        self.model()
                    ),
                ),
            });
        }
        Ok(grades)
    }
}

/// What the judge is asked: the question, the reference and the reply, and a one-word verdict
/// at the end (it may reason first; the last verdict word counts).
pub fn judge_prompt(question: &str, reference: &str, reply: &str) -> String {
    format!(
        "You grade answers to questions. Decide whether the candidate answer is correct, using \
         the reference answer as the ground truth. A candidate is correct when it states what \
         the reference states (other wording, more detail or a different order are fine) and \
         says nothing that contradicts it; it is incorrect when it is wrong, contradicts the \
         reference, or does not answer.\n\n\
         Question:\n{question}\n\nReference answer:\n{reference}\n\nCandidate answer:\n{}\n\n\
         End your reply with one word on its own line: CORRECT or INCORRECT.",
        reply.trim()
    )
}

/// The verdict as a schema the endpoint enforces where it can (OpenAI structured outputs, vLLM,
/// `serve`): the reasoning first, bounded, then the one word, so a small local judge always
/// gives a verdict instead of trailing off. [`parse_verdict`] reads it like a plain reply (the
/// verdict is the last such word); where the endpoint cannot take a schema, the client puts it
/// in the prompt.
pub fn verdict_schema() -> JsonSchema {
    JsonSchema {
        name: "answer_verdict".into(),
        schema: serde_json::json!({
            "type": "object",
            "properties": {
                "reasoning": {"type": "string", "maxLength": 600},
                "verdict": {"enum": ["CORRECT", "INCORRECT"]}
            },
            "required": ["reasoning", "verdict"],
            "additionalProperties": false
        }),
        strict: true,
    }
}

/// The judge's verdict: the last whole word `CORRECT` or `INCORRECT` (any case) in its reply;
/// `None` when neither occurs. "not correct" reads as INCORRECT.
pub fn parse_verdict(text: &str) -> Option<bool> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect();
    let last = words
        .iter()
        .rposition(|word| word == "correct" || word == "incorrect")?;
    let negated = last > 0 && words[last - 1] == "not";
    Some(words[last] == "correct" && !negated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_verdict_word_counts() {
        assert_eq!(parse_verdict("CORRECT"), Some(true));
        assert_eq!(parse_verdict("incorrect."), Some(false));
        assert_eq!(
            parse_verdict(
                "At first it looks correct, but it contradicts the reference.\nINCORRECT"
            ),
            Some(false)
        );
        assert_eq!(
            parse_verdict("It misses a detail, which is fine.\n\n**Correct**"),
            Some(true)
        );
        assert_eq!(parse_verdict("The answer is not correct."), Some(false));
        // "correctly" is not the verdict word.
        assert_eq!(parse_verdict("It answers correctly."), None);
        assert_eq!(parse_verdict(""), None);
        // A structured verdict (verdict_schema) reads the same way: its verdict comes last.
        let structured = |reasoning: &str, verdict: &str| {
            serde_json::json!({"reasoning": reasoning, "verdict": verdict}).to_string()
        };
        assert_eq!(
            parse_verdict(&structured("It says 8, which is not correct.", "INCORRECT")),
            Some(false)
        );
        assert_eq!(
            parse_verdict(&structured(
                "Incorrect at first sight, but it matches.",
                "CORRECT"
            )),
            Some(true)
        );
        let schema = verdict_schema();
        assert_eq!(
            schema.schema["required"],
            serde_json::json!(["reasoning", "verdict"])
        );
    }

    #[test]
    fn open_answer_rows_become_judge_items_and_bad_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("open.jsonl");
        std::fs::write(
            &path,
            "{\"question\": \"Why does ice float?\", \"reference\": \"It is less dense than water.\"}\n\
             {\"question\": \"Name a prime.\", \"reference\": \"7\", \"family\": \"math_open\"}\n",
        )
        .unwrap();
        let drafts = read_open_answers(&path, &["copa"]).unwrap();
        assert_eq!(drafts.len(), 2);
        assert_eq!(drafts[0].family, OPEN_ANSWER_FAMILY);
        assert_eq!(drafts[1].family, "math_open");
        assert_eq!(drafts[0].source, "open.jsonl");
        assert_eq!(
            drafts[0].grader,
            Grader::Judge {
                reference: "It is less dense than water.".into()
            }
        );

        let cases = [
            (
                "{\"question\": \"q\", \"reference\": \"\"}\n",
                "open.jsonl:1",
                "`reference` is empty",
            ),
            (
                "{\"question\": \"q\", \"reference\": \"r\"}\n{\"question\": \"q\", \"answer\": \"r\"}\n",
                "open.jsonl:2",
                "answer",
            ),
            (
                "{\"question\": \"q\", \"reference\": \"r\", \"family\": \"copa\"}\n",
                "open.jsonl:1",
                "built-in",
            ),
            ("", "open.jsonl", "no open-answer rows"),
        ];
        for (text, place, why) in cases {
            std::fs::write(&path, text).unwrap();
            let error = read_open_answers(&path, &["copa"]).unwrap_err().to_string();
            assert!(error.contains(place) && error.contains(why), "{error}");
        }
    }
}
