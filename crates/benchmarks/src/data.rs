//! Benchmark datasets from the assets folder (`assets/data`, made by `cargo xtask assets`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// `$TUNELOOP_ASSETS/data`, else `<workspace root>/assets/data`.
pub fn default_data_dir() -> PathBuf {
    assets::AssetPaths::locate().data()
}

/// One MMLU question.
#[derive(Clone, Debug, PartialEq)]
pub struct MmluItem {
    /// `mmlu/<split>/<subject>/<index within subject>`.
    pub id: String,
    pub subject: String,
    pub question: String,
    pub choices: [String; 4],
    /// 0..=3 (A..D).
    pub answer: usize,
}

/// One GSM8K problem.
#[derive(Clone, Debug, PartialEq)]
pub struct Gsm8kItem {
    /// `gsm8k/<line index>`.
    pub id: String,
    pub question: String,
    /// The reference solution, ending in `#### <number>`.
    pub solution: String,
    /// The number after `####`.
    pub gold: String,
}

/// One HumanEval problem.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct HumanEvalProblem {
    pub task_id: String,
    pub prompt: String,
    pub entry_point: String,
    pub canonical_solution: String,
    pub test: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmluSplit {
    Dev,
    Validation,
    Test,
}

impl MmluSplit {
    pub fn name(self) -> &'static str {
        match self {
            MmluSplit::Dev => "dev",
            MmluSplit::Validation => "validation",
            MmluSplit::Test => "test",
        }
    }
}

/// Reads a JSONL file into JSON values with their 1-based line numbers (blank lines skipped).
fn read_jsonl(path: &Path) -> Result<Vec<(usize, serde_json::Value)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::MissingDataset {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line)
                .map(|value| (index + 1, value))
                .map_err(|e| Error::MalformedItem {
                    path: path.to_path_buf(),
                    line: index + 1,
                    item_id: None,
                    message: format!("not JSON: {e}"),
                })
        })
        .collect()
}

fn malformed(path: &Path, line: usize, id: &str, message: impl Into<String>) -> Error {
    Error::MalformedItem {
        path: path.to_path_buf(),
        line,
        item_id: Some(id.to_string()),
        message: message.into(),
    }
}

fn string_field(
    value: &serde_json::Value,
    field: &str,
    path: &Path,
    line: usize,
    id: &str,
) -> Result<String> {
    value
        .get(field)
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            malformed(
                path,
                line,
                id,
                format!("field `{field}` missing or not a string"),
            )
        })
}

/// Loads `<data_dir>/mmlu/<split>.jsonl`; ids number items within their subject in file order.
pub fn load_mmlu(data_dir: &Path, split: MmluSplit) -> Result<Vec<MmluItem>> {
    let path = data_dir
        .join("mmlu")
        .join(format!("{}.jsonl", split.name()));
    let mut per_subject: std::collections::HashMap<String, usize> = Default::default();
    read_jsonl(&path)?
        .into_iter()
        .map(|(line, value)| {
            let provisional = format!("mmlu/{}/line {line}", split.name());
            let subject = string_field(&value, "subject", &path, line, &provisional)?;
            let counter = per_subject.entry(subject.clone()).or_default();
            let id = format!("mmlu/{}/{subject}/{counter}", split.name());
            *counter += 1;
            let question = string_field(&value, "question", &path, line, &id)?;
            let choices: Vec<String> = value
                .get("choices")
                .and_then(|c| c.as_array())
                .and_then(|c| c.iter().map(|x| x.as_str().map(str::to_string)).collect())
                .ok_or_else(|| {
                    malformed(&path, line, &id, "`choices` must be a list of strings")
                })?;
            let choices: [String; 4] = choices.try_into().map_err(|c: Vec<String>| {
                malformed(
                    &path,
                    line,
                    &id,
                    format!("expected 4 choices, found {}", c.len()),
                )
            })?;
            let answer = value
                .get("answer")
                .and_then(|a| a.as_u64())
                .filter(|&a| a < 4)
                .ok_or_else(|| {
                    malformed(
                        &path,
                        line,
                        &id,
                        format!(
                            "`answer` must be 0..=3, found {}",
                            value.get("answer").unwrap_or(&serde_json::Value::Null)
                        ),
                    )
                })? as usize;
            Ok(MmluItem {
                id,
                subject,
                question,
                choices,
                answer,
            })
        })
        .collect()
}

