//! Partition quality: silhouette (exact, or on a seeded sample for large n) and the adjusted
//! Rand index. Both follow scikit-learn's definitions (`silhouette_score`, `adjusted_rand_score`).

use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::canonical::canonical_order;
use crate::error::{Error, Result};
use crate::linalg::dot_rows;
use crate::points::Points;

/// Rows per parallel block of the pairwise-distance pass.
const SILHOUETTE_BLOCK_ROWS: usize = 64;

/// Exact silhouette up to `sample_size` points; above that, on `sample_size` points drawn
/// (seeded, in content order) without replacement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SilhouetteConfig {
    pub sample_size: usize,
    pub seed: u64,
}

impl Default for SilhouetteConfig {
    fn default() -> Self {
        Self {
            sample_size: 4000,
            seed: 0,
        }
    }
}

/// A mean silhouette and the points it was computed on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Silhouette {
    pub score: f64,
    pub n_evaluated: usize,
    pub sampled: bool,
}

/// Mean silhouette coefficient (Euclidean) of `labels` over `points`.
pub fn silhouette_score(
    points: &Points,
    labels: &[usize],
    config: &SilhouetteConfig,
) -> Result<Silhouette> {
    let n = points.n_rows();
    if labels.len() != n {
        return Err(Error::LengthMismatch {
            what: "labels",
            expected: n,
            actual: labels.len(),
        });
    }
    if config.sample_size < 2 {
        return Err(Error::InvalidParameter {
            name: "sample_size",
            value: config.sample_size.to_string(),
            reason: "need at least 2 points",
        });
    }
    let order = canonical_order(points);
    let sampled = n > config.sample_size;
    let positions: Vec<usize> = if sampled {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut chosen = sample(&mut rng, n, config.sample_size).into_vec();
        chosen.sort_unstable();
        chosen
    } else {
        (0..n).collect()
    };
    let rows: Vec<usize> = positions.iter().map(|&p| order[p]).collect();
    let subset = points.select(&rows);
    let subset_labels: Vec<usize> = rows.iter().map(|&r| labels[r]).collect();
    let values = silhouette_samples(&subset, &subset_labels)?;
    Ok(Silhouette {
        score: values.iter().sum::<f64>() / values.len() as f64,
        n_evaluated: values.len(),
        sampled,
    })
}

/// Silhouette of every point (exact, O(n²·d) through an f64 GEMM).
pub fn silhouette_samples(points: &Points, labels: &[usize]) -> Result<Vec<f64>> {
    let n = points.n_rows();
    if labels.len() != n {
        return Err(Error::LengthMismatch {
            what: "labels",
            expected: n,
            actual: labels.len(),
        });
    }
    // Compact label ids so per-cluster sums are dense.
    let mut ids: Vec<usize> = labels.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let n_labels = ids.len();
    if n_labels < 2 || n_labels > n - 1 {
        return Err(Error::SilhouetteLabelCount {
            n_labels,
            n_samples: n,
        });
    }
    let dense: Vec<usize> = labels
        .iter()
        .map(|l| ids.binary_search(l).expect("label is in ids"))
        .collect();
    let mut counts = vec![0usize; n_labels];
    for &l in &dense {
        counts[l] += 1;
    }
    let dim = points.dim();
    let x: Vec<f64> = points.as_flat().iter().map(|&v| v as f64).collect();
    let norms: Vec<f64> = x
        .chunks_exact(dim)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect();
    let values: Vec<f64> = x
        .par_chunks(SILHOUETTE_BLOCK_ROWS * dim)
        .enumerate()
        .flat_map_iter(|(block, x_block)| {
            let start = block * SILHOUETTE_BLOCK_ROWS;
            let rows = x_block.len() / dim;
            let mut dots = vec![0.0f64; rows * n];
            dot_rows(x_block, &x, dim, &mut dots);
            let mut out = Vec::with_capacity(rows);
            let mut sums = vec![0.0f64; n_labels];
            for r in 0..rows {
                let i = start + r;
                sums.iter_mut().for_each(|s| *s = 0.0);
                for (j, &dot) in dots[r * n..(r + 1) * n].iter().enumerate() {
                    if j != i {
                        sums[dense[j]] += (norms[i] + norms[j] - 2.0 * dot).max(0.0).sqrt();
                    }
                }
                let own = dense[i];
                if counts[own] <= 1 {
                    out.push(0.0);
                    continue;
                }
                let a = sums[own] / (counts[own] - 1) as f64;
                let b = (0..n_labels)
                    .filter(|&c| c != own)
                    .map(|c| sums[c] / counts[c] as f64)
                    .fold(f64::INFINITY, f64::min);
                let denominator = a.max(b);
                out.push(if denominator > 0.0 {
                    (b - a) / denominator
                } else {
                    0.0
                });
            }
            out
        })
        .collect();
    Ok(values)
}

