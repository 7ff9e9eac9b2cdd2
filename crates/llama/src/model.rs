//! Llama as HF transformers' `LlamaForCausalLM` computes it, written against burn's
//! backend-free API: switching from the CPU to a GPU is a change of [`Device`].

use burn::module::{Module, Param};
use burn::nn::Embedding;
use burn::tensor::module::{attention, linear};
use burn::tensor::ops::AttentionModuleOptions;
use std::sync::Mutex;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::causal_attention::{Segments, causal_attention, segment_attention};
use crate::config::LlamaConfig;
use crate::cpu::CpuLlama;
use crate::kv_cache::KvCache;
use crate::kv_write::kv_write;
use crate::layer_checkpoint::checkpointed_layer;
use crate::lora::LoraAdapter;
use crate::lora_linear::lora_linear;
use crate::rms_norm::rms_norm;
use crate::rope::{Rope, apply_rotary};
use crate::swiglu::swiglu;

/// A bias-free linear map `y = x·W` with `W` stored `[in, out]` (burn's `Linear` layout;
/// HF stores `[out, in]`), optionally with a LoRA adapter: `y = x·W + scale·(dropout(x)·A)·B`.
#[derive(Module, Debug)]
pub struct Projection {
    pub weight: Param<Tensor<2>>,
    pub lora: Option<LoraAdapter>,
}

impl Projection {
    pub fn new(weight_in_out: Tensor<2>) -> Self {
        Self {
            weight: Param::from_tensor(weight_in_out),
            lora: None,
        }
    }

    /// From an HF `[out, in]` weight, stored transposed and contiguous.
    pub fn from_hf(weight_out_in: Tensor<2>) -> Self {
        Self::new(contiguous(weight_out_in.transpose()))
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.lora {
            None => linear(x, self.weight.val(), None),
            Some(adapter) if adapter.fuses_with_base() => {
                let (a, b) = adapter.factors(x.dtype());
                lora_linear(x, self.weight.val(), a, b)
            }
            Some(adapter) => linear(x.clone(), self.weight.val(), None) + adapter.forward(x),
        }
    }

    /// `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.val().dims()
    }
}

/// Root-mean-square norm computed in f32 whatever the model dtype, as HF's `LlamaRMSNorm`:
/// `weight * (x / sqrt(mean(x²) + eps)).to(dtype)`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        // One operation (crate::rms_norm): fused on LibTorch CUDA, a lean backward everywhere.
        rms_norm(x, self.weight.val(), self.eps)
    }
}

#[derive(Module, Debug)]
pub struct SelfAttention {
    pub q_proj: Projection,
    pub k_proj: Projection,
    pub v_proj: Projection,
    pub o_proj: Projection,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl SelfAttention {
    /// `x`: `[B, T, hidden]`; `cache`: where this layer's keys and values go.
    fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &AttentionMask,
        cache: KvSlot<'_>,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        // `[B, T, n·D]` → `[B, n, T, D]`; with one position that is a single reshape (a
        // decode step is bound by the number of tensor ops, so every op counts there).
        let heads = |t: Tensor<3>, n: usize| {
            if seq == 1 {
                t.reshape([batch, n, 1, self.head_dim])
            } else {
                t.reshape([batch, seq, n, self.head_dim]).swap_dims(1, 2)
            }
        };
        let q = heads(self.q_proj.forward(x.clone()), self.num_heads);
        let k = heads(self.k_proj.forward(x.clone()), self.num_kv_heads);
        let v = heads(self.v_proj.forward(x), self.num_kv_heads);
        let q = apply_rotary(q, cos, sin);
        let k = apply_rotary(k, cos, sin);
        let (k, v) = match cache {
            KvSlot::None => (k, v),
            KvSlot::Append { cache, layer } => cache.append(layer, k, v),
            KvSlot::Fixed {
                keys,
                values,
                position,
            } => {
                // The position is a device tensor, so the same ops serve every decode step
                // (what a replayed CUDA graph needs); the buffers are written in place.
                let keys_all = kv_write(keys.take().expect("fixed KV buffer"), position.clone(), k);
                let values_all =
                    kv_write(values.take().expect("fixed KV buffer"), position.clone(), v);
                *keys = Some(keys_all.clone());
                *values = Some(values_all.clone());
                (keys_all, values_all)
            }
        };
        let repeats = self.num_heads / self.num_kv_heads;
        let out = match mask {
            // Training: one differentiable op whose backward stores no [T, T] matrix.
            AttentionMask::Causal if q.device().is_autodiff() => causal_attention(
                q,
                repeat_kv(k, repeats),
                repeat_kv(v, repeats),
                1.0 / (self.head_dim as f64).sqrt(),
            ),
            // Plain causal: fused kernels (flash attention) skip the mask entirely; they need
            // as many key/value heads as query heads.
            AttentionMask::Causal => attention(
                q,
                repeat_kv(k, repeats),
                repeat_kv(v, repeats),
                None,
                None,
                AttentionModuleOptions {
                    is_causal: true,
                    ..Default::default()
                },
            ),
            AttentionMask::Explicit(mask) => {
                grouped_query_attention(q, k, v, mask.clone(), repeats)
            }
            AttentionMask::Packed(segments) => segment_attention(
                q,
                repeat_kv(k, repeats),
                repeat_kv(v, repeats),
                segments,
                1.0 / (self.head_dim as f64).sqrt(),
            ),
        };
        let out = if seq == 1 {
            out.reshape([batch, 1, self.num_heads * self.head_dim])
        } else {
            out.swap_dims(1, 2)
                .reshape([batch, seq, self.num_heads * self.head_dim])
        };
        self.o_proj.forward(out)
    }
}

