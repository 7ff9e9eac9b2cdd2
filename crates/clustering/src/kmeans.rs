//! Lloyd's KMeans with k-means++ initialisation and restarts, independent of input order.
//!
//! Semantics follow scikit-learn's `KMeans(algorithm="lloyd")` so results and timings compare
//! like for like: greedy k-means++ with `2 + ⌊ln k⌋` local trials, `n_init` restarts keeping the
//! lowest inertia, `max_iter` iterations, convergence when labels stop changing or the total
//! squared centre shift falls to `tol × mean per-feature variance`, empty clusters re-seeded with
//! the points farthest from their centres.
//!
//! Speed: the assignment step is a GEMM (`‖x‖² − 2x·c + ‖c‖²`, with `‖x‖²` dropped for the
//! argmin) over fixed 2048-row blocks in parallel, fused with the centroid sums. Blocks are fixed
//! by `n` alone and partial sums are reduced in block order, so results do not depend on the
//! number of threads.
//!
//! Order independence: rows are first sorted by a content hash (see `canonical`), all seeded
//! choices are made in that order, and cluster ids are numbered by their first member in that
//! order. Shuffling the input therefore permutes the labels with it and changes nothing else.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::canonical::{canonical_order, count_distinct_sorted};
use crate::error::{Error, Result};
use crate::linalg::{dot_rows, splitmix64, squared_distance, squared_norms};
use crate::points::Points;

/// Rows per parallel work item; fixed so that float reductions do not depend on thread count.
const BLOCK_ROWS: usize = 2048;
/// Rows per GEMM call inside a block (keeps the tile and its dot products in L2).
const TILE_ROWS: usize = 256;

/// KMeans parameters; defaults match scikit-learn's `KMeans(n_init=10)`.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansConfig {
    pub k: usize,
    /// Independent k-means++ restarts; the run with the lowest inertia wins.
    pub n_init: usize,
    pub max_iter: usize,
    /// Relative tolerance: stop when the summed squared centre shift ≤ `tol` × mean feature variance.
    pub tol: f64,
    pub seed: u64,
}

impl KMeansConfig {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            n_init: 10,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
        }
    }

    fn validate(&self) -> Result<()> {
        let invalid = |name, value: String, reason| Error::InvalidParameter {
            name,
            value,
            reason,
        };
        if self.k == 0 {
            return Err(invalid("k", "0".into(), "need at least one cluster"));
        }
        if self.n_init == 0 {
            return Err(invalid("n_init", "0".into(), "need at least one run"));
        }
        if self.max_iter == 0 {
            return Err(invalid(
                "max_iter",
                "0".into(),
                "need at least one iteration",
            ));
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(invalid(
                "tol",
                self.tol.to_string(),
                "must be finite and ≥ 0",
            ));
        }
        Ok(())
    }
}

/// A fitted KMeans model and the partition of the points it was fitted on.
#[derive(Debug, Clone)]
pub struct KMeans {
    k: usize,
    dim: usize,
    /// `k × dim`, row `j` is cluster `j`'s centroid.
    centroids: Vec<f32>,
    /// Per input row, in the caller's order.
    labels: Vec<usize>,
    /// Euclidean distance of each input row to its centroid.
    distances: Vec<f32>,
    inertia: f64,
    n_iter: usize,
    restart_inertias: Vec<f64>,
}

