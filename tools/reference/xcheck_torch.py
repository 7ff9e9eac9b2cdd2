#!/usr/bin/env python3
"""Cross-check the numpy references' goldens against HF transformers / sentence-transformers (torch).

Needs torch, transformers (>= 5, with its GGUF loader and the `gguf` package) and
sentence-transformers, which the build machine lacks; it was run on a lent GPU machine, on CPU in
float64 (the models are tiny). It reads:
  --gguf     the SmolLM2 Q4_1 GGUF      (transformers dequantises and un-permutes Q/K itself)
  --minilm   the all-MiniLM-L6-v2 folder
  --golden   fixtures/golden
and prints max differences; it exits non-zero if a check fails its tolerance.

HF's Llama keeps float32 islands even in a .double() model (LlamaRMSNorm casts to float32; the
rotary inv_freq, angles and cos/sin are float32), so its logits differ from the pure-float64
reference by ~1e-5 (log-likelihoods by ~3e-6); the tolerances allow for that.

    python tools/reference/xcheck_torch.py --gguf assets/smollm2-135m-instruct.Q4_1.gguf \
        --minilm assets/all-minilm-l6-v2 --golden fixtures/golden
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

failures = []


def check(name, value, tol):
    ok = value <= tol
    print(f"{'OK ' if ok else 'BAD'} {name}: {value:.3e} (tol {tol:.0e})", flush=True)
    if not ok:
        failures.append(name)


def llama(gguf: Path, golden: Path, mmlu_items: int):
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    ).double()
    model.eval()
    emb = model.get_input_embeddings().weight
    print("tied lm_head:", model.lm_head.weight.data_ptr() == emb.data_ptr() or bool(torch.equal(model.lm_head.weight, emb)))
    print("config:", {k: getattr(model.config, k, None) for k in ("rms_norm_eps", "rope_theta", "rope_parameters", "num_key_value_heads")})

    meta = json.loads((golden / "smollm2_logits.json").read_text())
    ref = load_file(str(golden / "smollm2_logits.safetensors"))
    with torch.no_grad():
        for p in meta["prompts"]:
            ids = torch.tensor([p["token_ids"]])
            hf = model(ids).logits[0].numpy()
            ours = ref[p["name"]].astype(np.float64)
            check(f"logits {p['prompt']!r} max|diff|", float(np.abs(hf - ours).max()), 1e-3)
            check(f"logits {p['prompt']!r} argmax equal", float((hf.argmax(-1) != ours.argmax(-1)).sum()), 0)

        greedy = json.loads((golden / "smollm2_greedy.json").read_text())
        for case in greedy["cases"]:
            ids = list(case["prompt_token_ids"])
            out = []
            for _ in range(case["max_new_tokens"]):  # plain argmax loop: no EOS stop, no logits processors
                nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
                out.append(nxt)
            print("greedy", case["label"], out)
            check(f"greedy {case['label']} token mismatches", float(sum(a != b for a, b in zip(out, case["new_token_ids"]))), 0)

        mmlu_path = golden / "mmlu_loglik_smollm2.jsonl"
        if mmlu_path.exists() and mmlu_items:
            worst = 0.0
            lines = mmlu_path.read_text().splitlines()[:mmlu_items]
            for line in lines:
                r = json.loads(line)
                ctx = r["context_token_ids"]
                lls = []
                for cont in r["continuation_token_ids"]:
                    ids = torch.tensor([ctx + cont])
                    lp = torch.log_softmax(model(ids).logits[0], -1)
                    lls.append(sum(float(lp[len(ctx) - 1 + j, cont[j]]) for j in range(len(cont))))
                worst = max(worst, max(abs(a - b) for a, b in zip(lls, r["loglik"])))
            check(f"mmlu loglik first {len(lines)} items max|diff|", worst, 1e-5)

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        for p in meta["prompts"]:
            theirs = tok(p["prompt"], add_special_tokens=False)["input_ids"]
            print("transformers GGUF tokenizer", repr(p["prompt"]), "same ids" if theirs == p["token_ids"] else f"DIFFERENT {theirs}")
    except Exception as e:  # informational only
        print("transformers GGUF tokenizer failed:", repr(e)[:300])


def llama3_rope(golden: Path):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    g = json.loads((golden / "llama3_inv_freq.json").read_text())
    c = g["config"]
    rope = dict(c["rope_scaling"], rope_theta=c["rope_theta"])
    cfg = LlamaConfig(
        hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=c["head_dim"],
        rope_parameters=rope, rope_scaling=rope, rope_theta=c["rope_theta"], max_position_embeddings=131072,
    )
    inv, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    rel = float(np.max(np.abs(inv.double().numpy() - np.array(g["inv_freq"])) / np.array(g["inv_freq"])))
    check("llama3 inv_freq (HF float32) max rel diff", rel, 1e-6)


def minilm(directory: Path, golden: Path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    g = json.loads((golden / "minilm_embeddings.json").read_text())
    texts = [s["text"] for s in g["sentences"]]
    ours = np.array([s["embedding"] for s in g["sentences"]])
    st = SentenceTransformer(str(directory), device="cpu")
    print("sentence-transformers max_seq_length", st.max_seq_length)
    st_ids = [st.tokenize([t])["input_ids"][0].tolist() for t in texts]
    mism = sum(a != s["token_ids"] for a, s in zip(st_ids, g["sentences"]))
    check("minilm token id lists differing from sentence-transformers", float(mism), 0)
    emb = st.encode(texts, batch_size=8, convert_to_numpy=True, normalize_embeddings=False)
    check("minilm sentence-transformers (f32) max|diff|", float(np.abs(emb - ours).max()), 2e-6)
    cos = (emb * ours).sum(-1) / np.linalg.norm(emb, axis=-1) / np.linalg.norm(ours, axis=-1)
    check("minilm sentence-transformers 1 - min cos", float(1 - cos.min()), 1e-7)

    bert = AutoModel.from_pretrained(str(directory), attn_implementation="eager").double().eval()
    worst = 0.0
    with torch.no_grad():
        for s, e in zip(g["sentences"], ours):
            ids = torch.tensor([s["token_ids"]])
            h = bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0].mean(0)
            h = (h / h.norm()).numpy()
            worst = max(worst, float(np.max(np.abs(h - e) / np.maximum(np.abs(e), 1e-3))))
    check("minilm HF BertModel f64 max rel diff (7 sig. digits stored)", worst, 1e-5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("--minilm", type=Path)
    ap.add_argument("--golden", type=Path, required=True)
    ap.add_argument("--mmlu-items", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(8)
    for name, fn in [
        ("llama3_rope", lambda: llama3_rope(a.golden)),
        ("minilm", lambda: a.minilm and minilm(a.minilm, a.golden)),
        ("llama", lambda: a.gguf and llama(a.gguf, a.golden, a.mmlu_items)),
    ]:
        try:
            fn()
        except Exception as e:
            import traceback

            traceback.print_exc()
            failures.append(f"{name} crashed: {e!r}"[:200])
    print("FAILURES:", failures if failures else "none")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
