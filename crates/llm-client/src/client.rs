//! The HTTP client: one request → ledger lookup, budget reservation, rate limits, attempts with
//! classification and backoff.
//!
//! Why reqwest on the wire and async-openai only for the types: async-openai's client retries
//! 429 and 5xx inside its own executor (each retry invisible to the caller, so it could not be
//! written to the ledger or counted against the budget), and its error type keeps the status but
//! drops the response headers, so `Retry-After` and `retry-after-ms` cannot be honoured by us. We
//! need every attempt classified (rate limit vs exhausted quota vs bad request vs server error vs
//! timeout vs truncated body) and accounted, so one attempt is one plain reqwest call; the body
//! is async-openai's `CreateChatCompletionRequest` and the answer is parsed into its
//! `CreateChatCompletionResponse`, so the wire format stays the maintained OpenAI schema.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_openai::types::chat::CreateChatCompletionResponse;
use async_openai::types::completions::CreateCompletionResponse;
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::config::{ClientConfig, Prices};
use crate::error::{Error, Result};
use crate::ledger::{AttemptRecord, Ledger};
use crate::limiter::{Budget, RateLimiter};
use crate::request::{
    Call, ChatRequest, ChatResponse, CompletionRequest, TokenLogprob, TopLogprob, canonical_json,
};
use crate::stream::{Chunk, SseParser, StreamAssembly, StreamEvent};

/// Receives a streamed answer as it arrives (see [`LlmClient::chat_stream`]).
pub type StreamSink<'a> = &'a mut (dyn FnMut(StreamEvent<'_>) + Send);

/// A sink reborrowed for one attempt (`'r`) from one living for the request (`'s`).
type Sink<'r, 's> = &'r mut (dyn FnMut(StreamEvent<'_>) + Send + 's);

/// A boxed future, so [`ChatBackend`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The one seam that swaps: something that answers a chat request. [`LlmClient`] answers over
/// HTTP (OpenAI, vLLM, Ollama, our own `serve`); a local model can answer in-process. Cluster
/// labelling, benchmark generation, the teacher and the judge take a `&dyn ChatBackend`.
pub trait ChatBackend: Send + Sync {
    fn complete(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatResponse>>;
}

/// OpenAI-compatible chat client with a durable ledger. Cheap to clone (shared state).
#[derive(Clone)]
pub struct LlmClient {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    pub(crate) http: reqwest::Client,
    /// The endpoint's base URL without a trailing slash; a call's route is appended.
    pub(crate) base_url: String,
    pub(crate) ledger: Ledger,
    pub(crate) budget: Budget,
    pub(crate) prices: Option<Prices>,
    rpm: Option<RateLimiter>,
    tpm: Option<RateLimiter>,
    slots: Semaphore,
    /// One lock per request hash in progress, so identical requests are sent once.
    in_progress: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set by the first `insufficient_quota`: later requests fail without being sent.
    quota_exhausted: Mutex<Option<(u16, String)>>,
    /// Cleared when the server rejects `response_format: json_schema`.
    pub(crate) native_schema: AtomicBool,
}

/// An attempt that did not produce an answer.
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) retry_after: Option<Duration>,
    /// Retry at once without counting the attempt (the request changes shape, e.g. schema
    /// moved into the prompt).
    resend_now: bool,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self {
            error,
            retry_after: None,
            resend_now: false,
        }
    }
}

/// The `{"error": {...}}` body OpenAI-compatible servers send with a 4xx/5xx.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

