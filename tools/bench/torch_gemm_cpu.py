"""torch (MKL) counterpart of crates/cpu-kernels/examples/gemm_bench.rs: GFLOP/s of `x @ W^T`
(nn.Linear's layout, `[out, in]` weights) at the products of a SmolLM2-135M prefill, with
distinct weight matrices (64 MiB in all, past the L3 cache) used in turn, as in a model.

    python tools/bench/torch_gemm_cpu.py THREADS [ROWS...]     # default 2 threads, rows 128 1024
"""

import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
rows = [int(r) for r in sys.argv[2:]] or [128, 1024]
shapes = [("q/o 576x576", 576, 576), ("k/v 576x192", 576, 192), ("gate/up 576x1536", 576, 1536), ("down 1536x576", 1536, 576)]
print("| product | rows | ms/call | GFLOP/s |")
for m in rows:
    for name, k, n in shapes:
        a = torch.rand(m, k) - 0.5
        copies = (64 << 20) // (4 * k * n) + 1
        # nn.Linear's layout: [out, in] weights, x @ W^T (distinct, cold matrices).
        ws = [torch.rand(n, k) - 0.5 for _ in range(copies)]
        out = a @ ws[0].t()
        flops = 2.0 * m * k * n
        calls = max(3, min(2000, int(0.3 * 50e9 / flops)))
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for c in range(calls):
                torch.matmul(a, ws[c % copies].t(), out=out)
            best = min(best, (time.perf_counter() - t) / calls)
        print(f"| {name} | {m} | {best*1e3:.3f} | {flops/best/1e9:.1f} |")
