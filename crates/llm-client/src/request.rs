//! Requests and responses, the request hash, cost bounds and the wire body.

use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    ChatCompletionStreamOptions, CreateChatCompletionRequest, Prompt, StopConfiguration,
};
use async_openai::types::completions::CreateCompletionRequest;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::{Endpoint, MaxTokensField};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// A JSON schema the answer must follow (OpenAI "structured outputs").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonSchema {
    /// a-z, A-Z, 0-9, `_` or `-`, at most 64 characters.
    pub name: String,
    pub schema: Value,
    pub strict: bool,
}

/// One chat completion request. Two requests with equal fields (and the same endpoint) have the
/// same [`ChatRequest::hash`] and are answered once: to draw several samples from one prompt,
/// give each a different `seed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub temperature: Option<f32>,
    /// Output limit; the client's `default_max_tokens` when `None`.
    pub max_tokens: Option<u32>,
    pub seed: Option<u64>,
    pub json_schema: Option<JsonSchema>,
    /// Ask for the log-probability of every answer token, with this many most likely
    /// alternatives per position (OpenAI allows 0..=20): `logprobs: true, top_logprobs: n` on
    /// the wire. Only for [`crate::LlmClient::chat`]; streamed answers do not collect them.
    pub logprobs: Option<u8>,
    /// Stop strings (servers accept at most 4); the answer ends before the first one.
    pub stop: Vec<String>,
}

