//! Agreement with scikit-learn / numpy references (fixtures/golden/clustering/golden.json,
//! made by tools/golden/clustering_golden.py).

use clustering::keywords::class_tfidf;
use clustering::metrics::{
    SilhouetteConfig, adjusted_rand_index, silhouette_samples, silhouette_score,
};
use clustering::pca::Pca2;
use clustering::{KMeans, KMeansConfig, Points};
use serde_json::Value;

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/golden/clustering/golden.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn usizes(value: &Value) -> Vec<usize> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect()
}

fn points(value: &Value) -> Points {
    let rows: Vec<Vec<f32>> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    Points::from_rows(&rows).unwrap()
}

#[test]
fn adjusted_rand_index_matches_sklearn() {
    let golden = golden();
    let cases = golden["ari"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    for case in cases {
        let ours = adjusted_rand_index(&usizes(&case["a"]), &usizes(&case["b"])).unwrap();
        let expected = case["ari"].as_f64().unwrap();
        assert!(
            (ours - expected).abs() < 1e-12,
            "ours {ours} sklearn {expected}"
        );
    }
}

#[test]
fn silhouette_matches_sklearn() {
    let golden = golden();
    let case = &golden["silhouette"];
    let points = points(&case["rows"]);
    let labels = usizes(&case["labels"]);
    let samples = silhouette_samples(&points, &labels).unwrap();
    let expected: Vec<f64> = case["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(samples.len(), expected.len());
    for (i, (ours, theirs)) in samples.iter().zip(&expected).enumerate() {
        assert!(
            (ours - theirs).abs() < 1e-9,
            "sample {i}: ours {ours} sklearn {theirs}"
        );
    }
    assert!(
        expected.iter().any(|&s| s < 0.0),
        "fixture has misassigned points"
    );
    assert_eq!(samples[59], 0.0, "singleton cluster");
    let score = silhouette_score(&points, &labels, &SilhouetteConfig::default()).unwrap();
    assert!(!score.sampled);
    assert!((score.score - case["score"].as_f64().unwrap()).abs() < 1e-9);
    // A seeded sample is reproducible and near the exact value.
    let config = SilhouetteConfig {
        sample_size: 40,
        seed: 3,
    };
    let sampled = silhouette_score(&points, &labels, &config).unwrap();
    assert!(sampled.sampled && sampled.n_evaluated == 40);
    assert_eq!(
        sampled,
        silhouette_score(&points, &labels, &config).unwrap()
    );
    assert!((-1.0..=1.0).contains(&sampled.score));
}

#[test]
fn class_tfidf_matches_reference() {
    let golden = golden();
    let case = &golden["ctfidf"];
    let classes: Vec<Vec<String>> = case["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|docs| {
            docs.as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    let top_n = case["top_n"].as_u64().unwrap() as usize;
    let ours = class_tfidf(&classes, top_n);
    let expected = case["keywords"].as_array().unwrap();
    assert_eq!(ours.len(), expected.len());
    for (class, (ours, theirs)) in ours.iter().zip(expected).enumerate() {
        let theirs = theirs.as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "class {class}");
        for (keyword, pair) in ours.iter().zip(theirs) {
            assert_eq!(keyword.term, pair[0].as_str().unwrap(), "class {class}");
            let score = pair[1].as_f64().unwrap();
            assert!(
                (keyword.score as f64 - score).abs() < 1e-6,
                "class {class} {}",
                keyword.term
            );
        }
    }
}

#[test]
fn pca_matches_sklearn() {
    let golden = golden();
    let case = &golden["pca"];
    let points = points(&case["rows"]);
    let pca = Pca2::fit(&points);
    for c in 0..2 {
        let expected: Vec<f64> = case["components"][c]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (ours, theirs) in pca.components[c].iter().zip(&expected) {
            assert!(
                (ours - theirs).abs() < 1e-6,
                "component {c}: {:?} vs {expected:?}",
                pca.components[c]
            );
        }
        let variance = case["explained_variance"][c].as_f64().unwrap();
        assert!((pca.explained_variance[c] - variance).abs() < 1e-6 * variance);
        let ratio = case["explained_variance_ratio"][c].as_f64().unwrap();
        assert!((pca.explained_variance_ratio()[c] - ratio).abs() < 1e-6);
    }
    for row in 0..5 {
        let projected = pca.project(points.row(row));
        for c in 0..2 {
            let expected = case["projections_first5"][row][c].as_f64().unwrap();
            assert!((projected[c] - expected).abs() < 1e-4, "row {row}");
        }
    }
}

#[test]
fn kmeans_matches_sklearn_partition_and_inertia() {
    let golden = golden();
    let case = &golden["kmeans"];
    let points = points(&case["rows"]);
    let model = KMeans::fit(
        &points,
        &KMeansConfig::new(case["k"].as_u64().unwrap() as usize),
    )
    .unwrap();
    let expected = case["inertia"].as_f64().unwrap();
    assert!(
        (model.inertia() - expected).abs() <= 1e-4 * expected,
        "ours {} sklearn {expected}",
        model.inertia()
    );
    assert_eq!(
        adjusted_rand_index(model.labels(), &usizes(&case["labels"])).unwrap(),
        1.0
    );
}
