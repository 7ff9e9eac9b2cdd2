//! The labelling seam: prompt, schema, tolerant parsing, and a labeller driven through the trait.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use clustering::Error;
use clustering::label::{
    ClusterDescription, ClusterLabeller, KeywordFallbackLabeller, label_clusters,
    label_clusters_contrastive, label_json_schema, label_prompt, parse_label_response,
};
use records::clusters::{ClusterLabel, ClusterRecord, DistanceStats, Keyword, MemberRef};

/// Drives a future that never waits on I/O (our test labellers) to completion.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut context) {
            return value;
        }
    }
}

fn record(id: usize) -> ClusterRecord {
    ClusterRecord {
        id,
        size: 12,
        share: 0.125,
        centroid_distance: DistanceStats {
            mean: 0.4,
            median: 0.35,
            max: 0.9,
        },
        keywords: ["fraction", "denominator", "sum", "half"]
            .iter()
            .map(|t| Keyword {
                term: t.to_string(),
                score: 0.3,
            })
            .collect(),
        representatives: vec![
            MemberRef {
                id: "gsm8k/1".into(),
                text: "What is 1/2 +\n 1/3?".into(),
                distance: 0.1,
            },
            MemberRef {
                id: "gsm8k/2".into(),
                text: "x".repeat(1000),
                distance: 0.2,
            },
        ],
        label: None,
    }
}

#[test]
fn prompt_carries_keywords_examples_and_share() {
    let description = ClusterDescription::from_record(&record(3), 3, 5, 50);
    assert_eq!(description.keywords, ["fraction", "denominator", "sum"]);
    assert_eq!(description.representatives[0], "What is 1/2 + 1/3?");
    assert_eq!(
        description.representatives[1].chars().count(),
        51,
        "cut to 50 chars + ellipsis"
    );
    let prompt = label_prompt(&description);
    assert!(prompt.system.contains("\"name\"") && prompt.system.contains("\"description\""));
    assert!(
        prompt
            .user
            .contains("Cluster 3 has 12 items (12.5% of all failures)")
    );
    assert!(
        prompt
            .user
            .contains("Keywords (most distinctive first): fraction, denominator, sum\n")
    );
    assert!(prompt.user.contains("1. What is 1/2 + 1/3?\n2. xxx"));
    let schema = label_json_schema();
    assert_eq!(
        schema["required"],
        serde_json::json!(["name", "description"])
    );
    assert_eq!(schema["additionalProperties"], false);
}

#[test]
fn parsing_tolerates_common_reply_shapes() {
    let expected = |name: &str, description: &str| ClusterLabel {
        name: name.into(),
        description: description.into(),
        labelled_by: "m".into(),
    };
    let cases = [
        (
            r#"{"name": "Fraction sums", "description": "Adding fractions with unlike denominators."}"#,
            (
                "Fraction sums",
                "Adding fractions with unlike denominators.",
            ),
        ),
        (
            "```json\n{\"name\":\"Fraction sums\",\"description\":\"Adds fractions.\"}\n```",
            ("Fraction sums", "Adds fractions."),
        ),
        (
            "<think>The {keywords} say fractions</think>Sure! {\"Title\": \"Fraction sums\", \"Summary\": \"Adds   fractions.\"} Hope it helps.",
            ("Fraction sums", "Adds fractions."),
        ),
        (
            r#"{"cluster": {"label": "Fraction sums", "explanation": "Adds fractions."}}"#,
            ("Fraction sums", "Adds fractions."),
        ),
        (
            "**Name:** Fraction sums\n**Description:** Adds fractions.",
            ("Fraction sums", "Adds fractions."),
        ),
        (
            r#"{"name": "Uses \"quotes\" {braces}", "description": "ok"}"#,
            ("Uses \"quotes\" {braces}", "ok"),
        ),
    ];
    for (reply, (name, description)) in cases {
        assert_eq!(
            parse_label_response(reply, "m").unwrap(),
            expected(name, description),
            "{reply}"
        );
    }
    let long = format!(
        "{{\"name\": \"{}\", \"description\": \"d\"}}",
        "word ".repeat(40)
    );
    assert!(
        parse_label_response(&long, "m")
            .unwrap()
            .name
            .chars()
            .count()
            <= 61
    );
}

#[test]
fn unusable_replies_are_errors_with_an_excerpt() {
    for reply in [
        "I cannot help with that.",
        r#"{"description": "no name"}"#,
        r#"{"name": "  "}"#,
        "",
    ] {
        let error = parse_label_response(reply, "m").unwrap_err();
        assert!(
            matches!(error, Error::LabelResponse { .. }),
            "{reply}: {error}"
        );
    }
    let error = parse_label_response("I cannot help with that.", "m").unwrap_err();
    assert!(error.to_string().contains("\"I cannot help with that.\""));
}

/// A labeller that answers with canned model replies, parsed the way the LLM client does.
struct ReplyingLabeller {
    replies: Vec<&'static str>,
}

impl ClusterLabeller for ReplyingLabeller {
    type Error = Error;

    async fn label(&self, description: &ClusterDescription) -> Result<ClusterLabel, Error> {
        parse_label_response(self.replies[description.cluster_id], "canned-model")
    }
}

