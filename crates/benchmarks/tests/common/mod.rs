//! A scripted test double for the harness: it answers from the datasets' own answers, wrong on a
//! seeded fraction of items, so tests know exactly which items must score correct. It checks
//! harness logic (prompting, extraction, scoring, aggregation, resume); it is not a result.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use benchmarks::ModelError;
use benchmarks::data::{Gsm8kItem, HumanEvalProblem, MmluItem};
use benchmarks::model::{
    GenerationRequest, LanguageModel, Loglikelihood, LoglikelihoodRequest, Prompt, Role,
};
use benchmarks::stats::{SplitMix64, stable_hash};

pub fn data_dir() -> std::path::PathBuf {
    benchmarks::data::default_data_dir()
}

/// The answer key the double reads prompts against.
#[derive(Default)]
pub struct ScriptedModel {
    /// MMLU: "question\nA. ..\nD. .." → answer index.
    mmlu: HashMap<String, usize>,
    /// GSM8K: question → gold number.
    gsm8k: HashMap<String, String>,
    /// HumanEval: prompt → canonical solution.
    humaneval: HashMap<String, HumanEvalProblem>,
    pub error_rate: f64,
    pub seed: u64,
    pub supports_loglikelihood: bool,
    /// Fail every call after this many successful calls (simulates a crash mid-run).
    pub fail_after_calls: Option<usize>,
    pub calls: AtomicUsize,
    /// Keys of every item the double was asked about.
    pub asked: Mutex<Vec<String>>,
}

pub fn mmlu_key(item: &MmluItem) -> String {
    format!(
        "{}\nA. {}\nB. {}\nC. {}\nD. {}",
        item.question.trim(),
        item.choices[0],
        item.choices[1],
        item.choices[2],
        item.choices[3]
    )
}

impl ScriptedModel {
    pub fn new(error_rate: f64, seed: u64) -> Self {
        Self {
            error_rate,
            seed,
            supports_loglikelihood: true,
            ..Default::default()
        }
    }

    pub fn with_mmlu(mut self, items: &[MmluItem]) -> Self {
        self.mmlu
            .extend(items.iter().map(|i| (mmlu_key(i), i.answer)));
        self
    }

    pub fn with_gsm8k(mut self, items: &[Gsm8kItem]) -> Self {
        self.gsm8k
            .extend(items.iter().map(|i| (i.question.clone(), i.gold.clone())));
        self
    }

    pub fn with_humaneval(mut self, problems: &[HumanEvalProblem]) -> Self {
        self.humaneval.extend(
            problems
                .iter()
                .map(|p| (p.prompt.trim().to_string(), p.clone())),
        );
        self
    }

    /// Whether the double answers the item with this key wrongly (seeded, per item).
    pub fn errs_on(&self, key: &str) -> bool {
        SplitMix64::new(self.seed ^ stable_hash(key)).unit() < self.error_rate
    }

    fn count_call(&self) -> Result<(), ModelError> {
        let calls = self.calls.fetch_add(1, Ordering::SeqCst);
        match self.fail_after_calls {
            Some(limit) if calls >= limit => Err("scripted crash".into()),
            _ => Ok(()),
        }
    }

    /// Finds the MMLU item a prompt ends with: the text after a paragraph break (or after
    /// "Question: ") up to the end of choice D.
    fn find_mmlu(&self, text: &str) -> Option<(String, usize)> {
        let d = text.rfind("\nD. ")?;
        let line_end = text[d + 1..].find('\n').map_or(text.len(), |i| d + 1 + i);
        let block = &text[..line_end];
        let mut starts: Vec<usize> = block
            .match_indices("\n\n")
            .map(|(i, _)| i + 2)
            .chain(block.match_indices("Question: ").map(|(i, _)| i + 10))
            .chain([0])
            .collect();
        starts.sort_unstable_by(|a, b| b.cmp(a));
        starts.into_iter().find_map(|start| {
            let key = &block[start..];
            self.mmlu.get(key).map(|&answer| (key.to_string(), answer))
        })
    }

