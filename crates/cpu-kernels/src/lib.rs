//! f32 CPU kernels of tuneloop's host inference paths (the sentence encoder's
//! `embeddings::cpu`, Llama's `llama::cpu`): matrix products against weights packed once at
//! load ([`PackedLinear`]) or read in place from a row-major `[k, n]` matrix ([`matmul`]), the
//! element-wise work of both models (exact GELU, LayerNorm, RMSNorm, SiLU-gated products,
//! rotary embeddings, softmax with a vectorisable `exp`) and attention.
//!
//! ```
//! // [2, 3] · [3, 2], row-major.
//! let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
//! let mut c = [0.0; 4];
//! cpu_kernels::matmul(&a, &b, 2, &mut c);
//! assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
//! ```
//!
//! Why not burn's flex ops: at these models' shapes flex spent most of its time outside the
//! GEMM (allocating an output per op, scalar element-wise loops, packing the same weights on
//! every call, single-threaded products below its parallel threshold, which is every decode
//! step's). Here activations are read in place and the element-wise work runs on rows still
//! in cache.
//!
//! x86-64 with AVX2 + FMA (checked at run time) gets a hand-written 6×16 microkernel; every
//! other CPU runs the same blocking with a portable kernel the compiler vectorises.

use rayon::prelude::*;

/// Columns per packed weight panel: two AVX2 registers, one 64-byte cache line.
const NR: usize = 16;
/// Activation rows per microkernel call (6 × 2 accumulators + 2 weight registers + 1
/// broadcast fit the 16 AVX2 registers).
pub const MR: usize = 6;
/// Depth block: a `KC × NR` panel slice (24 KiB) stays in L1 while rows stream past it.
const KC: usize = 384;

/// One depth row of a packed panel, aligned so it is exactly one cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([f32; NR]);

/// A `[k, n]` weight matrix (`y = x·W + b`) packed as `ceil(n / NR)` column panels, each
/// `k` lines of `NR` values (the last panel zero-padded), plus its bias.
pub struct PackedLinear {
    k: usize,
    n: usize,
    lines: Vec<Line>,
    bias: Vec<f32>,
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLinear")
            .field("k", &self.k)
            .field("n", &self.n)
            .finish()
    }
}

impl PackedLinear {
    /// Packs HF `Linear` weights, stored `[out, in]` row-major, with `bias` `[out]`.
    pub fn from_out_in(weight: &[f32], bias: Vec<f32>, inputs: usize) -> Self {
        let n = bias.len();
        assert_eq!(weight.len(), n * inputs, "weight is not [{n}, {inputs}]");
        let panels = n.div_ceil(NR);
        let mut lines = vec![Line([0.0; NR]); panels * inputs];
        for (out, row) in weight.chunks_exact(inputs).enumerate() {
            let (panel, lane) = (out / NR, out % NR);
            for (depth, &w) in row.iter().enumerate() {
                lines[panel * inputs + depth].0[lane] = w;
            }
        }
        Self {
            k: inputs,
            n,
            lines,
            bias,
        }
    }

    pub fn inputs(&self) -> usize {
        self.k
    }

    pub fn outputs(&self) -> usize {
        self.n
    }

    /// `out = a·W + b` for the `rows` rows of `a` (`[rows, k]`, row-major) on this thread.
    pub fn forward_rows(&self, a: &[f32], out: &mut [f32]) {
        self.forward_rows_with(Kernel::detect(), a, out);
    }

    fn forward_rows_with(&self, kernel: Kernel, a: &[f32], out: &mut [f32]) {
        let rows = a.len() / self.k;
        assert_eq!(a.len(), rows * self.k);
        assert_eq!(out.len(), rows * self.n);
        let panels = Panels {
            lines: &self.lines,
            depth: self.k,
            columns: self.n,
        };
        gemm(kernel, a, self.k, rows, panels, &self.bias, out, self.n);
    }
}

/// A packed right-hand side: `ceil(columns / NR)` panels of `depth` lines each.
#[derive(Clone, Copy)]
struct Panels<'a> {
    lines: &'a [Line],
    depth: usize,
    columns: usize,
}

impl<'a> Panels<'a> {
    /// Packs `columns` rows of `row_at(column)` (each `depth` long) as the columns of a
    /// `[depth, columns]` right-hand side, into `lines` (resized here).
    fn pack_transposed<'r>(
        lines: &'a mut Vec<Line>,
        depth: usize,
        columns: usize,
        row_at: impl Fn(usize) -> &'r [f32],
    ) -> Panels<'a> {
        lines.clear();
        lines.resize(columns.div_ceil(NR) * depth, Line([0.0; NR]));
        for column in 0..columns {
            let (panel, lane) = (column / NR, column % NR);
            for (d, &v) in row_at(column)[..depth].iter().enumerate() {
                lines[panel * depth + d].0[lane] = v;
            }
        }
        Panels {
            lines,
            depth,
            columns,
        }
    }

    /// Packs the `[depth, columns]` matrix whose row `d` is `row_at(d)` (each `columns` long).
    fn pack_rows<'r>(
        lines: &'a mut Vec<Line>,
        depth: usize,
        columns: usize,
        row_at: impl Fn(usize) -> &'r [f32],
    ) -> Panels<'a> {
        lines.clear();
        lines.resize(columns.div_ceil(NR) * depth, Line([0.0; NR]));
        for d in 0..depth {
            for (chunk, values) in row_at(d)[..columns].chunks(NR).enumerate() {
                lines[chunk * depth + d].0[..values.len()].copy_from_slice(values);
            }
        }
        Panels {
            lines,
            depth,
            columns,
        }
    }
}

