//! [`Llama`] on the CPU without burn's ops: the same forward as [`Llama::forward_hidden`]
//! and [`Llama::logits`] (HF's `LlamaForCausalLM`), on host `f32` buffers with the kernels
//! of [`cpu_kernels`], used by both when the model's weights are plain f32 `flex` tensors.
//!
//! Why: a decode step through burn's flex ops is ~15 tensor ops per layer, each allocating
//! its output, and flex runs products below its parallel threshold (every decode step's) on
//! one thread. Here the weights are read in place from the model's own tensors (no second
//! copy, so nothing can fall out of step with them), both cores stream half of each weight
//! matrix per decode step, and keys and values live in host buffers of the [`KvCache`].
//!
//! The model code stays backend-free: on other devices, under autodiff, with LoRA adapters or
//! with [`Llama::host_kernels`] off, the burn path runs; both are checked against each other
//! and against the golden logits.

use burn::backend::{DispatchTensorKind, Flex, tensor::FloatTensor};
use burn::tensor::{Int, Tensor, TensorData};

use crate::config::LlamaConfig;
use crate::kv_cache::{HostKv, KvCache};
use crate::model::{Llama, Projection};

/// A float tensor's storage on the flex backend: a shared handle, no copy.
struct Host(FloatTensor<Flex>);

impl Host {
    /// The tensor's storage when it is a plain (not autodiff) contiguous f32 flex tensor.
    fn borrow<const D: usize>(tensor: Tensor<D>) -> Option<Self> {
        let DispatchTensorKind::Flex(tensor) = tensor.into_dispatch().kind else {
            return None;
        };
        let tensor = match tensor {
            burn::backend::BackendTensor::Float(tensor) => tensor,
            _ => return None,
        };
        tensor.as_slice::<f32>().is_some().then_some(Self(tensor))
    }

    fn values(&self) -> &[f32] {
        self.0.as_slice::<f32>().expect("checked in borrow")
    }
}

struct Layer {
    input_norm: Host,
    q: Host,
    k: Host,
    v: Host,
    o: Host,
    post_norm: Host,
    gate: Host,
    up: Host,
    down: Host,
}

/// The model's weights, borrowed for one call.
pub(crate) struct CpuLlama<'m> {
    config: &'m LlamaConfig,
    inv_freq: &'m [f32],
    embed: Host,
    layers: Vec<Layer>,
    norm: Host,
    lm_head: Host,
}

fn projection(projection: &Projection) -> Option<Host> {
    if projection.lora.is_some() {
        return None;
    }
    Host::borrow(projection.weight.val())
}

