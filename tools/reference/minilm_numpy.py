#!/usr/bin/env python3
"""Independent numpy reference of all-MiniLM-L6-v2 (BERT encoder + mean pooling + L2 normalise).

Written from HF transformers' BertModel and sentence-transformers' Pooling/Normalize modules, not
from tuneloop's Rust code. float64 throughout (weights are stored f32):
  * embeddings = LayerNorm(word[id] + position[i] + token_type[0]);
  * 6 post-LN encoder layers: self-attention (12 heads, scores + (1 - mask) * large negative),
    dense + residual + LayerNorm, intermediate dense + exact GELU (erf), dense + residual + LayerNorm;
    LayerNorm eps from config.json (1e-12);
  * mean over tokens where attention_mask = 1 (sum / max(count, 1e-9)), then x / max(||x||, 1e-12).
Tokenisation: `tokenizers` with assets/all-minilm-l6-v2/tokenizer.json, padding disabled (the file
pads to 128) and truncation at 256 tokens including [CLS]/[SEP] (sentence_bert_config max_seq_length).

    python tools/reference/minilm_numpy.py        # writes fixtures/golden/minilm_embeddings.json
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN = REPO_ROOT / "fixtures" / "golden" / "minilm_embeddings.json"
MAX_SEQ_LENGTH = 256


def model_dir() -> Path:
    return Path(os.environ.get("TUNELOOP_ASSETS", REPO_ROOT / "assets")) / "all-minilm-l6-v2"


def erf(x: np.ndarray) -> np.ndarray:
    # numpy has no vectorised erf; math.erf is exact to double precision.
    return np.vectorize(math.erf, otypes=[np.float64])(x)


class MiniLM:
    def __init__(self, directory: Path):
        cfg = json.loads((directory / "config.json").read_text())
        self.eps = float(cfg["layer_norm_eps"])
        self.heads = int(cfg["num_attention_heads"])
        self.layers_n = int(cfg["num_hidden_layers"])
        if cfg.get("hidden_act") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("expected exact gelu and absolute positions in config.json")
        self.w = {k: v.astype(np.float64) for k, v in load_file(str(directory / "model.safetensors")).items()}
        self.tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(MAX_SEQ_LENGTH)

    def layer_norm(self, x: np.ndarray, prefix: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.w[prefix + ".weight"] + self.w[prefix + ".bias"]

    def dense(self, x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ self.w[prefix + ".weight"].T + self.w[prefix + ".bias"]

    def encode_ids(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids, mask: [batch, seq] -> token states [batch, seq, hidden]."""
        b, t = ids.shape
        w = self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(t)][None]
            + w["embeddings.token_type_embeddings.weight"][0][None, None]
        )
        x = self.layer_norm(x, "embeddings.LayerNorm")
        hidden = x.shape[-1]
        hd = hidden // self.heads
        bias = (1.0 - mask[:, None, None, :].astype(np.float64)) * np.finfo(np.float64).min
        for i in range(self.layers_n):
            p = f"encoder.layer.{i}."

            def heads(y):
                return y.reshape(b, t, self.heads, hd).transpose(0, 2, 1, 3)

            q = heads(self.dense(x, p + "attention.self.query"))
            k = heads(self.dense(x, p + "attention.self.key"))
            v = heads(self.dense(x, p + "attention.self.value"))
            s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
            s = s - s.max(-1, keepdims=True)
            pr = np.exp(s)
            pr /= pr.sum(-1, keepdims=True)
            ctx = (pr @ v).transpose(0, 2, 1, 3).reshape(b, t, hidden)
            x = self.layer_norm(self.dense(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            h = self.dense(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
            x = self.layer_norm(self.dense(h, p + "output.dense") + x, p + "output.LayerNorm")
        return x

    def embed_batch(self, id_lists: list[list[int]]) -> np.ndarray:
        """Right-padded batch with an attention mask: exercises the mask path."""
        t = max(len(i) for i in id_lists)
        ids = np.zeros((len(id_lists), t), dtype=np.int64)
        mask = np.zeros((len(id_lists), t), dtype=np.int64)
        for r, i in enumerate(id_lists):
            ids[r, : len(i)] = i
            mask[r, : len(i)] = 1
        states = self.encode_ids(ids, mask)
        m = mask[..., None].astype(np.float64)
        pooled = (states * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

    def token_ids(self, text: str) -> list[int]:
        return self.tok.encode(text).ids


LONG = (
    "Sentence embeddings map a piece of text to a fixed-size vector so that texts with similar meaning "
    "land close together. They are used for semantic search, clustering, deduplication and retrieval "
    "augmented generation. A typical pipeline tokenises the input into word pieces, runs a transformer "
    "encoder over them, averages the token vectors while ignoring padding, and normalises the result to "
    "unit length, so that a dot product equals the cosine similarity. Because the encoder only accepts a "
    "limited number of tokens, long documents are truncated: everything after the limit is silently "
    "dropped, which is why chunking strategies matter in practice. In 2019, Reimers and Gurevych showed "
    "that siamese BERT networks trained on natural language inference data produce far better sentence "
    "vectors than averaging raw BERT outputs, and later models distilled from larger teachers, such as "
    "MiniLM, made the approach fast enough to embed millions of sentences on a single CPU. "
)
LONG_300 = " ".join((LONG * 3).split()[:300])

SENTENCES = [
    "Hello",
    "cat",
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "The quick brown fox jumps over the lazy dog!",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "How do I reset my password??? It keeps saying 'invalid token' (error #4012).",
    "The meeting is at 3:45 p.m. on 2024-03-15; bring 2 copies of the Q1 report ($1,250.00 budget).",
    "Pi is approximately 3.14159, and e is about 2.71828.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Café, naïve, résumé, façade and Ångström all carry diacritics.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "東京は日本の首都です。",
    "你好，世界！",
    "Москва — столица России.",
    "I love this! 😀👍 Best day ever ❤️",
    "   leading and trailing whitespace   ",
    "ALL CAPS SENTENCE WITH SHOUTING",
    "e-mail: someone@example.com, url: https://example.org/path?x=1&y=2",
    "The model failed to solve the arithmetic word problem because it dropped a carry digit.",
    "Students who answered the chemistry questions incorrectly often confused moles with grams.",
    "Write a Python function that returns the nth prime number.",
    "unbelievably antidisestablishmentarianism supercalifragilisticexpialidocious",
    " ".join(LONG.split()[:60]),
    LONG_300,
]


def main() -> None:
    d = model_dir()
    if not (d / "model.safetensors").exists():
        sys.exit(f"{d} not found: run `cargo xtask assets` (or set TUNELOOP_ASSETS)")
    t0 = time.time()
    m = MiniLM(d)
    ids = [m.token_ids(s) for s in SENTENCES]
    single = np.concatenate([m.embed_batch([i]) for i in ids])
    batched = m.embed_batch(ids)  # padded to the longest with a mask: must agree with unpadded
    diff = float(np.abs(single - batched).max())
    assert diff < 1e-12, f"padded batch differs from single by {diff}"
    assert any(len(i) == MAX_SEQ_LENGTH for i in ids), "no sentence reaches the truncation limit"
    items = [
        {
            "text": s,
            "token_ids": i,
            "embedding": [float(f"{v:.7g}") for v in e],
        }
        for s, i, e in zip(SENTENCES, ids, single)
    ]
    out = {
        "description": "all-MiniLM-L6-v2 sentence embeddings (mean pooling over attention mask, L2 normalised), "
        "float64 numpy reference, rounded to 7 significant digits. Tokeniser: tokenizer.json with padding off "
        "and truncation at 256 tokens incl. [CLS]/[SEP]. Produced by tools/reference/minilm_numpy.py.",
        "max_seq_length": MAX_SEQ_LENGTH,
        "dimension": int(single.shape[1]),
        "max_abs_diff_padded_batch_vs_single": diff,
        "sentences": items,
    }
    tmp = GOLDEN.with_suffix(".json.tmp")
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(out, ensure_ascii=False) + "\n")
    tmp.replace(GOLDEN)
    lens = [len(i) for i in ids]
    print(f"{len(items)} sentences, token counts {min(lens)}..{max(lens)}, padded-vs-single {diff:.2e}, "
          f"{time.time() - t0:.1f}s -> {GOLDEN.relative_to(REPO_ROOT)}")
    print("cos(A man is playing a guitar., A woman is slicing an onion.) =", float(single[2] @ single[3]))
    print("cos(What is the capital of France?, Paris is the capital...) =", float(single[5] @ single[6]))


if __name__ == "__main__":
    main()
