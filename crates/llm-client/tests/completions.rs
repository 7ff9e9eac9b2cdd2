//! Text completions and log-probabilities against the fault-injecting loopback server: the
//! wire fields sent, the answer read back (echo, per-token log-probabilities, offsets, top
//! alternatives), retries, and the ledger serving the same answer again for free.

mod support;

use std::collections::HashMap;

use llm_client::{ChatRequest, CompletionRequest, Error, LlmClient, Progress};
use support::{
    Fault, FaultServer, ServerConfig, client_config, expected_content, fake_logprob, fake_tokens,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_with_logprobs_scores_the_prompt_and_a_rerun_is_free() {
    let server = FaultServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(&server, &dir.path().join("ledger.sqlite"));
    let client = LlmClient::new(config.clone()).unwrap();
    let prompt = "Question: two plus two?\nAnswer: four ";
    let request = CompletionRequest::new(prompt)
        .with_max_tokens(1)
        .with_temperature(0.0)
        .with_echo()
        .with_logprobs(2);
    let answer = client.completion(request.clone()).await.unwrap();

    let sent = &server.records()[0].body;
    assert_eq!(sent["prompt"], prompt);
    assert_eq!(sent["echo"], true);
    assert_eq!(sent["logprobs"], 2);
    assert_eq!(sent["max_tokens"], 1);
    assert_eq!(sent["temperature"], 0.0);
    assert!(sent.get("messages").is_none());

    // max_tokens = 1: the fake answers with one word after the echoed prompt.
    let generated = expected_content(prompt);
    let first_word = generated.split(' ').next().unwrap();
    assert_eq!(answer.content, format!("{prompt}{first_word}"));
    let logprobs = answer.logprobs.clone().expect("logprobs were asked for");
    let expected = fake_tokens(&answer.content);
    assert_eq!(logprobs.len(), expected.len());
    assert_eq!(
        logprobs[0].logprob, None,
        "nothing precedes the first token"
    );
    assert!(logprobs[0].top_logprobs.is_empty());
    for (got, (token, offset)) in logprobs.iter().zip(&expected).skip(1) {
        assert_eq!(&got.token, token);
        assert_eq!(got.text_offset, Some(*offset));
        assert_eq!(got.logprob, Some(fake_logprob(token)));
        // Most likely first, whatever order the JSON object had.
        assert_eq!(got.top_logprobs.len(), 2);
        assert_eq!(&got.top_logprobs[0].token, token);
        assert_eq!(got.top_logprobs[1].token, "alt1");
        assert!(got.top_logprobs[0].logprob > got.top_logprobs[1].logprob);
    }
    // The offsets locate the continuation in the text.
    let answer_start = prompt.find("four").unwrap() as u32;
    let four = logprobs
        .iter()
        .find(|t| t.text_offset == Some(answer_start))
        .unwrap();
    assert_eq!(four.token, "four ");

    // A new client on the same ledger: same answer, log-probabilities included, no HTTP.
    drop(client);
    let client = LlmClient::new(config).unwrap();
    let again = client.completion(request).await.unwrap();
    assert!(again.from_ledger);
    assert_eq!(again.content, answer.content);
    assert_eq!(again.logprobs, answer.logprobs);
    assert_eq!(server.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_are_retried_and_batched_in_order() {
    let prompts: Vec<String> = (0..6).map(|i| format!("text prompt {i}")).collect();
    let script: HashMap<String, Vec<Fault>> = [(
        prompts[2].clone(),
        vec![
            Fault::Status(503),
            Fault::RateLimit {
                retry_after: Some("0".into()),
                retry_after_ms: None,
            },
        ],
    )]
    .into_iter()
    .collect();
    let server = FaultServer::start(ServerConfig {
        script,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = LlmClient::new(client_config(&server, &dir.path().join("l.sqlite"))).unwrap();
    let requests = prompts
        .iter()
        .map(|p| CompletionRequest::new(p.clone()).with_max_tokens(64))
        .collect();
    let report = client.completion_batch(requests, Progress::Hidden).await;
    assert_eq!(report.counts.ok, 6);
    for (prompt, result) in prompts.iter().zip(&report.results) {
        let answer = result.as_ref().unwrap();
        assert_eq!(answer.content, expected_content(prompt), "no echo asked");
        assert_eq!(answer.logprobs, None, "none asked");
    }
    assert_eq!(report.results[2].as_ref().unwrap().attempts, 3);
    assert_eq!(server.attempts_for(&prompts[2]).len(), 3);
    assert!(
        server
            .records()
            .iter()
            .all(|r| r.body["prompt"].is_string())
    );

    // Requests that cannot mean anything are refused before sending.
    let empty = client.completion(CompletionRequest::new("")).await;
    assert!(matches!(empty, Err(Error::Config { ref field, .. }) if field == "prompt"));
    let nothing = client
        .completion(CompletionRequest::new("x").with_max_tokens(0))
        .await;
    assert!(matches!(nothing, Err(Error::Config { ref field, .. }) if field == "max_tokens"));
    assert_eq!(server.request_count(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_come_back_and_survive_the_ledger() {
    let server = FaultServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(&server, &dir.path().join("ledger.sqlite"));
    let client = LlmClient::new(config.clone()).unwrap();
    let request = ChatRequest::user("name a colour")
        .with_max_tokens(16)
        .with_logprobs(3);
    let answer = client.chat(request.clone()).await.unwrap();
    let sent = &server.records()[0].body;
    assert_eq!(sent["logprobs"], true);
    assert_eq!(sent["top_logprobs"], 3);

    let logprobs = answer.logprobs.clone().unwrap();
    let text: String = logprobs.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(text, answer.content);
    for token in &logprobs {
        assert_eq!(token.logprob, Some(fake_logprob(&token.token)));
        assert_eq!(token.text_offset, None, "chat logprobs carry no offsets");
        assert_eq!(token.top_logprobs.len(), 3);
        assert_eq!(token.top_logprobs[0].token, token.token);
    }
    // Without logprobs it is another request (another hash), answered without them.
    let plain = client
        .chat(ChatRequest::user("name a colour").with_max_tokens(16))
        .await
        .unwrap();
    assert_ne!(plain.request_hash, answer.request_hash);
    assert_eq!(plain.logprobs, None);
    assert!(server.records()[1].body.get("logprobs").is_none());

    let again = LlmClient::new(config)
        .unwrap()
        .chat(request.clone())
        .await
        .unwrap();
    assert!(again.from_ledger);
    assert_eq!(again.logprobs, answer.logprobs);

    // Streams do not collect log-probabilities: refused, not silently dropped.
    let mut sink = |_: llm_client::StreamEvent<'_>| {};
    let streamed = client.chat_stream(request, &mut sink).await;
    assert!(matches!(streamed, Err(Error::Config { ref field, .. }) if field == "logprobs"));
    assert_eq!(server.request_count(), 2);
}
