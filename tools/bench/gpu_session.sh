#!/usr/bin/env bash
# One short GPU call that checks and measures what changed, most important first, each stage
# under its own time limit and each writing its result into OUT as soon as it ends (so a call
# cut short still returns what finished):
#   1. gpu-bench parity: CPU vs GPU, f32 and bf16, including two greedy calls where the second
#      replays the decode graph the first kept;
#   2. LoRA training parity: the same small model trained 4 steps on the host's CPU and the GPU;
#   3. tuneloop inference at the Llama-3.1-8B shape (prefill, decode at batch 1/8/32/64);
#   4. the HF transformers inference baseline (prefill, decode at batch 1 and 32);
#   5. LoRA training at the 8B shape, ours then HF + PEFT, one step of each profiled;
#      the kernel-by-kernel comparison goes to summary.md, the traces to traces.tgz.
# Re-make the inference table anywhere with: python3 tools/bench/gpu_report.py OUT
#
#   BIN_DIR=.gpu-carry OUT=/tmp/gpu-session bash tools/bench/gpu_session.sh
set -uo pipefail
bin=${BIN_DIR:-target/gpu/release}
out=${OUT:-/tmp/gpu-session}
work=$(mktemp -d)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}
log="$out/log.txt"
stage() { echo "== $1 ($(date -u +%T))" | tee -a "$log" >&2; }
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'
  lscpu | grep -m1 "Model name" || true
  date -u +%Y-%m-%dT%H:%MZ
} > "$out/machine.txt" 2>&1

stage parity
timeout 90 "$bin/gpu-bench" parity --device cuda --json "$out/parity.json" >/dev/null 2>>"$log"

stage "LoRA training parity (small model, CPU vs GPU)"
small="--shape smollm2-135m --layers 4 --seq 256 --batch 2 --steps 2"
for device in "cpu" "cuda --precision f32" "cuda --precision bf16"; do
  timeout 60 "$bin/lora-bench" --device $device $small 2>>"$log" | sed "s/^{/{\"run\":\"parity $device\",/" >>"$out/lora.jsonl"
done

stage "tuneloop inference, 8B shape"
timeout 120 "$bin/gpu-bench" infer --device cuda --decode-batches 1,8,32,64 --prompt-len 128 \
  --new-tokens 128 --prefill-repeats 3 --json "$out/ours.json" >/dev/null 2>>"$log"

stage "HF transformers inference baseline"
timeout 150 python3 tools/bench/hf_infer.py --decode-batches 1,32 --prompt-len 128 --new-tokens 128 \
  --prefill-repeats 3 --json "$out/hf.json" >/dev/null 2>>"$log"

stage "LoRA training, 8B shape, ours (one step profiled)"
timeout 120 python3 tools/bench/with_peak_memory.py -- "$bin/lora-bench" --device cuda --shape llama31-8b --device-random \
  --seq 2048 --batch 1 --steps 3 --torch-profile "$work/ours.trace.json" 2>>"$log" \
  | sed 's/^{/{"run":"ours b1",/' >>"$out/lora.jsonl"
stage "LoRA training, 8B shape, HF + PEFT (one step profiled)"
timeout 150 python3 tools/bench/with_peak_memory.py -- python3 tools/bench/hf_lora.py --seq 2048 --batch 1 \
  --steps 3 --profile "$work/hf.trace.json" 2>>"$log" | sed 's/^{/{"run":"hf b1",/' >>"$out/lora.jsonl"
stage "profile summary"
timeout 90 python3 tools/bench/trace_summary.py ours="$work/ours.trace.json" hf="$work/hf.trace.json" --top 30 \
  >"$out/summary.md" 2>>"$log"
tar czf "$out/traces.tgz" -C "$work" . 2>>"$log"

stage done