/// Loads `<data_dir>/gsm8k_test.jsonl`.
pub fn load_gsm8k(data_dir: &Path) -> Result<Vec<Gsm8kItem>> {
    let path = data_dir.join("gsm8k_test.jsonl");
    read_jsonl(&path)?
        .into_iter()
        .enumerate()
        .map(|(index, (line, value))| {
            let id = format!("gsm8k/{index}");
            let question = string_field(&value, "question", &path, line, &id)?;
            let solution = string_field(&value, "answer", &path, line, &id)?;
            let gold = solution
                .rsplit_once("####")
                .map(|(_, n)| n.trim().replace(',', ""))
                .filter(|n| !n.is_empty())
                .ok_or_else(|| malformed(&path, line, &id, "`answer` has no `#### <number>`"))?;
            Ok(Gsm8kItem {
                id,
                question,
                solution,
                gold,
            })
        })
        .collect()
}

/// Loads `<data_dir>/humaneval.jsonl`.
pub fn load_humaneval(data_dir: &Path) -> Result<Vec<HumanEvalProblem>> {
    let path = data_dir.join("humaneval.jsonl");
    read_jsonl(&path)?
        .into_iter()
        .map(|(line, value)| {
            let id = value
                .get("task_id")
                .and_then(|v| v.as_str())
                .unwrap_or("(no task_id)")
                .to_string();
            let problem: HumanEvalProblem = serde_json::from_value(value)
                .map_err(|e| malformed(&path, line, &id, e.to_string()))?;
            if !problem
                .prompt
                .contains(&format!("def {}", problem.entry_point))
            {
                return Err(malformed(
                    &path,
                    line,
                    &id,
                    format!(
                        "prompt does not define entry point `{}`",
                        problem.entry_point
                    ),
                ));
            }
            Ok(problem)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_names_the_assets_step() {
        let dir = tempfile::tempdir().unwrap();
        let error = load_gsm8k(dir.path()).unwrap_err();
        assert!(matches!(error, Error::MissingDataset { .. }));
        let message = error.to_string();
        assert!(
            message.contains("cargo xtask assets") && message.contains("gsm8k_test.jsonl"),
            "{message}"
        );
    }

    #[test]
    fn malformed_items_name_file_line_and_id() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mmlu")).unwrap();
        std::fs::write(
            dir.path().join("mmlu/test.jsonl"),
            concat!(
                r#"{"question": "q1", "subject": "anatomy", "choices": ["a","b","c","d"], "answer": 0}"#, "\n",
                r#"{"question": "q2", "subject": "anatomy", "choices": ["a","b","c"], "answer": 0}"#, "\n",
            ),
        )
        .unwrap();
        let message = load_mmlu(dir.path(), MmluSplit::Test)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("test.jsonl:2")
                && message.contains("`mmlu/test/anatomy/1`")
                && message.contains("4 choices"),
            "{message}"
        );

        std::fs::write(
            dir.path().join("gsm8k_test.jsonl"),
            "{\"question\": \"q\", \"answer\": \"no marker\"}\n",
        )
        .unwrap();
        let message = load_gsm8k(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("gsm8k_test.jsonl:1")
                && message.contains("`gsm8k/0`")
                && message.contains("####"),
            "{message}"
        );

        std::fs::write(
            dir.path().join("humaneval.jsonl"),
            "{\"task_id\": \"HumanEval/9\", \"prompt\": \"def f():\\n\"}\n",
        )
        .unwrap();
        let message = load_humaneval(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("humaneval.jsonl:1")
                && message.contains("`HumanEval/9`")
                && message.contains("entry_point"),
            "{message}"
        );

        std::fs::write(dir.path().join("humaneval.jsonl"), "\n{oops\n").unwrap();
        let message = load_humaneval(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("humaneval.jsonl:2") && message.contains("not JSON"),
            "{message}"
        );
    }
}
