#!/usr/bin/env python3
"""Reference MMLU 5-shot log-likelihood scorer over the numpy Llama in llama_numpy.py.

Follows lm-evaluation-harness's `mmlu` (default) task, written from its task YAML and
`TemplateLM._encode_pair`, not from tuneloop's Rust code:
  * few-shot examples: the first 5 dev items of the same subject, in stored order (sampler first_n);
  * prompt = description + shots + query, where
      description = "The following are multiple choice questions (with answers) about {subject}.\\n\\n"
                    (subject with "_" -> " "),
      shot        = "{question.strip()}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer: {letter}\\n\\n",
      query       = "{question.strip()}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer:";
  * continuations " A", " B", " C", " D" (target_delimiter " ");
  * `_encode_pair`: trailing whitespace of the context moves to the continuation, then
    whole = encode(context + continuation), context_enc = encode(context),
    continuation_enc = whole[len(context_enc):]; the model sees context_enc + continuation_enc
    (no BOS: SmolLM2 adds none and lm-eval's HFLM adds none by default);
  * loglik = sum of log-softmax of the continuation tokens; predicted = argmax loglik
    (lm-eval's `acc`).

Contexts of consecutive items share the description and shots, so the KV cache of the longest
common token prefix with the previous item is reused (exact for a causal model); the four
continuations each run on a copy of the context's cache.

    python tools/reference/mmlu_reference.py [--n 120] [--dtype f64] [--out fixtures/golden/mmlu_loglik_smollm2.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_numpy import DEFAULT_GGUF, GOLDEN_DIR, KVCache, LlamaModel, assets_dir, log_softmax  # noqa: E402

LETTERS = ["A", "B", "C", "D"]
SHOTS = 5


def format_question(doc: dict) -> str:
    c = doc["choices"]
    return f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def build_context(doc: dict, dev_by_subject: dict[str, list[dict]]) -> str:
    subject = doc["subject"]
    shots = dev_by_subject[subject][:SHOTS]
    if len(shots) < SHOTS:
        raise ValueError(f"subject {subject!r} has {len(shots)} dev items, need {SHOTS}")
    text = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    for s in shots:
        text += format_question(s) + " " + LETTERS[s["answer"]] + "\n\n"
    return text + format_question(doc)


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok.encode(context + continuation).ids
    context_enc = tok.encode(context).ids
    return context_enc, whole[len(context_enc) :]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--dtype", choices=["f64", "f32"], default="f64")
    ap.add_argument("--out", default=str(GOLDEN_DIR / "mmlu_loglik_smollm2.jsonl"))
    args = ap.parse_args()
    data = assets_dir() / "data" / "mmlu"
    gguf = assets_dir() / DEFAULT_GGUF
    for p in (data / "test.jsonl", data / "dev.jsonl", gguf):
        if not p.exists():
            sys.exit(f"{p} not found: run `cargo xtask assets` (or set TUNELOOP_ASSETS)")
    test = [json.loads(line) for line in (data / "test.jsonl").open()][: args.n]
    dev_by_subject: dict[str, list[dict]] = defaultdict(list)
    for line in (data / "dev.jsonl").open():
        d = json.loads(line)
        dev_by_subject[d["subject"]].append(d)

    dtype = np.float64 if args.dtype == "f64" else np.float32
    model, tok = LlamaModel.from_gguf(gguf, dtype)
    cache = KVCache(model.cfg.num_layers)
    cached_ids: list[int] = []
    out_path = Path(args.out)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    t_start = time.time()
    correct = 0
    with tmp.open("w") as f:
        for index, doc in enumerate(test):
            t0 = time.time()
            context = build_context(doc, dev_by_subject)
            pairs = [encode_pair(tok, context, " " + letter) for letter in LETTERS]
            ctx_ids = pairs[0][0]
            # Reuse the cached prefix; always recompute at least the last context token for its logits.
            keep = min(common_prefix(cached_ids, ctx_ids), len(ctx_ids) - 1)
            cache.truncate(keep)
            hidden = model.forward(ctx_ids[keep:], cache, logits_for="none")
            cached_ids = list(ctx_ids)
            last_lp = log_softmax(model.logits_from_hidden(hidden[-1:]))[0]
            logliks, cont_ids = [], []
            for c_ids, cont in pairs:
                if c_ids != ctx_ids:
                    raise AssertionError("context encodings differ between continuations")
                ll = float(last_lp[cont[0]])
                if len(cont) > 1:
                    lp = log_softmax(model.forward(cont[:-1], cache.clone()))
                    ll += float(sum(lp[j, cont[j + 1]] for j in range(len(cont) - 1)))
                logliks.append(ll)
                cont_ids.append(cont)
            predicted = int(np.argmax(logliks))
            correct += predicted == doc["answer"]
            rec = {
                "index": index,
                "subject": doc["subject"],
                "prompt_token_count": len(ctx_ids),
                "loglik": logliks,
                "predicted": predicted,
                "answer": doc["answer"],
                "continuation_token_ids": cont_ids,
                "context_token_ids": ctx_ids,
            }
            f.write(json.dumps(rec) + "\n")
            f.flush()
            print(
                f"{index}: ctx {len(ctx_ids)} (reused {keep}) pred {predicted} ans {doc['answer']} "
                f"acc {correct / (index + 1):.3f} {time.time() - t0:.1f}s",
                flush=True,
            )
    tmp.replace(out_path)
    print(f"done: {len(test)} items, acc {correct / len(test):.4f}, {time.time() - t_start:.0f}s, precision {args.dtype}")


if __name__ == "__main__":
    main()
