//! Which examples go into which micro-batch: a pure function of the seed and the epoch, so a
//! resumed run sees exactly the batches an uninterrupted one would.
//!
//! Padding-free by grouping rather than packing: each epoch is shuffled, cut into groups of
//! `length_group_size` micro-batches, and each group is sorted by length before being cut into
//! micro-batches (HF's `group_by_length`). Packing several examples into one row would need a
//! block-diagonal attention mask, which rules out the fused causal kernels on the GPU; grouped
//! rows keep the plain causal mask (padding sits only at the end of a row) and waste little
//! (see `padding_fraction`, measured in docs/benchmarks.md).

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Micro-batches (example indices) of one epoch.
pub fn epoch_batches(
    lengths: &[usize],
    micro_batch_size: usize,
    length_group_size: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    let group = micro_batch_size * length_group_size;
    let mut batches = Vec::with_capacity(lengths.len().div_ceil(micro_batch_size));
    for chunk in order.chunks(group) {
        let mut chunk = chunk.to_vec();
        if length_group_size > 1 {
            // Stable sort: equal lengths keep their shuffled order.
            chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        }
        batches.extend(chunk.chunks(micro_batch_size).map(<[usize]>::to_vec));
    }
    if length_group_size > 1 {
        // Otherwise every group would start with its longest batch.
        batches.shuffle(&mut rng);
    }
    batches
}

/// Share of computed positions that are padding when each batch is padded to its longest row.
pub fn padding_fraction(batches: &[Vec<usize>], lengths: &[usize]) -> f64 {
    let (mut real, mut computed) = (0usize, 0usize);
    for batch in batches {
        let longest = batch.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        real += batch.iter().map(|&i| lengths[i]).sum::<usize>();
        computed += longest * batch.len();
    }
    if computed == 0 {
        0.0
    } else {
        1.0 - real as f64 / computed as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths() -> Vec<usize> {
        (0..1000).map(|i| 20 + (i * 7919) % 480).collect()
    }

    #[test]
    fn every_example_appears_once_per_epoch_and_order_depends_only_on_seed_and_epoch() {
        let lengths = lengths();
        let a = epoch_batches(&lengths, 8, 16, 7, 0);
        let mut seen: Vec<usize> = a.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, epoch_batches(&lengths, 8, 16, 7, 0));
        assert_ne!(a, epoch_batches(&lengths, 8, 16, 7, 1));
        assert_ne!(a, epoch_batches(&lengths, 8, 16, 8, 0));
    }

    #[test]
    fn grouping_by_length_cuts_padding() {
        let lengths = lengths();
        let random = padding_fraction(&epoch_batches(&lengths, 8, 1, 3, 0), &lengths);
        let grouped = padding_fraction(&epoch_batches(&lengths, 8, 32, 3, 0), &lengths);
        assert!(random > 0.3, "random batches pad {random}");
        assert!(grouped < 0.05, "grouped batches pad {grouped}");
    }
}