/// `c[rows, columns] = a[rows, depth] · B + bias` with `a` and `c` row-major at strides `lda`
/// and `ldc`, `B` packed in `panels`. Loops: depth blocks of KC, then panels, then blocks of MR
/// rows, so one panel slice stays in L1 while the rows pass over it.
#[allow(clippy::too_many_arguments)]
fn gemm(
    kernel: Kernel,
    a: &[f32],
    lda: usize,
    rows: usize,
    panels: Panels<'_>,
    bias: &[f32],
    c: &mut [f32],
    ldc: usize,
) {
    let (k, n) = (panels.depth, panels.columns);
    for depth in (0..k).step_by(KC) {
        let kc = KC.min(k - depth);
        for panel in 0..n.div_ceil(NR) {
            let column = panel * NR;
            let cols = NR.min(n - column);
            let start = if depth == 0 {
                Start::Bias(&bias[column..column + cols])
            } else {
                Start::Accumulate
            };
            let b = flat(&panels.lines[panel * k + depth..panel * k + depth + kc]);
            for row in (0..rows).step_by(MR) {
                kernel.run(Tile {
                    a: &a[row * lda + depth..],
                    lda,
                    b,
                    ldb: NR,
                    depth: kc,
                    c: &mut c[row * ldc + column..],
                    ldc,
                    rows: MR.min(rows - row),
                    cols,
                    start,
                });
            }
        }
    }
}

/// Packed lines as the flat `f32` values they hold (line `d` at `16·d`).
fn flat(lines: &[Line]) -> &[f32] {
    // SAFETY: `Line` is `repr(C)` around `[f32; NR]` and 64 bytes, its size and alignment
    // (a multiple of f32's): the lines are `NR · len` contiguous, initialised f32 values.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<f32>(), lines.len() * NR) }
}

/// Rows of `a` above which [`matmul`] splits the rows across threads (each thread reads all
/// of `b` once per depth block and reuses it for many rows); at or below it the columns are
/// split: a decode step's product is bound by reading the weights, and both cores then
/// stream half of them each.
const SPLIT_ROWS: usize = 32;
/// Rows per block: a `MC × KC` block of `a` (180 KiB) stays in L2 while the panels pass
/// over it.
const MC: usize = 20 * MR;
/// Panels packed at a time: `KC × 8 · NR` values (192 KiB) stay in L2 while the rows pass.
const GROUP: usize = 8;

/// `out[rows, n] = a[rows, k] · b[k, n]`, all row-major, `k = b.len() / n`, on rayon's
/// threads. `b` is used as it is stored (a model's `[in, out]` weight): no packed copy to keep
/// in step with the weights; each call copies the panels it needs, reading `b` row by row
/// (sequential memory, which the prefetcher follows; a 16-column panel read straight from a
/// row-major matrix is one cache line per row, a new page every row or two).
pub fn matmul(a: &[f32], b: &[f32], n: usize, out: &mut [f32]) {
    matmul_with(Kernel::detect(), a, b, n, out);
}

fn matmul_with(kernel: Kernel, a: &[f32], b: &[f32], n: usize, out: &mut [f32]) {
    assert!(n > 0 && b.len().is_multiple_of(n), "b is not [k, {n}]");
    let k = b.len() / n;
    assert!(k > 0, "empty b");
    assert!(a.len().is_multiple_of(k), "a is not [rows, {k}]");
    let rows = a.len() / k;
    assert_eq!(out.len(), rows * n, "out is not [{rows}, {n}]");
    if rows == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let panels = n.div_ceil(NR);
    if rows > SPLIT_ROWS {
        let chunk = rows.div_ceil(threads).next_multiple_of(MR);
        out.par_chunks_mut(chunk * n)
            .zip(a.par_chunks(chunk * k))
            .for_each_init(Vec::new, |lines, (out, a)| {
                let rows = a.len() / k;
                matmul_panels(kernel, a, rows, b, n, 0..panels, lines, out, n);
            });
        return;
    }
    // A product of a few rows reads each weight once: streamed row by row straight from `b`
    // (GEMV), since packing panels would copy every weight before using it once or twice.
    let columns = |range: std::ops::Range<usize>, c: &mut [f32], ldc: usize| {
        if rows <= GEMV_ROWS {
            let first = range.start * NR;
            let width = (range.end * NR).min(n) - first;
            gemv_columns(a, rows, b, n, first, width, c, ldc);
        } else {
            matmul_panels(kernel, a, rows, b, n, range, &mut Vec::new(), c, ldc);
        }
    };
    let tasks = threads.min(panels);
    if tasks == 1 {
        columns(0..panels, out, n);
        return;
    }
    // Each task writes its own columns into its own buffer; at these few rows the copy into
    // `out` is small next to reading the weights.
    let parts: Vec<(usize, usize, Vec<f32>)> = (0..tasks)
        .into_par_iter()
        .map(|task| {
            let range = task * panels / tasks..(task + 1) * panels / tasks;
            let first = range.start * NR;
            let width = (range.end * NR).min(n) - first;
            let mut part = vec![0.0f32; rows * width];
            columns(range, &mut part, width);
            (first, width, part)
        })
        .collect();
    for (first, width, part) in parts {
        for (out, part) in out.chunks_exact_mut(n).zip(part.chunks_exact(width)) {
            out[first..first + width].copy_from_slice(part);
        }
    }
}

