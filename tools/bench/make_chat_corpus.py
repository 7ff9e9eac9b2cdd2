#!/usr/bin/env python3
"""A deterministic chat JSONL of mixed lengths built from the assets' task pool, for measuring
the token cache at production scale (issue #19: 600K examples).

Every text field of every pool record (questions, passages, choices, contexts, answers) goes into
one list; example i draws, from random.Random(seed) alone, an optional system prompt, 1-3 turns,
and per turn a user message of 1-4 texts and an assistant message of 1-3 texts. Lengths therefore
range from a few tokens to a few thousand (BoolQ passages, HellaSwag contexts). The validation
benchmarks (MMLU, GSM8K, HumanEval) are not read.

    python3 tools/bench/make_chat_corpus.py assets/data/pool runs/token-cache/chat600k.jsonl --examples 600000
"""
import argparse
import json
import os
import pathlib
import random


def texts_of(value, out):
    if isinstance(value, str):
        if value.strip():
            out.append(value.strip())
    elif isinstance(value, list):
        for item in value:
            texts_of(item, out)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in ("id", "label", "idx"):
                texts_of(item, out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pool", type=pathlib.Path)
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--examples", type=int, default=600_000)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    texts = []
    files = sorted(args.pool.glob("*.jsonl"))
    if not files:
        raise SystemExit(f"{args.pool}: no *.jsonl files (run `cargo xtask assets`)")
    for path in files:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    texts_of(json.loads(line), texts)
                except json.JSONDecodeError as error:
                    raise SystemExit(f"{path}:{number}: {error}")
    rng = random.Random(args.seed)
    systems = [
        "You are a careful assistant. Answer briefly.",
        "Think step by step, then give the answer on its own line.",
        "You are a helpful tutor for students.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    with partial.open("w", encoding="utf-8") as out:
        for _ in range(args.examples):
            messages = []
            if rng.random() < 0.2:
                messages.append({"role": "system", "content": rng.choice(systems)})
            for _ in range(rng.randint(1, 3)):
                user = "\n\n".join(rng.choice(texts) for _ in range(rng.randint(1, 4)))
                assistant = "\n".join(rng.choice(texts) for _ in range(rng.randint(1, 3)))
                messages.append({"role": "user", "content": user})
                messages.append({"role": "assistant", "content": assistant})
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    os.replace(partial, args.out)
    print(f"{args.examples} examples from {len(texts)} texts of {len(files)} pool files -> {args.out}")


if __name__ == "__main__":
    main()