/// Adjusted Rand index between two labelings of the same items (1 = identical partitions,
/// ~0 = chance agreement).
pub fn adjusted_rand_index(labels_a: &[usize], labels_b: &[usize]) -> Result<f64> {
    if labels_a.len() != labels_b.len() {
        return Err(Error::LengthMismatch {
            what: "second labeling",
            expected: labels_a.len(),
            actual: labels_b.len(),
        });
    }
    let n = labels_a.len() as i128;
    let mut pairs: Vec<(usize, usize)> = labels_a
        .iter()
        .copied()
        .zip(labels_b.iter().copied())
        .collect();
    pairs.sort_unstable();
    // Contingency cell sizes, row sums and column sums, squared and summed.
    let mut sum_cells_sq: i128 = 0;
    let mut run = 0i128;
    for (index, pair) in pairs.iter().enumerate() {
        run += 1;
        if index + 1 == pairs.len() || pairs[index + 1] != *pair {
            sum_cells_sq += run * run;
            run = 0;
        }
    }
    let sum_sq_of_counts = |mut values: Vec<usize>| -> i128 {
        values.sort_unstable();
        let mut total = 0i128;
        let mut run = 0i128;
        for index in 0..values.len() {
            run += 1;
            if index + 1 == values.len() || values[index + 1] != values[index] {
                total += run * run;
                run = 0;
            }
        }
        total
    };
    let sum_rows_sq = sum_sq_of_counts(labels_a.to_vec());
    let sum_cols_sq = sum_sq_of_counts(labels_b.to_vec());
    // Pair confusion matrix (ordered pairs), as scikit-learn's pair_confusion_matrix.
    let tp = sum_cells_sq - n;
    let fp = sum_cols_sq - sum_cells_sq;
    let fn_ = sum_rows_sq - sum_cells_sq;
    let tn = n * n - fp - fn_ - sum_cells_sq;
    if fn_ == 0 && fp == 0 {
        return Ok(1.0);
    }
    let (tp, fp, fn_, tn) = (tp as f64, fp as f64, fn_ as f64, tn as f64);
    Ok(2.0 * (tp * tn - fn_ * fp) / ((tp + fn_) * (fn_ + tn) + (tp + fp) * (fp + tn)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ari_basic_properties() {
        let a = [0, 0, 1, 1, 2, 2];
        assert_eq!(adjusted_rand_index(&a, &a).unwrap(), 1.0);
        // Renaming clusters does not change the partition.
        assert_eq!(adjusted_rand_index(&a, &[5, 5, 3, 3, 9, 9]).unwrap(), 1.0);
        assert!(matches!(
            adjusted_rand_index(&a, &[0, 1]),
            Err(Error::LengthMismatch {
                expected: 6,
                actual: 2,
                ..
            })
        ));
    }

    #[test]
    fn silhouette_rejects_single_cluster() {
        let points = Points::from_rows(&[[0.0f32], [1.0], [2.0]]).unwrap();
        assert!(matches!(
            silhouette_samples(&points, &[0, 0, 0]),
            Err(Error::SilhouetteLabelCount {
                n_labels: 1,
                n_samples: 3
            })
        ));
        assert!(matches!(
            silhouette_samples(&points, &[0, 1, 2]),
            Err(Error::SilhouetteLabelCount {
                n_labels: 3,
                n_samples: 3
            })
        ));
    }
}
