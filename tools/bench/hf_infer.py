"""HF transformers baseline for `gpu-bench infer`: the same shapes and measurements.

Llama-3.1-8B shape from LlamaConfig, random init on the GPU, bf16, SDPA attention.
- prefill: `rows` x `len` tokens (plus a left-padded batch of unequal rows), model forward,
  logits at every position, log-softmax in f32, log-probability of each next token; and the
  same forward keeping only the last position's logits (`logits_to_keep=1`).
- decode: `model.generate` greedy with min_new_tokens = max_new_tokens at each batch size.
- memory: torch.cuda.max_memory_allocated / max_memory_reserved, and nvidia-smi memory.used
  sampled every 20 ms (device-wide, comparable to what gpu-bench reports).

Prints one JSON document on stdout (progress on stderr).

    python3 tools/bench/hf_infer.py --json hf.json [--decode-batches 1,8,32,64] [--new-tokens 128]
"""

import argparse
import json
import subprocess
import sys
import threading
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def llama31_8b_config():
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=[128001, 128008, 128009],
        pad_token_id=0,
    )


class MemoryPoller:
    """nvidia-smi memory.used (MiB) every 20 ms; keeps the peak."""

    def __init__(self, index):
        self.peak = 0
        self.current = 0
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                 "-lms", "20", "-i", str(index)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.proc = None
            return
        threading.Thread(target=self._read, daemon=True).start()
        for _ in range(100):
            if self.current:
                break
            time.sleep(0.02)

    def _read(self):
        for line in self.proc.stdout:
            try:
                mib = int(line.strip())
            except ValueError:
                continue
            self.current = mib
            self.peak = max(self.peak, mib)

    def peak_mib(self):
        time.sleep(0.06)
        return self.peak if self.proc else None

    def stop(self):
        if self.proc:
            self.proc.kill()


def log(message):
    print(f"hf: {message}", file=sys.stderr, flush=True)


def left_padded(rows, device):
    width = max(len(r) for r in rows)
    tokens = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return tokens.to(device), mask.to(device)


def timed(repeats, fn):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


@torch.inference_mode()
def prefill_full(model, rows, repeats, device):
    """Logits at every position + f32 log-softmax + next-token log-probs (HF's usual scoring)."""
    inputs = [r[:-1] for r in rows]
    tokens, mask = left_padded(inputs, device)
    targets, _ = left_padded([r[1:] for r in rows], device)

    def run():
        logits = model(input_ids=tokens, attention_mask=mask).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        return logprobs.gather(2, targets.unsqueeze(-1)).sum().item()

    seconds = timed(repeats, run)
    n = sum(len(r) for r in inputs)
    return {"rows": len(rows), "input_tokens": n, "seconds": seconds, "tokens_per_s": n / seconds}


@torch.inference_mode()
def prefill_last(model, rows, repeats, device):
    """Only the scored position's logits (`logits_to_keep=1`), as an MMLU harness needs."""
    inputs = [r[:-1] for r in rows]
    tokens, mask = left_padded(inputs, device)
    targets = torch.tensor([r[-1] for r in rows], device=device)

    def run():
        logits = model(input_ids=tokens, attention_mask=mask, logits_to_keep=1).logits
        logprobs = torch.log_softmax(logits[:, -1].float(), dim=-1)
        return logprobs.gather(1, targets.unsqueeze(-1)).sum().item()

    seconds = timed(repeats, run)
    n = sum(len(r) for r in inputs)
    return {"rows": len(rows), "input_tokens": n, "seconds": seconds, "tokens_per_s": n / seconds}


@torch.inference_mode()
def decode(model, prompts, new_tokens, device):
    tokens, mask = left_padded(prompts, device)
    kwargs = dict(attention_mask=mask, do_sample=False, pad_token_id=0,
                  eos_token_id=None, use_cache=True)
    model.generate(tokens, max_new_tokens=4, min_new_tokens=4, **kwargs)
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model(input_ids=tokens, attention_mask=mask, logits_to_keep=1).logits.argmax(-1)
    out.cpu()
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    out = model.generate(tokens, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
    torch.cuda.synchronize()
    total_s = time.perf_counter() - start
    produced = (out.shape[1] - tokens.shape[1]) * out.shape[0]
    assert produced == len(prompts) * new_tokens, (produced, len(prompts), new_tokens)
    steps = new_tokens - 1
    decode_s = max(total_s - prefill_s, 1e-9)
    return {
        "batch": len(prompts), "prompt_tokens": len(prompts[0]), "new_tokens_per_row": new_tokens,
        "total_s": total_s, "new_tokens_per_s": produced / total_s, "prefill_s": prefill_s,
        "decode_steps_per_s": steps / decode_s, "decode_tokens_per_s": steps * len(prompts) / decode_s,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefill-batch", type=int, default=8)
    parser.add_argument("--prefill-len", type=int, default=704)
    parser.add_argument("--prefill-repeats", type=int, default=3)
    parser.add_argument("--decode-batches", default="1,8,32,64")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--json")
    args = parser.parse_args()

    device = torch.device("cuda:0")
    memory = MemoryPoller(0)
    before = memory.current
    start = time.perf_counter()
    torch.manual_seed(0)
    config = llama31_8b_config()
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.bfloat16)
    model.eval()
    torch.cuda.synchronize()
    load_s = time.perf_counter() - start
    weights_mib = memory.peak_mib()
    log(f"random 8B-shape model in {load_s:.1f}s, attention {model.config._attn_implementation}")

    gen = torch.Generator().manual_seed(7)

    def random_tokens(n):
        return torch.randint(1, config.vocab_size, (n,), generator=gen).tolist()

    uniform = [random_tokens(args.prefill_len + 1) for _ in range(args.prefill_batch)]
    unequal = [random_tokens(max(args.prefill_len - 16 * i, 2) + 1) for i in range(args.prefill_batch)]
    prefill = {
        "full_logits_log_softmax": prefill_full(model, uniform, args.prefill_repeats, device),
        "last_logits_only": prefill_last(model, uniform, args.prefill_repeats, device),
        "last_logits_only_left_padded": prefill_last(model, unequal, args.prefill_repeats, device),
    }
    for name, result in prefill.items():
        log(f"prefill {name}: {result['tokens_per_s']:.0f} tokens/s")
    prefill_mib = memory.peak_mib()

    results = []
    for batch in [int(b) for b in args.decode_batches.split(",") if b]:
        prompts = [random_tokens(args.prompt_len) for _ in range(batch)]
        result = decode(model, prompts, args.new_tokens, device)
        log(f"decode batch {batch}: {result['new_tokens_per_s']:.1f} new tokens/s")
        results.append(result)
    report = {
        "implementation": f"HF transformers {transformers.__version__} (torch {torch.__version__}, sdpa, bf16)",
        "device": torch.cuda.get_device_name(0),
        "load_s": load_s,
        "prefill": prefill,
        "decode": results,
        "gpu_memory_mib": {
            "source": "nvidia-smi memory.used sampled every 20 ms; torch allocator counters",
            "before_load": before,
            "after_weights": weights_mib,
            "after_prefill": prefill_mib,
            "peak": memory.peak_mib(),
            "torch_max_allocated": torch.cuda.max_memory_allocated() / 2**20,
            "torch_max_reserved": torch.cuda.max_memory_reserved() / 2**20,
        },
    }
    memory.stop()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            f.write(text + "\n")
        import os
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
