//! The assets' task pool (18 datasets' validation splits, about 38K rows) read as item drafts.
//!
//! Each pool file is one dataset/config/split (`a__b__split.jsonl`, HF column names); a family
//! names its file and turns one row into a task with an exact grader. Binary classification
//! tasks (BoolQ, MRPC, RTE, SST-2, CB) are multiple choice over their label words, so a reply is
//! graded by the label it names.

use std::path::{Path, PathBuf};

use records::jsonl::JsonlReader;
use records::mining::Grader;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::item::ItemDraft;

/// A pool family: its name and the file it reads.
#[derive(Clone, Copy, Debug)]
pub struct PoolFamily {
    pub name: &'static str,
    pub file: &'static str,
    convert: fn(&Value) -> std::result::Result<Task, String>,
}

/// Every family of the pool, in a fixed order.
pub const POOL_FAMILIES: &[PoolFamily] = &[
    family(
        "arc_challenge",
        "ai2_arc__ARC-Challenge__validation.jsonl",
        arc,
    ),
    family("arc_easy", "ai2_arc__ARC-Easy__validation.jsonl", arc),
    family(
        "basic_arithmetic",
        "allenai__basic_arithmetic__none__validation.jsonl",
        basic_arithmetic,
    ),
    family("boolq", "boolq__none__validation.jsonl", boolq),
    family("mrpc", "glue__mrpc__validation.jsonl", mrpc),
    family("rte", "glue__rte__validation.jsonl", rte),
    family("sst2", "glue__sst2__validation.jsonl", sst2),
    family("hellaswag", "hellaswag__none__validation.jsonl", hellaswag),
    family("nq_open", "nq_open__none__validation.jsonl", nq_open),
    family(
        "openbookqa",
        "openbookqa__main__validation.jsonl",
        openbookqa,
    ),
    family("piqa", "piqa__plain_text__validation.jsonl", piqa),
    family("sciq", "sciq__none__validation.jsonl", sciq),
    family(
        "social_iqa",
        "social_i_qa__none__validation.jsonl",
        social_iqa,
    ),
    family("cb", "super_glue__cb__validation.jsonl", cb),
    family("copa", "super_glue__copa__validation.jsonl", copa),
    family(
        "commonsense_qa",
        "tau__commonsense_qa__none__validation.jsonl",
        arc,
    ),
    family(
        "trivia_qa",
        "trivia_qa__rc.wikipedia.nocontext__validation.jsonl",
        trivia_qa,
    ),
    family(
        "winogrande",
        "winogrande__winogrande_xl__validation.jsonl",
        winogrande,
    ),
];

const fn family(
    name: &'static str,
    file: &'static str,
    convert: fn(&Value) -> std::result::Result<Task, String>,
) -> PoolFamily {
    PoolFamily {
        name,
        file,
        convert,
    }
}

pub fn pool_family(name: &str) -> Option<&'static PoolFamily> {
    POOL_FAMILIES.iter().find(|family| family.name == name)
}

/// What one row becomes before it is worded as a prompt.
#[derive(Debug, PartialEq)]
enum Task {
    Choice {
        question: String,
        choices: Vec<String>,
        answer: usize,
        /// What to ask for, e.g. "Answer yes or no." (None: answer with the letter).
        instruction: Option<&'static str>,
    },
    Short {
        question: String,
        aliases: Vec<String>,
    },
    Number {
        question: String,
        value: f64,
    },
}

/// The rows of one family's file: drafts in file order, and the rows that could not be used,
/// each with its 1-based line and why.
#[derive(Debug, Default)]
pub struct PoolRead {
    pub drafts: Vec<ItemDraft>,
    pub unusable: Vec<(usize, String)>,
}

impl PoolFamily {
    pub fn path(&self, pool_dir: &Path) -> PathBuf {
        pool_dir.join(self.file)
    }

    /// Reads every row of the family's file. A line that is not JSON is an error naming the file
    /// and line; a JSON row without the fields the family needs is counted as unusable (the pool
    /// is what it is), and more than 1% unusable rows is an error, since then the format has
    /// changed rather than a few rows being odd.
    pub fn read(&self, pool_dir: &Path) -> Result<PoolRead> {
        let path = self.path(pool_dir);
        let mut reader = JsonlReader::<Value>::open(&path)?;
        let mut read = PoolRead::default();
        while let Some(row) = reader.next() {
            let row = row?;
            let line = reader.line_number();
            match (self.convert)(&row) {
                Ok(task) => read.drafts.push(self.draft(task)),
                Err(message) => read.unusable.push((line, message)),
            }
        }
        let rows = read.drafts.len() + read.unusable.len();
        if read.unusable.len() * 100 > rows {
            let (line, message) = &read.unusable[0];
            return Err(Error::PoolRow {
                path,
                line: *line,
                message: format!(
                    "{message} ({} of {rows} rows unusable as `{}`)",
                    read.unusable.len(),
                    self.name
                ),
            });
        }
        Ok(read)
    }