    fn prompt_text(prompt: &Prompt) -> String {
        match prompt {
            Prompt::Text(text) => text.clone(),
            Prompt::Chat(messages) => messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(|m| m.content.clone())
                .unwrap_or_default(),
        }
    }

    fn answer(&self, request: &GenerationRequest) -> String {
        let text = Self::prompt_text(&request.prompt);
        let chat = matches!(request.prompt, Prompt::Chat(_));
        if let Some((key, answer)) = self.find_mmlu(&text) {
            self.asked.lock().unwrap().push(key.clone());
            let letter = ["A", "B", "C", "D"][if self.errs_on(&key) {
                (answer + 1) % 4
            } else {
                answer
            }];
            return if chat {
                format!("Let me think.\nThe best answer is {letter}.")
            } else {
                format!(" {letter}")
            };
        }
        let question = text
            .rsplit_once("Problem: ")
            .map(|(_, rest)| {
                rest.split("\nYour response should end with")
                    .next()
                    .unwrap_or(rest)
            })
            .or_else(|| {
                text.rsplit_once("Q: ")
                    .map(|(_, rest)| rest.strip_suffix("\nA:").unwrap_or(rest))
            });
        if let Some(gold) = question.and_then(|q| self.gsm8k.get(q)) {
            let key = question.unwrap().to_string();
            self.asked.lock().unwrap().push(key.clone());
            // Sampled answers (temperature > 0) vary per seed: wrong on some samples only.
            let wrong = if request.temperature > 0.0 {
                SplitMix64::new(request.seed).unit() < self.error_rate
            } else {
                self.errs_on(&key)
            };
            let value: i64 = gold.parse().unwrap_or(0) + wrong as i64;
            return if text.contains("The final answer is") {
                format!(
                    "We add 1,000 and 2 to get 1,002 along the way. The final answer is {value}"
                )
            } else {
                format!(
                    "We add 1,000 and 2 to get 1,002 along the way. The answer is {value}.\n\nQ: next"
                )
            };
        }
        let code = text
            .split_once("```python\n")
            .map(|(_, rest)| rest.rsplit_once("\n```").map_or(rest, |(code, _)| code))
            .unwrap_or(&text);
        if let Some(problem) = self.humaneval.get(code.trim()) {
            self.asked.lock().unwrap().push(problem.task_id.clone());
            let wrong = self.errs_on(&problem.task_id);
            let body = if wrong {
                "    return None\n".to_string()
            } else {
                problem.canonical_solution.clone()
            };
            return if chat {
                format!(
                    "Here is a solution:\n```python\n{}{}```\nIt passes the tests.",
                    problem.prompt, body
                )
            } else {
                format!("{body}\n\ndef unrelated():\n    pass\n")
            };
        }
        panic!(
            "scripted model: no item matches prompt ending {:?}",
            &text[text.len().saturating_sub(200)..]
        );
    }
}

impl LanguageModel for ScriptedModel {
    fn name(&self) -> String {
        format!("scripted(error_rate={})", self.error_rate)
    }

    fn supports_loglikelihood(&self) -> bool {
        self.supports_loglikelihood
    }

    fn loglikelihood(
        &self,
        requests: &[LoglikelihoodRequest],
    ) -> Result<Vec<Loglikelihood>, ModelError> {
        self.count_call()?;
        requests
            .iter()
            .map(|request| {
                let (key, answer) = self
                    .find_mmlu(&request.context)
                    .ok_or("no MMLU item in context")?;
                self.asked.lock().unwrap().push(key.clone());
                let chosen = if self.errs_on(&key) {
                    (answer + 1) % 4
                } else {
                    answer
                };
                let letter = request.continuation.trim();
                let index = ["A", "B", "C", "D"]
                    .iter()
                    .position(|l| *l == letter)
                    .ok_or("bad continuation")?;
                Ok(Loglikelihood {
                    logprob: if index == chosen {
                        -0.25
                    } else {
                        -3.0 - index as f64
                    },
                    is_greedy: index == chosen,
                })
            })
            .collect()
    }

    fn generate(&self, requests: &[GenerationRequest]) -> Result<Vec<String>, ModelError> {
        self.count_call()?;
        Ok(requests.iter().map(|r| self.answer(r)).collect())
    }
}