/// Attention with `repeats` query heads per key/value head, without copying keys and values
/// `repeats` times: the query heads of a group are stacked along the query axis
/// (`[B, H, T, D]` → `[B, H/repeats, repeats·T, D]`), which is exact because every query
/// row is independent. `mask` is already in that grouped layout (`[B, 1, repeats·T, S]`).
///
/// During decoding this replaces a copy of the whole cache per layer and step by a reshape
/// of one position's queries.
fn grouped_query_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<4, Bool>,
    repeats: usize,
) -> Tensor<4> {
    let [batch, heads, seq, head_dim] = q.dims();
    let q = q.reshape([batch, heads / repeats, repeats * seq, head_dim]);
    let out = attention(q, k, v, Some(mask), None, AttentionModuleOptions::default());
    out.reshape([batch, heads, seq, head_dim])
}

/// A contiguous copy of a (transposed) matrix. Flattening a non-viewable layout forces
/// every backend to copy; GEMMs against contiguous weights are much faster on the CPU.
pub fn contiguous(matrix: Tensor<2>) -> Tensor<2> {
    let dims = matrix.dims();
    matrix.reshape([dims[0] * dims[1]]).reshape(dims)
}

/// Grouped-query attention: each key/value head serves `repeats` query heads.
///
/// Expanded explicitly because not every backend's fused attention accepts fewer KV heads
/// (LibTorch's SDPA needs `enable_gqa`, which burn does not pass).
fn repeat_kv(x: Tensor<4>, repeats: usize) -> Tensor<4> {
    if repeats == 1 {
        return x;
    }
    let [batch, kv_heads, seq, head_dim] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([batch, kv_heads, repeats, seq, head_dim])
        .reshape([batch, kv_heads * repeats, seq, head_dim])
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Projection,
    pub up_proj: Projection,
    pub down_proj: Projection,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj
            .forward(swiglu(gate, self.up_proj.forward(x)))
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: SelfAttention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    pub(crate) fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &AttentionMask,
        cache: KvSlot<'_>,
    ) -> Tensor<3> {
        let attended = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            cos,
            sin,
            mask,
            cache,
        );
        let x = x + attended;
        let mlp = self
            .mlp
            .forward(self.post_attention_layernorm.forward(x.clone()));
        x + mlp
    }

    /// [`DecoderLayer::forward`] without a cache as one checkpointed operation: under autodiff
    /// only `x` and the adapter factors are kept, and the layer runs again in the backward
    /// ([`crate::layer_checkpoint`]).
    fn forward_checkpointed(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &AttentionMask,
    ) -> Tensor<3> {
        // Constants enter both runs without autodiff; both runs use the module as it is (frozen
        // weights) with the factors the operation hands in.
        let (cos, sin) = (cos.clone().inner(), sin.clone().inner());
        let mask = mask.inner();
        let module = self.clone();
        // Adapter dropout must draw the same masks in both runs.
        let seed = self
            .has_lora_dropout()
            .then(|| crate::layer_checkpoint::dropout_seed(&x.device()));
        let layer: crate::layer_checkpoint::LayerFn = std::sync::Arc::new(move |x, factors| {
            if let Some(seed) = seed {
                x.device().seed(seed);
            }
            module
                .with_lora_factors(factors)
                .forward(x, &cos, &sin, &mask, KvSlot::None)
        });
        checkpointed_layer(x, self.lora_factors(), layer)
    }
}