impl ChatRequest {
    /// A single user message, all parameters left to the server.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            messages: vec![Message::user(content)],
            ..Default::default()
        }
    }

    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    pub fn with_json_schema(mut self, schema: JsonSchema) -> Self {
        self.json_schema = Some(schema);
        self
    }

    pub fn with_logprobs(mut self, top_logprobs: u8) -> Self {
        self.logprobs = Some(top_logprobs);
        self
    }

    pub fn with_stop(mut self, stop: Vec<String>) -> Self {
        self.stop = stop;
        self
    }

    /// sha256 (hex) of a canonical JSON of endpoint URL, model, messages and parameters, with
    /// `max_tokens` already defaulted. The key is not part of it: rotating a key keeps the cache.
    pub fn hash(&self, endpoint: &Endpoint) -> String {
        let mut digest = Sha256::new();
        digest.update(canonical_json(&self.identity(endpoint)).as_bytes());
        hex::encode(digest.finalize())
    }

    /// What the hash covers, also stored in the ledger so a row says what it answers.
    pub(crate) fn identity(&self, endpoint: &Endpoint) -> Value {
        let mut identity = json!({
            "v": 1,
            "base_url": endpoint.base_url.trim_end_matches('/'),
            "model": endpoint.model,
            "messages": self.messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "json_schema": self.json_schema,
        });
        // Added only when set, so requests without them keep the hashes (and ledger rows)
        // they had before these fields existed.
        if let Some(top) = self.logprobs {
            identity["logprobs"] = json!(top);
        }
        if !self.stop.is_empty() {
            identity["stop"] = json!(self.stop);
        }
        identity
    }

    /// Total UTF-8 bytes of all message contents.
    fn content_bytes(&self) -> u64 {
        self.messages.iter().map(|m| m.content.len() as u64).sum()
    }

    /// An upper bound on prompt tokens: byte-level BPE tokenizers (GPT, Llama 3, Qwen) never
    /// produce more tokens than bytes, plus 8 tokens per message and 8 more for chat-template
    /// framing. Used for the budget reservation, which must not under-count.
    pub fn prompt_tokens_upper_bound(&self) -> u64 {
        self.content_bytes() + 8 * self.messages.len() as u64 + 8
    }

    /// A typical prompt-token count (4 bytes per token), used against a tokens-per-minute limit.
    pub fn prompt_tokens_estimate(&self) -> u64 {
        self.content_bytes().div_ceil(4) + 4 * self.messages.len() as u64
    }

    /// The messages as sent when the schema must travel in the prompt.
    fn messages_with_schema_prompt(&self, schema: &JsonSchema) -> Vec<Message> {
        let instruction = format!(
            "Answer with one JSON object that conforms to this JSON Schema and nothing else:\n{}",
            schema.schema
        );
        let mut messages = self.messages.clone();
        match messages.first_mut() {
            Some(first) if first.role == Role::System => {
                first.content = format!("{}\n\n{instruction}", first.content);
            }
            _ => messages.insert(0, Message::system(instruction)),
        }
        messages
    }

    /// The HTTP body, built with async-openai's request type. `native_schema` picks between
    /// `response_format` and a schema in the system prompt. `max_tokens` must already be set.
    /// `stream` asks for SSE chunks with a final usage chunk.
    pub(crate) fn wire_body(
        &self,
        endpoint: &Endpoint,
        native_schema: bool,
        stream: bool,
    ) -> Vec<u8> {
        let messages = match (&self.json_schema, native_schema) {
            (Some(schema), false) => self.messages_with_schema_prompt(schema),
            _ => self.messages.clone(),
        };
        let messages = messages
            .into_iter()
            .map(|m| -> ChatCompletionRequestMessage {
                match m.role {
                    Role::System => ChatCompletionRequestSystemMessage::from(m.content).into(),
                    Role::User => ChatCompletionRequestUserMessage::from(m.content).into(),
                    Role::Assistant => {
                        ChatCompletionRequestAssistantMessage::from(m.content).into()
                    }
                }
            })
            .collect();
        #[allow(deprecated)] // `max_tokens` and `seed` are deprecated by OpenAI, used by others
        let body = CreateChatCompletionRequest {
            model: endpoint.model.clone(),
            messages,
            temperature: self.temperature,
            max_completion_tokens: match endpoint.max_tokens_field {
                MaxTokensField::MaxCompletionTokens => self.max_tokens,
                MaxTokensField::MaxTokens => None,
            },
            max_tokens: match endpoint.max_tokens_field {
                MaxTokensField::MaxTokens => self.max_tokens,
                MaxTokensField::MaxCompletionTokens => None,
            },
            seed: self.seed.map(|s| s as i64),
            // Written below, by hand: see `schema_text`.
            response_format: None,
            stream: stream.then_some(true),
            stream_options: stream.then_some(ChatCompletionStreamOptions {
                include_usage: Some(true),
                include_obfuscation: None,
            }),
            logprobs: self.logprobs.map(|_| true),
            top_logprobs: self.logprobs,
            stop: (!self.stop.is_empty())
                .then(|| StopConfiguration::StringArray(self.stop.clone())),
            ..Default::default()
        };
        let mut text = serde_json::to_string(&body).expect("a chat request always serialises");
        if let (Some(schema), true) = (&self.json_schema, native_schema) {
            // The body is an object with at least `model` and `messages`: add the field
            // before its closing brace.
            let format = format!(
                ",\"response_format\":{{\"type\":\"json_schema\",\"json_schema\":{{\"name\":{},\"schema\":{},\"strict\":{}}}}}}}",
                Value::String(schema.name.clone()),
                schema_text(&schema.schema),
                schema.strict
            );
            let closing = text.pop();
            debug_assert_eq!(closing, Some('}'), "a request body is a JSON object");
            text.push_str(&format);
        }
        text.into_bytes()
    }
}

/// A JSON schema as text with each `properties` object's keys in the order of its `required`
/// list, then the others. Endpoints with structured outputs (OpenAI among them) write an
/// answer's properties in the order the schema lists them, and this crate's `serde_json` keeps
/// object keys sorted, which would put a targeted example's `answer` before its
/// `instruction`; `required` is a list, so its order is the author's.
fn schema_text(schema: &Value) -> String {
    let mut out = String::new();
    write_json(schema, KeyOrder::SchemaRequired, None, &mut out);
    out
}

