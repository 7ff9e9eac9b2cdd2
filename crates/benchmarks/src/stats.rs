//! Mean, standard error and a seeded percentile-bootstrap 95% confidence interval.
//!
//! The bootstrap draws indices from SplitMix64 (`index = (next · n) >> 64`) rather than a
//! library RNG so that `tools/golden/benchmarks_stats.py` can reproduce every resample and the
//! committed golden file checks the exact interval, not just its rough width.

use records::eval::MetricSummary;

/// Resamples used for confidence intervals in results.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and easy to reimplement in a reference.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; bias below 2^-40 for the n used here).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A stable 64-bit hash of a string (FNV-1a), for per-item seeds and selections that must not
/// change between runs or Rust versions.
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sample standard deviation (n - 1 in the denominator) divided by sqrt(n); 0 when n < 2.
pub fn standard_error(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 2 {
        return 0.0;
    }
    let m = mean(values);
    let variance = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1) as f64;
    (variance / n as f64).sqrt()
}

/// numpy's default ("linear") percentile of sorted data, including its two-sided lerp.
fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    let position = q / 100.0 * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let t = position - below as f64;
    let (a, b) = (sorted[below], sorted[above]);
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// Percentile bootstrap 95% interval of the mean from `resamples` resamples drawn with `seed`.
pub fn bootstrap_ci95(values: &[f64], resamples: usize, seed: u64) -> [f64; 2] {
    let n = values.len();
    if n == 0 || resamples == 0 {
        return [f64::NAN, f64::NAN];
    }
    let mut rng = SplitMix64::new(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let mut sum = 0.0;
            for _ in 0..n {
                sum += values[rng.below(n)];
            }
            sum / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    [
        percentile_sorted(&means, 2.5),
        percentile_sorted(&means, 97.5),
    ]
}

/// Mean, standard error and bootstrap interval of per-item scores.
pub fn summarize(values: &[f64], seed: u64) -> MetricSummary {
    MetricSummary {
        mean: mean(values),
        stderr: standard_error(values),
        ci95: bootstrap_ci95(values, BOOTSTRAP_RESAMPLES, seed),
    }
}

/// Unbiased pass@k estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), computed as the
/// product 1 - Π_{i=n-c+1..n} (1 - k/i), which never forms the (huge) binomials.
pub fn pass_at_k(n: usize, correct: usize, k: usize) -> f64 {
    assert!(
        k >= 1 && k <= n && correct <= n,
        "pass@{k} with n={n}, c={correct}"
    );
    if n - correct < k {
        return 1.0;
    }
    1.0 - ((n - correct + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_published_sequence() {
        // First outputs for seed 1234567 from the reference C implementation (Vigna).
        let mut rng = SplitMix64::new(1234567);
        assert_eq!(rng.next_u64(), 6457827717110365317);
        assert_eq!(rng.next_u64(), 3203168211198807973);
    }

    #[test]
    fn pass_at_k_edge_cases() {
        assert_eq!(pass_at_k(1, 1, 1), 1.0);
        assert_eq!(pass_at_k(1, 0, 1), 0.0);
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-15);
        assert_eq!(pass_at_k(10, 8, 5), 1.0);
    }

    #[test]
    fn standard_error_of_constant_is_zero_and_single_value_is_zero() {
        assert_eq!(standard_error(&[1.0, 1.0, 1.0]), 0.0);
        assert_eq!(standard_error(&[0.5]), 0.0);
        let ci = bootstrap_ci95(&[1.0; 20], 100, 7);
        assert_eq!(ci, [1.0, 1.0]);
    }
}
