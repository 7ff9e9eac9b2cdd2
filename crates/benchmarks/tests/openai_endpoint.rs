//! The endpoint model against a real HTTP server on loopback (a small std server in this test
//! that answers like /v1/chat/completions and /v1/completions, echo and logprobs included),
//! driven by run_mmlu: the generative protocols, the log-likelihood protocol, retries of a
//! failing server, and a rerun answered from the ledger without any request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use benchmarks::data::{MmluSplit, default_data_dir, load_mmlu};
use benchmarks::{LanguageModel, MmluOptions, MmluProtocol, OpenAiEndpoint, Prompt, run_mmlu};
use serde_json::{Value, json};

/// What the server saw of each request: path, JSON body, Authorization header.
type Seen = Arc<Mutex<Vec<(String, Value, Option<String>)>>>;

/// The fake server's tokens of a text: a new token at each space or newline; with offsets in
/// characters.
fn fake_tokens(text: &str) -> Vec<(String, u32)> {
    let mut tokens: Vec<(String, u32)> = Vec::new();
    for (offset, c) in (0u32..).zip(text.chars()) {
        match tokens.last_mut() {
            Some((token, _)) if c != ' ' && c != '\n' => token.push(c),
            _ => tokens.push((c.to_string(), offset)),
        }
    }
    tokens
}

/// The fake model likes " B" best everywhere.
fn fake_logprob(token: &str) -> f64 {
    match token {
        " B" => -0.5,
        " A" | " C" | " D" => -1.5,
        _ => -1.0,
    }
}

fn completion_answer(body: &Value) -> Value {
    let prompt = body["prompt"].as_str().unwrap();
    let generated = " C";
    let echo = body["echo"] == true;
    let text = if echo {
        format!("{prompt}{generated}")
    } else {
        generated.to_string()
    };
    let logprobs = body["logprobs"].as_u64().map(|_| {
        let tokens = fake_tokens(&text);
        json!({
            "tokens": tokens.iter().map(|(t, _)| t).collect::<Vec<_>>(),
            "token_logprobs": tokens.iter().enumerate()
                .map(|(i, (t, _))| if echo && i == 0 { Value::Null } else { json!(fake_logprob(t)) })
                .collect::<Vec<_>>(),
            "top_logprobs": tokens.iter().enumerate()
                .map(|(i, _)| if echo && i == 0 { Value::Null } else { json!({" B": -0.5}) })
                .collect::<Vec<_>>(),
            "text_offset": tokens.iter().map(|(_, o)| o).collect::<Vec<_>>(),
        })
    });
    json!({
        "id": "cmpl-1", "object": "text_completion", "created": 1, "model": body["model"],
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
    })
}

/// Serves until the process ends; records each request. The first `fail_first` requests get
/// a 503.
fn serve(listener: TcpListener, seen: Seen, fail_first: usize) {
    std::thread::spawn(move || {
        for (index, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let path = request_line.split_whitespace().nth(1).unwrap().to_string();
            let (mut length, mut auth) = (0, None);
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                let (name, value) = line.trim_end().split_once(": ").unwrap();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.parse().unwrap(),
                    "authorization" => auth = Some(value.to_string()),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap();
            seen.lock()
                .unwrap()
                .push((path.clone(), body.clone(), auth));
            let (status, answer) = if index < fail_first {
                (
                    "503 Service Unavailable",
                    json!({"error": {"message": "warming up", "type": "server_error"}}),
                )
            } else if path.ends_with("/chat/completions") {
                (
                    "200 OK",
                    json!({
                        "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                        "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": "The best answer is B."}}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}
                    }),
                )
            } else {
                ("200 OK", completion_answer(&body))
            };
            let payload = answer.to_string();
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                payload.len()
            );
            let mut stream = reader.into_inner();
            stream.write_all(response.as_bytes()).unwrap();
        }
    });
}

fn start(fail_first: usize) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    serve(listener, seen.clone(), fail_first);
    (format!("http://127.0.0.1:{port}/v1"), seen)
}

