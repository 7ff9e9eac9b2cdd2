//! The axum router: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions`
//! (JSON or SSE), `POST /v1/completions` (JSON), `GET /health`, and OpenAI-shaped errors for
//! everything else.
//!
//! Log-probabilities (`logprobs` on either route, `echo` on completions) come from one
//! teacher-forced forward pass over prompt + answer on the model thread after decoding, so
//! they are the model's raw distribution (before temperature and top-p) at each position:
//! what vLLM returns by default.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use futures_util::stream;
use llama::generate::FinishReason;
use llama::{ChatMessage, ChatTemplate, Pretrained, Tokenizer};
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;

use llama::loglikelihood::PositionLogprobs;

use crate::engine::{
    Constraint, Engine, EngineOptions, Event, GenerationRequest, Sampling, ScoreRequest,
};
use crate::error::{Error, Result};
use crate::json_constraint::TokenMask;
use crate::openai::{
    ApiError, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChoiceLogprobs,
    ChunkChoice, CompletionChoice, CompletionLogprobs, CompletionRequest, Delta, ModelCard,
    PromptInput, ResponseMessage, TextCompletion, TokenLogprob, TopLogprob, Usage,
    ValidatedRequest,
};

/// Server settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerOptions {
    /// The name clients put in `model`; any other name gets 404 `model_not_found`.
    pub model_name: String,
    pub engine: EngineOptions,
}

/// The OpenAI-compatible server over one loaded model.
pub struct Server {
    state: Arc<AppState>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("model_name", &self.state.model_name)
            .field("engine", &self.state.engine)
            .finish_non_exhaustive()
    }
}

struct AppState {
    model_name: String,
    created: u64,
    template: ChatTemplate,
    tokenizer: Tokenizer,
    /// The vocabulary's bytes for structured outputs; `None` when the tokenizer is not
    /// byte-level BPE (then `response_format` JSON requests are refused).
    token_mask: Option<Arc<TokenMask>>,
    context_length: usize,
    engine: Engine,
    next_id: AtomicU64,
    id_prefix: u64,
}

/// How a request's tokens are chosen.
struct Decoding {
    sampling: Sampling,
    seed: Option<u64>,
    stop: Vec<String>,
    constraint: Option<Constraint>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Server {
    /// Starts the model thread for `model` (it needs a chat template).
    pub fn new(model: Pretrained, options: ServerOptions) -> Result<Self> {
        if options.model_name.trim().is_empty() {
            return Err(Error::InvalidOption {
                option: "model_name",
                reason: "must not be empty".into(),
            });
        }
        let template = model
            .tokenizer
            .chat_template()
            .map_err(Error::ChatTemplate)?
            .ok_or(Error::NoChatTemplate)?;
        let tokenizer = model.tokenizer.clone();
        let token_mask = match tokenizer.token_bytes() {
            Ok(bytes) => Some(Arc::new(TokenMask::new(bytes, &model.stop_token_ids()))),
            Err(error) => {
                tracing::warn!("structured outputs are off for this model: {error}");
                None
            }
        };
        let context_length = model.config().max_position_embeddings;
        let engine = Engine::start(model, options.engine)?;
        Ok(Self {
            state: Arc::new(AppState {
                model_name: options.model_name,
                created: unix_now(),
                template,
                tokenizer,
                token_mask,
                context_length,
                engine,
                next_id: AtomicU64::new(0),
                id_prefix: rand::random(),
            }),
        })
    }

    pub fn model_name(&self) -> &str {
        &self.state.model_name
    }

    /// The model thread's counters (batches, requests, largest batch).
    pub fn stats(&self) -> Arc<crate::EngineStats> {
        self.state.engine.stats()
    }

    /// The routes, for embedding in another axum app or serving directly.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/models", get(list_models))
            .route("/v1/models/{id}", get(get_model))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/completions", post(completions))
            .route("/health", get(|| async { "ok" }))
            .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
            .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
            .with_state(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting, lets open
    /// requests and streams finish, and stops the model thread.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let router = self.router();
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| Error::Serve { source });
        // Joining the model thread blocks until its batch ends: not on an async worker.
        let state = self.state;
        let _ = tokio::task::spawn_blocking(move || drop(state)).await;
        served
    }
}

async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "object": "list",
        "data": [state.model_card()],
    }))
    .into_response()
}