#[test]
fn label_clusters_drives_the_trait_and_reports_the_failing_cluster() {
    let mut clusters = vec![record(0), record(1)];
    let labeller = ReplyingLabeller {
        replies: vec![
            r#"{"name":"Fractions","description":"Adds fractions."}"#,
            "no idea",
        ],
    };
    let error = block_on(label_clusters(&labeller, &mut clusters)).unwrap_err();
    assert!(
        matches!(error, Error::Labeller { cluster: 1, .. }),
        "{error}"
    );
    assert_eq!(clusters[0].label.as_ref().unwrap().name, "Fractions");
    assert!(clusters[1].label.is_none());

    block_on(label_clusters(&KeywordFallbackLabeller, &mut clusters)).unwrap();
    let label = clusters[1].label.as_ref().unwrap();
    assert_eq!(label.name, "fraction / denominator / sum");
    assert_eq!(label.labelled_by, "keyword-fallback");
    assert!(label.description.starts_with("12 items (12.5%)"));
}

/// Records every description it is shown and answers from canned replies.
struct RecordingLabeller {
    replies: Vec<&'static str>,
    seen: std::sync::Mutex<Vec<ClusterDescription>>,
}

impl ClusterLabeller for RecordingLabeller {
    type Error = Error;

    async fn label(&self, description: &ClusterDescription) -> Result<ClusterLabel, Error> {
        self.seen.lock().unwrap().push(description.clone());
        parse_label_response(self.replies[description.cluster_id], "canned-model")
    }
}

#[test]
fn contrastive_labelling_shows_the_other_clusters_and_falls_back_visibly() {
    let mut clusters = vec![record(0), record(1), record(2)];
    clusters[2].keywords[0].term = "calendar".into();
    let labeller = RecordingLabeller {
        replies: vec![
            r#"{"name":"Fractions","description":"Adds fractions."}"#,
            "no idea",
            r#"{"name":"Dates","description":"Counts days."}"#,
        ],
        seen: Default::default(),
    };
    let outcomes = block_on(label_clusters_contrastive(&labeller, &mut clusters));
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes[0].1.is_ok() && outcomes[2].1.is_ok());
    assert_eq!(outcomes[1].0, 1);
    assert!(
        outcomes[1].1.as_ref().unwrap_err().contains("no idea"),
        "{outcomes:?}"
    );
    // The failed cluster still has a name, marked as the keyword fallback.
    assert_eq!(
        clusters[1].label.as_ref().unwrap().labelled_by,
        "keyword-fallback"
    );
    assert_eq!(clusters[2].label.as_ref().unwrap().name, "Dates");
    // Each cluster was shown the other two, not itself.
    let seen = labeller.seen.lock().unwrap();
    assert_eq!(seen[0].other_clusters.len(), 2);
    assert!(
        seen[0].other_clusters[1].starts_with("cluster 2")
            && seen[0].other_clusters[1].contains("calendar")
    );
    assert!(
        seen[2]
            .other_clusters
            .iter()
            .all(|line| !line.starts_with("cluster 2"))
    );
    let prompt = label_prompt(&seen[0]);
    assert!(
        prompt.user.contains("for contrast") && prompt.user.contains("calendar"),
        "{}",
        prompt.user
    );
}

#[test]
fn a_label_copied_from_its_prompt_or_schema_falls_back_to_keywords() {
    let mut clusters = vec![record(0), record(1), record(2), record(3)];
    clusters[0].representatives[0].text = "1. Task: commonsense qa. Model answered: B.".into();
    clusters[3].representatives[0].text = "Compute 3/4 + 1/8 and simplify the result.".into();
    let labeller = RecordingLabeller {
        replies: vec![
            // A representative's opening, as SmolLM2-135M answered under the schema.
            r#"{"name":"1. Task: commonsense qa.","description":"Everyday knowledge."}"#,
            // The schema's own description, echoed.
            r#"{"name":"Fraction sums","description":"One sentence: what the items share and which skill they test."}"#,
            // A short phrase that is also in the prompt is still a fair name.
            r#"{"name":"Fraction","description":"Adding fractions with unlike denominators."}"#,
            // Case and spacing do not hide a copy.
            r#"{"name":"compute 3/4 +   1/8 AND simplify","description":"Sums."}"#,
        ],
        seen: Default::default(),
    };
    let outcomes = block_on(label_clusters_contrastive(&labeller, &mut clusters));
    let error = |i: usize| outcomes[i].1.as_ref().err().cloned().unwrap_or_default();
    assert!(
        error(0).contains("copies its prompt") && error(0).contains("1. Task: commonsense qa."),
        "{outcomes:?}"
    );
    assert!(
        error(1).contains("One sentence: what the items share"),
        "{outcomes:?}"
    );
    assert!(outcomes[2].1.is_ok(), "{outcomes:?}");
    assert_eq!(clusters[2].label.as_ref().unwrap().name, "Fraction");
    assert!(error(3).contains("compute 3/4"), "{outcomes:?}");
    for index in [0, 1, 3] {
        assert_eq!(
            clusters[index].label.as_ref().unwrap().labelled_by,
            "keyword-fallback"
        );
    }
    // The schema bounds what a constrained labeller may write.
    let schema = label_json_schema();
    assert_eq!(schema["properties"]["name"]["maxLength"], 60);
}
