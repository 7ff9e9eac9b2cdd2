//! The OpenAI wire format: the chat and text completion requests as clients send them (parsed
//! leniently where OpenAI is lenient, strictly where a silent misreading would change the
//! answer), the responses with their log-probabilities, the stream chunk and the error body.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::http::header::{HeaderValue, RETRY_AFTER};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::json_constraint::JsonGrammar;

/// An error as OpenAI sends it: `{"error": {"message", "type", "param", "code"}}` with a status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `invalid_request_error`, `server_error`, ...
    pub kind: &'static str,
    /// The request field at fault (`messages[1].content`, `temperature`), if one is.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 naming the field at fault.
    pub fn bad_request(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }

    /// 400 for a parameter this server does not implement (rather than ignoring it).
    pub fn unsupported(param: &str, why: &str) -> Self {
        Self {
            code: Some("unsupported_parameter"),
            ..Self::bad_request(
                param,
                format!("'{param}' is not supported by this server: {why}"),
            )
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist or you do not have access to it."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn not_found(path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("Unknown request URL: {path}."),
            kind: "invalid_request_error",
            param: None,
            code: Some("unknown_url"),
        }
    }

    pub fn method_not_allowed() -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "Method not allowed for this URL.".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("method_not_allowed"),
        }
    }

    /// 503: the request queue is full; comes with `Retry-After: 1`.
    pub fn overloaded(queued: usize) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "The server is overloaded ({queued} requests queued); please retry shortly."
            ),
            kind: "server_error",
            param: None,
            code: Some("server_overloaded"),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The JSON body (also sent as an SSE `data:` line when a stream fails midway).
    pub fn body(&self) -> Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// `stop`: one string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Clone, Deserialize)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// A message's content: a string or a list of parts (only `text` parts are accepted).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RequestMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub tool_calls: Option<Value>,
}

/// `POST /v1/chat/completions` as sent. Fields OpenAI defines that change nothing here (`user`,
/// `metadata`, `store`, `service_tier`, ...) are ignored; fields that would change the answer
/// and are not implemented are rejected with 400 in [`ChatCompletionRequest::validate`].
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<RequestMessage>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    /// OpenAI's seed is a signed 64-bit integer.
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub functions: Option<Vec<Value>>,
}

/// A chat turn after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

/// What the engine needs from a request, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedRequest {
    pub turns: Vec<Turn>,
    /// `None`: up to the context window.
    pub max_tokens: Option<u32>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// An instruction added as a system message for `json_object` / `json_schema`, so the
    /// model knows what to write ...
    pub json_instruction: Option<String>,
    /// ... and the grammar that decoding enforces.
    pub json_grammar: Option<Arc<JsonGrammar>>,
    /// `logprobs: true`: return each answer token's log-probability with this many most
    /// likely alternatives (`top_logprobs`, default 0).
    pub logprobs: Option<u8>,
}

/// Most alternatives per position for chat `top_logprobs` and completion `logprobs`
/// (OpenAI's chat limit; vLLM's default limit too).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;

/// Parses a request body; a wrong field is named (`messages[0].content`, `temperature`).
/// `what` names the request kind in messages ("chat completion", "completion").
fn parse_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                let message = if body.iter().all(u8::is_ascii_whitespace) {
                    format!("The request body is empty; send a JSON {what} request.")
                } else {
                    format!("The request body is not valid JSON: {inner}")
                };
                return ApiError {
                    param: None,
                    ..ApiError::bad_request("", message)
                };
            }
            let text = inner.to_string();
            // A missing field is reported at its parent's path: name the field itself.
            let missing = text
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next());
            let param = match (missing, path.as_str()) {
                (Some(field), ".") => field.to_owned(),
                (Some(field), parent) => format!("{parent}.{field}"),
                (None, _) => path,
            };
            if param == "." {
                ApiError {
                    param: None,
                    ..ApiError::bad_request(
                        "",
                        format!("The request body is not a {what} request: {text}"),
                    )
                }
            } else {
                ApiError::bad_request(
                    param.clone(),
                    format!("Invalid value for '{param}': {text}"),
                )
            }
        })
    }
}

