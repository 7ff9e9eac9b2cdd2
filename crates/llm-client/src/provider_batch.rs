//! Batches through the provider's Batch API (OpenAI's `/v1/files` and `/v1/batches`): the
//! requests go up as one JSONL file, the provider answers them within its completion window
//! at the batch price, and the answers come back as an output file.
//!
//! The ledger's promises hold as for single calls. A batch is recorded before anything is
//! uploaded: its members' request rows, and one attempt per member counted at its upper-bound
//! cost, so the total spend covers it from that moment. Our key for the batch goes to the
//! provider as the batch's metadata, and before every create the provider's recent batches are
//! searched for it: a create whose answer was lost (timeout, dropped connection, a kill right
//! after it) is found instead of created twice. A rerun waits for a member's open batch
//! instead of submitting the request again, and the answers of a closed batch are settled in
//! one transaction, each attempt at its real cost. Members that fail retryably (a 429 or 5xx
//! line, an expired batch) go into a new batch, at most `max_retries` times.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rand::Rng;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::batch::{BatchReport, Progress, progress_bar};
use crate::client::{Failure, LlmClient, error_chain};
use crate::config::ProviderBatch;
use crate::error::{Error, Result};
use crate::ledger::{AttemptRecord, BatchMember, BatchRow, MemberOutcome};
use crate::request::{Call, ChatResponse, canonical_json};

/// The metadata field that carries our key for a batch.
pub const BATCH_METADATA_KEY: &str = "tuneloop_batch";

/// Listing stops at batches created this long before ours was recorded (newest come first).
const LIST_SLACK_S: i64 = 3600;
/// At most this many pages of 100 batches are searched for a lost create.
const LIST_MAX_PAGES: usize = 20;

/// A batch as the provider describes it.
#[derive(Debug, Deserialize)]
struct BatchObject {
    id: String,
    status: String,
    #[serde(default)]
    output_file_id: Option<String>,
    #[serde(default)]
    error_file_id: Option<String>,
    #[serde(default)]
    created_at: Option<i64>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    errors: Option<Value>,
    #[serde(default)]
    request_counts: Option<RequestCounts>,
}

#[derive(Debug, Default, Deserialize)]
struct RequestCounts {
    #[serde(default)]
    total: u64,
    #[serde(default)]
    completed: u64,
    #[serde(default)]
    failed: u64,
}

#[derive(Debug, Deserialize)]
struct BatchList {
    data: Vec<BatchObject>,
    #[serde(default)]
    has_more: bool,
}

/// One line of an output or error file.
#[derive(Debug, Deserialize)]
struct OutputLine {
    custom_id: String,
    #[serde(default)]
    response: Option<LineResponse>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct LineResponse {
    status_code: u16,
    #[serde(default)]
    body: Value,
}

impl BatchObject {
    fn is_terminal(&self) -> bool {
        matches!(
            self.status.as_str(),
            "completed" | "failed" | "expired" | "cancelled"
        )
    }

