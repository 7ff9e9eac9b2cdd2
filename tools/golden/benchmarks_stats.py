"""Reference values for crates/benchmarks/src/stats.rs.

Writes crates/benchmarks/tests/golden/stats.json:
  - mean (numpy), standard error (numpy std ddof=1 / sqrt(n)), and the percentile-bootstrap 95% CI
    using SplitMix64 indices (index = (next * n) >> 64) and numpy.percentile (linear);
  - pass@k from the HumanEval paper's numpy estimator, cross-checked against exact binomials.

Run from the repository root: python3 tools/golden/benchmarks_stats.py
"""
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np

MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        return (self.next() * n) >> 64


def bootstrap_ci95(values, resamples, seed):
    rng = SplitMix64(seed)
    n = len(values)
    means = []
    for _ in range(resamples):
        total = 0.0
        for _ in range(n):
            total += values[rng.below(n)]  # sequential sum, as the Rust code does
        means.append(total / n)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def pass_at_k_numpy(n, c, k):
    # From openai/human-eval, human_eval/evaluation.py (estimate_pass_at_k).
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_exact(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def main():
    rng = np.random.default_rng(20261125)
    cases = []
    inputs = {
        "binary_50": rng.integers(0, 2, size=50).astype(float).tolist(),
        "binary_7": [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0],
        "continuous_200": rng.random(200).tolist(),
        "pass_rates_31": (rng.integers(0, 11, size=31) / 10).tolist(),
    }
    for seed in [0, 17]:
        for name, values in inputs.items():
            arr = np.asarray(values)
            cases.append({
                "name": name,
                "seed": seed,
                "resamples": 1000,
                "values": values,
                "mean": float(np.mean(arr)),
                "stderr": float(np.std(arr, ddof=1) / math.sqrt(len(arr))),
                "ci95": bootstrap_ci95(values, 1000, seed),
            })
    pass_cases = []
    for n, c, k in [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (20, 0, 10), (20, 1, 10),
                    (200, 13, 1), (200, 13, 10), (200, 13, 100), (200, 199, 100), (5, 5, 5)]:
        value = pass_at_k_numpy(n, c, k)
        assert abs(value - float(pass_at_k_exact(n, c, k))) < 1e-12, (n, c, k)
        pass_cases.append({"n": n, "c": c, "k": k, "pass_at_k": value})
    out = Path("crates/benchmarks/tests/golden/stats.json")
    out.write_text(json.dumps({"summaries": cases, "pass_at_k": pass_cases}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
