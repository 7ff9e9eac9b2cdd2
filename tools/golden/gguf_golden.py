"""Golden data for the GGUF reader (crates/llama/src/gguf.rs), made with the `gguf` Python package
(llama.cpp's own reader and numpy dequantisers), independent of our Rust code.

1. fixtures/gguf/quant_types.gguf: a small synthetic GGUF (alignment 64) holding one tensor per type we
   dequantise (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) made of random blocks, and
   fixtures/golden/quant_types.json: every dequantised value of each.
2. fixtures/golden/smollm2_tensors.json: for a few tensors of the real SmolLM2 GGUF, the HF name, HF shape,
   sums and sample values after dequantisation and after undoing llama.cpp's Q/K permutation.

Run from the repository root:  pip install gguf numpy && python3 tools/golden/gguf_golden.py
"""

import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFReader, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

ROOT = Path(__file__).resolve().parents[2]
ASSETS = Path(__import__("os").environ.get("TUNELOOP_ASSETS", ROOT / "assets"))
GGUF = ASSETS / "smollm2-135m-instruct.Q4_1.gguf"

# Byte offsets of the f16 scale fields inside one block, per type: random bytes there could be NaN/inf.
F16_FIELDS = {Q.Q8_0: [0], Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q4_K: [0, 2], Q.Q6_K: [208]}


def random_blocks(rng, qtype, n_elements):
    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = n_elements // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for at in F16_FIELDS[qtype]:
        scales = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        raw[:, at : at + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw


def make_quant_fixture():
    rng = np.random.default_rng(20261125)
    rows, cols = 3, 512  # HF shape [3, 512]; GGUF dims (512, 3); a multiple of 256 per row for K-quants
    path = ROOT / "fixtures/gguf/quant_types.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_custom_alignment(64)
    writer.add_string("test.note", "synthetic: random blocks of each type")
    tensors = {}
    floats = rng.standard_normal((rows, cols)).astype(np.float32)
    tensors["f32"] = (floats, None)
    tensors["f16"] = (floats.astype(np.float16), None)
    bf16_bits = (floats.view(np.uint32) >> 16).astype(np.uint16)
    tensors["bf16"] = (bf16_bits.view(np.uint8).reshape(rows, cols * 2), Q.BF16)
    for name, qtype in [("q8_0", Q.Q8_0), ("q4_0", Q.Q4_0), ("q4_1", Q.Q4_1), ("q4_k", Q.Q4_K), ("q6_k", Q.Q6_K)]:
        raw = random_blocks(rng, qtype, rows * cols).reshape(rows, -1)
        tensors[name] = (raw, qtype)
    for name, (data, qtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    reader = GGUFReader(str(path))
    golden = {}
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        golden[t.name] = {
            "type": t.tensor_type.name,
            "shape": [int(d) for d in reversed(t.shape.tolist())],
            "values": [float(v) for v in values],
        }
    out = ROOT / "fixtures/golden/quant_types.json"
    out.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes) and {out}")


def hf_name(name):
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, layer, rest = name.split(".", 2)
    rest = {"attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
            "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
            "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
            "ffn_down.weight": "mlp.down_proj.weight", "attn_norm.weight": "input_layernorm.weight",
            "ffn_norm.weight": "post_attention_layernorm.weight"}[rest]
    return f"model.layers.{layer}.{rest}"


def llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py's permute (HF -> GGUF), to check our inverse against."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def real_model_golden():
    if not GGUF.exists():
        sys.exit(f"{GGUF} missing: run `cargo xtask assets`")
    reader = GGUFReader(str(GGUF))
    field = lambda key: reader.fields[key].parts[reader.fields[key].data[0]][0]
    n_head, n_head_kv = int(field("llama.attention.head_count")), int(field("llama.attention.head_count_kv"))
    wanted = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight",
              "blk.7.ffn_down.weight", "blk.29.attn_output.weight", "blk.3.ffn_norm.weight", "output_norm.weight"]
    rng = np.random.default_rng(7)
    golden = []
    for t in reader.tensors:
        if t.name not in wanted:
            continue
        shape = [int(d) for d in reversed(t.shape.tolist())]
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        if t.name.endswith("attn_q.weight") or t.name.endswith("attn_k.weight"):
            heads = n_head if "attn_q" in t.name else n_head_kv
            hf = unpermute(w, heads)
            assert np.array_equal(llama_cpp_permute(hf, heads), w), "inverse permute is not an inverse"
            w = hf
        positions = [tuple(int(rng.integers(0, d)) for d in shape) for _ in range(16)]
        golden.append({
            "gguf_name": t.name,
            "hf_name": hf_name(t.name),
            "type": t.tensor_type.name,
            "shape": shape,
            "sum": float(w.astype(np.float64).sum()),
            "abs_sum": float(np.abs(w.astype(np.float64)).sum()),
            # Row sums pin the row order, which is what the Q/K un-permutation changes.
            "first_row_sums": [float(v) for v in w.reshape(shape[0], -1)[:8].astype(np.float64).sum(axis=1)],
            "samples": [{"index": list(p), "value": float(w[p])} for p in positions],
        })
    out = ROOT / "fixtures/golden/smollm2_tensors.json"
    out.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    make_quant_fixture()
    real_model_golden()
