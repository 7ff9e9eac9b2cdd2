#!/usr/bin/env bash
# The token cache at production scale (issue #19): tuneloop's (lora-training's `token_cache`
# example, what Phase 1A runs) against HF datasets `.map` with the fast tokenizer and the same
# chat template (tools/bench/hf_token_cache.py), on one deterministic chat JSONL built from the
# assets' pool. Each side is a fresh process with a fresh cache; wall time and the peak resident
# memory of its whole process tree (tools/bench/with_peak_rss.py). Prints one table.
#   PYTHON=<python with datasets + transformers> EXAMPLES=600000 bash tools/bench/token_cache_compare.sh
# Needs `cargo xtask assets` and `cargo build --release -p lora-training --example token_cache`.
set -euo pipefail
EXAMPLES=${EXAMPLES:-600000}
PYTHON=${PYTHON:-python3}
WORK=${WORK:-runs/token-cache}
DATA="$WORK/chat$EXAMPLES.jsonl"
mkdir -p "$WORK"
[ -f "$DATA" ] || python3 tools/bench/make_chat_corpus.py assets/data/pool "$DATA" --examples "$EXAMPLES"
rm -rf "$WORK/ours-cache" "$WORK/hf-cache"
python3 tools/bench/with_peak_rss.py -- target/release/examples/token_cache "$DATA" "$WORK/ours-cache" \
  > "$WORK/ours.json" 2> >(grep '^{' > "$WORK/ours.rss.json")
HF_DATASETS_CACHE="$WORK/hf-cache" python3 tools/bench/with_peak_rss.py -- \
  "$PYTHON" tools/bench/hf_token_cache.py "$DATA" assets/smollm2-135m-instruct --num-proc "$(nproc)" \
  > "$WORK/hf.json" 2> >(grep '^{' > "$WORK/hf.rss.json")
sleep 1
python3 - "$WORK" "$DATA" <<'PY'
import json, os, pathlib, sys
work, data = pathlib.Path(sys.argv[1]), sys.argv[2]
def load(side):
    run = json.loads([l for l in (work / f"{side}.json").read_text().splitlines() if l.startswith("{")][-1])
    run.update(json.loads((work / f"{side}.rss.json").read_text().splitlines()[-1]))
    return run
ours, hf = load("ours"), load("hf")
print(f"\n{data}: {os.path.getsize(data) / 2**20:,.0f} MiB, {os.cpu_count()} cores\n")
print("| side | examples | tokens | trained tokens | wall s | examples/s | peak RSS GiB |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, run in [("tuneloop token cache", ours), ("HF datasets .map, fast tokenizer", hf)]:
    print(f"| {name} | {run['examples']:,} | {run['tokens']:,} | {run['trained_tokens']:,} | "
          f"{run['wall_s']:.1f} | {run['examples'] / run['wall_s']:,.0f} | {run['peak_rss_gib']:.2f} |")
same = all(ours[k] == hf[k] for k in ("examples", "tokens", "trained_tokens", "truncated"))
print(f"\nsame examples, tokens, trained tokens and truncations: {same}")
print(f"tuneloop / HF: {hf['wall_s'] / ours['wall_s']:.2f}x faster, {ours['peak_rss_gib'] / hf['peak_rss_gib']:.3f}x the memory")
PY