impl KMeans {
    /// Clusters `points` into `config.k` clusters.
    pub fn fit(points: &Points, config: &KMeansConfig) -> Result<Self> {
        config.validate()?;
        let n = points.n_rows();
        if config.k > n {
            return Err(Error::KLargerThanN { k: config.k, n });
        }
        let order = canonical_order(points);
        let canonical = points.select(&order);
        let distinct = count_distinct_sorted(&canonical);
        if config.k > distinct {
            return Err(Error::TooFewDistinctPoints {
                k: config.k,
                distinct,
            });
        }
        let fitted = fit_canonical(&canonical, config);

        // Number clusters by their first member in canonical order.
        let mut renumber = vec![usize::MAX; config.k];
        let mut next = 0;
        for &label in &fitted.labels {
            let label = label as usize;
            if renumber[label] == usize::MAX {
                renumber[label] = next;
                next += 1;
            }
        }
        // A cluster left empty by the final assignment (rare) goes last.
        for slot in renumber.iter_mut().filter(|slot| **slot == usize::MAX) {
            *slot = next;
            next += 1;
        }
        let dim = points.dim();
        let mut centroids = vec![0.0f32; config.k * dim];
        for (old, &new) in renumber.iter().enumerate() {
            centroids[new * dim..(new + 1) * dim]
                .copy_from_slice(&fitted.centers[old * dim..(old + 1) * dim]);
        }
        let mut labels = vec![0usize; n];
        let mut distances = vec![0.0f32; n];
        for (position, &original) in order.iter().enumerate() {
            labels[original] = renumber[fitted.labels[position] as usize];
            distances[original] = fitted.squared_distances[position].sqrt();
        }
        Ok(Self {
            k: config.k,
            dim,
            centroids,
            labels,
            distances,
            inertia: fitted.inertia,
            n_iter: fitted.n_iter,
            restart_inertias: fitted.restart_inertias,
        })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `k × dim` row-major centroids.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }

    pub fn centroid(&self, cluster: usize) -> &[f32] {
        &self.centroids[cluster * self.dim..(cluster + 1) * self.dim]
    }

    /// Cluster of each fitted point, in the order the points were given.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// Euclidean distance of each fitted point to its centroid.
    pub fn distances(&self) -> &[f32] {
        &self.distances
    }

    /// Sum of squared distances of the fitted points to their centroids.
    pub fn inertia(&self) -> f64 {
        self.inertia
    }

    /// Lloyd iterations of the winning restart.
    pub fn n_iter(&self) -> usize {
        self.n_iter
    }

    /// Final inertia of every restart, in restart order.
    pub fn restart_inertias(&self) -> &[f64] {
        &self.restart_inertias
    }

    /// Nearest centroid for each of `points`.
    pub fn predict(&self, points: &Points) -> Result<Vec<usize>> {
        if points.dim() != self.dim {
            return Err(Error::DimensionMismatch {
                row: 0,
                expected: self.dim,
                actual: points.dim(),
            });
        }
        let centre_norms = squared_norms(&self.centroids, self.dim);
        let mut labels = vec![0u32; points.n_rows()];
        assign(
            points.as_flat(),
            self.dim,
            &self.centroids,
            &centre_norms,
            &mut labels,
            false,
        );
        Ok(labels.into_iter().map(|label| label as usize).collect())
    }
}

/// Result of the best restart on canonically ordered points (labels in canonical order).
struct CanonicalFit {
    centers: Vec<f32>,
    labels: Vec<u32>,
    squared_distances: Vec<f32>,
    inertia: f64,
    n_iter: usize,
    restart_inertias: Vec<f64>,
}

fn fit_canonical(points: &Points, config: &KMeansConfig) -> CanonicalFit {
    let dim = points.dim();
    let x = points.as_flat();
    let x_norms = squared_norms(x, dim);
    let tolerance = config.tol * mean_feature_variance(points);
    let mut best: Option<CanonicalFit> = None;
    let mut restart_inertias = Vec::with_capacity(config.n_init);
    for restart in 0..config.n_init {
        let mut rng =
            ChaCha8Rng::seed_from_u64(splitmix64(config.seed ^ splitmix64(restart as u64)));
        let init = kmeans_plus_plus(x, &x_norms, dim, config.k, &mut rng);
        let run = lloyd(x, dim, init, config.max_iter, tolerance);
        let squared_distances = point_squared_distances(x, dim, &run.centers, &run.labels);
        let inertia = sum_in_blocks(&squared_distances);
        restart_inertias.push(inertia);
        if best.as_ref().is_none_or(|best| inertia < best.inertia) {
            best = Some(CanonicalFit {
                centers: run.centers,
                labels: run.labels,
                squared_distances,
                inertia,
                n_iter: run.n_iter,
                restart_inertias: Vec::new(),
            });
        }
    }
    let mut best = best.expect("n_init ≥ 1 was validated");
    best.restart_inertias = restart_inertias;
    best
}

