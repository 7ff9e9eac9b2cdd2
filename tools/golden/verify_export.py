"""Checks an HF directory written by `llama::convert_gguf_to_hf_dir` with Python tools that do not share our code:

1. `safetensors` (numpy) reads every tensor, and each equals the GGUF tensor dequantised by the `gguf` package
   with llama.cpp's Q/K permutation undone (exact float32 equality);
2. `transformers` opens the config (AutoConfig) and the tokenizer (AutoTokenizer, no torch needed): the ids of
   the golden strings and the chat-template render match fixtures/golden;
3. a plain-numpy Llama forward pass on the exported weights answers "What is the capital of France?" with
   Paris, greedy -- which only works if names, layouts and the Q/K un-permutation are right.

transformers' model classes need torch, which this machine does not have; the numpy forward pass stands in.
Usage (repository root):  python3 tools/golden/verify_export.py <exported dir>
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).parent))
from gguf_golden import hf_name, unpermute  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ASSETS = Path(os.environ.get("TUNELOOP_ASSETS", ROOT / "assets"))
GGUF = ASSETS / "smollm2-135m-instruct.Q4_1.gguf"


def check_weights(out: Path):
    weights = load_file(str(out / "model.safetensors"))
    reader = GGUFReader(str(GGUF))
    field = lambda key: int(reader.fields[key].parts[reader.fields[key].data[0]][0])
    heads = {"attn_q": field("llama.attention.head_count"), "attn_k": field("llama.attention.head_count_kv")}
    assert len(weights) == len(reader.tensors), (len(weights), len(reader.tensors))
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape.tolist())]
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        kind = t.name.split(".")[2] if t.name.startswith("blk.") else ""
        if kind in heads:
            w = unpermute(w, heads[kind])
        exported = weights[hf_name(t.name)]
        assert exported.dtype == np.float32 and exported.shape == w.shape, t.name
        assert np.array_equal(exported, w), f"{t.name} differs"
    print(f"weights: {len(weights)} tensors equal to gguf-py's dequantisation")
    return weights


def check_tokenizer_and_config(out: Path):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(str(out))
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", 576, 30)
    assert (config.num_attention_heads, config.num_key_value_heads, config.tie_word_embeddings) == (9, 3, True)
    theta = config.rope_parameters["rope_theta"] if hasattr(config, "rope_parameters") else config.rope_theta
    assert (theta, config.rms_norm_eps, config.max_position_embeddings) == (100000.0, 1e-5, 8192)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    golden = json.loads((ROOT / "fixtures/golden/smollm2_tokenizer.json").read_text())
    for case in golden["cases"]:
        ids = tokenizer(case["text"])["input_ids"]
        assert ids == case["ids"], (case["text"], ids, case["ids"])
        assert tokenizer.decode(ids) == case["text"]
    renders = json.loads((ROOT / "fixtures/golden/chat_templates.json").read_text())
    for case in renders:
        if case["template"] == "smollm2-chatml":
            text = tokenizer.apply_chat_template(case["messages"], tokenize=False,
                                                 add_generation_prompt=case["add_generation_prompt"])
            assert text == case["expected"], case["label"]
    assert tokenizer.eos_token_id == 2 and tokenizer.pad_token_id == 2
    print(f"transformers {type(tokenizer).__name__}: {len(golden['cases'])} golden encodings and the chat template match")
    return config, tokenizer


def greedy_answer(weights, config, tokenizer, question, max_new_tokens=12):
    """A from-scratch numpy Llama (HF conventions: rotate_half RoPE, GQA, RMSNorm, SwiGLU), no KV cache."""
    n_head, n_kv, layers = config.num_attention_heads, config.num_key_value_heads, config.num_hidden_layers
    head_dim = config.hidden_size // n_head
    # transformers 5 keeps rope_theta under rope_parameters; 4.x as an attribute.
    theta = config.rope_parameters["rope_theta"] if hasattr(config, "rope_parameters") else config.rope_theta
    eps = config.rms_norm_eps
    W = weights
    embed = W["model.embed_tokens.weight"]

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(x, pos):  # x: [heads, seq, head_dim]
        inv = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
        freqs = np.outer(pos, inv)
        emb = np.concatenate([freqs, freqs], -1)
        cos, sin = np.cos(emb), np.sin(emb)
        x1, x2 = x[..., : head_dim // 2], x[..., head_dim // 2 :]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    def forward(ids):
        x = embed[ids].astype(np.float64)
        seq = len(ids)
        pos = np.arange(seq)
        mask = np.triu(np.full((seq, seq), -np.inf), 1)
        for i in range(layers):
            p = f"model.layers.{i}."
            h = rms(x, W[p + "input_layernorm.weight"])
            q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(seq, n_head, head_dim).transpose(1, 0, 2)
            k = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(seq, n_kv, head_dim).transpose(1, 0, 2)
            v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(seq, n_kv, head_dim).transpose(1, 0, 2)
            q, k = rope(q, pos), rope(k, pos)
            k, v = np.repeat(k, n_head // n_kv, 0), np.repeat(v, n_head // n_kv, 0)
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(head_dim) + mask
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = (scores / scores.sum(-1, keepdims=True)) @ v
            x = x + attn.transpose(1, 0, 2).reshape(seq, -1) @ W[p + "self_attn.o_proj.weight"].T
            h = rms(x, W[p + "post_attention_layernorm.weight"])
            gate, up = h @ W[p + "mlp.gate_proj.weight"].T, h @ W[p + "mlp.up_proj.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ W[p + "mlp.down_proj.weight"].T
        return rms(x[-1], W["model.norm.weight"]) @ embed.T

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt)["input_ids"]
    new = []
    for _ in range(max_new_tokens):
        next_id = int(np.argmax(forward(ids + new)))
        if next_id == tokenizer.eos_token_id:
            break
        new.append(next_id)
    return tokenizer.decode(new)


def main():
    out = Path(sys.argv[1])
    weights = check_weights(out)
    config, tokenizer = check_tokenizer_and_config(out)
    answer = greedy_answer(weights, config, tokenizer, "What is the capital of France?")
    print(f"numpy forward, greedy: {answer!r}")
    assert "Paris" in answer, answer
    print("OK")


if __name__ == "__main__":
    main()
