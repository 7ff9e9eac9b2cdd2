#!/usr/bin/env bash
# One GPU call: the Phase 1B runner (gpu-bench runner: failure_mining's run_items over
# benchmarks::LocalModel) at the Llama-3.1-8B shape with random bf16 weights, against HF
# transformers on the same items (tools/bench/hf_runner.py), each under with_peak_memory.py.
# Every generated reply runs to MAX_NEW_TOKENS in both (random weights stop at random
# otherwise). Writes ours.json, hf.json, summary.json and table.md into OUT; prints the table.
#
#   BIN=.gpu-carry/gpu-bench TESTSET=.gpu-carry/testset.jsonl TOKENIZER=.gpu-carry/tokenizer \
#     OUT=/tmp/runner-bench bash tools/bench/runner_gpu_bench.sh
set -uo pipefail
BIN=${BIN:-target/gpu/release/gpu-bench}
TESTSET=${TESTSET:?a phase1b testset.jsonl}
TOKENIZER=${TOKENIZER:?a directory with tokenizer.json and tokenizer_config.json}
OUT=${OUT:-/tmp/runner-bench}
BATCH=${BATCH:-16}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-64}
# The Python helpers are read from beside this script, so a copy of tools/bench carried to a
# GPU host as one folder works too.
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch,transformers;print("torch",torch.__version__,"transformers",transformers.__version__)'
  date -u +%Y-%m-%dT%H:%MZ
} | tee "$OUT/machine.txt"

common=(--testset "$TESTSET" --tokenizer "$TOKENIZER" --batch-size "$BATCH" --max-new-tokens "$MAX_NEW_TOKENS")
echo "== ours: $BIN runner --device cuda ${common[*]}" >&2
timeout "${OURS_TIMEOUT:-240}" python3 "$here/with_peak_memory.py" -- \
  "$BIN" runner --device cuda "${common[@]}" --json "$OUT/ours.json" \
  2>"$OUT/ours.log" | tail -n 1 >"$OUT/ours.peak.json"
tail -n 3 "$OUT/ours.log" >&2
echo "== hf: tools/bench/hf_runner.py ${common[*]}" >&2
timeout "${HF_TIMEOUT:-330}" python3 "$here/with_peak_memory.py" -- \
  python3 "$here/hf_runner.py" "${common[@]}" --json "$OUT/hf.json" \
  2>"$OUT/hf.log" | tail -n 1 >"$OUT/hf.peak.json"
tail -n 3 "$OUT/hf.log" >&2

python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    p = out / name
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None
ours, hf = load("ours.json"), load("hf.json")
peaks = {k: (load(f"{k}.peak.json") or {}).get("peak_gpu_memory_gib") for k in ("ours", "hf")}
def get(report, *keys):
    for key in keys:
        if not isinstance(report, dict):
            return None
        report = report.get(key)
    return report
rows = [
    ("items/s, whole run", ("items_per_s",)),
    ("multiple choice by log-likelihood: items/s", ("loglikelihood", "items_per_s")),
    ("  request tokens/s (context + continuation, per choice)", ("loglikelihood", "request_tokens_per_s")),
    ("  positions computed", ("loglikelihood", "positions_computed")),
    ("generated (greedy, fixed length): items/s", ("generative", "items_per_s")),
    ("  new tokens/s", ("generative", "new_tokens_per_s")),
    ("  prompt tokens", ("generative", "prompt_tokens")),
    ("items (log-likelihood / generated)", None),
    ("seconds: run / log-likelihood / generation", None),
]
def fmt(v):
    if v is None:
        return "—"
    return f"{v:,.1f}" if isinstance(v, float) else f"{v:,}"
print(f"| | tuneloop runner | HF transformers | ours / HF |")
print("|---|---:|---:|---:|")
for label, keys in rows:
    if keys is None:
        if label.startswith("items"):
            cells = [f"{get(r,'loglikelihood','items')} / {get(r,'generative','items')}" if r else "—" for r in (ours, hf)]
        else:
            cells = [" / ".join(fmt(get(r, *k)) for k in (("run_seconds",), ("loglikelihood", "model_seconds"), ("generative", "model_seconds"))) if r else "—" for r in (ours, hf)]
        print(f"| {label} | {cells[0]} | {cells[1]} | |")
        continue
    a, b = get(ours, *keys), get(hf, *keys)
    ratio = f"{a / b:.2f}×" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else ""
    print(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio} |")
a, b = peaks["ours"], peaks["hf"]
print(f"| peak GPU memory (nvidia-smi, GiB) | {fmt(a)} | {fmt(b)} | {f'{a / b:.2f}×' if a and b else ''} |")
summary = {
    "machine": (out / "machine.txt").read_text().strip().splitlines() if (out / "machine.txt").exists() else None,
    "ours": ours, "hf": hf,
    "peak_gpu_memory_gib": peaks,
    "ratios_ours_over_hf": {
        name: (get(ours, *k) / get(hf, *k)) if get(ours, *k) and get(hf, *k) else None
        for name, k in [("items_per_s", ("items_per_s",)),
                        ("loglikelihood_items_per_s", ("loglikelihood", "items_per_s")),
                        ("generative_items_per_s", ("generative", "items_per_s")),
                        ("generative_new_tokens_per_s", ("generative", "new_tokens_per_s"))]
    },
}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
PY