/// Llama causal language model (`LlamaForCausalLM`).
#[derive(Module, Debug)]
pub struct Llama {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// Output head. When tied, a contiguous copy of `embed_tokens`ᵀ: a GEMM against a
    /// transposed view runs several times slower on the CPU backend.
    pub lm_head: Projection,
    /// Whether `lm_head` mirrors `embed_tokens` (then it is not exported).
    pub tied_lm_head: bool,
    /// Training without a cache recomputes each decoder layer in the backward pass instead of
    /// keeping its activations ([`crate::layer_checkpoint`]); off by default.
    #[module(skip)]
    pub checkpoint_layers: bool,
    /// Inference with plain f32 weights on the CPU (`flex`) runs on host kernels
    /// ([`crate::cpu`]) instead of burn's ops; on by default. Off forces the burn path (the
    /// reference the host path is tested against).
    #[module(skip)]
    pub host_kernels: bool,
    #[module(skip)]
    pub config: LlamaConfig,
    #[module(skip)]
    pub rope: Rope,
}

impl Llama {
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.weight.val().device()
    }

    /// Logits `[B, T, vocab]` in the model's float dtype.
    ///
    /// `tokens` and `attention_mask` are `[B, T]`; the mask is 1 for real tokens and 0 for
    /// padding (left padding for batches of different lengths). With a `cache`, `tokens`
    /// are the new tokens only and `attention_mask` covers only them: the cache remembers the
    /// mask of the positions it holds. Position ids are `cumsum(mask) - 1` over the whole
    /// sequence, as HF's `generate` computes them, so left-padded rows start at position 0.
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        self.logits(self.forward_hidden(tokens, attention_mask, cache))
    }

    /// The final-norm hidden states `[B, T, hidden]` (what [`Llama::logits`] maps to logits).
    /// Lets callers compute logits only at the positions they need.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        if cache.as_deref().is_none_or(KvCache::host_usable)
            && let Some(host) = CpuLlama::borrow(self)
        {
            return host.forward_hidden(tokens, attention_mask, cache);
        }
        assert!(
            cache.as_deref().is_none_or(KvCache::on_device),
            "a KvCache filled by the host path cannot continue on the burn path"
        );
        let [batch, seq] = tokens.dims();
        let [mask_batch, mask_seq] = attention_mask.dims();
        assert_eq!(
            [batch, seq],
            [mask_batch, mask_seq],
            "tokens and attention_mask must have the same shape"
        );
        let device = tokens.device();
        let (past, key_mask) = match cache.as_deref() {
            Some(cache) => match cache.key_mask() {
                Some(past_mask) => {
                    assert_eq!(
                        past_mask.dims()[0],
                        batch,
                        "batch size differs from the cache's"
                    );
                    (
                        past_mask.dims()[1],
                        Tensor::cat(vec![past_mask.clone(), attention_mask], 1),
                    )
                }
                None => (0, attention_mask),
            },
            None => (0, attention_mask),
        };
        let positions = key_mask
            .clone()
            .cumsum(1)
            .sub_scalar(1)
            .clamp_min(0)
            .narrow(1, past, seq);
        // A plain causal mask lets fused kernels skip reading a mask (flash attention on GPU).
        // Only without a cache: LibTorch aligns `is_causal` top-left when queries < keys.
        let plain_causal = past == 0 && key_mask.clone().min().into_scalar::<i64>() == 1;
        let mask = if plain_causal {
            AttentionMask::Causal
        } else {
            let forbidden = attention_mask_4d(key_mask.clone(), past, seq);
            let forbidden = grouped_mask(
                forbidden,
                self.config.num_attention_heads / self.config.num_kv_heads(),
            );
            AttentionMask::Explicit(if fused_attention_masks_true(&device) {
                forbidden
            } else {
                forbidden.bool_not()
            })
        };

        let x = self.embed_tokens.forward(tokens);
        let (cos, sin) = self.rope.cos_sin(positions, x.dtype(), &device);
        let x = self.run_layers(x, &cos, &sin, &mask, cache.as_deref_mut());
        if let Some(cache) = cache {
            cache.set_key_mask(key_mask);
        }
        self.norm.forward(x)
    }

    /// [`Llama::forward_hidden`] for rows that all start at position 0 and attend causally
    /// (right-padded rows: a real token never sees the padding after it), with the rotary
    /// frequencies already on the device ([`crate::rope::Rope::inv_freq_tensor`]). It reads
    /// nothing back from the device and copies nothing from the host, so a training step
    /// built on it can be captured as a CUDA graph; it also skips the mask check that costs
    /// [`Llama::forward_hidden`] a device synchronisation.
    pub fn forward_hidden_causal(&self, tokens: Tensor<2, Int>, inv_freq: &Tensor<1>) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        if CpuLlama::borrow(self).is_some() {
            let all = Tensor::<2, Int>::ones([batch, seq], &device);
            return self.forward_hidden(tokens, all, None);
        }
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &device)
            .unsqueeze_dim::<2>(0)
            .expand([batch, seq]);
        self.hidden_without_cache(tokens, positions, &AttentionMask::Causal, inv_freq)
    }

    /// [`Llama::forward_hidden_causal`] for packed rows: several examples back to back in a
    /// row, `positions` counting from 0 at each example's start, and attention kept within
    /// each example ([`Segments`]), so that every example's hidden states equal those of the
    /// example run alone, with no padding computed between them. Like the causal forward it
    /// neither reads from the device nor copies from the host.
    pub fn forward_hidden_packed(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        segments: &Segments,
        inv_freq: &Tensor<1>,
    ) -> Tensor<3> {
        let mask = AttentionMask::Packed(segments.clone());
        self.hidden_without_cache(tokens, positions, &mask, inv_freq)
    }

    /// Embedding, the decoder layers under `mask` and the final norm, with no cache and the
    /// rotary frequencies already on the device.
    fn hidden_without_cache(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        mask: &AttentionMask,
        inv_freq: &Tensor<1>,
    ) -> Tensor<3> {
        let x = self.embed_tokens.forward(tokens);
        let (cos, sin) = self.rope.cos_sin_with(positions, inv_freq, x.dtype());
        let x = self.run_layers(x, &cos, &sin, mask, None);
        self.norm.forward(x)
    }

    /// The decoder layers over embedded `x`, each appending to `cache` where there is one.
    fn run_layers(
        &self,
        mut x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &AttentionMask,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        for (index, layer) in self.layers.iter().enumerate() {
            let slot = match cache.as_deref_mut() {
                Some(cache) => KvSlot::Append {
                    cache,
                    layer: index,
                },
                None => KvSlot::None,
            };
            x = match slot {
                KvSlot::None if self.checkpoint_layers && x.is_autodiff() => {
                    layer.forward_checkpointed(x, cos, sin, mask)
                }
                slot => layer.forward(x, cos, sin, mask, slot),
            };
        }
        x
    }

    /// Maps hidden states `[B, T, hidden]` to logits `[B, T, vocab]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        if let Some(host) = CpuLlama::borrow(self) {
            return host.logits(hidden);
        }
        self.lm_head.forward(hidden)
    }
}