/// `temperature` (default 1, in 0..=2) and `top_p` (default 1, in (0, 1]).
fn sampling(temperature: Option<f32>, top_p: Option<f32>) -> Result<(f32, f32), ApiError> {
    let temperature = temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(
            "temperature",
            format!("'temperature' must be between 0 and 2, got {temperature}."),
        ));
    }
    let top_p = top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request(
            "top_p",
            format!("'top_p' must be in (0, 1], got {top_p}."),
        ));
    }
    Ok((temperature, top_p))
}

/// `stop`: at most [`MAX_STOP_STRINGS`] non-empty strings.
fn stop_strings(stop: &Option<Stop>) -> Result<Vec<String>, ApiError> {
    let stop = match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(list)) => list.clone(),
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::bad_request(
            "stop",
            format!(
                "'stop' has {} entries; at most {MAX_STOP_STRINGS} are allowed.",
                stop.len()
            ),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::bad_request(
            "stop",
            "'stop' strings must not be empty.",
        ));
    }
    Ok(stop)
}

/// `n` (and `best_of`) must be 1: one choice per request.
fn one_choice(param: &str, n: Option<u32>) -> Result<(), ApiError> {
    match n {
        Some(n) if n != 1 => Err(ApiError::bad_request(
            param,
            format!(
                "{param} = {n} is not supported: this server returns exactly one choice per request; \
                 send separate requests with different seeds instead."
            ),
        )),
        _ => Ok(()),
    }
}

/// Non-zero penalties and a non-empty `logit_bias` would change the answer: refused.
fn no_logit_changes(
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    logit_bias: &Option<serde_json::Map<String, Value>>,
) -> Result<(), ApiError> {
    for (param, value) in [
        ("frequency_penalty", frequency_penalty),
        ("presence_penalty", presence_penalty),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(ApiError::unsupported(
                param,
                "only 0 (no penalty) is implemented",
            ));
        }
    }
    if logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(ApiError::unsupported("logit_bias", "logits are not biased"));
    }
    Ok(())
}

impl ChatCompletionRequest {
    /// Parses a request body; a wrong field is named (`messages[0].content`, `temperature`).
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        parse_body(body, "chat completion")
    }

    /// Checks every field against what this server implements.
    pub fn validate(&self) -> Result<ValidatedRequest, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad_request(
                "messages",
                "'messages' must contain at least one message.",
            ));
        }
        let mut turns = Vec::with_capacity(self.messages.len());
        for (index, message) in self.messages.iter().enumerate() {
            turns.push(validate_message(index, message)?);
        }
        one_choice("n", self.n)?;
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if max_tokens == Some(0) {
            let field = if self.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(ApiError::bad_request(
                field,
                format!("'{field}' must be at least 1."),
            ));
        }
        let (temperature, top_p) = sampling(self.temperature, self.top_p)?;
        let stop = stop_strings(&self.stop)?;
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::bad_request(
                "stream_options",
                "'stream_options' is only allowed when 'stream' is true.",
            ));
        }
        let include_usage = self
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let logprobs = match (self.logprobs == Some(true), self.top_logprobs) {
            (_, Some(n)) if n > MAX_TOP_LOGPROBS => {
                return Err(ApiError::bad_request(
                    "top_logprobs",
                    format!("'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}, got {n}."),
                ));
            }
            (false, Some(_)) => {
                return Err(ApiError::bad_request(
                    "top_logprobs",
                    "'top_logprobs' requires 'logprobs' to be true.",
                ));
            }
            (true, top) => Some(top.unwrap_or(0) as u8),
            (false, None) => None,
        };
        if logprobs.is_some() && stream {
            return Err(ApiError::unsupported(
                "logprobs",
                "log-probabilities are returned with non-streamed answers only",
            ));
        }
        no_logit_changes(
            self.frequency_penalty,
            self.presence_penalty,
            &self.logit_bias,
        )?;
        for (param, list) in [("tools", &self.tools), ("functions", &self.functions)] {
            if list.as_ref().is_some_and(|l| !l.is_empty()) {
                return Err(ApiError::unsupported(
                    param,
                    "tool calling is not implemented",
                ));
            }
        }
        let (json_instruction, json_grammar) = match &self.response_format {
            None | Some(ResponseFormat::Text) => (None, None),
            Some(ResponseFormat::JsonObject) => (
                Some("Answer with one JSON object and nothing else.".to_owned()),
                Some(Arc::new(JsonGrammar::any_object())),
            ),
            Some(ResponseFormat::JsonSchema { json_schema }) => {
                let schema = json_schema
                    .schema
                    .clone()
                    .unwrap_or_else(|| serde_json::json!({"type": "object"}));
                let grammar = JsonGrammar::from_schema(&schema).map_err(|e| {
                    let param = match e.path.as_str() {
                        "" => "response_format.json_schema.schema".to_owned(),
                        path => format!("response_format.json_schema.schema.{path}"),
                    };
                    let message = format!("This schema cannot be enforced: {}.", e.reason);
                    ApiError::bad_request(param, message)
                })?;
                (
                    Some(format!(
                        "Answer with one JSON object that conforms to this JSON Schema and nothing else:\n{schema}"
                    )),
                    Some(Arc::new(grammar)),
                )
            }
        };
        Ok(ValidatedRequest {
            turns,
            max_tokens,
            temperature,
            top_p,
            // Negative seeds are valid OpenAI seeds; their bits select a stream like any other.
            seed: self.seed.map(|s| s as u64),
            stop,
            stream,
            include_usage,
            json_instruction,
            json_grammar,
            logprobs,
        })
    }
}

