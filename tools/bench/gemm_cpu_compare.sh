#!/usr/bin/env bash
# The CPU matrix products of a SmolLM2-135M prefill: cpu_kernels::matmul
# (crates/cpu-kernels/examples/gemm_bench.rs) against torch's matmul on MKL
# (tools/bench/torch_gemm_cpu.py), cold weights on both sides, alternating the two sides ROUNDS
# times; prints one table of median GFLOP/s per product and rows, with the ratio.
#
#   PYTHON=/path/to/venv/bin/python bash tools/bench/gemm_cpu_compare.sh
#
# Environment: PYTHON (with torch), ROUNDS, THREADS, PROFILE (tools/bench/common.sh), ROWS
# (space-separated prompt-token counts, default "128 1024").
source "$(dirname "$0")/common.sh"
rows=${ROWS:-"128 1024"}

build_example gemm_bench
machine_header
for round in $(seq 1 "$rounds"); do
  echo "== round $round/$rounds: cpu_kernels::matmul"
  # shellcheck disable=SC2086 # rows is a list
  RAYON_NUM_THREADS=$threads "$bin" $rows | tee -a "$logs/rust.log"
  echo "== round $round/$rounds: torch (MKL)"
  # shellcheck disable=SC2086
  "$python" tools/bench/torch_gemm_cpu.py "$threads" $rows | tee -a "$logs/torch.log"
  echo "load: $(uptime)"
done

"$python" - "$logs" <<'PY'
import pathlib, re, statistics, sys

logs = pathlib.Path(sys.argv[1])
row = re.compile(r"^\| (.+?) \| (\d+) \| [\d.]+ \| ([\d.]+) \|$", re.M)
sides = {}
for name in ["rust.log", "torch.log"]:
    runs = {}
    for match in row.finditer((logs / name).read_text()):
        runs.setdefault((match[1], int(match[2])), []).append(float(match[3]))
    sides[name] = runs
cell = lambda v: f"{statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})"
print()
print("median GFLOP/s (min–max over rounds), weights cold")
print("| product | rows | cpu_kernels::matmul | torch (MKL) | ratio |")
print("|---|---:|---|---|---:|")
for key in sorted(sides["rust.log"], key=lambda k: (k[1], k[0])):
    ours, theirs = sides["rust.log"][key], sides["torch.log"].get(key, [])
    ratio = f"{statistics.median(ours) / statistics.median(theirs):.2f}×" if theirs else "-"
    print(f"| {key[0]} | {key[1]} | {cell(ours)} | {cell(theirs) if theirs else '-'} | {ratio} |")
PY
