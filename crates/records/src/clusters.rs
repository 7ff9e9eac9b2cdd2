//! Phase 1B output: clusters of failures and each item's cluster.
//!
//! `clusters.jsonl` holds one [`ClusterRecord`] per cluster (ordered by `id`);
//! `assignments.jsonl` holds one [`ClusterAssignment`] per clustered item.

use serde::{Deserialize, Serialize};

/// One cluster: its size, how tight it is, what it is about and (optionally) a human name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Canonical cluster id, 0-based; stable for the same partition of the same items.
    pub id: usize,
    /// Number of member items.
    pub size: usize,
    /// `size` divided by the number of clustered items, in [0, 1].
    pub share: f64,
    /// Euclidean distance of members to the centroid.
    pub centroid_distance: DistanceStats,
    /// c-TF-IDF keywords, highest score first.
    pub keywords: Vec<Keyword>,
    /// The members nearest the centroid, nearest first.
    pub representatives: Vec<MemberRef>,
    /// Short name and description, when a labelling step ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<ClusterLabel>,
}

/// Summary of member-to-centroid distances.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DistanceStats {
    pub mean: f64,
    pub median: f64,
    pub max: f64,
}

/// A term and its c-TF-IDF score within a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Keyword {
    pub term: String,
    pub score: f32,
}

/// A cluster member shown as an example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRef {
    /// The item's id in the input (e.g. a failure id).
    pub id: String,
    pub text: String,
    /// Euclidean distance to the cluster centroid.
    pub distance: f32,
}

/// A short human-readable name and one-sentence description for a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLabel {
    pub name: String,
    pub description: String,
    /// Who produced the label: a model name, or `keyword-fallback` for the offline labeller.
    pub labelled_by: String,
}

/// Which cluster an item belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterAssignment {
    pub item_id: String,
    pub cluster: usize,
    /// Euclidean distance to the cluster centroid.
    pub distance: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_record_json_shape_is_stable() {
        let record = ClusterRecord {
            id: 2,
            size: 3,
            share: 0.25,
            centroid_distance: DistanceStats {
                mean: 0.5,
                median: 0.5,
                max: 1.0,
            },
            keywords: vec![Keyword {
                term: "fraction".into(),
                score: 0.5,
            }],
            representatives: vec![MemberRef {
                id: "gsm8k/17".into(),
                text: "What is 1/2 + 1/3?".into(),
                distance: 0.25,
            }],
            label: None,
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            json,
            r#"{"id":2,"size":3,"share":0.25,"centroid_distance":{"mean":0.5,"median":0.5,"max":1.0},"keywords":[{"term":"fraction","score":0.5}],"representatives":[{"id":"gsm8k/17","text":"What is 1/2 + 1/3?","distance":0.25}]}"#
        );
        let back: ClusterRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
        let labelled = ClusterRecord {
            label: Some(ClusterLabel {
                name: "Fractions".into(),
                description: "Adding fractions.".into(),
                labelled_by: "keyword-fallback".into(),
            }),
            ..record
        };
        let json = serde_json::to_string(&labelled).unwrap();
        assert!(json.ends_with(r#""label":{"name":"Fractions","description":"Adding fractions.","labelled_by":"keyword-fallback"}}"#));
        assert_eq!(
            serde_json::from_str::<ClusterRecord>(&json).unwrap(),
            labelled
        );
    }
}