    fn draft(&self, task: Task) -> ItemDraft {
        let source = self.file.to_string();
        match task {
            Task::Choice {
                question,
                choices,
                answer,
                instruction,
            } => {
                let mut prompt = format!("{question}\n\n");
                for (index, choice) in choices.iter().enumerate() {
                    prompt.push_str(&format!("{}. {choice}\n", letter(index)));
                }
                prompt.push('\n');
                prompt.push_str(
                    instruction.unwrap_or("Answer with the letter of the correct option."),
                );
                ItemDraft {
                    family: self.name.to_string(),
                    source,
                    prompt,
                    question,
                    gold: format!("{}. {}", letter(answer), choices[answer]),
                    grader: Grader::MultipleChoice { choices, answer },
                }
            }
            Task::Short { question, aliases } => ItemDraft {
                family: self.name.to_string(),
                source,
                prompt: format!("{question}\n\nAnswer with a short phrase only."),
                gold: aliases[0].clone(),
                question,
                grader: Grader::ShortAnswer { aliases },
            },
            Task::Number { question, value } => ItemDraft {
                family: self.name.to_string(),
                source,
                prompt: format!("{question}\n\nGive only the final number."),
                gold: format_number(value),
                question,
                grader: Grader::Number {
                    value,
                    tolerance: 1e-6,
                },
            },
        }
    }
}

/// `A`, `B`, ... for choice indices.
pub fn letter(index: usize) -> char {
    (b'A' + index as u8) as char
}

fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

fn text<'a>(row: &'a Value, field: &str) -> std::result::Result<&'a str, String> {
    row.get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .ok_or_else(|| format!("missing or empty text field `{field}`"))
}

fn strings(value: Option<&Value>, field: &str) -> std::result::Result<Vec<String>, String> {
    let list = value
        .and_then(Value::as_array)
        .ok_or_else(|| format!("field `{field}` is not a list"))?;
    let texts: Vec<String> = list
        .iter()
        .filter_map(Value::as_str)
        .map(|text| text.trim().to_string())
        .collect();
    if texts.len() != list.len() || texts.iter().any(String::is_empty) || texts.is_empty() {
        return Err(format!(
            "field `{field}` must be a list of non-empty strings"
        ));
    }
    Ok(texts)
}

/// An integer label, given as a number or a string of digits.
fn label(row: &Value, field: &str) -> std::result::Result<i64, String> {
    match row.get(field) {
        Some(Value::Number(number)) => number.as_i64(),
        Some(Value::String(text)) => text.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("field `{field}` is not an integer label"))
}

fn in_range(index: i64, len: usize, field: &str) -> std::result::Result<usize, String> {
    usize::try_from(index)
        .ok()
        .filter(|&index| index < len)
        .ok_or_else(|| format!("`{field}` = {index} is out of range for {len} choices"))
}

/// `{question, choices: {text, label}, answerKey}` (ARC, CommonsenseQA; OpenBookQA's stem).
fn lettered_choices(row: &Value, question: &str) -> std::result::Result<Task, String> {
    let choices = row.get("choices").ok_or("missing field `choices`")?;
    let texts = strings(choices.get("text"), "choices.text")?;
    let labels = strings(choices.get("label"), "choices.label")?;
    let key = text(row, "answerKey")?;
    let answer = labels
        .iter()
        .position(|label| label == key)
        .ok_or_else(|| format!("answerKey `{key}` is not among the labels {labels:?}"))?;
    if texts.len() != labels.len() {
        return Err("choices.text and choices.label differ in length".into());
    }
    Ok(Task::Choice {
        question: question.to_string(),
        choices: texts,
        answer,
        instruction: None,
    })
}

fn arc(row: &Value) -> std::result::Result<Task, String> {
    lettered_choices(row, text(row, "question")?)
}

fn openbookqa(row: &Value) -> std::result::Result<Task, String> {
    lettered_choices(row, text(row, "question_stem")?)
}

