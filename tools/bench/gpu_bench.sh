#!/usr/bin/env bash
# The whole GPU measurement in one run, on a machine with an NVIDIA GPU and PyTorch (+ transformers):
#   1. gpu-bench parity: small random Llama (and all-MiniLM-L6-v2) on CPU vs GPU, f32 and bf16;
#   2. gpu-bench infer --shape 8b-ops: the 8B model's 32 layers on tiny matrices (host cost of a step);
#   3. gpu-bench infer: Llama-3.1-8B shape, random bf16 weights: prefill, decode, memory;
#   4. tools/bench/hf_infer.py: the HF transformers baseline, same shapes, same GPU;
#   5. one combined table, printed last (also OUT_DIR/table.md).
#
# usage: tools/bench/gpu_bench.sh [BIN_DIR] [OUT_DIR]
#   BIN_DIR  where `cargo xtask gpu-build` put gpu-bench (default target/gpu/release)
#   OUT_DIR  JSON reports, log.txt, table.md (default gpu-bench-out)
# env: MINILM (all-MiniLM-L6-v2 dir, default assets/all-minilm-l6-v2), NEW_TOKENS (128),
#      PROMPT_LEN (128), DECODE_BATCHES (1,8,32,64), PREFILL_REPEATS (3), SKIP_HF=1,
#      STAGE_TIMEOUT (seconds per stage, default 600), or PARITY_TIMEOUT, OPS_TIMEOUT, OURS_TIMEOUT, HF_TIMEOUT
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-target/gpu/release}
out=${2:-gpu-bench-out}
minilm=${MINILM:-assets/all-minilm-l6-v2}
new_tokens=${NEW_TOKENS:-128}
prompt_len=${PROMPT_LEN:-128}
batches=${DECODE_BATCHES:-1,8,32,64}
repeats=${PREFILL_REPEATS:-3}
limit=${STAGE_TIMEOUT:-600}
mkdir -p "$out"
log="$out/log.txt"
export PYTHONUNBUFFERED=1
torch_dir=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))') || exit 2
export LD_LIBRARY_PATH="$torch_dir/lib:${LD_LIBRARY_PATH:-}"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
  lscpu | grep -m1 "Model name" || true
  date -u +%Y-%m-%dT%H:%MZ
} | tee "$out/machine.txt"

status=0
stage() { echo "== $1 ($(date -u +%T))" | tee -a "$log" >&2; }

stage parity
if ! timeout "${PARITY_TIMEOUT:-$limit}" "$bin/gpu-bench" parity --device cuda --minilm "$minilm" \
  --json "$out/parity.json" >/dev/null 2> >(tee -a "$log" >&2); then
  status=1
  stage "parity again with eager decoding (TUNELOOP_CUDA_GRAPHS=0), to isolate the graph path"
  TUNELOOP_CUDA_GRAPHS=0 timeout "${PARITY_TIMEOUT:-$limit}" "$bin/gpu-bench" parity --device cuda \
    --minilm "$minilm" >/dev/null 2> >(tee -a "$log" >&2)
fi

stage "host cost of a decode step (8B op sequence, tiny matrices)"
timeout "${OPS_TIMEOUT:-$limit}" "$bin/gpu-bench" infer --device cuda --shape 8b-ops --prefill-len 64 --prefill-repeats 1 \
  --decode-batches 1,64 --prompt-len "$prompt_len" --new-tokens 64 --json "$out/ops.json" \
  >/dev/null 2> >(tee -a "$log" >&2) || status=1

stage "tuneloop inference"
if ! timeout "${OURS_TIMEOUT:-$limit}" "$bin/gpu-bench" infer --device cuda --decode-batches "$batches" \
  --prompt-len "$prompt_len" --new-tokens "$new_tokens" --prefill-repeats "$repeats" --json "$out/ours.json" \
  >/dev/null 2> >(tee -a "$log" >&2); then
  status=1
  stage "tuneloop inference again with eager decoding (TUNELOOP_CUDA_GRAPHS=0)"
  TUNELOOP_CUDA_GRAPHS=0 timeout "${OURS_TIMEOUT:-$limit}" "$bin/gpu-bench" infer --device cuda \
    --decode-batches "$batches" --prompt-len "$prompt_len" --new-tokens "$new_tokens" \
    --prefill-repeats "$repeats" --json "$out/ours.json" >/dev/null 2> >(tee -a "$log" >&2)
fi

if [ "${SKIP_HF:-0}" != 1 ]; then
  stage "HF transformers baseline"
  timeout "${HF_TIMEOUT:-$limit}" python3 "$here/hf_infer.py" --decode-batches "$batches" --prompt-len "$prompt_len" \
    --new-tokens "$new_tokens" --prefill-repeats "$repeats" --json "$out/hf.json" \
    >/dev/null 2> >(tee -a "$log" >&2) || status=1
fi
sleep 1  # let the tee'd logs flush before the table
python3 "$here/gpu_report.py" "$out" | tee "$out/table.md"
exit $status
