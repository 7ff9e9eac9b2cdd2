#!/usr/bin/env bash
# SmolLM2-135M-Instruct inference on the CPU: crates/llama (examples/llama_bench) against HF
# transformers (tools/bench/hf_cpu_infer.py) on the same cores, same weights (f32), same inputs,
# alternating the two sides ROUNDS times; prints the median prefill tokens/s and decode new
# tokens/s per shape.
#
#   PYTHON=/path/to/venv/bin/python bash tools/bench/cpu_infer_compare.sh
#
# Environment: PYTHON (with torch + transformers), ROUNDS, THREADS, TUNELOOP_ASSETS, PROFILE
# (tools/bench/common.sh), SHAPES (space-separated batch:prompt:decode, default
# "1:128:32 8:64:32 16:64:32"), RUST_ARGS (extra llama_bench flags, e.g. --burn for the
# burn-tensor path).
source "$(dirname "$0")/common.sh"
shapes=${SHAPES:-"1:128:32 8:64:32 16:64:32"}
model=$assets/smollm2-135m-instruct

build_example llama_bench
machine_header
for round in $(seq 1 "$rounds"); do
  for shape in $shapes; do
    IFS=: read -r batch prompt decode <<<"$shape"
    echo "== round $round/$rounds, batch $batch x prompt $prompt, decode $decode: Rust"
    # shellcheck disable=SC2086 # RUST_ARGS is a list of flags
    RAYON_NUM_THREADS=$threads "$bin" --model "$model" --batch "$batch" --prompt "$prompt" \
      --decode "$decode" ${RUST_ARGS:-} | tee -a "$logs/rust.log"
    echo "== round $round/$rounds, batch $batch x prompt $prompt, decode $decode: HF"
    "$python" tools/bench/hf_cpu_infer.py --model "$model" --batch "$batch" --prompt "$prompt" \
      --decode "$decode" --threads "$threads" 2>/dev/null | tee -a "$logs/hf.log"
  done
  echo "load: $(uptime)"
done

"$python" - "$logs" <<'PY'
import pathlib, re, statistics, sys

logs = pathlib.Path(sys.argv[1])
prefill = re.compile(r"prefill: batch (\d+) x (\d+) tokens in [\d.]+s = ([\d.]+) tokens/s")
decode = re.compile(r"decode: batch (\d+) x (\d+) steps in [\d.]+s = ([\d.]+) new tokens/s")
sides = {}
for name, label in [("rust.log", "tuneloop"), ("hf.log", "HF transformers")]:
    runs = {}
    for match in prefill.finditer((logs / name).read_text()):
        runs.setdefault(("prefill", int(match[1]), int(match[2])), []).append(float(match[3]))
    for match in decode.finditer((logs / name).read_text()):
        runs.setdefault(("decode", int(match[1]), int(match[2])), []).append(float(match[3]))
    sides[label] = runs
keys = sorted(sides["tuneloop"], key=lambda k: (k[0] != "prefill", k[1], k[2]))
cell = lambda v: f"{statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})"
print()
print("median tokens/s (min–max over rounds); prefill = prompt tokens/s, decode = new tokens/s")
print("| work | tuneloop | HF transformers | ratio |")
print("|---|---|---|---|")
for key in keys:
    kind, batch, length = key
    label = f"prefill {batch}×{length}" if kind == "prefill" else f"decode batch {batch}, {length} steps"
    ours, theirs = sides["tuneloop"][key], sides["HF transformers"].get(key, [])
    ratio = f"{statistics.median(ours) / statistics.median(theirs):.2f}×" if theirs else "-"
    print(f"| {label} | {cell(ours)} | {cell(theirs) if theirs else '-'} | {ratio} |")
PY
