//! Building a [`Llama`] from named HF tensors, from random numbers, and turning its current
//! weights back into named HF tensors (for export).

use std::borrow::Cow;
use std::collections::HashMap;

use burn::module::Param;
use burn::nn::Embedding;
use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::LlamaConfig;
use crate::model::{DecoderLayer, Llama, Mlp, Projection, RmsNorm, SelfAttention};
use crate::rope::Rope;
use crate::tensor_source::{HostDType, HostTensor, TensorSource};
use crate::{Error, Result};

/// HF name of the untied output head.
pub const LM_HEAD: &str = "lm_head.weight";

/// Every tensor of an HF Llama checkpoint with the shape the config implies, in HF order.
/// `lm_head.weight` is included only when `with_lm_head`.
pub fn hf_tensor_shapes(config: &LlamaConfig, with_lm_head: bool) -> Vec<(String, Vec<usize>)> {
    let hidden = config.hidden_size;
    let q_dim = config.num_attention_heads * config.head_dim();
    let kv_dim = config.num_kv_heads() * config.head_dim();
    let ffn = config.intermediate_size;
    let mut shapes = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![config.vocab_size, hidden],
    )];
    for layer in 0..config.num_hidden_layers {
        let prefix = format!("model.layers.{layer}");
        for (name, shape) in [
            ("input_layernorm", vec![hidden]),
            ("self_attn.q_proj", vec![q_dim, hidden]),
            ("self_attn.k_proj", vec![kv_dim, hidden]),
            ("self_attn.v_proj", vec![kv_dim, hidden]),
            ("self_attn.o_proj", vec![hidden, q_dim]),
            ("post_attention_layernorm", vec![hidden]),
            ("mlp.gate_proj", vec![ffn, hidden]),
            ("mlp.up_proj", vec![ffn, hidden]),
            ("mlp.down_proj", vec![hidden, ffn]),
        ] {
            shapes.push((format!("{prefix}.{name}.weight"), shape));
        }
    }
    shapes.push(("model.norm.weight".to_string(), vec![hidden]));
    if with_lm_head {
        shapes.push((LM_HEAD.to_string(), vec![config.vocab_size, hidden]));
    }
    shapes
}

fn validated(config: &LlamaConfig) -> Result<Rope> {
    config
        .validate()
        .map_err(|message| Error::InvalidArgument(format!("invalid model config: {message}")))?;
    Rope::new(config)
}

impl Llama {
    /// Loads every tensor the config implies from `source` (HF names, HF `[out, in]` layout),
    /// converting to `device`'s float dtype. The output head is tied to the embedding when
    /// the config says so or when the source has no `lm_head.weight`.
    pub fn from_source(
        config: &LlamaConfig,
        source: &dyn TensorSource,
        device: &Device,
    ) -> Result<Self> {
        let rope = validated(config)?;
        let mut loader = Loader { source, device };
        let with_lm_head =
            !config.tie_word_embeddings && source.tensor_names().iter().any(|n| n == LM_HEAD);
        Self::build(config, rope, with_lm_head, &mut loader)
    }

    /// A model with HF-like random weights (normal, std 0.02; norms 1), the same for a given
    /// seed on every device, because the numbers are drawn on the host.
    pub fn random(config: &LlamaConfig, seed: u64, device: &Device) -> Result<Self> {
        let rope = validated(config)?;
        let mut random = RandomWeights {
            seed,
            index: 0,
            device,
        };
        Self::build(config, rope, !config.tie_word_embeddings, &mut random)
    }

    /// A model with random weights (normal, std 0.02; norms 1) drawn by the device itself in
    /// its float dtype: an 8B-shaped model on a GPU in seconds, without 32 GB of host numbers.
    /// Unlike [`Llama::random`], the numbers depend on the device's own generator.
    pub fn random_on_device(config: &LlamaConfig, device: &Device) -> Result<Self> {
        let rope = validated(config)?;
        let mut random = DeviceRandomWeights { device };
        Self::build(config, rope, !config.tie_word_embeddings, &mut random)
    }