impl LlmClient {
    /// Validates the config, opens (or creates) the ledger and reads its running total.
    pub fn new(config: ClientConfig) -> Result<Self> {
        config.validate()?;
        // reqwest is built without a bundled crypto provider; ring is the one already in our tree.
        // Err means a provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(config.max_concurrency)
            .connect_timeout(config.timeout.min(Duration::from_secs(30)))
            .build()
            .map_err(|e| Error::Config {
                field: "http client".into(),
                reason: e.to_string(),
            })?;
        let ledger = Ledger::open(&config.ledger_path)?;
        let spent = ledger.total_spend_usd()?;
        let inner = Inner {
            base_url: config.endpoint.base_url.trim_end_matches('/').to_owned(),
            http,
            budget: Budget::new(config.budget_usd, spent),
            prices: config.model_prices(),
            rpm: config.rpm.map(RateLimiter::per_minute),
            tpm: config.tpm.map(RateLimiter::per_minute),
            slots: Semaphore::new(config.max_concurrency),
            in_progress: Mutex::new(HashMap::new()),
            quota_exhausted: Mutex::new(None),
            native_schema: AtomicBool::new(config.endpoint.json_schema),
            ledger,
            config,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    /// Running total in US dollars: every attempt ever recorded in the ledger, finished ones at
    /// their billed cost, unknown outcomes at their upper bound.
    pub fn spent_usd(&self) -> f64 {
        self.inner.budget.spent_usd()
    }

    /// The request with the client's defaults filled in (what is hashed and sent).
    pub fn effective_request(&self, mut request: ChatRequest) -> ChatRequest {
        if request.max_tokens.is_none() {
            request.max_tokens = Some(self.inner.config.default_max_tokens);
        }
        request
    }

    /// [`LlmClient::effective_request`] for a text completion.
    pub fn effective_completion(&self, mut request: CompletionRequest) -> CompletionRequest {
        if request.max_tokens.is_none() {
            request.max_tokens = Some(self.inner.config.default_max_tokens);
        }
        request
    }

    /// Answers one text completion (`POST /v1/completions`) with the same ledger, budget,
    /// limits and retries as [`LlmClient::chat`]. With `echo` the answer's text (and its
    /// log-probabilities, when asked) start with the prompt.
    pub async fn completion(&self, request: CompletionRequest) -> Result<ChatResponse> {
        let call = self.completion_call(request)?;
        self.run(call, None).await
    }

    /// A text completion with the client's defaults, checked before anything is recorded.
    pub(crate) fn completion_call(&self, request: CompletionRequest) -> Result<Call> {
        let request = self.effective_completion(request);
        if request.prompt.is_empty() {
            return Err(Error::Config {
                field: "prompt".into(),
                reason: "a completion request needs a non-empty prompt".into(),
            });
        }
        if request.max_tokens == Some(0) && !request.echo {
            return Err(Error::Config {
                field: "max_tokens".into(),
                reason: "0 is only meaningful with echo (scoring the prompt)".into(),
            });
        }
        Ok(Call::Completion(request))
    }

    /// Answers one request: from the ledger if it finished before, else over HTTP with retries.
    pub async fn chat(&self, request: ChatRequest) -> Result<ChatResponse> {
        self.chat_with(request, None).await
    }

    /// [`LlmClient::chat`] with the answer streamed (SSE, `stream: true` with a usage chunk):
    /// `on_event` sees each attempt start and every text delta as it arrives. Besides the
    /// per-attempt `timeout`, a stream that sends no data event for `stream_idle_timeout` is
    /// abandoned as stalled and retried, and one that ends without `data: [DONE]` counts as
    /// cut off (retried, counted at its upper-bound cost). The ledger, budget, limits and
    /// retries are those of `chat`, and the request hash is the same: a streamed answer is
    /// recorded once, assembled, and serves later `chat` or `chat_stream` calls.
    pub async fn chat_stream(
        &self,
        request: ChatRequest,
        on_event: StreamSink<'_>,
    ) -> Result<ChatResponse> {
        self.chat_with(request, Some(on_event)).await
    }

    async fn chat_with(
        &self,
        request: ChatRequest,
        sink: Option<Sink<'_, '_>>,
    ) -> Result<ChatResponse> {
        let call = self.chat_call(request)?;
        if sink.is_some() && call.logprobs_asked() {
            return Err(Error::Config {
                field: "logprobs".into(),
                reason: "log-probabilities are collected from non-streamed answers only; use chat"
                    .into(),
            });
        }
        self.run(call, sink).await
    }

    /// A chat request with the client's defaults, checked before anything is recorded.
    pub(crate) fn chat_call(&self, request: ChatRequest) -> Result<Call> {
        let request = self.effective_request(request);
        if request.messages.is_empty() {
            return Err(Error::Config {
                field: "messages".into(),
                reason: "a chat request needs at least one message".into(),
            });
        }
        Ok(Call::Chat(request))
    }

    /// One call, sent at most once at a time per hash: identical calls in flight together
    /// wait for the first, which then answers them from the ledger.
    async fn run(&self, request: Call, sink: Option<Sink<'_, '_>>) -> Result<ChatResponse> {
        let hash = request.hash(&self.inner.config.endpoint);
        let lock = {
            let mut map = self.inner.in_progress.lock().expect("in-progress lock");
            map.entry(hash.clone()).or_default().clone()
        };
        let result = {
            let _same_request = lock.lock().await;
            self.call_exclusive(&request, &hash, sink).await
        };
        {
            let mut map = self.inner.in_progress.lock().expect("in-progress lock");
            if Arc::strong_count(&lock) == 2 {
                map.remove(&hash);
            }
        }
        result
    }

    async fn call_exclusive(
        &self,
        request: &Call,
        hash: &str,
        mut sink: Option<Sink<'_, '_>>,
    ) -> Result<ChatResponse> {
        let inner = &self.inner;
        if let Some(done) = inner.ledger.lookup_done(hash)? {
            if let Some(sink) = sink.as_deref_mut() {
                sink(StreamEvent::Delta(&done.content));
            }
            return Ok(done);
        }
        if let Some((status, message)) = inner.quota_exhausted.lock().expect("quota lock").clone() {
            return Err(Error::QuotaExhausted { status, message });
        }
        let identity = canonical_json(&request.identity(&inner.config.endpoint));
        inner
            .ledger
            .mark_pending(hash, &inner.config.endpoint.model, &identity)?;
        let mut attempts = 0u32;
        let mut counted = 0u32;
        loop {
            attempts += 1;
            counted += 1;
            if let Some(sink) = sink.as_deref_mut() {
                sink(StreamEvent::Attempt(attempts));
            }
            let failure = match self
                .attempt(request, hash, attempts, sink.as_deref_mut())
                .await
            {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            let Failure {
                error,
                retry_after,
                resend_now,
            } = failure;
            if resend_now {
                counted -= 1;
                continue;
            }
            let give_up = !error.is_retryable() || counted > inner.config.max_retries;
            if give_up {
                let error = if error.is_retryable() {
                    Error::RetriesExhausted {
                        attempts,
                        last: Box::new(error),
                    }
                } else {
                    error
                };
                inner.ledger.fail(hash, &error.to_string(), attempts)?;
                return Err(error);
            }
            let delay = self.retry_delay(counted, retry_after);
            tracing::debug!(
                request = &hash[..12],
                attempt = attempts,
                kind = error.kind(),
                delay_ms = delay.as_millis() as u64,
                "retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Exponential backoff with equal jitter, never shorter than the server's Retry-After.
    pub(crate) fn retry_delay(&self, retry_number: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = &self.inner.config.backoff;
        let exp = backoff
            .initial
            .saturating_mul(1u32 << (retry_number.saturating_sub(1)).min(20))
            .min(backoff.max);
        let jittered = exp / 2 + exp.mul_f64(rand::rng().random::<f64>() / 2.0);
        match retry_after {
            Some(after) => jittered.max(after.min(backoff.max_retry_after)),
            None => jittered,
        }
    }

    /// One HTTP attempt, reserved against the budget and recorded in the ledger.
    async fn attempt(
        &self,
        request: &Call,
        hash: &str,
        attempt_number: u32,
        sink: Option<Sink<'_, '_>>,
    ) -> Result<ChatResponse, Failure> {
        let inner = &self.inner;
        let max_tokens = request.max_tokens();
        let bound_usd = inner.prices.map_or(0.0, |p| {
            p.cost_usd(request.prompt_tokens_upper_bound(), max_tokens)
        });
        inner.budget.reserve(bound_usd).await?;
        // From here on every path settles the reservation exactly once.
        let mut settle_cost = bound_usd;
        let result = async {
            if let Some(rpm) = &inner.rpm {
                rpm.acquire(1).await;
            }
            if let Some(tpm) = &inner.tpm {
                tpm.acquire(request.prompt_tokens_estimate() + max_tokens)
                    .await;
            }
            let _slot = inner.slots.acquire().await.expect("semaphore never closed");
            let attempt_id = inner.ledger.begin_attempt(hash, bound_usd)?;
            let native =
                request.json_schema().is_some() && inner.native_schema.load(Ordering::Relaxed);
            let sent = match sink {
                Some(sink) => self.send_stream(request, native, sink).await,
                None => self.send(request, native).await,
            };
            let (outcome, result) = self.classify(sent, request, hash, bound_usd, native);
            match &result {
                Ok(response) => {
                    settle_cost = response.cost_usd;
                    let body = outcome.body.as_deref().unwrap_or("");
                    inner
                        .ledger
                        .complete(attempt_id, response, body, attempt_number)?;
                }
                Err(failure) => {
                    settle_cost = outcome.cost_usd;
                    inner.ledger.finish_attempt(
                        attempt_id,
                        &AttemptRecord {
                            outcome: failure.error.kind(),
                            http_status: outcome.http_status,
                            cost_usd: outcome.cost_usd,
                        },
                    )?;
                    tracing::warn!(
                        request = &hash[..12],
                        attempt = attempt_number,
                        status = outcome.http_status,
                        kind = failure.error.kind(),
                        "attempt failed"
                    );
                }
            }
            result
        }
        .await;
        inner.budget.settle(bound_usd, settle_cost);
        result.map(|mut response| {
            response.attempts = attempt_number;
            response
        })
    }

    /// The POST with body and key, or the reason it cannot be built.
    fn build_request(
        &self,
        request: &Call,
        native_schema: bool,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder> {
        let inner = &self.inner;
        let body = request.wire_body(&inner.config.endpoint, native_schema, stream);
        let builder = inner
            .http
            .post(format!("{}{}", inner.base_url, request.path()))
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        self.with_key(builder)
    }

    /// The request with the endpoint's key as a bearer token (marked sensitive, never logged).
    pub(crate) fn with_key(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder> {
        let Some(key) = &self.inner.config.endpoint.api_key else {
            return Ok(builder);
        };
        match HeaderValue::from_str(&format!("Bearer {}", key.expose())) {
            Ok(mut value) => {
                value.set_sensitive(true);
                Ok(builder.header(AUTHORIZATION, value))
            }
            Err(_) => Err(Error::Config {
                field: "api_key".into(),
                reason: "contains characters not allowed in an HTTP header".into(),
            }),
        }
    }

    /// Sends one request; the timeout covers connecting, headers and the whole body.
    async fn send(&self, request: &Call, native_schema: bool) -> Sent {
        let inner = &self.inner;
        let builder = match self.build_request(request, native_schema, false) {
            Ok(builder) => builder,
            Err(error) => return Sent::Invalid(error),
        };
        let exchange = async {
            let response = builder.send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await;
            Ok::<_, reqwest::Error>((status, headers, body))
        };
        match tokio::time::timeout(inner.config.timeout, exchange).await {
            Err(_) => Sent::TimedOut,
            Ok(Err(e)) => Sent::Transport {
                never_sent: e.is_connect(),
                message: self.redact(&error_chain(&e)),
            },
            Ok(Ok((status, _, Err(e)))) => Sent::BodyLost {
                status,
                message: self.redact(&error_chain(&e)),
            },
            Ok(Ok((status, headers, Ok(body)))) => Sent::Answered {
                status,
                headers,
                body: body.to_vec(),
            },
        }
    }

    /// Sends one streamed request, passing text deltas to `sink` as data events arrive. The
    /// attempt's `timeout` bounds the whole exchange; `stream_idle_timeout` bounds the wait
    /// for each data event (SSE comments, i.e. keep-alives, do not count as progress).
    async fn send_stream(&self, request: &Call, native_schema: bool, sink: Sink<'_, '_>) -> Sent {
        let inner = &self.inner;
        let builder = match self.build_request(request, native_schema, true) {
            Ok(builder) => builder,
            Err(error) => return Sent::Invalid(error),
        };
        let deadline = tokio::time::Instant::now() + inner.config.timeout;
        let idle = inner.config.stream_idle_timeout;
        let mut response = match tokio::time::timeout_at(deadline, builder.send()).await {
            Err(_) => return Sent::TimedOut,
            Ok(Err(e)) => {
                return Sent::Transport {
                    never_sent: e.is_connect(),
                    message: self.redact(&error_chain(&e)),
                };
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let headers = response.headers().clone();
        if !status.is_success() {
            // An error answer is a plain JSON body: classified as in `send`.
            return match tokio::time::timeout_at(deadline, response.bytes()).await {
                Err(_) => Sent::TimedOut,
                Ok(Err(e)) => Sent::BodyLost {
                    status,
                    message: self.redact(&error_chain(&e)),
                },
                Ok(Ok(body)) => Sent::Answered {
                    status,
                    headers,
                    body: body.to_vec(),
                },
            };
        }
        let mut parser = SseParser::default();
        let mut assembly = StreamAssembly::default();
        let mut raw = Vec::new();
        let mut last_progress = tokio::time::Instant::now();
        let ended = loop {
            let wait_until = (last_progress + idle).min(deadline);
            let read = match tokio::time::timeout_at(wait_until, response.chunk()).await {
                Err(_) if wait_until >= deadline => return Sent::TimedOut,
                Err(_) => break Err(StreamProblem::Stalled { idle }),
                Ok(read) => read,
            };
            let bytes = match read {
                Err(e) => {
                    return Sent::BodyLost {
                        status,
                        message: self.redact(&error_chain(&e)),
                    };
                }
                Ok(None) => break Err(StreamProblem::CutOff),
                Ok(Some(bytes)) => bytes,
            };
            raw.extend_from_slice(&bytes);
            let mut problem = None;
            for data in parser.push(&bytes) {
                last_progress = tokio::time::Instant::now();
                match assembly.apply(&data) {
                    Chunk::Text(text) if !text.is_empty() => sink(StreamEvent::Delta(&text)),
                    Chunk::Text(_) | Chunk::Done => {}
                    Chunk::Error(message) => {
                        problem = Some(StreamProblem::ServerError(self.redact(&message)));
                        break;
                    }
                    Chunk::Malformed(detail) => {
                        problem = Some(StreamProblem::Malformed(detail));
                        break;
                    }
                }
                if assembly.done {
                    break;
                }
            }
            match problem {
                Some(problem) => break Err(problem),
                // Whatever follows `[DONE]` is not read: the answer is complete.
                None if assembly.done => break Ok(()),
                None => {}
            }
        };
        Sent::Streamed {
            status,
            body: raw,
            answer: ended.map(|()| assembly),
        }
    }

    pub(crate) fn redact(&self, text: &str) -> String {
        match &self.inner.config.endpoint.api_key {
            Some(key) => key.redact(text),
            None => text.to_owned(),
        }
    }

    /// Turns what came back into an answer or a classified failure, with the cost to count.
    fn classify(
        &self,
        sent: Sent,
        request: &Call,
        hash: &str,
        bound_usd: f64,
        native_schema: bool,
    ) -> (Outcome, Result<ChatResponse, Failure>) {
        let timeout = self.inner.config.timeout;
        let base_url = self.inner.config.endpoint.base_url.clone();
        let (status, headers, body) = match sent {
            Sent::Invalid(error) => return (Outcome::free(None), Err(error.into())),
            // The server may have done (and billed) the work: count the upper bound.
            Sent::TimedOut => {
                return (
                    Outcome::unknown(None, bound_usd),
                    Err(Error::Timeout { timeout }.into()),
                );
            }
            Sent::Transport {
                never_sent,
                message,
            } => {
                let cost = if never_sent { 0.0 } else { bound_usd };
                return (
                    Outcome::unknown(None, cost),
                    Err(Error::Transport { base_url, message }.into()),
                );
            }
            Sent::BodyLost { status, message } => {
                let cost = if status.is_success() { bound_usd } else { 0.0 };
                let error = if status.is_success() {
                    Error::MalformedResponse {
                        status: status.as_u16(),
                        detail: format!("body cut off: {message}"),
                    }
                } else {
                    Error::Transport { base_url, message }
                };
                return (
                    Outcome::unknown(Some(status.as_u16()), cost),
                    Err(error.into()),
                );
            }
            Sent::Answered {
                status,
                headers,
                body,
            } => (status, headers, body),
            Sent::Streamed {
                status,
                body,
                answer,
            } => return self.classify_stream(status, &body, answer, request, hash, bound_usd),
        };
        let code = status.as_u16();
        let text = self.redact(&String::from_utf8_lossy(&body));
        if status.is_success() {
            return match self.parse_success(&body, request, hash) {
                Ok(response) => (
                    Outcome {
                        http_status: Some(code),
                        cost_usd: response.cost_usd,
                        body: Some(text),
                    },
                    Ok(response),
                ),
                Err(detail) => (
                    Outcome::unknown(Some(code), bound_usd),
                    Err(Error::MalformedResponse {
                        status: code,
                        detail,
                    }
                    .into()),
                ),
            };
        }
        (
            Outcome::free(Some(code)),
            Err(self.http_failure(code, &headers, &body, native_schema)),
        )
    }

    /// A non-2xx answer as a classified failure (an exhausted quota also stops later requests;
    /// a rejected `json_schema` moves the schema into the prompt and resends at once).
    pub(crate) fn http_failure(
        &self,
        code: u16,
        headers: &HeaderMap,
        body: &[u8],
        native_schema: bool,
    ) -> Failure {
        let text = self.redact(&String::from_utf8_lossy(body));
        let detail: Option<ErrorDetail> = serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .map(|b| b.error);
        let message = self.redact(
            &detail
                .as_ref()
                .and_then(|d| d.message.clone())
                .unwrap_or_else(|| truncate(&text, 300)),
        );
        let failure = |error: Error| Failure::from(error);
        match code {
            429 => {
                let quota = detail.as_ref().is_some_and(|d| {
                    let code_is = |v: &serde_json::Value| v.as_str() == Some("insufficient_quota");
                    d.kind.as_deref() == Some("insufficient_quota")
                        || d.code.as_ref().is_some_and(code_is)
                });
                if quota {
                    *self.inner.quota_exhausted.lock().expect("quota lock") =
                        Some((code, message.clone()));
                    failure(Error::QuotaExhausted {
                        status: code,
                        message,
                    })
                } else {
                    let retry_after = retry_after(headers);
                    Failure {
                        error: Error::RateLimited {
                            retry_after,
                            message,
                        },
                        retry_after,
                        resend_now: false,
                    }
                }
            }
            401 | 403 => failure(Error::Unauthorized {
                status: code,
                message,
            }),
            408 | 500..=599 => Failure {
                error: Error::Server {
                    status: code,
                    message,
                },
                retry_after: retry_after(headers),
                resend_now: false,
            },
            400 | 422
                if native_schema
                    && (message.contains("response_format") || message.contains("json_schema")) =>
            {
                tracing::warn!(
                    "server rejected response_format json_schema; sending the schema in the prompt from now on"
                );
                self.inner.native_schema.store(false, Ordering::Relaxed);
                Failure {
                    error: Error::BadRequest {
                        status: code,
                        message,
                    },
                    retry_after: None,
                    resend_now: true,
                }
            }
            _ => failure(Error::BadRequest {
                status: code,
                message,
            }),
        }
    }

    fn parse_success(
        &self,
        body: &[u8],
        request: &Call,
        hash: &str,
    ) -> Result<ChatResponse, String> {
        let unreported = (request.prompt_tokens_upper_bound(), request.max_tokens());
        self.parse_answer(body, matches!(request, Call::Chat(_)), hash, unreported)
    }

    /// A 200 body as an answer, priced from its usage, or from `unreported` (prompt and output
    /// token bounds) when the server reports none.
    pub(crate) fn parse_answer(
        &self,
        body: &[u8],
        is_chat: bool,
        hash: &str,
        unreported: (u64, u64),
    ) -> Result<ChatResponse, String> {
        let enum_name =
            |value: Option<serde_json::Value>| value.and_then(|v| v.as_str().map(str::to_owned));
        match is_chat {
            true => {
                let parsed: CreateChatCompletionResponse = serde_json::from_slice(body)
                    .map_err(|e| format!("not a chat completion: {e}"))?;
                let choice = parsed
                    .choices
                    .first()
                    .ok_or_else(|| "no choices in the response".to_owned())?;
                let finish_reason = enum_name(
                    choice
                        .finish_reason
                        .as_ref()
                        .and_then(|f| serde_json::to_value(f).ok()),
                );
                let usage = parsed
                    .usage
                    .as_ref()
                    .map(|u| (u64::from(u.prompt_tokens), u64::from(u.completion_tokens)));
                let logprobs = choice
                    .logprobs
                    .as_ref()
                    .and_then(|l| l.content.as_ref())
                    .map(|tokens| {
                        tokens
                            .iter()
                            .map(|t| TokenLogprob {
                                token: t.token.clone(),
                                logprob: Some(t.logprob),
                                text_offset: None,
                                top_logprobs: t
                                    .top_logprobs
                                    .iter()
                                    .map(|top| TopLogprob {
                                        token: top.token.clone(),
                                        logprob: top.logprob,
                                    })
                                    .collect(),
                            })
                            .collect()
                    });
                let mut response = self.response(
                    choice.message.content.clone().unwrap_or_default(),
                    finish_reason,
                    parsed.model.clone(),
                    usage,
                    unreported,
                    hash,
                );
                response.logprobs = logprobs;
                Ok(response)
            }
            false => {
                let parsed: CreateCompletionResponse = serde_json::from_slice(body)
                    .map_err(|e| format!("not a text completion: {e}"))?;
                let choice = parsed
                    .choices
                    .first()
                    .ok_or_else(|| "no choices in the response".to_owned())?;
                let finish_reason = enum_name(
                    choice
                        .finish_reason
                        .as_ref()
                        .and_then(|f| serde_json::to_value(f).ok()),
                );
                let usage = parsed
                    .usage
                    .as_ref()
                    .map(|u| (u64::from(u.prompt_tokens), u64::from(u.completion_tokens)));
                let logprobs = match &choice.logprobs {
                    Some(l) => Some(completion_logprobs(l)?),
                    None => None,
                };
                let mut response = self.response(
                    choice.text.clone(),
                    finish_reason,
                    parsed.model.clone(),
                    usage,
                    unreported,
                    hash,
                );
                response.logprobs = logprobs;
                Ok(response)
            }
        }
    }

    /// The caller's view of an answer, priced from its usage.
    fn response(
        &self,
        content: String,
        finish_reason: Option<String>,
        model: String,
        usage: Option<(u64, u64)>,
        unreported: (u64, u64),
        hash: &str,
    ) -> ChatResponse {
        let prices = self.inner.prices;
        let (prompt_tokens, completion_tokens, cost_usd) = match usage {
            Some((p, c)) => (p, c, prices.map_or(0.0, |pr| pr.cost_usd(p, c))),
            // No usage reported: count the upper bound so the budget stays safe.
            None => (
                0,
                0,
                prices.map_or(0.0, |pr| pr.cost_usd(unreported.0, unreported.1)),
            ),
        };
        ChatResponse {
            content,
            finish_reason,
            model,
            prompt_tokens,
            completion_tokens,
            cost_usd,
            request_hash: hash.to_owned(),
            attempts: 0,
            from_ledger: false,
            logprobs: None,
        }
    }

    /// A streamed 200: the assembled answer, or a retryable failure counted at the upper bound
    /// (the server may have generated, and billed, the whole answer).
    fn classify_stream(
        &self,
        status: StatusCode,
        body: &[u8],
        answer: Result<StreamAssembly, StreamProblem>,
        request: &Call,
        hash: &str,
        bound_usd: f64,
    ) -> (Outcome, Result<ChatResponse, Failure>) {
        let code = status.as_u16();
        let error = match answer {
            Ok(assembly) => {
                let response = self.response(
                    assembly.content,
                    assembly.finish_reason,
                    assembly.model,
                    assembly.usage,
                    (request.prompt_tokens_upper_bound(), request.max_tokens()),
                    hash,
                );
                let outcome = Outcome {
                    http_status: Some(code),
                    cost_usd: response.cost_usd,
                    body: Some(self.redact(&String::from_utf8_lossy(body))),
                };
                return (outcome, Ok(response));
            }
            Err(StreamProblem::Stalled { idle }) => Error::StreamStalled { idle },
            Err(StreamProblem::ServerError(message)) => Error::Server {
                status: code,
                message: format!("error inside the stream: {message}"),
            },
            Err(StreamProblem::Malformed(detail)) => Error::MalformedResponse {
                status: code,
                detail,
            },
            Err(StreamProblem::CutOff) => Error::MalformedResponse {
                status: code,
                detail: "stream ended without data: [DONE]".into(),
            },
        };
        (Outcome::unknown(Some(code), bound_usd), Err(error.into()))
    }
}

impl ChatBackend for LlmClient {
    fn complete(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatResponse>> {
        Box::pin(self.chat(request))
    }
}

/// Why a streamed 200 did not produce an answer.
enum StreamProblem {
    /// No data event for this long.
    Stalled { idle: Duration },
    /// The server sent an `error` object inside the stream.
    ServerError(String),
    /// A data event that is not a chunk.
    Malformed(String),
    /// The body ended without `data: [DONE]`.
    CutOff,
}

/// What one HTTP exchange produced.
enum Sent {
    Invalid(Error),
    TimedOut,
    Transport {
        never_sent: bool,
        message: String,
    },
    BodyLost {
        status: StatusCode,
        message: String,
    },
    Answered {
        status: StatusCode,
        headers: HeaderMap,
        body: Vec<u8>,
    },
    /// A 2xx SSE body, read to its end (or to the problem that ended it).
    Streamed {
        status: StatusCode,
        body: Vec<u8>,
        answer: Result<StreamAssembly, StreamProblem>,
    },
}

/// How an attempt is recorded.
struct Outcome {
    http_status: Option<u16>,
    cost_usd: f64,
    body: Option<String>,
}

impl Outcome {
    fn free(http_status: Option<u16>) -> Self {
        Self {
            http_status,
            cost_usd: 0.0,
            body: None,
        }
    }
    fn unknown(http_status: Option<u16>, cost_usd: f64) -> Self {
        Self {
            http_status,
            cost_usd,
            body: None,
        }
    }
}

/// A completion's `logprobs` object (parallel lists, as OpenAI's legacy API and vLLM send
/// them) as one entry per token. `top_logprobs` entries are `{token: logprob}` maps, `null`
/// where the server has none (the first echoed token).
fn completion_logprobs(
    logprobs: &async_openai::types::chat::Logprobs,
) -> Result<Vec<TokenLogprob>, String> {
    let n = logprobs.tokens.len();
    if logprobs.token_logprobs.len() != n {
        return Err(format!(
            "logprobs: {n} tokens but {} token_logprobs",
            logprobs.token_logprobs.len()
        ));
    }
    let offsets = &logprobs.text_offset;
    if !offsets.is_empty() && offsets.len() != n {
        return Err(format!(
            "logprobs: {n} tokens but {} text_offset entries",
            offsets.len()
        ));
    }
    let tops = &logprobs.top_logprobs;
    if !tops.is_empty() && tops.len() != n {
        return Err(format!(
            "logprobs: {n} tokens but {} top_logprobs entries",
            tops.len()
        ));
    }
    (0..n)
        .map(|i| {
            let mut top_logprobs = Vec::new();
            match tops.get(i) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::Object(map)) => {
                    for (token, logprob) in map {
                        let logprob = logprob.as_f64().ok_or_else(|| {
                            format!("logprobs.top_logprobs[{i}][{token:?}] is not a number")
                        })?;
                        top_logprobs.push(TopLogprob {
                            token: token.clone(),
                            logprob: logprob as f32,
                        });
                    }
                    // JSON objects carry no order: most likely first.
                    top_logprobs.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
                }
                Some(other) => {
                    return Err(format!(
                        "logprobs.top_logprobs[{i}] is neither an object nor null: {other}"
                    ));
                }
            }
            Ok(TokenLogprob {
                token: logprobs.tokens[i].clone(),
                logprob: logprobs.token_logprobs[i],
                text_offset: offsets.get(i).copied(),
                top_logprobs,
            })
        })
        .collect()
}

/// The server's wait request: `retry-after-ms` (OpenAI), else `Retry-After` as seconds
/// (integer or decimal) or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = text(RETRY_AFTER.as_str())?;
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn truncate_counts_chars() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hi", 2), "hi");
    }
}
