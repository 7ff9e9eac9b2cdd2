//! OpenAI-compatible chat and text completion client for tuneloop: OpenAI, vLLM, Ollama or our own `serve`, with a
//! durable SQLite ledger (a rerun never pays again for a finished request), a hard budget cap,
//! rate limits, classified retries, batches and tolerant parsing of structured answers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), llm_client::Error> {
//! use llm_client::{ChatRequest, ClientConfig, Endpoint, LlmClient, Progress, Prices};
//!
//! let mut config = ClientConfig::new(Endpoint::from_env()?, "runs/llm-ledger.sqlite");
//! config.prices.insert(config.endpoint.model.clone(), Prices { input_per_mtok: 0.15, output_per_mtok: 0.6 });
//! config.budget_usd = Some(5.0);
//! let client = LlmClient::new(config)?;
//! let prompts = vec![ChatRequest::user("Rate this answer from 1 to 10: ...").with_max_tokens(64)];
//! let report = client.chat_batch(prompts, Progress::Auto).await;
//! for result in &report.results {
//!     match result {
//!         Ok(answer) => println!("{:?}", llm_client::parse_judge_score(&answer.content)),
//!         Err(e) => eprintln!("failed: {e}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! How a request goes: its hash (sha256 of endpoint URL, model, messages and parameters, never
//! the key) is looked up in the ledger and a finished answer is returned without HTTP. Otherwise
//! the row is written as `pending`, the attempt's upper-bound cost is reserved against the budget
//! (refused with [`Error::BudgetExceeded`] if it could cross the cap), the rate limiters and the
//! concurrency limit are passed, the attempt row is written, and one HTTP call is made. A 429
//! rate limit, 408, 5xx, timeout, dropped connection or unreadable 200 body is retried with
//! exponential backoff that honours `Retry-After`; an exhausted quota (429
//! `insufficient_quota`), 401/403 and any other 4xx are not.
//!
//! [`LlmClient::completion`] sends a text prompt to `/v1/completions` the same way (ledger,
//! budget, limits, retries); with `echo` and `logprobs` it scores the prompt's tokens, which is
//! how a continuation's log-likelihood is read from a served model. Chat requests can ask for
//! `logprobs` too ([`ChatRequest::with_logprobs`]); answers carry them in
//! [`ChatResponse::logprobs`] and the ledger keeps them.
//!
//! With [`ClientConfig::provider_batch`] set, [`LlmClient::chat_batch`] and
//! [`LlmClient::completion_batch`] go through the provider's Batch API (`/v1/files`,
//! `/v1/batches`) at the batch price, with the same ledger and budget promises: a batch is
//! recorded (members pending, attempts at their upper bound) before its file is uploaded, is
//! found again by its metadata key if a create's answer is lost, and is waited for, not sent
//! again, by a rerun after a kill (see [`ProviderBatch`]).
//!
//! [`LlmClient::chat_stream`] asks for SSE and reports text as it arrives; a stream that sends
//! no data event for `stream_idle_timeout`, ends without `data: [DONE]` or carries an error
//! object is retried like any other failed attempt, and the assembled answer is recorded in the
//! ledger under the same hash as a non-streamed request. [`ServeProcess`] runs tuneloop's own
//! `serve` binary on a free loopback port as the offline teacher and judge.

mod batch;
mod client;
mod cluster_labels;
mod config;
mod error;
mod ledger;
mod limiter;
mod parse;
mod provider_batch;
mod request;
mod serve_process;
mod source;
mod stream;

pub use batch::{BatchCounts, BatchReport, Progress};
pub use client::{BoxFuture, ChatBackend, LlmClient, StreamSink};
pub use cluster_labels::ChatClusterLabeller;
pub use config::{
    Backoff, ClientConfig, Endpoint, EndpointSettings, MaxTokensField, OPENAI_BASE_URL, PriceTable,
    Prices, ProviderBatch, Secret,
};
pub use error::{Error, Result};
pub use ledger::{Ledger, LedgerCounts, OUTCOME_IN_FLIGHT};
pub use parse::{extract_json, parse_judge_score};
pub use provider_batch::BATCH_METADATA_KEY;
pub use request::{
    ChatRequest, ChatResponse, CompletionRequest, JsonSchema, Message, Role, TokenLogprob,
    TopLogprob, canonical_json,
};
pub use serve_process::{ServeOptions, ServeProcess};
pub use source::{LlmSettings, with_llm};
pub use stream::StreamEvent;