    fn build(
        config: &LlamaConfig,
        rope: Rope,
        with_lm_head: bool,
        weights: &mut dyn WeightProvider,
    ) -> Result<Self> {
        let shapes = hf_tensor_shapes(config, with_lm_head);
        let mut shapes = shapes.into_iter();
        let mut next = |kind: Kind| -> Result<Tensor<2>> {
            let (name, shape) = shapes.next().expect("one shape per tensor");
            weights.tensor(&name, &shape, kind)
        };
        let projection = Projection::from_hf;
        let norm = |t: Tensor<2>| RmsNorm {
            weight: Param::from_tensor(t.reshape([-1])),
            eps: config.rms_norm_eps,
        };

        let embed = next(Kind::Matrix)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            let input_layernorm = norm(next(Kind::Norm)?);
            let q_proj = projection(next(Kind::Matrix)?);
            let k_proj = projection(next(Kind::Matrix)?);
            let v_proj = projection(next(Kind::Matrix)?);
            let o_proj = projection(next(Kind::Matrix)?);
            let post_attention_layernorm = norm(next(Kind::Norm)?);
            let gate_proj = projection(next(Kind::Matrix)?);
            let up_proj = projection(next(Kind::Matrix)?);
            let down_proj = projection(next(Kind::Matrix)?);
            layers.push(DecoderLayer {
                input_layernorm,
                self_attn: SelfAttention {
                    q_proj,
                    k_proj,
                    v_proj,
                    o_proj,
                    num_heads: config.num_attention_heads,
                    num_kv_heads: config.num_kv_heads(),
                    head_dim: config.head_dim(),
                },
                post_attention_layernorm,
                mlp: Mlp {
                    gate_proj,
                    up_proj,
                    down_proj,
                },
            });
        }
        let final_norm = norm(next(Kind::Norm)?);
        let lm_head = if with_lm_head {
            projection(next(Kind::Matrix)?)
        } else {
            projection(embed.clone())
        };
        Ok(Llama {
            embed_tokens: Embedding {
                weight: Param::from_tensor(embed),
            },
            layers,
            norm: final_norm,
            lm_head,
            tied_lm_head: !with_lm_head,
            checkpoint_layers: false,
            host_kernels: true,
            config: config.clone(),
            rope,
        })
    }

    /// The model's current weights as HF-named host tensors in HF layout and the model's
    /// float dtype (what an exporter writes). A tied head is not listed.
    pub fn tensors(&self) -> OwnedTensors {
        let mut out = OwnedTensors::new("model weights");
        out.insert(
            "model.embed_tokens.weight",
            host_tensor(self.embed_tokens.weight.val()),
        );
        for (index, layer) in self.layers.iter().enumerate() {
            let prefix = format!("model.layers.{index}");
            let projection = |p: &Projection| host_tensor(p.weight.val().transpose());
            let attn = &layer.self_attn;
            let entries = [
                (
                    "input_layernorm",
                    host_tensor(layer.input_layernorm.weight.val()),
                ),
                ("self_attn.q_proj", projection(&attn.q_proj)),
                ("self_attn.k_proj", projection(&attn.k_proj)),
                ("self_attn.v_proj", projection(&attn.v_proj)),
                ("self_attn.o_proj", projection(&attn.o_proj)),
                (
                    "post_attention_layernorm",
                    host_tensor(layer.post_attention_layernorm.weight.val()),
                ),
                ("mlp.gate_proj", projection(&layer.mlp.gate_proj)),
                ("mlp.up_proj", projection(&layer.mlp.up_proj)),
                ("mlp.down_proj", projection(&layer.mlp.down_proj)),
            ];
            for (name, tensor) in entries {
                out.insert(&format!("{prefix}.{name}.weight"), tensor);
            }
        }
        out.insert("model.norm.weight", host_tensor(self.norm.weight.val()));
        if !self.tied_lm_head {
            out.insert(LM_HEAD, host_tensor(self.lm_head.weight.val().transpose()));
        }
        out
    }
}

/// A device tensor copied to the host in its own dtype (f32, f16 or bf16).
pub fn host_tensor<const D: usize>(tensor: Tensor<D>) -> HostTensor<'static> {
    let data = tensor.into_data();
    let shape = data.shape().to_vec();
    let (bytes, _, dtype) = data.into_parts();
    let dtype = match dtype {
        DType::F32 => HostDType::F32,
        DType::F16 => HostDType::F16,
        DType::BF16 => HostDType::BF16,
        other => panic!("model weights have unexpected dtype {other:?}"),
    };
    HostTensor {
        shape,
        dtype,
        bytes: Cow::Owned(bytes.to_vec()),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Matrix,
    Norm,
}

trait WeightProvider {
    /// The tensor called `name` as a 2-d device tensor (norms as `[1, n]`).
    fn tensor(&mut self, name: &str, shape: &[usize], kind: Kind) -> Result<Tensor<2>>;
}

struct Loader<'a> {
    source: &'a dyn TensorSource,
    device: &'a Device,
}