/// One text completion request (`POST /v1/completions`): a raw prompt, no chat template.
///
/// With `echo` and `logprobs`, the answer's text starts with the prompt and its
/// [`ChatResponse::logprobs`] cover the prompt's tokens too (the first one has none): this
/// is how lm-evaluation-harness scores a continuation against a served model (vLLM, OpenAI's
/// legacy completions, our own `serve`). As for [`ChatRequest`], equal requests share one
/// hash and are answered once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CompletionRequest {
    pub prompt: String,
    pub temperature: Option<f32>,
    /// Output limit; the client's `default_max_tokens` when `None`. 0 is allowed with `echo`
    /// (score the prompt, generate nothing) where the server accepts it.
    pub max_tokens: Option<u32>,
    pub seed: Option<u64>,
    /// Stop strings (servers accept at most 4).
    pub stop: Vec<String>,
    /// Return the prompt in front of the completion (and its tokens' log-probabilities).
    pub echo: bool,
    /// Ask for log-probabilities with this many most likely alternatives per position
    /// (OpenAI allows 0..=5, vLLM 0..=20 by default).
    pub logprobs: Option<u8>,
}

impl CompletionRequest {
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            ..Default::default()
        }
    }

    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    pub fn with_stop(mut self, stop: Vec<String>) -> Self {
        self.stop = stop;
        self
    }

    pub fn with_echo(mut self) -> Self {
        self.echo = true;
        self
    }

    pub fn with_logprobs(mut self, top_logprobs: u8) -> Self {
        self.logprobs = Some(top_logprobs);
        self
    }

    /// sha256 (hex) of endpoint URL, model, prompt and parameters, as [`ChatRequest::hash`];
    /// a completion never shares a hash with a chat request.
    pub fn hash(&self, endpoint: &Endpoint) -> String {
        let mut digest = Sha256::new();
        digest.update(canonical_json(&self.identity(endpoint)).as_bytes());
        hex::encode(digest.finalize())
    }

    pub(crate) fn identity(&self, endpoint: &Endpoint) -> Value {
        json!({
            "v": 1,
            "kind": "completion",
            "base_url": endpoint.base_url.trim_end_matches('/'),
            "model": endpoint.model,
            "prompt": self.prompt,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": self.stop,
            "echo": self.echo,
            "logprobs": self.logprobs,
        })
    }

    /// An upper bound on prompt tokens: bytes (byte-level BPE never makes more tokens than
    /// bytes) plus 8 for a BOS or other framing.
    pub fn prompt_tokens_upper_bound(&self) -> u64 {
        self.prompt.len() as u64 + 8
    }

    /// A typical prompt-token count (4 bytes per token).
    pub fn prompt_tokens_estimate(&self) -> u64 {
        (self.prompt.len() as u64).div_ceil(4) + 1
    }

    /// The HTTP body, built with async-openai's request type. `max_tokens` must already be
    /// set. Completions always use `max_tokens` (there is no `max_completion_tokens` field).
    pub(crate) fn wire_body(&self, endpoint: &Endpoint) -> Vec<u8> {
        let body = CreateCompletionRequest {
            model: endpoint.model.clone(),
            prompt: Prompt::String(self.prompt.clone()),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            seed: self.seed.map(|s| s as i64),
            stop: (!self.stop.is_empty())
                .then(|| StopConfiguration::StringArray(self.stop.clone())),
            echo: self.echo.then_some(true),
            logprobs: self.logprobs,
            ..Default::default()
        };
        serde_json::to_vec(&body).expect("a completion request always serialises")
    }
}

/// What one HTTP call asks: a chat or a text completion. The client's ledger, budget,
/// limits and retries handle both the same way.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Call {
    Chat(ChatRequest),
    Completion(CompletionRequest),
}

impl Call {
    pub fn hash(&self, endpoint: &Endpoint) -> String {
        match self {
            Call::Chat(r) => r.hash(endpoint),
            Call::Completion(r) => r.hash(endpoint),
        }
    }

    pub fn identity(&self, endpoint: &Endpoint) -> Value {
        match self {
            Call::Chat(r) => r.identity(endpoint),
            Call::Completion(r) => r.identity(endpoint),
        }
    }

    pub fn max_tokens(&self) -> u64 {
        u64::from(match self {
            Call::Chat(r) => r.max_tokens.unwrap_or(0),
            Call::Completion(r) => r.max_tokens.unwrap_or(0),
        })
    }

