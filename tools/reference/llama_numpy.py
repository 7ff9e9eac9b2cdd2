#!/usr/bin/env python3
"""Independent numpy reference of a Llama forward pass, read straight from a GGUF file.

Written from the HF transformers Llama definition and llama.cpp's conversion script, not from
tuneloop's Rust code, so the Rust implementation can be checked against it.

What it implements (HF `LlamaForCausalLM` semantics):
  * weights dequantised by the PyPI `gguf` package (float32 values, as llama.cpp dequantises),
    then held in float64 (or float32 with --dtype f32);
  * llama.cpp's Q/K row permutation undone, giving HF layout (rotate-half rotary);
  * RMSNorm  y = x / sqrt(mean(x^2) + eps) * w, eps from `llama.attention.layer_norm_rms_epsilon`;
  * rotary embeddings, HF rotate-half layout, theta from `llama.rope.freq_base`; plus Llama 3.1
    "llama3" inv_freq scaling as HF `_compute_llama3_parameters` does (not used by SmolLM2);
  * grouped-query attention with a causal mask and a KV cache; SwiGLU MLP; tied embeddings
    (the file has no `output.weight`, so the LM head is `token_embd.weight`).
The tokenizer is rebuilt from the GGUF metadata with the `tokenizers` package (GPT-2 byte-level BPE,
pre-tokenizer = individual digits then ByteLevel without prefix space, specials = token_type 3).

Usage (from the repository root, assets linked at ./assets):
    python tools/reference/llama_numpy.py golden        # all three goldens below
    python tools/reference/llama_numpy.py generate "text" [--max-new 30]
Goldens written:
    fixtures/golden/smollm2_logits.safetensors + smollm2_logits.json
    fixtures/golden/smollm2_greedy.json
    fixtures/golden/llama3_inv_freq.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GGUF = "smollm2-135m-instruct.Q4_1.gguf"
GOLDEN_DIR = REPO_ROOT / "fixtures" / "golden"


def assets_dir() -> Path:
    return Path(os.environ.get("TUNELOOP_ASSETS", REPO_ROOT / "assets"))


# ----------------------------------------------------------------------------------------------
# Configuration and weights
# ----------------------------------------------------------------------------------------------


@dataclass
class LlamaConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    head_dim: int
    rope_scaling: dict | None = None


def _field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def read_config(reader: GGUFReader) -> LlamaConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"general.architecture is {arch!r}, expected 'llama'")
    p = "llama."
    hidden = int(_field(reader, p + "embedding_length"))
    heads = int(_field(reader, p + "attention.head_count"))
    head_dim = hidden // heads
    if p + "rope.dimension_count" in reader.fields:
        rope_dim = int(_field(reader, p + "rope.dimension_count"))
        if rope_dim != head_dim:
            raise ValueError(f"partial rotary ({rope_dim} of {head_dim}) is not a Llama layout")
    tokens = reader.fields["tokenizer.ggml.tokens"]
    vocab = int(_field(reader, p + "vocab_size")) if p + "vocab_size" in reader.fields else len(tokens.data)
    return LlamaConfig(
        hidden_size=hidden,
        num_layers=int(_field(reader, p + "block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, p + "attention.head_count_kv")),
        intermediate_size=int(_field(reader, p + "feed_forward_length")),
        vocab_size=vocab,
        # Stored as f32 in the file (9.999999747378752e-06); keep the stored value exactly.
        rms_norm_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, p + "rope.freq_base")),
        head_dim=head_dim,
    )


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp convert_hf_to_gguf.py's `LlamaModel.permute`.

    llama.cpp stores each head's rows interleaved (pairs (x0,x1),(x2,x3),... rotated together,
    GPT-J style); HF keeps the first half / second half of each head (rotate-half, NeoX style).
    Forward permute was: w.reshape(n_head, 2, d/2, in).swapaxes(1, 2).reshape(out, in).
    """
    out_dim = w.shape[0]
    half = out_dim // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_weights(reader: GGUFReader, cfg: LlamaConfig, dtype=np.float64) -> dict[str, np.ndarray]:
    """Dequantise every tensor; names mapped to HF names; matrices are [out, in] like torch Linear."""
    raw = {}
    for t in reader.tensors:
        # gguf's numpy shape is the reverse of ggml's ne, i.e. row-major [out, in] for matrices.
        arr = dequantize(t.data, t.tensor_type)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        raw[t.name] = np.asarray(arr, dtype=np.float32).reshape(shape)

    w: dict[str, np.ndarray] = {}
    w["model.embed_tokens.weight"] = raw.pop("token_embd.weight")
    w["model.norm.weight"] = raw.pop("output_norm.weight")
    if "output.weight" in raw:
        w["lm_head.weight"] = raw.pop("output.weight")
    for i in range(cfg.num_layers):
        b, h = f"blk.{i}.", f"model.layers.{i}."
        w[h + "input_layernorm.weight"] = raw.pop(b + "attn_norm.weight")
        w[h + "post_attention_layernorm.weight"] = raw.pop(b + "ffn_norm.weight")
        w[h + "self_attn.q_proj.weight"] = unpermute_qk(raw.pop(b + "attn_q.weight"), cfg.num_heads)
        w[h + "self_attn.k_proj.weight"] = unpermute_qk(raw.pop(b + "attn_k.weight"), cfg.num_kv_heads)
        w[h + "self_attn.v_proj.weight"] = raw.pop(b + "attn_v.weight")
        w[h + "self_attn.o_proj.weight"] = raw.pop(b + "attn_output.weight")
        w[h + "mlp.gate_proj.weight"] = raw.pop(b + "ffn_gate.weight")
        w[h + "mlp.up_proj.weight"] = raw.pop(b + "ffn_up.weight")
        w[h + "mlp.down_proj.weight"] = raw.pop(b + "ffn_down.weight")
        raw.pop(b + "rope_freqs.weight", None)
    raw.pop("rope_freqs.weight", None)
    if raw:
        raise ValueError(f"unmapped GGUF tensors: {sorted(raw)[:10]}")
    return {k: v.astype(dtype) for k, v in w.items()}


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def build_tokenizer(reader: GGUFReader) -> Tokenizer:
    """GPT-2 byte-level BPE from `tokenizer.ggml.tokens` / `tokenizer.ggml.merges`.

    llama.cpp's `smollm` pre-tokenizer is the regex `\\p{N}` (each digit alone) followed by the
    GPT-2 regex; HF's SmolLM2 tokenizer.json spells the same thing as
    Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)].
    """
    model = _field(reader, "tokenizer.ggml.model")
    pre = _field(reader, "tokenizer.ggml.pre")
    if model != "gpt2" or pre != "smollm":
        raise ValueError(f"tokenizer {model!r}/{pre!r}: only gpt2/smollm is rebuilt here")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    token_types = list(_field(reader, "tokenizer.ggml.token_type"))
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("duplicate token strings in tokenizer.ggml.tokens")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True, trim_offsets=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, token_types) if ty == 3]
    tok.add_special_tokens(specials)
    return tok


