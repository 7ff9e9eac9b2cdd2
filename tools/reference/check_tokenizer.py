#!/usr/bin/env python3
"""Cross-check the SmolLM2 tokenizer rebuilt in llama_numpy.py against transformers' own GGUF
byte-level converter (transformers.integrations.gguf.gguf_tokenizer_mapping, the torch-free part;
transformers' GGUF *reader* needs torch, so the metadata is read with the `gguf` package).

transformers has no split regex for the GGUF pre-tokenizer name `smollm`, so its converter keeps
GPT2Tokenizer's plain ByteLevel pre-tokenizer: it does not isolate digits. Texts without digits
must tokenise identically; texts with digits must differ only by digit splitting (checked by
decoding to the same string and by every digit being its own token on our side).

    python tools/reference/check_tokenizer.py
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gguf import GGUFReader  # noqa: E402
from llama_numpy import DEFAULT_GGUF, assets_dir, build_tokenizer  # noqa: E402
from transformers.integrations.gguf.gguf_tokenizer_mapping import (  # noqa: E402
    add_gguf_special_tokens,
    byte_level_tokenizer,
)

TEXTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < two:\n        return n\n\treturn fib(n - one)",
    "Café naïve résumé — “quotes” 你好，世界！ Emoji 😀👍🏽 and ❤️",
    "   leading spaces and trailing   ",
    "don't we'll they're I'M shouldn'T",
    "\n\n\nThe following are multiple choice questions (with answers) about abstract algebra.\n\n",
    "<|endoftext|><repo_name>x<file_sep>y<|im_end|>",
    "Answer: A\n\nFind the degree",
]
DIGIT_TEXTS = ["1 + 1 =", "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.", "3.14159 and 1,000,000"]


def main() -> None:
    reader = GGUFReader(str(assets_dir() / DEFAULT_GGUF))
    ours = build_tokenizer(reader)
    f = reader.fields
    d = {
        "tokenizer_type": f["tokenizer.ggml.model"].contents(),
        "tokens": f["tokenizer.ggml.tokens"].contents(),
        "merges": f["tokenizer.ggml.merges"].contents(),
        "token_type": f["tokenizer.ggml.token_type"].contents(),
    }
    theirs = add_gguf_special_tokens(byte_level_tokenizer(d), d)
    bad = 0
    for t in TEXTS:
        a = ours.encode(t).ids
        b = theirs(t, add_special_tokens=False)["input_ids"]
        ok = a == b and ours.decode(a, skip_special_tokens=False) == t
        bad += not ok
        print("OK " if ok else "BAD", json.dumps(t)[:60], len(a))
    for t in DIGIT_TEXTS:
        a = ours.encode(t)
        b = theirs(t, add_special_tokens=False)["input_ids"]
        digits_alone = all(not any(c.isdigit() for c in tok) or len(tok) == 1 for tok in a.tokens)
        ok = ours.decode(a.ids) == theirs.decode(b) == t and digits_alone
        bad += not ok
        print("OK " if ok else "BAD", json.dumps(t)[:60], a.tokens)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
