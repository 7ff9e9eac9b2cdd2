//! Batches through the provider's Batch API against the fault server's `/v1/files` and
//! `/v1/batches` (loopback, raw HTTP): lines that fail, a create whose answer is lost, a
//! process killed with SIGKILL while its batch runs, a budget cap and a batch that fails
//! validation. The server runs every line against its own chat route, so its request log says
//! how often each prompt was answered (and billed).

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use llm_client::{ChatRequest, LlmClient, Progress, ProviderBatch};
use serde_json::json;
use support::{
    Fault, FaultServer, ServerConfig, child_main, client_config, expected_content, kill_when,
    read_results, set_prices, spawn_child, wait_for_exit,
};

const CHILD_ENV: &str = "LLM_CLIENT_PROVIDER_BATCH_CHILD";

fn prompt(i: usize) -> String {
    format!("batch question {i}")
}

fn requests(n: usize) -> Vec<ChatRequest> {
    (0..n)
        .map(|i| ChatRequest::user(prompt(i)).with_max_tokens(16))
        .collect()
}

fn batch_settings() -> ProviderBatch {
    ProviderBatch {
        poll_s: 0.02,
        max_requests: 16,
        ..ProviderBatch::default()
    }
}

fn batch_client(server: &FaultServer, ledger: &Path) -> LlmClient {
    let mut config = client_config(server, ledger);
    set_prices(&mut config, 1.0, 2.0);
    config.provider_batch = Some(batch_settings());
    LlmClient::new(config).unwrap()
}

