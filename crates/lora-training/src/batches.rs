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

/// Width of one packed row whose examples hold `positions` input positions in all: exact for
/// `multiple` 1; otherwise rounded up past at least one padding position to a multiple of
/// `multiple`, so that micro-batches of nearby sizes share a width (and a captured CUDA graph)
/// and the row always ends in one padding segment (a fixed number of segments per example
/// count).
pub fn packed_width(positions: usize, multiple: usize) -> usize {
    if multiple <= 1 {
        positions.max(1)
    } else {
        (positions + 1).next_multiple_of(multiple)
    }
}

/// Share of computed positions that are padding: each batch padded to its longest row, or,
/// with `packed_width_multiple`, packed into one row of [`packed_width`].
pub fn padding_fraction(
    batches: &[Vec<usize>],
    lengths: &[usize],
    packed_width_multiple: Option<usize>,
) -> f64 {
    let (mut real, mut computed) = (0usize, 0usize);
    for batch in batches {
        let tokens = batch.iter().map(|&i| lengths[i]).sum::<usize>();
        real += tokens;
        computed += match packed_width_multiple {
            None => batch.iter().map(|&i| lengths[i]).max().unwrap_or(0) * batch.len(),
            Some(multiple) => {
                // A packed row holds each example's positions but its last (no next token).
                let positions: usize = batch.iter().map(|&i| lengths[i].saturating_sub(1)).sum();
                tokens + packed_width(positions, multiple) - positions
            }
        };
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
        let random = padding_fraction(&epoch_batches(&lengths, 8, 1, 3, 0), &lengths, None);
        let grouped = padding_fraction(&epoch_batches(&lengths, 8, 32, 3, 0), &lengths, None);
        assert!(random > 0.3, "random batches pad {random}");
        assert!(grouped < 0.05, "grouped batches pad {grouped}");
    }

    #[test]
    fn packed_rows_pad_only_up_to_their_width_multiple() {
        assert_eq!(packed_width(0, 1), 1);
        assert_eq!(packed_width(300, 1), 300);
        // Always one padding position past the examples, then up to the multiple.
        assert_eq!(packed_width(300, 256), 512);
        assert_eq!(packed_width(255, 256), 256);
        assert_eq!(packed_width(256, 256), 512);
        let lengths = lengths();
        let batches = epoch_batches(&lengths, 8, 1, 3, 0);
        assert_eq!(padding_fraction(&batches, &lengths, Some(1)), 0.0);
        // Random 8-example batches here hold ~2,100 tokens: a 256-wide bucket wastes at most
        // 256 of them and ~128 on average.
        let bucketed = padding_fraction(&batches, &lengths, Some(256));
        assert!(
            (0.02..0.12).contains(&bucketed),
            "bucketed rows pad {bucketed}"
        );
    }
}