impl WeightProvider for Loader<'_> {
    fn tensor(&mut self, name: &str, shape: &[usize], _kind: Kind) -> Result<Tensor<2>> {
        let host = self.source.tensor(name)?;
        if host.shape != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: host.shape.clone(),
            });
        }
        let expected_bytes = host.num_elements() * host.dtype.size_in_bytes();
        if host.bytes.len() != expected_bytes {
            return Err(Error::InvalidArgument(format!(
                "tensor `{name}`: {} bytes of data for shape {:?} {:?}",
                host.bytes.len(),
                host.shape,
                host.dtype
            )));
        }
        let dtype = match host.dtype {
            HostDType::F32 => DType::F32,
            HostDType::F16 => DType::F16,
            HostDType::BF16 => DType::BF16,
        };
        let data = TensorData::from_bytes_vec(host.bytes.into_owned(), host.shape.clone(), dtype);
        let tensor = match shape {
            [n] => Tensor::<1>::from_data(data, self.device).reshape([1, *n]),
            _ => Tensor::<2>::from_data(data, self.device),
        };
        Ok(tensor)
    }
}

struct RandomWeights<'a> {
    seed: u64,
    index: u64,
    device: &'a Device,
}

/// Standard deviation of HF's `initializer_range` default.
const INIT_STD: f32 = 0.02;

impl WeightProvider for RandomWeights<'_> {
    fn tensor(&mut self, _name: &str, shape: &[usize], kind: Kind) -> Result<Tensor<2>> {
        let stream = self.index;
        self.index += 1;
        let count: usize = shape.iter().product();
        let values = match kind {
            Kind::Norm => vec![1.0f32; count],
            Kind::Matrix => normal_values(self.seed, stream, count, INIT_STD),
        };
        let shape2 = match shape {
            [n] => [1, *n],
            [rows, cols] => [*rows, *cols],
            _ => unreachable!("Llama tensors are 1-d or 2-d"),
        };
        Ok(Tensor::<2>::from_data(
            TensorData::new(values, shape2),
            self.device,
        ))
    }
}

struct DeviceRandomWeights<'a> {
    device: &'a Device,
}

impl WeightProvider for DeviceRandomWeights<'_> {
    fn tensor(&mut self, _name: &str, shape: &[usize], kind: Kind) -> Result<Tensor<2>> {
        let shape2 = match shape {
            [n] => [1, *n],
            [rows, cols] => [*rows, *cols],
            _ => unreachable!("Llama tensors are 1-d or 2-d"),
        };
        Ok(match kind {
            Kind::Norm => Tensor::<2>::ones(shape2, self.device),
            Kind::Matrix => Tensor::<2>::random(
                shape2,
                Distribution::Normal(0.0, INIT_STD as f64),
                self.device,
            ),
        })
    }
}

/// Normal(0, std) numbers from ChaCha8 streams keyed by (seed, tensor, chunk), drawn in
/// parallel chunks so that an 8B-shaped model initialises in seconds.
fn normal_values(seed: u64, stream: u64, count: usize, std: f32) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut values = vec![0.0f32; count];
    values
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk_index, chunk)| {
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            rng.set_stream(chunk_index as u64);
            for pair in chunk.chunks_mut(2) {
                // Box-Muller: two independent normals from two uniforms in (0, 1].
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random::<f64>();
                let radius = (-2.0 * u1.ln()).sqrt();
                let angle = 2.0 * std::f64::consts::PI * u2;
                pair[0] = (radius * angle.cos()) as f32 * std;
                if let Some(second) = pair.get_mut(1) {
                    *second = (radius * angle.sin()) as f32 * std;
                }
            }
        });
    values
}

/// Named host tensors held in memory, in insertion order: a model's weights for export, or
/// any hand-built set of tensors.
#[derive(Debug, Clone)]
pub struct OwnedTensors {
    description: String,
    names: Vec<String>,
    tensors: HashMap<String, HostTensor<'static>>,
}

impl OwnedTensors {
    /// `description` names the set in `MissingTensor` errors.
    pub fn new(description: &str) -> Self {
        Self {
            description: description.to_string(),
            names: Vec::new(),
            tensors: HashMap::new(),
        }
    }