/// Fast retries for tests.
fn test_endpoint(
    base_url: &str,
    key_env: Option<&str>,
    ledger: &std::path::Path,
) -> OpenAiEndpoint {
    let model = OpenAiEndpoint::new(base_url, "served-model", key_env, ledger).unwrap();
    let mut config = model.client().config().clone();
    config.backoff = llm_client::Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        max_retry_after: Duration::from_millis(50),
    };
    config.max_retries = 3;
    config.timeout = Duration::from_secs(10);
    drop(model);
    OpenAiEndpoint::with_config(config).unwrap()
}

fn records(dir: &std::path::Path, protocol: MmluProtocol) -> Vec<benchmarks::EvalRecord> {
    std::fs::read_to_string(dir.join(format!("mmlu_{}.jsonl", protocol.name())))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn mmlu_generative_protocols_over_a_loopback_endpoint() {
    let (base_url, seen) = start(0);
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("TUNELOOP_TEST_ENDPOINT_KEY", "sk-test") };
    let ledger = tempfile::tempdir().unwrap();
    let endpoint = test_endpoint(
        &base_url,
        Some("TUNELOOP_TEST_ENDPOINT_KEY"),
        &ledger.path().join("ledger.sqlite"),
    );

    let items = load_mmlu(&default_data_dir(), MmluSplit::Test).unwrap();
    let anatomy: Vec<_> = items.iter().filter(|i| i.subject == "anatomy").collect();
    for (protocol, letter, path) in [
        (MmluProtocol::GenerativeChat, "B", "/v1/chat/completions"),
        (MmluProtocol::GenerativeText, "C", "/v1/completions"),
    ] {
        seen.lock().unwrap().clear();
        let out = tempfile::tempdir().unwrap();
        let options = MmluOptions {
            protocol,
            subjects: Some(vec!["anatomy".into()]),
            limit: Some(6),
            batch_size: 4,
            ..MmluOptions::default()
        };
        let result = run_mmlu(&endpoint, &options, out.path()).unwrap();
        assert_eq!(result.n, 6);
        let records = records(out.path(), protocol);
        let expected_right = records
            .iter()
            .filter(|r| {
                let item = anatomy.iter().find(|i| i.id == r.item_id).unwrap();
                ["A", "B", "C", "D"][item.answer] == letter
            })
            .count();
        assert!(
            records
                .iter()
                .all(|r| r.extracted.as_deref() == Some(letter))
        );
        assert_eq!(result.per_subject["anatomy"].correct, expected_right);

        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 6);
        for (request_path, body, auth) in seen.iter() {
            assert_eq!(request_path, path);
            assert_eq!(body["model"], "served-model");
            assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
            assert_eq!(body["temperature"], 0.0);
            assert!(body["max_tokens"].as_u64().is_some(), "{body}");
        }
        if protocol == MmluProtocol::GenerativeChat {
            let messages = seen[0].1["messages"].as_array().unwrap();
            assert_eq!(messages.len(), 11, "5 shots × 2 turns + the question");
            assert_eq!(messages[1]["role"], "assistant");
            assert!(
                messages[1]["content"]
                    .as_str()
                    .unwrap()
                    .starts_with("The best answer is ")
            );
            let Prompt::Chat(recorded) = &records[0].prompt else {
                panic!("chat prompt recorded")
            };
            assert_eq!(recorded.len(), 11);
        } else {
            assert_eq!(seen[0].1["stop"], json!(["\n"]));
            assert!(seen[0].1["prompt"].as_str().unwrap().ends_with("\nAnswer:"));
        }
    }

    // A server that is not there fails with the URL, after the client's retries.
    let dead = test_endpoint(
        "http://127.0.0.1:1/v1",
        None,
        &ledger.path().join("dead.sqlite"),
    );
    let error = run_mmlu(
        &dead,
        &MmluOptions {
            protocol: MmluProtocol::GenerativeChat,
            subjects: Some(vec!["anatomy".into()]),
            limit: Some(1),
            ..MmluOptions::default()
        },
        tempfile::tempdir().unwrap().path(),
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("http://127.0.0.1:1/v1/chat/completions") && text.contains("4 attempts"),
        "{text}"
    );
    // It cannot score log-likelihoods either, and says which server and why.
    assert!(!dead.supports_loglikelihood());
    let reason = dead.loglikelihood_unsupported_reason();
    assert!(reason.contains("http://127.0.0.1:1/v1"), "{reason}");
}

