//! The server over real HTTP on loopback with SmolLM2-135M-Instruct (real weights, real
//! tokenizer and chat template from `assets/smollm2-135m-instruct`, made by `cargo xtask assets`).
//!
//! One server per test binary (the model loads once); each test talks to it with reqwest or
//! with the project's own `LlmClient`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_openai::types::chat::{CreateChatCompletionResponse, CreateChatCompletionStreamResponse};
use llama::burn::tensor::Device;
use llama::{ChatMessage, Pretrained, Tokenizer};
use serde_json::{Value, json};
use serve::{EngineOptions, EngineStats, Server, ServerOptions};

const MODEL: &str = "smollm2-test";

fn model_dir() -> PathBuf {
    let paths = assets::AssetPaths::locate();
    paths
        .require(&paths.smollm2_dir())
        .unwrap_or_else(|e| panic!("{e} (run `cargo xtask assets`)"))
}

fn load() -> Pretrained {
    Pretrained::load(&model_dir(), &Device::flex()).expect("SmolLM2 loads")
}

struct Shared {
    base: String,
    stats: Arc<EngineStats>,
    tokenizer: Tokenizer,
}

/// The shared server, on its own runtime thread so it outlives each test's runtime.
fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let model = load();
        let tokenizer = model.tokenizer.clone();
        let server = Server::new(
            model,
            ServerOptions {
                model_name: MODEL.into(),
                engine: EngineOptions {
                    max_batch: 8,
                    max_queue: 64,
                    batch_window: Duration::from_millis(20),
                },
            },
        )
        .unwrap();
        let stats = server.stats();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = serve::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                server
                    .serve(listener, std::future::pending())
                    .await
                    .unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        Shared {
            base: format!("http://{addr}/v1"),
            stats,
            tokenizer,
        }
    })
}

