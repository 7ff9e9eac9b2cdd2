#!/usr/bin/env python3
"""sentence-transformers throughput on the sentences the Rust bench used, for comparison.

    RAYON_NUM_THREADS=2 cargo run -p embeddings --example throughput -- \
        --dump-sentences /tmp/sentences.json --dump-embeddings /tmp/rust.f32
    python tools/bench/minilm_sentence_transformers.py --model-dir assets/all-minilm-l6-v2 \
        --sentences /tmp/sentences.json --rust-embeddings /tmp/rust.f32 [--threads 2] [--device cpu|cuda]

Prints sentences/s per batch size (encode() end to end: tokenise, forward, pool, normalise, to
numpy) and, with --rust-embeddings, the worst cosine between the two implementations.
tools/bench/minilm_gpu_host.sh runs both on the GPU machine's CPU (and GPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--sentences", type=Path, required=True)
    parser.add_argument("--rust-embeddings", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="16,32,64")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    sentences = json.loads(args.sentences.read_text())
    model = SentenceTransformer(str(args.model_dir), device=args.device)
    print(
        f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
        f"max_seq_length {model.max_seq_length}, {len(sentences)} sentences"
    )
    model.encode(sentences[:64], batch_size=32)  # warm-up
    kept = None
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        for repeat in range(args.repeats):
            start = time.perf_counter()
            out = model.encode(sentences, batch_size=batch_size, convert_to_numpy=True)
            seconds = time.perf_counter() - start
            print(f"batch {batch_size:>3} run {repeat}: {seconds:.2f}s, {len(sentences) / seconds:.1f} sentences/s")
            if batch_size == 32 or kept is None:
                kept = out
    if args.rust_embeddings:
        rust = np.fromfile(args.rust_embeddings, dtype="<f4").reshape(kept.shape)
        cos = (rust * kept).sum(1) / (np.linalg.norm(rust, axis=1) * np.linalg.norm(kept, axis=1))
        print(f"rust vs sentence-transformers: worst cosine {cos.min():.7f}, "
              f"max abs diff {np.abs(rust - kept).max():.2e}")


if __name__ == "__main__":
    main()