async fn get_model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == state.model_name {
        axum::Json(state.model_card()).into_response()
    } else {
        ApiError::model_not_found(&id).into_response()
    }
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    match state.chat(&body).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(status = error.status.as_u16(), param = ?error.param, "{}", error.message);
            error.into_response()
        }
    }
}

async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    match state.completion(&body).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(status = error.status.as_u16(), param = ?error.param, "{}", error.message);
            error.into_response()
        }
    }
}

/// A request accepted by the engine.
struct Accepted {
    id: String,
    created: u64,
    prompt: Vec<u32>,
    prompt_tokens: usize,
    include_usage: bool,
    events: UnboundedReceiver<Event>,
    started: Instant,
}

impl AppState {
    fn model_card(&self) -> ModelCard {
        ModelCard {
            id: self.model_name.clone(),
            object: "model",
            created: self.created,
            owned_by: "tuneloop",
        }
    }

    async fn chat(self: &Arc<Self>, body: &[u8]) -> Result<Response, ApiError> {
        let request = ChatCompletionRequest::parse(body)?;
        if request.model != self.model_name {
            return Err(ApiError::model_not_found(&request.model));
        }
        let request = request.validate()?;
        let stream = request.stream;
        let logprobs = request.logprobs;
        let accepted = self.accept(request)?;
        Ok(if stream {
            self.stream_response(accepted).into_response()
        } else {
            self.collect_response(accepted, logprobs)
                .await?
                .into_response()
        })
    }

