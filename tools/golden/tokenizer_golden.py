"""Golden token ids for the SmolLM2 tokenizer rebuilt from GGUF metadata (crates/llama/src/tokenizer.rs).

Reference 1 (independent of any tokenizer library): a plain-Python GPT-2 byte-level BPE over
`tokenizer.ggml.tokens` / `tokenizer.ggml.merges`, with llama.cpp's `smollm` pre-tokenizer (every digit its
own piece, then GPT-2's split regex) and the control tokens (token_type 3) matched whole.
Reference 2: transformers' own GGUF tokenizer conversion (transformers.integrations.gguf), with the SmolLM2
pre-tokenizer (Digits(individual_digits) + ByteLevel, as in the HF SmolLM2 tokenizer.json) set on it.
Both must agree on every string; the ids are written to fixtures/golden/smollm2_tokenizer.json.

Run from the repository root:  pip install gguf numpy regex transformers && python3 tools/golden/tokenizer_golden.py
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import regex
from gguf import GGUFReader

ROOT = Path(__file__).resolve().parents[2]
ASSETS = Path(os.environ.get("TUNELOOP_ASSETS", ROOT / "assets"))
GGUF = ASSETS / "smollm2-135m-instruct.Q4_1.gguf"

TEXTS = [
    "Hello, world!",
    "The year 2024 had 12345 items; pi is about 3.14159.",
    "def f(x):\n    if x > 0:\n        return x * 2\n\treturn -x\n",
    "Emoji: 😀🎉👍🏽 café naïve",
    "你好，世界！日本語のテキスト。한국어",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "  leading and trailing spaces   \n\n\nmulti newline",
    "don't I'll we've they're SHOUTING's",
    "<|endoftext|>after special<file_sep>",
    "Привет мир مرحبا",
    "https://example.com/path?q=1&b=2 x^2 + y_1 = z",
    "",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "\u00a0non-breaking\u2009thin space ½ ² ٣",
    "<|im_start <|im_end|>x<|im_end|>",
    "What is the capital of France?",
]

GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class ReferenceBpe:
    def __init__(self, tokens, merges, token_types):
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        self.specials = sorted((t for t, ty in zip(tokens, token_types) if ty == 3), key=len, reverse=True)
        self.byte_map = bytes_to_unicode()

    def bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, _ = min(pairs)
            if rank == float("inf"):
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and self.ranks.get((parts[i], parts[i + 1])) == rank:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return [self.vocab[p] for p in parts]

    def encode(self, text):
        ids = []
        special_split = "(" + "|".join(map(regex.escape, self.specials)) + ")"
        for piece in regex.split(special_split, text):
            if piece in self.specials:
                ids.append(self.vocab[piece])
                continue
            for chunk in regex.split(r"(\p{N})", piece):
                for word in GPT2_SPLIT.findall(chunk):
                    ids.extend(self.bpe("".join(self.byte_map[b] for b in word.encode("utf-8"))))
        return ids


def read_tokenizer_metadata():
    reader = GGUFReader(str(GGUF))
    strings = lambda key: [bytes(reader.fields[key].parts[i]).decode("utf-8") for i in reader.fields[key].data]
    token_types = [int(reader.fields["tokenizer.ggml.token_type"].parts[i][0]) for i in reader.fields["tokenizer.ggml.token_type"].data]
    return strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges"), token_types


def transformers_reference(tokens, merges, token_types):
    from tokenizers import pre_tokenizers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import add_gguf_special_tokens, byte_level_tokenizer

    tokenizer_dict = {"tokenizer_type": "gpt2", "tokens": tokens, "merges": merges, "token_type": token_types}
    tokenizer = add_gguf_special_tokens(byte_level_tokenizer(tokenizer_dict), tokenizer_dict)
    backend = tokenizer.backend_tokenizer
    stock_pre_tokenizer = backend.pre_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]
    )
    return backend, stock_pre_tokenizer


def main():
    if not GGUF.exists():
        sys.exit(f"{GGUF} missing: run `cargo xtask assets`")
    tokens, merges, token_types = read_tokenizer_metadata()
    reference = ReferenceBpe(tokens, merges, token_types)
    backend, stock = transformers_reference(tokens, merges, token_types)
    cases = []
    for text in TEXTS:
        ids = reference.encode(text)
        hf_ids = backend.encode(text, add_special_tokens=False).ids
        if ids != hf_ids:
            sys.exit(f"references disagree on {text!r}:\n python {ids}\n tokenizers {hf_ids}")
        decoded = backend.decode(ids, skip_special_tokens=False)
        assert decoded == text, (decoded, text)
        cases.append({"text": text, "ids": ids})
    print(f"pre-tokenizer transformers' GGUF conversion picks for `smollm` files: {stock}")
    out = ROOT / "fixtures/golden/smollm2_tokenizer.json"
    out.write_text(json.dumps({"gguf": GGUF.name, "cases": cases}, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {out}: {len(cases)} strings, both references agree")


if __name__ == "__main__":
    main()
