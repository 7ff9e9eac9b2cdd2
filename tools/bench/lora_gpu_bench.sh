#!/usr/bin/env bash
# One GPU call: LoRA training throughput and memory at the Llama-3.1-8B shape, ours (lora-bench,
# LibTorch backend) against HF transformers + PEFT on the same GPU; LoRA training GPU-vs-CPU
# parity on a small shape; PEFT's check of our adapter export and merge. Prints one table last.
#
#   BIN=.gpu-carry/lora-bench PEFT_DIR=.gpu-carry/peft bash tools/bench/lora_gpu_bench.sh
#   (SKIP_CKPT=1 leaves out the gradient-checkpointing rows; ONLY_CKPT=1 runs only them)
set -uo pipefail
BIN=${BIN:-target/gpu/release/lora-bench}
OUT=${OUT:-/tmp/lora-bench}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch,transformers,peft;print("torch",torch.__version__,"transformers",transformers.__version__,"peft",peft.__version__)' | tee -a "$OUT/gpu.txt"

run() { # name, command... (environment assignments may precede the command, as in `env`)
  local name=$1; shift
  echo "== $name: $*" >&2
  python3 tools/bench/with_peak_memory.py -- env "$@" 2>"$OUT/$name.log" | tee "$OUT/$name.json"
}

# Parity: the same small random model trained 4 steps on CPU and GPU in f32 (last loss).
if [ "${ONLY_CKPT:-0}" != 1 ]; then
run parity_cpu "$BIN" --device cpu --shape smollm2-135m --layers 4 --seq 256 --batch 2 --steps 2
run parity_gpu "$BIN" --device cuda --precision f32 --shape smollm2-135m --layers 4 --seq 256 --batch 2 --steps 2
# bf16 on the GPU runs the flash-attention kernels in the training attention: close, not equal.
run parity_gpu_bf16 "$BIN" --device cuda --precision bf16 --shape smollm2-135m --layers 4 --seq 256 --batch 2 --steps 2
fi
# Per-layer checkpointing recomputes each layer in the backward: the same losses as without.
run parity_gpu_ckpt "$BIN" --device cuda --precision f32 --shape smollm2-135m --layers 4 --seq 256 --batch 2 --steps 2 --gradient-checkpointing

# Ours sets PyTorch's allocator to expandable segments for training unless PYTORCH_CUDA_ALLOC_CONF
# is set; an empty value keeps PyTorch's default, and HF runs with either setting too.
if [ "${ONLY_CKPT:-0}" != 1 ]; then
run ours_b1 "$BIN" --device cuda --shape llama31-8b --device-random --seq 2048 --batch 1 --steps 5
run ours_b1_default_alloc PYTORCH_CUDA_ALLOC_CONF= "$BIN" --device cuda --shape llama31-8b --device-random --seq 2048 --batch 1 --steps 5
run hf_b1 python3 tools/bench/hf_lora.py --seq 2048 --batch 1 --steps 5
run hf_b1_expandable PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 tools/bench/hf_lora.py --seq 2048 --batch 1 --steps 5
run ours_b2 "$BIN" --device cuda --shape llama31-8b --device-random --seq 2048 --batch 2 --steps 3
fi
if [ "${SKIP_CKPT:-0}" != 1 ]; then
  run ours_b1_ckpt "$BIN" --device cuda --shape llama31-8b --device-random --seq 2048 --batch 1 --steps 3 --gradient-checkpointing
  run ours_b4_ckpt "$BIN" --device cuda --shape llama31-8b --device-random --seq 2048 --batch 4 --steps 3 --gradient-checkpointing
  run hf_b4_ckpt python3 tools/bench/hf_lora.py --seq 2048 --batch 4 --steps 3 --checkpointing
  run ours_b8_ckpt "$BIN" --device cuda --shape llama31-8b --device-random --seq 2048 --batch 8 --steps 2 --gradient-checkpointing
  run hf_b8_ckpt python3 tools/bench/hf_lora.py --seq 2048 --batch 8 --steps 2 --checkpointing
fi

if [ -n "${PEFT_DIR:-}" ]; then
  python3 tools/reference/peft_check.py "$PEFT_DIR" | tee "$OUT/peft_check.txt"
fi

python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    p = out / f"{name}.json"
    rows = [json.loads(l) for l in p.read_text().splitlines() if l.startswith("{")] if p.exists() else []
    merged = {}
    for r in rows: merged.update(r)
    return merged
print("\n| run | tokens/s | s/step | peak GPU GiB (nvidia-smi) | torch peak allocated / reserved GiB | last loss |")
print("|---|---:|---:|---:|---:|---:|")
for name in ["parity_cpu", "parity_gpu", "parity_gpu_bf16", "parity_gpu_ckpt", "ours_b1",
             "ours_b1_default_alloc", "hf_b1", "hf_b1_expandable", "ours_b2", "ours_b1_ckpt",
             "ours_b4_ckpt", "hf_b4_ckpt", "ours_b8_ckpt", "hf_b8_ckpt"]:
    r = load(name)
    if not r:
        print(f"| {name} | failed | | | | |"); continue
    print(f"| {name} | {r.get('tokens_per_second', 0):,.0f} | {r.get('seconds_per_step', 0):.3f} | "
          f"{r.get('peak_gpu_memory_gib', 0):.2f} | {r.get('peak_allocated_gib') or float('nan'):.2f} / {r.get('peak_reserved_gib') or float('nan'):.2f} | {r.get('last_loss', float('nan')):.6f} |")
PY
# The device tool returns a limited number of files: the per-run outputs travel as one archive.
(cd "$OUT" && tar czf runs.tgz --remove-files $(ls *.json *.log 2>/dev/null)) || true
