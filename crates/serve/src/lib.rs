//! An OpenAI-compatible HTTP API over the local Llama model: the offline teacher and judge.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use llama::{burn::tensor::Device, Pretrained};
//! use serve::{Server, ServerOptions};
//!
//! let model = Pretrained::load("assets/smollm2-135m-instruct".as_ref(), &Device::flex())?;
//! let server = Server::new(model, ServerOptions { model_name: "smollm2".into(), engine: Default::default() })?;
//! let listener = serve::bind("127.0.0.1:0".parse()?).await?;
//! println!("listening on http://{}", listener.local_addr()?);
//! server.serve(listener, async { /* resolve to shut down */ }).await?;
//! # Ok(()) }
//! ```
//!
//! Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` (JSON, or SSE
//! with `stream: true`), `POST /v1/completions` (JSON), `GET /health`. Requests and responses follow OpenAI's shapes; errors
//! are `{"error": {"message", "type", "param", "code"}}` with 400 (naming the field), 404
//! (unknown model or URL) or 503 (queue full, with `Retry-After`).
//!
//! What is and is not implemented, so that nothing is silently pretended:
//! - sampling: `temperature` (default 1, as OpenAI; 0 = greedy), `top_p`, `seed` (a request's
//!   samples depend only on its own seed, not on the batch it ran in; without a seed one is
//!   drawn at random), `max_tokens` / `max_completion_tokens` (default: the rest of the context
//!   window), `stop` (up to 4 strings, matched on the decoded text and never returned);
//! - `logprobs` / `top_logprobs` (at most 20) on chat, `logprobs` (0..=20) and `echo` on
//!   completions: the model's raw log-probabilities (before temperature and top-p), from one
//!   teacher-forced pass over prompt + answer after decoding; with `echo` the prompt's tokens
//!   are scored too (the first has `null`), and `max_tokens: 0` scores without generating, as
//!   lm-evaluation-harness needs to score a continuation. Not with `stream` (refused);
//! - completions take one prompt (a string or token ids) and are not streamed (`stream` is
//!   refused), `suffix` is refused, `max_tokens` defaults to 16 as OpenAI's;
//! - `n` / `best_of` must be 1; `logit_bias`, non-zero penalties, tools and non-text content
//!   parts are refused with 400 rather than ignored;
//! - `response_format` `json_object` / `json_schema` is *enforced* (structured outputs, see
//!   [`json_constraint`]): the server adds a system instruction with the schema, and every
//!   token is chosen among those that keep the answer a valid prefix of JSON of that schema;
//!   the answer ends when the object is complete. Only a `max_tokens` cut (finish reason
//!   `length`) leaves it unfinished. A schema keyword the grammar cannot enforce (`pattern`,
//!   `format`, `$ref`, `anyOf`, ...) is refused with 400 naming its path, which
//!   `llm_client` answers by putting the schema in the prompt instead;
//! - `usage.completion_tokens` counts every generated token including the end-of-turn token.
//!
//! Concurrent requests with the same `temperature` / `top_p` are decoded as one batch on the
//! model thread (see [`engine`]).

mod error;

pub mod engine;
pub mod json_constraint;
pub mod openai;
pub mod server;

use std::net::SocketAddr;
use std::path::Path;

pub use engine::{Engine, EngineOptions, EngineStats};
pub use error::{Error, Result};
pub use server::{Server, ServerOptions};

/// Binds a TCP listener (`127.0.0.1:0` picks a free port; read it from `local_addr`).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// The model name served when none is given: the file stem of a `.gguf` file or the name of
/// the model directory (`assets/smollm2-135m-instruct` → `smollm2-135m-instruct`).
pub fn default_model_name(model_path: &Path) -> String {
    let is_gguf = model_path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let name = if is_gguf {
        model_path.file_stem()
    } else {
        model_path.file_name()
    };
    name.map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "local-model".to_owned())
}