fn http() -> reqwest::Client {
    // reqwest is built without a bundled crypto provider (see llm-client); any is fine here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn chat_body(question: &str, max_tokens: u32) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

async fn post(body: &Value) -> (u16, Value) {
    let response = http()
        .post(format!("{}/chat/completions", shared().base))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Content of a non-streamed greedy answer.
async fn answer(question: &str, max_tokens: u32) -> String {
    let (status, body) = post(&chat_body(question, max_tokens)).await;
    assert_eq!(status, 200, "{body}");
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The `data:` payloads of an SSE body, checking the framing.
async fn stream(body: &Value) -> Vec<String> {
    let response = http()
        .post(format!("{}/chat/completions", shared().base))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter(|event| !event.trim().is_empty() && !event.starts_with(':'))
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                .to_owned()
        })
        .collect()
}

fn prompt_tokens(tokenizer: &Tokenizer, question: &str) -> usize {
    let template = tokenizer.chat_template().unwrap().unwrap();
    let text = template
        .render(&[ChatMessage::user(question)], true)
        .unwrap();
    tokenizer.encode(&text, false).unwrap().len()
}

const FRANCE: &str = "What is the capital of France?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_paris_with_exact_usage_and_the_same_text_streamed() {
    let shared = shared();
    let (status, body) = post(&chat_body(FRANCE, 32)).await;
    assert_eq!(status, 200, "{body}");
    // The official response type reads it.
    let parsed: CreateChatCompletionResponse = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(parsed.object, "chat.completion");
    assert_eq!(parsed.model, MODEL);
    assert!(parsed.id.starts_with("chatcmpl-"));
    let content = parsed.choices[0].message.content.clone().unwrap();
    assert_eq!(content, "The capital of France is Paris.");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    let usage = parsed.usage.unwrap();
    // Prompt: the chat template's tokens; completion: the answer's tokens plus <|im_end|>.
    assert_eq!(
        usage.prompt_tokens as usize,
        prompt_tokens(&shared.tokenizer, FRANCE)
    );
    let answer_tokens = shared.tokenizer.encode(&content, false).unwrap().len();
    assert_eq!(usage.completion_tokens as usize, answer_tokens + 1);
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );

    let mut streamed = chat_body(FRANCE, 32);
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = stream(&streamed).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    for chunk in &chunks {
        let typed: CreateChatCompletionStreamResponse =
            serde_json::from_value(chunk.clone()).unwrap();
        assert_eq!(typed.object, "chat.completion.chunk");
        assert_eq!(typed.id, chunks[0]["id"].as_str().unwrap());
        assert!(
            chunk.get("usage").is_some(),
            "include_usage: every chunk has usage"
        );
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, content);
    // Text came in several pieces, not at once.
    let pieces = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert!(pieces >= 5, "{pieces} content chunks");
    let (usage_chunk, choice_chunks) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], body["usage"]);
    let last = choice_chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(
        choice_chunks[..choice_chunks.len() - 1]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null() && c["usage"].is_null())
    );

    // Without include_usage there is no usage field at all.
    streamed.as_object_mut().unwrap().remove("stream_options");
    let events = stream(&streamed).await;
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert!(first.get("usage").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_limits_and_stop_strings() {
    let (status, body) = post(&chat_body(FRANCE, 3)).await;
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(body["choices"][0]["message"]["content"], "The capital of");

    for stop in [json!("Paris"), json!(["nowhere", " is P"])] {
        let mut request = chat_body(FRANCE, 32);
        request["stop"] = stop.clone();
        let (status, body) = post(&request).await;
        assert_eq!(status, 200);
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{stop}");
        let expected = if stop.is_string() {
            "The capital of France is "
        } else {
            "The capital of France"
        };
        assert_eq!(body["choices"][0]["message"]["content"], expected, "{stop}");
        // Streamed, the stop string's first characters are held back and never shown.
        request["stream"] = json!(true);
        let events = stream(&request).await;
        let text: String = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str::<Value>(e).unwrap())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text, expected, "{stop}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_each_gets_its_own_answer() {
    let shared = shared();
    let questions = [
        "What is the capital of France?",
        "Name a primary colour.",
        "What is 2 + 2?",
        "Say hello in Spanish.",
        "What colour is the sky on a clear day?",
        "Name a fruit that is yellow.",
    ];
    let mut solo = Vec::new();
    for question in questions {
        solo.push(answer(question, 10).await);
    }
    let batches_before = shared.stats.batches.load(Ordering::SeqCst);
    let requests_before = shared.stats.requests.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for (index, &question) in questions.iter().enumerate() {
        let streamed = index % 3 == 1;
        tasks.push(tokio::spawn(async move {
            if streamed {
                let mut body = chat_body(question, 10);
                body["stream"] = json!(true);
                let events = stream(&body).await;
                events[..events.len() - 1]
                    .iter()
                    .map(|e| serde_json::from_str::<Value>(e).unwrap())
                    .filter_map(|c| {
                        c["choices"][0]["delta"]["content"]
                            .as_str()
                            .map(str::to_owned)
                    })
                    .collect::<String>()
            } else {
                answer(question, 10).await
            }
        }));
    }
    for (task, expected) in tasks.into_iter().zip(&solo) {
        assert_eq!(&task.await.unwrap(), expected);
    }
    let batches = shared.stats.batches.load(Ordering::SeqCst) - batches_before;
    let requests = shared.stats.requests.load(Ordering::SeqCst) - requests_before;
    assert!(requests >= 6);
    // Six requests sent at once did not run one by one.
    assert!(
        batches < requests,
        "{batches} batches for {requests} requests"
    );
    assert!(shared.stats.largest_batch.load(Ordering::SeqCst) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_is_reproducible() {
    let mut body = chat_body("Write a word.", 8);
    body["temperature"] = json!(1.0);
    body["seed"] = json!(42);
    let (_, first) = post(&body).await;
    let (_, again) = post(&body).await;
    assert_eq!(
        first["choices"][0]["message"],
        again["choices"][0]["message"]
    );
    let mut contents = std::collections::BTreeSet::new();
    for seed in 0..6 {
        body["seed"] = json!(seed);
        let (status, answer) = post(&body).await;
        assert_eq!(status, 200);
        contents.insert(answer["choices"][0]["message"]["content"].to_string());
    }
    assert!(
        contents.len() > 1,
        "six seeds gave one answer: {contents:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors() {
    let base = &shared().base;
    let client = http();
    let send = |body: String| {
        let client = client.clone();
        async move {
            let response = client
                .post(format!("{base}/chat/completions"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let good = chat_body("Hi", 4);
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        body.to_string()
    };
    let cases: Vec<(String, u16, Option<&str>, Option<&str>)> = vec![
        ("{\"model\":".into(), 400, None, None),
        (
            with("model", json!("gpt-4o")),
            404,
            Some("model"),
            Some("model_not_found"),
        ),
        (with("n", json!(2)), 400, Some("n"), None),
        (
            with("temperature", json!(3)),
            400,
            Some("temperature"),
            None,
        ),
        (
            with("temperature", json!("warm")),
            400,
            Some("temperature"),
            None,
        ),
        (
            with("max_tokens", json!(100_000)),
            400,
            Some("max_tokens"),
            Some("context_length_exceeded"),
        ),
        (with("messages", json!([])), 400, Some("messages"), None),
        (
            with("messages", json!([{"role": "user"}])),
            400,
            Some("messages[0].content"),
            None,
        ),
        (
            with("top_logprobs", json!(3)),
            400,
            Some("top_logprobs"),
            None,
        ),
        (
            with("stop", json!(["a", "b", "c", "d", "e"])),
            400,
            Some("stop"),
            None,
        ),
    ];
    for (body, status, param, code) in cases {
        let (got, error) = send(body.clone()).await;
        assert_eq!(got, status, "{body}: {error}");
        let detail = &error["error"];
        assert!(
            detail["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{error}"
        );
        assert!(detail["type"].is_string(), "{error}");
        assert_eq!(detail["param"].as_str(), param, "{body}: {error}");
        assert_eq!(detail["code"].as_str(), code, "{body}: {error}");
    }
    let unknown = client
        .get(format!("{base}/nothing/here"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let error: Value = unknown.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    let wrong_method = client
        .get(format!("{base}/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert!(wrong_method.json::<Value>().await.unwrap()["error"]["message"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_listed() {
    let base = &shared().base;
    let list: Value = http()
        .get(format!("{base}/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], MODEL);
    assert_eq!(list["data"][0]["object"], "model");
    let one = http()
        .get(format!("{base}/models/{MODEL}"))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let missing = http()
        .get(format!("{base}/models/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_client_streams_and_records_in_its_ledger() {
    use llm_client::{ChatRequest, ClientConfig, Endpoint, LlmClient, StreamEvent};
    let dir = tempfile::tempdir().unwrap();
    let config = ClientConfig::new(
        Endpoint::new(&shared().base, MODEL),
        dir.path().join("ledger.sqlite"),
    );
    let client = LlmClient::new(config).unwrap();
    let request = ChatRequest::user(FRANCE)
        .with_temperature(0.0)
        .with_max_tokens(32);
    let paris = client.chat(request.clone()).await.unwrap();
    assert_eq!(paris.content, "The capital of France is Paris.");
    assert_eq!(paris.finish_reason.as_deref(), Some("stop"));
    assert_eq!(paris.model, MODEL);
    assert_eq!(paris.completion_tokens, 8);
    assert!(!paris.from_ledger);
    let again = client.chat(request).await.unwrap();
    assert!(again.from_ledger);

    let streamed_request = ChatRequest::user("Name a primary colour.")
        .with_temperature(0.0)
        .with_max_tokens(12);
    let mut deltas = Vec::new();
    let streamed = client
        .chat_stream(streamed_request.clone(), &mut |event| {
            if let StreamEvent::Delta(text) = event {
                deltas.push(text.to_owned());
            }
        })
        .await
        .unwrap();
    assert!(deltas.len() >= 3, "{deltas:?}");
    assert_eq!(deltas.concat(), streamed.content);
    assert_eq!(streamed.content, answer("Name a primary colour.", 12).await);
    assert!(streamed.completion_tokens > 0 && streamed.prompt_tokens > 0);
    let counts = client.ledger().counts().unwrap();
    assert_eq!((counts.done, counts.failed, counts.attempts), (2, 0, 2));
    assert!(client.chat(streamed_request).await.unwrap().from_ledger);
}

async fn post_completion(body: &Value) -> (u16, Value) {
    let response = http()
        .post(format!("{}/completions", shared().base))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

const SENTENCE: &str = "The capital of France is Paris";

/// Echo + logprobs (what lm-evaluation-harness sends to score a continuation): the prompt's
/// tokens come back with the log-probabilities the in-process model gives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_with_logprobs_scores_the_prompt_like_the_model_does() {
    let shared = shared();
    let body = json!({"model": MODEL, "prompt": SENTENCE, "max_tokens": 0, "echo": true,
                      "logprobs": 2, "temperature": 0});
    let (status, scored) = post_completion(&body).await;
    assert_eq!(status, 200, "{scored}");
    assert_eq!(scored["object"], "text_completion");
    assert!(scored["id"].as_str().unwrap().starts_with("cmpl-"));
    let choice = &scored["choices"][0];
    assert_eq!(choice["text"], SENTENCE);
    let ids = shared.tokenizer.encode(SENTENCE, false).unwrap();
    assert_eq!(scored["usage"]["prompt_tokens"], ids.len());
    assert_eq!(scored["usage"]["completion_tokens"], 0);
    let lp = &choice["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), ids.len());
    assert_eq!(tokens.concat(), SENTENCE);
    let offsets: Vec<usize> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap() as usize)
        .collect();
    for (token, &offset) in tokens.iter().zip(&offsets) {
        assert!(
            SENTENCE[offset..].starts_with(token),
            "{token:?} at {offset}"
        );
    }
    assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());

    // The same numbers from the model in-process (llama's log-likelihood of everything after
    // the first token).
    let model = load();
    let reference = llama::loglikelihood::loglikelihood(
        &model.model,
        &[llama::loglikelihood::LoglikelihoodRequest {
            context: ids[..1].to_vec(),
            continuation: ids[1..].to_vec(),
        }],
        1,
        &model.model.device(),
    )
    .unwrap();
    for (position, want) in reference[0].token_logprobs.iter().enumerate() {
        let got = lp["token_logprobs"][position + 1].as_f64().unwrap();
        assert!((got - f64::from(*want)).abs() < 1e-4, "{got} vs {want}");
        let top = lp["top_logprobs"][position + 1].as_object().unwrap();
        assert!((1..=2).contains(&top.len()), "{top:?}");
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(got <= best + 1e-6);
    }

    // With one generated token (lm-evaluation-harness's shape): the prompt's numbers are
    // unchanged and one entry follows, starting where the prompt ends.
    let mut one = body.clone();
    one["max_tokens"] = json!(1);
    let (status, more) = post_completion(&one).await;
    assert_eq!(status, 200, "{more}");
    let more_lp = &more["choices"][0]["logprobs"];
    assert_eq!(more_lp["tokens"].as_array().unwrap().len(), ids.len() + 1);
    assert_eq!(more_lp["text_offset"][ids.len()], SENTENCE.chars().count());
    assert!(
        more["choices"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with(SENTENCE)
    );
    for position in 1..ids.len() {
        let a = more_lp["token_logprobs"][position].as_f64().unwrap();
        let b = lp["token_logprobs"][position].as_f64().unwrap();
        assert!((a - b).abs() < 1e-4, "position {position}: {a} vs {b}");
    }

    // Without echo: only the generated text and its tokens.
    let (status, plain) = post_completion(
        &json!({"model": MODEL, "prompt": "The capital of France is",
        "max_tokens": 3, "temperature": 0, "logprobs": 0}),
    )
    .await;
    assert_eq!(status, 200, "{plain}");
    let text = plain["choices"][0]["text"].as_str().unwrap();
    let plain_lp = &plain["choices"][0]["logprobs"];
    let pieces: Vec<&str> = plain_lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(pieces.concat(), text);
    assert_eq!(plain_lp["text_offset"][0], 0);
    assert!(plain_lp["top_logprobs"][0].as_object().unwrap().is_empty());

    // Requests that cannot be served are refused, naming the field.
    for (body, param) in [
        (
            json!({"model": MODEL, "prompt": "x", "max_tokens": 0}),
            "max_tokens",
        ),
        (
            json!({"model": MODEL, "prompt": "x", "stream": true}),
            "stream",
        ),
        (json!({"model": MODEL, "prompt": ["a", "b"]}), "prompt"),
        (
            json!({"model": MODEL, "prompt": [1, 2, 99_999_999]}),
            "prompt",
        ),
    ] {
        let (status, error) = post_completion(&body).await;
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["error"]["param"], param, "{error}");
    }
    let (status, _) = post_completion(&json!({"model": "other", "prompt": "x"})).await;
    assert_eq!(status, 404);
}

/// Chat `logprobs`: one entry per answer token, spelling the answer; greedy decoding took the
/// most likely token each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_follow_the_greedy_answer() {
    let mut body = chat_body(FRANCE, 32);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(3);
    let (status, answer) = post(&body).await;
    assert_eq!(status, 200, "{answer}");
    let parsed: CreateChatCompletionResponse = serde_json::from_value(answer.clone()).unwrap();
    let content = parsed.choices[0].message.content.clone().unwrap();
    assert_eq!(content, "The capital of France is Paris.");
    let tokens = parsed.choices[0]
        .logprobs
        .as_ref()
        .unwrap()
        .content
        .clone()
        .unwrap();
    let spelled: String = tokens.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(spelled, content);
    for token in &tokens {
        assert_eq!(token.top_logprobs.len(), 3);
        assert_eq!(token.top_logprobs[0].token, token.token, "greedy");
        assert!((token.top_logprobs[0].logprob - token.logprob).abs() < 1e-5);
        assert!(token.top_logprobs[1].logprob <= token.top_logprobs[0].logprob);
        assert_eq!(token.bytes.as_deref(), Some(token.token.as_bytes()));
    }
    // Through llm-client: the same numbers, kept in its ledger.
    use llm_client::{ChatRequest, ClientConfig, CompletionRequest, Endpoint, LlmClient};
    let dir = tempfile::tempdir().unwrap();
    let client = LlmClient::new(ClientConfig::new(
        Endpoint::new(&shared().base, MODEL),
        dir.path().join("ledger.sqlite"),
    ))
    .unwrap();
    let via_client = client
        .chat(
            ChatRequest::user(FRANCE)
                .with_temperature(0.0)
                .with_max_tokens(32)
                .with_logprobs(3),
        )
        .await
        .unwrap();
    let client_tokens = via_client.logprobs.unwrap();
    assert_eq!(client_tokens.len(), tokens.len());
    for (a, b) in client_tokens.iter().zip(&tokens) {
        assert_eq!(a.token, b.token);
        assert!((a.logprob.unwrap() - b.logprob).abs() < 1e-4);
    }
    let scored = client
        .completion(
            CompletionRequest::new(SENTENCE)
                .with_max_tokens(1)
                .with_temperature(0.0)
                .with_echo()
                .with_logprobs(1),
        )
        .await
        .unwrap();
    let entries = scored.logprobs.unwrap();
    let paris = entries
        .iter()
        .find(|t| t.text_offset == Some(SENTENCE.find(" Paris").unwrap() as u32))
        .unwrap();
    assert_eq!(paris.token, " Paris");
    assert!(paris.logprob.unwrap() < 0.0);
}

/// The cluster-label schema phase 1B sends, and a judge's: what a 135M model cannot write
/// reliably unprompted.
fn label_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 60},
            "description": {"type": "string"}
        },
        "required": ["name", "description"],
        "additionalProperties": false
    })
}

fn judge_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": 1, "maximum": 10},
            "reason": {"type": "string", "maxLength": 200}
        },
        "required": ["score", "reason"],
        "additionalProperties": false
    })
}

fn with_schema(mut body: Value, schema: Value) -> Value {
    body["response_format"] = json!({
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": true}
    });
    body
}

/// Checks `text` against the two test schemas independently of the server's grammar: serde
/// parses it, and the keys, their order and their types are those asked for.
fn check_label(text: &str) {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let object = value.as_object().unwrap();
    assert_eq!(object.len(), 2, "{text}");
    assert!(
        text.trim_start().starts_with("{") && text.find("\"name\"") < text.find("\"description\"")
    );
    let name = object["name"].as_str().unwrap();
    assert!(name.chars().count() <= 60, "{name}");
    assert!(object["description"].is_string());
}

fn check_judge(text: &str) -> i64 {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let score = value["score"].as_i64().unwrap_or_else(|| panic!("{text}"));
    assert!((1..=10).contains(&score), "{text}");
    assert!(value["reason"].as_str().unwrap().chars().count() <= 200);
    assert_eq!(value.as_object().unwrap().len(), 2);
    score
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_outputs_are_enforced_while_decoding() {
    let question = "Name this group of failed test items: 'What is 17 + 25?', 'Compute 9 * 14.', \
                    'What is 120 - 37?'. Reply as JSON with a name and a description.";
    // Unconstrained, the 135M model does not write this JSON (what phase 1B's keyword fallback
    // met); constrained, it must.
    let free = answer(question, 96).await;
    assert!(
        serde_json::from_str::<Value>(&free).is_err(),
        "the unconstrained answer already parses, so this test shows nothing: {free}"
    );
    let (status, body) = post(&with_schema(chat_body(question, 160), label_schema())).await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    let content = choice["message"]["content"].as_str().unwrap();
    eprintln!("constrained label: {content}");
    check_label(content);
    assert_eq!(choice["finish_reason"], "stop", "{content}");

    // A batch of sampled judge answers, each with its own seed: every one parses, in range.
    let requests = (0..6).map(|seed| {
        let mut body = with_schema(
            chat_body(
                "Grade this answer from 1 to 10. Question: 2 + 2? Answer: 5.",
                80,
            ),
            judge_schema(),
        );
        body["temperature"] = json!(1.0);
        body["seed"] = json!(seed);
        async move { post(&body).await }
    });
    let answers = futures_util::future::join_all(requests).await;
    let mut scores = Vec::new();
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        if body["choices"][0]["finish_reason"] == "stop" {
            scores.push(check_judge(content));
        } else {
            // Cut off by max_tokens inside the reason: still a valid prefix.
            assert!(content.starts_with("{"), "{content}");
        }
    }
    assert!(
        scores.len() >= 4,
        "most sampled judge answers finish: {scores:?}"
    );

    // Streamed, the deltas add up to a valid object; `json_object` takes any object.
    let mut body = with_schema(chat_body(question, 160), label_schema());
    body["stream"] = json!(true);
    let text: String = stream(&body)
        .await
        .iter()
        .filter(|data| *data != "[DONE]")
        .filter_map(|data| {
            let chunk: Value = serde_json::from_str(data).unwrap();
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, content, "streamed and collected answers agree");
    let mut body = chat_body("List three colours.", 120);
    body["response_format"] = json!({"type": "json_object"});
    let (status, body) = post(&body).await;
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    if body["choices"][0]["finish_reason"] == "stop" {
        let value: Value =
            serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
        assert!(value.is_object());
    } else {
        // Cut off by max_tokens: still the start of an object.
        assert!(content.trim_start().starts_with('{'), "{content}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_that_cannot_be_enforced_are_refused_naming_the_keyword() {
    let schema = json!({
        "type": "object",
        "properties": {"date": {"type": "string", "pattern": "^[0-9]{4}-"}},
        "required": ["date"]
    });
    let (status, body) = post(&with_schema(chat_body("When?", 8), schema)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["param"],
        "response_format.json_schema.schema.properties.date.pattern"
    );
    let (status, body) = post(&with_schema(
        chat_body("When?", 8),
        json!({"type": "array"}),
    ))
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "response_format.json_schema.schema");
}

/// Random walks over the real vocabulary: at every step a token the mask allows is drawn at
/// random (not what the model prefers, so rare paths are taken: escapes, multi-byte
/// characters, numbers, whitespace), and every finished walk is JSON of the schema.
#[test]
fn every_token_the_mask_allows_keeps_the_answer_valid() {
    use rand::{Rng, SeedableRng};
    use serve::json_constraint::{JsonGrammar, TokenMask};
    let tokenizer = Tokenizer::from_hf_dir(model_dir()).unwrap();
    let stop = tokenizer.eos_token_ids().to_vec();
    let built = std::time::Instant::now();
    let table = tokenizer.token_bytes().unwrap();
    let mask = TokenMask::new(table.clone(), &stop);
    // What `Server::new` spends on it at start-up (a figure for the docs, not a bar).
    eprintln!(
        "token bytes and mask built in {:.1} ms",
        built.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(mask.vocab_size(), 49_152);
    let length = |id: u32| table[id as usize].as_ref().map_or(usize::MAX, Vec::len);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (schema, check) in [
        (label_schema(), check_label as fn(&str)),
        (judge_schema(), |t: &str| {
            check_judge(t);
        }),
    ] {
        let grammar = JsonGrammar::from_schema(&schema).unwrap();
        let mut finished = 0;
        let (mut steps, mut spent) = (0u32, Duration::ZERO);
        for _ in 0..40 {
            let mut state = grammar.start();
            let mut bytes = Vec::new();
            for _ in 0..800 {
                let mut logits = vec![0.0f32; mask.vocab_size()];
                let started = std::time::Instant::now();
                let allowed = mask.restrict(&grammar, &state, &mut logits);
                spent += started.elapsed();
                steps += 1;
                assert!(allowed > 0);
                let ids: Vec<u32> = (0..logits.len() as u32)
                    .filter(|&i| logits[i as usize] == 0.0)
                    .collect();
                assert_eq!(ids.len(), allowed);
                // Favour short structural tokens now and then so walks finish.
                let id = if rng.random_bool(0.3) {
                    *ids.iter().min_by_key(|&&i| length(i)).unwrap()
                } else {
                    ids[rng.random_range(0..ids.len())]
                };
                if state.is_complete() {
                    assert!(stop.contains(&id));
                    break;
                }
                assert!(mask.advance(&grammar, &mut state, id));
                bytes.extend(table[id as usize].as_ref().unwrap());
            }
            if state.is_complete() {
                finished += 1;
                check(&String::from_utf8(bytes).unwrap());
            }
        }
        assert!(finished >= 10, "{finished} of 40 walks finished");
        // For docs/benchmarks.md (a figure, not a bar: the test asserts behaviour only).
        eprintln!(
            "{} walks finished of 40; mask over 49,152 tokens: {:.3} ms per step ({steps} steps)",
            finished,
            spent.as_secs_f64() * 1e3 / f64::from(steps)
        );
    }
}
