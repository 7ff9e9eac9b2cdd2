//! A fault-injecting OpenAI-compatible HTTP/1.1 server on loopback, written on raw TCP so every
//! fault is real at the byte level: 429 with Retry-After, exhausted quota, 5xx, 4xx, hangs,
//! bodies cut off mid-JSON, slow trickled bodies, and a random share of failing calls. With
//! `stream: true` it answers as SSE (`chat.completion.chunk` per word, usage chunk, `[DONE]`),
//! and the faults become stream faults: cut before `[DONE]`, trickled chunks, a stream that
//! stalls while sending only keep-alive comments, an error object mid-stream.
//!
//! It keeps a log of every request (which prompt, which fault, whether a full 200 went out and
//! what the server would bill), so tests can assert nothing was lost, duplicated or over budget.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// 429 rate limit with the given `Retry-After` and/or `retry-after-ms` headers.
    RateLimit {
        retry_after: Option<String>,
        retry_after_ms: Option<u64>,
    },
    /// 429 `insufficient_quota`.
    Quota,
    /// This status with an OpenAI-style error body (408, 400, 500, 503, ...).
    Status(u16),
    /// Never answers; waits until the client gives up and closes.
    Hang,
    /// A 200 with the full `Content-Length` but only half the body, then the connection closes
    /// (a stream: half its events, then the connection closes without `[DONE]`).
    Truncated,
    /// A 200 whose body arrives in 8 chunks with this delay between chunks (a stream: one
    /// chunk per word with this delay before each).
    Slow(Duration),
    /// A stream that sends its first content chunk, then only SSE keep-alive comments (every
    /// 20 ms) until the client gives up. Without `stream` it behaves like `Hang`.
    Stall,
    /// A stream that sends its first content chunk, then an `{"error": ...}` data event.
    StreamError,
    /// A 200 whose JSON has an empty `choices` array (billed: the generation ran).
    EmptyChoices,
    /// A 200 with `content-type: text/html` and an HTML error page as the body.
    WrongContentType,
}

impl Fault {
    pub fn name(&self) -> String {
        match self {
            Fault::RateLimit { .. } => "rate_limit".into(),
            Fault::Quota => "quota".into(),
            Fault::Status(s) => format!("status_{s}"),
            Fault::Hang => "hang".into(),
            Fault::Truncated => "truncated".into(),
            Fault::Slow(_) => "slow".into(),
            Fault::Stall => "stall".into(),
            Fault::StreamError => "stream_error".into(),
            Fault::EmptyChoices => "empty_choices".into(),
            Fault::WrongContentType => "wrong_content_type".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests must carry `Authorization: Bearer <key>`; otherwise 401 echoing the key received.
    pub expected_key: Option<String>,
    /// Time to "generate" an answer before a 200.
    pub delay: Duration,
    /// Share of requests (0..1) that get a fault drawn from `random_faults`.
    pub fail_rate: f64,
    pub random_faults: Vec<Fault>,
    pub seed: u64,
    /// Per-prompt faults for successive attempts; after the list, requests succeed.
    pub script: HashMap<String, Vec<Fault>>,
    /// Answer 400 "Unknown parameter: 'response_format'" to requests that carry one.
    pub reject_response_format: bool,
    /// (input, output) dollars per million tokens, for the server-side bill.
    pub prices: (f64, f64),
    /// The answer's content for a prompt, instead of the echo (models a real assistant).
    pub reply: Option<fn(&str) -> String>,
    /// Batch API: how long a batch stays `validating`/`in_progress` before its lines run.
    pub batch_delay: Duration,
    /// Batch API: this many creates make the batch but answer 503 (the answer is lost).
    pub lose_batch_creates: usize,
    /// Batch API: every batch fails validation (status `failed`, nothing runs).
    pub fail_batches: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            expected_key: None,
            delay: Duration::ZERO,
            fail_rate: 0.0,
            random_faults: Vec::new(),
            seed: 0,
            script: HashMap::new(),
            reject_response_format: false,
            prices: (0.0, 0.0),
            reply: None,
            batch_delay: Duration::ZERO,
            lose_batch_creates: 0,
            fail_batches: false,
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Record {
    pub prompt: String,
    pub at: Instant,
    pub fault: Option<String>,
    /// A complete 200 body was written.
    pub delivered_ok: bool,
    /// What this request would be billed (any 200 whose generation ran, complete or cut off).
    pub billed_usd: f64,
    pub had_response_format: bool,
    pub authorization: Option<String>,
    pub body: Value,
}

struct State {
    config: ServerConfig,
    script: Mutex<HashMap<String, VecDeque<Fault>>>,
    rng: Mutex<StdRng>,
    records: Mutex<Vec<Record>>,
    in_flight: AtomicI64,
    max_in_flight: AtomicI64,
    next_id: AtomicI64,
    addr: std::net::SocketAddr,
    /// Uploaded files by id (input files, and output/error files the batches wrote).
    files: Mutex<HashMap<String, Vec<u8>>>,
    /// Batch objects in creation order.
    batches: Mutex<Vec<Value>>,
    lost_creates: AtomicI64,
}

pub struct FaultServer {
    pub base_url: String,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FaultServer {
    pub async fn start(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = config
            .script
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
            .collect();
        let state = Arc::new(State {
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            config,
            script: Mutex::new(script),
            records: Mutex::new(Vec::new()),
            in_flight: AtomicI64::new(0),
            max_in_flight: AtomicI64::new(0),
            next_id: AtomicI64::new(0),
            addr,
            files: Mutex::new(HashMap::new()),
            batches: Mutex::new(Vec::new()),
            lost_creates: AtomicI64::new(0),
        });
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, accept_state.clone()));
            }
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            state,
            accept,
        }
    }

