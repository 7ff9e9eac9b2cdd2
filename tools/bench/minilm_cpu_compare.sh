#!/usr/bin/env bash
# all-MiniLM-L6-v2 on the CPU: crates/embeddings against sentence-transformers on the same cores,
# in one run, alternating the two sides ROUNDS times; prints the median sentences/s per batch size
# and the worst cosine between the two sides' embeddings (batch 32).
#
#   PYTHON=/path/to/venv/bin/python bash tools/bench/minilm_cpu_compare.sh
#
# Environment: PYTHON (with torch + sentence-transformers), ROUNDS, THREADS, TUNELOOP_ASSETS,
# PROFILE (tools/bench/common.sh), SENTENCES (2000), BATCH_SIZES (16,32,64), BURN=1 to also
# time the burn-tensor path (`--burn`, the CPU path before the host kernels).
source "$(dirname "$0")/common.sh"
sentences=${SENTENCES:-2000}
batch_sizes=${BATCH_SIZES:-16,32,64}

build_example throughput
machine_header
for round in $(seq 1 "$rounds"); do
  echo "== round $round/$rounds: Rust"
  RAYON_NUM_THREADS=$threads "$bin" --model-dir "$assets/all-minilm-l6-v2" --pool-dir "$assets/data/pool" \
    --sentences "$sentences" --batch-sizes "$batch_sizes" \
    --dump-sentences "$logs/sentences.json" --dump-embeddings "$logs/rust.f32" | tee -a "$logs/rust.log"
  if [[ ${BURN:-0} == 1 ]]; then
    echo "== round $round/$rounds: Rust, burn tensors"
    RAYON_NUM_THREADS=$threads "$bin" --burn --model-dir "$assets/all-minilm-l6-v2" \
      --pool-dir "$assets/data/pool" --sentences "$sentences" --batch-sizes "$batch_sizes" \
      | tee -a "$logs/burn.log"
  fi
  echo "== round $round/$rounds: sentence-transformers"
  "$python" tools/bench/minilm_sentence_transformers.py --model-dir "$assets/all-minilm-l6-v2" \
    --sentences "$logs/sentences.json" --rust-embeddings "$logs/rust.f32" --threads "$threads" \
    --batch-sizes "$batch_sizes" | tee -a "$logs/st.log"
  echo "load: $(uptime)"
done

"$python" - "$logs" <<'PY'
import pathlib, re, statistics, sys

logs = pathlib.Path(sys.argv[1])
run = re.compile(r"batch\s+(\d+) run \d+: [\d.]+s, ([\d.]+) sentences/s")
rows = {}
for name, label in [("rust.log", "tuneloop, CPU kernels"), ("burn.log", "tuneloop, burn tensors"),
                    ("st.log", "sentence-transformers")]:
    path = logs / name
    if not path.exists():
        continue
    per_batch = {}
    for match in run.finditer(path.read_text()):
        per_batch.setdefault(int(match[1]), []).append(float(match[2]))
    rows[label] = per_batch
batches = sorted({b for per in rows.values() for b in per})
print()
print("median sentences/s (min–max over rounds)")
print("| implementation | " + " | ".join(f"batch {b}" for b in batches) + " |")
print("|---|" + "---|" * len(batches))
for label, per in rows.items():
    cells = [f"{statistics.median(per[b]):.0f} ({min(per[b]):.0f}–{max(per[b]):.0f})" for b in batches]
    print(f"| {label} | " + " | ".join(cells) + " |")
st = rows.get("sentence-transformers", {})
ours = rows.get("tuneloop, CPU kernels", {})
if st and ours:
    print("| ratio, CPU kernels / sentence-transformers | " + " | ".join(
        f"{statistics.median(ours[b]) / statistics.median(st[b]):.2f}×" for b in batches) + " |")
cosines = re.findall(r"worst cosine ([\d.]+), max abs diff ([\d.e+-]+)", (logs / "st.log").read_text())
if cosines:
    worst = min(cosines, key=lambda c: float(c[0]))
    print(f"agreement (batch 32, every round): worst cosine {worst[0]}, max abs diff {max(float(c[1]) for c in cosines):.1e}")
PY
