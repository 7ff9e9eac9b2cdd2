//! End-to-end behaviour: order independence, choice of k, stability, outputs on disk.

use clustering::label::{KEYWORD_FALLBACK, label_clusters_with_keywords};
use clustering::metrics::{SilhouetteConfig, silhouette_score};
use clustering::selection::{StabilityConfig, bootstrap_stability, choose_k};
use clustering::{
    AnalysisConfig, ClusterItem, Error, KChoice, KMeans, KMeansConfig, Points, analyse,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use records::clusters::{ClusterAssignment, ClusterRecord};
use records::jsonl::read_jsonl;

/// `groups` overlapping gaussian groups in `dim` dimensions, plus item texts that name the group.
fn dataset(
    groups: usize,
    per_group: usize,
    dim: usize,
    spread: f32,
    seed: u64,
) -> (Vec<Vec<f32>>, Vec<ClusterItem>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let topics = [
        "fraction arithmetic",
        "python lists",
        "chemistry reactions",
        "french grammar",
        "planet orbits",
    ];
    let centres: Vec<Vec<f32>> = (0..groups)
        .map(|_| (0..dim).map(|_| rng.random_range(-3.0..3.0)).collect())
        .collect();
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for (g, centre) in centres.iter().enumerate() {
        for i in 0..per_group {
            // Sum of uniforms: roughly gaussian noise.
            rows.push(
                centre
                    .iter()
                    .map(|c| {
                        c + spread * (0..3).map(|_| rng.random_range(-1.0f32..1.0)).sum::<f32>()
                    })
                    .collect(),
            );
            items.push(ClusterItem {
                id: format!("g{g}-{i:03}"),
                text: format!(
                    "question {i} about {} and more {}",
                    topics[g % topics.len()],
                    topics[g % topics.len()]
                ),
            });
        }
    }
    (rows, items)
}

#[test]
fn shuffled_input_gives_the_same_partition_and_label_ids() {
    // Overlapping groups so that the outcome really depends on the seeded initialisation.
    let (rows, _) = dataset(6, 150, 16, 2.5, 11);
    let points = Points::from_rows(&rows).unwrap();
    let config = KMeansConfig {
        n_init: 3,
        seed: 5,
        ..KMeansConfig::new(6)
    };
    let model = KMeans::fit(&points, &config).unwrap();

    let mut permutation: Vec<usize> = (0..rows.len()).collect();
    permutation.shuffle(&mut ChaCha8Rng::seed_from_u64(99));
    let shuffled_rows: Vec<Vec<f32>> = permutation.iter().map(|&i| rows[i].clone()).collect();
    let shuffled = KMeans::fit(&Points::from_rows(&shuffled_rows).unwrap(), &config).unwrap();

    for (position, &original) in permutation.iter().enumerate() {
        assert_eq!(
            shuffled.labels()[position],
            model.labels()[original],
            "row {original}"
        );
        assert_eq!(shuffled.distances()[position], model.distances()[original]);
    }
    assert_eq!(shuffled.centroids(), model.centroids());
    assert_eq!(shuffled.inertia(), model.inertia());
    // Refitting is reproducible.
    let again = KMeans::fit(&points, &config).unwrap();
    assert_eq!(again.labels(), model.labels());
}

#[test]
fn silhouette_picks_the_true_number_of_groups_and_partition_is_stable() {
    let (rows, _) = dataset(4, 60, 8, 0.4, 3);
    let points = Points::from_rows(&rows).unwrap();
    let base = KMeansConfig {
        n_init: 3,
        ..KMeansConfig::new(2)
    };
    let (selection, model) = choose_k(
        &points,
        &[2, 3, 4, 5, 6],
        &base,
        &SilhouetteConfig::default(),
    )
    .unwrap();
    assert_eq!(selection.best_k, 4, "{selection:?}");
    assert_eq!(model.k(), 4);
    assert_eq!(selection.candidates.len(), 5);
    let best = selection.candidates.iter().find(|c| c.k == 4).unwrap();
    assert!(
        selection
            .candidates
            .iter()
            .all(|c| c.silhouette <= best.silhouette)
    );
    assert!(best.silhouette > 0.7);
    // Inertia falls as k grows.
    assert!(
        selection
            .candidates
            .windows(2)
            .all(|w| w[1].inertia <= w[0].inertia)
    );

    let stability = bootstrap_stability(
        &points,
        model.labels(),
        &KMeansConfig {
            k: 4,
            ..base.clone()
        },
        &StabilityConfig {
            n_bootstrap: 5,
            seed: 1,
        },
    )
    .unwrap();
    assert_eq!(stability.ari.len(), 5);
    assert!(stability.min > 0.99, "{stability:?}");

    // Forcing too many clusters onto 4 groups is visibly less stable.
    let unstable_model = KMeans::fit(
        &points,
        &KMeansConfig {
            k: 9,
            ..base.clone()
        },
    )
    .unwrap();
    let unstable = bootstrap_stability(
        &points,
        unstable_model.labels(),
        &KMeansConfig { k: 9, ..base },
        &StabilityConfig {
            n_bootstrap: 5,
            seed: 1,
        },
    )
    .unwrap();
    assert!(unstable.mean < stability.mean, "{unstable:?}");
}

#[test]
fn sampled_silhouette_is_close_to_exact_and_order_independent() {
    let (rows, _) = dataset(4, 400, 8, 1.5, 21);
    let points = Points::from_rows(&rows).unwrap();
    let model = KMeans::fit(
        &points,
        &KMeansConfig {
            n_init: 2,
            ..KMeansConfig::new(4)
        },
    )
    .unwrap();
    let exact = silhouette_score(
        &points,
        model.labels(),
        &SilhouetteConfig {
            sample_size: 2000,
            seed: 0,
        },
    )
    .unwrap();
    assert!(!exact.sampled && exact.n_evaluated == 1600);
    let config = SilhouetteConfig {
        sample_size: 500,
        seed: 4,
    };
    let sampled = silhouette_score(&points, model.labels(), &config).unwrap();
    assert!(sampled.sampled && sampled.n_evaluated == 500);
    assert!(
        (sampled.score - exact.score).abs() < 0.03,
        "{sampled:?} vs {exact:?}"
    );
    // Same points and labels in another order: the same sample, the same score.
    let reversed_rows: Vec<Vec<f32>> = rows.iter().rev().cloned().collect();
    let reversed_labels: Vec<usize> = model.labels().iter().rev().copied().collect();
    let reversed = silhouette_score(
        &Points::from_rows(&reversed_rows).unwrap(),
        &reversed_labels,
        &config,
    )
    .unwrap();
    assert_eq!(reversed, sampled);
}

#[test]
fn analysis_writes_records_and_report() {
    let (rows, items) = dataset(3, 40, 12, 0.5, 8);
    let points = Points::from_rows(&rows).unwrap();
    let config = AnalysisConfig {
        stability: Some(StabilityConfig {
            n_bootstrap: 3,
            seed: 0,
        }),
        ..AnalysisConfig::new(KChoice::Silhouette(vec![2, 3, 4]))
    };
    let mut analysis = analyse(&points, &items, &config).unwrap();
    assert_eq!(analysis.model.k(), 3);
    label_clusters_with_keywords(&mut analysis.clusters);
    let dir = tempfile::tempdir().unwrap();
    let files = analysis.write(dir.path(), "Test <clusters> & co").unwrap();

    let clusters: Vec<ClusterRecord> = read_jsonl(&files.clusters).unwrap();
    assert_eq!(clusters, analysis.clusters);
    assert_eq!(clusters.len(), 3);
    assert_eq!(clusters.iter().map(|c| c.size).sum::<usize>(), 120);
    assert!((clusters.iter().map(|c| c.share).sum::<f64>() - 1.0).abs() < 1e-12);
    for cluster in &clusters {
        assert_eq!(cluster.size, 40);
        // Each group's texts name one topic; its keywords must be that topic's words.
        let group = &cluster.representatives[0].id[..2];
        let topic = ["fraction", "python", "chemistry"][group[1..].parse::<usize>().unwrap()];
        assert!(
            cluster.keywords.iter().take(2).any(|k| k.term == topic),
            "{:?}",
            cluster.keywords
        );
        assert!(
            cluster
                .representatives
                .iter()
                .all(|m| m.id.starts_with(group))
        );
        assert_eq!(cluster.representatives.len(), 5);
        assert!(
            cluster
                .representatives
                .windows(2)
                .all(|w| w[0].distance <= w[1].distance)
        );
        assert!(cluster.centroid_distance.mean <= cluster.centroid_distance.max);
        let label = cluster.label.as_ref().unwrap();
        assert_eq!(label.labelled_by, KEYWORD_FALLBACK);
        assert!(label.name.contains(topic), "{label:?}");
    }
    let assignments: Vec<ClusterAssignment> = read_jsonl(&files.assignments).unwrap();
    assert_eq!(assignments.len(), 120);
    assert_eq!(assignments[0].item_id, "g0-000");
    assert!(
        assignments
            .iter()
            .zip(analysis.model.labels())
            .all(|(a, &l)| a.cluster == l)
    );

    let markdown = std::fs::read_to_string(&files.report.markdown).unwrap();
    assert!(markdown.starts_with("# Test <clusters> & co\n"));
    assert!(markdown.contains("| id | name | size | share |"));
    assert!(markdown.contains("## Choice of k") && markdown.contains("best k = 3"));
    assert!(markdown.contains("## Stability"));
    assert!(markdown.contains("(clusters_map.svg)"));
    let html = std::fs::read_to_string(&files.report.html).unwrap();
    assert!(html.contains("<title>Test &lt;clusters&gt; &amp; co</title>"));
    assert!(html.contains("<svg") && html.contains("</svg>"));
    assert_eq!(
        html.matches("<circle").count(),
        120 + 2 * 3,
        "all points, and each centroid filled and outlined"
    );
    let svg = std::fs::read_to_string(&files.report.svg).unwrap();
    assert!(svg.starts_with("<svg"));
    assert!(svg.contains("PC1 ("));
    // Only the expected files, no temporaries.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "assignments.jsonl",
            "clusters.jsonl",
            "clusters_map.svg",
            "report.html",
            "report.md"
        ]
    );
}

#[test]
fn bad_inputs_give_clear_errors() {
    let (rows, items) = dataset(2, 5, 4, 0.5, 1);
    let points = Points::from_rows(&rows).unwrap();
    let error = analyse(
        &points,
        &items[..9],
        &AnalysisConfig::new(KChoice::Fixed(2)),
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            Error::LengthMismatch {
                what: "items",
                expected: 10,
                actual: 9
            }
        ),
        "{error}"
    );
    let error = analyse(&points, &items, &AnalysisConfig::new(KChoice::Fixed(11))).unwrap_err();
    assert!(
        matches!(error, Error::KLargerThanN { k: 11, n: 10 }),
        "{error}"
    );
    let error = analyse(
        &points,
        &items,
        &AnalysisConfig::new(KChoice::Silhouette(vec![1, 2])),
    )
    .unwrap_err();
    assert!(
        matches!(error, Error::InvalidParameter { name: "k", .. }),
        "{error}"
    );
    let mut with_nan = rows.clone();
    with_nan[7][2] = f32::NAN;
    let error = Points::from_rows(&with_nan).unwrap_err();
    assert_eq!(error.to_string(), "row 7, column 2: non-finite value NaN");
}