/// The columns of `panels` (panel `p` = columns `p·NR ..`) of `a[rows, k] · b[k, n]` into `c`
/// (column `p·NR` of the product at `c`'s column `(p − panels.start)·NR`, row stride `ldc`),
/// packing GROUP panels of one depth block at a time into `lines`.
#[allow(clippy::too_many_arguments)]
fn matmul_panels(
    kernel: Kernel,
    a: &[f32],
    rows: usize,
    b: &[f32],
    n: usize,
    panels: std::ops::Range<usize>,
    lines: &mut Vec<Line>,
    c: &mut [f32],
    ldc: usize,
) {
    let k = b.len() / n;
    for depth in (0..k).step_by(KC) {
        let kc = KC.min(k - depth);
        let start = if depth == 0 {
            Start::Zero
        } else {
            Start::Accumulate
        };
        for group_start in panels.clone().step_by(GROUP) {
            let group = group_start..panels.end.min(group_start + GROUP);
            let first_column = group.start * NR;
            let width = (group.end * NR).min(n) - first_column;
            lines.clear();
            lines.resize(group.len() * kc, Line([0.0; NR]));
            for d in 0..kc {
                let row = &b[(depth + d) * n + first_column..][..width];
                for (index, values) in row.chunks(NR).enumerate() {
                    lines[index * kc + d].0[..values.len()].copy_from_slice(values);
                }
            }
            for first_row in (0..rows).step_by(MC) {
                let last_row = rows.min(first_row + MC);
                for (index, panel) in group.clone().enumerate() {
                    let cols = NR.min(n - panel * NR);
                    let rhs = flat(&lines[index * kc..(index + 1) * kc]);
                    let column = (panel - panels.start) * NR;
                    for row in (first_row..last_row).step_by(MR) {
                        kernel.run(Tile {
                            a: &a[row * k + depth..],
                            lda: k,
                            b: rhs,
                            ldb: NR,
                            depth: kc,
                            c: &mut c[row * ldc + column..],
                            ldc,
                            rows: MR.min(last_row - row),
                            cols,
                            start,
                        });
                    }
                }
            }
        }
    }
}

/// What the accumulators start from.
#[derive(Clone, Copy)]
enum Start<'a> {
    /// Zero (the first depth block of a product without bias).
    Zero,
    /// The bias (the first depth block).
    Bias(&'a [f32]),
    /// The partial sums already in `c` (later depth blocks).
    Accumulate,
}

/// `c[rows, cols] (+)= a[rows, depth] · b[depth, cols]`, `rows ≤ MR`, `cols ≤ NR`; line `d`
/// of `b` is the NR values at `b[d · ldb ..]` (zero past `cols`).
struct Tile<'a, 'b> {
    a: &'a [f32],
    lda: usize,
    b: &'a [f32],
    ldb: usize,
    depth: usize,
    c: &'b mut [f32],
    ldc: usize,
    rows: usize,
    cols: usize,
    start: Start<'a>,
}