/// (total spend, rows of `provider_batches`, request rows done) from the ledger file.
fn ledger_summary(ledger: &Path) -> (f64, i64, i64) {
    let conn = rusqlite::Connection::open(ledger).unwrap();
    conn.query_row(
        "SELECT (SELECT COALESCE(SUM(cost_usd), 0) FROM attempts),
                (SELECT COUNT(*) FROM provider_batches),
                (SELECT COUNT(*) FROM requests WHERE status = 'done')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

/// Times each prompt's answer went out complete (the server's bill).
fn delivered(server: &FaultServer) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for record in server.records().into_iter().filter(|r| r.delivered_ok) {
        *counts.entry(record.prompt).or_default() += 1;
    }
    counts
}

/// Half of what the server billed for complete answers: the batch price.
fn batch_bill(server: &FaultServer) -> f64 {
    server
        .records()
        .iter()
        .filter(|r| r.delivered_ok)
        .map(|r| r.billed_usd)
        .sum::<f64>()
        * 0.5
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_answered_once_through_failing_lines_and_a_lost_create() {
    let server = FaultServer::start(ServerConfig {
        fail_rate: 0.25,
        random_faults: vec![
            Fault::Status(503),
            Fault::Status(500),
            Fault::RateLimit {
                retry_after: None,
                retry_after_ms: Some(5),
            },
            Fault::Truncated,
        ],
        seed: 11,
        prices: (1.0, 2.0),
        batch_delay: Duration::from_millis(60),
        lose_batch_creates: 1,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite");
    let n = 40;
    let mut asked = requests(n);
    asked.push(ChatRequest::user(prompt(3)).with_max_tokens(16)); // the same request twice

    let client = batch_client(&server, &ledger);
    let report = client.chat_batch(asked.clone(), Progress::Hidden).await;
    assert_eq!(report.counts.ok, n + 1, "{:?}", report.counts);
    for (i, result) in report.results.iter().enumerate() {
        let answer = result.as_ref().unwrap();
        let asked_prompt = if i < n { prompt(i) } else { prompt(3) };
        assert_eq!(answer.content, expected_content(&asked_prompt));
    }
    // Some lines failed and went into later batches; each prompt's answer went out once.
    let faulted = server
        .records()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert!(
        faulted >= 3,
        "the fault rate should fail some lines ({faulted})"
    );
    let counts = delivered(&server);
    assert_eq!(counts.len(), n);
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    // The create whose answer was lost was found by its metadata, not made again: the
    // server holds exactly the batches the ledger recorded, each key once.
    let (spend, ledger_batches, done) = ledger_summary(&ledger);
    let batches = server.batches();
    assert_eq!(batches.len() as i64, ledger_batches, "{batches:#?}");
    assert!(
        ledger_batches > 3,
        "40 requests in batches of 16, plus retry rounds"
    );
    let mut keys: Vec<&str> = batches
        .iter()
        .map(|b| {
            b["metadata"][llm_client::BATCH_METADATA_KEY]
                .as_str()
                .unwrap()
        })
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), batches.len());
    assert_eq!(server.uploaded_files(), batches.len());
    assert_eq!(done, n as i64);
    // Counted at the batch price, failed lines at nothing.
    assert!((spend - batch_bill(&server)).abs() < 1e-9, "{spend}");
    assert!((report.spend_usd - spend).abs() < 1e-9);

    // A rerun is answered by the ledger: no upload, no batch, no request.
    let records_before = server.records().len();
    let again = batch_client(&server, &ledger)
        .chat_batch(asked, Progress::Hidden)
        .await;
    assert_eq!(again.counts.ok, n + 1);
    assert_eq!(again.counts.from_ledger, n + 1);
    assert_eq!(server.records().len(), records_before);
    assert_eq!(server.batches().len(), batches.len());
    assert_eq!(again.spend_usd, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_cap_refuses_a_batch_before_anything_is_sent() {
    let server = FaultServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite");
    let mut config = client_config(&server, &ledger);
    set_prices(&mut config, 1.0, 2.0);
    config.provider_batch = Some(batch_settings());
    // 10 requests of 16 output tokens at $2/M, halved: the bound is above this cap.
    config.budget_usd = Some(1e-6);
    let client = LlmClient::new(config).unwrap();
    let report = client.chat_batch(requests(10), Progress::Hidden).await;
    assert_eq!(report.counts.failed, 10);
    assert_eq!(
        report.counts.failed_by_kind.get("budget_exceeded"),
        Some(&10)
    );
    assert_eq!(server.uploaded_files(), 0);
    assert!(server.batches().is_empty());
    assert!(server.records().is_empty());
    assert_eq!(ledger_summary(&ledger), (0.0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_validation_fails_its_requests_at_no_cost() {
    let server = FaultServer::start(ServerConfig {
        fail_batches: true,
        prices: (1.0, 2.0),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite");
    let report = batch_client(&server, &ledger)
        .chat_batch(requests(5), Progress::Hidden)
        .await;
    assert_eq!(report.counts.failed, 5);
    for result in &report.results {
        let error = result.as_ref().unwrap_err();
        assert_eq!(error.kind(), "provider_batch");
        assert!(!error.is_retryable(), "{error}");
        assert!(
            error.to_string().contains("injected validation failure"),
            "{error}"
        );
    }
    // One batch, not retried; its reservation settled at nothing; nothing ran.
    assert_eq!(server.batches().len(), 1);
    assert!(server.records().is_empty());
    let (spend, batches, done) = ledger_summary(&ledger);
    assert_eq!((spend, batches, done), (0.0, 1, 0));
}

/// In the child process: one provider batch, its results written as JSON lines.
#[test]
fn child_provider_batch_entry() {
    let configure = |config: &mut llm_client::ClientConfig| {
        config.provider_batch = Some(batch_settings());
    };
    child_main(CHILD_ENV, configure, async |client, spec| {
        let n = spec["n"].as_u64().unwrap() as usize;
        client.chat_batch(requests(n), Progress::Hidden).await
    });
}

fn spawn(server: &FaultServer, ledger: &Path, out: &Path, n: usize) -> std::process::Child {
    let spec = json!({"base_url": server.base_url, "ledger": ledger, "out": out, "n": n});
    spawn_child(CHILD_ENV, "child_provider_batch_entry", &spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_while_its_batches_run_collects_them_on_rerun_without_paying_again() {
    let server = FaultServer::start(ServerConfig {
        prices: (1.0, 2.0),
        batch_delay: Duration::from_millis(3000),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite");
    let out = dir.path().join("results.jsonl");
    let n = 24; // two batches of at most 16

    let mut child = spawn(&server, &ledger, &out, n);
    let t0 = Instant::now();
    kill_when(&mut child, &out, || server.batches().len() >= 2).await;
    assert!(server.records().is_empty(), "killed before any line ran");
    let (spend_after_kill, _, done) = ledger_summary(&ledger);
    assert_eq!(done, 0);
    // The batches' upper bounds stay counted while they may still be billed.
    assert!(spend_after_kill > 0.0);

    let mut child = spawn(&server, &ledger, &out, n);
    let status = wait_for_exit(&mut child, t0, Duration::from_secs(40)).await;
    assert!(status.success(), "{status:?}");
    let lines = read_results(&out);
    assert_eq!(lines.len(), n);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["content"], expected_content(&prompt(i)), "{line}");
    }
    // The rerun waited for the killed run's batches: none created again, each prompt once.
    assert_eq!(server.batches().len(), 2);
    let counts = delivered(&server);
    assert_eq!(counts.len(), n);
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    let (spend, ledger_batches, done) = ledger_summary(&ledger);
    assert_eq!((ledger_batches, done), (2, n as i64));
    assert!((spend - batch_bill(&server)).abs() < 1e-9, "{spend}");
}