/// Mean over features of the population variance (scikit-learn's tolerance scale).
fn mean_feature_variance(points: &Points) -> f64 {
    let dim = points.dim();
    let n = points.n_rows() as f64;
    let (sum, sum_sq) = points
        .as_flat()
        .par_chunks(BLOCK_ROWS * dim)
        .map(|block| {
            let mut sum = vec![0.0f64; dim];
            let mut sum_sq = vec![0.0f64; dim];
            for row in block.chunks_exact(dim) {
                for ((s, q), &v) in sum.iter_mut().zip(sum_sq.iter_mut()).zip(row) {
                    let v = v as f64;
                    *s += v;
                    *q += v * v;
                }
            }
            (sum, sum_sq)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .reduce(|(mut a, mut a_sq), (b, b_sq)| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a_sq.iter_mut().zip(&b_sq).for_each(|(x, y)| *x += y);
            (a, a_sq)
        })
        .expect("points are non-empty");
    let total: f64 = sum
        .iter()
        .zip(&sum_sq)
        .map(|(s, q)| (q / n - (s / n) * (s / n)).max(0.0))
        .sum();
    total / dim as f64
}

/// Greedy k-means++ (Arthur & Vassilvitskii 2007, with scikit-learn's local trials).
fn kmeans_plus_plus(
    x: &[f32],
    x_norms: &[f32],
    dim: usize,
    k: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    let n = x_norms.len();
    let n_trials = 2 + (k as f64).ln().floor() as usize;
    let mut centers = Vec::with_capacity(k * dim);
    let first = rng.random_range(0..n);
    centers.extend_from_slice(&x[first * dim..(first + 1) * dim]);
    let (mut closest, mut potential) = squared_distances_to(x, x_norms, dim, &[first]);
    let mut cumulative = vec![0.0f64; n];
    for _ in 1..k {
        let mut running = 0.0f64;
        for (slot, &d) in cumulative.iter_mut().zip(&closest) {
            running += d as f64;
            *slot = running;
        }
        let candidates: Vec<usize> = (0..n_trials)
            .map(|_| {
                let target = rng.random::<f64>() * potential;
                cumulative.partition_point(|&c| c < target).min(n - 1)
            })
            .collect();
        let (distances, _) = squared_distances_to(x, x_norms, dim, &candidates);
        // Potential of each candidate: Σ min(closest, d(candidate)).
        let potentials: Vec<f64> = distances
            .par_chunks(BLOCK_ROWS * n_trials)
            .zip(closest.par_chunks(BLOCK_ROWS))
            .map(|(block, closest_block)| {
                let mut sums = vec![0.0f64; n_trials];
                for (row, &c) in block.chunks_exact(n_trials).zip(closest_block) {
                    for (sum, &d) in sums.iter_mut().zip(row) {
                        *sum += d.min(c) as f64;
                    }
                }
                sums
            })
            .collect::<Vec<_>>()
            .into_iter()
            .fold(vec![0.0f64; n_trials], |mut total, block| {
                total.iter_mut().zip(&block).for_each(|(t, b)| *t += b);
                total
            });
        let mut best = 0;
        for trial in 1..n_trials {
            if potentials[trial] < potentials[best] {
                best = trial;
            }
        }
        potential = potentials[best];
        for (c, row) in closest.iter_mut().zip(distances.chunks_exact(n_trials)) {
            *c = c.min(row[best]);
        }
        let chosen = candidates[best];
        centers.extend_from_slice(&x[chosen * dim..(chosen + 1) * dim]);
    }
    centers
}

/// Squared distances (GEMM form, clamped at 0) from every row to the rows `targets`:
/// an `n × targets.len()` matrix, and the sum of its first column.
fn squared_distances_to(
    x: &[f32],
    x_norms: &[f32],
    dim: usize,
    targets: &[usize],
) -> (Vec<f32>, f64) {
    let m = targets.len();
    let mut target_rows = Vec::with_capacity(m * dim);
    for &t in targets {
        target_rows.extend_from_slice(&x[t * dim..(t + 1) * dim]);
    }
    let target_norms: Vec<f32> = targets.iter().map(|&t| x_norms[t]).collect();
    let mut out = vec![0.0f32; x_norms.len() * m];
    let first_column_sums: Vec<f64> = out
        .par_chunks_mut(BLOCK_ROWS * m)
        .zip(x.par_chunks(BLOCK_ROWS * dim))
        .zip(x_norms.par_chunks(BLOCK_ROWS))
        .map(|((out_block, x_block), norms_block)| {
            let mut sum = 0.0f64;
            for ((out_tile, x_tile), norms_tile) in out_block
                .chunks_mut(TILE_ROWS * m)
                .zip(x_block.chunks(TILE_ROWS * dim))
                .zip(norms_block.chunks(TILE_ROWS))
            {
                dot_rows(x_tile, &target_rows, dim, out_tile);
                for (row, &norm) in out_tile.chunks_exact_mut(m).zip(norms_tile) {
                    for (value, &target_norm) in row.iter_mut().zip(&target_norms) {
                        *value = (norm + target_norm - 2.0 * *value).max(0.0);
                    }
                    sum += row[0] as f64;
                }
            }
            sum
        })
        .collect();
    (out, first_column_sums.iter().sum())
}

struct LloydRun {
    centers: Vec<f32>,
    labels: Vec<u32>,
    n_iter: usize,
}

fn lloyd(x: &[f32], dim: usize, init: Vec<f32>, max_iter: usize, tolerance: f64) -> LloydRun {
    let n = x.len() / dim;
    let k = init.len() / dim;
    let mut centers = init;
    let mut labels = vec![u32::MAX; n];
    let mut previous_labels = vec![u32::MAX; n];
    let mut strict_convergence = false;
    let mut n_iter = 0;
    for iteration in 0..max_iter {
        n_iter = iteration + 1;
        let centre_norms = squared_norms(&centers, dim);
        let (mut sums, mut counts) = assign(x, dim, &centers, &centre_norms, &mut labels, true)
            .expect("accumulate = true returns sums");
        if counts.contains(&0) {
            relocate_empty_clusters(x, dim, &centers, &labels, &mut sums, &mut counts);
        }
        let mut shift = 0.0f64;
        for cluster in 0..k {
            let count = counts[cluster] as f64;
            for (old, &sum) in centers[cluster * dim..(cluster + 1) * dim]
                .iter_mut()
                .zip(&sums[cluster * dim..(cluster + 1) * dim])
            {
                let new = (sum / count) as f32;
                shift += ((new - *old) as f64).powi(2);
                *old = new;
            }
        }
        if labels == previous_labels {
            strict_convergence = true;
            break;
        }
        if shift <= tolerance {
            break;
        }
        previous_labels.copy_from_slice(&labels);
    }
    if !strict_convergence {
        // The centres moved after the last assignment: re-assign so labels match centres.
        let centre_norms = squared_norms(&centers, dim);
        assign(x, dim, &centers, &centre_norms, &mut labels, false);
    }
    LloydRun {
        centers,
        labels,
        n_iter,
    }
}

/// Assigns every row to its nearest centre; with `accumulate`, also returns per-cluster sums
/// (`k × dim`, f64) and counts of the rows assigned.
fn assign(
    x: &[f32],
    dim: usize,
    centers: &[f32],
    centre_norms: &[f32],
    labels: &mut [u32],
    accumulate: bool,
) -> Option<(Vec<f64>, Vec<usize>)> {
    let k = centre_norms.len();
    let blocks: Vec<Option<(Vec<f64>, Vec<usize>)>> = labels
        .par_chunks_mut(BLOCK_ROWS)
        .zip(x.par_chunks(BLOCK_ROWS * dim))
        .map(|(label_block, x_block)| {
            let mut dots = vec![0.0f32; TILE_ROWS * k];
            let mut partial = accumulate.then(|| (vec![0.0f64; k * dim], vec![0usize; k]));
            for (label_tile, x_tile) in label_block
                .chunks_mut(TILE_ROWS)
                .zip(x_block.chunks(TILE_ROWS * dim))
            {
                let rows = label_tile.len();
                let dots = &mut dots[..rows * k];
                dot_rows(x_tile, centers, dim, dots);
                for ((label, row_dots), row) in label_tile
                    .iter_mut()
                    .zip(dots.chunks_exact(k))
                    .zip(x_tile.chunks_exact(dim))
                {
                    let mut best = 0;
                    let mut best_distance = centre_norms[0] - 2.0 * row_dots[0];
                    for cluster in 1..k {
                        let distance = centre_norms[cluster] - 2.0 * row_dots[cluster];
                        if distance < best_distance {
                            best_distance = distance;
                            best = cluster;
                        }
                    }
                    *label = best as u32;
                    if let Some((sums, counts)) = partial.as_mut() {
                        counts[best] += 1;
                        for (sum, &value) in sums[best * dim..(best + 1) * dim].iter_mut().zip(row)
                        {
                            *sum += value as f64;
                        }
                    }
                }
            }
            partial
        })
        .collect();
    if !accumulate {
        return None;
    }
    let mut sums = vec![0.0f64; k * dim];
    let mut counts = vec![0usize; k];
    for (block_sums, block_counts) in blocks.into_iter().flatten() {
        sums.iter_mut().zip(&block_sums).for_each(|(s, b)| *s += b);
        counts
            .iter_mut()
            .zip(&block_counts)
            .for_each(|(c, b)| *c += b);
    }
    Some((sums, counts))
}

/// Gives each empty cluster the point farthest from its current centre (scikit-learn's rule).
fn relocate_empty_clusters(
    x: &[f32],
    dim: usize,
    centers: &[f32],
    labels: &[u32],
    sums: &mut [f64],
    counts: &mut [usize],
) {
    let empty: Vec<usize> = (0..counts.len()).filter(|&c| counts[c] == 0).collect();
    let distances = point_squared_distances(x, dim, centers, labels);
    let mut far: Vec<usize> = (0..distances.len()).collect();
    // Farthest first; ties by position so the choice is deterministic.
    far.sort_unstable_by(|&a, &b| distances[b].total_cmp(&distances[a]).then(a.cmp(&b)));
    for (&cluster, &point) in empty.iter().zip(&far) {
        let old = labels[point] as usize;
        if counts[old] <= 1 {
            continue;
        }
        let row = &x[point * dim..(point + 1) * dim];
        for (t, &value) in row.iter().enumerate() {
            sums[old * dim + t] -= value as f64;
            sums[cluster * dim + t] = value as f64;
        }
        counts[old] -= 1;
        counts[cluster] = 1;
    }
    // If a cluster is still empty (all far points were singletons), keep its old centre.
    for &cluster in &empty {
        if counts[cluster] == 0 {
            for t in 0..dim {
                sums[cluster * dim + t] = centers[cluster * dim + t] as f64;
            }
            counts[cluster] = 1;
        }
    }
}

/// Exact squared distance of each row to its assigned centre.
fn point_squared_distances(x: &[f32], dim: usize, centers: &[f32], labels: &[u32]) -> Vec<f32> {
    x.par_chunks_exact(dim)
        .zip(labels.par_iter())
        .map(|(row, &label)| {
            let label = label as usize;
            squared_distance(row, &centers[label * dim..(label + 1) * dim])
        })
        .collect()
}

/// Sum in fixed blocks (deterministic whatever the thread count).
fn sum_in_blocks(values: &[f32]) -> f64 {
    values
        .par_chunks(BLOCK_ROWS)
        .map(|block| block.iter().map(|&v| v as f64).sum::<f64>())
        .collect::<Vec<_>>()
        .iter()
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three well-separated 2-D groups plus a seeded jitter.
    fn three_groups(per_group: usize) -> Vec<Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let centres = [[0.0f32, 0.0], [10.0, 0.0], [0.0, 10.0]];
        let mut rows = Vec::new();
        for centre in centres {
            for _ in 0..per_group {
                rows.push(vec![
                    centre[0] + rng.random_range(-1.0..1.0),
                    centre[1] + rng.random_range(-1.0..1.0),
                ]);
            }
        }
        rows
    }

    #[test]
    fn separated_groups_are_recovered() {
        let rows = three_groups(40);
        let points = Points::from_rows(&rows).unwrap();
        let model = KMeans::fit(&points, &KMeansConfig::new(3)).unwrap();
        for group in 0..3 {
            let first = model.labels()[group * 40];
            assert!(
                model.labels()[group * 40..(group + 1) * 40]
                    .iter()
                    .all(|&l| l == first)
            );
        }
        let mut distinct: Vec<usize> = model.labels().to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct, vec![0, 1, 2]);
        // Inertia equals the sum of squared distances reported per point.
        let from_distances: f64 = model.distances().iter().map(|&d| (d as f64).powi(2)).sum();
        assert!((model.inertia() - from_distances).abs() < 1e-3 * model.inertia());
        assert_eq!(model.restart_inertias().len(), 10);
        assert!(
            model
                .restart_inertias()
                .iter()
                .all(|&i| i >= model.inertia() - 1e-9)
        );
        // Centroids are the means of their members.
        for cluster in 0..3 {
            let members: Vec<&Vec<f32>> = rows
                .iter()
                .zip(model.labels())
                .filter(|(_, l)| **l == cluster)
                .map(|(r, _)| r)
                .collect();
            for t in 0..2 {
                let mean = members.iter().map(|r| r[t] as f64).sum::<f64>() / members.len() as f64;
                assert!((model.centroid(cluster)[t] as f64 - mean).abs() < 1e-4);
            }
        }
        assert_eq!(model.predict(&points).unwrap(), model.labels());
    }

    #[test]
    fn predict_rejects_other_dimension() {
        let points = Points::from_rows(&three_groups(5)).unwrap();
        let model = KMeans::fit(&points, &KMeansConfig::new(2)).unwrap();
        let other = Points::from_rows(&[[1.0f32, 2.0, 3.0]]).unwrap();
        assert!(matches!(
            model.predict(&other),
            Err(Error::DimensionMismatch {
                expected: 2,
                actual: 3,
                ..
            })
        ));
    }

    #[test]
    fn bad_parameters_are_rejected() {
        let points = Points::from_rows(&three_groups(2)).unwrap();
        assert!(matches!(
            KMeans::fit(&points, &KMeansConfig::new(7)),
            Err(Error::KLargerThanN { k: 7, n: 6 })
        ));
        assert!(matches!(
            KMeans::fit(&points, &KMeansConfig::new(0)),
            Err(Error::InvalidParameter { name: "k", .. })
        ));
        let duplicated = Points::from_rows(&[[1.0f32, 1.0], [1.0, 1.0], [2.0, 2.0]]).unwrap();
        assert!(matches!(
            KMeans::fit(&duplicated, &KMeansConfig::new(3)),
            Err(Error::TooFewDistinctPoints { k: 3, distinct: 2 })
        ));
        let error = KMeans::fit(&points, &KMeansConfig::new(7)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "k = 7 is larger than the number of points n = 6"
        );
    }
}
