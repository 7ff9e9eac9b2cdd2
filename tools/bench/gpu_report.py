"""Combines the reports of tools/bench/gpu_bench.sh into one markdown table.

    python3 tools/bench/gpu_report.py OUT_DIR    # reads machine.txt, parity.json, ours.json, hf.json
"""

import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(value, digits=0):
    if value is None:
        return "—"
    if isinstance(value, float) and digits:
        return f"{value:.{digits}f}"
    if isinstance(value, (int, float)):
        return f"{value:,.0f}"
    return str(value)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def main():
    out = sys.argv[1]
    machine = open(os.path.join(out, "machine.txt")).read().strip() if os.path.exists(
        os.path.join(out, "machine.txt")) else "unknown"
    parity = load(os.path.join(out, "parity.json"))
    ours = load(os.path.join(out, "ours.json"))
    hf = load(os.path.join(out, "hf.json"))
    lines = [f"### GPU run\n\n```\n{machine}\n```\n"]

    lines.append("#### Parity: CPU (burn flex, f32) vs GPU (LibTorch)\n")
    if parity is None:
        lines.append("parity: no report (crashed?)\n")
    else:
        lines.append("| precision | check | relative max error | min cosine | argmax agreement | result |")
        lines.append("|---|---|---|---|---|---|")
        for run in parity.get("runs", [parity]):
            for check in run["checks"]:
                if "skipped" in check:
                    detail = f"skipped: {check['skipped']}"
                    lines.append(f"| {run['precision']} | {check['check']} | {detail} | | | — |")
                    continue
                relative = check.get("relative")
                cosine = check.get("min_cosine")
                agreement = check.get("argmax_agreement")
                if "identical" in check:
                    agreement = f"{check['matching_prefix_tokens']}/{check['tokens']} tokens"
                lines.append(
                    f"| {run['precision']} | {check['check']} | "
                    f"{'' if relative is None else f'{relative:.2e}'} | "
                    f"{'' if cosine is None else f'{cosine:.6f}'} | "
                    f"{'' if agreement is None else (f'{agreement:.3f}' if isinstance(agreement, float) else agreement)} | "
                    f"{'pass' if check['passed'] else 'FAIL'} |")
            lines.append(f"| {run['precision']} | mask convention on device | {run.get('mask_convention_on_device')} | | | |")
        lines.append(f"\nparity overall: {'PASSED' if parity.get('passed') else 'FAILED'}\n")

    lines.append("#### Inference, Llama-3.1-8B shape, random bf16 weights, same GPU, same run\n")
    lines.append(f"tuneloop: {ours['implementation'] if ours else 'no report'}; "
                 f"baseline: {hf['implementation'] if hf else 'no report'}\n")
    lines.append("| measurement | tuneloop | HF transformers | tuneloop / HF |")
    lines.append("|---|---|---|---|")

    def get(report, *keys):
        node = report
        for key in keys:
            if node is None:
                return None
            if isinstance(key, int):
                node = node[key] if isinstance(node, list) and key < len(node) else None
            else:
                node = node.get(key) if isinstance(node, dict) else None
        return node

    def row(label, a, b):
        lines.append(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio(a, b)} |")

    if ours or hf:
        rows = get(ours, "prefill", "loglikelihood_uniform", "rows") or 8
        width = get(ours, "prefill", "loglikelihood_uniform", "input_tokens")
        width = width // rows if width else 704
        row(f"prefill {rows}×{width}, MMLU scoring (logits at the scored position), tokens/s",
            get(ours, "prefill", "loglikelihood_uniform", "tokens_per_s"),
            get(hf, "prefill", "last_logits_only", "tokens_per_s"))
        row(f"prefill {rows}×{width}, logits at every position + f32 log-softmax, tokens/s",
            get(ours, "prefill", "full_logits_log_softmax", "tokens_per_s"),
            get(hf, "prefill", "full_logits_log_softmax", "tokens_per_s"))
        row(f"prefill {rows} left-padded rows of {width}..{width - 16 * (rows - 1)}, MMLU scoring, tokens/s",
            get(ours, "prefill", "loglikelihood_left_padded", "tokens_per_s"),
            get(hf, "prefill", "last_logits_only_left_padded", "tokens_per_s"))
        decode_ours = {d["batch"]: d for d in (get(ours, "decode") or [])}
        decode_hf = {d["batch"]: d for d in (get(hf, "decode") or [])}
        for batch in sorted(set(decode_ours) | set(decode_hf)):
            o, h = decode_ours.get(batch, {}), decode_hf.get(batch, {})
            new = o.get("new_tokens_per_row") or h.get("new_tokens_per_row")
            prompt = o.get("prompt_tokens") or h.get("prompt_tokens")
            row(f"greedy decode batch {batch} ({prompt}-token prompts, {new} new), new tokens/s incl. prefill",
                o.get("new_tokens_per_s"), h.get("new_tokens_per_s"))
            row(f"greedy decode batch {batch}, decode steps only, tokens/s",
                o.get("decode_tokens_per_s"), h.get("decode_tokens_per_s"))
            if o.get("first_call_new_tokens_per_s"):
                lines.append(f"| greedy decode batch {batch}, first call at this shape (warm-up step, "
                             f"graph capture), new tokens/s incl. prefill | "
                             f"{fmt(o['first_call_new_tokens_per_s'])} | | |")
            if o.get("cuda_graph_replay_ms"):
                steady = batch * 1000.0 / o["cuda_graph_replay_ms"]
                lines.append(f"| greedy decode batch {batch}, steady state: one replayed step every "
                             f"{o['cuda_graph_replay_ms']:.2f} ms, tokens/s | {fmt(steady)} | "
                             f"(HF: no graph; its steps/s above) | |")
        peak_ours = get(ours, "gpu_memory_mib", "peak")
        peak_hf = get(hf, "gpu_memory_mib", "peak")
        lines.append(f"| peak GPU memory (nvidia-smi, whole run), GiB | "
                     f"{fmt(peak_ours / 1024 if peak_ours else None, 1)} | "
                     f"{fmt(peak_hf / 1024 if peak_hf else None, 1)} | {ratio(peak_ours, peak_hf)} |")
        allocated = get(hf, "gpu_memory_mib", "torch_max_allocated")
        reserved = get(hf, "gpu_memory_mib", "torch_max_reserved")
        lines.append(f"| HF torch.cuda.max_memory_allocated / reserved, GiB | | "
                     f"{fmt(allocated / 1024 if allocated else None, 1)} / "
                     f"{fmt(reserved / 1024 if reserved else None, 1)} | |")
        ops = load(os.path.join(out, "ops.json"))
        ops_decode = {d["batch"]: d for d in (get(ops, "decode") or [])}
        for batch, d in sorted(ops_decode.items()):
            lines.append(f"| 8B op sequence on tiny matrices (step cost apart from the arithmetic), batch {batch}, "
                         f"decode steps/s | {fmt(d.get('decode_steps_per_s'))} | | |")
        graphs = [(d["batch"], d.get("cuda_graph_replays"), d.get("cuda_graph_failures"),
                   d.get("cuda_graph_capture_s"), d.get("cuda_graph_warmup_s"))
                  for d in (get(ours, "decode") or [])]
        if graphs:
            lines.append("\ntuneloop decode path (CUDA graph replays / failures / capture s / eager warm-up s, "
                         "per timed batch): " +
                         ", ".join(f"batch {b}: {r}/{f}/{(c or 0):.3f}/{(w or 0):.3f}"
                                   for b, r, f, c, w in graphs))
            failures = [d.get("cuda_graph_last_failure") for d in (get(ours, "decode") or [])
                        if d.get("cuda_graph_last_failure")]
            if failures:
                lines.append(f"last graph failure: {failures[-1]}")
        gemm = get(ours, "gemm_layouts")
        if gemm:
            lines.append("GEMM x·W (µs): " + ", ".join(f"{k} {v['us']:.0f}" for k, v in gemm.items()))
        step = get(ours, "decode_step_batch1")
        overhead = get(ours, "op_overhead")
        if step and overhead:
            lines.append(
                f"\ntuneloop eager decode step at batch 1 (no graph): host enqueue {step['enqueue_ms']:.2f} ms, "
                f"synced step {step['step_ms_synced']:.2f} ms, pipelined step {step['step_ms_pipelined']:.2f} ms; "
                f"one kernel op {overhead['kernel_op_enqueue_us']:.1f} µs to enqueue "
                f"({overhead['kernel_op_total_us']:.1f} µs to completion), a view-op pair {overhead['view_op_pair_us']:.1f} µs.")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