    fn carries_key(&self, key: &str) -> bool {
        self.metadata
            .as_ref()
            .and_then(|m| m.get(BATCH_METADATA_KEY))
            .and_then(Value::as_str)
            == Some(key)
    }
}

impl LlmClient {
    /// [`LlmClient::chat_batch`] and [`LlmClient::completion_batch`] when the config names a
    /// provider batch: every request answered from the ledger, from an open batch of an
    /// earlier run, or from new batches.
    pub(crate) async fn provider_batch(
        &self,
        calls: Vec<Result<Call>>,
        progress: Progress,
        settings: &ProviderBatch,
    ) -> BatchReport {
        let started = Instant::now();
        let spent_before = self.spent_usd();
        let total = calls.len();
        let bar = progress_bar(total as u64, progress);
        let endpoint = &self.inner.config.endpoint;
        let mut results: Vec<Option<Result<ChatResponse>>> = (0..total).map(|_| None).collect();
        // Requests not answered yet, by hash (equal requests are one member).
        let mut waiting: BTreeMap<String, (Call, Vec<usize>)> = BTreeMap::new();
        for (index, call) in calls.into_iter().enumerate() {
            let call = match call {
                Ok(call) => call,
                Err(error) => {
                    results[index] = Some(Err(error));
                    continue;
                }
            };
            let hash = call.hash(endpoint);
            match self.inner.ledger.lookup_done(&hash) {
                Ok(Some(done)) => results[index] = Some(Ok(done)),
                Ok(None) => waiting
                    .entry(hash)
                    .or_insert((call, Vec::new()))
                    .1
                    .push(index),
                Err(error) => results[index] = Some(Err(error)),
            }
        }
        bar.set_position(results.iter().filter(|r| r.is_some()).count() as u64);
        let mut round = 0u32;
        while !waiting.is_empty() {
            round += 1;
            let last_round = round > self.inner.config.max_retries;
            for (hash, outcome) in self.provider_round(&waiting, settings, &bar).await {
                let retry = matches!(&outcome, Err(e) if e.is_retryable()) && !last_round;
                if retry {
                    continue;
                }
                let outcome = match outcome {
                    Err(error) if error.is_retryable() => Err(Error::RetriesExhausted {
                        attempts: round,
                        last: Box::new(error),
                    }),
                    other => other,
                };
                if let Some((_, indices)) = waiting.remove(&hash) {
                    bar.inc(indices.len() as u64);
                    deliver(&mut results, &indices, outcome);
                }
            }
        }
        bar.finish();
        self.batch_report(results, started, spent_before)
    }

    /// One round: resumes the open batches holding any waiting request, submits the others in
    /// new batches, waits for all of them and returns how each waiting request ended.
    async fn provider_round(
        &self,
        waiting: &BTreeMap<String, (Call, Vec<usize>)>,
        settings: &ProviderBatch,
        bar: &ProgressBar,
    ) -> Vec<(String, Result<ChatResponse>)> {
        let ledger = &self.inner.ledger;
        let mut outcomes = Vec::new();
        let hashes: Vec<&str> = waiting.keys().map(String::as_str).collect();
        let mut batches = match ledger.open_provider_batches(&hashes) {
            Ok(rows) => rows,
            Err(error) => return fail_all(waiting.keys(), &error),
        };
        let mut in_open_batch = std::collections::HashSet::new();
        for row in &batches {
            match ledger.provider_batch_members(&row.key) {
                Ok(members) => in_open_batch.extend(members.into_iter().map(|m| m.hash)),
                Err(error) => return fail_all(waiting.keys(), &error),
            }
        }
        // New batches, one route each, at most `max_requests` members.
        let mut by_route: BTreeMap<String, Vec<(&String, &Call)>> = BTreeMap::new();
        for (hash, (call, _)) in waiting {
            if !in_open_batch.contains(hash) {
                by_route
                    .entry(format!("/v1{}", call.path()))
                    .or_default()
                    .push((hash, call));
            }
        }
        for (route, members) in by_route {
            for chunk in members.chunks(settings.max_requests) {
                match self.record_batch(&route, chunk, settings).await {
                    Ok(row) => batches.push(row),
                    Err(error) => outcomes.extend(fail_all(chunk.iter().map(|(h, _)| *h), &error)),
                }
            }
        }
        let mut running = JoinSet::new();
        for row in batches {
            let client = self.clone();
            let settings = settings.clone();
            let bar = bar.clone();
            running.spawn(async move {
                let key = row.key.clone();
                (key, client.drive_batch(row, &settings, &bar).await)
            });
        }
        while let Some(joined) = running.join_next().await {
            let (key, result) = match joined {
                Ok(done) => done,
                Err(e) => {
                    // The batch stays open in the ledger: the next round or run resumes it.
                    tracing::error!("a provider batch task ended: {e}");
                    continue;
                }
            };
            match result {
                Ok(members) => outcomes.extend(members),
                Err(error) => {
                    // Left open: it may still run at the provider, and a rerun collects it.
                    tracing::warn!(batch = key, "provider batch not collected: {error}");
                    match ledger.provider_batch_members(&key) {
                        Ok(members) => {
                            outcomes.extend(fail_all(members.iter().map(|m| &m.hash), &error))
                        }
                        Err(e) => tracing::error!("{e}"),
                    }
                }
            }
        }
        // A waiting request missing here belonged to a batch whose task died: retry it.
        outcomes.retain(|(hash, _)| waiting.contains_key(hash));
        let reported: std::collections::HashSet<String> =
            outcomes.iter().map(|(hash, _)| hash.clone()).collect();
        for hash in waiting.keys() {
            if !reported.contains(hash) {
                outcomes.push((
                    hash.clone(),
                    Err(Error::ProviderBatch {
                        batch: "-".into(),
                        reason: "its batch was neither collected nor failed".into(),
                        retryable: true,
                    }),
                ));
            }
        }
        outcomes
    }

