#!/usr/bin/env bash
# One GPU call on a host with several GPUs: data-parallel LoRA training (lora-bench --gpus N).
#   1. equivalence: a small random model trained 4 steps on 1 GPU and on 2 GPUs with the same
#      global batch (4 micro-batches), f32; the per-step losses must agree (printed, checked);
#   2. scaling at the Llama-3.1-8B shape (bf16, r=16, seq 2048, 4 micro-batches of 1 sequence
#      per step over all GPUs): tokens/s on 1, 2 (and 4, 8 when present) GPUs, one table last.
#
#   BIN=.gpu-carry/lora-bench bash tools/bench/lora_dp_bench.sh
set -uo pipefail
BIN=${BIN:-target/gpu/release/lora-bench}
OUT=${OUT:-/tmp/lora-dp}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
GPUS=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
nvidia-smi topo -m >> "$OUT/gpu.txt" 2>&1 || true

small="--device cuda --precision f32 --shape smollm2-135m --layers 4 --seq 256 --batch 2 --micro-batches 4 --steps 2"
"$BIN" $small --gpus 1 > "$OUT/equiv_1.json" 2> "$OUT/equiv_1.log"
"$BIN" $small --gpus 2 > "$OUT/equiv_2.json" 2> "$OUT/equiv_2.log"

big="--device cuda --shape llama31-8b --device-random --seq 2048 --batch 1 --micro-batches 8 --steps 3"
for n in 1 2 4 8; do
  [ "$n" -le "$GPUS" ] || continue
  python3 tools/bench/with_peak_memory.py -- "$BIN" $big --gpus "$n" > "$OUT/scale_$n.json" 2> "$OUT/scale_$n.log"
done

python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    p = out / f"{name}.json"
    merged = {}
    if p.exists():
        for line in p.read_text().splitlines():
            if line.startswith("{"):
                merged.update(json.loads(line))
    return merged
one, two = load("equiv_1"), load("equiv_2")
ok = bool(one.get("losses")) and len(one["losses"]) == len(two.get("losses", []))
worst = max((abs(a - b) / abs(a) for a, b in zip(one.get("losses", []), two.get("losses", []))), default=float("nan"))
ok = ok and worst < 1e-5
print("\nequivalence (f32, same global batch of 4 micro-batches):")
print("  1 GPU :", one.get("losses"))
print("  2 GPUs:", two.get("losses"))
print(f"  max relative difference {worst:.2e} -> {'PASS' if ok else 'FAIL'} (limit 1e-5)")
print("\n| GPUs | tokens/s | s/step | scaling vs 1 GPU | efficiency | peak GPU GiB (one GPU, nvidia-smi max) |")
print("|---:|---:|---:|---:|---:|---:|")
base = None
for n in [1, 2, 4, 8]:
    r = load(f"scale_{n}")
    if not r.get("tokens_per_second"):
        continue
    tps = r["tokens_per_second"]
    base = base or tps
    print(f"| {n} | {tps:,.0f} | {r['seconds_per_step']:.3f} | {tps / base:.2f}x | {tps / base / n:.2f} | {r.get('peak_gpu_memory_gib', float('nan')):.1f} |")
PY
# The device tool returns a limited number of files: the per-run outputs travel as one archive.
(cd "$OUT" && tar czf runs.tgz --remove-files $(ls *.json *.log 2>/dev/null)) || true
