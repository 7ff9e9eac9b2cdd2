#!/usr/bin/env bash
# phase1a data-parallel on 2 GPUs of one host, killed and resumed: an uninterrupted 40-step run
# against a run whose every rank is killed with SIGKILL after checkpoint 15 and then continued
# with --resume. Checks that the loss curves match and that rank 0 alone wrote (one metrics line
# per step, no duplicates). f32, so the arithmetic is the same in both runs.
#
#   cargo run -p lora-training --example peft_export -- .gpu-carry/peft   # a small random base
#   BIN=.gpu-carry/phase1a MODEL=.gpu-carry/peft/base bash tools/bench/phase1a_dp_resume.sh
set -uo pipefail
BIN=${BIN:-target/gpu/release/phase1a}
MODEL=${MODEL:?a model directory (HF layout), e.g. the peft_export example base}
OUT=${OUT:-/tmp/phase1a-dp}
GPUS=${GPUS:-2}
DEVICE=${DEVICE:-cuda}   # DEVICE=cpu GPUS=1 checks the script itself on a CPU build
CHECKPOINTING=${CHECKPOINTING:-false}   # true: per-layer activation checkpointing in both runs
mkdir -p "$OUT"
work=$(mktemp -d)
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))' 2>/dev/null)/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 RUST_LOG=warn

python3 - "$work/train.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(240):
        f.write(json.dumps({"instruction": f"What is {i % 17} plus {i % 11}?",
                            "output": str(i % 17 + i % 11)}) + "\n")
PY
config() { # run dir -> config path
  cat > "$1.toml" <<EOF
run_dir = "$1"
[model]
path = "$MODEL"
device = "$DEVICE"
precision = "f32"
[data]
train = "$work/train.jsonl"
eval_examples = 16
max_seq_len = 64
[lora]
rank = 4
alpha = 8.0
dropout = 0.1
target_modules = ["q_proj", "v_proj", "up_proj"]
[train]
max_steps = 40
micro_batch_size = 4
gradient_accumulation_steps = 2
learning_rate = 3e-3
warmup_steps = 3
eval_every = 10
checkpoint_every = 5
keep_checkpoints = 2
gradient_checkpointing = $CHECKPOINTING
[validate]
enabled = false
EOF
  echo "$1.toml"
}

echo "== uninterrupted run on $GPUS GPUs" >&2
cfg=$(config "$work/whole")
"$BIN" --config "$cfg" --gpus "$GPUS" --train-only 2>"$OUT/whole.log" || echo "whole run failed" >&2

echo "== run killed after checkpoint 15, then resumed" >&2
cfg=$(config "$work/killed")
setsid "$BIN" --config "$cfg" --gpus "$GPUS" --train-only 2>"$OUT/killed.log" &
leader=$!
for _ in $(seq 600); do
  ls "$work/killed/checkpoints" 2>/dev/null | grep -q '^step-0*15$' && break
  sleep 0.2
done
kill -9 -- "-$leader" 2>/dev/null
wait "$leader" 2>/dev/null
ls "$work/killed/checkpoints" > "$OUT/checkpoints_at_kill.txt" 2>&1
"$BIN" --config "$cfg" --gpus "$GPUS" --train-only --resume 2>"$OUT/resumed.log" || echo "resumed run failed" >&2

cp "$work/whole/metrics.jsonl" "$OUT/whole_metrics.jsonl" 2>/dev/null
cp "$work/killed/metrics.jsonl" "$OUT/resumed_metrics.jsonl" 2>/dev/null
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def curve(name):
    p = out / name
    if not p.exists():
        return []
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
whole, resumed = curve("whole_metrics.jsonl"), curve("resumed_metrics.jsonl")
key = lambda m: (m.get("kind"), m.get("step"))
print(f"checkpoints present when killed: {(out / 'checkpoints_at_kill.txt').read_text().split()}")
for name, metrics in [("uninterrupted", whole), ("killed + resumed", resumed)]:
    keys = [key(m) for m in metrics]
    print(f"{name}: {len(metrics)} metric lines, duplicates: {len(keys) - len(set(keys))}")
pairs = list(zip(whole, resumed))
same = len(whole) == len(resumed) and all(key(a) == key(b) for a, b in pairs)
worst = 0.0
for a, b in pairs:
    for field in ("loss", "eval_loss"):
        x, y = a.get(field), b.get(field)
        if x is not None and y is not None:
            worst = max(worst, abs(x - y) / max(abs(x), 1e-30))
identical = same and all(a.get("loss") == b.get("loss") and a.get("eval_loss") == b.get("eval_loss") for a, b in pairs)
print(f"same steps: {same}; identical losses: {identical}; max relative difference {worst:.2e}")
print("PASS" if same and worst < 1e-6 else "FAIL")
PY
