"""Checks tuneloop's PEFT export and merge with HF transformers + PEFT (run where torch and peft
are installed, e.g. the GPU machine's CPU).

Input: the directory `cargo run -p lora-training --example peft_export -- DIR` writes
(base/, adapter/, merged/, ours.safetensors). Checks, in float32 on the CPU:
  1. PeftModel.from_pretrained(base, adapter) loads our adapter with no missing/unexpected keys;
  2. its logits equal ours for base + adapter;
  3. merge_and_unload() logits equal our merged model's logits;
  4. our merged/ directory, loaded by transformers, gives the same logits.
Exit status 1 if any max |diff| exceeds 1e-4.

    python3 tools/reference/peft_check.py DIR
"""

import json
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaForCausalLM


def main():
    root = sys.argv[1]
    ours = load_file(f"{root}/ours.safetensors")
    probe = ours["probe"].long().unsqueeze(0)
    base = LlamaForCausalLM.from_pretrained(f"{root}/base", torch_dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, f"{root}/adapter")
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(input_ids=probe).logits[0]
        merged_peft = peft_model.merge_and_unload()(input_ids=probe).logits[0]
        ours_merged_dir = LlamaForCausalLM.from_pretrained(f"{root}/merged", torch_dtype=torch.float32)
        from_dir = ours_merged_dir(input_ids=probe).logits[0]
    results = {
        "peft_adapted_vs_ours_adapted": (adapted - ours["adapted"][0]).abs().max().item(),
        "peft_merge_and_unload_vs_ours_merged": (merged_peft - ours["merged"][0]).abs().max().item(),
        "our_merged_dir_in_transformers_vs_ours_merged": (from_dir - ours["merged"][0]).abs().max().item(),
        "adapter_effect_on_logits": (adapted - LlamaForCausalLM.from_pretrained(
            f"{root}/base", torch_dtype=torch.float32)(input_ids=probe).logits[0]).abs().max().item(),
    }
    print(json.dumps(results, indent=1))
    bad = [k for k, v in results.items() if k != "adapter_effect_on_logits" and not v < 1e-4]
    if bad or results["adapter_effect_on_logits"] < 1e-3:
        print("FAILED:", bad or "adapter had no effect", file=sys.stderr)
        sys.exit(1)
    print("PEFT check passed")


if __name__ == "__main__":
    main()