    /// Reserves a new batch's upper-bound cost against the budget (refused as a whole if it
    /// could cross the cap) and records it in the ledger before anything is sent.
    async fn record_batch(
        &self,
        route: &str,
        chunk: &[(&String, &Call)],
        settings: &ProviderBatch,
    ) -> Result<BatchRow> {
        let inner = &self.inner;
        let endpoint = &inner.config.endpoint;
        let mut members: Vec<(BatchMember, String)> = chunk
            .iter()
            .map(|(hash, call)| {
                let prompt_tokens_bound = call.prompt_tokens_upper_bound();
                let max_tokens = call.max_tokens();
                let bound_usd = inner.prices.map_or(0.0, |p| {
                    p.cost_usd(prompt_tokens_bound, max_tokens) * settings.price_factor
                });
                let native = inner
                    .native_schema
                    .load(std::sync::atomic::Ordering::Relaxed);
                let body = String::from_utf8(call.wire_body(endpoint, native, false))
                    .expect("request bodies are JSON text");
                let member = BatchMember {
                    hash: (*hash).clone(),
                    attempt_id: 0,
                    bound_usd,
                    is_chat: matches!(call, Call::Chat(_)),
                    prompt_tokens_bound,
                    max_tokens,
                    body,
                };
                (member, canonical_json(&call.identity(endpoint)))
            })
            .collect();
        let bound: f64 = members.iter().map(|(m, _)| m.bound_usd).sum();
        inner.budget.reserve(bound).await?;
        let key = format!("tl-{:032x}", rand::rng().random::<u128>());
        let recorded =
            inner
                .ledger
                .begin_provider_batch(&key, route, &endpoint.model, &mut members);
        // Recorded, the bound is part of the ledger's total like any attempt in flight.
        inner
            .budget
            .settle(bound, if recorded.is_ok() { bound } else { 0.0 });
        recorded
    }

    /// Submits (or finds) a batch, polls it to its end and settles its members.
    async fn drive_batch(
        &self,
        row: BatchRow,
        settings: &ProviderBatch,
        bar: &ProgressBar,
    ) -> Result<Vec<(String, Result<ChatResponse>)>> {
        let members = self.inner.ledger.provider_batch_members(&row.key)?;
        let batch_id = match &row.batch_id {
            Some(id) => id.clone(),
            None => self.submit_batch(&row, &members, settings).await?,
        };
        let poll = Duration::from_secs_f64(settings.poll_s);
        let batch = loop {
            let batch: BatchObject = self
                .control_json("GET", &format!("/batches/{batch_id}"), None)
                .await?;
            if let Some(counts) = &batch.request_counts {
                bar.set_message(format!(
                    "batch {} {}: {}/{} done, {} failed",
                    batch.id, batch.status, counts.completed, counts.total, counts.failed
                ));
            }
            if batch.is_terminal() {
                break batch;
            }
            tokio::time::sleep(poll).await;
        };
        self.settle_batch(&row, &members, &batch, settings).await
    }

