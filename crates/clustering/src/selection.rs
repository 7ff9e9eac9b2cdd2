//! Choosing k (silhouette over a range) and checking stability (bootstrap adjusted Rand index).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::canonical::canonical_order;
use crate::error::{Error, Result};
use crate::kmeans::{KMeans, KMeansConfig};
use crate::metrics::{SilhouetteConfig, adjusted_rand_index, silhouette_score};
use crate::points::Points;

/// One k tried while choosing k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KCandidate {
    pub k: usize,
    pub silhouette: f64,
    pub inertia: f64,
    pub n_iter: usize,
}

/// Every k tried, and the one with the highest silhouette (the smaller k on a tie).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KSelection {
    pub candidates: Vec<KCandidate>,
    pub best_k: usize,
    /// Points the silhouette was computed on (all of them unless `sampled`).
    pub silhouette_points: usize,
    pub sampled: bool,
}

/// Fits KMeans for each k in `ks` (other settings from `base`) and scores it by silhouette.
/// Returns the selection and the model fitted at the best k.
pub fn choose_k(
    points: &Points,
    ks: &[usize],
    base: &KMeansConfig,
    silhouette: &SilhouetteConfig,
) -> Result<(KSelection, KMeans)> {
    if ks.is_empty() {
        return Err(Error::InvalidParameter {
            name: "ks",
            value: "[]".into(),
            reason: "give at least one k to try",
        });
    }
    if let Some(&k) = ks.iter().find(|&&k| k < 2) {
        return Err(Error::InvalidParameter {
            name: "k",
            value: k.to_string(),
            reason: "silhouette needs k ≥ 2",
        });
    }
    let mut candidates = Vec::with_capacity(ks.len());
    let mut best: Option<(f64, KMeans)> = None;
    let mut silhouette_points = 0;
    let mut sampled = false;
    for &k in ks {
        let model = KMeans::fit(points, &KMeansConfig { k, ..base.clone() })?;
        let score = silhouette_score(points, model.labels(), silhouette)?;
        silhouette_points = score.n_evaluated;
        sampled = score.sampled;
        candidates.push(KCandidate {
            k,
            silhouette: score.score,
            inertia: model.inertia(),
            n_iter: model.n_iter(),
        });
        let better = match &best {
            None => true,
            Some((best_score, best_model)) => {
                score.score > *best_score || (score.score == *best_score && k < best_model.k())
            }
        };
        if better {
            best = Some((score.score, model));
        }
    }
    let (_, model) = best.expect("ks is non-empty");
    Ok((
        KSelection {
            candidates,
            best_k: model.k(),
            silhouette_points,
            sampled,
        },
        model,
    ))
}

/// Resamples drawn again when one has fewer distinct points than k, before giving up.
const MAX_REDRAWS: usize = 20;

/// Bootstrap settings for [`bootstrap_stability`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StabilityConfig {
    pub n_bootstrap: usize,
    pub seed: u64,
}

impl Default for StabilityConfig {
    fn default() -> Self {
        Self {
            n_bootstrap: 10,
            seed: 0,
        }
    }
}

/// How reproducible a partition is under resampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stability {
    pub k: usize,
    /// ARI between the reference labels and each bootstrap model's labels on all points.
    pub ari: Vec<f64>,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
}

/// Refits KMeans (`kmeans`) on `n_bootstrap` resamples drawn with replacement, assigns every
/// point to the refitted centroids and compares with `reference_labels` by adjusted Rand index.
pub fn bootstrap_stability(
    points: &Points,
    reference_labels: &[usize],
    kmeans: &KMeansConfig,
    config: &StabilityConfig,
) -> Result<Stability> {
    let n = points.n_rows();
    if reference_labels.len() != n {
        return Err(Error::LengthMismatch {
            what: "reference labels",
            expected: n,
            actual: reference_labels.len(),
        });
    }
    if config.n_bootstrap == 0 {
        return Err(Error::InvalidParameter {
            name: "n_bootstrap",
            value: "0".into(),
            reason: "need at least one resample",
        });
    }
    // Resample in content order so the draws do not depend on input order.
    let order = canonical_order(points);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut ari = Vec::with_capacity(config.n_bootstrap);
    for round in 0..config.n_bootstrap {
        let config = KMeansConfig {
            seed: kmeans.seed.wrapping_add(round as u64 + 1),
            ..kmeans.clone()
        };
        // A resample of a small input can hold fewer distinct points than k: draw again.
        let mut attempts = 0;
        let model = loop {
            let rows: Vec<usize> = (0..n).map(|_| order[rng.random_range(0..n)]).collect();
            match KMeans::fit(&points.select(&rows), &config) {
                Err(Error::TooFewDistinctPoints { .. }) if attempts < MAX_REDRAWS => attempts += 1,
                other => break other?,
            }
        };
        let labels = model.predict(points)?;
        ari.push(adjusted_rand_index(reference_labels, &labels)?);
    }
    let mean = ari.iter().sum::<f64>() / ari.len() as f64;
    let std = (ari.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / ari.len() as f64).sqrt();
    let min = ari.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(Stability {
        k: kmeans.k,
        ari,
        mean,
        std,
        min,
    })
}