    pub fn records(&self) -> Vec<Record> {
        self.state.records.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.records.lock().unwrap().len()
    }

    pub fn delivered_ok_count(&self) -> usize {
        self.state
            .records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.delivered_ok)
            .count()
    }

    pub fn attempts_for(&self, prompt: &str) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| r.prompt == prompt)
            .collect()
    }

    pub fn billed_usd(&self) -> f64 {
        self.records().iter().map(|r| r.billed_usd).sum()
    }

    pub fn max_in_flight(&self) -> i64 {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Every batch created, as the server last described it.
    pub fn batches(&self) -> Vec<Value> {
        self.state.batches.lock().unwrap().clone()
    }

    /// Files uploaded with `purpose=batch`.
    pub fn uploaded_files(&self) -> usize {
        self.state
            .files
            .lock()
            .unwrap()
            .keys()
            .filter(|id| id.starts_with("file-in-"))
            .count()
    }
}

/// Whitespace-separated words: the server's own token count (never more than the bytes).
fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The fake server's tokens of a text: each word with the spaces after it, with its offset
/// in characters.
pub fn fake_tokens(text: &str) -> Vec<(String, u32)> {
    let mut tokens: Vec<(String, u32)> = Vec::new();
    let mut current = String::new();
    let mut start = 0u32;
    for (offset, c) in (0u32..).zip(text.chars()) {
        if c != ' ' && current.ends_with(' ') {
            tokens.push((std::mem::take(&mut current), start));
            start = offset;
        }
        current.push(c);
    }
    if !current.is_empty() {
        tokens.push((current, start));
    }
    tokens
}

/// The fake log-probability of a token: -0.1 per character.
pub fn fake_logprob(token: &str) -> f32 {
    -0.1 * token.chars().count() as f32
}

/// `top` alternatives at a token's position: the token itself first, then `alt1`, `alt2`, ...
pub fn fake_top(token: &str, top: usize) -> Vec<(String, f32)> {
    let mut alternatives = vec![(token.to_owned(), fake_logprob(token))];
    for i in 1..top {
        alternatives.push((format!("alt{i}"), fake_logprob(token) - i as f32));
    }
    alternatives.truncate(top);
    alternatives
}

/// The answer the server gives for a prompt.
pub fn expected_content(prompt: &str) -> String {
    format!("echo: {prompt}")
}