    /// Finds the batch by its metadata key, else uploads the file and creates it. A create that
    /// fails retryably may have happened: the next attempt searches again before creating.
    async fn submit_batch(
        &self,
        row: &BatchRow,
        members: &[BatchMember],
        settings: &ProviderBatch,
    ) -> Result<String> {
        let ledger = &self.inner.ledger;
        let mut input_file_id = row.input_file_id.clone();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if let Some(found) = self.find_batch(row).await? {
                tracing::info!(
                    batch = found.id,
                    "found a batch created before: not creating another"
                );
                ledger.update_provider_batch(&row.key, None, Some((&found.id, &found.status)))?;
                return Ok(found.id);
            }
            let file_id = match &input_file_id {
                Some(id) => id.clone(),
                None => {
                    let id = self.upload_batch_file(row, members).await?;
                    ledger.update_provider_batch(&row.key, Some(&id), None)?;
                    input_file_id = Some(id.clone());
                    id
                }
            };
            let body = json!({
                "input_file_id": file_id,
                "endpoint": row.route,
                "completion_window": settings.completion_window,
                "metadata": {BATCH_METADATA_KEY: row.key},
            });
            match self
                .control_once("POST", "/batches", Some(body_json(&body)))
                .await
            {
                Ok(bytes) => {
                    let batch: BatchObject = parse_control(&bytes, "/batches")?;
                    ledger.update_provider_batch(
                        &row.key,
                        None,
                        Some((&batch.id, &batch.status)),
                    )?;
                    return Ok(batch.id);
                }
                Err(failure) => {
                    if !failure.error.is_retryable() || attempt > self.inner.config.max_retries {
                        return Err(failure.error);
                    }
                    let delay = self.retry_delay(attempt, failure.retry_after);
                    tracing::warn!(
                        attempt,
                        kind = failure.error.kind(),
                        "batch create failed; looking for it before trying again"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The provider's batch that carries this row's key, from its recent batches.
    async fn find_batch(&self, row: &BatchRow) -> Result<Option<BatchObject>> {
        let oldest = row.created_unix_ms / 1000 - LIST_SLACK_S;
        let mut after: Option<String> = None;
        for _ in 0..LIST_MAX_PAGES {
            let path = match &after {
                Some(id) => format!("/batches?limit=100&after={id}"),
                None => "/batches?limit=100".to_owned(),
            };
            let page: BatchList = self.control_json("GET", &path, None).await?;
            let mut too_old = false;
            for batch in page.data {
                if batch.carries_key(&row.key) {
                    return Ok(Some(batch));
                }
                too_old |= batch.created_at.is_some_and(|t| t < oldest);
                after = Some(batch.id);
            }
            if !page.has_more || too_old || after.is_none() {
                break;
            }
        }
        Ok(None)
    }

    /// Uploads the members as the batch's input file (`purpose=batch`).
    async fn upload_batch_file(&self, row: &BatchRow, members: &[BatchMember]) -> Result<String> {
        let mut jsonl = String::new();
        for member in members {
            // The body is already JSON text: written in place, not re-encoded.
            jsonl.push_str(&format!(
                "{{\"custom_id\":\"{}\",\"method\":\"POST\",\"url\":\"{}\",\"body\":{}}}\n",
                member.hash, row.route, member.body
            ));
        }
        let boundary = loop {
            let candidate = format!("tuneloop-{:032x}", rand::rng().random::<u128>());
            if !jsonl.contains(&candidate) {
                break candidate;
            }
        };
        let mut body = Vec::new();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}.jsonl\"\r\n\
                 Content-Type: application/jsonl\r\n\r\n",
                row.key
            )
            .as_bytes(),
        );
        body.extend_from_slice(jsonl.as_bytes());
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let file: Value = self
            .control_json("POST", "/files", Some((content_type, body)))
            .await?;
        file["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::MalformedResponse {
                status: 200,
                detail: "the uploaded file's answer has no id".into(),
            })
    }