impl Tile<'_, '_> {
    /// The starting accumulator values of row `row` (zero past `cols`).
    fn start_row(&self, row: usize) -> [f32; NR] {
        let mut init = [0.0; NR];
        match self.start {
            Start::Zero => {}
            Start::Bias(bias) => init[..self.cols].copy_from_slice(bias),
            Start::Accumulate => init[..self.cols]
                .copy_from_slice(&self.c[row * self.ldc..row * self.ldc + self.cols]),
        }
        init
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Self::Avx2Fma;
        }
        Self::Portable
    }

    fn run(self, tile: Tile<'_, '_>) {
        assert!(tile.rows <= MR && tile.cols <= NR && tile.depth <= KC && tile.depth > 0);
        assert!(tile.b.len() >= (tile.depth - 1) * tile.ldb + NR);
        assert!(tile.rows == 0 || tile.a.len() >= (tile.rows - 1) * tile.lda + tile.depth);
        assert!(tile.rows == 0 || tile.c.len() >= (tile.rows - 1) * tile.ldc + tile.cols);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` saw AVX2 and FMA; the asserts above bound every access.
            Self::Avx2Fma => unsafe {
                match tile.rows {
                    6 => avx2::tile::<6>(tile),
                    5 => avx2::tile::<5>(tile),
                    4 => avx2::tile::<4>(tile),
                    3 => avx2::tile::<3>(tile),
                    2 => avx2::tile::<2>(tile),
                    1 => avx2::tile::<1>(tile),
                    _ => {}
                }
            },
            Self::Portable => portable_tile(tile),
        }
    }
}

fn portable_tile(tile: Tile<'_, '_>) {
    for row in 0..tile.rows {
        let mut acc = tile.start_row(row);
        let a = &tile.a[row * tile.lda..row * tile.lda + tile.depth];
        for (d, &x) in a.iter().enumerate() {
            let line = &tile.b[d * tile.ldb..d * tile.ldb + NR];
            for (acc, &w) in acc.iter_mut().zip(line) {
                *acc += x * w;
            }
        }
        tile.c[row * tile.ldc..row * tile.ldc + tile.cols].copy_from_slice(&acc[..tile.cols]);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{NR, Start, Tile};

    /// # Safety
    /// The CPU supports AVX2 and FMA; `tile` holds `M` rows of `a` with `depth` values each,
    /// `depth` lines of NR values in `b`
    /// and `M` rows of `c` with `cols` values each (checked by the caller).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const M: usize>(tile: Tile<'_, '_>) {
        let mut lo = [_mm256_setzero_ps(); M];
        let mut hi = [_mm256_setzero_ps(); M];
        // Full-width tiles (all but a matrix's last panel) load their start straight from the
        // bias or `c`; a call costs ~1% of its FMAs, so the copy through `start_row` showed.
        match tile.start {
            Start::Zero => {}
            Start::Bias(bias) if tile.cols == NR => {
                // SAFETY: `bias` holds `cols` = NR values.
                let (b0, b1) = unsafe {
                    (
                        _mm256_loadu_ps(bias.as_ptr()),
                        _mm256_loadu_ps(bias.as_ptr().add(8)),
                    )
                };
                lo = [b0; M];
                hi = [b1; M];
            }
            Start::Accumulate if tile.cols == NR => {
                for row in 0..M {
                    // SAFETY: row `row` of `c` holds NR values (caller's bound).
                    unsafe {
                        let c = tile.c.as_ptr().add(row * tile.ldc);
                        lo[row] = _mm256_loadu_ps(c);
                        hi[row] = _mm256_loadu_ps(c.add(8));
                    }
                }
            }
            _ => {
                for row in 0..M {
                    let init = tile.start_row(row);
                    // SAFETY: `init` holds NR = 16 values.
                    unsafe {
                        lo[row] = _mm256_loadu_ps(init.as_ptr());
                        hi[row] = _mm256_loadu_ps(init.as_ptr().add(8));
                    }
                }
            }
        }
        // SAFETY (pointer offsets): the caller checked that `a` holds M rows of `lda` values.
        let rows: [*const f32; M] =
            std::array::from_fn(|row| unsafe { tile.a.as_ptr().add(row * tile.lda) });
        for depth in 0..tile.depth {
            // SAFETY: `b` holds NR values from `depth · ldb` and each row of `a` holds
            // `depth < tile.depth` values (the caller's bounds).
            unsafe {
                let line = tile.b.as_ptr().add(depth * tile.ldb);
                let b0 = _mm256_loadu_ps(line);
                let b1 = _mm256_loadu_ps(line.add(8));
                for row in 0..M {
                    let x = _mm256_broadcast_ss(&*rows[row].add(depth));
                    lo[row] = _mm256_fmadd_ps(x, b0, lo[row]);
                    hi[row] = _mm256_fmadd_ps(x, b1, hi[row]);
                }
            }
        }
        let mut out = [0.0f32; NR];
        for row in 0..M {
            if tile.cols == NR {
                // SAFETY: row `row` of `c` holds NR values (caller's bound).
                unsafe {
                    let c = tile.c.as_mut_ptr().add(row * tile.ldc);
                    _mm256_storeu_ps(c, lo[row]);
                    _mm256_storeu_ps(c.add(8), hi[row]);
                }
            } else {
                let c = &mut tile.c[row * tile.ldc..];
                // SAFETY: `out` holds NR values.
                unsafe {
                    _mm256_storeu_ps(out.as_mut_ptr(), lo[row]);
                    _mm256_storeu_ps(out.as_mut_ptr().add(8), hi[row]);
                }
                c[..tile.cols].copy_from_slice(&out[..tile.cols]);
            }
        }
    }
}

/// Runs `body` with AVX2 + FMA enabled when the CPU has them, so the compiler vectorises the
/// element-wise loops below with 8 lanes and fused multiply-adds.
macro_rules! vectorised {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn wide($($arg: $ty),*) {
                    body($($arg),*)
                }
                if Kernel::detect() == Kernel::Avx2Fma {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Rows at or below which [`matmul`] computes the product as a GEMV over `b`'s rows: every
/// decode step up to batch 16 (measured on 2 cores: batch 8 decodes 1.6× faster than with
/// packed panels, batch 16 1.2×; docs/benchmarks.md).
const GEMV_ROWS: usize = 16;

vectorised! {
    /// `c[r, ..width] = Σ_d a[r, d] · b[d, first .. first + width]` for the `rows` rows of
    /// `a[rows, k]`, `c` at row stride `ldc`: `b` read once, four rows at a time, sequentially
    /// (the prefetcher's pattern), each applied to every row of `c` while it is in L1.
    fn gemv_columns(
        a: &[f32],
        rows: usize,
        b: &[f32],
        n: usize,
        first: usize,
        width: usize,
        c: &mut [f32],
        ldc: usize
    ) {
        let k = b.len() / n;
        for r in 0..rows {
            c[r * ldc..][..width].fill(0.0);
        }
        let line = |d: usize| &b[d * n + first..][..width];
        let mut d = 0;
        while d + 4 <= k {
            let (b0, b1, b2, b3) = (line(d), line(d + 1), line(d + 2), line(d + 3));
            for r in 0..rows {
                let x = &a[r * k + d..][..4];
                let out = &mut c[r * ldc..][..width];
                for ((((o, v0), v1), v2), v3) in out.iter_mut().zip(b0).zip(b1).zip(b2).zip(b3) {
                    *o += x[0] * v0 + x[1] * v1 + x[2] * v2 + x[3] * v3;
                }
            }
            d += 4;
        }
        for d in d..k {
            let b0 = line(d);
            for r in 0..rows {
                let x = a[r * k + d];
                for (o, v) in c[r * ldc..][..width].iter_mut().zip(b0) {
                    *o += x * v;
                }
            }
        }
    }
}

/// `erf(x)` for f32 as a rational function of `x` clamped to [-4, 4] (beyond which erf
/// rounds to ±1 in f32): Eigen's and XLA's f32 erf. Branch-free, so a loop over it
/// vectorises. Max abs error 4.5e-7 against libm's `erf` (see the test).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = x2.mul_add(p, 2.770_681_4e-8);
    p = x2.mul_add(p, -2.101_024e-6);
    p = x2.mul_add(p, -5.692_506_6e-5);
    p = x2.mul_add(p, -7.349_906_3e-4);
    p = x2.mul_add(p, -2.954_6e-3);
    p = x2.mul_add(p, -1.609_603_3e-2);
    let mut q = -1.456_607_2e-5f32;
    q = x2.mul_add(q, -2.133_740_6e-4);
    q = x2.mul_add(q, -1.682_827e-3);
    q = x2.mul_add(q, -7.373_329e-3);
    q = x2.mul_add(q, -1.426_474e-2);
    x * p / q
}

vectorised! {
    /// Exact (erf) GELU in place: `0.5·x·(1 + erf(x/√2))`, HF's `"gelu"`.
    pub fn gelu(values: &mut [f32]) {
        for v in values.iter_mut() {
            let x = *v;
            *v = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// `e^x` for f32: `2^n · p(r)` with `x = n·ln2 + r`, `|r| ≤ ln2/2`, `p` Cephes' degree-6
/// polynomial (relative error ~2e-7); inputs below -87 give 0. Branch-free.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let p = (p * r).mul_add(r, r) + 1.0;
    // 2^n through the exponent bits; n lies in [-126, 127] after the clamp.
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `row ← softmax(scale · row)`, `scale > 0`.
#[inline(always)]
fn softmax(row: &mut [f32], scale: f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in row.iter_mut() {
        *v = exp((*v - max) * scale);
    }
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

vectorised! {
    /// `x ← LayerNorm(x + y)` over rows of `gamma.len()` values (two-pass mean and variance,
    /// as torch computes it in f32).
    pub fn add_layer_norm(x: &mut [f32], y: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let width = gamma.len();
        for (x, y) in x.chunks_exact_mut(width).zip(y.chunks_exact(width)) {
            for (x, y) in x.iter_mut().zip(y) {
                *x += y;
            }
            normalise_row(x, gamma, beta, eps);
        }
    }
}

vectorised! {
    /// `x ← LayerNorm(x)` over rows of `gamma.len()` values.
    pub fn layer_norm(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        for x in x.chunks_exact_mut(gamma.len()) {
            normalise_row(x, gamma, beta, eps);
        }
    }
}

/// Partial sums kept per lane so the compiler can vectorise a float sum (a single
/// accumulator fixes the order and runs at one add per cycle's latency).
const LANES: usize = 8;

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (acc, v) in acc.iter_mut().zip(chunk) {
            *acc += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[inline(always)]
fn normalise_row(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let width = x.len() as f32;
    let mean = sum(x) / width;
    let mut centred = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (acc, v) in centred.iter_mut().zip(chunk) {
            *acc += (v - mean) * (v - mean);
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    let variance = (centred.iter().sum::<f32>() + tail) / width;
    let inv = 1.0 / (variance + eps).sqrt();
    for ((v, g), b) in x.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

/// Reusable buffers of [`attend`].
#[derive(Default)]
pub struct AttentionScratch {
    keys: Vec<Line>,
    values: Vec<Line>,
    scores: Vec<f32>,
    zeros: Vec<f32>,
}

/// Multi-head self-attention of one unpadded sequence: `qkv` holds its `len` rows of
/// `[q ‖ k ‖ v]` (each `heads · head_dim` wide), `context` receives `len` rows of
/// `heads · head_dim`. Per head, `Q·Kᵀ` and `P·V` run on the GEMM kernel with the head's keys
/// and values packed as its right-hand sides.
pub fn attend(
    qkv: &[f32],
    context: &mut [f32],
    heads: usize,
    head_dim: usize,
    scratch: &mut AttentionScratch,
) {
    let kernel = Kernel::detect();
    let hidden = heads * head_dim;
    let len = context.len() / hidden;
    assert_eq!(qkv.len(), len * 3 * hidden);
    let scale = 1.0 / (head_dim as f32).sqrt();
    scratch.scores.resize(len * len, 0.0);
    scratch.zeros.resize(len.max(head_dim), 0.0);
    for head in 0..heads {
        let row = |part: usize, token: usize| {
            &qkv[token * 3 * hidden + part * hidden + head * head_dim..][..head_dim]
        };
        let keys = Panels::pack_transposed(&mut scratch.keys, head_dim, len, |t| row(1, t));
        let queries = &qkv[head * head_dim..];
        let scores = &mut scratch.scores;
        gemm(
            kernel,
            queries,
            3 * hidden,
            len,
            keys,
            &scratch.zeros,
            scores,
            len,
        );
        softmax_rows(scores, len, scale);
        let values = Panels::pack_rows(&mut scratch.values, len, head_dim, |t| row(2, t));
        let out = &mut context[head * head_dim..];
        gemm(
            kernel,
            scores,
            len,
            len,
            values,
            &scratch.zeros,
            out,
            hidden,
        );
    }
}

vectorised! {
    /// `row ← softmax(scale · row)` for each row of `len` values.
    fn softmax_rows(scores: &mut [f32], len: usize, scale: f32) {
        for row in scores.chunks_exact_mut(len) {
            softmax(row, scale);
        }
    }
}

vectorised! {
    /// Mean of `rows` (each `out.len()` wide) divided by its L2 norm (clamped at 1e-12, as
    /// torch's `F.normalize`): sentence-transformers' `Pooling(mean)` + `Normalize`.
    pub fn mean_pool_normalise(rows: &[f32], out: &mut [f32]) {
        out.fill(0.0);
        let count = rows.len() / out.len();
        for row in rows.chunks_exact(out.len()) {
            for (o, v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
        let inv_count = 1.0 / count as f32;
        for o in out.iter_mut() {
            *o *= inv_count;
        }
        let mut squares = [0.0f32; LANES];
        let mut chunks = out.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (acc, v) in squares.iter_mut().zip(chunk) {
                *acc += v * v;
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        let inv_norm = 1.0 / (squares.iter().sum::<f32>() + tail).sqrt().max(1e-12);
        for o in out.iter_mut() {
            *o *= inv_norm;
        }
    }
}

vectorised! {
    /// `out ← x / √(mean(x²) + eps) · weight` over rows of `weight.len()` values: HF's
    /// `LlamaRMSNorm` in f32 (the scale applied to `x` first, then the weight).
    pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let width = weight.len();
        for (x, out) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            let mut squares = [0.0f32; LANES];
            let mut chunks = x.chunks_exact(LANES);
            for chunk in &mut chunks {
                for (acc, v) in squares.iter_mut().zip(chunk) {
                    *acc += v * v;
                }
            }
            let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
            let mean = (squares.iter().sum::<f32>() + tail) / width as f32;
            let inv = 1.0 / (mean + eps).sqrt();
            for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
                *o = w * (v * inv);
            }
        }
    }
}

/// `gate ← silu(gate) · up` with `silu(x) = x · σ(x)`: the SwiGLU product of a Llama MLP.
/// A prompt's worth of values is split across rayon's threads (alone on one core, the `exp`
/// of a 1,024-token prefill took 4% of it while the other core waited).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    const CHUNK: usize = 1 << 15;
    assert_eq!(gate.len(), up.len(), "gate and up differ in length");
    if gate.len() <= CHUNK {
        silu_mul_serial(gate, up);
    } else {
        gate.par_chunks_mut(CHUNK)
            .zip(up.par_chunks(CHUNK))
            .for_each(|(gate, up)| silu_mul_serial(gate, up));
    }
}

vectorised! {
    fn silu_mul_serial(gate: &mut [f32], up: &[f32]) {
        for (g, u) in gate.iter_mut().zip(up) {
            let x = *g;
            *g = x / (1.0 + exp(-x)) * u;
        }
    }
}

vectorised! {
    /// `x ← x + y`: a residual connection.
    pub fn add(x: &mut [f32], y: &[f32]) {
        for (x, y) in x.iter_mut().zip(y) {
            *x += y;
        }
    }
}

vectorised! {
    /// Rotary position embedding in HF's rotate-half layout, in place on `x` (heads of
    /// `2 · cos.len()` values, one position): for each head,
    /// `[x₁, x₂] ← [x₁·cos − x₂·sin, x₂·cos + x₁·sin]`.
    pub fn rotary(x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = cos.len();
        for head in x.chunks_exact_mut(2 * half) {
            let (first, second) = head.split_at_mut(half);
            for (((a, b), c), s) in first.iter_mut().zip(second.iter_mut()).zip(cos).zip(sin) {
                let (x1, x2) = (*a, *b);
                *a = x1 * c - x2 * s;
                *b = x2 * c + x1 * s;
            }
        }
    }
}

/// Reusable buffers of [`attend_causal`].
#[derive(Default)]
pub struct CausalScratch {
    scores: Vec<f32>,
}

/// One key/value head's cache, as [`attend_causal`] reads it: `keys` and `values` hold
/// positions `0..visible.len()` of `head_dim` values each; `visible[j]` is 1.0 where position
/// `j` holds a real token and 0.0 for padding.
#[derive(Clone, Copy)]
pub struct CachedHead<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub visible: &'a [f32],
    pub head_dim: usize,
}

vectorised! {
    /// Causal attention of the `rows` query rows `queries[t · q_stride ..][..head_dim]`
    /// (positions `first + t`) over `cache`: query `t` sees every real key at or before its
    /// own position, and always itself (so that a padding row stays finite, as the burn path
    /// does). Writes row `t` of the result to `out[t · out_stride ..][..head_dim]`. Scores are
    /// scaled by `scale` before the softmax.
    pub fn attend_causal(
        queries: &[f32],
        q_stride: usize,
        out: &mut [f32],
        out_stride: usize,
        rows: usize,
        first: usize,
        cache: CachedHead<'_>,
        scale: f32,
        scratch: &mut CausalScratch
    ) {
        let head_dim = cache.head_dim;
        for t in 0..rows {
            let position = first + t;
            let query = &queries[t * q_stride..][..head_dim];
            let keys = position + 1;
            let scores = &mut scratch.scores;
            scores.clear();
            scores.resize(keys, 0.0);
            for (j, score) in scores.iter_mut().enumerate() {
                let key = &cache.keys[j * head_dim..][..head_dim];
                let mut acc = [0.0f32; LANES];
                let mut q_chunks = query.chunks_exact(LANES);
                let mut k_chunks = key.chunks_exact(LANES);
                for (q, k) in (&mut q_chunks).zip(&mut k_chunks) {
                    for ((acc, q), k) in acc.iter_mut().zip(q).zip(k) {
                        *acc += q * k;
                    }
                }
                let tail: f32 = q_chunks
                    .remainder()
                    .iter()
                    .zip(k_chunks.remainder())
                    .map(|(q, k)| q * k)
                    .sum();
                *score = (acc.iter().sum::<f32>() + tail) * scale;
            }
            // The query's own key is always visible; padding keys get weight exactly 0.
            let weight_of = |j: usize| if j == position { 1.0 } else { cache.visible[j] };
            let max = scores
                .iter()
                .enumerate()
                .filter(|&(j, _)| weight_of(j) > 0.0)
                .map(|(_, &s)| s)
                .fold(f32::NEG_INFINITY, f32::max);
            for (j, score) in scores.iter_mut().enumerate() {
                *score = exp(*score - max) * weight_of(j);
            }
            let inv = 1.0 / sum(scores);
            let row = &mut out[t * out_stride..][..head_dim];
            row.fill(0.0);
            for (j, &w) in scores.iter().enumerate() {
                let value = &cache.values[j * head_dim..][..head_dim];
                for (o, v) in row.iter_mut().zip(value) {
                    *o += w * v;
                }
            }
            for o in row.iter_mut() {
                *o *= inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_matmul(a: &[f32], w_out_in: &[f32], bias: &[f32], k: usize) -> Vec<f32> {
        let n = bias.len();
        let mut out = Vec::new();
        for row in a.chunks_exact(k) {
            for o in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| f64::from(row[i]) * f64::from(w_out_in[o * k + i]))
                    .sum();
                out.push((dot + f64::from(bias[o])) as f32);
            }
        }
        out
    }

    fn values(count: usize, seed: u32) -> Vec<f32> {
        // A small LCG: deterministic, no dependency.
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..count)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn packed_matmul_matches_reference_at_ragged_shapes() {
        // Rows not a multiple of MR, columns not a multiple of NR, depth over two KC blocks.
        for (rows, k, n) in [
            (1, 3, 1),
            (7, 20, 17),
            (13, 400, 40),
            (6, 384, 32),
            (20, 800, 5),
        ] {
            let a = values(rows * k, 1);
            let w = values(n * k, 2);
            let bias = values(n, 3);
            let expected = reference_matmul(&a, &w, &bias, k);
            let packed = PackedLinear::from_out_in(&w, bias.clone(), k);
            assert_every_kernel_gives(&expected, [rows, k, n], |kernel, out| {
                packed.forward_rows_with(kernel, &a, out)
            });
        }
    }

    /// `product(kernel, out)` fills `out` with `expected` (a `[rows, k] · [k, n]` product) for
    /// the detected kernel and the portable one, within f32 rounding over a depth of `k`.
    fn assert_every_kernel_gives(
        expected: &[f32],
        [rows, k, n]: [usize; 3],
        product: impl Fn(Kernel, &mut [f32]),
    ) {
        for kernel in [Kernel::detect(), Kernel::Portable] {
            let mut out = vec![f32::NAN; rows * n];
            product(kernel, &mut out);
            for (got, want) in out.iter().zip(expected) {
                assert!(
                    (got - want).abs() < 1e-5 * (k as f32).sqrt(),
                    "{kernel:?} {rows}x{k}x{n}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn row_major_matmul_matches_reference_on_every_path() {
        // Up to GEMV_ROWS rows (b streamed, columns split across threads), a few more (columns
        // split, packed), many rows (rows split, packed); columns off the panel width; depth
        // over two KC blocks.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (rows, k, n) in [
            (1, 3, 1),
            (1, 576, 64),
            (3, 390, 35),
            (4, 7, 100),
            (5, 400, 40),
            (8, 800, 48),
            (16, 390, 35),
            (20, 300, 50),
            (33, 20, 17),
            (130, 390, 64),
        ] {
            let a = values(rows * k, 4);
            let b = values(k * n, 5);
            // reference_matmul takes `[out, in]` weights: transpose `b`.
            let w: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let expected = reference_matmul(&a, &w, &vec![0.0; n], k);
            assert_every_kernel_gives(&expected, [rows, k, n], |kernel, out| {
                pool.install(|| matmul_with(kernel, &a, &b, n, out))
            });
        }
    }

    #[test]
    fn llama_element_wise_kernels_match_definitions() {
        let x = values(2 * 24, 6);
        let weight = values(24, 7);
        let mut out = vec![0.0; x.len()];
        rms_norm(&x, &weight, 1e-5, &mut out);
        for (row, got) in x.chunks(24).zip(out.chunks(24)) {
            let mean = row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / 24.0;
            for ((v, w), g) in row.iter().zip(&weight).zip(got) {
                let want = f64::from(*w) * f64::from(*v) / (mean + 1e-5).sqrt();
                assert!((f64::from(*g) - want).abs() < 1e-6, "{g} vs {want}");
            }
        }

        // Past one chunk (split across threads) and a ragged last chunk.
        let mut gate: Vec<f32> = (0..(1 << 15) + 1000)
            .map(|i| (i % 400) as f32 * 0.25 - 50.0)
            .collect();
        let up = values(gate.len(), 8);
        let inputs = gate.clone();
        silu_mul(&mut gate, &up);
        for ((x, u), g) in inputs.iter().zip(&up).zip(&gate) {
            let (x, u) = (f64::from(*x), f64::from(*u));
            let want = x / (1.0 + (-x).exp()) * u;
            assert!(
                (f64::from(*g) - want).abs() < 1e-6 * want.abs().max(1.0),
                "{g} vs {want}"
            );
        }

        // Two heads of 4: pairs (0, 2) and (1, 3) rotate by the angles of cos/sin.
        let mut heads = vec![1.0, 2.0, 3.0, 4.0, -1.0, 0.5, 2.0, 0.0];
        let (cos, sin) = ([0.6f32, 0.0], [0.8f32, 1.0]);
        rotary(&mut heads, &cos, &sin);
        let want = [
            0.6 - 3.0 * 0.8,
            -4.0,
            3.0 * 0.6 + 0.8,
            2.0,
            -0.6 - 2.0 * 0.8,
            0.0,
            2.0 * 0.6 - 0.8,
            0.5,
        ];
        for (g, w) in heads.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{heads:?}");
        }
    }

    #[test]
    fn causal_attention_sees_real_keys_up_to_its_position() {
        let (head_dim, positions) = (12, 9);
        let keys = values(positions * head_dim, 9);
        let vals = values(positions * head_dim, 10);
        // Positions 0 and 1 are padding; queries at 5..9 (stride 2 heads wide).
        let visible: Vec<f32> = (0..positions)
            .map(|j| if j < 2 { 0.0 } else { 1.0 })
            .collect();
        let (first, rows, stride) = (5, 4, 2 * head_dim);
        let queries = values(rows * stride, 11);
        let mut out = vec![f32::NAN; rows * stride];
        let cache = CachedHead {
            keys: &keys,
            values: &vals,
            visible: &visible,
            head_dim,
        };
        let scale = 0.3;
        let mut scratch = CausalScratch::default();
        attend_causal(
            &queries,
            stride,
            &mut out,
            stride,
            rows,
            first,
            cache,
            scale,
            &mut scratch,
        );
        for t in 0..rows {
            let q = &queries[t * stride..][..head_dim];
            let seen: Vec<usize> = (2..=first + t).collect();
            let scores: Vec<f64> = seen
                .iter()
                .map(|&j| {
                    (0..head_dim)
                        .map(|d| f64::from(q[d]) * f64::from(keys[j * head_dim + d]))
                        .sum::<f64>()
                        * f64::from(scale)
                })
                .collect();
            let max = scores.iter().copied().fold(f64::MIN, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for d in 0..head_dim {
                let want: f64 = seen
                    .iter()
                    .zip(&weights)
                    .map(|(&j, w)| w * f64::from(vals[j * head_dim + d]))
                    .sum::<f64>()
                    / total;
                let got = f64::from(out[t * stride + d]);
                assert!(
                    (got - want).abs() < 1e-6,
                    "row {t} dim {d}: {got} vs {want}"
                );
            }
            // The second head's columns are not this call's.
            assert!(out[t * stride + head_dim].is_nan());
        }
    }

    #[test]
    fn erf_and_gelu_match_libm() {
        let mut worst = 0.0f64;
        let xs: Vec<f32> = (-80_000..=80_000).map(|i| i as f32 * 1e-4).collect();
        for &x in &xs {
            worst = worst.max((f64::from(erf(x)) - libm::erf(f64::from(x))).abs());
        }
        assert!(worst < 5e-7, "erf max abs error {worst}");
        let mut gelus = xs.clone();
        gelu(&mut gelus);
        for (&x, &g) in xs.iter().zip(&gelus) {
            let x = f64::from(x);
            let want = 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
            assert!(
                (f64::from(g) - want).abs() < 1e-6 * x.abs().max(1.0),
                "gelu({x})"
            );
        }
    }

    #[test]
    fn exp_and_softmax_are_accurate() {
        for i in -870..=880 {
            let x = i as f32 * 0.1;
            let (got, want) = (f64::from(exp(x)), f64::from(x).exp());
            assert!(
                (got - want).abs() <= 4e-7 * want,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp(-200.0), exp(-87.0));
        let mut row = vec![2.0, 4.0, 6.0, -2e4];
        softmax(&mut row, 0.5);
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        for (got, v) in row.iter().zip([1.0f64, 2.0, 3.0]) {
            assert!((f64::from(*got) - v.exp() / z).abs() < 1e-7);
        }
        assert!(row[3] < 1e-30);
    }

    #[test]
    fn attention_matches_reference() {
        let (heads, head_dim) = (3, 20);
        let hidden = heads * head_dim;
        let mut scratch = AttentionScratch::default();
        // Lengths across panel (16), depth-block (384) and microkernel-row (6) boundaries.
        for len in [1, 5, 17, 40, 390] {
            let qkv = values(len * 3 * hidden, len as u32);
            let mut context = vec![f32::NAN; len * hidden];
            attend(&qkv, &mut context, heads, head_dim, &mut scratch);
            let at = |t: usize, part: usize, h: usize, d: usize| {
                f64::from(qkv[t * 3 * hidden + part * hidden + h * head_dim + d])
            };
            for h in 0..heads {
                for i in 0..len {
                    let scores: Vec<f64> = (0..len)
                        .map(|j| {
                            (0..head_dim)
                                .map(|d| at(i, 0, h, d) * at(j, 1, h, d))
                                .sum::<f64>()
                                / (head_dim as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::MIN, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for d in 0..head_dim {
                        let want: f64 =
                            (0..len).map(|j| weights[j] * at(j, 2, h, d)).sum::<f64>() / total;
                        let got = f64::from(context[i * hidden + h * head_dim + d]);
                        assert!(
                            (got - want).abs() < 1e-5,
                            "len {len} head {h} row {i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn add_layer_norm_matches_definition() {
        let (gamma, beta) = (vec![1.0, 2.0, 0.5, 1.0], vec![0.0, 1.0, -1.0, 0.25]);
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 8.0];
        let y = vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let mut expected = Vec::new();
        for (xr, yr) in x.chunks(4).zip(y.chunks(4)) {
            let s: Vec<f64> = xr.iter().zip(yr).map(|(a, b)| f64::from(a + b)).collect();
            let mean = s.iter().sum::<f64>() / 4.0;
            let var = s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0;
            for (i, v) in s.iter().enumerate() {
                expected.push(
                    (v - mean) / (var + 1e-12).sqrt() * f64::from(gamma[i]) + f64::from(beta[i]),
                );
            }
        }
        add_layer_norm(&mut x, &y, &gamma, &beta, 1e-12);
        for (got, want) in x.iter().zip(&expected) {
            assert!((f64::from(*got) - want).abs() < 1e-5, "{got} vs {want}");
        }
    }
}
