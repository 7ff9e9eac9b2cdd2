"""scikit-learn KMeans timings for the clustering bench (crates/clustering/benches/kmeans.rs).

Prints one JSON object per (k, n_init): {"k", "n_init", "time_s", "n_iter", "inertia",
"inertia_se"} where time_s is the best of --repeat fits (seeds seed..seed+repeat), n_iter and
inertia their mean, inertia_se the standard error of that mean (0 for one repeat).
Parameters match our KMeans: lloyd, k-means++ init, max_iter=300, tol=1e-4 (relative to mean feature variance).

Usage: python3 tools/bench/kmeans_sklearn.py DATA.npy --k 10 --n-init 1 10 [--repeat 1] [--seed 0]
"""
import argparse
import json
import time

import numpy as np
import sklearn
from sklearn.cluster import KMeans


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--k", type=int, nargs="+", default=[10])
    parser.add_argument("--n-init", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x = np.load(args.data)
    assert x.dtype == np.float32 and x.ndim == 2, (x.dtype, x.shape)
    for k in args.k:
        for n_init in args.n_init:
            best = None
            inertias, iters = [], []
            for repeat in range(args.repeat):
                model = KMeans(n_clusters=k, n_init=n_init, max_iter=300, tol=1e-4,
                               algorithm="lloyd", random_state=args.seed + repeat)
                start = time.perf_counter()
                model.fit(x)
                elapsed = time.perf_counter() - start
                inertias.append(float(model.inertia_))
                iters.append(int(model.n_iter_))
                if best is None or elapsed < best["time_s"]:
                    best = {"k": k, "n_init": n_init, "time_s": elapsed,
                            "n_iter": int(model.n_iter_), "inertia": float(model.inertia_),
                            "sklearn": sklearn.__version__}
            # Best time; mean inertia and iterations over the repeats (seeds seed..seed+repeat).
            best["inertia"] = float(np.mean(inertias))
            best["inertia_se"] = (float(np.std(inertias, ddof=1) / np.sqrt(len(inertias)))
                                  if len(inertias) > 1 else 0.0)
            best["n_iter"] = sum(iters) // len(iters)
            print(json.dumps(best), flush=True)


if __name__ == "__main__":
    main()