impl<'m> CpuLlama<'m> {
    /// The host view of `model`, or `None` when the burn path must run: host kernels off, a
    /// weight not a plain f32 flex tensor (another device, bf16, autodiff), or an adapter.
    pub(crate) fn borrow(model: &'m Llama) -> Option<Self> {
        if !model.host_kernels {
            return None;
        }
        let layers = model
            .layers
            .iter()
            .map(|layer| {
                let attention = &layer.self_attn;
                Some(Layer {
                    input_norm: Host::borrow(layer.input_layernorm.weight.val())?,
                    q: projection(&attention.q_proj)?,
                    k: projection(&attention.k_proj)?,
                    v: projection(&attention.v_proj)?,
                    o: projection(&attention.o_proj)?,
                    post_norm: Host::borrow(layer.post_attention_layernorm.weight.val())?,
                    gate: projection(&layer.mlp.gate_proj)?,
                    up: projection(&layer.mlp.up_proj)?,
                    down: projection(&layer.mlp.down_proj)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            config: &model.config,
            inv_freq: model.rope.inv_freq(),
            embed: Host::borrow(model.embed_tokens.weight.val())?,
            layers,
            norm: Host::borrow(model.norm.weight.val())?,
            lm_head: projection(&model.lm_head)?,
        })
    }

    /// [`Llama::forward_hidden`] on the host. The cache, when given, must be empty or hold
    /// host keys and values (the caller checks).
    pub(crate) fn forward_hidden(
        &self,
        tokens: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let device = tokens.device();
        let [batch, seq] = tokens.dims();
        let ids = host_ints(tokens);
        let mask = host_ints(attention_mask);
        let config = self.config;
        let (hidden, heads, kv_heads) = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_kv_heads(),
        );
        let head_dim = config.head_dim();
        let mut cache = cache;
        let mut fresh = None;
        let kv: &mut HostKv = match cache.as_deref_mut() {
            Some(cache) => cache.host_kv_for(batch, config, seq),
            None => fresh.insert(HostKv::new(batch, config, seq)),
        };
        assert_eq!(kv.batch(), batch, "batch size differs from the cache's");
        let past = kv.len();
        kv.extend_mask(&mask, seq);
        let positions = kv.positions(past, seq);

        // Embedding rows.
        let embed = self.embed.values();
        let rows = batch * seq;
        let mut x = vec![0.0f32; rows * hidden];
        for (row, &id) in x.chunks_exact_mut(hidden).zip(&ids) {
            row.copy_from_slice(&embed[id as usize * hidden..][..hidden]);
        }
        // Rotary tables per (row, position): cos and sin of each frequency.
        let half = self.inv_freq.len();
        let mut cos = vec![0.0f32; rows * half];
        let mut sin = vec![0.0f32; rows * half];
        for (row, &position) in positions.iter().enumerate() {
            for (i, &f) in self.inv_freq.iter().enumerate() {
                // f32 angle, as HF forms it.
                let angle = position as f32 * f;
                cos[row * half + i] = angle.cos();
                sin[row * half + i] = angle.sin();
            }
        }

        let eps = config.rms_norm_eps as f32;
        let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
        let mut normed = vec![0.0f32; rows * hidden];
        let mut q = vec![0.0f32; rows * q_width];
        let mut k = vec![0.0f32; rows * kv_width];
        let mut v = vec![0.0f32; rows * kv_width];
        let mut context = vec![0.0f32; rows * q_width];
        let mut projected = vec![0.0f32; rows * hidden];
        let mut gate = vec![0.0f32; rows * config.intermediate_size];
        let mut up = vec![0.0f32; rows * config.intermediate_size];
        let scale = 1.0 / (head_dim as f32).sqrt();
        for (index, layer) in self.layers.iter().enumerate() {
            cpu_kernels::rms_norm(&x, layer.input_norm.values(), eps, &mut normed);
            cpu_kernels::matmul(&normed, layer.q.values(), q_width, &mut q);
            cpu_kernels::matmul(&normed, layer.k.values(), kv_width, &mut k);
            cpu_kernels::matmul(&normed, layer.v.values(), kv_width, &mut v);
            for row in 0..rows {
                let (c, s) = (&cos[row * half..][..half], &sin[row * half..][..half]);
                cpu_kernels::rotary(&mut q[row * q_width..][..q_width], c, s);
                cpu_kernels::rotary(&mut k[row * kv_width..][..kv_width], c, s);
            }
            kv.write(index, past, seq, &k, &v);
            kv.attend(index, past, seq, &q, &mut context, heads, scale);
            cpu_kernels::matmul(&context, layer.o.values(), hidden, &mut projected);
            cpu_kernels::add(&mut x, &projected);
            cpu_kernels::rms_norm(&x, layer.post_norm.values(), eps, &mut normed);
            cpu_kernels::matmul(
                &normed,
                layer.gate.values(),
                config.intermediate_size,
                &mut gate,
            );
            cpu_kernels::matmul(
                &normed,
                layer.up.values(),
                config.intermediate_size,
                &mut up,
            );
            cpu_kernels::silu_mul(&mut gate, &up);
            cpu_kernels::matmul(&gate, layer.down.values(), hidden, &mut projected);
            cpu_kernels::add(&mut x, &projected);
        }
        kv.advance(seq);
        let mask = kv.mask_tensor(&device);
        if let Some(cache) = cache {
            cache.set_key_mask(mask);
        }
        cpu_kernels::rms_norm(&x, self.norm.values(), eps, &mut normed);
        Tensor::from_data(TensorData::new(normed, [batch, seq, hidden]), &device)
    }

    /// [`Llama::logits`] on the host.
    pub(crate) fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let device = hidden.device();
        let [batch, seq, _] = hidden.dims();
        let x = hidden
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 hidden states");
        let vocab = self.config.vocab_size;
        let mut logits = vec![0.0f32; batch * seq * vocab];
        cpu_kernels::matmul(&x, self.lm_head.values(), vocab, &mut logits);
        Tensor::from_data(TensorData::new(logits, [batch, seq, vocab]), &device)
    }
}

