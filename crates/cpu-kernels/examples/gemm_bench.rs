//! GFLOP/s of `cpu_kernels::matmul` at the products of a SmolLM2-135M prefill (rows = prompt
//! tokens of the batch; `[in, out]` weights read in place and cold, as `llama::cpu` calls
//! it), one table. Threads: rayon's (`RAYON_NUM_THREADS`).
//!
//! `cargo run --release -p cpu-kernels --example gemm_bench [-- ROWS...]` (default 128 1024)

use std::time::Instant;

/// (name, in, out) of one decoder layer's products.
const SHAPES: [(&str, usize, usize); 5] = [
    ("q/o 576x576", 576, 576),
    ("k/v 576x192", 576, 192),
    ("gate/up 576x1536", 576, 1536),
    ("down 1536x576", 1536, 576),
    ("lm_head 576x49152", 576, 49152),
];

fn main() {
    let rows: Vec<usize> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse().expect("ROWS are numbers"))
        .collect();
    let rows = if rows.is_empty() {
        vec![128, 1024]
    } else {
        rows
    };
    println!(
        "threads {}, kernel {:?}",
        rayon::current_num_threads(),
        cpu_kernels::Kernel::detect()
    );
    println!("| product | rows | ms/call | GFLOP/s |");
    println!("|---|---:|---:|---:|");
    for &m in &rows {
        for (name, k, n) in SHAPES {
            if n > 4096 && m > 128 {
                continue;
            }
            // Deterministic, non-trivial values (a cheap LCG), away from denormals.
            let mut state = 0x2545_f491_u32;
            let mut next = || {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 9) as f32 / (1u32 << 23) as f32 - 0.5
            };
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            // Distinct weight matrices, 64 MiB in all (past the L3 cache), used in turn: in a
            // model every product reads weights that are not in cache.
            let copies = (64 << 20) / (4 * k * n) + 1;
            let weights: Vec<Vec<f32>> = (0..copies)
                .map(|_| (0..k * n).map(|_| next()).collect())
                .collect();
            let mut out = vec![0.0f32; m * n];
            cpu_kernels::matmul(&a, &weights[0], n, &mut out);
            // Enough calls for ~0.3 s of work at 50 GFLOP/s, best of three runs.
            let flops = 2.0 * (m * k * n) as f64;
            let calls = ((0.3 * 50e9 / flops) as usize).clamp(3, 2000);
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let started = Instant::now();
                for call in 0..calls {
                    cpu_kernels::matmul(&a, &weights[call % copies], n, &mut out);
                }
                best = best.min(started.elapsed().as_secs_f64() / calls as f64);
            }
            std::hint::black_box(&out);
            println!(
                "| {name} | {m} | {:.3} | {:.1} |",
                best * 1e3,
                flops / best / 1e9
            );
        }
    }
}
