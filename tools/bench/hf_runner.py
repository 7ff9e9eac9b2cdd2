"""HF transformers baseline for `gpu-bench runner`: the same Phase 1B items, the same work.

Llama-3.1-8B shape (hf_infer.py's config), random init on the GPU, bf16, SDPA attention.
Items are taken in the runner's order (grader kind, then prompt length in bytes) in batches of
`--batch-size`, as failure_mining::run::run_items does:
- multiple choice: log-likelihood of each choice, with benchmarks' LocalModel split: context
  `Question: {question}\nAnswer:` (trailing whitespace moved to the continuation), continuation
  ` {choice}`, continuation tokens = tokens of context + continuation after the context's own.
  Each (context, continuation) pair is one row of (context + continuation)[:-1], rows sorted
  longest first, right-padded (no mask needed under a causal model, as lm-evaluation-harness
  does) in chunks of `--batch-size`; logits only at the scored positions, log-softmax in f32.
  No prefix sharing: HF has none built in (tuneloop computes a shared context once).
- everything else: the user prompt through the tokenizer's chat template (generation prompt
  added), left-padded, `model.generate` greedy with min_new_tokens = max_new_tokens, so every
  row produces exactly the cap (random weights would otherwise stop at random); decoded.
Replies are not graded here (grading is a few microseconds of CPU per item in tuneloop).

Tokenised with the same tokenizer.json (`tokenizers`) and the chat template from
tokenizer_config.json rendered with jinja2 as transformers does.

    python3 tools/bench/hf_runner.py --testset testset.jsonl --tokenizer DIR --json hf.json
"""

import argparse
import json
import os
import sys
import time

import torch
import transformers
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_infer import MemoryPoller, llama31_8b_config  # noqa: E402


def log(message):
    print(f"hf_runner: {message}", file=sys.stderr, flush=True)


class Text:
    """tokenizer.json + the chat template, as benchmarks::LocalModel uses them."""

    def __init__(self, directory):
        self.tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        with open(os.path.join(directory, "tokenizer_config.json")) as f:
            config = json.load(f)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self.template = env.from_string(config["chat_template"])
        self.special = {k: config.get(k) or "" for k in ("bos_token", "eos_token")}

    def encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def chat_prompt(self, prompt):
        text = self.template.render(messages=[{"role": "user", "content": prompt}],
                                    add_generation_prompt=True, **self.special)
        return self.encode(text)

    def encode_pair(self, context, continuation):
        trimmed = context.rstrip()
        continuation = context[len(trimmed):] + continuation
        whole = self.encode(trimmed + continuation)
        split = min(len(self.encode(trimmed)), len(whole))
        return whole[:split], whole[split:]

    def decode(self, ids):
        # Ids past the tokenizer's vocabulary (the model's is larger) decode to nothing.
        size = self.tokenizer.get_vocab_size()
        return self.tokenizer.decode([i for i in ids if i < size], skip_special_tokens=True)


def runner_order(items):
    """failure_mining::run::run_items: sort by (grader kind, prompt length in bytes), stable."""
    return sorted(items, key=lambda item: (item["grader"]["kind"], len(item["prompt"].encode())))


