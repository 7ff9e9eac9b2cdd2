"""HF transformers counterpart of crates/llama/examples/llama_bench on the CPU.

Same inputs as llama_bench (token i of the flattened batch is (i*7919+13) % vocab, no
padding), f32, greedy, `use_cache=True`: one prefill forward that keeps only the last
position's logits (what generation needs; `logits_to_keep=1`, as `generate` does), then
`--decode` single-token steps through the KV cache, argmax fed back. Prints lines in
llama_bench's format so tools/bench/cpu_infer_compare.sh parses both the same way.

    python tools/bench/hf_cpu_infer.py --model assets/smollm2-135m-instruct \
        --batch 1 --prompt 128 --decode 32 --threads 2
"""

import argparse
import inspect
import time

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="HF directory (or, with --random, its config.json's folder)")
    parser.add_argument("--random", action="store_true", help="seeded random weights at the config's shape")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.random:
        from transformers import AutoConfig

        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    print(f"load: {time.perf_counter() - started:.2f}s")
    vocab = model.config.vocab_size
    batch, prompt, decode = args.batch, args.prompt, args.decode
    ids = torch.tensor(
        [(i * 7919 + 13) % vocab for i in range(batch * prompt)], dtype=torch.long
    ).reshape(batch, prompt)

    # transformers 5.24 renamed `past_key_values` to `cache` (older 5.x has only the former).
    cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def cache_of(out):
        return getattr(out, "cache", None) or out.past_key_values

    with torch.inference_mode():
        # Warm-up on a short input, as llama_bench does.
        model(ids[:, : min(prompt, 8)], use_cache=True, logits_to_keep=1)

        started = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1)
        cache = cache_of(out)
        next_ids = out.logits[:, -1, :].argmax(-1, keepdim=True)
        prefill = time.perf_counter() - started
        print(
            f"prefill: batch {batch} x {prompt} tokens in {prefill:.3f}s = "
            f"{batch * prompt / prefill:.1f} tokens/s"
        )

        started = time.perf_counter()
        for _ in range(decode):
            out = model(next_ids, **{cache_kwarg: cache}, use_cache=True)
            cache = cache_of(out)
            next_ids = out.logits[:, -1, :].argmax(-1, keepdim=True)
        elapsed = time.perf_counter() - started
        print(
            f"decode: batch {batch} x {decode} steps in {elapsed:.3f}s = "
            f"{batch * decode / elapsed:.1f} new tokens/s "
            f"({1000 * elapsed / max(decode, 1):.1f} ms/step)"
        )


if __name__ == "__main__":
    main()
