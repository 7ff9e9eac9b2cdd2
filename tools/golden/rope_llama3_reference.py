"""Reference inverse frequencies for Llama-3.1-8B's "llama3" RoPE scaling.

Independent numpy port of HF transformers' `_compute_default_rope_parameters` +
`_compute_llama3_parameters` (vectorised with np.where as HF does with torch.where),
in float64. Prints the constants pasted into crates/llama/src/rope.rs's tests.

Run: python3 tools/golden/rope_llama3_reference.py
"""
import numpy as np

head_dim, base = 128, 500_000.0
factor, low_freq_factor, high_freq_factor, old_context_len = 8.0, 1.0, 4.0, 8192

inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float64) / head_dim))
low_freq_wavelen = old_context_len / low_freq_factor
high_freq_wavelen = old_context_len / high_freq_factor
wavelen = 2 * np.pi / inv_freq
inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
inv_freq_llama = np.where(is_medium, smoothed, inv_freq_llama)

# indices: high-frequency (unscaled), the medium band, and low-frequency (divided by factor)
print("medium band:", np.nonzero(is_medium)[0].tolist())
for i in [0, 1, 20, 30, 31, 32, 34, 35, 36, 63]:
    band = "medium" if is_medium[i] else ("low (scaled)" if wavelen[i] > low_freq_wavelen else "high (kept)")
    print(f"({i}, {float(inv_freq_llama[i])!r}), // {band}")
