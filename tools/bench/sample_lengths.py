#!/usr/bin/env python3
"""Token lengths of a deterministic sample of a chat JSONL, for the padding-free LoRA rows
(`lora-bench --lengths`, `hf_lora.py --lengths`): each sampled conversation rendered with the
model's chat template by the fast tokenizer, cut at 2,048 tokens as Phase 1A cuts it, one length
per line in sample order. The lengths, not the texts, travel to the GPU host.

    python3 tools/bench/sample_lengths.py <chat.jsonl> <tokenizer dir> --count 4096 --seed 19 > lengths.txt
"""
import argparse
import json
import random

MAX_LEN = 2048


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("tokenizer")
    parser.add_argument("--count", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    with open(args.data, encoding="utf-8") as f:
        lines = f.readlines()
    picked = random.Random(args.seed).sample(range(len(lines)), args.count)
    for index in picked:
        messages = json.loads(lines[index])["messages"]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        print(min(len(ids), MAX_LEN))


if __name__ == "__main__":
    main()
