//! A labelling endpoint that fails: every cluster still gets a name, from its keywords, marked
//! `keyword-fallback`, and each fallback is counted with the server's reason. A real HTTP server
//! on loopback answers every request with an error; one that answers well names the clusters.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use failure_mining::patterns::label_patterns;
use llm_client::{ChatClusterLabeller, ClientConfig, Endpoint, LlmClient};
use records::clusters::{ClusterRecord, DistanceStats, Keyword, MemberRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cluster(id: usize, words: &[&str]) -> ClusterRecord {
    ClusterRecord {
        id,
        size: 4,
        share: 0.5,
        centroid_distance: DistanceStats {
            mean: 0.3,
            median: 0.3,
            max: 0.6,
        },
        keywords: words
            .iter()
            .map(|w| Keyword {
                term: w.to_string(),
                score: 0.4,
            })
            .collect(),
        representatives: vec![MemberRef {
            id: format!("tl-{id}"),
            text: format!("Task: {}. Model answered: x.", words[0]),
            distance: 0.1,
        }],
        label: None,
    }
}

/// Serves `reply(request number)` as the HTTP response to every request on a loopback port.
async fn server(reply: fn(usize) -> (u16, String)) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let number = seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // Read the request head and its body (Content-Length), then answer.
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buffer);
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|line| {
                                let (name, value) = line.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buffer.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                let (status, body) = reply(number);
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, count)
}

fn client(url: &str, dir: &std::path::Path) -> LlmClient {
    let mut config = ClientConfig::new(Endpoint::new(url, "labeller"), dir.join("ledger.sqlite"));
    config.max_retries = 0;
    LlmClient::new(config).unwrap()
}

#[tokio::test]
async fn a_failing_labeller_falls_back_to_keywords_visibly() {
    let (url, requests) = server(|_| {
        (
            400,
            r#"{"error":{"message":"model is overloaded","type":"invalid_request_error"}}"#.into(),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let labeller = ChatClusterLabeller::new(client(&url, dir.path()));
    let mut clusters = vec![
        cluster(0, &["fraction", "sum"]),
        cluster(1, &["date", "month"]),
    ];
    let outcome = label_patterns(Some(&labeller), &mut clusters).await;
    assert_eq!(outcome.by_llm, 0);
    assert_eq!(outcome.fallbacks.len(), 2);
    assert!(
        outcome.fallbacks[0].1.contains("400"),
        "{:?}",
        outcome.fallbacks
    );
    for cluster in &clusters {
        let label = cluster.label.as_ref().unwrap();
        assert_eq!(label.labelled_by, "keyword-fallback");
    }
    assert_eq!(clusters[1].label.as_ref().unwrap().name, "date / month");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_working_labeller_names_each_cluster() {
    let (url, _) = server(|number| {
        let name = ["Fraction sums", "Month-end dates"][number % 2];
        let content = format!(r#"{{"name": "{name}", "description": "Items about {name}."}}"#);
        let body = serde_json::json!({
            "id": "x", "object": "chat.completion", "created": 0, "model": "labeller",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        });
        (200, body.to_string())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let labeller = ChatClusterLabeller::new(client(&url, dir.path()));
    let mut clusters = vec![
        cluster(0, &["fraction", "sum"]),
        cluster(1, &["date", "month"]),
    ];
    let outcome = label_patterns(Some(&labeller), &mut clusters).await;
    assert_eq!(outcome.by_llm, 2, "{:?}", outcome.fallbacks);
    assert!(outcome.fallbacks.is_empty());
    assert_eq!(clusters[0].label.as_ref().unwrap().labelled_by, "labeller");
    assert_eq!(clusters[0].label.as_ref().unwrap().name, "Fraction sums");
}