    /// Inserts or replaces `name` (a replacement keeps its original position).
    pub fn insert(&mut self, name: &str, tensor: HostTensor<'static>) {
        if self.tensors.insert(name.to_string(), tensor).is_none() {
            self.names.push(name.to_string());
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<HostTensor<'static>> {
        let removed = self.tensors.remove(name)?;
        self.names.retain(|n| n != name);
        Some(removed)
    }

    pub fn get(&self, name: &str) -> Option<&HostTensor<'static>> {
        self.tensors.get(name)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl TensorSource for OwnedTensors {
    fn tensor_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        let tensor = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            source_description: self.description.clone(),
        })?;
        Ok(HostTensor {
            shape: tensor.shape.clone(),
            dtype: tensor.dtype,
            bytes: Cow::Borrowed(&tensor.bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Int, Tensor, TensorData};

    use super::*;
    use crate::model::tests::{max_abs_diff, tiny_model, to_vec};

    fn logits(model: &Llama, device: &Device) -> Vec<f32> {
        let tokens =
            Tensor::<2, Int>::from_data(TensorData::new(vec![3i64, 1, 4, 1, 5], [1, 5]), device);
        let mask = Tensor::<2, Int>::ones([1, 5], device);
        to_vec(model.forward(tokens, mask, None))
    }

    #[test]
    fn export_then_load_round_trips() {
        let (model, device) = tiny_model(11);
        let tensors = model.tensors();
        assert_eq!(
            tensors.tensor_names().len(),
            hf_tensor_shapes(model.config(), true).len()
        );
        for (name, shape) in hf_tensor_shapes(model.config(), true) {
            assert_eq!(tensors.get(&name).unwrap().shape, shape, "{name}");
        }
        let reloaded = Llama::from_source(model.config(), &tensors, &device).unwrap();
        assert_eq!(
            max_abs_diff(&logits(&model, &device), &logits(&reloaded, &device)),
            0.0
        );
        // HF layout: q_proj is [out, in]; element (o, i) is x_i's weight in output o.
        let q = tensors
            .get("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .to_f32_vec();
        let ours = to_vec(model.layers[0].self_attn.q_proj.weight.val()); // [in, out]
        let (inputs, outputs) = (64, 64);
        assert_eq!(q[2 * inputs + 5], ours[5 * outputs + 2]);
    }

    #[test]
    fn tied_head_uses_embedding_and_is_not_exported() {
        let mut config = LlamaConfig::tiny_for_tests();
        config.tie_word_embeddings = true;
        let device = Device::flex();
        let model = Llama::random(&config, 5, &device).unwrap();
        assert!(model.tied_lm_head);
        let tensors = model.tensors();
        assert!(tensors.get(LM_HEAD).is_none());
        // An untied config whose source lacks lm_head.weight also ties.
        let untied = LlamaConfig::tiny_for_tests();
        let loaded = Llama::from_source(&untied, &tensors, &device).unwrap();
        assert!(loaded.tied_lm_head);
        assert_eq!(
            max_abs_diff(&logits(&model, &device), &logits(&loaded, &device)),
            0.0
        );
    }

    #[test]
    fn missing_tensor_is_named() {
        let (model, device) = tiny_model(12);
        let mut tensors = model.tensors();
        tensors.remove("model.layers.1.mlp.up_proj.weight");
        match Llama::from_source(model.config(), &tensors, &device) {
            Err(Error::MissingTensor { name, .. }) => {
                assert_eq!(name, "model.layers.1.mlp.up_proj.weight")
            }
            other => panic!("expected MissingTensor, got {other:?}"),
        }
    }

    #[test]
    fn wrong_shape_names_tensor_and_both_shapes() {
        let (model, device) = tiny_model(13);
        let mut tensors = model.tensors();
        tensors.insert(
            "model.layers.0.self_attn.k_proj.weight",
            HostTensor::from_f32(vec![64, 32], &vec![0.0; 64 * 32]),
        );
        match Llama::from_source(model.config(), &tensors, &device) {
            Err(Error::ShapeMismatch {
                name,
                expected,
                actual,
            }) => {
                assert_eq!(name, "model.layers.0.self_attn.k_proj.weight");
                assert_eq!(expected, vec![32, 64]);
                assert_eq!(actual, vec![64, 32]);
            }
            other => panic!("expected ShapeMismatch, got {other:?}"),
        }
    }

    #[test]
    fn random_init_is_seeded_and_hf_like() {
        let (a, device) = tiny_model(21);
        let (b, _) = tiny_model(21);
        let (c, _) = tiny_model(22);
        assert_eq!(logits(&a, &device), logits(&b, &device));
        assert!(max_abs_diff(&logits(&a, &device), &logits(&c, &device)) > 1e-3);
        let embed = to_vec(a.embed_tokens.weight.val());
        let mean = embed.iter().sum::<f32>() / embed.len() as f32;
        let std =
            (embed.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / embed.len() as f32).sqrt();
        assert!(
            mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3,
            "mean {mean} std {std}"
        );
        assert!(to_vec(a.norm.weight.val()).iter().all(|&w| w == 1.0));
    }

    #[test]
    fn bf16_tensors_load_converted() {
        let (model, device) = tiny_model(14);
        let mut tensors = model.tensors();
        let name = "model.embed_tokens.weight";
        let original = tensors.get(name).unwrap().clone();
        let values = original.to_f32_vec();
        let bf16: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        tensors.insert(
            name,
            HostTensor {
                shape: original.shape.clone(),
                dtype: HostDType::BF16,
                bytes: Cow::Owned(bf16),
            },
        );
        let loaded = Llama::from_source(model.config(), &tensors, &device).unwrap();
        let got = to_vec(loaded.embed_tokens.weight.val());
        let diff = max_abs_diff(&got, &values);
        assert!(diff > 0.0 && diff < 1e-3, "bf16 rounding diff {diff}");
    }
}