# ----------------------------------------------------------------------------------------------
# Rotary embeddings
# ----------------------------------------------------------------------------------------------


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """HF default: 1 / theta^(2i/d), i = 0..d/2-1 (computed here in float64)."""
    return 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))


def llama3_inv_freq(
    head_dim: int,
    theta: float,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
) -> np.ndarray:
    """HF `_compute_llama3_parameters`: long wavelengths divided by `factor`, short ones kept,
    the band between smoothly interpolated."""
    inv_freq = rope_inv_freq(head_dim, theta)
    old_len = original_max_position_embeddings
    low_freq_wavelen = old_len / low_freq_factor
    high_freq_wavelen = old_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled)


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class KVCache:
    """Per layer K and V as [kv_heads, positions, head_dim] (after rotary for K)."""

    def __init__(self, num_layers: int):
        self.k: list[np.ndarray | None] = [None] * num_layers
        self.v: list[np.ndarray | None] = [None] * num_layers

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[1]

    def truncate(self, n: int) -> None:
        for i in range(len(self.k)):
            if self.k[i] is not None:
                self.k[i] = self.k[i][:, :n]
                self.v[i] = self.v[i][:, :n]

    def clone(self) -> "KVCache":
        c = KVCache(len(self.k))
        c.k = list(self.k)  # arrays are never written in place; sharing them is safe
        c.v = list(self.v)
        return c


