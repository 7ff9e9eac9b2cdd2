//! The BERT encoder as HF transformers' `BertModel` computes it (post-LayerNorm, exact GELU,
//! absolute positions), written against burn's backend-free API: CPU or GPU is a [`Device`].

use burn::tensor::activation::gelu;
use burn::tensor::module::{attention, embedding, layer_norm, linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::config::BertConfig;
use crate::weights::{HostTensor, Weights};
use crate::{Error, Result};

/// `y = x·W + b` with `W` stored `[in, out]`.
#[derive(Debug, Clone)]
struct Dense {
    weight: Tensor<2>,
    bias: Tensor<1>,
}

impl Dense {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        linear(x, self.weight.clone(), Some(self.bias.clone()))
    }
}

#[derive(Debug, Clone)]
struct LayerNorm {
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        layer_norm(x, self.gamma.clone(), Some(self.beta.clone()), self.eps)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    /// Query, key and value fused into one `[hidden, 3·hidden]` GEMM.
    qkv: Dense,
    attention_output: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

/// How a backend reads a boolean attention mask.
///
/// burn documents `true` = masked, but burn-tch 0.22.1 hands the mask to torch's
/// `scaled_dot_product_attention` unchanged, where `true` means "may attend". Probing once at
/// load keeps the model correct on both and on any later fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskPolarity {
    TrueMeansMasked,
    TrueMeansAttend,
}

impl MaskPolarity {
    /// Runs a one-query, two-key attention whose keys carry values 0 and 1, masking key 1.
    pub fn probe(device: &Device) -> Result<Self> {
        let query = Tensor::<4>::zeros([1, 1, 1, 1], device);
        let key = Tensor::<4>::zeros([1, 1, 2, 1], device);
        let value =
            Tensor::<4>::from_data(TensorData::new(vec![0.0f32, 1.0], [1, 1, 2, 1]), device);
        let mask =
            Tensor::<4, Bool>::from_data(TensorData::new(vec![false, true], [1, 1, 1, 2]), device);
        let out = attention(
            query,
            key,
            value,
            Some(mask),
            None,
            AttentionModuleOptions::default(),
        );
        let probe = read_f32(out)?[0];
        if probe.abs() < 1e-4 {
            Ok(Self::TrueMeansMasked)
        } else if (probe - 1.0).abs() < 1e-4 {
            Ok(Self::TrueMeansAttend)
        } else {
            Err(Error::AttentionMaskIgnored { probe })
        }
    }
}

/// A BERT encoder (`BertModel` without the pooler head) resident on one device.
#[derive(Debug, Clone)]
pub struct Bert {
    config: BertConfig,
    word_embeddings: Tensor<2>,
    position_embeddings: Tensor<2>,
    /// Row 0 of `token_type_embeddings`: sentence embeddings use a single segment.
    token_type_zero: Tensor<1>,
    embeddings_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    mask_polarity: MaskPolarity,
    device: Device,
}