/// `prompt` of a completion request: a string, token ids, or lists of them (only one prompt
/// per request is accepted).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CompletionPrompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions` as sent (OpenAI's legacy completions, as vLLM serves them).
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: CompletionPrompt,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub best_of: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub echo: Option<bool>,
    /// Alternatives per position (0 = the chosen token's log-probability only).
    #[serde(default)]
    pub logprobs: Option<u32>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
}

/// The prompt of a validated completion request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// What the server needs from a completion request, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedCompletion {
    pub prompt: PromptInput,
    /// 0 only with `echo` (the prompt scored, nothing generated).
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub echo: bool,
    pub logprobs: Option<u8>,
}

/// OpenAI's default `max_tokens` for completions.
pub const DEFAULT_COMPLETION_TOKENS: u32 = 16;

impl CompletionRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        parse_body(body, "completion")
    }

    pub fn validate(&self) -> Result<ValidatedCompletion, ApiError> {
        let prompt = match &self.prompt {
            CompletionPrompt::Text(text) => PromptInput::Text(text.clone()),
            CompletionPrompt::Tokens(ids) => PromptInput::Tokens(ids.clone()),
            CompletionPrompt::Texts(list) if list.len() == 1 => PromptInput::Text(list[0].clone()),
            CompletionPrompt::TokenLists(list) if list.len() == 1 => {
                PromptInput::Tokens(list[0].clone())
            }
            CompletionPrompt::Texts(list) => return Err(several_prompts(list.len())),
            CompletionPrompt::TokenLists(list) => return Err(several_prompts(list.len())),
        };
        let empty = match &prompt {
            PromptInput::Text(text) => text.is_empty(),
            PromptInput::Tokens(ids) => ids.is_empty(),
        };
        if empty {
            return Err(ApiError::bad_request(
                "prompt",
                "'prompt' must not be empty.",
            ));
        }
        one_choice("n", self.n)?;
        one_choice("best_of", self.best_of)?;
        let echo = self.echo.unwrap_or(false);
        let max_tokens = self.max_tokens.unwrap_or(DEFAULT_COMPLETION_TOKENS);
        if max_tokens == 0 && !echo {
            return Err(ApiError::bad_request(
                "max_tokens",
                "'max_tokens' must be at least 1 (0 is allowed with 'echo', to score the prompt).",
            ));
        }
        let (temperature, top_p) = sampling(self.temperature, self.top_p)?;
        let stop = stop_strings(&self.stop)?;
        if self.stream == Some(true) {
            return Err(ApiError::unsupported(
                "stream",
                "streamed text completions are not implemented (chat completions stream)",
            ));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::unsupported(
                "suffix",
                "insertion is not implemented",
            ));
        }
        let logprobs = match self.logprobs {
            Some(n) if n > MAX_TOP_LOGPROBS => {
                return Err(ApiError::bad_request(
                    "logprobs",
                    format!("'logprobs' must be between 0 and {MAX_TOP_LOGPROBS}, got {n}."),
                ));
            }
            other => other.map(|n| n as u8),
        };
        no_logit_changes(
            self.frequency_penalty,
            self.presence_penalty,
            &self.logit_bias,
        )?;
        Ok(ValidatedCompletion {
            prompt,
            max_tokens,
            temperature,
            top_p,
            seed: self.seed.map(|s| s as u64),
            stop,
            echo,
            logprobs,
        })
    }
}

