//! A content-defined order of the input rows.
//!
//! Every seeded choice (k-means++ draws, silhouette samples, bootstrap resamples) is made on rows
//! sorted by a hash of their bits, so the same multiset of vectors gives the same result however
//! the caller ordered them. Equal vectors are adjacent in this order.

use rayon::prelude::*;

use crate::linalg::row_hash;
use crate::points::Points;

/// `order[position] = original row index`, sorted by (content hash, bits).
pub(crate) fn canonical_order(points: &Points) -> Vec<usize> {
    let dim = points.dim();
    let hashes: Vec<u64> = points
        .as_flat()
        .par_chunks_exact(dim)
        .map(row_hash)
        .collect();
    let mut order: Vec<usize> = (0..points.n_rows()).collect();
    order.par_sort_unstable_by(|&a, &b| {
        hashes[a].cmp(&hashes[b]).then_with(|| {
            // Hash collision between different rows: fall back to comparing the bits.
            let row_a = points.row(a).iter().map(|v| v.to_bits());
            let row_b = points.row(b).iter().map(|v| v.to_bits());
            row_a.cmp(row_b)
        })
    });
    order
}

/// Number of distinct rows in canonically ordered `points` (equal rows are adjacent).
pub(crate) fn count_distinct_sorted(points: &Points) -> usize {
    1 + (1..points.n_rows())
        .filter(|&i| points.row(i) != points.row(i - 1))
        .count()
}
