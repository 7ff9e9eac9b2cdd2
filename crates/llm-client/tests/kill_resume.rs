//! A batch killed with SIGKILL mid-way and rerun pays only for what had not finished.
//!
//! The test binary re-executes itself as the batch process (`child_batch_entry` with an
//! environment variable naming the server, ledger and output), kills that real subprocess with
//! SIGKILL once the server has answered part of the batch, reruns it to completion, and checks
//! the fault server's request log against the ledger.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use llm_client::{ChatRequest, Progress};
use serde_json::{Value, json};
use support::{
    Fault, FaultServer, ServerConfig, child_main, expected_content, kill_when, read_results,
    spawn_child, wait_for_exit,
};

const CHILD_ENV: &str = "LLM_CLIENT_KILL_TEST_CHILD";
const N: usize = 60;
const CONCURRENCY: usize = 4;

fn prompt(i: usize) -> String {
    format!("kill question {i}")
}

/// In the child process: run the batch and write one JSON line per item.
/// In a normal test run (variable unset) this does nothing.
#[test]
fn child_batch_entry() {
    let configure = |config: &mut llm_client::ClientConfig| {
        config.max_concurrency = CONCURRENCY;
        config.backoff.initial = Duration::from_millis(5);
        config.backoff.max = Duration::from_millis(50);
        config.timeout = Duration::from_secs(2);
    };
    child_main(CHILD_ENV, configure, async |client, _| {
        let requests = (0..N)
            .map(|i| ChatRequest::user(prompt(i)).with_max_tokens(16))
            .collect();
        client.chat_batch(requests, Progress::Hidden).await
    });
}

fn spawn(server: &FaultServer, ledger: &Path, out: &Path) -> Child {
    let spec = json!({"base_url": server.base_url, "ledger": ledger, "out": out});
    spawn_child(CHILD_ENV, "child_batch_entry", &spec)
}

/// Prompts whose ledger row is done.
fn done_prompts(ledger: &Path) -> HashSet<String> {
    let conn = rusqlite::Connection::open(ledger).unwrap();
    let mut stmt = conn
        .prepare("SELECT request_json FROM requests WHERE status = 'done'")
        .unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|j| {
            let v: Value = serde_json::from_str(&j.unwrap()).unwrap();
            v["messages"][0]["content"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_batch_then_rerun_pays_only_for_unfinished_requests() {
    let server = FaultServer::start(ServerConfig {
        delay: Duration::from_millis(15),
        fail_rate: 0.2,
        random_faults: vec![
            Fault::Status(500),
            Fault::RateLimit {
                retry_after: None,
                retry_after_ms: Some(5),
            },
        ],
        seed: 3,
        prices: (1.0, 2.0),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite");
    let out = dir.path().join("results.jsonl");

    // First run: SIGKILL once about a third of the batch has been answered.
    let mut child = spawn(&server, &ledger, &out);
    let t0 = Instant::now();
    kill_when(&mut child, &out, || server.delivered_ok_count() >= N / 3).await;

    let finished = done_prompts(&ledger);
    assert!(
        finished.len() >= N / 3 - CONCURRENCY && finished.len() < N,
        "{} finished before the kill",
        finished.len()
    );
    let sent_before_rerun = server.request_count();

    // Second run to completion.
    let mut child = spawn(&server, &ledger, &out);
    let status = wait_for_exit(&mut child, t0, Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");

    // Every item present exactly once, in order, with its own answer.
    let lines = read_results(&out);
    assert_eq!(lines.len(), N);
    let mut from_ledger = HashSet::new();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i);
        assert_eq!(line["content"], expected_content(&prompt(i)), "{line}");
        if line["from_ledger"] == true {
            from_ledger.insert(prompt(i));
        }
    }
    assert_eq!(
        from_ledger, finished,
        "exactly the finished ones came from the ledger"
    );

    // Nothing finished before the kill was sent again.
    let records = server.records();
    let resent: Vec<&str> = records[sent_before_rerun..]
        .iter()
        .map(|r| r.prompt.as_str())
        .filter(|p| finished.contains(*p))
        .collect();
    assert!(
        resent.is_empty(),
        "finished requests sent again: {resent:?}"
    );

    // Paid twice only for answers that were on the wire when the process died.
    let mut delivered: HashMap<&str, usize> = HashMap::new();
    for r in records.iter().filter(|r| r.delivered_ok) {
        *delivered.entry(r.prompt.as_str()).or_default() += 1;
    }
    assert_eq!(delivered.len(), N, "every prompt answered");
    let twice: Vec<&&str> = delivered.keys().filter(|p| delivered[**p] > 1).collect();
    assert!(twice.len() <= CONCURRENCY, "{twice:?}");
    assert!(twice.iter().all(|p| !finished.contains(**p)));
    assert!(delivered.values().all(|&n| n <= 2));

    // The ledger is complete and its running total covers the server's bill.
    let conn = rusqlite::Connection::open(&ledger).unwrap();
    let (done, spend): (i64, f64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM requests WHERE status = 'done'),
                    (SELECT SUM(cost_usd) FROM attempts)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(done as usize, N);
    assert!(
        spend >= server.billed_usd() - 1e-12,
        "{spend} < {}",
        server.billed_usd()
    );
}
