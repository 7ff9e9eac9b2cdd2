//! GSM8K, 8-shot chain of thought with the standard exemplars (Wei et al. 2022, as in
//! lm-evaluation-harness `gsm8k_cot` and `gsm8k_cot_llama`).
//!
//! - [`Gsm8kProtocol::CotText`]: `"Q: {question}\nA: {reasoning} The answer is N.\n\n"` × 8, then
//!   `"Q: {question}\nA:"`; strict extraction takes the first `The answer is (-?[0-9.,]+)`.
//! - [`Gsm8kProtocol::CotLlamaChat`]: Meta's Llama 3 prompt as a conversation, the exemplars as
//!   prior user/assistant turns: user "Given the following problem, reason and give a final
//!   answer to the problem.\nProblem: {question}\nYour response should end with \"The final
//!   answer is [answer]\" where [answer] is the response to the problem.\n", assistant
//!   "{reasoning} The final answer is N"; strict extraction takes the last
//!   `The final answer is ((-?[$0-9.,]{2,})|(-?[0-9]+))`.
//!
//! Flexible extraction (both protocols): the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`.
//! Comparison as lm-evaluation-harness's exact match: drop `,` and `$` and a trailing `.`,
//! ignore case, compare strings. maj@k samples k answers and votes on the extracted answers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use records::eval::{BenchmarkResult, ChatMessage, EvalRecord, Prompt, Role, SampleRecord};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::data::{Gsm8kItem, load_gsm8k};
use crate::error::{Error, Result};
use crate::harness::{self, RunInfo};
use crate::model::{GenerationRequest, LanguageModel};
use crate::record_log::RecordLog;

/// The 8 chain-of-thought exemplars: question, reasoning, answer.
pub const EXEMPLARS: [(&str, &str, &str); 8] = [
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6.",
        "6",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5.",
        "5",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39.",
        "39",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8.",
        "8",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9.",
        "9",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29.",
        "29",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls.",
        "33",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8.",
        "8",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gsm8kProtocol {
    CotText,
    CotLlamaChat,
}

impl Gsm8kProtocol {
    pub fn name(self) -> &'static str {
        match self {
            Gsm8kProtocol::CotText => "cot-text",
            Gsm8kProtocol::CotLlamaChat => "cot-llama-chat",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Gsm8kOptions {
    pub protocol: Gsm8kProtocol,
    /// 0..=8 exemplars.
    pub shots: usize,
    /// 1: one greedy answer. k > 1: k samples at `temperature`, scored by majority vote (maj@k).
    pub samples: usize,
    pub temperature: f32,
    pub max_new_tokens: usize,
    pub limit: Option<usize>,
    pub seed: u64,
    pub batch_size: usize,
    pub data_dir: std::path::PathBuf,
}

impl Default for Gsm8kOptions {
    fn default() -> Self {
        Self {
            protocol: Gsm8kProtocol::CotLlamaChat,
            shots: 8,
            samples: 1,
            temperature: 0.6,
            max_new_tokens: 512,
            limit: None,
            seed: 1234,
            batch_size: 8,
            data_dir: crate::data::default_data_dir(),
        }
    }
}

/// The Llama user turn for a question.
pub fn llama_instruction(question: &str) -> String {
    format!(
        "Given the following problem, reason and give a final answer to the problem.\nProblem: {question}\nYour response should end with \"The final answer is [answer]\" where [answer] is the response to the problem.\n"
    )
}

pub fn prompt(protocol: Gsm8kProtocol, question: &str, shots: usize) -> Prompt {
    let exemplars = &EXEMPLARS[..shots];
    match protocol {
        Gsm8kProtocol::CotText => {
            let mut text = String::new();
            for (q, reasoning, answer) in exemplars {
                text.push_str(&format!(
                    "Q: {q}\nA: {reasoning} The answer is {answer}.\n\n"
                ));
            }
            text.push_str(&format!("Q: {question}\nA:"));
            Prompt::Text(text)
        }
        Gsm8kProtocol::CotLlamaChat => {
            let mut messages = Vec::new();
            for (q, reasoning, answer) in exemplars {
                messages.push(ChatMessage::new(Role::User, llama_instruction(q)));
                messages.push(ChatMessage::new(
                    Role::Assistant,
                    format!("{reasoning} The final answer is {answer}"),
                ));
            }
            messages.push(ChatMessage::new(Role::User, llama_instruction(question)));
            Prompt::Chat(messages)
        }
    }
}

fn stop_strings(protocol: Gsm8kProtocol) -> Vec<String> {
    let stops: &[&str] = match protocol {
        Gsm8kProtocol::CotText => &["Q:", "</s>", "<|im_end|>"],
        Gsm8kProtocol::CotLlamaChat => &[
            "<|eot_id|>",
            "<|start_header_id|>user<|end_header_id|>",
            "Q:",
            "</s>",
            "<|im_end|>",
        ],
    };
    stops.iter().map(|s| s.to_string()).collect()
}

static STRICT_TEXT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"The answer is (-?[0-9.,]+)").expect("valid regex"));
static STRICT_LLAMA: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"The final answer is ((-?[$0-9.,]{2,})|(-?[0-9]+))").expect("valid regex")
});
static FLEXIBLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").expect("valid regex"));

