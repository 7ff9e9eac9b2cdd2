"""Writes a float16 copy of a model directory's model.safetensors (other files copied as they are).

A GPU host in this project receives at most 64 MiB per run; all-MiniLM-L6-v2 in f32 is 87 MiB,
its f16 copy 44 MiB. CPU and GPU then load the same f16 numbers, so the parity check compares
the arithmetic, not the rounding.

    python3 tools/bench/f16_copy.py assets/all-minilm-l6-v2 OUT_DIR
"""

import os
import shutil
import sys

import numpy as np
from safetensors.numpy import load_file, save_file


def main():
    source, target = sys.argv[1], sys.argv[2]
    os.makedirs(target, exist_ok=True)
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        if os.path.exists(os.path.join(source, name)):
            shutil.copy(os.path.join(source, name), os.path.join(target, name))
    pooling = os.path.join(source, "1_Pooling")
    if os.path.isdir(pooling):
        shutil.copytree(pooling, os.path.join(target, "1_Pooling"), dirs_exist_ok=True)
    tensors = load_file(os.path.join(source, "model.safetensors"))
    half = {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in tensors.items()}
    temp = os.path.join(target, "model.safetensors.tmp")
    save_file(half, temp)
    os.replace(temp, os.path.join(target, "model.safetensors"))
    worst = max(float(np.abs(half[k].astype(np.float32) - v).max()) for k, v in tensors.items()
                if v.dtype == np.float32)
    print(f"{len(half)} tensors, largest rounding error {worst:.2e}")


if __name__ == "__main__":
    main()
