#!/usr/bin/env bash
# One GPU call: LoRA training speed at the Llama-3.1-8B shape (batch 1 x 2048, r=16 on all seven
# projections, random bf16 weights), ours before and after a change (`--adapter-f32` is the
# before: the adapters' matmuls in f32) against HF + PEFT eager, + Liger Kernel and
# + torch.compile, each run a fresh process with nvidia-smi sampled for its peak. A small-shape
# CPU-vs-GPU loss check of ours goes first. Prints one table last and writes summary.json.
#
#   BIN=.gpu-carry/lora-bench WHEELS=.gpu-carry/whl bash tools/bench/lora_peers_bench.sh
#   (WHEELS: a folder holding the liger-kernel wheel; without it the Liger row is left out)
set -uo pipefail
BIN=${BIN:-target/gpu/release/lora-bench}
OUT=${OUT:-/tmp/lora-peers}
STEPS=${STEPS:-10}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
if [ -n "${WHEELS:-}" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch,transformers,peft;print("torch",torch.__version__,"transformers",transformers.__version__,"peft",peft.__version__)' | tee -a "$OUT/gpu.txt"
python3 -c 'import liger_kernel,importlib.metadata as m;print("liger-kernel",m.version("liger-kernel"))' 2>/dev/null | tee -a "$OUT/gpu.txt"

run() { # name, command... (environment assignments may precede the command, as in `env`)
  local name=$1; shift
  echo "== $name: $*" >&2
  python3 tools/bench/with_peak_memory.py -- env "$@" 2>"$OUT/$name.log" | tee "$OUT/$name.json"
  tail -n 3 "$OUT/$name.log" >&2
}

SMALL="--shape smollm2-135m --layers 4 --seq 256 --batch 2 --steps 2"
run parity_cpu "$BIN" --device cpu $SMALL
run parity_gpu_f32 "$BIN" --device cuda --precision f32 $SMALL
run parity_gpu_bf16 "$BIN" --device cuda --precision bf16 $SMALL
run parity_gpu_bf16_adapter_f32 "$BIN" --device cuda --precision bf16 $SMALL --adapter-f32

BIG="--device cuda --shape llama31-8b --device-random --seq 2048 --batch 1 --steps $STEPS"
run ours "$BIN" $BIG
run ours_adapter_f32 "$BIN" $BIG --adapter-f32
run hf_eager python3 tools/bench/hf_lora.py --seq 2048 --batch 1 --steps "$STEPS"
run hf_liger python3 tools/bench/hf_lora.py --seq 2048 --batch 1 --steps "$STEPS" --liger
run hf_compile python3 tools/bench/hf_lora.py --seq 2048 --batch 1 --steps "$STEPS" --compile
# Ours again last: the spread between the two runs of the same binary is the noise floor.
run ours_again "$BIN" $BIG

python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import datetime, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    p = out / f"{name}.json"
    rows = [json.loads(l) for l in p.read_text().splitlines() if l.startswith("{")] if p.exists() else []
    merged = {}
    for r in rows: merged.update(r)
    return merged
print("\n| run | tokens/s | s/step | peak GPU GiB (nvidia-smi) | torch peak allocated / reserved GiB | last loss |")
print("|---|---:|---:|---:|---:|---:|")
runs = []
for name in ["parity_cpu", "parity_gpu_f32", "parity_gpu_bf16", "parity_gpu_bf16_adapter_f32",
             "ours", "ours_adapter_f32", "hf_eager", "hf_liger", "hf_compile", "ours_again"]:
    r = load(name)
    if "tokens_per_second" not in r:
        print(f"| {name} | failed | | | | |"); continue
    print(f"| {name} | {r['tokens_per_second']:,.0f} | {r.get('seconds_per_step', 0):.3f} | "
          f"{r.get('peak_gpu_memory_gib', 0):.2f} | {r.get('peak_allocated_gib') or float('nan'):.2f} / "
          f"{r.get('peak_reserved_gib') or float('nan'):.2f} | {r.get('last_loss', float('nan')):.6f} |")
    if not name.startswith("parity"):
        runs.append({"name": name, "batch": r.get("batch"), "seq": r.get("seq"),
                     "checkpointing": bool(r.get("gradient_checkpointing")),
                     "tokens_per_s": round(r["tokens_per_second"], 1),
                     "peak_gib": round(r.get("peak_gpu_memory_gib", 0), 2)})
device = (out / "gpu.txt").read_text().splitlines()[0]
summary = {"device": device, "date": datetime.date.today().isoformat(), "runs": runs}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
PY
# The device tool returns a limited number of files: the per-run outputs travel as one archive.
(cd "$OUT" && tar czf runs.tgz --remove-files $(ls *.json *.log 2>/dev/null | grep -v summary.json)) || true