class Model:
    def __init__(self, model, text, batch_size, max_new_tokens, device):
        self.model, self.text, self.device = model, text, device
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.reset()

    def reset(self):
        self.totals = {"loglikelihood_s": 0.0, "loglikelihood_requests": 0, "request_tokens": 0,
                       "positions_computed": 0, "generate_s": 0.0, "generate_requests": 0,
                       "prompt_tokens": 0, "new_tokens": 0}

    @torch.inference_mode()
    def loglikelihood(self, pairs):
        start = time.perf_counter()
        encoded = [self.text.encode_pair(context, continuation) for context, continuation in pairs]
        rows = [(i, c + k) for i, (c, k) in enumerate(encoded)]
        rows.sort(key=lambda row: -len(row[1]))
        scores = [None] * len(encoded)
        for chunk_start in range(0, len(rows), self.batch_size):
            chunk = rows[chunk_start:chunk_start + self.batch_size]
            width = max(len(whole) - 1 for _, whole in chunk)
            tokens = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (_, whole) in enumerate(chunk):
                tokens[r, :len(whole) - 1] = torch.tensor(whole[:-1])
            hidden = self.model.model(input_ids=tokens.to(self.device)).last_hidden_state
            # The positions that predict each continuation token, and those tokens.
            row_index, position, target = [], [], []
            for r, (i, whole) in enumerate(chunk):
                n = len(encoded[i][1])
                row_index += [r] * n
                position += list(range(len(whole) - 1 - n, len(whole) - 1))
                target += whole[len(whole) - n:]
            picked = hidden[torch.tensor(row_index, device=self.device),
                            torch.tensor(position, device=self.device)]
            logprobs = torch.log_softmax(self.model.lm_head(picked).float(), dim=-1)
            targets = torch.tensor(target, device=self.device)
            token_logprobs = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)
            greedy = logprobs.argmax(-1) == targets
            token_logprobs, greedy = token_logprobs.tolist(), greedy.tolist()
            offset = 0
            for i, _ in chunk:
                n = len(encoded[i][1])
                scores[i] = (sum(token_logprobs[offset:offset + n]), all(greedy[offset:offset + n]))
                offset += n
            self.totals["positions_computed"] += len(chunk) * width
        self.totals["loglikelihood_s"] += time.perf_counter() - start
        self.totals["loglikelihood_requests"] += len(pairs)
        self.totals["request_tokens"] += sum(len(c) + len(k) for c, k in encoded)
        return scores

    @torch.inference_mode()
    def generate(self, prompts):
        start = time.perf_counter()
        ids = [self.text.chat_prompt(p) for p in prompts]
        outputs = []
        for chunk_start in range(0, len(ids), self.batch_size):
            chunk = ids[chunk_start:chunk_start + self.batch_size]
            width = max(len(r) for r in chunk)
            tokens = torch.full((len(chunk), width), 2, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, row in enumerate(chunk):
                tokens[r, width - len(row):] = torch.tensor(row)
                mask[r, width - len(row):] = 1
            out = self.model.generate(
                tokens.to(self.device), attention_mask=mask.to(self.device),
                max_new_tokens=self.max_new_tokens, min_new_tokens=self.max_new_tokens,
                do_sample=False, eos_token_id=None, pad_token_id=2, use_cache=True)
            new = out[:, width:].tolist()
            assert all(len(row) == self.max_new_tokens for row in new), "rows stopped early"
            outputs += [self.text.decode(row) for row in new]
            self.totals["new_tokens"] += sum(len(row) for row in new)
        self.totals["generate_s"] += time.perf_counter() - start
        self.totals["generate_requests"] += len(prompts)
        self.totals["prompt_tokens"] += sum(len(r) for r in ids)
        return outputs


def run_items(model, items, batch_size):
    """The runner's loop: each batch's multiple-choice items by log-likelihood, the rest generated."""
    counts = {"loglikelihood": 0, "generative": 0}
    ordered = runner_order(items)
    for start in range(0, len(ordered), batch_size):
        batch = ordered[start:start + batch_size]
        choice = [it for it in batch if it["grader"]["kind"] == "multiple_choice"]
        other = [it for it in batch if it["grader"]["kind"] != "multiple_choice"]
        if other:
            model.generate([it["prompt"] for it in other])
        if choice:
            pairs = [(f"Question: {it['question']}\nAnswer:", f" {c}")
                     for it in choice for c in it["grader"]["choices"]]
            scores = model.loglikelihood(pairs)
            assert len(scores) == len(pairs)
        counts["loglikelihood"] += len(choice)
        counts["generative"] += len(other)
    return counts


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--testset", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--warmup-batches", type=int, default=1)
    parser.add_argument("--json")
    # tiny + cpu: a check of this script where there is no GPU.
    parser.add_argument("--shape", choices=["llama31-8b", "tiny"], default="llama31-8b")
    parser.add_argument("--device", default="cuda:0")
    args = parser.parse_args()

    with open(args.testset) as f:
        items = [json.loads(line) for line in f if line.strip()]
    if args.limit:
        items = items[:args.limit]
    text = Text(args.tokenizer)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    memory = MemoryPoller(device.index or 0) if on_gpu else None
    start = time.perf_counter()
    torch.manual_seed(0)
    config = llama31_8b_config()
    if args.shape == "tiny":
        config.hidden_size, config.intermediate_size, config.num_hidden_layers = 64, 128, 2
        config.num_attention_heads, config.num_key_value_heads = 4, 2
        config.head_dim = 16
    with torch.device(device):
        hf = LlamaForCausalLM._from_config(config, attn_implementation="sdpa",
                                           dtype=torch.bfloat16 if on_gpu else torch.float32)
    hf.eval()
    sync()
    load_s = time.perf_counter() - start
    log(f"random 8B-shape model in {load_s:.1f}s, attention {hf.config._attn_implementation}")
    model = Model(hf, text, args.batch_size, args.max_new_tokens, device)

    # The same warm-up as gpu-bench runner: the first batches of each method, untimed.
    ordered = runner_order(items)
    n = args.batch_size * args.warmup_batches
    warmup = ([it for it in ordered if it["grader"]["kind"] == "multiple_choice"][:n]
              + [it for it in ordered if it["grader"]["kind"] != "multiple_choice"][:n])
    start = time.perf_counter()
    if warmup:
        run_items(model, warmup, args.batch_size)
    sync()
    warmup_s = time.perf_counter() - start
    model.reset()
    log(f"warm-up on {len(warmup)} items in {warmup_s:.1f}s")

    start = time.perf_counter()
    counts = run_items(model, items, args.batch_size)
    sync()
    run_s = time.perf_counter() - start
    t = model.totals
    log(f"{len(items)} items in {run_s:.1f}s")
    report = {
        "implementation": f"HF transformers {transformers.__version__} (torch {torch.__version__}, sdpa, {str(hf.dtype).removeprefix('torch.')})",
        "device": torch.cuda.get_device_name(device) if on_gpu else str(device),
        "shape": args.shape,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "load_s": load_s,
        "warmup": {"items": len(warmup), "seconds": warmup_s},
        "items": len(items),
        "run_seconds": run_s,
        "items_per_s": len(items) / run_s,
        "loglikelihood": {
            "items": counts["loglikelihood"], "model_seconds": t["loglikelihood_s"],
            "items_per_s": counts["loglikelihood"] / max(t["loglikelihood_s"], 1e-9),
            "requests": t["loglikelihood_requests"], "request_tokens": t["request_tokens"],
            "request_tokens_per_s": t["request_tokens"] / max(t["loglikelihood_s"], 1e-9),
            "positions_computed": t["positions_computed"],
        },
        "generative": {
            "items": counts["generative"], "model_seconds": t["generate_s"],
            "items_per_s": counts["generative"] / max(t["generate_s"], 1e-9),
            "requests": t["generate_requests"], "prompt_tokens": t["prompt_tokens"],
            "new_tokens": t["new_tokens"],
            "new_tokens_per_s": t["new_tokens"] / max(t["generate_s"], 1e-9),
        },
        "gpu_memory_mib": {
            "source": "nvidia-smi memory.used sampled every 20 ms; torch allocator counters",
            "peak": memory.peak_mib() if memory else None,
            "torch_max_allocated": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
            "torch_max_reserved": torch.cuda.max_memory_reserved() / 2**20 if on_gpu else None,
        },
    }
    if memory:
        memory.stop()
    text_out = json.dumps(report, indent=2)
    print(text_out)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            f.write(text_out + "\n")
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
