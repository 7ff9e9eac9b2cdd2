//! The top two principal components, for the 2-D cluster map.
//!
//! Orthogonal (subspace) iteration on the covariance, applied as `Xcᵀ(Xc·V)` without forming
//! the `d × d` matrix, then a 2×2 Rayleigh–Ritz step to separate the two components. Signs follow
//! scikit-learn's PCA: each component's largest-magnitude entry is positive.

use rayon::prelude::*;

use crate::linalg::splitmix64;
use crate::points::Points;

const MAX_ITERATIONS: usize = 300;
/// On 1 − |cos| between successive iterates: an angle of about 1e-5 rad.
const TOLERANCE: f64 = 1e-10;
const BLOCK_ROWS: usize = 2048;

/// A fitted two-component PCA.
#[derive(Debug, Clone, PartialEq)]
pub struct Pca2 {
    pub mean: Vec<f64>,
    /// Unit-length, orthogonal principal axes, first explains the most variance.
    pub components: [Vec<f64>; 2],
    /// Variance along each component (sample variance, divisor n − 1).
    pub explained_variance: [f64; 2],
    /// Total variance (sum of per-feature sample variances).
    pub total_variance: f64,
}

impl Pca2 {
    /// Fits on all rows of `points`.
    pub fn fit(points: &Points) -> Self {
        let dim = points.dim();
        let n = points.n_rows();
        let x = points.as_flat();
        let mut mean = vec![0.0f64; dim];
        for row in x.chunks_exact(dim) {
            mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64);
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let denominator = (n.max(2) - 1) as f64;
        let total_variance = x
            .chunks_exact(dim)
            .map(|row| {
                row.iter()
                    .zip(&mean)
                    .map(|(&v, m)| (v as f64 - m).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / denominator;

        let covariance_times = |v: &[Vec<f64>; 2]| -> [Vec<f64>; 2] {
            let mean_dots = [dot(&mean, &v[0]), dot(&mean, &v[1])];
            let partials: Vec<[Vec<f64>; 2]> = x
                .par_chunks(BLOCK_ROWS * dim)
                .map(|block| {
                    let mut out = [vec![0.0f64; dim], vec![0.0f64; dim]];
                    for row in block.chunks_exact(dim) {
                        for c in 0..2 {
                            let t = row
                                .iter()
                                .zip(&v[c])
                                .map(|(&a, b)| a as f64 * b)
                                .sum::<f64>()
                                - mean_dots[c];
                            out[c]
                                .iter_mut()
                                .zip(row.iter().zip(&mean))
                                .for_each(|(o, (&a, m))| *o += t * (a as f64 - m));
                        }
                    }
                    out
                })
                .collect();
            let mut total = [vec![0.0f64; dim], vec![0.0f64; dim]];
            for part in partials {
                for c in 0..2 {
                    total[c]
                        .iter_mut()
                        .zip(&part[c])
                        .for_each(|(t, p)| *t += p / denominator);
                }
            }
            total
        };

        // Deterministic pseudo-random start (never exactly orthogonal to the answer in practice).
        let mut basis = [
            (0..dim)
                .map(|i| start_value(i as u64))
                .collect::<Vec<f64>>(),
            (0..dim)
                .map(|i| start_value((i + dim) as u64))
                .collect::<Vec<f64>>(),
        ];
        orthonormalise(&mut basis);
        for _ in 0..MAX_ITERATIONS {
            let mut next = covariance_times(&basis);
            orthonormalise(&mut next);
            let change =
                (1.0 - dot(&next[0], &basis[0]).abs()).max(1.0 - dot(&next[1], &basis[1]).abs());
            basis = next;
            if change < TOLERANCE {
                break;
            }
        }
        // Rayleigh–Ritz: diagonalise Vᵀ C V (2×2) and rotate V by its eigenvectors.
        let cv = covariance_times(&basis);
        let (a, b, c) = (
            dot(&basis[0], &cv[0]),
            dot(&basis[0], &cv[1]),
            dot(&basis[1], &cv[1]),
        );
        let half_gap = ((a - c) / 2.0).hypot(b);
        let lambda = [(a + c) / 2.0 + half_gap, (a + c) / 2.0 - half_gap];
        let rotation = if b.abs() < 1e-300 {
            if a >= c {
                [[1.0, 0.0], [0.0, 1.0]]
            } else {
                [[0.0, 1.0], [1.0, 0.0]]
            }
        } else {
            let (u0, u1) = (b, lambda[0] - a);
            let norm = u0.hypot(u1);
            [[u0 / norm, u1 / norm], [-u1 / norm, u0 / norm]]
        };
        let mut components = [vec![0.0f64; dim], vec![0.0f64; dim]];
        for (k, component) in components.iter_mut().enumerate() {
            for (i, value) in component.iter_mut().enumerate() {
                *value = rotation[k][0] * basis[0][i] + rotation[k][1] * basis[1][i];
            }
            let largest =
                component.iter().copied().fold(
                    0.0f64,
                    |best, v| if v.abs() > best.abs() { v } else { best },
                );
            if largest < 0.0 {
                component.iter_mut().for_each(|v| *v = -*v);
            }
        }
        Self {
            mean,
            components,
            explained_variance: [lambda[0].max(0.0), lambda[1].max(0.0)],
            total_variance,
        }
    }

    /// Coordinates of `row` on the two components.
    pub fn project(&self, row: &[f32]) -> [f64; 2] {
        let mut out = [0.0f64; 2];
        for (c, component) in self.components.iter().enumerate() {
            out[c] = row
                .iter()
                .zip(&self.mean)
                .zip(component)
                .map(|((&v, m), w)| (v as f64 - m) * w)
                .sum();
        }
        out
    }

    /// Share of the total variance each component explains.
    pub fn explained_variance_ratio(&self) -> [f64; 2] {
        if self.total_variance > 0.0 {
            [
                self.explained_variance[0] / self.total_variance,
                self.explained_variance[1] / self.total_variance,
            ]
        } else {
            [0.0, 0.0]
        }
    }
}

fn start_value(index: u64) -> f64 {
    (splitmix64(index ^ 0x5EED) >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn orthonormalise(basis: &mut [Vec<f64>; 2]) {
    let norm0 = dot(&basis[0], &basis[0]).sqrt().max(1e-300);
    basis[0].iter_mut().for_each(|v| *v /= norm0);
    let projection = dot(&basis[0], &basis[1]);
    let [first, second] = basis;
    second
        .iter_mut()
        .zip(first.iter())
        .for_each(|(v, u)| *v -= projection * u);
    let norm1 = dot(second, second).sqrt().max(1e-300);
    second.iter_mut().for_each(|v| *v /= norm1);
}