async fn serve_connection(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::new();
    loop {
        let Some((head, body)) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let request_line = head[":request-line"].clone();
        let keep_open = if is_batch_route(&request_line) {
            handle_batch_api(&mut stream, &state, &head, &body).await
        } else {
            handle(&mut stream, &state, &head, &body).await
        };
        if !keep_open {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Reads one request: (header block lowercased names, body).
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(HashMap<String, String>, Vec<u8>)> {
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head_text = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head_text.split("\r\n");
    let request_line = lines.next()?.to_owned();
    let mut headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    headers.insert(":request-line".into(), request_line);
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[header_end..header_end + len].to_vec();
    buf.drain(..header_end + len);
    Some((headers, body))
}

fn response_head(
    status: u16,
    reason: &str,
    content_length: usize,
    extra: &[(&str, String)],
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n"
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

async fn write_error(
    stream: &mut TcpStream,
    status: u16,
    kind: &str,
    code: &str,
    message: &str,
    extra: &[(&str, String)],
) -> bool {
    let body = json!({"error": {"message": message, "type": kind, "code": code, "param": null}})
        .to_string();
    let reason = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut bytes = response_head(status, reason, body.len(), extra);
    bytes.extend_from_slice(body.as_bytes());
    stream.write_all(&bytes).await.is_ok()
}

struct InFlight<'a>(&'a State);
impl<'a> InFlight<'a> {
    fn enter(state: &'a State) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(state)
    }
}
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Handles one request; returns whether the connection stays open.
async fn handle(
    stream: &mut TcpStream,
    state: &State,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> bool {
    let _in_flight = InFlight::enter(state);
    let config = &state.config;
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let messages = parsed["messages"].as_array().cloned().unwrap_or_default();
    // `/v1/completions` carries a text prompt instead of messages.
    let text_prompt = parsed["prompt"].as_str().map(str::to_owned);
    let prompt = text_prompt.clone().unwrap_or_else(|| {
        messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_owned()
    });
    let had_response_format = parsed.get("response_format").is_some();
    let authorization = headers.get("authorization").cloned();
    let mut record = Record {
        prompt: prompt.clone(),
        at: Instant::now(),
        fault: None,
        delivered_ok: false,
        billed_usd: 0.0,
        had_response_format,
        authorization: authorization.clone(),
        body: parsed.clone(),
    };
    let index = {
        let mut records = state.records.lock().unwrap();
        records.push(record.clone());
        records.len() - 1
    };
    let update = |record: &Record| state.records.lock().unwrap()[index] = record.clone();

    let route = if text_prompt.is_some() {
        "/v1/completions "
    } else {
        "/v1/chat/completions "
    };
    if !headers[":request-line"].starts_with("POST ") || !headers[":request-line"].contains(route) {
        record.fault = Some("not_found".into());
        update(&record);
        return write_error(
            stream,
            404,
            "invalid_request_error",
            "not_found",
            "no such route",
            &[],
        )
        .await;
    }
    if let Some(key) = &config.expected_key {
        let got = authorization
            .as_deref()
            .unwrap_or("")
            .trim_start_matches("Bearer ")
            .to_owned();
        if &got != key {
            record.fault = Some("unauthorized".into());
            update(&record);
            // Real servers do echo (part of) the key back: the client must redact it.
            let message = format!(
                "Incorrect API key provided: {got}. You can find your API key at https://example.invalid."
            );
            return write_error(
                stream,
                401,
                "invalid_request_error",
                "invalid_api_key",
                &message,
                &[],
            )
            .await;
        }
    }
    if config.reject_response_format && had_response_format {
        record.fault = Some("rejects_response_format".into());
        update(&record);
        return write_error(
            stream,
            400,
            "invalid_request_error",
            "unknown_parameter",
            "Unknown parameter: 'response_format'.",
            &[],
        )
        .await;
    }
    let scripted = state
        .script
        .lock()
        .unwrap()
        .get_mut(&prompt)
        .and_then(VecDeque::pop_front);
    let fault = scripted.or_else(|| {
        let mut rng = state.rng.lock().unwrap();
        (config.fail_rate > 0.0
            && !config.random_faults.is_empty()
            && rng.random::<f64>() < config.fail_rate)
            .then(|| config.random_faults[rng.random_range(0..config.random_faults.len())].clone())
    });
    record.fault = fault.as_ref().map(Fault::name);
    update(&record);

    match &fault {
        Some(Fault::RateLimit {
            retry_after,
            retry_after_ms,
        }) => {
            let mut extra = Vec::new();
            if let Some(v) = retry_after {
                extra.push(("retry-after", v.clone()));
            }
            if let Some(ms) = retry_after_ms {
                extra.push(("retry-after-ms", ms.to_string()));
            }
            return write_error(
                stream,
                429,
                "requests",
                "rate_limit_exceeded",
                "Rate limit reached for requests",
                &extra,
            )
            .await;
        }
        Some(Fault::Quota) => {
            return write_error(
                stream,
                429,
                "insufficient_quota",
                "insufficient_quota",
                "You exceeded your current quota, please check your plan and billing details.",
                &[],
            )
            .await;
        }
        Some(Fault::Status(status)) => {
            return write_error(
                stream,
                *status,
                "server_error",
                "injected",
                &format!("injected status {status}"),
                &[],
            )
            .await;
        }
        Some(Fault::Hang | Fault::Stall)
            if matches!(fault, Some(Fault::Hang)) || parsed["stream"] != true =>
        {
            // Wait for the client to give up (read returns 0 or fails), at most 30 s.
            let mut sink = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            return false;
        }
        _ => {}
    }

    tokio::time::sleep(config.delay).await;
    // Build the answer.
    let schema_in_prompt = messages.iter().any(|m| {
        m["role"] == "system"
            && m["content"]
                .as_str()
                .is_some_and(|c| c.contains("JSON Schema"))
    });
    let mut content = if let Some(reply) = state.config.reply {
        reply(&prompt)
    } else if had_response_format {
        json!({"echo": prompt, "score": 7}).to_string()
    } else if schema_in_prompt {
        format!(
            "Sure! Here is the JSON:\n```json\n{}\n```",
            json!({"echo": prompt, "score": 7})
        )
    } else {
        expected_content(&prompt)
    };
    let max_tokens = parsed["max_completion_tokens"]
        .as_u64()
        .or_else(|| parsed["max_tokens"].as_u64())
        .unwrap_or(u64::MAX);
    let mut finish_reason = "stop";
    if words(&content) > max_tokens {
        content = content
            .split_whitespace()
            .take(max_tokens as usize)
            .collect::<Vec<_>>()
            .join(" ");
        finish_reason = "length";
    }
    let prompt_tokens: u64 = match &text_prompt {
        Some(text) => words(text),
        None => messages
            .iter()
            .map(|m| words(m["content"].as_str().unwrap_or("")) + 3)
            .sum(),
    };
    let completion_tokens = words(&content);
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    if let Some(text_prompt) = &text_prompt {
        let echo = parsed["echo"] == true;
        let text = if echo {
            format!("{text_prompt}{content}")
        } else {
            content.clone()
        };
        let logprobs = parsed["logprobs"].as_u64().map(|top| {
            let pieces = fake_tokens(&text);
            json!({
                "tokens": pieces.iter().map(|(t, _)| t).collect::<Vec<_>>(),
                "token_logprobs": pieces.iter().enumerate()
                    .map(|(i, (t, _))| if echo && i == 0 { Value::Null } else { json!(fake_logprob(t)) })
                    .collect::<Vec<_>>(),
                "top_logprobs": pieces.iter().enumerate()
                    .map(|(i, (t, _))| if echo && i == 0 { Value::Null } else {
                        Value::Object(fake_top(t, top as usize).into_iter().map(|(k, v)| (k, json!(v))).collect())
                    })
                    .collect::<Vec<_>>(),
                "text_offset": pieces.iter().map(|(_, o)| o).collect::<Vec<_>>(),
            })
        });
        let body = json!({
            "id": format!("cmpl-{id}"),
            "object": "text_completion",
            "created": 1_700_000_000u32,
            "model": parsed["model"],
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens
            }
        })
        .to_string();
        record.billed_usd = (prompt_tokens as f64 * config.prices.0
            + completion_tokens as f64 * config.prices.1)
            / 1e6;
        let mut bytes = response_head(200, "OK", body.len(), &[]);
        bytes.extend_from_slice(body.as_bytes());
        let ok = stream.write_all(&bytes).await.is_ok();
        record.delivered_ok = ok;
        update(&record);
        return ok;
    }
    let chat_logprobs = (parsed["logprobs"] == true).then(|| {
        let top = parsed["top_logprobs"].as_u64().unwrap_or(0) as usize;
        let content: Vec<Value> = fake_tokens(&content)
            .into_iter()
            .map(|(token, _)| {
                json!({
                    "token": token,
                    "logprob": fake_logprob(&token),
                    "bytes": token.as_bytes(),
                    "top_logprobs": fake_top(&token, top).into_iter()
                        .map(|(t, l)| json!({"token": t, "logprob": l, "bytes": t.as_bytes()}))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({"content": content, "refusal": null})
    });
    let body = json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": 1_700_000_000u32,
        "model": parsed["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish_reason,
            "logprobs": chat_logprobs
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    })
    .to_string()
    .into_bytes();
    record.billed_usd =
        (prompt_tokens as f64 * config.prices.0 + completion_tokens as f64 * config.prices.1) / 1e6;
    update(&record);
    if parsed["stream"] == true {
        let usage = json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        });
        let frame = StreamFrame {
            id: format!("chatcmpl-{id}"),
            model: parsed["model"].clone(),
            include_usage: parsed["stream_options"]["include_usage"] == true,
        };
        let delivered = write_stream(stream, &frame, &content, finish_reason, usage, &fault).await;
        record.delivered_ok = delivered;
        update(&record);
        return false;
    }
    match &fault {
        Some(Fault::EmptyChoices) => {
            let empty = json!({"id": format!("chatcmpl-{id}"), "object": "chat.completion",
                "created": 1_700_000_000u32, "model": parsed["model"], "choices": []})
            .to_string();
            let mut bytes = response_head(200, "OK", empty.len(), &[]);
            bytes.extend_from_slice(empty.as_bytes());
            let _ = stream.write_all(&bytes).await;
            return false;
        }
        Some(Fault::WrongContentType) => {
            let page = "<html><body>502 Bad Gateway</body></html>";
            let bytes = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{page}",
                page.len()
            );
            let _ = stream.write_all(bytes.as_bytes()).await;
            return false;
        }
        _ => {}
    }
    let mut bytes = response_head(200, "OK", body.len(), &[]);
    match &fault {
        Some(Fault::Truncated) => {
            bytes.extend_from_slice(&body[..body.len() / 2]);
            let _ = stream.write_all(&bytes).await;
            let _ = stream.flush().await;
            false
        }
        Some(Fault::Slow(gap)) => {
            if stream.write_all(&bytes).await.is_err() {
                return false;
            }
            for chunk in body.chunks(body.len().div_ceil(8)) {
                tokio::time::sleep(*gap).await;
                if stream.write_all(chunk).await.is_err() || stream.flush().await.is_err() {
                    return false;
                }
            }
            record.delivered_ok = true;
            update(&record);
            true
        }
        _ => {
            bytes.extend_from_slice(&body);
            let ok = stream.write_all(&bytes).await.is_ok();
            record.delivered_ok = ok;
            update(&record);
            ok
        }
    }
}

/// What every chunk of one stream shares.
struct StreamFrame {
    id: String,
    model: Value,
    include_usage: bool,
}

impl StreamFrame {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Vec<u8> {
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": 1_700_000_000u32,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        format!("data: {chunk}\n\n").into_bytes()
    }
}

async fn send(stream: &mut TcpStream, bytes: Vec<u8>) -> bool {
    stream.write_all(&bytes).await.is_ok() && stream.flush().await.is_ok()
}

/// Writes an SSE answer (connection closes after it); returns whether `[DONE]` went out.
async fn write_stream(
    stream: &mut TcpStream,
    frame: &StreamFrame,
    content: &str,
    finish_reason: &str,
    usage: Value,
    fault: &Option<Fault>,
) -> bool {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
    let mut events = vec![frame.chunk(json!({"role": "assistant", "content": ""}), None)];
    // One chunk per word, spaces kept, so the pieces add up to the content exactly.
    let mut start = 0;
    for (i, _) in content.match_indices(' ') {
        events.push(frame.chunk(json!({"content": &content[start..i + 1]}), None));
        start = i + 1;
    }
    if start < content.len() {
        events.push(frame.chunk(json!({"content": &content[start..]}), None));
    }
    events.push(frame.chunk(json!({}), Some(finish_reason)));
    if frame.include_usage {
        let chunk = json!({
            "id": frame.id, "object": "chat.completion.chunk", "created": 1_700_000_000u32,
            "model": frame.model, "choices": [], "usage": usage,
        });
        events.push(format!("data: {chunk}\n\n").into_bytes());
    }
    events.push(b"data: [DONE]\n\n".to_vec());
    if stream.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    let total = events.len();
    for (index, event) in events.into_iter().enumerate() {
        match fault {
            // Cut off halfway: the connection closes without `[DONE]`.
            Some(Fault::Truncated) if index == total / 2 => return false,
            Some(Fault::Slow(gap)) => tokio::time::sleep(*gap).await,
            Some(Fault::Stall) if index == 2 => {
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(30) {
                    if !send(stream, b": keep-alive\n\n".to_vec()).await {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return false;
            }
            Some(Fault::StreamError) if index == 2 => {
                let error = json!({"error": {"message": "injected mid-stream failure", "type": "server_error", "param": null, "code": null}});
                let _ = send(stream, format!("data: {error}\n\n").into_bytes()).await;
                return false;
            }
            _ => {}
        }
        if !send(stream, event).await {
            return false;
        }
    }
    true
}

fn is_batch_route(request_line: &str) -> bool {
    let path = request_line.split(' ').nth(1).unwrap_or("");
    path.starts_with("/v1/files") || path.starts_with("/v1/batches")
}

async fn write_json(stream: &mut TcpStream, body: &Value) -> bool {
    let body = body.to_string();
    let mut bytes = response_head(200, "OK", body.len(), &[]);
    bytes.extend_from_slice(body.as_bytes());
    stream.write_all(&bytes).await.is_ok()
}

async fn request_error(stream: &mut TcpStream, status: u16, code: &str, message: &str) -> bool {
    write_error(stream, status, "invalid_request_error", code, message, &[]).await
}

/// OpenAI's Batch API over the same server: files (multipart upload, content download) and
/// batches (create, retrieve, list). A batch's lines are sent to this server's own chat route,
/// so its faults, prices and request log apply to them as to direct calls.
async fn handle_batch_api(
    stream: &mut TcpStream,
    state: &Arc<State>,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> bool {
    let request_line = &headers[":request-line"];
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    match (method, path) {
        ("POST", "/v1/files") => {
            let boundary = headers
                .get("content-type")
                .and_then(|v| v.split("boundary=").nth(1))
                .unwrap_or("")
                .to_owned();
            let Some(content) = multipart_file(body, &boundary) else {
                return request_error(stream, 400, "no_file", "no file part").await;
            };
            let file_id = format!("file-in-{id}");
            let bytes = content.len();
            state.files.lock().unwrap().insert(file_id.clone(), content);
            write_json(
                stream,
                &json!({"id": file_id, "object": "file", "bytes": bytes, "purpose": "batch"}),
            )
            .await
        }
        ("POST", "/v1/batches") => {
            let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let input = request["input_file_id"].as_str().unwrap_or("").to_owned();
            if !state.files.lock().unwrap().contains_key(&input) {
                return request_error(stream, 400, "no_file", "unknown input_file_id").await;
            }
            let batch_id = format!("batch_{id}");
            let batch = json!({
                "id": batch_id, "object": "batch", "endpoint": request["endpoint"],
                "input_file_id": input, "completion_window": request["completion_window"],
                "status": "validating", "created_at": 1_700_000_000i64 + id,
                "output_file_id": null, "error_file_id": null, "errors": null,
                "metadata": request["metadata"],
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
            });
            state.batches.lock().unwrap().push(batch.clone());
            tokio::spawn(run_batch(state.clone(), batch_id));
            let lost = state.lost_creates.fetch_add(1, Ordering::SeqCst);
            if (lost as usize) < state.config.lose_batch_creates {
                return write_error(
                    stream,
                    503,
                    "server_error",
                    "injected",
                    "injected: create answer lost",
                    &[],
                )
                .await;
            }
            write_json(stream, &batch).await
        }
        ("GET", "/v1/batches") => {
            let limit: usize = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("limit="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(20);
            let after = query.split('&').find_map(|kv| kv.strip_prefix("after="));
            let newest_first: Vec<Value> = state
                .batches
                .lock()
                .unwrap()
                .iter()
                .rev()
                .cloned()
                .collect();
            let start = after
                .and_then(|a| {
                    newest_first
                        .iter()
                        .position(|b| b["id"] == a)
                        .map(|i| i + 1)
                })
                .unwrap_or(0);
            let page: Vec<Value> = newest_first
                .iter()
                .skip(start)
                .take(limit)
                .cloned()
                .collect();
            let has_more = start + page.len() < newest_first.len();
            write_json(
                stream,
                &json!({"object": "list", "data": page, "has_more": has_more}),
            )
            .await
        }
        ("GET", _) if path.starts_with("/v1/batches/") => {
            let wanted = &path["/v1/batches/".len()..];
            let found = state
                .batches
                .lock()
                .unwrap()
                .iter()
                .find(|b| b["id"] == wanted)
                .cloned();
            match found {
                Some(batch) => write_json(stream, &batch).await,
                None => request_error(stream, 404, "not_found", "no such batch").await,
            }
        }
        ("GET", _) if path.starts_with("/v1/files/") && path.ends_with("/content") => {
            let wanted = &path["/v1/files/".len()..path.len() - "/content".len()];
            let found = state.files.lock().unwrap().get(wanted).cloned();
            match found {
                Some(bytes) => {
                    let mut out = response_head(200, "OK", bytes.len(), &[]);
                    out.extend_from_slice(&bytes);
                    stream.write_all(&out).await.is_ok()
                }
                None => request_error(stream, 404, "not_found", "no such file").await,
            }
        }
        _ => request_error(stream, 404, "not_found", "no such route").await,
    }
}

/// The `file` part of a multipart/form-data body.
fn multipart_file(body: &[u8], boundary: &str) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(body);
    let start = text.find("name=\"file\"")?;
    let content_start = start + text[start..].find("\r\n\r\n")? + 4;
    let end = content_start + text[content_start..].find(&format!("\r\n--{boundary}"))?;
    Some(text[content_start..end].as_bytes().to_vec())
}

fn set_batch(state: &State, batch_id: &str, update: impl FnOnce(&mut Value)) {
    let mut batches = state.batches.lock().unwrap();
    if let Some(batch) = batches.iter_mut().find(|b| b["id"] == batch_id) {
        update(batch);
    }
}

/// Runs a batch's lines against this server's own routes after `batch_delay`.
async fn run_batch(state: Arc<State>, batch_id: String) {
    tokio::time::sleep(state.config.batch_delay / 2).await;
    if state.config.fail_batches {
        set_batch(&state, &batch_id, |b| {
            b["status"] = json!("failed");
            b["errors"] = json!({"object": "list", "data": [{"code": "invalid_request", "message": "injected validation failure", "line": 1}]});
        });
        return;
    }
    set_batch(&state, &batch_id, |b| b["status"] = json!("in_progress"));
    tokio::time::sleep(state.config.batch_delay / 2).await;
    let input_id = state
        .batches
        .lock()
        .unwrap()
        .iter()
        .find(|b| b["id"] == batch_id.as_str())
        .unwrap()["input_file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let input = state.files.lock().unwrap()[&input_id].clone();
    let lines: Vec<Value> = String::from_utf8_lossy(&input)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    set_batch(&state, &batch_id, |b| {
        b["request_counts"]["total"] = json!(lines.len())
    });
    let (mut output, mut errors) = (String::new(), String::new());
    for (n, line) in lines.iter().enumerate() {
        let answer = self_call(state.addr, line["url"].as_str().unwrap(), &line["body"]).await;
        let out = match answer {
            Some((status, body)) => json!({
                "id": format!("batch_req_{n}"), "custom_id": line["custom_id"],
                "response": {"status_code": status, "request_id": format!("req_{n}"), "body": body},
                "error": null,
            }),
            None => json!({
                "id": format!("batch_req_{n}"), "custom_id": line["custom_id"], "response": null,
                "error": {"code": "server_error", "message": "the request's answer was cut off"},
            }),
        };
        let ok = out["response"]["status_code"] == 200;
        let target = if ok { &mut output } else { &mut errors };
        target.push_str(&format!("{out}\n"));
        set_batch(&state, &batch_id, |b| {
            let field = if ok { "completed" } else { "failed" };
            let count = b["request_counts"][field].as_u64().unwrap() + 1;
            b["request_counts"][field] = json!(count);
        });
    }
    let mut files = state.files.lock().unwrap();
    let output_id = format!("file-out-{batch_id}");
    files.insert(output_id.clone(), output.into_bytes());
    let error_id = (!errors.is_empty()).then(|| format!("file-err-{batch_id}"));
    if let Some(id) = &error_id {
        files.insert(id.clone(), errors.into_bytes());
    }
    drop(files);
    set_batch(&state, &batch_id, |b| {
        b["status"] = json!("completed");
        b["output_file_id"] = json!(output_id);
        b["error_file_id"] = json!(error_id);
    });
}

/// One HTTP/1.1 POST to this server: (status, JSON body), or `None` when the answer is cut off.
async fn self_call(addr: std::net::SocketAddr, path: &str, body: &Value) -> Option<(u16, Value)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(body.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(usize::MAX);
                if buf.len() >= pos + 4 + len {
                    break;
                }
            }
        }
    })
    .await;
    let pos = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status: u16 = String::from_utf8_lossy(&buf[..pos])
        .split(' ')
        .nth(1)?
        .parse()
        .ok()?;
    let body: Value = serde_json::from_slice(&buf[pos + 4..]).ok()?;
    Some((status, body))
}

/// The body of a test that re-executes its binary as a child process ([`spawn_child`]): with
/// `env` set, builds a client from the spec (server, ledger, prices 1/2 per million), runs
/// `work` and writes one JSON line per result to the spec's `out` (temp file, then rename, so
/// a killed child leaves none). In a normal test run (`env` unset) it does nothing.
pub fn child_main<F, Fut>(env: &str, configure: impl FnOnce(&mut llm_client::ClientConfig), work: F)
where
    F: FnOnce(llm_client::LlmClient, Value) -> Fut,
    Fut: std::future::Future<Output = llm_client::BatchReport>,
{
    let Ok(spec) = std::env::var(env) else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).unwrap();
    let out = std::path::PathBuf::from(spec["out"].as_str().unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = llm_client::ClientConfig::new(
            llm_client::Endpoint::new(spec["base_url"].as_str().unwrap(), "test-model"),
            spec["ledger"].as_str().unwrap(),
        );
        set_prices(&mut config, 1.0, 2.0);
        configure(&mut config);
        let client = llm_client::LlmClient::new(config).unwrap();
        let report = work(client, spec).await;
        let mut text = String::new();
        for (index, result) in report.results.iter().enumerate() {
            let line = match result {
                Ok(r) => {
                    json!({"index": index, "content": r.content, "from_ledger": r.from_ledger})
                }
                Err(e) => json!({"index": index, "error": e.to_string()}),
            };
            text.push_str(&format!("{line}\n"));
        }
        let tmp = out.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &out).unwrap();
    });
}

