//! The `serve` binary as the pipeline runs it: a real subprocess started by `ServeProcess` on
//! 127.0.0.1 port 0, used through `LlmClient`, then stopped; no process may be left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llm_client::{ChatRequest, ClientConfig, LlmClient, ServeOptions, ServeProcess, StreamEvent};

fn model_dir() -> PathBuf {
    let paths = assets::AssetPaths::locate();
    paths
        .require(&paths.smollm2_dir())
        .unwrap_or_else(|e| panic!("{e} (run `cargo xtask assets`)"))
}

fn options() -> ServeOptions {
    let mut options = ServeOptions::new(env!("CARGO_BIN_EXE_serve"), model_dir());
    options.ready_timeout = Duration::from_secs(60);
    options
}

/// Whether `pid` still exists (zombies included: an unreaped child is "left behind" too).
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn port_of(base_url: &str) -> u16 {
    base_url
        .trim_end_matches("/v1")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn refuses_connections(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_process_answers_through_the_client_and_stops_cleanly() {
    let process = ServeProcess::start(options()).await.unwrap();
    let pid = process.pid();
    let port = port_of(process.base_url());
    assert!(process.base_url().starts_with("http://127.0.0.1:"));
    assert_ne!(port, 0);
    // Named after the model directory.
    assert_eq!(process.model_name(), "smollm2-135m-instruct");

    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite");
    let client = LlmClient::new(ClientConfig::new(process.endpoint(), &ledger)).unwrap();
    let request = ChatRequest::user("What is the capital of France?")
        .with_temperature(0.0)
        .with_max_tokens(24);
    let mut deltas = String::new();
    let answer = client
        .chat_stream(request.clone(), &mut |event| {
            if let StreamEvent::Delta(text) = event {
                deltas.push_str(text);
            }
        })
        .await
        .unwrap();
    assert!(answer.content.contains("Paris"), "{}", answer.content);
    assert_eq!(deltas, answer.content);
    assert_eq!(client.ledger().counts().unwrap().done, 1);

    let status = process.stop().unwrap();
    assert!(status.success(), "serve exited with {status}");
    assert!(!exists(pid), "serve (pid {pid}) is still there");
    assert!(refuses_connections(port));
    // The answer outlives the server: the ledger has it.
    let again = client.chat(request).await.unwrap();
    assert!(again.from_ledger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_stops_serve_and_a_bad_start_is_reported() {
    let process = ServeProcess::start(options()).await.unwrap();
    let (pid, port) = (process.pid(), port_of(process.base_url()));
    drop(process);
    assert!(!exists(pid));
    assert!(refuses_connections(port));

    let mut missing = options();
    missing.model = PathBuf::from("/nonexistent/model");
    let error = ServeProcess::start(missing).await.unwrap_err().to_string();
    assert!(error.contains("exited"), "{error}");
}

#[test]
fn serve_exits_when_its_parent_closes_stdin() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_serve"))
        .arg("--model")
        .arg(model_dir())
        .arg("--shutdown-on-stdin-close")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("listening on http://127.0.0.1:"),
        "{line:?}"
    );
    drop(child.stdin.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serve kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
