#!/usr/bin/env python3
"""The peer of `cargo run --release -p lora-training --example token_cache`: HF `datasets` `.map`
with the fast tokenizer and the model's chat template over the same chat JSONL, as a TRL-style
SFT preprocessing does it, with the same loss mask (tokens that start inside an assistant
message's rendered span) and the same 2,048-token cut. Results land in datasets' Arrow cache (a
fresh directory), which is what a training run then reads. Prints one JSON line.

    HF_DATASETS_CACHE=<fresh dir> python3 tools/bench/hf_token_cache.py <chat.jsonl> <tokenizer dir> --num-proc 2
"""
import argparse
import json
import os
import time

MAX_LEN = 2048


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("tokenizer")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count())
    args = parser.parse_args()
    started = time.time()
    import datasets
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    assert tokenizer.is_fast, "the peer uses the fast (Rust) tokenizer"

    def render(messages, **kw):
        return tokenizer.apply_chat_template(messages, tokenize=False, **kw)

    def encode(batch):
        texts, spans = [], []
        for messages in batch["messages"]:
            text = render(messages)
            own = []
            for i, message in enumerate(messages):
                if message["role"] != "assistant":
                    continue
                start = len(render(messages[:i], add_generation_prompt=True))
                end = len(render(messages[: i + 1]))
                own.append((start, end))
            texts.append(text)
            spans.append(own)
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        ids, masks, truncated = [], [], []
        for row, offsets, own in zip(encoded["input_ids"], encoded["offset_mapping"], spans):
            mask = [any(s <= start < e for s, e in own) for start, _ in offsets]
            truncated.append(len(row) > MAX_LEN)
            ids.append(row[:MAX_LEN])
            masks.append(mask[:MAX_LEN])
        return {"input_ids": ids, "assistant_masks": masks, "truncated": truncated}

    data = datasets.load_dataset("json", data_files=args.data, split="train")
    tokenized = data.map(
        encode,
        batched=True,
        batch_size=1000,
        num_proc=args.num_proc,
        remove_columns=data.column_names,
        desc="tokenising",
    )
    tokens = trained = truncated = 0
    for batch in tokenized.iter(batch_size=10_000):
        tokens += sum(len(row) for row in batch["input_ids"])
        trained += sum(sum(row) for row in batch["assistant_masks"])
        truncated += sum(batch["truncated"])
    print(json.dumps({
        "bench": "token_cache",
        "side": "hf_datasets_map",
        "examples": len(tokenized),
        "tokens": tokens,
        "trained_tokens": trained,
        "truncated": truncated,
        "num_proc": args.num_proc,
        "datasets": datasets.__version__,
        "seconds": time.time() - started,
    }))


if __name__ == "__main__":
    main()
