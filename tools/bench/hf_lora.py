"""HF transformers + PEFT baseline for `lora-bench`: LoRA training steps at the Llama-3.1-8B shape.

Random bf16 weights (LlamaConfig at the 8B shape, initialised on the GPU), SDPA attention,
PEFT LoRA r=16 alpha=32 on q,k,v,o,gate,up,down (adapters in f32 as PEFT makes them), AdamW
over the adapters, batch x seq random tokens with labels = inputs (HF shifts them), one optimiser
step per batch. Timed after 2 warm-up steps; peak memory from torch.cuda.max_memory_allocated
and max_memory_reserved. Prints one JSON line.

    python3 tools/bench/hf_lora.py --seq 2048 --batch 1 --steps 5 [--checkpointing] [--layers N]
        [--liger] [--compile]

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
    torch.cuda.reset_peak_memory_stats()
    times = []
    def train_step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    profiled = 1 if args.profile else 0
    for step in range(args.steps + 2 + profiled):
        torch.cuda.synchronize()
        if args.profile and step == 2:
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
                start = time.perf_counter()
                value = train_step()
                seconds = time.perf_counter() - start
            prof.export_chrome_trace(args.profile)
            print(f"step {step} (profiled, not timed): {seconds:.3f}s", file=sys.stderr)
            continue
        start = time.perf_counter()
        value = train_step()
        seconds = time.perf_counter() - start
        print(f"step {step}: {seconds:.3f}s loss {value:.4f}", file=sys.stderr)
        if step >= 2:
            times.append(seconds)
    mean = sum(times) / len(times)
    print(json.dumps({
        "bench": "hf_peft_lora_train_step",
        "layers": args.layers, "seq": args.seq, "batch": args.batch,
        "gradient_checkpointing": args.checkpointing,
        "liger": args.liger, "compile": args.compile,
        "seconds_per_step": mean,
        "tokens_per_second": args.batch * args.seq / mean,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(),
    }))


if __name__ == "__main__":
    main()
