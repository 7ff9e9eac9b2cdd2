//! The axum router: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions`
//! (JSON or SSE), `GET /health`, and OpenAI-shaped errors for everything else.

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

use crate::engine::{Engine, EngineOptions, Event, GenerationRequest, Sampling};
use crate::error::{Error, Result};
use crate::openai::{
    ApiError, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChunkChoice,
    Delta, ModelCard, ResponseMessage, Usage, ValidatedRequest,
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
    context_length: usize,
    engine: Engine,
    next_id: AtomicU64,
    id_prefix: u64,
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
        let context_length = model.config().max_position_embeddings;
        let engine = Engine::start(model, options.engine)?;
        Ok(Self {
            state: Arc::new(AppState {
                model_name: options.model_name,
                created: unix_now(),
                template,
                tokenizer,
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

/// A request accepted by the engine.
struct Accepted {
    id: String,
    created: u64,
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
        let accepted = self.accept(request)?;
        Ok(if stream {
            self.stream_response(accepted).into_response()
        } else {
            self.collect_response(accepted).await?.into_response()
        })
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
        let context = self.context_length;
        let context_error = |param: &str, requested: usize| ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::bad_request(
                param,
                format!(
                    "This model's maximum context length is {context} tokens. However, you requested \
                     {requested} tokens ({} in the messages, {} in the completion). Please reduce the \
                     length of the messages or completion.",
                    prompt.len(),
                    requested.saturating_sub(prompt.len()),
                ),
            )
        };
        if prompt.len() >= context {
            return Err(context_error("messages", prompt.len() + 1));
        }
        let max_tokens = match request.max_tokens {
            Some(n) if prompt.len() + n as usize > context => {
                return Err(context_error("max_tokens", prompt.len() + n as usize));
            }
            Some(n) => n as usize,
            None => context - prompt.len(),
        };
        let prompt_tokens = prompt.len();
        let generation = GenerationRequest {
            prompt,
            sampling: Sampling::new(request.temperature, request.top_p),
            seed: request.seed.unwrap_or_else(rand::random),
            max_tokens,
            stop: request.stop,
        };
        let events = self
            .engine
            .submit(generation)
            .map_err(|full| ApiError::overloaded(full.queued))?;
        let serial = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Accepted {
            id: format!("chatcmpl-{:016x}{serial:08x}", self.id_prefix),
            created: unix_now(),
            prompt_tokens,
            include_usage: request.include_usage,
            events,
            started: Instant::now(),
        })
    }

    async fn collect_response(
        &self,
        mut accepted: Accepted,
    ) -> Result<axum::Json<ChatCompletion>, ApiError> {
        let mut content = String::new();
        while let Some(event) = accepted.events.recv().await {
            match event {
                Event::Delta(delta) => content.push_str(&delta),
                Event::Failed(message) => return Err(ApiError::internal(message)),
                Event::Done {
                    finish_reason,
                    completion_tokens,
                } => {
                    let usage = Usage::new(accepted.prompt_tokens, completion_tokens);
                    log_done(&accepted, &usage, false);
                    return Ok(axum::Json(ChatCompletion {
                        id: accepted.id,
                        object: "chat.completion",
                        created: accepted.created,
                        model: self.model_name.clone(),
                        system_fingerprint: None,
                        choices: vec![Choice {
                            index: 0,
                            message: ResponseMessage {
                                role: "assistant",
                                content,
                                refusal: None,
                            },
                            logprobs: None,
                            finish_reason: finish_reason_name(finish_reason),
                        }],
                        usage,
                    }));
                }
            }
        }
        Err(ApiError::internal(
            "the model thread stopped before answering",
        ))
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
        "chat completion"
    );
}
