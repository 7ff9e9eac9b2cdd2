#!/usr/bin/env bash
# Rust (burn) vs sentence-transformers on the GPU machine, which has PyTorch + sentence-transformers
# but no Rust and receives at most 64 MiB per run. Run from a payload folder holding:
#   minilm/                  all-MiniLM-L6-v2 without model.safetensors, plus model.f16.safetensors
#                            (weights as f16 to fit the 64 MiB; widened back to f32 here, so both
#                            sides use the same, rounded, weights)
#   pool/                    the first 400 lines of each assets/data/pool file (enough for 2,000 texts)
#   throughput               crates/embeddings/examples/throughput, stripped (built with --features tch
#                            for the GPU part; see PLATFORM.md for the LibTorch recipe)
#   minilm_sentence_transformers.py
# Usage: bash minilm_gpu_host.sh [cpu|gpu|both]
set -euo pipefail
what=${1:-both}
python3 - <<'PY'
import numpy as np
from safetensors.numpy import load_file, save_file
t = load_file("minilm/model.f16.safetensors")
save_file({k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in t.items()},
          "minilm/model.safetensors", metadata={"format": "pt"})
PY
lscpu | grep -E "Model name|^CPU\(s\)" || true
if [[ $what == cpu || $what == both ]]; then
  echo "== Rust flex CPU, 2 threads"
  RAYON_NUM_THREADS=2 ./throughput --model-dir minilm --pool-dir pool --sentences 2000 \
    --batch-sizes 16,32,64 --repeats 2 --dump-sentences sentences.json --dump-embeddings rust_cpu.f32
  echo "== sentence-transformers CPU, 2 threads"
  python3 minilm_sentence_transformers.py --model-dir minilm --sentences sentences.json \
    --rust-embeddings rust_cpu.f32 --threads 2 --repeats 2
fi
if [[ $what == gpu || $what == both ]]; then
  export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
  echo "== Rust tch GPU"
  ./throughput --device cuda --model-dir minilm --pool-dir pool --sentences 2000 \
    --batch-sizes 32,64,128,256 --repeats 2 --dump-sentences sentences.json --dump-embeddings rust_gpu.f32 --compare-cpu
  echo "== sentence-transformers GPU"
  python3 minilm_sentence_transformers.py --model-dir minilm --sentences sentences.json \
    --rust-embeddings rust_gpu.f32 --device cuda --batch-sizes 32,64,128,256 --repeats 2
fi