    /// `POST /v1/completions`: the prompt as given (no chat template), optionally echoed and
    /// scored.
    async fn completion(self: &Arc<Self>, body: &[u8]) -> Result<Response, ApiError> {
        let request = CompletionRequest::parse(body)?;
        if request.model != self.model_name {
            return Err(ApiError::model_not_found(&request.model));
        }
        let request = request.validate()?;
        // The prompt's tokens and, for echo, where each starts in the prompt's text.
        let (prompt_text, prompt, prompt_offsets) = match &request.prompt {
            PromptInput::Text(text) => {
                let encoding = self
                    .tokenizer
                    .inner()
                    .encode(text.as_str(), false)
                    .map_err(|e| {
                        ApiError::internal(format!("tokenising the prompt failed: {e}"))
                    })?;
                let offsets = encoding
                    .get_offsets()
                    .iter()
                    .map(|&(start, _)| char_offset(text, start))
                    .collect::<Vec<u32>>();
                (text.clone(), encoding.get_ids().to_vec(), offsets)
            }
            PromptInput::Tokens(ids) => {
                let vocab = self.tokenizer.vocab_size();
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(ApiError::bad_request(
                        "prompt",
                        format!("Token id {bad} is outside the vocabulary of {vocab}."),
                    ));
                }
                let text = self.decode(ids)?;
                (text, ids.clone(), self.decoded_offsets(ids)?)
            }
        };
        if prompt.is_empty() {
            return Err(ApiError::bad_request(
                "prompt",
                "The prompt tokenises to no tokens.",
            ));
        }
        let (generated, finish_reason, completion_tokens, tokens, id) = if request.max_tokens > 0 {
            let accepted = self.queue(
                prompt.clone(),
                Some(request.max_tokens),
                Decoding {
                    sampling: Sampling::new(request.temperature, request.top_p),
                    seed: request.seed,
                    stop: request.stop,
                    constraint: None,
                },
                false,
                ("cmpl", "prompt"),
            )?;
            let id = accepted.id.clone();
            let answer = self.collect(accepted).await?;
            (
                answer.content,
                answer.finish_reason,
                answer.completion_tokens,
                answer.tokens,
                id,
            )
        } else {
            if prompt.len() > self.context_length {
                return Err(self.context_error("prompt", prompt.len(), prompt.len()));
            }
            let serial = self.next_id.fetch_add(1, Ordering::Relaxed);
            let id = format!("cmpl-{:016x}{serial:08x}", self.id_prefix);
            (String::new(), FinishReason::Length, 0, Vec::new(), id)
        };
        let logprobs = match request.logprobs {
            None => None,
            Some(top) => {
                let answer = self.answer_tokens(&generated, &tokens)?;
                let from = if request.echo { 1 } else { prompt.len() };
                let mut sequence = prompt.clone();
                sequence.extend_from_slice(answer);
                let scored = self.score(sequence, from, top).await?;
                let answer_start = if request.echo {
                    prompt_text.chars().count() as u32
                } else {
                    0
                };
                let answer_offsets = self.decoded_offsets(answer)?;
                let offset = |position: usize| {
                    if position < prompt.len() {
                        prompt_offsets[position]
                    } else {
                        answer_start + answer_offsets[position - prompt.len()]
                    }
                };
                let mut out = CompletionLogprobs::default();
                if request.echo {
                    out.tokens.push(self.token_text(prompt[0]));
                    out.token_logprobs.push(None);
                    out.top_logprobs.push(None);
                    out.text_offset.push(offset(0));
                }
                for (index, position) in scored.iter().enumerate() {
                    out.tokens.push(self.token_text(position.token));
                    out.token_logprobs.push(Some(position.logprob));
                    let mut top = serde_json::Map::new();
                    for &(id, logprob) in &position.top {
                        // Two ids may show as the same text: the likelier one is kept.
                        top.entry(self.token_text(id))
                            .or_insert(serde_json::json!(logprob));
                    }
                    out.top_logprobs.push(Some(top));
                    out.text_offset.push(offset(from + index));
                }
                Some(out)
            }
        };
        let text = if request.echo {
            format!("{prompt_text}{generated}")
        } else {
            generated
        };
        let usage = Usage::new(prompt.len(), completion_tokens);
        tracing::info!(
            id,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            echo = request.echo,
            logprobs = ?request.logprobs,
            "completion"
        );
        Ok(axum::Json(TextCompletion {
            id,
            object: "text_completion",
            created: unix_now(),
            model: self.model_name.clone(),
            system_fingerprint: None,
            choices: vec![CompletionChoice {
                index: 0,
                text,
                logprobs,
                finish_reason: finish_reason_name(finish_reason),
            }],
            usage,
        })
        .into_response())
    }

    /// Log-probabilities of `tokens[from..]` with `top` alternatives, from the model thread.
    async fn score(
        &self,
        tokens: Vec<u32>,
        from: usize,
        top: u8,
    ) -> Result<Vec<PositionLogprobs>, ApiError> {
        let reply = self
            .engine
            .submit_score(ScoreRequest {
                tokens,
                from,
                top_k: usize::from(top),
            })
            .map_err(|full| ApiError::overloaded(full.queued))?;
        reply
            .await
            .map_err(|_| ApiError::internal("the model thread stopped before answering"))?
            .map_err(ApiError::internal)
    }

    /// The generated tokens that make up `content`: all of them, unless a stop string cut
    /// the text, then the shortest prefix whose text covers `content`.
    fn answer_tokens<'t>(&self, content: &str, tokens: &'t [u32]) -> Result<&'t [u32], ApiError> {
        if self.decode(tokens)? == content {
            return Ok(tokens);
        }
        for end in 0..=tokens.len() {
            if self.decode(&tokens[..end])?.len() >= content.len() {
                return Ok(&tokens[..end]);
            }
        }
        Ok(tokens)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, ApiError> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| ApiError::internal(format!("decoding tokens failed: {e}")))
    }

    /// A token's text as shown in log-probabilities (special tokens by name).
    fn token_text(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// Where each of `ids` starts, in characters, in the decode of all of them.
    fn decoded_offsets(&self, ids: &[u32]) -> Result<Vec<u32>, ApiError> {
        (0..ids.len())
            .map(|end| Ok(self.decode(&ids[..end])?.chars().count() as u32))
            .collect()
    }

    /// 400 `context_length_exceeded` for `prompt_len` tokens plus an answer, `requested` in all.
    fn context_error(&self, param: &str, prompt_len: usize, requested: usize) -> ApiError {
        let context = self.context_length;
        ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::bad_request(
                param,
                format!(
                    "This model's maximum context length is {context} tokens. However, you requested \
                     {requested} tokens ({prompt_len} in the prompt, {} in the completion). Please reduce the \
                     length of the prompt or completion.",
                    requested.saturating_sub(prompt_len),
                ),
            )
        }
    }

    /// Renders and tokenises the conversation, checks the context window, queues the request.
    fn accept(&self, request: ValidatedRequest) -> Result<Accepted, ApiError> {
        let mut messages: Vec<ChatMessage> = request
            .turns
            .iter()
            .map(|t| ChatMessage::new(&t.role, &t.content))
            .collect();
        if let Some(instruction) = &request.json_instruction {
            match messages.first_mut() {
                Some(first) if first.role == "system" => {
                    first.content = format!("{}\n\n{instruction}", first.content);
                }
                _ => messages.insert(0, ChatMessage::system(instruction.clone())),
            }
        }
        let text = self.template.render(&messages, true).map_err(|e| {
            ApiError::bad_request(
                "messages",
                format!("The chat template rejected the messages: {e}"),
            )
        })?;
        // The template writes any BOS itself.
        let prompt = self
            .tokenizer
            .encode(&text, false)
            .map_err(|e| ApiError::internal(format!("tokenising the prompt failed: {e}")))?;
        let constraint = match (request.json_grammar, &self.token_mask) {
            (None, _) => None,
            (Some(grammar), Some(tokens)) => Some(Constraint {
                grammar,
                tokens: tokens.clone(),
            }),
            (Some(_), None) => {
                return Err(ApiError::unsupported(
                    "response_format",
                    "structured outputs need a byte-level BPE tokenizer, and this model's is not",
                ));
            }
        };
        self.queue(
            prompt,
            request.max_tokens,
            Decoding {
                sampling: Sampling::new(request.temperature, request.top_p),
                seed: request.seed,
                stop: request.stop,
                constraint,
            },
            request.include_usage,
            ("chatcmpl", "messages"),
        )
    }

    /// Checks the context window and queues a generation. `(id_prefix, prompt_param)`: the
    /// response id's prefix and the request field that holds the prompt (for errors).
    fn queue(
        &self,
        prompt: Vec<u32>,
        max_tokens: Option<u32>,
        decoding: Decoding,
        include_usage: bool,
        (id_prefix, prompt_param): (&str, &str),
    ) -> Result<Accepted, ApiError> {
        let context = self.context_length;
        if prompt.len() >= context {
            return Err(self.context_error(prompt_param, prompt.len(), prompt.len() + 1));
        }
        let max_tokens = match max_tokens {
            Some(n) if prompt.len() + n as usize > context => {
                return Err(self.context_error(
                    "max_tokens",
                    prompt.len(),
                    prompt.len() + n as usize,
                ));
            }
            Some(n) => n as usize,
            None => context - prompt.len(),
        };
        let prompt_tokens = prompt.len();
        let generation = GenerationRequest {
            prompt: prompt.clone(),
            sampling: decoding.sampling,
            seed: decoding.seed.unwrap_or_else(rand::random),
            max_tokens,
            stop: decoding.stop,
            constraint: decoding.constraint,
        };
        let events = self
            .engine
            .submit(generation)
            .map_err(|full| ApiError::overloaded(full.queued))?;
        let serial = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Accepted {
            id: format!("{id_prefix}-{:016x}{serial:08x}", self.id_prefix),
            created: unix_now(),
            prompt,
            prompt_tokens,
            include_usage,
            events,
            started: Instant::now(),
        })
    }

    /// Waits for a queued generation to finish.
    async fn collect(&self, mut accepted: Accepted) -> Result<Collected, ApiError> {
        let mut content = String::new();
        while let Some(event) = accepted.events.recv().await {
            match event {
                Event::Delta(delta) => content.push_str(&delta),
                Event::Failed(message) => return Err(ApiError::internal(message)),
                Event::Done {
                    finish_reason,
                    completion_tokens,
                    tokens,
                } => {
                    let usage = Usage::new(accepted.prompt_tokens, completion_tokens);
                    log_done(&accepted, &usage, false);
                    return Ok(Collected {
                        accepted,
                        content,
                        finish_reason,
                        completion_tokens,
                        tokens,
                    });
                }
            }
        }
        Err(ApiError::internal(
            "the model thread stopped before answering",
        ))
    }

    async fn collect_response(
        &self,
        accepted: Accepted,
        logprobs: Option<u8>,
    ) -> Result<axum::Json<ChatCompletion>, ApiError> {
        let answer = self.collect(accepted).await?;
        let logprobs = match logprobs {
            None => None,
            Some(top) => {
                let tokens = self.answer_tokens(&answer.content, &answer.tokens)?;
                let prompt = &answer.accepted.prompt;
                let mut sequence = prompt.clone();
                sequence.extend_from_slice(tokens);
                let scored = self.score(sequence, prompt.len(), top).await?;
                let entry = |id: u32| {
                    let token = self.token_text(id);
                    let bytes = token.as_bytes().to_vec();
                    (token, bytes)
                };
                let content = scored
                    .iter()
                    .map(|position| {
                        let (token, bytes) = entry(position.token);
                        TokenLogprob {
                            token,
                            logprob: position.logprob,
                            bytes,
                            top_logprobs: position
                                .top
                                .iter()
                                .map(|&(id, logprob)| {
                                    let (token, bytes) = entry(id);
                                    TopLogprob {
                                        token,
                                        logprob,
                                        bytes,
                                    }
                                })
                                .collect(),
                        }
                    })
                    .collect();
                Some(ChoiceLogprobs {
                    content,
                    refusal: None,
                })
            }
        };
        Ok(axum::Json(ChatCompletion {
            id: answer.accepted.id,
            object: "chat.completion",
            created: answer.accepted.created,
            model: self.model_name.clone(),
            system_fingerprint: None,
            choices: vec![Choice {
                index: 0,
                message: ResponseMessage {
                    role: "assistant",
                    content: answer.content,
                    refusal: None,
                },
                logprobs,
                finish_reason: finish_reason_name(answer.finish_reason),
            }],
            usage: Usage::new(answer.accepted.prompt_tokens, answer.completion_tokens),
        }))
    }

    /// SSE: a role chunk at once, a chunk per text delta, a chunk with `finish_reason`, a usage
    /// chunk when asked, then `data: [DONE]`. A failure midway is sent as an `error` object and
    /// the stream ends without `[DONE]`.
    fn stream_response(
        self: &Arc<Self>,
        accepted: Accepted,
    ) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>> + use<>> {
        let frame = ChunkFrame {
            id: accepted.id.clone(),
            created: accepted.created,
            model: self.model_name.clone(),
            include_usage: accepted.include_usage,
        };
        let first = frame.event(
            vec![ChunkChoice {
                index: 0,
                delta: Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                },
                logprobs: None,
                finish_reason: None,
            }],
            None,
        );
        let rest = stream::unfold(Some((accepted, frame)), |state| async move {
            let (mut accepted, frame) = state?;
            let (events, more) = match accepted.events.recv().await {
                Some(Event::Delta(text)) => (
                    vec![frame.event(
                        vec![ChunkChoice {
                            index: 0,
                            delta: Delta {
                                role: None,
                                content: Some(text),
                            },
                            logprobs: None,
                            finish_reason: None,
                        }],
                        None,
                    )],
                    true,
                ),
                Some(Event::Done {
                    finish_reason,
                    completion_tokens,
                    ..
                }) => {
                    let usage = Usage::new(accepted.prompt_tokens, completion_tokens);
                    log_done(&accepted, &usage, true);
                    let mut events = vec![frame.event(
                        vec![ChunkChoice {
                            index: 0,
                            delta: Delta::default(),
                            logprobs: None,
                            finish_reason: Some(finish_reason_name(finish_reason)),
                        }],
                        None,
                    )];
                    if frame.include_usage {
                        events.push(frame.event(Vec::new(), Some(usage)));
                    }
                    events.push(SseEvent::default().data("[DONE]"));
                    (events, false)
                }
                Some(Event::Failed(message)) => {
                    (vec![error_event(&ApiError::internal(message))], false)
                }
                None => (
                    vec![error_event(&ApiError::internal(
                        "the model thread stopped before answering",
                    ))],
                    false,
                ),
            };
            let next = more.then_some((accepted, frame));
            Some((stream::iter(events.into_iter().map(Ok)), next))
        })
        .flatten();
        Sse::new(stream::once(async move { Ok(first) }).chain(rest))
            .keep_alive(KeepAlive::default())
    }
}

/// A finished generation.
struct Collected {
    accepted: Accepted,
    content: String,
    finish_reason: FinishReason,
    completion_tokens: usize,
    tokens: Vec<u32>,
}

/// The character offset of byte `byte` in `text` (a tokenizer's offsets are in bytes; OpenAI's
/// `text_offset` counts characters).
fn char_offset(text: &str, byte: usize) -> u32 {
    let mut byte = byte.min(text.len());
    while !text.is_char_boundary(byte) {
        byte -= 1;
    }
    text[..byte].chars().count() as u32
}

/// The fields every chunk of one stream shares.
struct ChunkFrame {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl ChunkFrame {
    fn event(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> SseEvent {
        let chunk = ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage: self.include_usage.then_some(usage),
        };
        SseEvent::default().data(serde_json::to_string(&chunk).expect("a chunk serialises"))
    }
}

fn error_event(error: &ApiError) -> SseEvent {
    SseEvent::default().data(error.body().to_string())
}

fn finish_reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn log_done(accepted: &Accepted, usage: &Usage, stream: bool) {
    tracing::info!(
        id = accepted.id,
        stream,
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        elapsed_ms = accepted.started.elapsed().as_millis() as u64,
        "answered"
    );
}