fn several_prompts(count: usize) -> ApiError {
    ApiError::unsupported(
        "prompt",
        &format!("{count} prompts in one request (send one request per prompt)"),
    )
}

fn validate_message(index: usize, message: &RequestMessage) -> Result<Turn, ApiError> {
    let role = match message.role.as_str() {
        "system" | "user" | "assistant" => message.role.clone(),
        // OpenAI's newer name for system instructions.
        "developer" => "system".to_owned(),
        "tool" | "function" => {
            return Err(ApiError::unsupported(
                &format!("messages[{index}].role"),
                "tool messages need tool calling, which is not implemented",
            ));
        }
        other => {
            return Err(ApiError::bad_request(
                format!("messages[{index}].role"),
                format!(
                    "Invalid role '{other}' in messages[{index}]; expected system, developer, user or assistant."
                ),
            ));
        }
    };
    if message.tool_calls.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::unsupported(
            &format!("messages[{index}].tool_calls"),
            "tool calling is not implemented",
        ));
    }
    let content = match &message.content {
        Some(MessageContent::Text(text)) => text.clone(),
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for (part_index, part) in parts.iter().enumerate() {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(t)) => text.push_str(t),
                    ("text", None) => {
                        return Err(ApiError::bad_request(
                            format!("messages[{index}].content[{part_index}].text"),
                            "A text content part needs a 'text' string.",
                        ));
                    }
                    (other, _) => {
                        return Err(ApiError::unsupported(
                            &format!("messages[{index}].content[{part_index}].type"),
                            &format!("content parts of type '{other}' (only 'text' is accepted)"),
                        ));
                    }
                }
            }
            text
        }
        None => {
            return Err(ApiError::bad_request(
                format!("messages[{index}].content"),
                format!("messages[{index}] has no content."),
            ));
        }
    };
    Ok(Turn { role, content })
}

/// `usage` of a response or the last stream chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens: prompt_tokens as u32,
            completion_tokens: completion_tokens as u32,
            total_tokens: (prompt_tokens + completion_tokens) as u32,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ResponseMessage {
    pub role: &'static str,
    pub content: String,
    pub refusal: Option<String>,
}

/// One of the most likely tokens at a position of a chat answer.
#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// One token of a chat answer with its log-probability.
#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

/// `choices[].logprobs` of a chat completion.
#[derive(Debug, Clone, Serialize)]
pub struct ChoiceLogprobs {
    pub content: Vec<TokenLogprob>,
    pub refusal: Option<Vec<TokenLogprob>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: ResponseMessage,
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: &'static str,
}

/// `choices[].logprobs` of a text completion: parallel lists, one entry per token of
/// `text`; the first token of an echoed prompt has `null` log-probability and alternatives.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<serde_json::Map<String, Value>>>,
    /// Where each token starts in `text`, in characters.
    pub text_offset: Vec<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: &'static str,
}