impl Bert {
    /// Loads every encoder tensor from `weights` onto `device`, checking names and shapes.
    pub fn load(config: &BertConfig, weights: &Weights, device: &Device) -> Result<Self> {
        let hidden = config.hidden_size;
        let to_device_2d = |t: HostTensor| {
            let shape = [t.shape[0], t.shape[1]];
            Tensor::<2>::from_data(TensorData::new(t.data, shape), device)
        };
        let to_device_1d = |t: HostTensor| {
            let len = t.data.len();
            Tensor::<1>::from_data(TensorData::new(t.data, [len]), device)
        };
        let vector = |name: &str, len: usize| weights.tensor(name, &[len]).map(to_device_1d);
        let dense = |prefix: &str, inputs: usize, outputs: usize| -> Result<Dense> {
            let weight = weights.tensor(&format!("{prefix}.weight"), &[outputs, inputs])?;
            Ok(Dense {
                weight: to_device_2d(weight.transposed()),
                bias: vector(&format!("{prefix}.bias"), outputs)?,
            })
        };
        let norm = |prefix: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                gamma: vector(&format!("{prefix}.weight"), hidden)?,
                beta: vector(&format!("{prefix}.bias"), hidden)?,
                eps: config.layer_norm_eps,
            })
        };

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for index in 0..config.num_hidden_layers {
            let prefix = format!("encoder.layer.{index}");
            let mut qkv_weight = Vec::with_capacity(hidden * 3 * hidden);
            let mut qkv_bias = Vec::with_capacity(3 * hidden);
            let parts = ["query", "key", "value"].map(|part| {
                let p = format!("{prefix}.attention.self.{part}");
                Ok::<_, Error>((
                    weights
                        .tensor(&format!("{p}.weight"), &[hidden, hidden])?
                        .transposed(),
                    weights.tensor(&format!("{p}.bias"), &[hidden])?,
                ))
            });
            let [query, key, value] = parts;
            let parts = [query?, key?, value?];
            // [in, out] blocks side by side: row r of the fused weight is q[r] ‖ k[r] ‖ v[r].
            for row in 0..hidden {
                for (weight, _) in &parts {
                    qkv_weight.extend_from_slice(&weight.data[row * hidden..(row + 1) * hidden]);
                }
            }
            for (_, bias) in &parts {
                qkv_bias.extend_from_slice(&bias.data);
            }
            layers.push(EncoderLayer {
                qkv: Dense {
                    weight: Tensor::from_data(
                        TensorData::new(qkv_weight, [hidden, 3 * hidden]),
                        device,
                    ),
                    bias: Tensor::from_data(TensorData::new(qkv_bias, [3 * hidden]), device),
                },
                attention_output: dense(
                    &format!("{prefix}.attention.output.dense"),
                    hidden,
                    hidden,
                )?,
                attention_norm: norm(&format!("{prefix}.attention.output.LayerNorm"))?,
                intermediate: dense(
                    &format!("{prefix}.intermediate.dense"),
                    hidden,
                    config.intermediate_size,
                )?,
                output: dense(
                    &format!("{prefix}.output.dense"),
                    config.intermediate_size,
                    hidden,
                )?,
                output_norm: norm(&format!("{prefix}.output.LayerNorm"))?,
            });
        }

        let token_types = weights.tensor(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, hidden],
        )?;
        Ok(Self {
            config: config.clone(),
            word_embeddings: to_device_2d(weights.tensor(
                "embeddings.word_embeddings.weight",
                &[config.vocab_size, hidden],
            )?),
            position_embeddings: to_device_2d(weights.tensor(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, hidden],
            )?),
            token_type_zero: Tensor::from_data(
                TensorData::new(token_types.data[..hidden].to_vec(), [hidden]),
                device,
            ),
            embeddings_norm: norm("embeddings.LayerNorm")?,
            layers,
            mask_polarity: MaskPolarity::probe(device)?,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn mask_polarity(&self) -> MaskPolarity {
        self.mask_polarity
    }

    /// Last hidden states `[B, T, hidden]` for right-padded `tokens` `[B, T]`;
    /// `attention_mask` `[B, T]` is 1 for real tokens and 0 for padding.
    ///
    /// `has_padding = false` skips the mask (every row is full length).
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        has_padding: bool,
    ) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        let hidden = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let head_dim = self.config.head_dim();

        let positions = self
            .position_embeddings
            .clone()
            .narrow(0, 0, seq)
            .reshape([1, seq, hidden]);
        let token_type = self.token_type_zero.clone().reshape([1, 1, hidden]);
        let x = embedding(self.word_embeddings.clone(), tokens) + positions + token_type;
        let mut x = self.embeddings_norm.forward(x);

        // Padding keys are hidden from every query; padding queries still attend to the real
        // keys, so their (discarded) rows stay finite.
        let mask = has_padding.then(|| {
            let padding = attention_mask.equal_elem(0).reshape([batch, 1, 1, seq]);
            let padding = match self.mask_polarity {
                MaskPolarity::TrueMeansMasked => padding,
                MaskPolarity::TrueMeansAttend => padding.bool_not(),
            };
            // Materialised once as [B, 1, T, T] and shared by all layers and heads: flex copies
            // a mask broadcast along the query axis into a full [B, heads, T, T] on every call.
            let rows = Tensor::<4, Int>::zeros([1, 1, seq, 1], &self.device).equal_elem(1);
            padding.bool_or(rows)
        });

        let split_heads = |t: Tensor<3>| t.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
        for layer in &self.layers {
            let qkv = layer.qkv.forward(x.clone());
            let query = split_heads(qkv.clone().narrow(2, 0, hidden));
            let key = split_heads(qkv.clone().narrow(2, hidden, hidden));
            let value = split_heads(qkv.narrow(2, 2 * hidden, hidden));
            let context = attention(
                query,
                key,
                value,
                mask.clone(),
                None,
                AttentionModuleOptions::default(),
            )
            .swap_dims(1, 2)
            .reshape([batch, seq, hidden]);
            x = layer
                .attention_norm
                .forward(layer.attention_output.forward(context) + x);
            let intermediate = gelu(layer.intermediate.forward(x.clone()));
            x = layer
                .output_norm
                .forward(layer.output.forward(intermediate) + x);
        }
        x
    }
}

/// Mean of `hidden` `[B, T, H]` over the positions where `attention_mask` `[B, T]` is 1,
/// then divided by its L2 norm: sentence-transformers' `Pooling(mean)` + `Normalize`.
/// The count and the norm are clamped (1e-9, 1e-12) as there.
pub fn mean_pool_normalize(hidden: Tensor<3>, attention_mask: Tensor<2, Int>) -> Tensor<2> {
    let [batch, _, width] = hidden.dims();
    let mask = attention_mask.float().unsqueeze_dim::<3>(2);
    let count = mask.clone().sum_dim(1).clamp_min(1e-9);
    let mean = (hidden * mask).sum_dim(1) / count;
    let norm = mean.clone().square().sum_dim(2).sqrt().clamp_min(1e-12);
    (mean / norm).reshape([batch, width])
}

/// Copies a float tensor to the host as `f32`.
pub(crate) fn read_f32<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    tensor
        .try_into_data()
        .map_err(|error| Error::Readback(format!("{error:?}")))?
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|error| Error::Readback(format!("{error:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flex_attention_masks_where_true() {
        assert_eq!(
            MaskPolarity::probe(&Device::flex()).unwrap(),
            MaskPolarity::TrueMeansMasked
        );
    }

    #[test]
    fn mean_pooling_ignores_padding_and_normalises() {
        let device = Device::flex();
        // Row 0: tokens (3, 4) and (1, 0), padding (100, 100) → mean (2, 2) → (1, 1)/√2.
        // Row 1: one token (0, -5) → (0, -1).
        let hidden = Tensor::<3>::from_data(
            TensorData::new(
                vec![
                    3.0f32, 4.0, 1.0, 0.0, 100.0, 100.0, 0.0, -5.0, 7.0, 7.0, 7.0, 7.0,
                ],
                [2, 3, 2],
            ),
            &device,
        );
        let mask = Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 1, 0, 1, 0, 0], [2, 3]),
            &device,
        );
        let pooled = read_f32(mean_pool_normalize(hidden, mask)).unwrap();
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let expected = [s, s, 0.0, -1.0];
        for (got, want) in pooled.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{pooled:?} vs {expected:?}");
        }
    }
}