class LlamaModel:
    def __init__(self, cfg: LlamaConfig, weights: dict[str, np.ndarray], dtype=np.float64):
        self.cfg = cfg
        self.dtype = dtype
        self.w = weights
        self.embed = weights["model.embed_tokens.weight"]
        self.lm_head = weights.get("lm_head.weight", self.embed)  # tied when absent
        if cfg.rope_scaling is not None:
            self.inv_freq = llama3_inv_freq(cfg.head_dim, cfg.rope_theta, **cfg.rope_scaling)
        else:
            self.inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta)
        # Pre-transpose matrices once so every matmul is x @ W^T without a copy per call.
        self.layers = []
        for i in range(cfg.num_layers):
            h = f"model.layers.{i}."
            self.layers.append(
                dict(
                    ln1=weights[h + "input_layernorm.weight"],
                    ln2=weights[h + "post_attention_layernorm.weight"],
                    qkv_t=np.ascontiguousarray(
                        np.concatenate(
                            [
                                weights[h + "self_attn.q_proj.weight"],
                                weights[h + "self_attn.k_proj.weight"],
                                weights[h + "self_attn.v_proj.weight"],
                            ]
                        ).T
                    ),
                    o_t=np.ascontiguousarray(weights[h + "self_attn.o_proj.weight"].T),
                    gate_up_t=np.ascontiguousarray(
                        np.concatenate([weights[h + "mlp.gate_proj.weight"], weights[h + "mlp.up_proj.weight"]]).T
                    ),
                    down_t=np.ascontiguousarray(weights[h + "mlp.down_proj.weight"].T),
                )
            )
        self.norm = weights["model.norm.weight"]
        self.lm_head_t = np.ascontiguousarray(self.lm_head.T)

    @classmethod
    def from_gguf(cls, path: Path, dtype=np.float64) -> tuple["LlamaModel", Tokenizer]:
        reader = GGUFReader(str(path))
        cfg = read_config(reader)
        weights = load_weights(reader, cfg, dtype)
        return cls(cfg, weights, dtype), build_tokenizer(reader)

    def rms_norm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        var = np.mean(x * x, axis=-1, keepdims=True)
        return x / np.sqrt(var + self.cfg.rms_norm_eps) * w

    def rope(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        freqs = positions.astype(np.float64)[:, None] * self.inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        return np.cos(emb).astype(self.dtype), np.sin(emb).astype(self.dtype)

    def forward(self, ids: list[int], cache: KVCache | None = None, logits_for: str = "all") -> np.ndarray:
        """Run `ids` after whatever `cache` holds; returns logits [T, vocab] (or [1, vocab] with
        logits_for="last", or the final hidden states with logits_for="none")."""
        cfg = self.cfg
        t = len(ids)
        past = cache.length if cache is not None else 0
        nh, nkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        group = nh // nkv
        x = self.embed[np.asarray(ids)]
        cos, sin = self.rope(np.arange(past, past + t))
        # causal mask over [t, past + t]
        mask = np.triu(np.full((t, past + t), -np.inf, dtype=self.dtype), k=past + 1)
        scale = 1.0 / math.sqrt(hd)
        for li, L in enumerate(self.layers):
            h = self.rms_norm(x, L["ln1"])
            qkv = h @ L["qkv_t"]
            q = qkv[:, : nh * hd].reshape(t, nh, hd).transpose(1, 0, 2)
            k = qkv[:, nh * hd : (nh + nkv) * hd].reshape(t, nkv, hd).transpose(1, 0, 2)
            v = qkv[:, (nh + nkv) * hd :].reshape(t, nkv, hd).transpose(1, 0, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if cache is not None:
                if cache.k[li] is not None:
                    k = np.concatenate([cache.k[li], k], axis=1)
                    v = np.concatenate([cache.v[li], v], axis=1)
                cache.k[li], cache.v[li] = k, v
            # GQA: query head j uses kv head j // group (HF repeat_kv order)
            qg = q.reshape(nkv, group * t, hd)
            scores = (qg @ k.transpose(0, 2, 1)).reshape(nkv, group, t, past + t) * scale + mask
            scores = scores - scores.max(axis=-1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(axis=-1, keepdims=True)
            attn = (p.reshape(nkv, group * t, past + t) @ v).reshape(nh, t, hd)
            x = x + attn.transpose(1, 0, 2).reshape(t, nh * hd) @ L["o_t"]
            h = self.rms_norm(x, L["ln2"])
            gu = h @ L["gate_up_t"]
            gate, up = gu[:, : cfg.intermediate_size], gu[:, cfg.intermediate_size :]
            act = gate / (1.0 + np.exp(-gate)) * up  # SiLU(gate) * up
            x = x + act @ L["down_t"]
        x = self.rms_norm(x, self.norm)
        if logits_for == "none":
            return x
        if logits_for == "last":
            x = x[-1:]
        return x @ self.lm_head_t

    def logits_from_hidden(self, hidden: np.ndarray) -> np.ndarray:
        return hidden @ self.lm_head_t

    def greedy(self, ids: list[int], max_new: int, stop_ids: set[int] | None = None) -> list[int]:
        cache = KVCache(self.cfg.num_layers)
        logits = self.forward(ids, cache, logits_for="last")
        out: list[int] = []
        for _ in range(max_new):
            nxt = int(np.argmax(logits[-1]))
            out.append(nxt)
            if stop_ids and nxt in stop_ids:
                break
            logits = self.forward([nxt], cache, logits_for="last")
        return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------------------------
# Goldens
# ----------------------------------------------------------------------------------------------

LOGIT_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "1 + 1 =",
    # special tokens through the model; 18 positions in all keeps the file under 4 MB
    "<|im_start|>user",
]

CHAT_PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"

LLAMA31_ROPE = dict(
    head_dim=128,
    theta=500000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8192,
)


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(path)


def golden_inv_freq() -> None:
    inv = llama3_inv_freq(**LLAMA31_ROPE)
    base = rope_inv_freq(LLAMA31_ROPE["head_dim"], LLAMA31_ROPE["theta"])
    write_json(
        GOLDEN_DIR / "llama3_inv_freq.json",
        {
            "description": "Llama 3.1 'llama3' rope scaling inv_freq as HF _compute_llama3_parameters, float64 "
            "(HF computes in float32: compare with rel tol ~1e-6). Produced by tools/reference/llama_numpy.py.",
            "config": {
                "rope_theta": LLAMA31_ROPE["theta"],
                "head_dim": LLAMA31_ROPE["head_dim"],
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": LLAMA31_ROPE["factor"],
                    "low_freq_factor": LLAMA31_ROPE["low_freq_factor"],
                    "high_freq_factor": LLAMA31_ROPE["high_freq_factor"],
                    "original_max_position_embeddings": LLAMA31_ROPE["original_max_position_embeddings"],
                },
            },
            "unscaled_inv_freq": [float(v) for v in base],
            "inv_freq": [float(v) for v in inv],
            "smollm2_inv_freq": [float(v) for v in rope_inv_freq(64, 100000.0)],
        },
    )


def golden_logits(model: LlamaModel, tok: Tokenizer) -> None:
    from safetensors.numpy import save_file

    tensors, meta = {}, []
    for i, prompt in enumerate(LOGIT_PROMPTS):
        ids = tok.encode(prompt).ids
        t0 = time.time()
        logits = model.forward(ids)
        # Also check that the KV-cache path gives the same logits one token at a time.
        cache = KVCache(model.cfg.num_layers)
        step = np.concatenate([model.forward([t], cache) for t in ids])
        diff = float(np.max(np.abs(step - logits)))
        assert diff < 1e-9, f"cached vs full forward differ by {diff}"
        name = f"logits_{i}"
        tensors[name] = logits.astype(np.float32)
        lp = log_softmax(logits)
        meta.append(
            {
                "name": name,
                "prompt": prompt,
                "token_ids": ids,
                "shape": list(logits.shape),
                "argmax": [int(a) for a in logits.argmax(-1)],
                "argmax_tokens": [tok.decode([int(a)], skip_special_tokens=False) for a in logits.argmax(-1)],
                "logsumexp": [float(v) for v in (logits - lp)[:, 0]],
            }
        )
        print(f"{prompt!r}: {len(ids)} tokens in {time.time() - t0:.1f}s, next {meta[-1]['argmax_tokens'][-1]!r}")
    tmp = GOLDEN_DIR / "smollm2_logits.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"producer": "tools/reference/llama_numpy.py"})
    os.chmod(tmp, 0o644)
    tmp.replace(GOLDEN_DIR / "smollm2_logits.safetensors")
    write_json(
        GOLDEN_DIR / "smollm2_logits.json",
        {
            "description": "SmolLM2-135M-Instruct Q4_1 GGUF: f32 logits at every position (float64 numpy forward, "
            "dequantised weights, rounded to f32 at the end). Tensors logits_<i> in smollm2_logits.safetensors.",
            "gguf": DEFAULT_GGUF,
            "precision": "float64 forward",
            "prompts": meta,
        },
    )


def golden_greedy(model: LlamaModel, tok: Tokenizer, max_new: int = 12) -> None:
    cases = []
    system_chat = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n" + CHAT_PROMPT
    )
    for label, prompt in [("chatml_no_system", CHAT_PROMPT), ("chat_template_default_system", system_chat)]:
        ids = tok.encode(prompt).ids
        t0 = time.time()
        out = model.greedy(ids, max_new)
        text = tok.decode(out, skip_special_tokens=False)
        print(f"{label}: {text!r} ({time.time() - t0:.1f}s)")
        cases.append(
            {
                "label": label,
                "prompt": prompt,
                "prompt_token_ids": ids,
                "max_new_tokens": max_new,
                "stop": "none (exactly max_new_tokens greedy steps, even past <|im_end|>)",
                "new_token_ids": out,
                "new_text": text,
            }
        )
    write_json(
        GOLDEN_DIR / "smollm2_greedy.json",
        {
            "description": "Greedy decoding (argmax, KV cache) with the float64 numpy reference of "
            "SmolLM2-135M-Instruct Q4_1. 'chatml_no_system' is the bare ChatML prompt; "
            "'chat_template_default_system' is what the GGUF chat template renders (it inserts a default system turn).",
            "gguf": DEFAULT_GGUF,
            "cases": cases,
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["golden", "generate", "tokenize"])
    ap.add_argument("text", nargs="?")
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--max-new", type=int, default=30)
    ap.add_argument("--dtype", choices=["f64", "f32"], default="f64")
    args = ap.parse_args()
    gguf_path = Path(args.gguf) if args.gguf else assets_dir() / DEFAULT_GGUF
    if not gguf_path.exists():
        sys.exit(f"{gguf_path} not found: run `cargo xtask assets` (or set TUNELOOP_ASSETS)")
    dtype = np.float64 if args.dtype == "f64" else np.float32
    if args.command == "tokenize":
        tok = build_tokenizer(GGUFReader(str(gguf_path)))
        enc = tok.encode(args.text or "")
        print(enc.ids, enc.tokens)
        return
    t0 = time.time()
    model, tok = LlamaModel.from_gguf(gguf_path, dtype)
    print(f"loaded in {time.time() - t0:.1f}s")
    if args.command == "generate":
        ids = tok.encode(args.text or CHAT_PROMPT).ids
        out = model.greedy(ids, args.max_new, stop_ids={2})
        print(repr(tok.decode(out, skip_special_tokens=False)))
        return
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    golden_inv_freq()
    golden_greedy(model, tok)
    golden_logits(model, tok)


if __name__ == "__main__":
    main()