/// Multiple choice over numbers in the pool; asked as a number, graded exactly.
fn basic_arithmetic(row: &Value) -> std::result::Result<Task, String> {
    let Task::Choice {
        question,
        choices,
        answer,
        ..
    } = arc(row)?
    else {
        unreachable!("arc() returns a choice task");
    };
    let value: f64 = choices[answer]
        .replace(',', "")
        .parse()
        .map_err(|_| format!("answer `{}` is not a number", choices[answer]))?;
    let question = question.trim_end_matches('=').trim().to_string();
    Ok(Task::Number { question, value })
}

fn yes_no(
    question: String,
    yes: bool,
    instruction: &'static str,
) -> std::result::Result<Task, String> {
    Ok(Task::Choice {
        question,
        choices: vec!["yes".into(), "no".into()],
        answer: if yes { 0 } else { 1 },
        instruction: Some(instruction),
    })
}

fn boolq(row: &Value) -> std::result::Result<Task, String> {
    let answer = row
        .get("answer")
        .and_then(Value::as_bool)
        .ok_or("field `answer` is not a boolean")?;
    let question = format!(
        "{}\n\nQuestion: {}?",
        text(row, "passage")?,
        text(row, "question")?.trim_end_matches('?')
    );
    yes_no(question, answer, "Answer yes or no.")
}

fn mrpc(row: &Value) -> std::result::Result<Task, String> {
    let question = format!(
        "Sentence 1: {}\nSentence 2: {}\n\nDo the two sentences mean the same thing?",
        text(row, "sentence1")?,
        text(row, "sentence2")?
    );
    // GLUE MRPC: 1 = equivalent.
    yes_no(question, label(row, "label")? == 1, "Answer yes or no.")
}

fn rte(row: &Value) -> std::result::Result<Task, String> {
    let question = format!(
        "Premise: {}\nHypothesis: {}\n\nDoes the premise entail the hypothesis?",
        text(row, "sentence1")?,
        text(row, "sentence2")?
    );
    // GLUE RTE: 0 = entailment, 1 = not entailment.
    yes_no(question, label(row, "label")? == 0, "Answer yes or no.")
}

fn sst2(row: &Value) -> std::result::Result<Task, String> {
    let positive = match label(row, "label")? {
        0 => false,
        1 => true,
        other => return Err(format!("`label` = {other}, expected 0 or 1")),
    };
    Ok(Task::Choice {
        question: format!(
            "Sentence: {}\n\nIs the sentiment of this sentence positive or negative?",
            text(row, "sentence")?
        ),
        choices: vec!["negative".into(), "positive".into()],
        answer: positive as usize,
        instruction: Some("Answer positive or negative."),
    })
}

fn cb(row: &Value) -> std::result::Result<Task, String> {
    // SuperGLUE CB: 0 = entailment, 1 = contradiction, 2 = neutral.
    let answer = in_range(label(row, "label")?, 3, "label")?;
    Ok(Task::Choice {
        question: format!(
            "Premise: {}\nHypothesis: {}\n\nIs the hypothesis true given the premise?",
            text(row, "premise")?,
            text(row, "hypothesis")?
        ),
        choices: vec!["yes".into(), "no".into(), "maybe".into()],
        answer,
        instruction: Some("Answer yes, no or maybe."),
    })
}

fn copa(row: &Value) -> std::result::Result<Task, String> {
    let relation = match text(row, "question")? {
        "cause" => "What was the cause?",
        "effect" => "What happened as a result?",
        other => return Err(format!("`question` = `{other}`, expected cause or effect")),
    };
    let choices = vec![
        text(row, "choice1")?.to_string(),
        text(row, "choice2")?.to_string(),
    ];
    let answer = in_range(label(row, "label")?, 2, "label")?;
    Ok(Task::Choice {
        question: format!("{} {relation}", text(row, "premise")?),
        choices,
        answer,
        instruction: None,
    })
}

fn hellaswag(row: &Value) -> std::result::Result<Task, String> {
    let endings = strings(row.get("endings"), "endings")?;
    let answer = in_range(label(row, "label")?, endings.len(), "label")?;
    let activity = row
        .get("activity_label")
        .and_then(Value::as_str)
        .unwrap_or("");
    Ok(Task::Choice {
        question: format!(
            "{activity}: {}\n\nWhich ending is the most plausible continuation?",
            text(row, "ctx")?
        ),
        choices: endings,
        answer,
        instruction: None,
    })
}

