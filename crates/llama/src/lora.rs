//! LoRA adapters living inside the model's projections, so one forward serves base,
//! base + adapter (training, merge verification) and merged weights alike.
//!
//! The adapter computes `scale·(dropout(x)·A)·B` beside the frozen base: no weight-sized
//! dense update or gradient is ever formed while training. Its factors are kept in f32 whatever
//! the model dtype (as PEFT's default `autocast_adapter_dtype` does), so small optimiser
//! updates are not lost to bf16 rounding. The matmuls themselves run in the model's dtype by
//! default (Unsloth's way): the factors are cast down for each forward, `x·A` reads the same
//! bf16 activations as the base matmul, and the gradients are cast back up to the f32 factors.
//! In f32 the skinny adapter matmuls run without tensor cores and the activations make an extra
//! f32 copy each way; at the Llama-3.1-8B shape that was ~39 ms of a 233 ms step on an H200.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::module::linear;
use burn::tensor::{FloatDType, Tensor};

use crate::model::{DecoderLayer, Llama, Projection};
use crate::{Error, Result};

/// The seven projections of a Llama decoder layer that LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProjectionKind {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl ProjectionKind {
    pub const ALL: [ProjectionKind; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// HF/PEFT module name (`q_proj`, ...), as used in `target_modules`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// Path inside a decoder layer (`self_attn.q_proj`, `mlp.up_proj`, ...).
    pub fn module_path(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }
}

impl std::str::FromStr for ProjectionKind {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.hf_name() == name)
            .ok_or_else(|| {
                let accepted: Vec<_> = Self::ALL.iter().map(|k| k.hf_name()).collect();
                Error::InvalidArgument(format!(
                    "unknown LoRA target `{name}` (accepted: {})",
                    accepted.join(", ")
                ))
            })
    }
}

impl std::fmt::Display for ProjectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.hf_name())
    }
}

/// A low-rank update of one projection: `scale·(dropout(x)·A)·B`.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `[in, rank]`: PEFT's `lora_A.weight` transposed.
    pub a: Param<Tensor<2>>,
    /// `[rank, out]`: PEFT's `lora_B.weight` transposed.
    pub b: Param<Tensor<2>>,
    /// `alpha / rank`.
    pub scale: f64,
    pub dropout: Dropout,
    /// Run the adapter's matmuls in f32 (PEFT's way: activations cast up, result cast down)
    /// instead of the model's dtype. Kept to measure and check the default against.
    pub f32_compute: bool,
}

impl LoraAdapter {
    /// From factors `a` `[in, rank]` and `b` `[rank, out]` (cast to f32).
    pub fn new(a: Tensor<2>, b: Tensor<2>, scale: f64, dropout: f64) -> Result<Self> {
        let [_, rank_a] = a.dims();
        let [rank_b, _] = b.dims();
        if rank_a != rank_b || rank_a == 0 {
            return Err(Error::InvalidArgument(format!(
                "LoRA factors disagree on the rank: A is {:?}, B is {:?}",
                a.dims(),
                b.dims()
            )));
        }
        if !(0.0..1.0).contains(&dropout) {
            return Err(Error::InvalidArgument(format!(
                "LoRA dropout must be in [0, 1), got {dropout}"
            )));
        }
        Ok(Self {
            a: Param::from_tensor(a.cast(FloatDType::F32)),
            b: Param::from_tensor(b.cast(FloatDType::F32)),
            scale,
            dropout: DropoutConfig::new(dropout).init(),
            f32_compute: false,
        })
    }

    pub fn rank(&self) -> usize {
        self.a.val().dims()[1]
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        if self.f32_compute {
            let x = self.dropout.forward(x).cast(FloatDType::F32);
            return linear(linear(x, self.a.val(), None), self.b.val(), None)
                .mul_scalar(self.scale)
                .cast(dtype);
        }
        let (a, b) = self.factors(dtype);
        linear(linear(self.dropout.forward(x), a, None), b, None)
    }

    /// `A` and `scale·B` in `dtype`. The scale goes into B ([rank, out], tiny) rather than
    /// onto the [tokens, out] output, which saves a pass over the output in the forward and
    /// one in the backward. The casts are of the factors only; their backward casts the
    /// gradients back to f32.
    pub fn factors(&self, dtype: burn::tensor::DType) -> (Tensor<2>, Tensor<2>) {
        (
            self.a.val().cast(dtype),
            self.b.val().mul_scalar(self.scale).cast(dtype),
        )
    }