    /// Reads a finished batch's output and error files and settles every member.
    async fn settle_batch(
        &self,
        row: &BatchRow,
        members: &[BatchMember],
        batch: &BatchObject,
        settings: &ProviderBatch,
    ) -> Result<Vec<(String, Result<ChatResponse>)>> {
        let mut lines: HashMap<String, OutputLine> = HashMap::new();
        for file_id in [&batch.error_file_id, &batch.output_file_id]
            .into_iter()
            .flatten()
        {
            let bytes = self
                .control("GET", &format!("/files/{file_id}/content"), None)
                .await?;
            for (number, text) in String::from_utf8_lossy(&bytes).lines().enumerate() {
                if text.trim().is_empty() {
                    continue;
                }
                let line: OutputLine =
                    serde_json::from_str(text).map_err(|e| Error::MalformedResponse {
                        status: 200,
                        detail: format!(
                            "batch {} file {file_id} line {}: {e}",
                            batch.id,
                            number + 1
                        ),
                    })?;
                if let Some(earlier) = lines.insert(line.custom_id.clone(), line) {
                    tracing::warn!(
                        batch = batch.id,
                        "two lines for request {}: the later one is read",
                        earlier.custom_id
                    );
                }
            }
        }
        let mut answers = Vec::with_capacity(members.len());
        for member in members {
            answers.push(self.member_outcome(member, lines.remove(&member.hash), batch, settings));
        }
        if !lines.is_empty() {
            // Not ours to settle (the ledger names every member): said, not silently dropped.
            tracing::warn!(
                batch = batch.id,
                "{} lines of the batch's files name no member of it; not read",
                lines.len()
            );
        }
        let outcomes: Vec<(&BatchMember, MemberOutcome<'_>)> = members
            .iter()
            .zip(&answers)
            .map(|(member, (result, body, failure))| {
                let outcome = match result {
                    Ok(response) => MemberOutcome::Answered {
                        response,
                        body: body.as_str(),
                    },
                    Err(error) => MemberOutcome::Failed {
                        error: error.to_string(),
                        attempt: AttemptRecord {
                            outcome: error.kind(),
                            http_status: failure.0,
                            cost_usd: failure.1,
                        },
                    },
                };
                (member, outcome)
            })
            .collect();
        self.inner
            .ledger
            .close_provider_batch(&row.key, &batch.status, &outcomes)?;
        let counted: f64 = answers
            .iter()
            .map(|(result, _, failure)| match result {
                Ok(response) => response.cost_usd,
                Err(_) => failure.1,
            })
            .sum();
        let bound: f64 = members.iter().map(|m| m.bound_usd).sum();
        // The bounds were counted as spent when the batch was recorded: now the real costs.
        self.inner.budget.settle(0.0, counted - bound);
        Ok(members
            .iter()
            .map(|m| m.hash.clone())
            .zip(answers.into_iter().map(|(result, _, _)| result))
            .collect())
    }

    /// How one member ended: its answer (with the line's body, for the ledger) or its error
    /// with the HTTP status and the cost to count.
    fn member_outcome(
        &self,
        member: &BatchMember,
        line: Option<OutputLine>,
        batch: &BatchObject,
        settings: &ProviderBatch,
    ) -> (Result<ChatResponse>, String, (Option<u16>, f64)) {
        let provider = |reason: String, retryable: bool| Error::ProviderBatch {
            batch: batch.id.clone(),
            reason,
            retryable,
        };
        let Some(line) = line else {
            let (reason, retryable, cost) = match batch.status.as_str() {
                "failed" => (
                    format!(
                        "the batch failed: {}",
                        batch.errors.clone().unwrap_or(Value::Null)
                    ),
                    false,
                    0.0,
                ),
                // Unfinished work of an expired or cancelled batch is not billed.
                "expired" => (
                    "the batch expired before this request ran".into(),
                    true,
                    0.0,
                ),
                "cancelled" => (
                    "the batch was cancelled before this request ran".into(),
                    false,
                    0.0,
                ),
                // A completed batch without this line: what happened is unknown.
                other => (
                    format!("the {other} batch's files have no line for this request"),
                    true,
                    member.bound_usd,
                ),
            };
            return (
                Err(provider(reason, retryable)),
                String::new(),
                (None, cost),
            );
        };
        let Some(response) = line.response else {
            let reason = line
                .error
                .map_or_else(|| "no response and no error".into(), |e| e.to_string());
            return (
                Err(provider(self.redact(&reason), true)),
                String::new(),
                (None, 0.0),
            );
        };
        let code = response.status_code;
        let body = serde_json::to_vec(&response.body).expect("a JSON value serialises");
        if !(200..300).contains(&code) {
            let failure = self.http_failure(code, &HeaderMap::new(), &body, false);
            return (Err(failure.error), String::new(), (Some(code), 0.0));
        }
        let unreported = (member.prompt_tokens_bound, member.max_tokens);
        match self.parse_answer(&body, member.is_chat, &member.hash, unreported) {
            Ok(mut answer) => {
                answer.cost_usd *= settings.price_factor;
                answer.attempts = 1;
                let text = self.redact(&String::from_utf8_lossy(&body));
                (Ok(answer), text, (Some(code), 0.0))
            }
            Err(detail) => (
                Err(Error::MalformedResponse {
                    status: code,
                    detail,
                }),
                String::new(),
                (Some(code), member.bound_usd),
            ),
        }
    }

    /// A control call (files, batches) with retries, its JSON answer parsed.
    async fn control_json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<(String, Vec<u8>)>,
    ) -> Result<T> {
        let bytes = self.control(method, path, body).await?;
        parse_control(&bytes, path)
    }