/// Where a layer's keys and values go.
pub(crate) enum KvSlot<'a> {
    /// No cache: attend to this forward's positions only.
    None,
    /// Append to layer `layer` of a growing cache.
    Append {
        cache: &'a mut KvCache,
        layer: usize,
    },
    /// Write into fixed buffers `[B, kv_heads, capacity, head_dim]` at `position` (`[1]`, a
    /// device tensor); attend to the whole buffers.
    Fixed {
        keys: &'a mut Option<Tensor<4>>,
        values: &'a mut Option<Tensor<4>>,
        position: &'a Tensor<1, Int>,
    },
}

/// How one forward restricts attention (the same for every layer).
#[derive(Debug, Clone)]
pub(crate) enum AttentionMask {
    /// Plain causal: no padding before a real token, no cache.
    Causal,
    /// `[B, 1, repeats·T, past + T]` (the grouped-query layout of
    /// [`grouped_query_attention`]) in the device's fused-attention mask convention.
    Explicit(Tensor<4, Bool>),
    /// Packed rows: causal within each example, nothing across examples.
    Packed(Segments),
}

impl AttentionMask {
    /// The same mask without autodiff (for a checkpointed layer's two runs).
    fn inner(&self) -> Self {
        match self {
            Self::Causal => Self::Causal,
            Self::Explicit(mask) => Self::Explicit(mask.clone().inner()),
            Self::Packed(segments) => Self::Packed(segments.inner()),
        }
    }
}