    pub fn prompt_tokens_upper_bound(&self) -> u64 {
        match self {
            Call::Chat(r) => r.prompt_tokens_upper_bound(),
            Call::Completion(r) => r.prompt_tokens_upper_bound(),
        }
    }

    pub fn prompt_tokens_estimate(&self) -> u64 {
        match self {
            Call::Chat(r) => r.prompt_tokens_estimate(),
            Call::Completion(r) => r.prompt_tokens_estimate(),
        }
    }

    pub fn logprobs_asked(&self) -> bool {
        match self {
            Call::Chat(r) => r.logprobs.is_some(),
            Call::Completion(r) => r.logprobs.is_some(),
        }
    }

    pub fn json_schema(&self) -> Option<&JsonSchema> {
        match self {
            Call::Chat(r) => r.json_schema.as_ref(),
            Call::Completion(_) => None,
        }
    }

    /// The route under the endpoint's base URL.
    pub fn path(&self) -> &'static str {
        match self {
            Call::Chat(_) => "/chat/completions",
            Call::Completion(_) => "/completions",
        }
    }

    pub fn wire_body(&self, endpoint: &Endpoint, native_schema: bool, stream: bool) -> Vec<u8> {
        match self {
            Call::Chat(r) => r.wire_body(endpoint, native_schema, stream),
            Call::Completion(r) => r.wire_body(endpoint),
        }
    }
}

/// The log-probability of one token of an answer (or of an echoed prompt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text as the server shows it.
    pub token: String,
    /// `None` for the first token of an echoed prompt: nothing precedes it.
    pub logprob: Option<f32>,
    /// Where the token starts in the answer's text, in characters (completions only: chat
    /// answers carry no offsets).
    pub text_offset: Option<u32>,
    /// The most likely tokens at this position, most likely first (as many as asked, fewer if
    /// the server sent fewer).
    pub top_logprobs: Vec<TopLogprob>,
}

/// One of the most likely tokens at a position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
}

/// An answer as the caller sees it: of a chat completion, or of a text completion
/// ([`crate::LlmClient::completion`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The first choice's text (empty when the server returned none). For a completion with
    /// `echo`, the prompt followed by the completion.
    pub content: String,
    pub finish_reason: Option<String>,
    /// The model name the server reported.
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Cost of the successful attempt at the configured price.
    pub cost_usd: f64,
    pub request_hash: String,
    /// HTTP attempts made for this answer in this process (0 when served from the ledger).
    pub attempts: u32,
    /// Served from the ledger without any HTTP call.
    pub from_ledger: bool,
    /// Per-token log-probabilities when the request asked for them and the server sent them;
    /// `None` when not asked or when the server ignored the request (some do, silently).
    pub logprobs: Option<Vec<TokenLogprob>>,
}

impl ChatResponse {
    /// The answer as JSON, parsed tolerantly (see [`crate::extract_json`]).
    pub fn json(&self) -> Option<Value> {
        crate::parse::extract_json(&self.content)
    }
}

/// JSON text with object keys sorted at every level, so equal values hash equally whatever
/// order their maps were built in.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_json(value, KeyOrder::Sorted, None, &mut out);
    out
}

/// How [`write_json`] orders an object's keys.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyOrder {
    /// Sorted at every level (hashing).
    Sorted,
    /// The map's own order, except that a schema's `properties` follow its `required` list.
    SchemaRequired,
}

