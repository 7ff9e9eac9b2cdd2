//! Rotary position embeddings as HF transformers computes them for Llama:
//! inverse frequencies (with optional `linear` or Llama 3.1 `llama3` scaling) and the
//! rotate-half application `x·cos + rotate_half(x)·sin`.

use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};

use crate::config::LlamaConfig;
use crate::{Error, Result};

/// Inverse frequencies of the rotary embedding, one per pair of head dimensions.
///
/// Computed in f64 and rounded once to f32. HF computes them in f32 throughout; the
/// results differ by at most one f32 ulp.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(config: &LlamaConfig) -> Result<Self> {
        let inv_freq = inv_freq(config)?;
        Ok(Self {
            inv_freq: inv_freq.iter().map(|&f| f as f32).collect(),
        })
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// `cos` and signed `sin` tables for the given positions, shaped `[B, 1, T, head_dim]`
    /// for broadcasting over heads, in `dtype`: `cos = [cos θ, cos θ]` and
    /// `sin = [−sin θ, sin θ]` (the sign of rotate-half folded in, see [`apply_rotary`]).
    ///
    /// Angles are formed in f32 whatever the model dtype, as HF does (it disables autocast
    /// for this product): bf16 cannot even represent positions above 256 exactly.
    pub fn cos_sin(
        &self,
        positions: Tensor<2, Int>,
        dtype: DType,
        device: &Device,
    ) -> (Tensor<4>, Tensor<4>) {
        self.cos_sin_with(positions, &self.inv_freq_tensor(device), dtype)
    }

    /// The inverse frequencies as an f32 device tensor `[head_dim / 2]`.
    pub fn inv_freq_tensor(&self, device: &Device) -> Tensor<1> {
        Tensor::<1>::from_data(
            TensorData::new(self.inv_freq.clone(), [self.inv_freq.len()]),
            (device, DType::F32),
        )
    }

    /// [`Rope::cos_sin`] with the frequencies already on the device: no host-to-device copy,
    /// so it can run inside a captured CUDA graph.
    pub fn cos_sin_with(
        &self,
        positions: Tensor<2, Int>,
        inv_freq: &Tensor<1>,
        dtype: DType,
    ) -> (Tensor<4>, Tensor<4>) {
        let [batch, seq] = positions.dims();
        let half = self.inv_freq.len();
        let positions = positions.cast(FloatDType::F32).reshape([batch, seq, 1]);
        let inv_freq = inv_freq.clone().reshape([1, 1, half]);
        let angles = positions * inv_freq;
        let cos = angles.clone().cos();
        let sin = angles.sin();
        let cos = Tensor::cat(vec![cos.clone(), cos], 2);
        let sin = Tensor::cat(vec![sin.clone().neg(), sin], 2);
        (
            cos.cast(dtype).unsqueeze_dim::<4>(1),
            sin.cast(dtype).unsqueeze_dim::<4>(1),
        )
    }
}

/// Applies the rotation to `x` of shape `[B, heads, T, head_dim]` in HF's rotate-half layout
/// (the first half of each head pairs with the second half), with the tables of
/// [`Rope::cos_sin`]: `x·cos + swap_halves(x)·sin`, which equals HF's
/// `x·cos + rotate_half(x)·sin` exactly (`rotate_half(x) = [−x₂, x₁]`, and the sign lives in
/// `sin`). Swapping the halves is one flip of a `[.., 2, head_dim/2]` view instead of two
/// slices, a negation and a concatenation: fewer tensor ops per layer, which is what a
/// decode step on a GPU is bound by.
pub fn apply_rotary(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [batch, heads, seq, head_dim] = x.dims();
    let swapped = x
        .clone()
        .reshape([batch, heads, seq, 2, head_dim / 2])
        .flip([3])
        .reshape([batch, heads, seq, head_dim]);
    x * cos.clone() + swapped * sin.clone()
}

/// The inverse frequencies in f64, scaled as `config.rope_scaling` asks.
pub fn inv_freq(config: &LlamaConfig) -> Result<Vec<f64>> {
    let head_dim = config.head_dim();
    let base = config.rope_theta;
    let default: Vec<f64> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f64 / head_dim as f64))
        .collect();
    let Some(scaling) = &config.rope_scaling else {
        return Ok(default);
    };
    match scaling.rope_type.as_str() {
        "default" => Ok(default),
        "linear" => Ok(default.iter().map(|f| f / scaling.factor).collect()),
        "llama3" => Ok(llama3_scaled(&default, scaling)),
        other => Err(Error::UnsupportedRopeScaling {
            rope_type: other.to_string(),
        }),
    }
}