/// Repeats each query row's mask for the `repeats` query heads stacked along the query axis:
/// `[B, 1, T, S]` → `[B, 1, repeats·T, S]`, once per forward rather than once per layer.
pub(crate) fn grouped_mask(mask: Tensor<4, Bool>, repeats: usize) -> Tensor<4, Bool> {
    if repeats == 1 {
        return mask;
    }
    let [batch, _, seq, keys] = mask.dims();
    mask.unsqueeze_dim::<5>(1)
        .expand([batch, 1, repeats, seq, keys])
        .reshape([batch, 1, repeats * seq, keys])
}

/// Whether the device's fused attention drops keys where the boolean mask is true (burn's
/// documented convention). burn-tch 0.22 hands burn's mask straight to PyTorch's SDPA,
/// where true means "attend": probed once per device with a two-key attention so the model
/// is right either way.
pub(crate) fn fused_attention_masks_true(device: &Device) -> bool {
    static PROBED: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());
    let key = format!("{device:?}");
    let mut probed = PROBED.lock().expect("probe cache lock");
    if let Some((_, masks_true)) = probed.iter().find(|(k, _)| *k == key) {
        return *masks_true;
    }
    let query = Tensor::<4>::ones([1, 1, 1, 1], device);
    let keys = Tensor::<4>::zeros([1, 1, 2, 1], device);
    let values = Tensor::<4>::from_data(TensorData::new(vec![0.0f32, 1.0], [1, 1, 2, 1]), device);
    let mask =
        Tensor::<4, Bool>::from_data(TensorData::new(vec![false, true], [1, 1, 1, 2]), device);
    let out = attention(
        query,
        keys,
        values,
        Some(mask),
        None,
        AttentionModuleOptions::default(),
    );
    // Key 1 (value 1.0) masked → 0.0; key 0 masked instead → 1.0.
    let masks_true = out.into_scalar::<f32>() < 0.5;
    probed.push((key, masks_true));
    masks_true
}

/// The boolean attention mask `[B, 1, T, past + T]`, true where a query may not look:
/// future keys and padding keys. Built once per forward and shared by all layers.
///
/// A query always sees itself, so that padding rows (which would otherwise see nothing)
/// stay finite on every backend; real rows are unaffected because their own key is real.
fn attention_mask_4d(key_mask: Tensor<2, Int>, past: usize, seq: usize) -> Tensor<4, Bool> {
    let device = key_mask.device();
    let [batch, keys] = key_mask.dims();
    let rows =
        Tensor::<1, Int>::arange(past as i64..(past + seq) as i64, &device).reshape([seq, 1]);
    let cols = Tensor::<1, Int>::arange(0..keys as i64, &device).reshape([1, keys]);
    let causal = cols
        .clone()
        .lower_equal(rows.clone())
        .reshape([1, 1, seq, keys]);
    let diagonal = cols.equal(rows).reshape([1, 1, seq, keys]);
    let key_real = key_mask.equal_elem(1).reshape([batch, 1, 1, keys]);
    key_real.bool_and(causal).bool_or(diagonal).bool_not()
}

#[cfg(test)]
pub(crate) mod tests {
    use burn::tensor::{FloatDType, TensorData};

    use super::*;
    use crate::generate::left_padded;

    pub(crate) fn tiny_model(seed: u64) -> (Llama, Device) {
        let device = Device::flex();
        let model = Llama::random(&LlamaConfig::tiny_for_tests(), seed, &device).unwrap();
        (model, device)
    }