fn piqa(row: &Value) -> std::result::Result<Task, String> {
    let choices = vec![
        text(row, "sol1")?.to_string(),
        text(row, "sol2")?.to_string(),
    ];
    let answer = in_range(label(row, "label")?, 2, "label")?;
    Ok(Task::Choice {
        question: format!(
            "Goal: {}\n\nWhich solution achieves the goal?",
            text(row, "goal")?
        ),
        choices,
        answer,
        instruction: None,
    })
}

/// SciQ lists the right answer apart from three distractors: the choices are put in an order
/// fixed by the question's text, so the right one is not always first.
fn sciq(row: &Value) -> std::result::Result<Task, String> {
    let question = text(row, "question")?;
    let correct = text(row, "correct_answer")?.to_string();
    let mut choices = vec![correct.clone()];
    for field in ["distractor1", "distractor2", "distractor3"] {
        choices.push(text(row, field)?.to_string());
    }
    let rotation = benchmarks::stats::stable_hash(question) as usize % choices.len();
    choices.rotate_left(rotation);
    let answer = choices
        .iter()
        .position(|choice| *choice == correct)
        .expect("the correct answer is among the choices");
    Ok(Task::Choice {
        question: question.to_string(),
        choices,
        answer,
        instruction: None,
    })
}

fn social_iqa(row: &Value) -> std::result::Result<Task, String> {
    let choices = vec![
        text(row, "answerA")?.to_string(),
        text(row, "answerB")?.to_string(),
        text(row, "answerC")?.to_string(),
    ];
    // Labels are 1-based.
    let answer = in_range(label(row, "label")? - 1, 3, "label")?;
    Ok(Task::Choice {
        question: format!("{} {}", text(row, "context")?, text(row, "question")?),
        choices,
        answer,
        instruction: None,
    })
}

fn winogrande(row: &Value) -> std::result::Result<Task, String> {
    let choices = vec![
        text(row, "option1")?.to_string(),
        text(row, "option2")?.to_string(),
    ];
    let answer = in_range(label(row, "answer")? - 1, 2, "answer")?;
    Ok(Task::Choice {
        question: format!(
            "{}\n\nWhich option does the blank (_) stand for?",
            text(row, "sentence")?
        ),
        choices,
        answer,
        instruction: None,
    })
}

fn nq_open(row: &Value) -> std::result::Result<Task, String> {
    let question = text(row, "question")?;
    Ok(Task::Short {
        question: format!("{}?", question.trim_end_matches('?')),
        aliases: strings(row.get("answer"), "answer")?,
    })
}