    /// Whether the projection can run as one operation with its base product
    /// ([`crate::lora_linear`]): the adapter computes in the model's dtype on the same input
    /// (no dropout mask between them).
    pub fn fuses_with_base(&self) -> bool {
        !self.f32_compute && self.dropout.prob == 0.0
    }

    /// The dense update `scale·A·B` `[in, out]` in f32 (for merging).
    pub fn delta(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale)
    }
}

impl Projection {
    /// This projection with its adapter folded into the weight (`W + scale·A·B`, rounded once
    /// to the weight's dtype) and removed.
    pub fn merged(self) -> Projection {
        match self.lora {
            None => self,
            Some(adapter) => {
                let weight = self.weight.val();
                let dtype = weight.dtype();
                let merged = (weight.cast(FloatDType::F32) + adapter.delta()).cast(dtype);
                Projection::new(merged)
            }
        }
    }
}

impl DecoderLayer {
    pub fn projection(&self, kind: ProjectionKind) -> &Projection {
        match kind {
            ProjectionKind::Q => &self.self_attn.q_proj,
            ProjectionKind::K => &self.self_attn.k_proj,
            ProjectionKind::V => &self.self_attn.v_proj,
            ProjectionKind::O => &self.self_attn.o_proj,
            ProjectionKind::Gate => &self.mlp.gate_proj,
            ProjectionKind::Up => &self.mlp.up_proj,
            ProjectionKind::Down => &self.mlp.down_proj,
        }
    }

    pub fn projection_mut(&mut self, kind: ProjectionKind) -> &mut Projection {
        match kind {
            ProjectionKind::Q => &mut self.self_attn.q_proj,
            ProjectionKind::K => &mut self.self_attn.k_proj,
            ProjectionKind::V => &mut self.self_attn.v_proj,
            ProjectionKind::O => &mut self.self_attn.o_proj,
            ProjectionKind::Gate => &mut self.mlp.gate_proj,
            ProjectionKind::Up => &mut self.mlp.up_proj,
            ProjectionKind::Down => &mut self.mlp.down_proj,
        }
    }

    /// A then B of each adapted projection, in [`ProjectionKind::ALL`] order (the order of
    /// [`Llama::adapted_projections`] within a layer).
    pub fn lora_factors(&self) -> Vec<Tensor<2>> {
        ProjectionKind::ALL
            .into_iter()
            .filter_map(|kind| self.projection(kind).lora.as_ref())
            .flat_map(|adapter| [adapter.a.val(), adapter.b.val()])
            .collect()
    }

    /// A copy whose adapters use `factors` (as [`DecoderLayer::lora_factors`] lists them).
    ///
    /// # Panics
    /// If `factors` does not hold one matrix per adapter factor.
    pub fn with_lora_factors(&self, factors: Vec<Tensor<2>>) -> DecoderLayer {
        let mut layer = self.clone();
        let mut factors = factors.into_iter();
        for kind in ProjectionKind::ALL {
            // As given: `Param::from_tensor` would make an untracked factor a leaf requiring
            // a gradient, and a checkpointed forward would record (and keep) the whole layer.
            if let Some(adapter) = layer.projection_mut(kind).lora.as_mut() {
                let a = factors.next().expect("a factor per A");
                let b = factors.next().expect("a factor per B");
                adapter.a = Param::initialized(adapter.a.id, a);
                adapter.b = Param::initialized(adapter.b.id, b);
            }
        }
        assert!(factors.next().is_none(), "one factor per adapter matrix");
        layer
    }

    /// Whether any adapter of the layer applies dropout.
    pub fn has_lora_dropout(&self) -> bool {
        ProjectionKind::ALL
            .into_iter()
            .filter_map(|kind| self.projection(kind).lora.as_ref())
            .any(|adapter| adapter.dropout.prob > 0.0)
    }
}

impl Llama {
    pub fn projection(&self, layer: usize, kind: ProjectionKind) -> &Projection {
        self.layers[layer].projection(kind)
    }

    pub fn projection_mut(&mut self, layer: usize, kind: ProjectionKind) -> &mut Projection {
        self.layers[layer].projection_mut(kind)
    }

    /// `(layer, kind)` of every projection carrying an adapter, in layer-then-kind order
    /// (the order optimiser state and checkpoints use).
    pub fn adapted_projections(&self) -> Vec<(usize, ProjectionKind)> {
        (0..self.layers.len())
            .flat_map(|layer| ProjectionKind::ALL.map(|kind| (layer, kind)))
            .filter(|&(layer, kind)| self.projection(layer, kind).lora.is_some())
            .collect()
    }

