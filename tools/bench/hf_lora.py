"""HF transformers + PEFT baseline for `lora-bench`: LoRA training steps at the Llama-3.1-8B shape.

Random bf16 weights (LlamaConfig at the 8B shape, initialised on the GPU), SDPA attention,
PEFT LoRA r=16 alpha=32 on q,k,v,o,gate,up,down (adapters in f32 as PEFT makes them), AdamW
over the adapters, batch x seq random tokens with labels = inputs (HF shifts them), one optimiser
step per batch. Timed after 2 warm-up steps; peak memory from torch.cuda.max_memory_allocated
and max_memory_reserved. Prints one JSON line.

    python3 tools/bench/hf_lora.py --seq 2048 --batch 1 --steps 5 [--checkpointing] [--layers N]
        [--liger] [--compile]

Mixed lengths: `--lengths tools/bench/chat_lengths.txt --batch 16` gives step s the examples
s*16 .. s*16+15 of the file (random tokens drawn per example, the same in both modes), either
right-padded to the longest (attention mask, padding labels -100) or, with --padding-free, as HF's
`DataCollatorWithFlattening` makes them: one row, position_ids restarting at each example, the
first label of each example -100, no attention mask (transformers then keeps attention inside
each example). tokens/s then counts real tokens only.

--liger patches the Llama classes with Liger Kernel (`apply_liger_kernel_to_llama`: Triton
RMSNorm, RoPE, SwiGLU and the fused linear cross-entropy) before the model is built; --compile
wraps the PEFT model in torch.compile (compiled during the warm-up steps, which are not timed).
"""

import argparse
import json
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--liger", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--lengths", help="example lengths, one per line (mixed-length steps)")
    parser.add_argument("--padding-free", action="store_true",
                        help="with --lengths: flatten each batch into one row (DataCollatorWithFlattening)")
    parser.add_argument("--profile", help="record one step (after warm-up, not timed) as a Chrome trace here")
    args = parser.parse_args()

    config = LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=args.layers, num_attention_heads=32, num_key_value_heads=8,
        rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072,
        tie_word_embeddings=False, attn_implementation="sdpa", torch_dtype=torch.bfloat16,
    )
    if args.liger:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
        apply_liger_kernel_to_llama()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    if args.checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                      "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if args.compile:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq), device="cuda")
    fixed = {"input_ids": tokens, "labels": tokens}
    lengths = [int(line) for line in open(args.lengths) if line.strip()] if args.lengths else None

    def step_inputs(step):
        """The model inputs of `step` and its number of real tokens."""
        if lengths is None:
            return fixed, args.batch * args.seq
        examples = []
        for row in range(args.batch):
            index = step * args.batch + row
            generator = torch.Generator().manual_seed(index)
            length = lengths[index % len(lengths)]
            examples.append(torch.randint(0, config.vocab_size, (length,), generator=generator))
        real = sum(len(e) for e in examples)
        if args.padding_free:
            ids = torch.cat(examples)
            positions = torch.cat([torch.arange(len(e)) for e in examples])
            labels = ids.clone()
            labels[positions == 0] = -100
            batch = {"input_ids": ids[None], "position_ids": positions[None], "labels": labels[None]}
        else:
            width = max(len(e) for e in examples)
            ids = torch.zeros(args.batch, width, dtype=torch.long)
            mask = torch.zeros(args.batch, width, dtype=torch.long)
            for row, e in enumerate(examples):
                ids[row, :len(e)] = e
                mask[row, :len(e)] = 1
            labels = ids.masked_fill(mask == 0, -100)
            batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        return {k: v.to("cuda", non_blocking=True) for k, v in batch.items()}, real

    torch.cuda.reset_peak_memory_stats()
    times, real_tokens = [], 0
    def train_step(step):
        inputs, real = step_inputs(step)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item(), real

    profiled = 1 if args.profile else 0
    for step in range(args.steps + 2 + profiled):
        torch.cuda.synchronize()
        if args.profile and step == 2:
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
                start = time.perf_counter()
                value, _ = train_step(step)
                seconds = time.perf_counter() - start
            prof.export_chrome_trace(args.profile)
            print(f"step {step} (profiled, not timed): {seconds:.3f}s", file=sys.stderr)
            continue
        start = time.perf_counter()
        value, real = train_step(step)
        seconds = time.perf_counter() - start
        print(f"step {step}: {seconds:.3f}s loss {value:.4f}", file=sys.stderr)
        if step >= 2:
            times.append(seconds)
            real_tokens += real
    mean = sum(times) / len(times)
    print(json.dumps({
        "bench": "hf_peft_lora_train_step",
        "layers": args.layers, "seq": args.seq, "batch": args.batch,
        "gradient_checkpointing": args.checkpointing,
        "liger": args.liger, "compile": args.compile,
        "lengths": args.lengths, "padding_free": args.padding_free,
        "seconds_per_step": mean,
        "tokens_per_second": real_tokens / sum(times),
        "last_loss": value,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(),
    }))


if __name__ == "__main__":
    main()