    /// A control call with the same retries and backoff as a request (these calls are free).
    async fn control(
        &self,
        method: &str,
        path: &str,
        body: Option<(String, Vec<u8>)>,
    ) -> Result<Vec<u8>> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.control_once(method, path, body.clone()).await {
                Ok(bytes) => return Ok(bytes),
                Err(failure) => {
                    if !failure.error.is_retryable() || attempt > self.inner.config.max_retries {
                        return Err(failure.error);
                    }
                    tokio::time::sleep(self.retry_delay(attempt, failure.retry_after)).await;
                }
            }
        }
    }

    /// One control call: the body's bytes on a 2xx, else the classified failure.
    async fn control_once(
        &self,
        method: &str,
        path: &str,
        body: Option<(String, Vec<u8>)>,
    ) -> std::result::Result<Vec<u8>, Failure> {
        let inner = &self.inner;
        let url = format!("{}{path}", inner.base_url);
        let mut builder = match method {
            "POST" => inner.http.post(&url),
            _ => inner.http.get(&url),
        };
        if let Some((content_type, bytes)) = body {
            builder = builder.header(CONTENT_TYPE, content_type).body(bytes);
        }
        let builder = self.with_key(builder)?;
        let exchange = async {
            let response = builder.send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, bytes))
        };
        let (status, headers, bytes) =
            match tokio::time::timeout(inner.config.timeout, exchange).await {
                Err(_) => {
                    return Err(Error::Timeout {
                        timeout: inner.config.timeout,
                    }
                    .into());
                }
                Ok(Err(e)) => {
                    return Err(Error::Transport {
                        base_url: inner.config.endpoint.base_url.clone(),
                        message: self.redact(&error_chain(&e)),
                    }
                    .into());
                }
                Ok(Ok(answer)) => answer,
            };
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            Err(self.http_failure(status.as_u16(), &headers, &bytes, false))
        }
    }
}

/// The result for every index of one request (equal requests share one member): the first
/// gets it, the others a copy.
fn deliver(
    results: &mut [Option<Result<ChatResponse>>],
    indices: &[usize],
    outcome: Result<ChatResponse>,
) {
    let Some((&first, rest)) = indices.split_first() else {
        return;
    };
    for &index in rest {
        results[index] = Some(match &outcome {
            Ok(answer) => Ok(ChatResponse {
                from_ledger: true,
                ..answer.clone()
            }),
            Err(error) => Err(copy_error(error)),
        });
    }
    results[first] = Some(outcome);
}

/// Every hash failed with (a copy of) one error.
fn fail_all<'a>(
    hashes: impl Iterator<Item = &'a String>,
    error: &Error,
) -> Vec<(String, Result<ChatResponse>)> {
    hashes
        .map(|hash| (hash.clone(), Err(copy_error(error))))
        .collect()
}

/// An error for one more request: a refused budget stays itself (callers count it by kind),
/// anything else keeps its text and whether it may be retried.
fn copy_error(error: &Error) -> Error {
    match error {
        Error::BudgetExceeded {
            cap_usd,
            spent_usd,
            needed_usd,
        } => Error::BudgetExceeded {
            cap_usd: *cap_usd,
            spent_usd: *spent_usd,
            needed_usd: *needed_usd,
        },
        other => Error::ProviderBatch {
            batch: "-".into(),
            reason: other.to_string(),
            retryable: other.is_retryable(),
        },
    }
}

fn body_json(value: &Value) -> (String, Vec<u8>) {
    ("application/json".into(), value.to_string().into_bytes())
}

fn parse_control<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::MalformedResponse {
        status: 200,
        detail: format!("{path}: {e}"),
    })
}
