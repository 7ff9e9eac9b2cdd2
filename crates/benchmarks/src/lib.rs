//! MMLU, GSM8K and HumanEval over one small model trait, [`LanguageModel`], which the local
//! model implements and an OpenAI-compatible endpoint implements through `llm-client`
//! ([`OpenAiEndpoint`]: generation, and log-likelihood where the server answers prompt
//! log-probabilities, as vLLM and tuneloop's `serve` do).
//!
//! ```no_run
//! use benchmarks::{LanguageModel, gsm8k::{Gsm8kOptions, run_gsm8k}};
//! # fn model() -> Box<dyn LanguageModel> { unimplemented!() }
//! let model = model(); // the local Llama, or an endpoint client
//! let options = Gsm8kOptions { limit: Some(50), ..Gsm8kOptions::default() };
//! let result = run_gsm8k(model.as_ref(), &options, "runs/eval".as_ref())?;
//! println!("{} {:.3}", result.primary_metric, result.primary().unwrap().mean);
//! # Ok::<(), benchmarks::Error>(())
//! ```
//!
//! Every run appends one [`records::eval::EvalRecord`] per item to
//! `<out_dir>/<benchmark>_<protocol>.jsonl` as items finish (a rerun skips scored items) and
//! writes `<benchmark>_<protocol>.results.json` atomically at the end. Generated programs run in
//! [`sandbox::Sandbox`].

mod error;
mod harness;
mod progress;

pub mod data;
pub mod gsm8k;
pub mod humaneval;
pub mod local;
pub mod mmlu;
pub mod model;
pub mod openai;
pub mod record_log;
pub mod report;
pub mod sandbox;
pub mod stats;

pub use error::{Error, ModelError, Result};
pub use gsm8k::{Gsm8kOptions, Gsm8kProtocol, run_gsm8k};
pub use harness::{
    generate as generate_checked, item_seed, loglikelihood as loglikelihood_checked, score_pending,
    select,
};
pub use humaneval::{HumanEvalMode, HumanEvalOptions, run_humaneval};
pub use local::LocalModel;
pub use mmlu::{MmluOptions, MmluProtocol, run_mmlu};
pub use model::{GenerationRequest, LanguageModel, Loglikelihood, LoglikelihoodRequest};
pub use openai::OpenAiEndpoint;
pub use records::eval::{BenchmarkResult, ChatMessage, EvalRecord, Prompt, Role};
pub use report::{comparison_markdown, results_table};