fn host_ints(tensor: Tensor<2, Int>) -> Vec<i64> {
    tensor
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("int tensor")
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Int, Tensor};

    use crate::generate::{GenerationConfig, generate, left_padded};
    use crate::kv_cache::KvCache;
    use crate::loglikelihood::{
        LoglikelihoodRequest, PrefixCache, loglikelihood_with_prefix_cache,
    };
    use crate::model::tests::{max_abs_diff, tiny_model, to_vec};

    use super::CpuLlama;

    /// Padded prompts of different lengths (the tiny model's widths are not multiples of the
    /// microkernel's 16 columns, so the ragged paths run too).
    fn prompts() -> Vec<Vec<u32>> {
        vec![
            vec![
                5, 17, 200, 3, 3, 90, 1, 2, 4, 8, 16, 32, 64, 128, 255, 7, 6, 5, 4,
            ],
            vec![1, 2, 3],
            vec![9, 250, 33, 33, 101, 77, 12],
        ]
    }

    #[test]
    fn host_path_runs_only_for_plain_f32_weights_without_adapters() {
        let (mut model, _) = tiny_model(60);
        assert!(CpuLlama::borrow(&model).is_some());
        model.host_kernels = false;
        assert!(CpuLlama::borrow(&model).is_none());
    }

    #[test]
    fn host_forward_and_cached_decode_match_the_burn_path() {
        let (mut model, device) = tiny_model(61);
        let prompts = prompts();
        let batch: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let (tokens, mask) = left_padded(&batch, &device);
        let width = tokens.dims()[1];
        let run = |model: &crate::Llama| {
            // Whole forward, then prefill of 12 positions and one position at a time, with
            // row 1 leaving the batch half-way.
            let mut out = vec![to_vec(model.forward(tokens.clone(), mask.clone(), None))];
            let mut cache = KvCache::with_capacity(14);
            let prefill = 12;
            out.push(to_vec(model.forward(
                tokens.clone().narrow(1, 0, prefill),
                mask.clone().narrow(1, 0, prefill),
                Some(&mut cache),
            )));
            let mut rows: Vec<i64> = vec![0, 1, 2];
            for position in prefill..width {
                if position == 15 {
                    cache.retain_rows(&[0, 2]);
                    rows = vec![0, 2];
                }
                let index = Tensor::<1, Int>::from_data(rows.as_slice(), &device);
                out.push(to_vec(
                    model.forward(
                        tokens
                            .clone()
                            .narrow(1, position, 1)
                            .select(0, index.clone()),
                        mask.clone().narrow(1, position, 1).select(0, index),
                        Some(&mut cache),
                    ),
                ));
            }
            assert_eq!(cache.seq_len(), width);
            out
        };
        model.host_kernels = false;
        let burn = run(&model);
        model.host_kernels = true;
        let host = run(&model);
        for (step, (b, h)) in burn.iter().zip(&host).enumerate() {
            let diff = max_abs_diff(b, h);
            assert!(diff < 1e-4, "step {step}: max diff {diff}");
        }
        // Logits vary across positions, so the comparison is not vacuous.
        let vocab = model.config().vocab_size;
        assert!(max_abs_diff(&host[0][..vocab], &host[0][vocab..2 * vocab]) > 1e-3);
    }

    #[test]
    fn generation_and_loglikelihood_agree_with_the_burn_path() {
        let (mut model, device) = tiny_model(62);
        let prompts = prompts();
        let config = GenerationConfig {
            max_new_tokens: 6,
            batch_size: 2,
            ..Default::default()
        };
        // A shared prefix long enough for the prefix cache, then short questions.
        let shot: Vec<u32> = (0..40).map(|i| (i * 7 % 250) as u32).collect();
        let requests: Vec<LoglikelihoodRequest> = (0..4)
            .map(|q| LoglikelihoodRequest {
                context: shot.iter().copied().chain([q, q + 1]).collect(),
                continuation: vec![10 + q, 20],
            })
            .chain([LoglikelihoodRequest {
                context: vec![3, 4],
                continuation: vec![5],
            }])
            .collect();
        let run = |model: &crate::Llama| {
            let generations = generate(model, &prompts, &config, &device).unwrap();
            let mut prefixes = PrefixCache::new();
            let scores =
                loglikelihood_with_prefix_cache(model, &requests, 3, &device, &mut prefixes)
                    .unwrap();
            assert!(
                prefixes.stats().positions_reused > 0,
                "the prefix cache served"
            );
            (generations, scores)
        };
        model.host_kernels = false;
        let (burn_generations, burn_scores) = run(&model);
        model.host_kernels = true;
        let (host_generations, host_scores) = run(&model);
        assert_eq!(host_generations, burn_generations);
        for (h, b) in host_scores.iter().zip(&burn_scores) {
            assert!((h.logprob - b.logprob).abs() < 1e-4, "{h:?} vs {b:?}");
            assert_eq!(h.is_greedy, b.is_greedy);
        }
    }
}