/// Re-executes this test binary as a child running only `test` with `env` set to `spec`.
pub fn spawn_child(env: &str, test: &str, spec: &Value) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(env, spec.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGKILLs `child` once `ready` holds (polling), failing the test if the child ends first or
/// `ready` takes more than 20 s; the killed child must have written no results to `out`.
pub async fn kill_when(
    child: &mut std::process::Child,
    out: &std::path::Path,
    mut ready: impl FnMut() -> bool,
) {
    use std::os::unix::process::ExitStatusExt;
    let t0 = Instant::now();
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child ended before the kill"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the child made no progress"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(!out.exists(), "the killed run wrote no results");
}

/// The JSON lines a child wrote ([`child_main`]).
pub fn read_results(out: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits for a child process to exit, failing the test if it runs past `t0 + limit`.
pub async fn wait_for_exit(
    child: &mut std::process::Child,
    t0: Instant,
    limit: Duration,
) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            t0.elapsed() < limit,
            "the child did not finish in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client config for tests: short timeout and backoff, ledger in `ledger`.
pub fn client_config(server: &FaultServer, ledger: &std::path::Path) -> llm_client::ClientConfig {
    let mut config = llm_client::ClientConfig::new(
        llm_client::Endpoint::new(&server.base_url, "test-model"),
        ledger,
    );
    config.timeout = Duration::from_secs(2);
    config.max_concurrency = 8;
    config.max_retries = 5;
    config.backoff = llm_client::Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(5),
    };
    config
}

/// Prices (dollars per million tokens) in both the client config and the server bill.
pub fn set_prices(config: &mut llm_client::ClientConfig, input: f64, output: f64) {
    config.prices.insert(
        config.endpoint.model.clone(),
        llm_client::Prices {
            input_per_mtok: input,
            output_per_mtok: output,
        },
    );
}