/// Writes `value` as compact JSON. `property_order` is set while writing a schema's
/// `properties` map: its keys are property names (not keywords), in that order first.
fn write_json(value: &Value, order: KeyOrder, property_order: Option<&[&str]>, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            match (order, property_order) {
                (KeyOrder::Sorted, _) => keys.sort(),
                // Stable: properties not required keep their order after the rest.
                (KeyOrder::SchemaRequired, Some(required)) => keys.sort_by_key(|key| {
                    required.iter().position(|r| r == key).unwrap_or(usize::MAX)
                }),
                (KeyOrder::SchemaRequired, None) => {}
            }
            let required: Vec<&str> = map
                .get("required")
                .and_then(Value::as_array)
                .map(|names| names.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                let child = &map[key];
                let is_properties = order == KeyOrder::SchemaRequired
                    && property_order.is_none()
                    && key == "properties"
                    && child.is_object();
                write_json(child, order, is_properties.then_some(&required[..]), out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, order, None, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn endpoint() -> Endpoint {
        Endpoint::new("http://127.0.0.1:9/v1", "m")
    }

    #[test]
    fn hash_is_stable_and_covers_every_field() {
        let base = ChatRequest::user("hi").with_max_tokens(16);
        let h = base.hash(&endpoint());
        assert_eq!(h.len(), 64);
        assert_eq!(h, base.clone().hash(&endpoint()));
        // The key is not part of the hash.
        let keyed = endpoint().with_api_key(Secret::new("sk-1"));
        assert_eq!(h, base.hash(&keyed));
        let variants = [
            base.clone().with_max_tokens(17),
            base.clone().with_temperature(0.5),
            base.clone().with_seed(1),
            ChatRequest::user("hi!").with_max_tokens(16),
            base.clone().with_json_schema(JsonSchema {
                name: "s".into(),
                schema: json!({"type": "object"}),
                strict: true,
            }),
            base.clone().with_logprobs(0),
            base.clone().with_stop(vec!["\n".into()]),
        ];
        for v in &variants {
            assert_ne!(v.hash(&endpoint()), h, "{v:?}");
        }
        assert_ne!(
            base.hash(&Endpoint::new("http://127.0.0.1:9/v1", "other")),
            h
        );
        assert_ne!(base.hash(&Endpoint::new("http://127.0.0.1:8/v1", "m")), h);
        // Trailing slash on the URL is the same endpoint.
        assert_eq!(base.hash(&Endpoint::new("http://127.0.0.1:9/v1/", "m")), h);
    }

    /// Ledgers written before `logprobs` existed must keep answering: the hash of a request
    /// without it is the sha256 of the canonical identity it always had (computed outside
    /// Rust: `json.dumps(identity, sort_keys=True, separators=(",", ":"))`).
    #[test]
    fn hashes_from_before_logprobs_are_unchanged() {
        let request = ChatRequest::user("hi").with_max_tokens(16);
        assert_eq!(
            request.hash(&endpoint()),
            "beca8d33241daf27165e6d79360777b33aca60fed61e699834c720f63756ee0c"
        );
    }

    #[test]
    fn completion_hash_covers_every_field_and_differs_from_chat() {
        let base = CompletionRequest::new("hi").with_max_tokens(16);
        let h = base.hash(&endpoint());
        assert_ne!(
            h,
            ChatRequest::user("hi")
                .with_max_tokens(16)
                .hash(&endpoint())
        );
        let variants = [
            CompletionRequest::new("hi!").with_max_tokens(16),
            base.clone().with_max_tokens(1),
            base.clone().with_temperature(0.0),
            base.clone().with_seed(3),
            base.clone().with_stop(vec!["\n".into()]),
            base.clone().with_echo(),
            base.clone().with_logprobs(1),
        ];
        for v in &variants {
            assert_ne!(v.hash(&endpoint()), h, "{v:?}");
        }
    }

    #[test]
    fn completion_wire_body() {
        let request = CompletionRequest::new("2+2=")
            .with_max_tokens(1)
            .with_temperature(0.0)
            .with_stop(vec!["\n".into()])
            .with_echo()
            .with_logprobs(1);
        let body: Value = serde_json::from_slice(&request.wire_body(&endpoint())).unwrap();
        assert_eq!(
            body,
            json!({"model": "m", "prompt": "2+2=", "max_tokens": 1, "temperature": 0.0,
                   "stop": ["\n"], "echo": true, "logprobs": 1})
        );
        let chat = ChatRequest::user("x").with_max_tokens(4).with_logprobs(5);
        let body: Value =
            serde_json::from_slice(&chat.wire_body(&endpoint(), true, false)).unwrap();
        assert_eq!(
            (&body["logprobs"], &body["top_logprobs"]),
            (&json!(true), &json!(5))
        );
        let plain: Value =
            serde_json::from_slice(&ChatRequest::user("x").wire_body(&endpoint(), true, false))
                .unwrap();
        assert!(plain.get("logprobs").is_none() && plain.get("top_logprobs").is_none());
    }

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let a: Value =
            serde_json::from_str(r#"{"b":{"y":1,"x":[{"q":1,"p":2}]},"a":"é"}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":"é","b":{"x":[{"p":2,"q":1}],"y":1}}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            canonical_json(&a),
            r#"{"a":"é","b":{"x":[{"p":2,"q":1}],"y":1}}"#
        );
    }

    #[test]
    fn wire_body_uses_the_configured_fields() {
        let schema = JsonSchema {
            name: "score".into(),
            schema: json!({"type": "object", "properties": {"score": {"type": "integer"}}}),
            strict: true,
        };
        let req = ChatRequest::user("rate this")
            .with_max_tokens(32)
            .with_seed(7)
            .with_json_schema(schema);
        let body: Value = serde_json::from_slice(&req.wire_body(&endpoint(), true, false)).unwrap();
        assert!(body.get("stream").is_none() && body.get("stream_options").is_none());
        assert_eq!(body["model"], "m");
        assert_eq!(body["max_completion_tokens"], 32);
        assert!(body.get("max_tokens").is_none());
        assert_eq!(body["seed"], 7);
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(body["response_format"]["json_schema"]["name"], "score");
        assert_eq!(body["messages"].as_array().unwrap().len(), 1);

        let mut legacy = endpoint();
        legacy.max_tokens_field = MaxTokensField::MaxTokens;
        let body: Value = serde_json::from_slice(&req.wire_body(&legacy, false, true)).unwrap();
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["max_tokens"], 32);
        assert!(body.get("response_format").is_none());
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages[0]["role"], "system");
        assert!(
            messages[0]["content"]
                .as_str()
                .unwrap()
                .contains("\"score\"")
        );
        assert_eq!(messages[1]["content"], "rate this");
    }

    #[test]
    fn schema_properties_go_on_the_wire_in_the_order_of_required() {
        let inner = json!({
            "type": "object",
            "properties": {
                "instruction": {"type": "string"},
                "response": {"type": "string"},
                "answer": {"type": "string"},
                "zeta": {"type": "string"},
                "alpha": {"type": "string"}
            },
            "required": ["instruction", "response", "answer"]
        });
        let schema = JsonSchema {
            name: "examples".into(),
            schema: json!({
                "type": "object",
                // A property named like a keyword stays a property name.
                "properties": {"properties": {"type": "array", "items": inner}},
                "required": ["properties"]
            }),
            strict: true,
        };
        let req = ChatRequest::user("write")
            .with_max_tokens(8)
            .with_json_schema(schema.clone());
        let text = String::from_utf8(req.wire_body(&endpoint(), true, false)).unwrap();
        let at = |key: &str| text.find(&format!("\"{key}\":{{\"type\"")).unwrap();
        assert!(
            at("instruction") < at("response") && at("response") < at("answer"),
            "{text}"
        );
        // The others follow, in the map's (sorted) order.
        assert!(
            at("answer") < at("alpha") && at("alpha") < at("zeta"),
            "{text}"
        );
        // The same JSON as the schema given, and the rest of the body as before.
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            body["response_format"]["json_schema"]["schema"],
            schema.schema
        );
        assert_eq!(body["response_format"]["json_schema"]["strict"], true);
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(body["max_completion_tokens"], 8);
        assert_eq!(
            schema_text(&json!([1, "a", null, {"b": 2.5}])),
            r#"[1,"a",null,{"b":2.5}]"#
        );
    }

    #[test]
    fn token_bounds() {
        let req = ChatRequest {
            messages: vec![Message::system("abcd"), Message::user("héllo wörld")],
            ..Default::default()
        };
        // 4 + 13 bytes.
        assert_eq!(req.prompt_tokens_upper_bound(), 17 + 16 + 8);
        assert_eq!(req.prompt_tokens_estimate(), 5 + 8);
    }
}