/// `object: "text_completion"`.
#[derive(Debug, Clone, Serialize)]
pub struct TextCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
}

/// `object: "chat.completion"`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<Value>,
    pub finish_reason: Option<&'static str>,
}

/// `object: "chat.completion.chunk"`. With `include_usage`, every chunk carries `"usage": null`
/// and one last chunk with no choices carries the usage, as OpenAI sends it.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChunkChoice>,
    /// Absent without `include_usage`; `null` on content chunks with it; counts on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// `GET /v1/models` entry.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ValidatedRequest, ApiError> {
        ChatCompletionRequest::parse(json.as_bytes())?.validate()
    }

    #[test]
    fn parses_the_official_shapes() {
        let r = parse(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],
                "max_completion_tokens":5,"max_tokens":9,"temperature":0,"seed":-1,"stop":"\n",
                "stream":true,"stream_options":{"include_usage":true},"n":1,"user":"u1","store":false,
                "response_format":{"type":"json_schema","json_schema":{"name":"s","schema":{"type":"object"},"strict":true}}}"#,
        )
        .unwrap();
        assert_eq!(r.turns[0].role, "system");
        assert_eq!(r.turns[1].content, "Hi there");
        assert_eq!(r.max_tokens, Some(5), "max_completion_tokens wins");
        assert_eq!(r.seed, Some(u64::MAX));
        assert_eq!(r.stop, vec!["\n".to_owned()]);
        assert!(r.stream && r.include_usage);
        assert!(r.json_instruction.unwrap().contains(r#"{"type":"object"}"#));
        let defaults =
            parse(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert_eq!((defaults.temperature, defaults.top_p), (1.0, 1.0));
        assert_eq!(defaults.max_tokens, None);
        assert!(!defaults.stream && defaults.json_instruction.is_none());
    }

    #[test]
    fn bad_fields_are_named() {
        let param = |json: &str| parse(json).unwrap_err().param.unwrap_or_default();
        let base = r#""model":"m","messages":[{"role":"user","content":"x"}]"#;
        assert_eq!(
            param(&format!("{{{base},\"temperature\":\"hot\"}}")),
            "temperature"
        );
        assert_eq!(
            param(&format!("{{{base},\"temperature\":3}}")),
            "temperature"
        );
        assert_eq!(param(&format!("{{{base},\"top_p\":0}}")), "top_p");
        assert_eq!(param(&format!("{{{base},\"n\":2}}")), "n");
        assert_eq!(param(&format!("{{{base},\"max_tokens\":0}}")), "max_tokens");
        assert_eq!(
            param(&format!(
                "{{{base},\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}}"
            )),
            "stop"
        );
        assert_eq!(param(&format!("{{{base},\"stop\":7}}")), "stop");
        assert_eq!(
            param(&format!("{{{base},\"logprobs\":true,\"stream\":true}}")),
            "logprobs"
        );
        assert_eq!(
            param(&format!("{{{base},\"top_logprobs\":2}}")),
            "top_logprobs"
        );
        assert_eq!(
            param(&format!("{{{base},\"logprobs\":true,\"top_logprobs\":21}}")),
            "top_logprobs"
        );
        assert_eq!(
            param(&format!("{{{base},\"stream_options\":{{}}}}")),
            "stream_options"
        );
        assert_eq!(param(r#"{"model":"m","messages":[]}"#), "messages");
        assert_eq!(
            param(r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#),
            "messages[0].role"
        );
        assert_eq!(
            param(r#"{"model":"m","messages":[{"role":"user"}]}"#),
            "messages[0].content"
        );
        assert_eq!(
            param(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#),
            "messages[0].content[0].type"
        );
        assert_eq!(param(r#"{"messages":[]}"#), "model");
        assert_eq!(
            param(r#"{"model":"m","messages":[{"content":"x"}]}"#),
            "messages[0].role"
        );
        assert!(parse("\"text\"").unwrap_err().param.is_none());
        let syntax = parse("{not json").unwrap_err();
        assert_eq!(syntax.status, StatusCode::BAD_REQUEST);
        assert!(syntax.param.is_none());
        assert!(parse("").unwrap_err().message.contains("empty"));
    }

    #[test]
    fn logprobs_are_validated() {
        let base = r#""model":"m","messages":[{"role":"user","content":"x"}]"#;
        let with = parse(&format!("{{{base},\"logprobs\":true,\"top_logprobs\":5}}")).unwrap();
        assert_eq!(with.logprobs, Some(5));
        let bare = parse(&format!("{{{base},\"logprobs\":true}}")).unwrap();
        assert_eq!(bare.logprobs, Some(0));
        let off = parse(&format!("{{{base},\"logprobs\":false}}")).unwrap();
        assert_eq!(off.logprobs, None);
    }

    fn completion(json: &str) -> Result<ValidatedCompletion, ApiError> {
        CompletionRequest::parse(json.as_bytes())?.validate()
    }

    #[test]
    fn completion_requests_parse_like_vllm_and_name_bad_fields() {
        let r = completion(
            r#"{"model":"m","prompt":"2+2=","echo":true,"logprobs":1,"max_tokens":0,
                "temperature":0,"stop":["\n"],"seed":3}"#,
        )
        .unwrap();
        assert_eq!(r.prompt, PromptInput::Text("2+2=".into()));
        assert!(r.echo);
        assert_eq!((r.logprobs, r.max_tokens, r.seed), (Some(1), 0, Some(3)));
        let defaults = completion(r#"{"model":"m","prompt":["hi"]}"#).unwrap();
        assert_eq!(defaults.max_tokens, DEFAULT_COMPLETION_TOKENS);
        assert_eq!(
            (defaults.echo, defaults.logprobs, defaults.temperature),
            (false, None, 1.0)
        );
        let ids = completion(r#"{"model":"m","prompt":[[1,2,3]]}"#).unwrap();
        assert_eq!(ids.prompt, PromptInput::Tokens(vec![1, 2, 3]));

        let param = |json: &str| completion(json).unwrap_err().param.unwrap_or_default();
        assert_eq!(param(r#"{"model":"m","prompt":""}"#), "prompt");
        assert_eq!(param(r#"{"model":"m","prompt":["a","b"]}"#), "prompt");
        assert_eq!(
            param(r#"{"model":"m","prompt":"x","max_tokens":0}"#),
            "max_tokens"
        );
        assert_eq!(
            param(r#"{"model":"m","prompt":"x","logprobs":21}"#),
            "logprobs"
        );
        assert_eq!(
            param(r#"{"model":"m","prompt":"x","stream":true}"#),
            "stream"
        );
        assert_eq!(
            param(r#"{"model":"m","prompt":"x","best_of":2}"#),
            "best_of"
        );
        assert_eq!(
            param(r#"{"model":"m","prompt":"x","suffix":"y"}"#),
            "suffix"
        );
        assert_eq!(
            param(r#"{"model":"m","prompt":"x","temperature":-1}"#),
            "temperature"
        );
        assert_eq!(param(r#"{"model":"m"}"#), "prompt");
        assert_eq!(param(r#"{"model":"m","prompt":7}"#), "prompt");
    }

    #[test]
    fn chunks_serialise_like_openai() {
        let chunk = |usage| ChatCompletionChunk {
            id: "c".into(),
            object: "chat.completion.chunk",
            created: 1,
            model: "m".into(),
            system_fingerprint: None,
            choices: vec![],
            usage,
        };
        let absent = serde_json::to_value(chunk(None)).unwrap();
        assert!(absent.get("usage").is_none());
        let null = serde_json::to_value(chunk(Some(None))).unwrap();
        assert!(null["usage"].is_null() && null.get("usage").is_some());
        let counts = serde_json::to_value(chunk(Some(Some(Usage::new(3, 4))))).unwrap();
        assert_eq!(counts["usage"]["total_tokens"], 7);
        let error = ApiError::bad_request("n", "no").body();
        assert_eq!(error["error"]["param"], "n");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert!(error["error"]["code"].is_null());
    }
}
