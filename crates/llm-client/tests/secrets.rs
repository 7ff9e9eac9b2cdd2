//! The API key never appears in logs, the ledger, error messages or the run directory.
//! (One test in this binary: it installs a global log capture at TRACE level, including the
//! `log` records of reqwest.)

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use llm_client::{ChatRequest, LlmClient, Progress, Secret};
use support::{FaultServer, ServerConfig, client_config};

const KEY: &str = "sk-test-7f3a9c1e5b2d4680aa";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn all_bytes_under(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(all_bytes_under(&path));
        } else {
            files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_never_leaks() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let dir = tempfile::tempdir().unwrap();
    // A server that expects another key answers 401 and echoes the key it got.
    let wrong = FaultServer::start(ServerConfig {
        expected_key: Some("sk-the-right-one".into()),
        ..Default::default()
    })
    .await;
    let mut config = client_config(&wrong, &dir.path().join("run/ledger.sqlite"));
    config.endpoint.api_key = Some(Secret::new(KEY));
    let client = LlmClient::new(config.clone()).unwrap();
    let report = client
        .chat_batch(vec![ChatRequest::user("hello")], Progress::Hidden)
        .await;
    let err = report.results[0].as_ref().unwrap_err();
    assert!(
        matches!(err, llm_client::Error::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert_eq!(wrong.request_count(), 1, "401 is not retried");
    let shown = format!("{err} {err:?} {report:?} {config:?} {client:?}");
    assert!(shown.contains("Incorrect API key provided: ***"), "{shown}");
    assert!(!shown.contains(KEY), "{shown}");

    // A server that expects this key: it was really sent.
    let right = FaultServer::start(ServerConfig {
        expected_key: Some(KEY.into()),
        ..Default::default()
    })
    .await;
    let mut config = client_config(&right, &dir.path().join("run/ledger.sqlite"));
    config.endpoint.api_key = Some(Secret::new(KEY));
    let client = LlmClient::new(config).unwrap();
    let answer = client.chat(ChatRequest::user("hello")).await.unwrap();
    assert_eq!(answer.content, "echo: hello");
    assert_eq!(
        right.records()[0].authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    drop(client);

    // Ledger (database, WAL and shared-memory files) and everything else in the run folder.
    let files = all_bytes_under(dir.path());
    assert!(
        files
            .iter()
            .any(|(name, _)| name.ends_with("ledger.sqlite"))
    );
    for (name, bytes) in &files {
        assert!(!contains(bytes, KEY), "key found in {name}");
    }
    let conn = rusqlite::Connection::open(dir.path().join("run/ledger.sqlite")).unwrap();
    let error: String = conn
        .query_row(
            "SELECT error FROM requests WHERE status = 'failed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(error.contains("***"), "{error}");

    // Logs, at TRACE for every target, reqwest included.
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("attempt failed"),
        "logs were captured:\n{logs}"
    );
    assert!(!logs.contains(KEY), "key found in logs:\n{logs}");
}
