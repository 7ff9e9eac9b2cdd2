//! Cluster labelling through a real HTTP server on loopback: the request carries the JSON
//! schema, the answer becomes a label that names the model that wrote it, and an answer that is
//! no label is an error rather than a made-up name.

mod support;

use clustering::label::{ClusterDescription, ClusterLabeller};
use llm_client::{ChatClusterLabeller, LlmClient};
use support::{FaultServer, ServerConfig, client_config};

fn description() -> ClusterDescription {
    ClusterDescription {
        cluster_id: 3,
        size: 42,
        share: 0.21,
        keywords: vec!["fraction".into(), "denominator".into(), "sum".into()],
        representatives: vec!["What is 1/3 + 1/6?".into(), "Simplify 4/8.".into()],
        other_clusters: Vec::new(),
    }
}

fn label_reply(prompt: &str) -> String {
    if prompt.contains("fraction") && prompt.contains("What is 1/3 + 1/6?") {
        r#"{"name": "Fraction arithmetic", "description": "Adding and simplifying fractions with unlike denominators."}"#.into()
    } else {
        "I cannot help with that.".into()
    }
}

#[tokio::test]
async fn labels_a_cluster_from_a_schema_constrained_answer() {
    let server = FaultServer::start(ServerConfig {
        reply: Some(label_reply),
        ..ServerConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = LlmClient::new(client_config(&server, &dir.path().join("ledger.sqlite"))).unwrap();
    let labeller = ChatClusterLabeller::new(client);

    let label = labeller.label(&description()).await.unwrap();
    assert_eq!(label.name, "Fraction arithmetic");
    assert!(label.description.contains("unlike denominators"));
    assert_eq!(label.labelled_by, "test-model");

    let records = server.records();
    assert_eq!(records.len(), 1);
    assert!(records[0].had_response_format, "the label schema is sent");
    assert_eq!(records[0].body["temperature"], 0.0);
}

#[tokio::test]
async fn an_answer_that_is_no_label_is_an_error() {
    let server = FaultServer::start(ServerConfig {
        reply: Some(|_| "I cannot help with that.".into()),
        ..ServerConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = LlmClient::new(client_config(&server, &dir.path().join("ledger.sqlite"))).unwrap();
    let error = ChatClusterLabeller::new(client)
        .label(&description())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "cluster_label", "{error}");
}