#[test]
fn mmlu_loglikelihood_over_an_endpoint_retries_and_reruns_for_free() {
    // The first two requests (the support probe's first attempts) get 503s.
    let (base_url, seen) = start(2);
    let ledger_dir = tempfile::tempdir().unwrap();
    let ledger = ledger_dir.path().join("ledger.sqlite");
    let endpoint = test_endpoint(&base_url, None, &ledger);
    assert!(endpoint.supports_loglikelihood());
    let options = MmluOptions {
        protocol: MmluProtocol::Loglikelihood,
        subjects: Some(vec!["anatomy".into()]),
        limit: Some(3),
        ..MmluOptions::default()
    };
    let out = tempfile::tempdir().unwrap();
    let result = run_mmlu(&endpoint, &options, out.path()).unwrap();
    assert_eq!(result.n, 3);
    let records = records(out.path(), MmluProtocol::Loglikelihood);
    assert!(
        records.iter().all(|r| r.extracted.as_deref() == Some("B")),
        "the fake model scores \" B\" highest: {records:?}"
    );
    let sent = seen.lock().unwrap().clone();
    // Probe (2 failures + 1) + 3 items × 4 choices.
    assert_eq!(sent.len(), 3 + 12);
    for (path, body, _) in &sent {
        assert_eq!(path, "/v1/completions");
        assert_eq!(
            (&body["echo"], &body["logprobs"], &body["max_tokens"]),
            (&json!(true), &json!(1), &json!(1))
        );
    }
    assert!(
        sent.iter()
            .any(|(_, body, _)| body["prompt"].as_str().unwrap().ends_with("\nAnswer: B"))
    );

    // A fresh process on the same ledger, writing to a new output directory: every answer
    // comes from the ledger, no request is sent.
    drop(endpoint);
    let again = test_endpoint(&base_url, None, &ledger);
    let out = tempfile::tempdir().unwrap();
    let rerun = run_mmlu(&again, &options, out.path()).unwrap();
    assert_eq!(
        rerun.per_subject["anatomy"].correct,
        result.per_subject["anatomy"].correct
    );
    assert_eq!(seen.lock().unwrap().len(), 15);
    let counts = again.client().ledger().counts().unwrap();
    assert_eq!((counts.done, counts.failed, counts.pending), (13, 0, 0));
}

#[test]
fn a_server_without_prompt_logprobs_is_named_in_the_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Answers every completion without logprobs, as a server that ignores the field would.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length: ") {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let payload = json!({
                "id": "c", "object": "text_completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "text": " x", "finish_reason": "length"}]
            })
            .to_string();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                payload.len()
            );
            reader.into_inner().write_all(response.as_bytes()).unwrap();
        }
    });
    let base_url = format!("http://127.0.0.1:{port}/v1");
    let dir = tempfile::tempdir().unwrap();
    let endpoint = test_endpoint(&base_url, None, &dir.path().join("l.sqlite"));
    assert!(!endpoint.supports_loglikelihood());
    let error = run_mmlu(
        &endpoint,
        &MmluOptions {
            protocol: MmluProtocol::Loglikelihood,
            subjects: Some(vec!["anatomy".into()]),
            limit: Some(1),
            ..MmluOptions::default()
        },
        dir.path(),
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, benchmarks::Error::LoglikelihoodUnsupported { .. })
            && text.contains(&base_url)
            && text.contains("without logprobs"),
        "{text}"
    );
}