    pub(crate) fn to_vec<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
        tensor
            .cast(FloatDType::F32)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
    }

    pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Each of `ours` (one gradient per factor) within `tolerance` × the largest magnitude of the
    /// matching `reference` gradient, and no reference gradient (near) zero, which would make the
    /// comparison vacuous.
    pub(crate) fn assert_gradients_close(
        ours: &[Vec<f32>],
        reference: &[Vec<f32>],
        tolerance: f32,
    ) {
        assert_eq!(ours.len(), reference.len(), "one gradient per factor");
        for (index, (ours, reference)) in ours.iter().zip(reference).enumerate() {
            let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(scale > 1e-3, "factor {index} has a gradient");
            let diff = max_abs_diff(ours, reference);
            assert!(
                diff <= tolerance * scale,
                "factor {index}: {diff} against {scale}"
            );
        }
    }

    fn single_logits(model: &Llama, prompt: &[u32], device: &Device) -> Vec<f32> {
        let (tokens, mask) = left_padded(&[prompt], device);
        to_vec(model.forward(tokens, mask, None))
    }

    fn prompts() -> Vec<Vec<u32>> {
        vec![
            vec![5, 17, 200],
            vec![1, 2, 3, 4, 5, 6, 7],
            vec![9, 250, 33, 33, 101],
        ]
    }

    #[test]
    fn padding_and_batching_do_not_change_logits() {
        let (model, device) = tiny_model(1);
        let prompts = prompts();
        let batch: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let (tokens, mask) = left_padded(&batch, &device);
        let batched = to_vec(model.forward(tokens, mask, None));
        let vocab = model.config().vocab_size;
        let width = 7;
        for (row, prompt) in prompts.iter().enumerate() {
            let alone = single_logits(&model, prompt, &device);
            let pad = width - prompt.len();
            let start = (row * width + pad) * vocab;
            let in_batch = &batched[start..start + prompt.len() * vocab];
            let diff = max_abs_diff(&alone, in_batch);
            assert!(diff < 1e-4, "row {row}: max diff {diff}");
        }
        // Logits vary with the input, so the comparison above is not vacuous.
        let first = single_logits(&model, &prompts[0], &device);
        assert!(max_abs_diff(&first[..vocab], &first[vocab..2 * vocab]) > 1e-3);
    }

    /// The causal forward of right-padded rows (no mask, frequencies already on the device)
    /// gives the logits of the forward with an all-ones mask, on the burn path and on the host
    /// path; and it is causal: a token changed late leaves the earlier positions' logits alone.
    #[test]
    fn causal_forward_matches_the_all_ones_masked_forward() {
        for host_kernels in [false, true] {
            let (mut model, device) = tiny_model(4);
            model.host_kernels = host_kernels;
            let ids = vec![5i64, 17, 200, 3, 1, 2, 3, 4];
            let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, 4]), &device);
            let ones = Tensor::<2, Int>::ones([2, 4], &device);
            let masked = to_vec(model.forward(tokens.clone(), ones, None));
            let inv_freq = model.rope.inv_freq_tensor(&device);
            let causal = to_vec(model.logits(model.forward_hidden_causal(tokens, &inv_freq)));
            let diff = max_abs_diff(&masked, &causal);
            assert!(diff < 1e-5, "host kernels {host_kernels}: max diff {diff}");

            let mut changed = ids;
            changed[3] = 9;
            let changed = Tensor::<2, Int>::from_data(TensorData::new(changed, [2, 4]), &device);
            let later = to_vec(model.logits(model.forward_hidden_causal(changed, &inv_freq)));
            let vocab = model.config().vocab_size;
            assert!(max_abs_diff(&causal[..3 * vocab], &later[..3 * vocab]) < 1e-6);
            assert!(
                max_abs_diff(&causal[3 * vocab..4 * vocab], &later[3 * vocab..4 * vocab]) > 1e-3
            );
        }
    }

    /// Packed rows: each example's logits equal those of the example run alone, under
    /// autodiff (the training path) and without it, checkpointed or not.
    #[test]
    fn packed_forward_matches_each_example_alone() {
        let examples: [&[i64]; 3] = [&[5, 17, 200], &[3, 1, 2, 3, 4], &[9, 8, 7, 6]];
        // Row 0 holds the first two examples; row 1 the third, then 4 positions of padding.
        let width = 8;
        let (rows, placed) = (vec![vec![3, 5], vec![4]], [(0, 0), (0, 3), (1, 0)]);
        for (autodiff, checkpointed) in [(false, false), (true, false), (true, true)] {
            let (mut model, device) = tiny_model(4);
            model.checkpoint_layers = checkpointed;
            let device = if autodiff { device.autodiff() } else { device };
            let (mut ids, mut positions) = (vec![0i64; 2 * width], vec![0i64; 2 * width]);
            for (example, &(row, at)) in examples.iter().zip(&placed) {
                for (offset, &id) in example.iter().enumerate() {
                    ids[row * width + at + offset] = id;
                    positions[row * width + at + offset] = offset as i64;
                }
            }
            let tensor = |values: Vec<i64>| {
                Tensor::<2, Int>::from_data(TensorData::new(values, [2, width]), &device)
            };
            let segments = Segments::from_row_lengths(&rows, width, &device);
            let inv_freq = model.rope.inv_freq_tensor(&device);
            let hidden =
                model.forward_hidden_packed(tensor(ids), tensor(positions), &segments, &inv_freq);
            let packed = to_vec(model.logits(hidden));
            let vocab = model.config().vocab_size;
            for (example, &(row, at)) in examples.iter().zip(&placed) {
                let alone = Tensor::<2, Int>::from_data(
                    TensorData::new(example.to_vec(), [1, example.len()]),
                    &device,
                );
                let alone = to_vec(model.logits(model.forward_hidden_causal(alone, &inv_freq)));
                let start = (row * width + at) * vocab;
                let diff = max_abs_diff(&alone, &packed[start..start + alone.len()]);
                assert!(
                    diff < 1e-5,
                    "autodiff {autodiff}, checkpointed {checkpointed}, example at {row}/{at}: {diff}"
                );
            }
        }
    }

    #[test]
    fn kv_cache_decoding_matches_full_forward() {
        let (model, device) = tiny_model(2);
        let prompts = prompts();
        let batch: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let (tokens, mask) = left_padded(&batch, &device);
        let full = to_vec(model.forward(tokens.clone(), mask.clone(), None));
        let [rows, width] = tokens.dims();
        let vocab = model.config().vocab_size;

        // Prefill 4 positions (row 0 is still all padding there), then one token at a time.
        let prefill = 4;
        let mut cache = KvCache::new();
        let mut pieces = vec![to_vec(model.forward(
            tokens.clone().narrow(1, 0, prefill),
            mask.clone().narrow(1, 0, prefill),
            Some(&mut cache),
        ))];
        for position in prefill..width {
            pieces.push(to_vec(model.forward(
                tokens.clone().narrow(1, position, 1),
                mask.clone().narrow(1, position, 1),
                Some(&mut cache),
            )));
        }
        assert_eq!(cache.seq_len(), width);
        // Reassemble [rows, width, vocab] from the pieces and compare real positions.
        let mask_host = mask
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap();
        let mut worst = 0.0f32;
        for row in 0..rows {
            for position in 0..width {
                if mask_host[row * width + position] == 0 {
                    continue;
                }
                let cached = if position < prefill {
                    &pieces[0][(row * prefill + position) * vocab..][..vocab]
                } else {
                    &pieces[1 + position - prefill][row * vocab..][..vocab]
                };
                let expected = &full[(row * width + position) * vocab..][..vocab];
                worst = worst.max(max_abs_diff(cached, expected));
            }
        }
        assert!(worst < 1e-4, "max diff {worst}");
    }

    #[test]
    fn fully_padded_rows_stay_finite() {
        let (model, device) = tiny_model(3);
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::new(vec![0i64, 0, 0, 4, 0, 0, 0, 0], [2, 4]),
            &device,
        );
        let mask = Tensor::<2, Int>::from_data(
            TensorData::new(vec![0i64, 0, 0, 1, 0, 0, 0, 0], [2, 4]),
            &device,
        );
        let logits = to_vec(model.forward(tokens, mask, None));
        assert!(logits.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn flex_attention_follows_burns_mask_convention() {
        assert!(fused_attention_masks_true(&Device::flex()));
    }

    #[test]
    fn rms_norm_matches_hand_computation() {
        let device = Device::flex();
        let norm = RmsNorm {
            weight: Param::from_tensor(Tensor::<1>::from_data([2.0f32, 0.5], &device)),
            eps: 1e-5,
        };
        let x = Tensor::<3>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 1, 2]), &device);
        let out = to_vec(norm.forward(x));
        let rms = ((9.0f32 + 16.0) / 2.0 + 1e-5).sqrt();
        assert!(max_abs_diff(&out, &[2.0 * 3.0 / rms, 0.5 * 4.0 / rms]) < 1e-6);
    }

    #[test]
    fn grouped_query_attention_shares_kv_heads() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new((0..8).map(|v| v as f32).collect::<Vec<_>>(), [1, 2, 2, 2]),
            &device,
        );
        let repeated = to_vec(repeat_kv(x, 2));
        // Heads [h0, h0, h1, h1]: HF's repeat_kv order.
        assert_eq!(
            repeated,
            vec![
                0., 1., 2., 3., 0., 1., 2., 3., 4., 5., 6., 7., 4., 5., 6., 7.
            ]
        );
    }
}
