//! The OpenAI wire format: the chat completion request as clients send it (parsed leniently
//! where OpenAI is lenient, strictly where a silent misreading would change the answer), the
//! response, the stream chunk and the error body.

use axum::http::StatusCode;
use axum::http::header::{HeaderValue, RETRY_AFTER};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// An instruction added as a system message for `json_object` / `json_schema`
    /// (the output is prompted, not constrained).
    pub json_instruction: Option<String>,
}

/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;

impl ChatCompletionRequest {
    /// Parses a request body; a wrong field is named (`messages[0].content`, `temperature`).
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                let message = if body.iter().all(u8::is_ascii_whitespace) {
                    "The request body is empty; send a JSON chat completion request.".to_owned()
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
                        format!("The request body is not a chat completion request: {text}"),
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
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::bad_request(
                "n",
                format!(
                    "n = {n} is not supported: this server returns exactly one choice per request; \
                     send separate requests with different seeds instead."
                ),
            ));
        }
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
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::bad_request(
                "temperature",
                format!("'temperature' must be between 0 and 2, got {temperature}."),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad_request(
                "top_p",
                format!("'top_p' must be in (0, 1], got {top_p}."),
            ));
        }
        let stop = match &self.stop {
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
        if self.logprobs == Some(true) || self.top_logprobs.is_some_and(|n| n > 0) {
            let param = if self.logprobs == Some(true) {
                "logprobs"
            } else {
                "top_logprobs"
            };
            return Err(ApiError::unsupported(
                param,
                "log-probabilities are not returned",
            ));
        }
        for (param, value) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::unsupported(
                    param,
                    "only 0 (no penalty) is implemented",
                ));
            }
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(ApiError::unsupported("logit_bias", "logits are not biased"));
        }
        for (param, list) in [("tools", &self.tools), ("functions", &self.functions)] {
            if list.as_ref().is_some_and(|l| !l.is_empty()) {
                return Err(ApiError::unsupported(
                    param,
                    "tool calling is not implemented",
                ));
            }
        }
        let json_instruction = match &self.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => {
                Some("Answer with one JSON object and nothing else.".to_owned())
            }
            Some(ResponseFormat::JsonSchema { json_schema }) => {
                let schema = json_schema
                    .schema
                    .clone()
                    .unwrap_or_else(|| serde_json::json!({"type": "object"}));
                Some(format!(
                    "Answer with one JSON object that conforms to this JSON Schema and nothing else:\n{schema}"
                ))
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
        })
    }
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

#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: ResponseMessage,
    pub logprobs: Option<Value>,
    pub finish_reason: &'static str,
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
        assert_eq!(param(&format!("{{{base},\"logprobs\":true}}")), "logprobs");
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