/// Port of HF's `_compute_llama3_parameters`: long wavelengths are divided by `factor`,
/// short ones kept, and the band between interpolated smoothly.
fn llama3_scaled(inv_freq: &[f64], scaling: &crate::config::RopeScaling) -> Vec<f64> {
    let factor = scaling.factor;
    let low_freq_factor = scaling.low_freq_factor;
    let high_freq_factor = scaling.high_freq_factor;
    let old_context_len = scaling.original_max_position_embeddings as f64;
    let low_freq_wavelen = old_context_len / low_freq_factor;
    let high_freq_wavelen = old_context_len / high_freq_factor;
    inv_freq
        .iter()
        .map(|&freq| {
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let scaled = if wavelen > low_freq_wavelen {
                freq / factor
            } else {
                freq
            };
            let is_medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
            if is_medium {
                let smooth = (old_context_len / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * scaled / factor + smooth * scaled
            } else {
                scaled
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by tools/golden/rope_llama3_reference.py (an independent numpy port of HF's
    /// `_compute_llama3_parameters`, float64) for Llama-3.1-8B's config:
    /// (index, inv_freq) across the kept, interpolated and divided bands.
    const LLAMA31_8B_INV_FREQ: [(usize, f64); 10] = [
        (0, 1.0),                     // high (kept)
        (1, 0.8146172338565447),      // high (kept)
        (20, 0.016560440080994446),   // high (kept)
        (30, 0.0013718935677611381),  // medium
        (31, 0.0008567514129196324),  // medium
        (32, 0.0005248461609929547),  // medium
        (34, 0.00017850781276799638), // medium
        (35, 9.556212353964683e-05),  // low (scaled)
        (36, 7.78465527393245e-05),   // low (scaled)
        (63, 3.068925988914511e-07),  // low (scaled)
    ];

    #[test]
    fn llama3_scaling_matches_numpy_reference() {
        let freqs = inv_freq(&LlamaConfig::llama31_8b()).unwrap();
        assert_eq!(freqs.len(), 64);
        for (index, expected) in LLAMA31_8B_INV_FREQ {
            let relative = (freqs[index] - expected).abs() / expected;
            assert!(
                relative < 1e-12,
                "inv_freq[{index}] = {} vs {expected}",
                freqs[index]
            );
        }
        // Scaling changed the low band: unscaled frequency 63 is 8x larger.
        let mut unscaled = LlamaConfig::llama31_8b();
        unscaled.rope_scaling = None;
        let plain = inv_freq(&unscaled).unwrap();
        assert!((plain[63] / freqs[63] - 8.0).abs() < 1e-9);
        assert_eq!(plain[0], freqs[0]);
    }

    #[test]
    fn unknown_rope_scaling_is_an_error() {
        let mut config = LlamaConfig::llama31_8b();
        config.rope_scaling.as_mut().unwrap().rope_type = "yarn".into();
        match Rope::new(&config) {
            Err(Error::UnsupportedRopeScaling { rope_type }) => assert_eq!(rope_type, "yarn"),
            other => panic!("expected UnsupportedRopeScaling, got {other:?}"),
        }
    }

    #[test]
    fn rotary_embedding_rotates_half_pairs() {
        // head_dim 4: pairs (x0, x2) and (x1, x3) rotate by pos·inv_freq[0] and pos·inv_freq[1].
        let mut config = LlamaConfig::tiny_for_tests();
        config.hidden_size = 4;
        config.num_attention_heads = 1;
        config.num_key_value_heads = Some(1);
        config.rope_theta = 100.0;
        let rope = Rope::new(&config).unwrap();
        assert_eq!(rope.inv_freq(), &[1.0, 0.1]);
        let device = Device::flex();
        let positions = Tensor::<2, Int>::from_data(TensorData::new(vec![3i64], [1, 1]), &device);
        let (cos, sin) = rope.cos_sin(positions, DType::F32, &device);
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 1, 4]),
            &device,
        );
        let out = apply_rotary(x, &cos, &sin)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let (a, b) = (3.0f64, 0.3f64);
        let expected = [
            1.0 * a.cos() - 3.0 * a.sin(),
            2.0 * b.cos() - 4.0 * b.sin(),
            3.0 * a.cos() + 1.0 * a.sin(),
            4.0 * b.cos() + 2.0 * b.sin(),
        ];
        for (got, want) in out.iter().zip(expected) {
            assert!((*got as f64 - want).abs() < 1e-5, "{out:?} vs {expected:?}");
        }
    }

    /// Every frequency against the second, separately written reference
    /// (tools/reference/llama_numpy.py → fixtures/golden/llama3_inv_freq.json).
    #[test]
    fn llama3_inv_freq_matches_the_numpy_reference_everywhere() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/golden/llama3_inv_freq.json"
        );
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let expected: Vec<f64> = serde_json::from_value(golden["inv_freq"].clone()).unwrap();
        let actual = inv_freq(&LlamaConfig::llama31_8b()).unwrap();
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
            assert!(
                (a - e).abs() <= 1e-12 * e.abs(),
                "inv_freq[{i}]: {a} vs {e}"
            );
        }
    }
}