fn trivia_qa(row: &Value) -> std::result::Result<Task, String> {
    let answer = row.get("answer").ok_or("missing field `answer`")?;
    let mut aliases = vec![text(answer, "value")?.to_string()];
    for alias in strings(answer.get("aliases"), "answer.aliases").unwrap_or_default() {
        if !aliases.contains(&alias) {
            aliases.push(alias);
        }
    }
    Ok(Task::Short {
        question: text(row, "question")?.to_string(),
        aliases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn draft(family: &str, row: Value) -> ItemDraft {
        let family = pool_family(family).unwrap();
        family.draft((family.convert)(&row).unwrap())
    }

    #[test]
    fn lettered_choices_become_a_lettered_prompt_with_the_keyed_answer() {
        let item = draft(
            "arc_easy",
            json!({"id": "x", "question": "Which is a planet?",
                   "choices": {"text": ["Moon", "Mars", "Sun"], "label": ["A", "B", "C"]},
                   "answerKey": "B"}),
        );
        assert_eq!(
            item.prompt,
            "Which is a planet?\n\nA. Moon\nB. Mars\nC. Sun\n\nAnswer with the letter of the correct option."
        );
        assert_eq!(item.gold, "B. Mars");
        assert_eq!(
            item.grader,
            Grader::MultipleChoice {
                choices: vec!["Moon".into(), "Mars".into(), "Sun".into()],
                answer: 1
            }
        );
        assert_eq!(item.question, "Which is a planet?");
    }

    #[test]
    fn label_conventions_of_each_dataset_are_honoured() {
        // RTE: 0 is entailment.
        let rte = draft(
            "rte",
            json!({"sentence1": "a", "sentence2": "b", "label": 0}),
        );
        assert!(matches!(
            rte.grader,
            Grader::MultipleChoice { answer: 0, .. }
        ));
        assert_eq!(rte.gold, "A. yes");
        // MRPC: 1 is equivalent.
        let mrpc = draft(
            "mrpc",
            json!({"sentence1": "a", "sentence2": "b", "label": 0}),
        );
        assert_eq!(mrpc.gold, "B. no");
        // Social IQa and Winogrande labels are 1-based strings.
        let siqa = draft(
            "social_iqa",
            json!({"context": "c", "question": "q", "answerA": "x", "answerB": "y",
                   "answerC": "z", "label": "3"}),
        );
        assert_eq!(siqa.gold, "C. z");
        let wino = draft(
            "winogrande",
            json!({"sentence": "s _", "option1": "Sarah", "option2": "Maria", "answer": "2"}),
        );
        assert_eq!(wino.gold, "B. Maria");
        // HellaSwag labels are strings of digits.
        let hs = draft(
            "hellaswag",
            json!({"ctx": "A man", "activity_label": "Roofing", "endings": ["a", "b", "c", "d"],
                   "label": "3"}),
        );
        assert_eq!(hs.gold, "D. d");
        // BoolQ answers are booleans.
        let boolq = draft(
            "boolq",
            json!({"question": "is it", "passage": "p", "answer": false}),
        );
        assert_eq!(boolq.gold, "B. no");
        assert!(boolq.prompt.ends_with("Answer yes or no."));
    }

    #[test]
    fn short_answers_keep_every_alias_and_arithmetic_is_numeric() {
        let trivia = draft(
            "trivia_qa",
            json!({"question": "Who wrote Hamlet?",
                   "answer": {"value": "William Shakespeare", "aliases": ["Shakespeare", "William Shakespeare", "The Bard"]}}),
        );
        assert_eq!(
            trivia.grader,
            Grader::ShortAnswer {
                aliases: vec![
                    "William Shakespeare".into(),
                    "Shakespeare".into(),
                    "The Bard".into()
                ]
            }
        );
        let arithmetic = draft(
            "basic_arithmetic",
            json!({"question": "Calculate 5 + 91 =",
                   "choices": {"text": ["97", "95", "106", "96"], "label": ["A", "B", "C", "D"]},
                   "answerKey": "D"}),
        );
        assert_eq!(arithmetic.question, "Calculate 5 + 91");
        assert_eq!(arithmetic.gold, "96");
        assert!(matches!(arithmetic.grader, Grader::Number { value, .. } if value == 96.0));
    }

    #[test]
    fn sciq_choices_are_shuffled_by_question_not_always_first() {
        let firsts: Vec<usize> = (0..12)
            .map(|i| {
                let item = draft(
                    "sciq",
                    json!({"question": format!("Question {i}?"), "correct_answer": "right",
                           "distractor1": "w1", "distractor2": "w2", "distractor3": "w3"}),
                );
                match item.grader {
                    Grader::MultipleChoice { answer, choices } => {
                        assert_eq!(choices[answer], "right");
                        answer
                    }
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert!(firsts.iter().any(|&a| a != firsts[0]), "{firsts:?}");
    }

    #[test]
    fn bad_rows_are_counted_and_a_broken_file_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let family = pool_family("copa").unwrap();
        let good = json!({"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 1});
        let mut lines: Vec<String> = (0..200).map(|_| good.to_string()).collect();
        lines.push(
            json!({"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 1})
                .to_string(),
        );
        std::fs::write(family.path(dir.path()), lines.join("\n")).unwrap();
        let read = family.read(dir.path()).unwrap();
        assert_eq!(read.drafts.len(), 200);
        assert_eq!(read.unusable.len(), 1);
        assert_eq!(read.unusable[0].0, 201);
        assert!(
            read.unusable[0].1.contains("cause or effect"),
            "{:?}",
            read.unusable
        );

        // Mostly unusable: the format changed, so it is an error naming the first bad line.
        lines.truncate(1);
        lines.push(json!({"premise": "p"}).to_string());
        std::fs::write(family.path(dir.path()), lines.join("\n")).unwrap();
        let error = family.read(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("super_glue__copa__validation.jsonl:2"),
            "{error}"
        );
        assert!(error.contains("field `question`"), "{error}");

        // Not JSON at all: the records reader names the line.
        std::fs::write(family.path(dir.path()), format!("{good}\n{{oops\n")).unwrap();
        let error = family.read(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("super_glue__copa__validation.jsonl:2"),
            "{error}"
        );
    }
}
