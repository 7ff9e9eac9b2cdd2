#!/usr/bin/env bash
# One GPU call: one LoRA training step at the Llama-3.1-8B shape (r=16 on all seven projections,
# seq 2048, batch 1) recorded by PyTorch's profiler on both sides — ours through LibTorch's
# profiler (lora-bench --torch-profile), HF transformers + PEFT through torch.profiler — and the
# two traces compared kernel by kernel (tools/bench/trace_summary.py), printed last.
#
#   BIN=.gpu-carry/lora-bench OUT=/tmp/lora-profile bash tools/bench/lora_profile.sh
#   (LAYERS=N profiles fewer layers; the traces are gzipped into OUT)
set -uo pipefail
BIN=${BIN:-target/gpu/release/lora-bench}
OUT=${OUT:-/tmp/lora-profile}
LAYERS=${LAYERS:-32}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

"$BIN" --device cuda --shape llama31-8b --device-random --layers "$LAYERS" --seq 2048 --batch 1 --steps 3 \
  --torch-profile "$OUT/ours.trace.json" > "$OUT/ours.json" 2> "$OUT/ours.log" || echo "ours failed" >&2
python3 tools/bench/hf_lora.py --layers "$LAYERS" --seq 2048 --batch 1 --steps 3 \
  --profile "$OUT/hf.trace.json" > "$OUT/hf.json" 2> "$OUT/hf.log" || echo "hf failed" >&2
tail -n 4 "$OUT/ours.log" "$OUT/hf.log" >&2
python3 tools/bench/trace_summary.py ours="$OUT/ours.trace.json" hf="$OUT/hf.trace.json" --top 30 \
  | tee "$OUT/summary.md"
gzip -f "$OUT/ours.trace.json" "$OUT/hf.trace.json"
