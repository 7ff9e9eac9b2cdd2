//! The OpenAI-compatible client against a real HTTP server on loopback (a small std server in
//! this test that answers like /v1/chat/completions and /v1/completions), driven by run_mmlu.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use benchmarks::data::{MmluSplit, default_data_dir, load_mmlu};
use benchmarks::{LanguageModel, MmluOptions, MmluProtocol, OpenAiEndpoint, Prompt, run_mmlu};

/// What the server saw of each request: path, JSON body, Authorization header.
type Seen = Arc<Mutex<Vec<(String, serde_json::Value, Option<String>)>>>;

/// Serves until the process ends; records each request.
fn serve(listener: TcpListener, seen: Seen) {
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
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            seen.lock().unwrap().push((path.clone(), body, auth));
            let answer = if path.ends_with("/chat/completions") {
                serde_json::json!({"choices": [{"message": {"role": "assistant", "content": "The best answer is B."}}]})
            } else {
                serde_json::json!({"choices": [{"text": " C"}]})
            };
            let payload = answer.to_string();
            let mut stream = reader.into_inner();
            // Alternate plain and chunked responses.
            let response = if index % 2 == 0 {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
                    payload.len()
                )
            } else {
                let (a, b) = payload.split_at(payload.len() / 2);
                format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                    a.len(),
                    b.len()
                )
            };
            stream.write_all(response.as_bytes()).unwrap();
        }
    });
}

#[test]
fn mmlu_generative_protocols_over_a_loopback_endpoint() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    serve(listener, seen.clone());
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("TUNELOOP_TEST_ENDPOINT_KEY", "sk-test") };
    let endpoint = OpenAiEndpoint::new(
        &format!("http://127.0.0.1:{port}/v1"),
        "served-model",
        Some("TUNELOOP_TEST_ENDPOINT_KEY"),
    )
    .unwrap();
    assert!(!endpoint.supports_loglikelihood());

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
        let records: Vec<benchmarks::EvalRecord> =
            std::fs::read_to_string(out.path().join(format!("mmlu_{}.jsonl", protocol.name())))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
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
            assert_eq!(seen[0].1["stop"], serde_json::json!(["\n"]));
            assert!(seen[0].1["prompt"].as_str().unwrap().ends_with("\nAnswer:"));
        }
    }

    // A server error surfaces with the URL and status.
    let dead = OpenAiEndpoint::new("http://127.0.0.1:1/v1", "m", None).unwrap();
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
    assert!(
        error
            .to_string()
            .contains("http://127.0.0.1:1/v1/chat/completions"),
        "{error}"
    );
}
