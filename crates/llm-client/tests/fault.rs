//! The client against a real fault-injecting HTTP server on loopback.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use llm_client::{
    ChatRequest, ChatResponse, Error, JsonSchema, LlmClient, Progress, StreamEvent, canonical_json,
    parse_judge_score,
};
use serde_json::json;
use support::{Fault, FaultServer, ServerConfig, client_config, expected_content, set_prices};

fn prompts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} question {i}")).collect()
}

fn requests(prompts: &[String]) -> Vec<ChatRequest> {
    prompts
        .iter()
        .map(|p| ChatRequest::user(p.clone()).with_max_tokens(16))
        .collect()
}

fn script(entries: &[(&str, Vec<Fault>)]) -> HashMap<String, Vec<Fault>> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn rate_limit_secs(secs: &str) -> Fault {
    Fault::RateLimit {
        retry_after: Some(secs.into()),
        retry_after_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answers_in_input_order_and_rerun_is_free() {
    let server = FaultServer::start(ServerConfig {
        delay: Duration::from_millis(5),
        prices: (1.0, 2.0),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = client_config(&server, &dir.path().join("ledger.sqlite"));
    config.max_concurrency = 4;
    set_prices(&mut config, 1.0, 2.0);
    let client = LlmClient::new(config.clone()).unwrap();
    let prompts = prompts("order", 30);
    let report = client
        .chat_batch(requests(&prompts), Progress::Hidden)
        .await;
    assert_eq!(report.results.len(), 30);
    for (prompt, result) in prompts.iter().zip(&report.results) {
        let answer = result.as_ref().unwrap();
        assert_eq!(answer.content, expected_content(prompt));
        assert!(!answer.from_ledger);
        assert_eq!(answer.attempts, 1);
        assert_eq!(answer.finish_reason.as_deref(), Some("stop"));
    }
    assert_eq!(report.counts.ok, 30);
    assert_eq!(server.request_count(), 30);
    let max_in_flight = server.max_in_flight();
    assert!(
        (2..=4).contains(&max_in_flight),
        "max in flight {max_in_flight}"
    );
    // Spend equals the server's bill exactly when nothing went wrong.
    assert!((report.spend_usd - server.billed_usd()).abs() < 1e-12);
    assert!(report.spend_usd > 0.0);

    // A new client on the same ledger answers everything without HTTP and pays nothing.
    drop(client);
    let client = LlmClient::new(config).unwrap();
    let again = client
        .chat_batch(requests(&prompts), Progress::Hidden)
        .await;
    assert_eq!(again.counts.from_ledger, 30);
    assert_eq!(again.spend_usd, 0.0);
    assert_eq!(server.request_count(), 30);
    for (a, b) in report.results.iter().zip(&again.results) {
        assert_eq!(a.as_ref().unwrap().content, b.as_ref().unwrap().content);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_wait_for_retry_after() {
    let server = FaultServer::start(ServerConfig {
        script: script(&[
            ("seconds", vec![rate_limit_secs("1")]),
            (
                "millis",
                vec![Fault::RateLimit {
                    retry_after: Some("5".into()),
                    retry_after_ms: Some(300),
                }],
            ),
        ]),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = LlmClient::new(client_config(&server, &dir.path().join("l.sqlite"))).unwrap();
    let report = client
        .chat_batch(
            vec![ChatRequest::user("seconds"), ChatRequest::user("millis")],
            Progress::Hidden,
        )
        .await;
    assert_eq!(report.counts.ok, 2, "{:?}", report.results);
    let gap = |prompt: &str| {
        let attempts = server.attempts_for(prompt);
        assert_eq!(attempts.len(), 2, "{prompt}");
        attempts[1].at - attempts[0].at
    };
    let seconds = gap("seconds");
    assert!(seconds >= Duration::from_millis(980), "{seconds:?}");
    let millis = gap("millis");
    assert!(
        millis >= Duration::from_millis(290) && millis < Duration::from_secs(4),
        "retry-after-ms takes precedence: {millis:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_quota_is_not_retried_and_stops_later_requests() {
    let server = FaultServer::start(ServerConfig {
        script: script(&[("first", vec![Fault::Quota])]),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = LlmClient::new(client_config(&server, &dir.path().join("l.sqlite"))).unwrap();
    let err = client.chat(ChatRequest::user("first")).await.unwrap_err();
    assert!(
        matches!(err, Error::QuotaExhausted { status: 429, .. }),
        "{err}"
    );
    assert_eq!(server.attempts_for("first").len(), 1);
    let err = client.chat(ChatRequest::user("second")).await.unwrap_err();
    assert!(matches!(err, Error::QuotaExhausted { .. }), "{err}");
    assert!(server.attempts_for("second").is_empty(), "not sent");
    assert_eq!(client.ledger().counts().unwrap().failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_408_429_and_5xx_are_retried() {
    let server = FaultServer::start(ServerConfig {
        script: script(&[
            ("bad", vec![Fault::Status(400)]),
            ("missing", vec![Fault::Status(404)]),
            ("timeout408", vec![Fault::Status(408)]),
            ("boom", vec![Fault::Status(500), Fault::Status(503)]),
            ("always", vec![Fault::Status(500); 10]),
        ]),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = client_config(&server, &dir.path().join("l.sqlite"));
    config.max_retries = 2;
    let client = LlmClient::new(config).unwrap();
    let names = ["bad", "missing", "timeout408", "boom", "always"];
    let report = client
        .chat_batch(
            names.iter().map(|n| ChatRequest::user(*n)).collect(),
            Progress::Hidden,
        )
        .await;
    let r = &report.results;
    assert!(
        matches!(r[0], Err(Error::BadRequest { status: 400, .. })),
        "{:?}",
        r[0]
    );
    assert!(
        matches!(r[1], Err(Error::BadRequest { status: 404, .. })),
        "{:?}",
        r[1]
    );
    assert_eq!(r[2].as_ref().unwrap().attempts, 2);
    assert_eq!(r[3].as_ref().unwrap().attempts, 3);
    match &r[4] {
        Err(Error::RetriesExhausted { attempts: 3, last }) => {
            assert!(
                matches!(**last, Error::Server { status: 500, .. }),
                "{last}"
            )
        }
        other => panic!("{other:?}"),
    }
    let sent: Vec<usize> = names.iter().map(|n| server.attempts_for(n).len()).collect();
    assert_eq!(sent, [1, 1, 2, 3, 3]);
    assert_eq!(report.counts.failed, 3);
    assert_eq!(report.counts.failed_by_kind["bad_request"], 2);
    assert_eq!(report.counts.failed_by_kind["server"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangs_time_out_and_are_retried() {
    let server = FaultServer::start(ServerConfig {
        script: script(&[
            ("hang once", vec![Fault::Hang]),
            ("hang always", vec![Fault::Hang; 5]),
        ]),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = client_config(&server, &dir.path().join("l.sqlite"));
    config.timeout = Duration::from_millis(300);
    config.max_retries = 1;
    let client = LlmClient::new(config).unwrap();
    let t0 = Instant::now();
    let report = client
        .chat_batch(
            vec![
                ChatRequest::user("hang once"),
                ChatRequest::user("hang always"),
            ],
            Progress::Hidden,
        )
        .await;
    assert!(t0.elapsed() >= Duration::from_millis(600));
    let answer = report.results[0].as_ref().unwrap();
    assert_eq!(answer.content, expected_content("hang once"));
    assert_eq!(answer.attempts, 2);
    match &report.results[1] {
        Err(Error::RetriesExhausted { attempts: 2, last }) => {
            assert!(matches!(**last, Error::Timeout { .. }), "{last}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_bodies_are_retried_and_counted_at_their_upper_bound() {
    let server = FaultServer::start(ServerConfig {
        script: script(&[("cut", vec![Fault::Truncated])]),
        prices: (1.0, 2.0),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = client_config(&server, &dir.path().join("l.sqlite"));
    set_prices(&mut config, 1.0, 2.0);
    let client = LlmClient::new(config).unwrap();
    let request = ChatRequest::user("cut").with_max_tokens(16);
    let answer = client.chat(request.clone()).await.unwrap();
    assert_eq!(answer.attempts, 2);
    assert_eq!(answer.content, expected_content("cut"));
    let attempts = server.attempts_for("cut");
    assert_eq!(attempts.len(), 2);
    assert!(!attempts[0].delivered_ok && attempts[1].delivered_ok);
    // The cut-off attempt is counted at the upper bound: bytes + framing, and max_tokens.
    let bound = (request.prompt_tokens_upper_bound() as f64 * 1.0 + 16.0 * 2.0) / 1e6;
    let spent = client.spent_usd();
    assert!(
        (spent - (bound + answer.cost_usd)).abs() < 1e-12,
        "{spent} vs {bound} + {}",
        answer.cost_usd
    );
    assert!(spent >= server.billed_usd());
    assert!((answer.cost_usd - attempts[1].billed_usd).abs() < 1e-12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_streams_finish_within_the_timeout_and_retry_beyond_it() {
    let server = FaultServer::start(ServerConfig {
        script: script(&[
            ("trickle", vec![Fault::Slow(Duration::from_millis(20))]),
            ("crawl", vec![Fault::Slow(Duration::from_millis(150))]),
        ]),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = client_config(&server, &dir.path().join("l.sqlite"));
    config.timeout = Duration::from_millis(600);
    let client = LlmClient::new(config).unwrap();
    let report = client
        .chat_batch(
            vec![ChatRequest::user("trickle"), ChatRequest::user("crawl")],
            Progress::Hidden,
        )
        .await;
    let trickle = report.results[0].as_ref().unwrap();
    assert_eq!(
        (trickle.attempts, trickle.content.as_str()),
        (1, "echo: trickle")
    );
    let crawl = report.results[1].as_ref().unwrap();
    assert_eq!((crawl.attempts, crawl.content.as_str()), (2, "echo: crawl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_percent_failures_lose_duplicate_and_overspend_nothing() {
    let server = FaultServer::start(ServerConfig {
        fail_rate: 0.2,
        random_faults: vec![
            Fault::RateLimit {
                retry_after: None,
                retry_after_ms: Some(5),
            },
            Fault::Status(500),
            Fault::Status(503),
            Fault::Truncated,
            Fault::Hang,
            Fault::Slow(Duration::from_millis(2)),
        ],
        seed: 7,
        delay: Duration::from_millis(2),
        prices: (1.0, 2.0),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = client_config(&server, &dir.path().join("l.sqlite"));
    config.timeout = Duration::from_millis(400);
    config.max_concurrency = 16;
    config.max_retries = 10;
    set_prices(&mut config, 1.0, 2.0);
    config.budget_usd = Some(1.0);
    let client = LlmClient::new(config).unwrap();
    let prompts = prompts("chaos", 200);
    let report = client
        .chat_batch(requests(&prompts), Progress::Hidden)
        .await;
    assert_eq!(report.results.len(), 200);
    for (prompt, result) in prompts.iter().zip(&report.results) {
        match result {
            Ok(answer) => assert_eq!(answer.content, expected_content(prompt)),
            Err(e) => panic!("{prompt}: {e}"),
        }
    }
    let records = server.records();
    let faults = records.iter().filter(|r| r.fault.is_some()).count();
    assert!(faults >= 20, "the server injected faults ({faults})");
    // Exactly one complete answer went out per prompt: no duplicate payment.
    let mut delivered: HashMap<&str, usize> = HashMap::new();
    for r in records.iter().filter(|r| r.delivered_ok) {
        *delivered.entry(r.prompt.as_str()).or_default() += 1;
    }
    assert_eq!(delivered.len(), 200);
    assert!(delivered.values().all(|&n| n == 1), "{delivered:?}");
    let counts = client.ledger().counts().unwrap();
    assert_eq!((counts.done, counts.failed, counts.pending), (200, 0, 0));
    assert_eq!(counts.attempts as usize, records.len());
    // Spend never under-counts the bill and stays under the cap.
    let billed = server.billed_usd();
    assert!(
        report.total_spend_usd >= billed - 1e-12,
        "{} < {billed}",
        report.total_spend_usd
    );
    assert!(report.total_spend_usd <= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_cap_refuses_before_crossing_and_holds_across_restarts() {
    let server = FaultServer::start(ServerConfig {
        prices: (1000.0, 1000.0),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = client_config(&server, &dir.path().join("l.sqlite"));
    config.max_concurrency = 4;
    set_prices(&mut config, 1000.0, 1000.0);
    let cap = 0.1;
    config.budget_usd = Some(cap);
    let client = LlmClient::new(config.clone()).unwrap();
    let prompts = prompts("budget", 40);
    let report = client
        .chat_batch(requests(&prompts), Progress::Hidden)
        .await;
    let ok = report.counts.ok;
    assert!(ok >= 5, "some requests fit under the cap ({ok})");
    assert_eq!(
        report.counts.failed_by_kind.get("budget_exceeded"),
        Some(&(40 - ok))
    );
    for result in &report.results {
        if let Err(e) = result {
            assert!(matches!(e, Error::BudgetExceeded { .. }), "{e}");
        }
    }
    assert_eq!(
        server.request_count(),
        ok,
        "refused requests were never sent"
    );
    assert!(report.total_spend_usd <= cap && server.billed_usd() <= cap);
    // The cap is tight: a refused request's upper bound would have crossed it.
    let max_bound = requests(&prompts)
        .iter()
        .map(|r| (r.prompt_tokens_upper_bound() + 16) as f64 * 1000.0 / 1e6)
        .fold(0.0, f64::max);
    assert!(report.total_spend_usd + max_bound > cap);

    drop(client);
    let client = LlmClient::new(config).unwrap();
    assert!(
        (client.spent_usd() - report.total_spend_usd).abs() < 1e-12,
        "running total persists"
    );
    let again = client
        .chat_batch(requests(&prompts), Progress::Hidden)
        .await;
    assert_eq!(again.counts.from_ledger, ok);
    assert_eq!(again.counts.failed, 40 - ok);
    assert_eq!(server.request_count(), ok);
    assert_eq!(again.spend_usd, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_are_sent_once() {
    let server = FaultServer::start(ServerConfig {
        delay: Duration::from_millis(20),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = LlmClient::new(client_config(&server, &dir.path().join("l.sqlite"))).unwrap();
    let x = ChatRequest::user("x");
    let batch = vec![
        x.clone(),
        x.clone(),
        ChatRequest::user("y"),
        x.clone(),
        x.with_seed(1),
    ];
    let report = client.chat_batch(batch, Progress::Hidden).await;
    let contents: Vec<&str> = report
        .results
        .iter()
        .map(|r| r.as_ref().unwrap().content.as_str())
        .collect();
    assert_eq!(
        contents,
        ["echo: x", "echo: x", "echo: y", "echo: x", "echo: x"]
    );
    assert_eq!(
        server.attempts_for("x").len(),
        2,
        "the seeded one is a distinct sample"
    );
    assert_eq!(report.counts.from_ledger, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_native_or_in_the_prompt() {
    let schema = JsonSchema {
        name: "judgement".into(),
        schema: json!({
            "type": "object",
            "properties": {"score": {"type": "integer"}, "echo": {"type": "string"}},
            "required": ["score", "echo"]
        }),
        strict: true,
    };
    let request = |p: &str| ChatRequest::user(p).with_json_schema(schema.clone());

    let native = FaultServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = LlmClient::new(client_config(&native, &dir.path().join("a.sqlite"))).unwrap();
    let answer = client.chat(request("judge me")).await.unwrap();
    assert!(native.records()[0].had_response_format);
    assert_eq!(answer.json().unwrap()["score"], 7);
    assert_eq!(parse_judge_score(&answer.content), Some(7.0));

    let plain = FaultServer::start(ServerConfig {
        reject_response_format: true,
        ..Default::default()
    })
    .await;
    let client = LlmClient::new(client_config(&plain, &dir.path().join("b.sqlite"))).unwrap();
    let answer = client.chat(request("judge me")).await.unwrap();
    let records = plain.records();
    assert_eq!(records.len(), 2);
    assert!(records[0].had_response_format && !records[1].had_response_format);
    let system = &records[1].body["messages"][0];
    assert_eq!(system["role"], "system");
    assert!(system["content"].as_str().unwrap().contains("\"score\""));
    assert!(
        answer.content.starts_with("Sure!"),
        "prose around the JSON: {}",
        answer.content
    );
    assert_eq!(answer.json().unwrap()["echo"], "judge me");
    assert_eq!(parse_judge_score(&answer.content), Some(7.0));
    // The fallback is remembered: the next request goes straight to the prompt form.
    client.chat(request("judge me too")).await.unwrap();
    assert_eq!(plain.request_count(), 3);
    assert!(!plain.records()[2].had_response_format);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_tokens_per_minute_are_enforced() {
    let server = FaultServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();

    // 1200 rpm = 20/s with a one-second burst: 40 requests need about 1 s.
    let mut config = client_config(&server, &dir.path().join("rpm.sqlite"));
    config.rpm = Some(1200);
    let client = LlmClient::new(config).unwrap();
    let t0 = Instant::now();
    let report = client
        .chat_batch(requests(&prompts("rpm", 40)), Progress::Hidden)
        .await;
    let elapsed = t0.elapsed();
    assert_eq!(report.counts.ok, 40);
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    let records = server.records();
    let first = records[0].at;
    let early = records
        .iter()
        .filter(|r| r.at - first < Duration::from_millis(400))
        .count();
    assert!(
        early <= 29,
        "at most a burst of 20, then 20/s: {early} in the first 0.4 s"
    );

    // Each request is counted as prompt estimate + max_tokens against the TPM limit.
    let reqs = requests(&prompts("tpm", 20));
    let per_request = reqs[0].prompt_tokens_estimate() + 16;
    let mut config = client_config(&server, &dir.path().join("tpm.sqlite"));
    config.tpm = Some((per_request * 10 * 60) as u32); // 10 requests per second
    let client = LlmClient::new(config).unwrap();
    let t0 = Instant::now();
    let report = client.chat_batch(reqs, Progress::Hidden).await;
    let elapsed = t0.elapsed();
    assert_eq!(report.counts.ok, 20);
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_rows_say_what_they_answer() {
    let server = FaultServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sqlite");
    let client = LlmClient::new(client_config(&server, &path)).unwrap();
    let request = client.effective_request(ChatRequest::user("what is 2+2").with_seed(3));
    let answer = client.chat(request.clone()).await.unwrap();
    drop(client);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (hash, request_json, status, content): (String, String, String, String) = conn
        .query_row(
            "SELECT hash, request_json, status, content FROM requests",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(hash, answer.request_hash);
    assert_eq!(
        (status.as_str(), content.as_str()),
        ("done", "echo: what is 2+2")
    );
    let stored: serde_json::Value = serde_json::from_str(&request_json).unwrap();
    assert_eq!(stored["messages"][0]["content"], "what is 2+2");
    assert_eq!(stored["seed"], 3);
    assert_eq!(stored["max_tokens"], 1024);
    // The hash is sha256 over exactly this canonical JSON.
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(canonical_json(&stored).as_bytes()));
    assert_eq!(digest, hash);
}

/// Collects what `chat_stream` reports: attempt numbers and the text after the last attempt.
#[derive(Debug, Default)]
struct Seen {
    attempts: Vec<u32>,
    deltas: Vec<String>,
}

impl Seen {
    fn text(&self) -> String {
        self.deltas.concat()
    }
}

async fn stream(client: &LlmClient, request: ChatRequest) -> (Seen, Result<ChatResponse, Error>) {
    let mut seen = Seen::default();
    let result = client
        .chat_stream(request, &mut |event| match event {
            StreamEvent::Attempt(n) => {
                seen.attempts.push(n);
                seen.deltas.clear();
            }
            StreamEvent::Delta(text) => seen.deltas.push(text.to_owned()),
        })
        .await;
    (seen, result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_arrive_in_pieces_and_are_recorded_once() {
    let server = FaultServer::start(ServerConfig {
        prices: (1.0, 2.0),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = client_config(&server, &dir.path().join("l.sqlite"));
    set_prices(&mut config, 1.0, 2.0);
    let client = LlmClient::new(config.clone()).unwrap();
    let request = ChatRequest::user("tell me a story").with_max_tokens(16);
    let (seen, answer) = stream(&client, request.clone()).await;
    let answer = answer.unwrap();
    assert_eq!(seen.attempts, [1]);
    // One delta per word: the answer really came in pieces, and they add up to it.
    assert_eq!(seen.deltas, ["echo: ", "tell ", "me ", "a ", "story"]);
    assert_eq!(answer.content, expected_content("tell me a story"));
    assert_eq!(answer.finish_reason.as_deref(), Some("stop"));
    assert_eq!((answer.attempts, answer.from_ledger), (1, false));
    // Usage came from the usage chunk, and the spend is the server's bill.
    assert_eq!(answer.completion_tokens, 5);
    assert!(answer.prompt_tokens > 0);
    assert!((client.spent_usd() - server.billed_usd()).abs() < 1e-12);
    let sent = server.records();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["stream"], true);
    assert_eq!(sent[0].body["stream_options"]["include_usage"], true);
    // The same request, streamed or not, is answered from the ledger without HTTP.
    let again = client.chat(request.clone()).await.unwrap();
    assert!(again.from_ledger);
    assert_eq!(again.content, answer.content);
    let (seen, replay) = stream(&client, request).await;
    assert!(replay.unwrap().from_ledger);
    assert_eq!((seen.attempts.len(), seen.text()), (0, answer.content));
    assert_eq!(server.request_count(), 1);
    // A length-limited stream reports `length`.
    let (_, short) = stream(
        &client,
        ChatRequest::user("one two three four").with_max_tokens(2),
    )
    .await;
    let short = short.unwrap();
    assert_eq!(
        (short.content.as_str(), short.finish_reason.as_deref()),
        ("echo: one", Some("length"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_streams_pass_while_stalled_cut_and_failed_streams_retry() {
    let server = FaultServer::start(ServerConfig {
        script: script(&[
            // 7 events 40 ms apart: 280 ms in all, longer than the idle limit, never idle that long.
            ("slow stream", vec![Fault::Slow(Duration::from_millis(40))]),
            ("stalls once", vec![Fault::Stall]),
            ("cut once", vec![Fault::Truncated]),
            ("errors once", vec![Fault::StreamError]),
            ("stalls always", vec![Fault::Stall; 3]),
        ]),
        prices: (1.0, 2.0),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = client_config(&server, &dir.path().join("l.sqlite"));
    config.timeout = Duration::from_secs(3);
    config.stream_idle_timeout = Duration::from_millis(150);
    config.max_retries = 2;
    set_prices(&mut config, 1.0, 2.0);
    let client = LlmClient::new(config).unwrap();

    let (seen, slow) = stream(&client, ChatRequest::user("slow stream")).await;
    assert_eq!((slow.unwrap().attempts, seen.attempts.len()), (1, 1));
    assert_eq!(seen.text(), expected_content("slow stream"));

    for prompt in ["stalls once", "cut once", "errors once"] {
        let request = ChatRequest::user(prompt).with_max_tokens(16);
        let started = Instant::now();
        let (seen, answer) = stream(&client, request.clone()).await;
        let answer = answer.unwrap_or_else(|e| panic!("{prompt}: {e}"));
        assert_eq!(answer.attempts, 2, "{prompt}");
        assert_eq!(seen.attempts, [1, 2], "{prompt}");
        // The first attempt's partial text was voided by the second attempt.
        assert_eq!(seen.text(), expected_content(prompt), "{prompt}");
        assert_eq!(answer.content, expected_content(prompt));
        let attempts = server.attempts_for(prompt);
        assert_eq!(attempts.len(), 2, "{prompt}");
        assert!(
            !attempts[0].delivered_ok && attempts[1].delivered_ok,
            "{prompt}"
        );
        if prompt == "stalls once" {
            // Keep-alive comments kept coming: only data events count as progress.
            let elapsed = started.elapsed();
            assert!(
                elapsed >= Duration::from_millis(150) && elapsed < Duration::from_secs(2),
                "{elapsed:?}"
            );
        }
    }
    // Each failed attempt was counted at its upper bound (the server may have billed it).
    let spent = client.spent_usd();
    assert!(
        spent > server.billed_usd(),
        "{spent} vs {}",
        server.billed_usd()
    );

    let (_, stalled) = stream(&client, ChatRequest::user("stalls always")).await;
    match stalled {
        Err(Error::RetriesExhausted { attempts: 3, last }) => {
            assert!(matches!(*last, Error::StreamStalled { .. }), "{last}");
        }
        other => panic!("{other:?}"),
    }
    let conn = rusqlite::Connection::open(client.ledger().path()).unwrap();
    let outcomes: Vec<String> = conn
        .prepare("SELECT outcome FROM attempts ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        outcomes,
        [
            "ok",
            "stream_stalled",
            "ok",
            "malformed_response",
            "ok",
            "server",
            "ok",
            "stream_stalled",
            "stream_stalled",
            "stream_stalled"
        ]
    );
}