/// Strict extraction (see module docs).
pub fn extract_strict(protocol: Gsm8kProtocol, text: &str) -> Option<String> {
    match protocol {
        Gsm8kProtocol::CotText => STRICT_TEXT.captures(text).map(|c| c[1].to_string()),
        Gsm8kProtocol::CotLlamaChat => STRICT_LLAMA
            .captures_iter(text)
            .last()
            .map(|c| c[1].to_string()),
    }
}

/// Flexible extraction: the last number-like span.
pub fn extract_flexible(text: &str) -> Option<String> {
    FLEXIBLE
        .find_iter(text)
        .last()
        .map(|m| m.as_str().to_string())
}

/// lm-evaluation-harness's exact-match normalisation: no `,` or `$`, no trailing `.`, lower case.
pub fn normalize(answer: &str) -> String {
    let mut text = answer.replace([',', '$'], "");
    if let Some(start) = text.rfind("#### ") {
        text = text[start + 5..].to_string();
    }
    let text = text.trim();
    text.strip_suffix('.').unwrap_or(text).to_lowercase()
}

/// The most frequent answer (ties: the one seen first); `None` answers do not vote.
pub fn majority(answers: &[Option<String>]) -> Option<String> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for answer in answers.iter().flatten() {
        match counts.iter_mut().find(|(a, _)| a == answer) {
            Some((_, n)) => *n += 1,
            None => counts.push((answer.clone(), 1)),
        }
    }
    counts
        .into_iter()
        .fold(None::<(String, usize)>, |best, (a, n)| match best {
            Some((_, m)) if m >= n => best,
            _ => Some((a, n)),
        })
        .map(|(a, _)| a)
}

/// Runs GSM8K and writes `<out_dir>/gsm8k_<protocol>.jsonl` and `.results.json`.
pub fn run_gsm8k(
    model: &dyn LanguageModel,
    options: &Gsm8kOptions,
    out_dir: &Path,
) -> Result<BenchmarkResult> {
    if options.shots > EXEMPLARS.len() {
        return Err(Error::InvalidOption {
            option: "shots",
            message: format!(
                "at most {} exemplars, asked for {}",
                EXEMPLARS.len(),
                options.shots
            ),
        });
    }
    if options.samples == 0 {
        return Err(Error::InvalidOption {
            option: "samples",
            message: "must be at least 1".into(),
        });
    }
    let items = harness::select(
        load_gsm8k(&options.data_dir)?,
        options.limit,
        options.seed,
        |i| i.id.as_str(),
    );
    let protocol = options.protocol;
    let k = options.samples;
    let temperature = if k == 1 { 0.0 } else { options.temperature };
    let config = serde_json::json!({
        "benchmark": "gsm8k",
        "protocol": protocol.name(),
        "shots": options.shots,
        "samples": k,
        "temperature": temperature,
        "max_new_tokens": options.max_new_tokens,
        "seed": options.seed,
    });
    let (records_path, results_path) = harness::output_paths(out_dir, "gsm8k", protocol.name());
    let mut log = RecordLog::open(&records_path, &config)?;
    let records = harness::score_pending(
        &format!("gsm8k {}", protocol.name()),
        &items,
        |i| i.id.as_str(),
        &mut log,
        options.batch_size,
        |batch| {
            let requests: Vec<GenerationRequest> = batch
                .iter()
                .flat_map(|item| {
                    (0..k).map(|sample| GenerationRequest {
                        prompt: prompt(protocol, &item.question, options.shots),
                        max_new_tokens: options.max_new_tokens,
                        stop: stop_strings(protocol),
                        temperature,
                        seed: harness::item_seed(options.seed, &item.id, sample),
                    })
                })
                .collect();
            let outputs = harness::generate(model, &requests)?;
            Ok(batch
                .iter()
                .zip(outputs.chunks(k))
                .map(|(item, outputs)| score_item(item, protocol, options.shots, outputs))
                .collect())
        },
    )?;
    let primary = if k == 1 {
        "exact_match_strict".to_string()
    } else {
        format!("maj@{k}_strict")
    };
    let mut full_config = config;
    full_config["limit"] = serde_json::json!(options.limit);
    let result = harness::aggregate(
        RunInfo {
            benchmark: "gsm8k",
            protocol: protocol.name(),
            model: model.name(),
            primary_metric: primary,
            config: full_config,
            seed: options.seed,
            notes: vec![],
        },
        &records,
    );
    harness::write_result(&results_path, &result)?;
    Ok(result)
}

