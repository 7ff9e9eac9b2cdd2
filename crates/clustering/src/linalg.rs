//! Dense kernels: GEMM-form dot products, squared norms, content hashes.

/// `out[i * n_b + j] = a_i · b_j` for row-major `a` (`n_a × dim`) and `b` (`n_b × dim`).
///
/// Single-threaded by design: callers parallelise over row blocks so that results do not depend
/// on the thread count.
pub(crate) fn dot_rows<T: Copy + 'static + num_like::Zero>(
    a: &[T],
    b: &[T],
    dim: usize,
    out: &mut [T],
) {
    let n_a = a.len() / dim;
    let n_b = b.len() / dim;
    assert_eq!(a.len(), n_a * dim);
    assert_eq!(b.len(), n_b * dim);
    assert_eq!(out.len(), n_a * n_b);
    if n_a == 0 || n_b == 0 {
        return;
    }
    // SAFETY: the asserts above bound every access: lhs is n_a × dim row-major
    // (row stride dim, column stride 1), rhs is bᵀ, i.e. dim × n_b with row stride 1 and
    // column stride dim, dst is n_a × n_b row-major. read_dst = false, so dst is only written.
    unsafe {
        gemm::gemm(
            n_a,
            n_b,
            dim,
            out.as_mut_ptr(),
            1,
            n_b as isize,
            false,
            a.as_ptr(),
            1,
            dim as isize,
            b.as_ptr(),
            dim as isize,
            1,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The two scalar types our GEMM calls use.
pub(crate) mod num_like {
    pub trait Zero {
        fn zero() -> Self;
        fn one() -> Self;
    }
    impl Zero for f32 {
        fn zero() -> Self {
            0.0
        }
        fn one() -> Self {
            1.0
        }
    }
    impl Zero for f64 {
        fn zero() -> Self {
            0.0
        }
        fn one() -> Self {
            1.0
        }
    }
}

/// Squared Euclidean norm of each row.
pub(crate) fn squared_norms(data: &[f32], dim: usize) -> Vec<f32> {
    data.chunks_exact(dim).map(|row| dot(row, row)).collect()
}

/// Dot product with eight independent accumulators so the compiler vectorises it.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for lane in 0..8 {
            lanes[lane] += ca[lane] * cb[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Exact squared Euclidean distance (no cancellation, unlike the GEMM form).
pub(crate) fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for lane in 0..8 {
            let diff = ca[lane] - cb[lane];
            lanes[lane] += diff * diff;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// A 64-bit hash of a row's exact bit pattern (not cryptographic; ties are broken by content).
pub(crate) fn row_hash(row: &[f32]) -> u64 {
    let mut hash = 0x243F_6A88_85A3_08D3u64 ^ row.len() as u64;
    for pair in row.chunks(2) {
        let word =
            pair[0].to_bits() as u64 | ((pair.get(1).map_or(0, |v| v.to_bits()) as u64) << 32);
        hash = (hash ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        hash ^= hash >> 29;
    }
    splitmix64(hash)
}

/// SplitMix64 finaliser: a well-mixed 64-bit value from any 64-bit input.
pub(crate) fn splitmix64(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    value ^ (value >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_dot_rows_matches_naive_f32_and_f64() {
        let dim = 13;
        let a: Vec<f32> = (0..7 * dim)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let b: Vec<f32> = (0..5 * dim)
            .map(|i| ((i * 53 % 97) as f32 - 40.0) / 13.0)
            .collect();
        let mut out = vec![0.0f32; 35];
        dot_rows(&a, &b, dim, &mut out);
        for i in 0..7 {
            for j in 0..5 {
                let naive: f64 = (0..dim)
                    .map(|t| a[i * dim + t] as f64 * b[j * dim + t] as f64)
                    .sum();
                assert!((out[i * 5 + j] as f64 - naive).abs() < 1e-4, "{i},{j}");
            }
        }
        let a64: Vec<f64> = a.iter().map(|&v| v as f64).collect();
        let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
        let mut out64 = vec![0.0f64; 35];
        dot_rows(&a64, &b64, dim, &mut out64);
        assert!(
            (out64[7]
                - (0..dim)
                    .map(|t| a64[dim + t] * b64[2 * dim + t])
                    .sum::<f64>())
            .abs()
                < 1e-12
        );
    }

    #[test]
    fn distances_and_hashes() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 3.0 - i as f32).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((squared_distance(&a, &b) - naive).abs() < 1e-3);
        assert!((dot(&a, &a) - squared_norms(&a, 19)[0]).abs() < 1e-6);
        assert_eq!(row_hash(&a), row_hash(&a.clone()));
        assert_ne!(row_hash(&a), row_hash(&b));
        let mut c = a.clone();
        c[18] = f32::from_bits(c[18].to_bits() ^ 1);
        assert_ne!(row_hash(&a), row_hash(&c));
    }
}
