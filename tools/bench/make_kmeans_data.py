"""Writes KMeans benchmark inputs as .npy float32 (n, d) files (outside the repo, e.g. /tmp).

blobs:       scikit-learn make_blobs, 10 isotropic blobs (easy: Lloyd converges in ~2 iterations).
sphere:      embeddings-like data: a mixture of many anisotropic gaussians on the unit sphere,
             sharing a common offset direction (sentence embeddings are not centred), with
             Dirichlet-distributed component sizes; every row is L2-normalised.

Usage: python3 tools/bench/make_kmeans_data.py OUT_DIR [--n 50000] [--d 384]
"""
import argparse
import os

import numpy as np
from sklearn.datasets import make_blobs


def sphere_mixture(n, d, components, rng):
    shared = rng.normal(size=d)
    shared /= np.linalg.norm(shared)
    weights = rng.dirichlet(np.full(components, 2.0))
    counts = rng.multinomial(n, weights)
    rows = []
    for count in counts:
        mean = rng.normal(size=d)
        mean /= np.linalg.norm(mean)
        mean = 0.6 * shared + mean
        mean /= np.linalg.norm(mean)
        rank = 24
        # Anisotropic: a few strong directions with decaying scale, plus isotropic noise.
        factors = rng.normal(size=(d, rank)) / np.sqrt(d)
        scales = 0.45 * np.exp(-np.arange(rank) / 6.0)
        z = rng.normal(size=(count, rank)) * scales
        noise = rng.normal(size=(count, d)) * (0.35 / np.sqrt(d))
        x = mean + z @ factors.T + noise
        rows.append(x)
    x = np.concatenate(rows)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = x[rng.permutation(len(x))]
    return x.astype(np.float32)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--d", type=int, default=384)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    blobs, _ = make_blobs(n_samples=args.n, n_features=args.d, centers=10, random_state=0)
    np.save(os.path.join(args.out_dir, f"blobs_{args.n}x{args.d}.npy"), blobs.astype(np.float32))
    rng = np.random.default_rng(0)
    sphere = sphere_mixture(args.n, args.d, components=60, rng=rng)
    np.save(os.path.join(args.out_dir, f"sphere_{args.n}x{args.d}.npy"), sphere)


if __name__ == "__main__":
    main()
