"""Summarises PyTorch profiler Chrome traces of one training step, side by side.

    python3 tools/bench/trace_summary.py ours=/tmp/ours.json hf=/tmp/hf.json [--top 30]

Each trace is one step recorded by `lora-bench --torch-profile` (tuneloop, through LibTorch's
profiler) or `hf_lora.py --profile` (torch.profiler). Prints, per trace: the step's wall time,
the time the GPU was busy (union of kernel intervals), kernel and ATen-op counts; GPU time by
kernel category; the heaviest kernels; the ATen ops the host called most. Everything is read
from the traces: nothing is assumed about either program.
"""

import argparse
import collections
import json
import os
import re

# First match wins; names are CUDA kernel names as the profiler records them.
CATEGORIES = [
    ("memcpy / memset", r"^Memcpy|^Memset"),
    ("matmul (cuBLAS/CUTLASS)", r"gemm|nvjet|xmma|cutlass|cublas|splitKreduce|sm90_|sm80_"),
    ("attention (flash/SDPA)", r"flash|fmha|attention|pytorch_flash"),
    ("RMS norm", r"rms|RMSNorm|layer_norm|LayerNorm"),
    ("softmax / cross-entropy", r"softmax|nll_loss|cross_entropy|logsumexp"),
    ("optimizer (foreach/fused)", r"multi_tensor|foreach|adam"),
    ("reduction", r"reduce_kernel|Reduce|reduce"),
    ("copy / cast / layout", r"copy|cast|CatArray|cat_|transpose|permute|contiguous|flip|index|gather|scatter|repeat"),
    ("element-wise", r"elementwise|vectorized|unrolled|silu|mul|add|neg|exp|sigmoid"),
]


def category(name):
    for label, pattern in CATEGORIES:
        if re.search(pattern, name, re.IGNORECASE):
            return label
    return "other"


def busy_time(intervals):
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def summarise(path):
    with open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    kernels = [e for e in complete if e.get("cat") in ("kernel", "Kernel")]
    memory = [e for e in complete if e.get("cat") in ("gpu_memcpy", "gpu_memset", "Memcpy", "Memset")]
    ops = [e for e in complete if e.get("cat") in ("cpu_op", "operator", "Operator")]
    launches = [e for e in complete if e.get("cat") in ("cuda_runtime", "cuda_driver", "Runtime")
                and "Launch" in e.get("name", "")]
    gpu = kernels + memory
    if not complete:
        raise SystemExit(f"{path}: no complete events")
    first = min(e["ts"] for e in complete)
    last = max(e["ts"] + e["dur"] for e in complete)
    by_category = collections.Counter()
    by_kernel = collections.Counter()
    kernel_calls = collections.Counter()
    for e in gpu:
        by_category[category(e["name"])] += e["dur"]
        by_kernel[e["name"]] += e["dur"]
        kernel_calls[e["name"]] += 1
    # Every recorded op, nested ones included (aten::linear and the aten::matmul inside it).
    op_calls = collections.Counter(e["name"] for e in ops)
    return {
        "wall_ms": (last - first) / 1e3,
        "gpu_busy_ms": busy_time([(e["ts"], e["ts"] + e["dur"]) for e in gpu]) / 1e3,
        "kernel_ms": sum(e["dur"] for e in gpu) / 1e3,
        "kernels": len(kernels),
        "launches": len(launches),
        "aten_ops": len(ops),
        "by_category": by_category,
        "by_kernel": by_kernel,
        "kernel_calls": kernel_calls,
        "op_calls": op_calls,
    }


def shorten(name, width=90):
    name = re.sub(r"\s+", " ", name)
    return name if len(name) <= width else name[: width - 1] + "…"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("traces", nargs="+", help="label=path")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    runs = []
    for spec in args.traces:
        label, _, path = spec.partition("=")
        if not os.path.exists(path):
            print(f"{label}: no trace at {path} (did its run fail?)\n")
            continue
        runs.append((label, summarise(path)))
    if not runs:
        raise SystemExit("no trace to summarise")
    labels = [label for label, _ in runs]

    print("| | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(runs))
    for key, title in [("wall_ms", "step wall time, ms (profiled)"),
                       ("gpu_busy_ms", "GPU busy, ms (union of kernels)"),
                       ("kernel_ms", "sum of kernel times, ms"),
                       ("kernels", "kernels"), ("launches", "kernel launches (runtime API)"),
                       ("aten_ops", "ATen ops recorded")]:
        cells = [f"{run[key]:,.1f}" if isinstance(run[key], float) else f"{run[key]:,}" for _, run in runs]
        print(f"| {title} | " + " | ".join(cells) + " |")
    cells = [f"{100 * run['gpu_busy_ms'] / run['wall_ms']:.0f}%" for _, run in runs]
    print("| GPU busy / wall | " + " | ".join(cells) + " |")

    print("\n| GPU time by kernel category, ms | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(runs))
    names = sorted({c for _, run in runs for c in run["by_category"]},
                   key=lambda c: -max(run["by_category"][c] for _, run in runs))
    for name in names:
        cells = [f"{run['by_category'][name] / 1e3:.1f}" for _, run in runs]
        print(f"| {name} | " + " | ".join(cells) + " |")

    for label, run in runs:
        print(f"\n**{label}: heaviest kernels**\n")
        print("| kernel | category | calls | total ms |")
        print("|---|---|---:|---:|")
        for name, total in run["by_kernel"].most_common(args.top):
            print(f"| `{shorten(name)}` | {category(name)} | {run['kernel_calls'][name]} | {total / 1e3:.2f} |")
        print(f"\n**{label}: ATen ops the host called most**\n")
        print("| op | calls |")
        print("|---|---:|")
        for name, calls in run["op_calls"].most_common(15):
            print(f"| `{name}` | {calls} |")


if __name__ == "__main__":
    main()
