#!/usr/bin/env bash
# LoRA speed rows in one device call (issue #19): each row a fresh process, nvidia-smi sampled
# for its peak (tools/bench/with_peak_memory.py), a per-row time limit, and a call deadline.
# Prints one table (with ours/peer ratios) and writes table.md, summary.json and runs.tgz to $OUT.
#   BUDGET=540 WHEELS=.gpu-carry/whl bash tools/bench/lora_peer_rows.sh tools/bench/lora_issue19_b1.spec
# SPEC lines: name|limit|command...   limit = seconds, or rest-N (time left before the deadline
# minus N seconds, kept for the rows after it). A row with under 40 s left is skipped. Commands
# are split on spaces (no quoting); the specs here expect the stripped GPU lora-bench at
# .gpu-carry/lora-bench and the liger-kernel 0.8.5 wheel in .gpu-carry/whl (carry [".gpu-carry"]).
# Row names: ours* rows are divided by the hf* rows that share their suffix (ours_b4 / hf_eager_b4;
# the suffix is what follows ours, ours_again, hf, hf_eager, hf_liger or hf_compile).
set -uo pipefail
SPEC=$1
START=$(date +%s)
BUDGET=${BUDGET:-540}
OUT=${OUT:-/tmp/lora-peers}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
if [ -n "${WHEELS:-}" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch,transformers,peft;print("torch",torch.__version__,"transformers",transformers.__version__,"peft",peft.__version__)'
  python3 -c 'import liger_kernel,importlib.metadata as m;print("liger-kernel",m.version("liger-kernel"))' 2>/dev/null
  date -u; } | tee "$OUT/gpu.txt"
echo "spec: $SPEC"; cat "$SPEC"
names=()
while IFS='|' read -r name limit cmd; do
  [ -z "$name" ] && continue
  names+=("$name")
  now=$(date +%s); left=$((START + BUDGET - now))
  case $limit in rest-*) limit=$((left - ${limit#rest-}));; esac
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 40 ]; then
    echo "== $name: skipped ($left s left before the call deadline)" >&2
    echo "{\"skipped\": true, \"left_s\": $left}" > "$OUT/$name.json"; continue
  fi
  echo "== $name (limit ${limit}s, t+$((now - START))s): $cmd" >&2
  t0=$(date +%s)
  # shellcheck disable=SC2086
  python3 tools/bench/with_peak_memory.py -- timeout -k 10 "$limit" env $cmd 2>"$OUT/$name.log" \
    | tee "$OUT/$name.json"
  echo "{\"wall_s\": $(( $(date +%s) - t0 )), \"limit_s\": $limit}" >> "$OUT/$name.json"
  grep -E "^step [0-9]+" "$OUT/$name.log" | tr '\n' ' ' >&2; echo >&2
  grep -iE "out of memory|OutOfMemory|Error" "$OUT/$name.log" | tail -n 3 >&2
done < "$SPEC"
python3 - "$OUT" "$SPEC" "${names[@]}" <<'PY' | tee "$OUT/table.md"
import datetime, json, pathlib, re, sys
out, spec, names = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
def load(name):
    p = out / f"{name}.json"
    merged = {}
    for l in (p.read_text().splitlines() if p.exists() else []):
        if l.startswith("{"): merged.update(json.loads(l))
    log = out / f"{name}.log"
    merged["_log"] = log.read_text(errors="replace") if log.exists() else ""
    return merged
print("\n| run | batch x seq | ckpt | tokens/s | s/step | peak GPU GiB (nvidia-smi) | torch peak alloc / reserved GiB | last loss | wall s | status |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
runs, tps = [], {}
for name in names:
    r = load(name)
    if r.get("skipped"):
        print(f"| {name} | | | | | | | | | skipped: {r['left_s']} s left |"); continue
    if "tokens_per_second" not in r:
        log = r["_log"]
        why = ("OOM" if re.search(r"out of memory|OutOfMemory", log, re.I) else
               f"timed out at {r.get('limit_s')} s" if r.get("exit") in (124, 137) else f"failed (exit {r.get('exit')})")
        steps = re.findall(r"^step (\d+): ([0-9.]+)s", log, re.M)
        print(f"| {name} | | | | | {r.get('peak_gpu_memory_gib', 0):.2f} | | | {r.get('wall_s')} | {why}; steps seen: {steps} |")
        continue
    ck = bool(r.get("gradient_checkpointing"))
    loss = r.get("last_loss")
    if loss is None:
        m = re.findall(r"loss ([0-9.]+)", r["_log"]); loss = float(m[-1]) if m else float("nan")
    shape = (f"{r.get('batch')} x {'packed' if r.get('padding_free') else 'padded'} mixed"
             if r.get("lengths") else f"{r.get('batch')} x {r.get('seq')}")
    print(f"| {name} | {shape} | {'yes' if ck else 'no'} | {r['tokens_per_second']:,.0f} | {r['seconds_per_step']:.3f} | "
          f"{r.get('peak_gpu_memory_gib', 0):.2f} | {r.get('peak_allocated_gib') or float('nan'):.2f} / "
          f"{r.get('peak_reserved_gib') or float('nan'):.2f} | {loss:.4f} | {r.get('wall_s')} | ok |")
    tps[name] = r["tokens_per_second"]
    runs.append({"name": name, "batch": r.get("batch"), "checkpointing": ck,
                 **({"lengths": pathlib.Path(r["lengths"]).name, "padding_free": bool(r.get("padding_free"))}
                    if r.get("lengths") else {"seq": r.get("seq")}),
                 "tokens_per_s": round(r["tokens_per_second"], 1),
                 "peak_gib": round(r.get("peak_gpu_memory_gib", 0), 2)})
print()
def suffix(name, peers):
    """What follows the row's kind: ours_again_b4 -> _b4, hf_liger_b4 -> _b4; a bare repeat
    number is no suffix (ours_again_2 -> '')."""
    for peer in sorted(peers, key=len, reverse=True):
        if name.startswith(peer):
            return re.sub(r"^_\d+$", "", name[len(peer):])
    return None
ours_kinds, hf_kinds = ["ours_again", "ours"], ["hf_eager", "hf_liger", "hf_compile", "hf"]
for o in [n for n in tps if n.startswith("ours")]:
    for p in [n for n in tps if n.startswith("hf") and suffix(n, hf_kinds) == suffix(o, ours_kinds)]:
        print(f"{o} / {p} = {tps[o] / tps[p]:.2f}x")
gpu = (out / "gpu.txt").read_text().splitlines()
device = ", ".join(gpu[:3])
summary = {"device": device, "date": datetime.date.today().isoformat(), "runs": runs}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
PY
(cd "$OUT" && tar czf runs.tgz --remove-files $(ls *.json *.log 2>/dev/null | grep -v summary.json)) || true
echo "call total $(( $(date +%s) - START )) s"