fn score_item(
    item: &Gsm8kItem,
    protocol: Gsm8kProtocol,
    shots: usize,
    outputs: &[String],
) -> EvalRecord {
    let gold = normalize(&item.gold);
    let is_gold = |answer: &Option<String>| {
        answer.as_deref().map(normalize).as_deref() == Some(gold.as_str())
    };
    let strict: Vec<Option<String>> = outputs
        .iter()
        .map(|o| extract_strict(protocol, o))
        .collect();
    let flexible: Vec<Option<String>> = outputs.iter().map(|o| extract_flexible(o)).collect();
    let mut metrics = BTreeMap::new();
    let strict_correct = if outputs.len() == 1 {
        metrics.insert(
            "exact_match_strict".to_string(),
            is_gold(&strict[0]) as u8 as f64,
        );
        metrics.insert(
            "exact_match_flexible".to_string(),
            is_gold(&flexible[0]) as u8 as f64,
        );
        is_gold(&strict[0])
    } else {
        let k = outputs.len();
        let vote = |answers: &[Option<String>]| {
            let normalized: Vec<Option<String>> = answers
                .iter()
                .map(|a| a.as_deref().map(normalize))
                .collect();
            majority(&normalized)
        };
        let strict_vote = vote(&strict);
        let flexible_vote = vote(&flexible);
        let strict_correct = is_gold(&strict_vote);
        metrics.insert(format!("maj@{k}_strict"), strict_correct as u8 as f64);
        metrics.insert(
            format!("maj@{k}_flexible"),
            is_gold(&flexible_vote) as u8 as f64,
        );
        // The first sample alone, for comparison with greedy runs.
        metrics.insert(
            "exact_match_strict".to_string(),
            is_gold(&strict[0]) as u8 as f64,
        );
        metrics.insert(
            "exact_match_flexible".to_string(),
            is_gold(&flexible[0]) as u8 as f64,
        );
        strict_correct
    };
    let samples = outputs
        .iter()
        .zip(&strict)
        .skip(1)
        .map(|(output, extracted)| SampleRecord {
            output: output.clone(),
            extracted: extracted.clone(),
            correct: is_gold(extracted),
            detail: None,
        })
        .collect();
    EvalRecord {
        benchmark: "gsm8k".into(),
        protocol: protocol.name().into(),
        item_id: item.id.clone(),
        subject: None,
        prompt: prompt(protocol, &item.question, shots),
        output: outputs[0].clone(),
        extracted: strict[0].clone(),
        gold: item.gold.clone(),
        correct: strict_correct,
        metrics,
        logprobs: None,
        samples,
        detail: flexible[0].as_ref().map(|f| format!("flexible: {f}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_follows_lm_eval_regexes() {
        let text = "So 5 + 4 = 9. The answer is 9.\n";
        assert_eq!(
            extract_strict(Gsm8kProtocol::CotText, text).as_deref(),
            Some("9.")
        );
        assert_eq!(normalize("9."), "9");
        let llama = "The final answer is 3. Wait, no. The final answer is $1,234.";
        assert_eq!(
            extract_strict(Gsm8kProtocol::CotLlamaChat, llama).as_deref(),
            Some("$1,234.")
        );
        assert_eq!(normalize("$1,234."), "1234");
        assert_eq!(
            extract_strict(Gsm8kProtocol::CotLlamaChat, "The final answer is 7").as_deref(),
            Some("7")
        );
        assert_eq!(
            extract_flexible("I get 12 apples and -3.5 pears").as_deref(),
            Some("-3.5")
        );
        assert_eq!(extract_flexible("no numbers"), None);
        assert_eq!(extract_strict(Gsm8kProtocol::CotText, "it is 9"), None);
    }

    #[test]
    fn majority_vote_ignores_missing_and_breaks_ties_by_first_seen() {
        let votes =
            |v: &[Option<&str>]| v.iter().map(|a| a.map(str::to_string)).collect::<Vec<_>>();
        assert_eq!(
            majority(&votes(&[Some("3"), None, Some("4"), Some("4")])),
            Some("4".into())
        );
        assert_eq!(majority(&votes(&[Some("3"), Some("4")])), Some("3".into()));
        assert_eq!(majority(&votes(&[None, None])), None);
    }

    #[test]
    fn text_prompt_has_exemplars_then_question() {
        let Prompt::Text(text) = prompt(Gsm8kProtocol::CotText, "What is 2+2?", 8) else {
            panic!("text prompt")
        };
        assert!(text.starts_with("Q: There are 15 trees in the grove."));
        assert!(text.contains("23 - 15 is 8. The answer is 8.\n\nQ: What is 2+2?\nA:"));
        assert_eq!(text.matches("Q: ").count(), 9);
        let Prompt::Chat(messages) = prompt(Gsm8kProtocol::CotLlamaChat, "What is 2+2?", 8) else {
            panic!("chat prompt")
        };
        assert_eq!(messages.len(), 17);
        assert_eq!(
            messages[1].content,
            "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The final answer is 6"
        );
    }
}