    /// The model with every adapter folded into its base weight.
    pub fn merge_adapters(mut self) -> Llama {
        for layer in 0..self.layers.len() {
            for kind in ProjectionKind::ALL {
                let slot = self.projection_mut(layer, kind);
                let projection = std::mem::replace(slot, placeholder(slot));
                *slot = projection.merged();
            }
        }
        self
    }

    /// Removes every adapter (back to the base model).
    pub fn remove_adapters(mut self) -> Llama {
        for layer in 0..self.layers.len() {
            for kind in ProjectionKind::ALL {
                self.projection_mut(layer, kind).lora = None;
            }
        }
        self
    }
}

/// A cheap stand-in while a projection is moved out of its slot (tensors are reference-counted).
fn placeholder(projection: &Projection) -> Projection {
    Projection {
        weight: Param::from_tensor(projection.weight.val()),
        lora: None,
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

    use super::*;
    use crate::generate::left_padded;
    use crate::model::tests::{assert_gradients_close, max_abs_diff, tiny_model, to_vec};

    fn random(shape: [usize; 2], seed: u64, device: &Device) -> Tensor<2> {
        device.seed(seed);
        Tensor::random(shape, Distribution::Normal(0.0, 0.05), device)
    }

    #[test]
    fn target_names_round_trip_and_unknown_names_list_the_accepted_ones() {
        for kind in ProjectionKind::ALL {
            assert_eq!(kind.hf_name().parse::<ProjectionKind>().unwrap(), kind);
        }
        let error = "qkv_proj"
            .parse::<ProjectionKind>()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("qkv_proj") && error.contains("gate_proj"),
            "{error}"
        );
    }

    #[test]
    fn adapter_changes_logits_and_merging_reproduces_them() {
        let (mut model, device) = tiny_model(7);
        let (tokens, mask) = left_padded(&[&[3, 9, 27, 81][..], &[5, 6][..]], &device);
        let base = to_vec(model.forward(tokens.clone(), mask.clone(), None));
        for layer in 0..model.layers.len() {
            for (index, kind) in ProjectionKind::ALL.into_iter().enumerate() {
                let [input, output] = model.projection(layer, kind).dims();
                let seed = (layer * 7 + index) as u64;
                let adapter = LoraAdapter::new(
                    random([input, 4], seed, &device),
                    random([4, output], seed + 100, &device),
                    2.0,
                    0.0,
                )
                .unwrap();
                model.projection_mut(layer, kind).lora = Some(adapter);
            }
        }
        assert_eq!(model.adapted_projections().len(), model.layers.len() * 7);
        let adapted = to_vec(model.forward(tokens.clone(), mask.clone(), None));
        assert!(
            max_abs_diff(&base, &adapted) > 1e-3,
            "adapter had no effect"
        );
        let merged = model.clone().merge_adapters();
        assert!(merged.adapted_projections().is_empty());
        let merged_logits = to_vec(merged.forward(tokens.clone(), mask.clone(), None));
        let diff = max_abs_diff(&adapted, &merged_logits);
        assert!(diff < 1e-4, "merged differs from base + adapter by {diff}");
        let removed = to_vec(model.remove_adapters().forward(tokens, mask, None));
        assert_eq!(removed, base);
    }

    #[test]
    fn mismatched_factors_are_rejected() {
        let device = Device::flex();
        let error = LoraAdapter::new(
            random([8, 4], 1, &device),
            random([3, 8], 2, &device),
            1.0,
            0.0,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("rank"), "{error}");
    }

    /// Deterministic values in [-scale, scale) without the device generator, which other tests
    /// draw from concurrently.
    fn values(count: usize, salt: usize, scale: f32) -> Vec<f32> {
        (0..count)
            .map(|i| ((i * 2_654_435_761 + salt * 97) % 1000) as f32 / 500.0 - 1.0)
            .map(|v| v * scale)
            .collect()
    }

    fn matrix(rows: usize, cols: usize, salt: usize, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(values(rows * cols, salt, 0.3), [rows, cols]),
            device,
        )
    }

    /// A tiny model on the CPU training device, base frozen, with non-zero adapters (scale 2) on
    /// all seven projections of every layer, computing in f32 or in the model's dtype.
    fn adapted(f32_compute: bool) -> Llama {
        let device = Device::flex().autodiff();
        let mut model = Llama::random(&crate::LlamaConfig::tiny_for_tests(), 7, &device)
            .unwrap()
            .no_grad();
        for layer in 0..model.layers.len() {
            for (salt, kind) in ProjectionKind::ALL.into_iter().enumerate() {
                let [input, output] = model.projection(layer, kind).dims();
                let salt = layer * 10 + salt;
                let mut adapter = LoraAdapter::new(
                    matrix(input, 4, salt, &device),
                    matrix(4, output, salt + 50, &device),
                    2.0,
                    0.0,
                )
                .unwrap();
                adapter.f32_compute = f32_compute;
                model.projection_mut(layer, kind).lora = Some(adapter);
            }
        }
        model
    }

    /// The loss (a fixed weighting of every logit) and every factor's gradient.
    fn loss_and_grads(model: &Llama) -> (f32, Vec<Vec<f32>>) {
        let device = model.device();
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::new((0..24).map(|i| (i * 37 % 256) as i64).collect(), [2, 12]),
            &device,
        );
        let mask = Tensor::<2, Int>::ones([2, 12], &device);
        let logits = model.forward(tokens, mask, None);
        let weights = Tensor::<3>::from_data(
            TensorData::new(
                values(logits.dims().iter().product(), 3, 1.0),
                logits.dims(),
            ),
            &device,
        );
        let loss = (logits * weights).sum();
        let value = to_vec(loss.clone())[0];
        let gradients = loss.backward();
        let grads = model
            .layers
            .iter()
            .flat_map(|layer| layer.lora_factors())
            .map(|factor| to_vec(factor.grad(&gradients).expect("a gradient per factor")))
            .collect();
        (value, grads)
    }

    /// In f32 the model-dtype path (scale folded into B) is the f32 path up to rounding: the
    /// loss and the gradients of all 28 factors agree within 1e-5 relative. A scale applied
    /// twice or not at all, or a factor cut off from the graph by a cast, would be off by 2x.
    #[test]
    fn model_dtype_adapters_give_the_f32_path_loss_and_gradients() {
        let (loss_f32, grads_f32) = loss_and_grads(&adapted(true));
        let (loss, grads) = loss_and_grads(&adapted(false));
        assert!(
            (loss - loss_f32).abs() <= 1e-5 * loss_f32.abs().max(1.0),
            "loss {loss} against {loss_f32}"
        );
        assert_eq!(grads.len(), 28);
        assert_gradients_close(&grads, &grads_f32, 1e-5);
    }

    /// With bf16 activations the adapter's matmuls run in bf16 and the factor gradients come
    /// back in f32; output, input gradient and factor gradients stay within 2% (of the largest
    /// magnitude) of PEFT's f32 computation on the same bf16 input.
    #[test]
    fn bf16_adapter_stays_close_to_the_f32_computation() {
        let device = Device::flex().autodiff();
        let run = |f32_compute: bool| {
            let mut adapter = LoraAdapter::new(
                matrix(64, 8, 1, &device),
                matrix(8, 96, 2, &device),
                2.0,
                0.0,
            )
            .unwrap();
            adapter.f32_compute = f32_compute;
            let x = matrix(32, 64, 3, &device)
                .cast(FloatDType::BF16)
                .require_grad();
            let y = adapter.forward(x.clone());
            assert_eq!(y.dtype(), x.dtype(), "the output keeps the input's dtype");
            let weights = matrix(32, 96, 4, &device).cast(FloatDType::BF16);
            let gradients = (y.clone() * weights).cast(FloatDType::F32).sum().backward();
            let a_grad = adapter.a.val().grad(&gradients).unwrap();
            let b_grad = adapter.b.val().grad(&gradients).unwrap();
            assert_eq!(
                a_grad.dtype(),
                burn::tensor::DType::F32,
                "f32 master factors"
            );
            vec![
                to_vec(y),
                to_vec(x.grad(&gradients).unwrap()),
                to_vec(a_grad),
                to_vec(b_grad),
            ]
        };
        let reference = run(true);
        let ours = run(false);
        for (name, (ours, reference)) in ["output", "x grad", "A grad", "B grad"]
            .iter()
            .zip(ours.iter().zip(&reference))
        {
            let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(scale > 1e-2, "{name} is not trivially zero");
            let diff = max_abs_diff(ours, reference);
            assert!(diff <= 2e-2 * scale, "{name}: {diff} against {scale}");
        }
    }
}
