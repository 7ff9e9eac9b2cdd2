//! Per-layer activation checkpointing: a decoder layer as one differentiable operation that
//! keeps only its input (and the adapter factors it reads) and recomputes itself in the
//! backward pass.
//!
//! burn's own checkpointing strategy recomputes memory-bound element-wise ops and keeps every
//! matmul output and every fused operation's saved tensors, so it saves little in a LoRA model
//! (at the 8B shape, batch 4 × 2048 did not fit in 139 GiB with it). Here the forward runs the
//! layer on untracked tensors, so nothing is recorded; the backward runs it again on fresh
//! leaves holding the saved input and factors, back-propagates the incoming gradient through
//! that one-layer graph alone, and hands the input's and the factors' gradients to the outer
//! pass. Both runs go through the model's own layer code, so they cannot drift apart. burn
//! keeps one graph per connected set of tracked tensors, each behind its own lock, so the
//! nested pass on fresh leaves runs while the outer pass holds its graph.
//!
//! A layer then costs its input (`[B, T, hidden]`) plus, transiently in the backward, one
//! layer's activations; the price is one more forward per layer.

// burn-tch (LibTorch) is deprecated upstream; it is the backend that links LibTorch.
#![cfg_attr(feature = "tch", allow(deprecated))]

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, Backend, BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind,
    GradientCheckpointingStrategy,
};
use burn::tensor::Tensor;

/// A layer as a function of its input `[B, T, hidden]` and its adapter factors (in a fixed
/// order the caller chooses), returning its output. Called with untracked autodiff tensors for
/// the forward and with fresh autodiff leaves for the recompute.
pub type LayerFn = Arc<dyn Fn(Tensor<3>, Vec<Tensor<2>>) -> Tensor<3> + Send + Sync>;

/// Parents of the operation: the input and up to 14 factors (A and B of seven projections).
/// Unused slots repeat the input, as `x * x` lists `x` twice, and receive nothing.
const PARENTS: usize = 15;

/// Runs `layer(input, factors)`. Under autodiff it keeps only `input` and `factors` and runs
/// the layer again in the backward pass; without autodiff it just runs the layer.
///
/// # Panics
/// With more than 14 factors, or tensors of different backends.
pub fn checkpointed_layer(input: Tensor<3>, factors: Vec<Tensor<2>>, layer: LayerFn) -> Tensor<3> {
    assert!(
        factors.len() < PARENTS,
        "a checkpointed layer takes at most {} adapter factors, got {}",
        PARENTS - 1,
        factors.len()
    );
    let input = input.into_dispatch();
    let DispatchAutodiffContext::Enabled(strategy) = input.autodiff else {
        return layer(Tensor::from_dispatch(input), factors);
    };
    // A factor that does not use autodiff (a frozen adapter) enters as an untracked constant.
    let factors: Vec<DispatchTensor> = factors
        .into_iter()
        .map(|factor| factor.autodiff().into_dispatch())
        .collect();
    let DispatchTensorKind::Autodiff(kind) = &input.kind else {
        panic!("an autodiff float tensor without an autodiff primitive");
    };
    let output = match **kind {
        #[cfg(feature = "flex")]
        DispatchTensorKind::Flex(_) => {
            on_backend::<burn::backend::Flex>(input, factors, layer, strategy)
        }
        #[cfg(feature = "tch")]
        DispatchTensorKind::LibTorch(_) => {
            on_backend::<burn::backend::LibTorch>(input, factors, layer, strategy)
        }
        #[allow(unreachable_patterns)]
        _ => panic!("layer checkpointing supports the flex and LibTorch backends"),
    };
    Tensor::from_dispatch(output)
}

/// The operation on concrete backend `B`, with the autodiff strategy the tensors carry.
fn on_backend<B: PlainDispatch>(
    input: DispatchTensor,
    factors: Vec<DispatchTensor>,
    layer: LayerFn,
    strategy: GradientCheckpointingStrategy,
) -> DispatchTensor {
    let input = B::autodiff_from_dispatch(input);
    let factors = factors.into_iter().map(B::autodiff_from_dispatch).collect();
    let output = match strategy {
        GradientCheckpointingStrategy::Balanced => {
            record::<B, BalancedCheckpointing>(input, factors, layer)
        }
        GradientCheckpointingStrategy::Disabled => {
            record::<B, NoCheckpointing>(input, factors, layer)
        }
    };
    DispatchTensor {
        kind: DispatchTensorKind::Autodiff(Box::new(B::kind(BackendTensor::Autodiff(output)))),
        autodiff: DispatchAutodiffContext::Enabled(strategy),
    }
}

/// One concrete backend's tensors to and from dispatch tensors: what lets the backward, which
/// is generic over the concrete backend, call the model's layer code, and the front find the
/// concrete backend.
trait PlainDispatch: Backend {
    /// This backend's variant of [`DispatchTensorKind`].
    fn kind(tensor: BackendTensor<Self>) -> DispatchTensorKind;
    /// A plain float tensor of this backend from a dispatch tensor.
    fn float_from_dispatch(tensor: DispatchTensor) -> FloatTensor<Self>;
    /// An autodiff float tensor of this backend from a dispatch tensor.
    fn autodiff_from_dispatch(tensor: DispatchTensor) -> FloatTensor<Autodiff<Self>>;

    fn float_into_dispatch(tensor: FloatTensor<Self>) -> DispatchTensor {
        DispatchTensor {
            kind: Self::kind(BackendTensor::Float(tensor)),
            autodiff: DispatchAutodiffContext::Disabled,
        }
    }
}

macro_rules! plain_dispatch {
    ($backend:ty, $variant:ident) => {
        impl PlainDispatch for $backend {
            fn kind(tensor: BackendTensor<Self>) -> DispatchTensorKind {
                DispatchTensorKind::$variant(tensor)
            }

            fn float_from_dispatch(tensor: DispatchTensor) -> FloatTensor<Self> {
                match tensor.kind {
                    DispatchTensorKind::$variant(tensor) => tensor.float(),
                    other => panic!(
                        "expected a plain {} tensor, got {other:?}",
                        stringify!($variant)
                    ),
                }
            }

            fn autodiff_from_dispatch(tensor: DispatchTensor) -> FloatTensor<Autodiff<Self>> {
                match tensor.kind {
                    DispatchTensorKind::Autodiff(kind) => match *kind {
                        DispatchTensorKind::$variant(tensor) => tensor.autodiff(),
                        other => panic!(
                            "expected an autodiff {} tensor, got {other:?}",
                            stringify!($variant)
                        ),
                    },
                    other => panic!(
                        "expected an autodiff {} tensor, got {other:?}",
                        stringify!($variant)
                    ),
                }
            }
        }
    };
}

#[cfg(feature = "flex")]
plain_dispatch!(burn::backend::Flex, Flex);
#[cfg(feature = "tch")]
plain_dispatch!(burn::backend::LibTorch, LibTorch);

/// The layer on untracked autodiff tensors of backend `B` (which record nothing): the same
/// code path as the recompute, so both apply adapter dropout and the same attention kernels.
fn run_untracked<B: PlainDispatch>(
    input: FloatTensor<B>,
    factors: Vec<FloatTensor<B>>,
    layer: &LayerFn,
) -> FloatTensor<B> {
    let input = untracked::<B, 3>(input);
    let factors = factors.into_iter().map(untracked::<B, 2>).collect();
    B::autodiff_from_dispatch(layer(input, factors).into_dispatch()).into_primitive()
}

/// Runs the layer without recording it and records one node whose backward recomputes it.
fn record<B: PlainDispatch, C: CheckpointStrategy>(
    input: FloatTensor<Autodiff<B>>,
    factors: Vec<FloatTensor<Autodiff<B>>>,
    layer: LayerFn,
) -> FloatTensor<Autodiff<B>> {
    #[derive(Debug)]
    struct LayerBackward {
        factors: usize,
    }

    impl<B: PlainDispatch> Backward<B, PARENTS> for LayerBackward {
        type State = (FloatTensor<B>, Vec<FloatTensor<B>>, Recompute);

        fn backward(
            self,
            ops: Ops<Self::State, PARENTS>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            #[cfg(test)]
            tests::RECOMPUTES.with(|calls| calls.set(calls.get() + 1));
            let grad_output = grads.consume::<B>(&ops.node);
            let (input, factors, Recompute(layer)) = ops.state;
            let input: Tensor<3> = leaf::<B, 3>(input);
            let factors: Vec<Tensor<2>> = factors.into_iter().map(leaf::<B, 2>).collect();
            let output = layer(input.clone(), factors.clone());
            let grad_output = Tensor::<3>::from_dispatch(B::float_into_dispatch(grad_output));
            // d(sum(out ⊙ g))/d(out) = g: the incoming gradient, seeded into the recompute.
            let gradients = (output * grad_output).sum().backward();
            let [input_node, factor_nodes @ ..] = ops.parents;
            if let Some(node) = input_node
                && let Some(grad) = input.grad(&gradients)
            {
                grads.register::<B>(node.id, B::float_from_dispatch(grad.into_dispatch()));
            }
            for (node, factor) in factor_nodes.into_iter().zip(&factors).take(self.factors) {
                if let Some(node) = node
                    && let Some(grad) = factor.grad(&gradients)
                {
                    grads.register::<B>(node.id, B::float_from_dispatch(grad.into_dispatch()));
                }
            }
        }
    }

    let parents: [NodeGuard; PARENTS] = std::array::from_fn(|slot| match slot {
        0 => input.node(),
        slot => factors
            .get(slot - 1)
            .map_or_else(|| input.node(), |factor| factor.node()),
    });
    let count = factors.len();
    let input = input.into_primitive();
    let factors: Vec<FloatTensor<B>> = factors.into_iter().map(|f| f.into_primitive()).collect();
    let output = run_untracked::<B>(input.clone(), factors.clone(), &layer);
    match (LayerBackward { factors: count })
        .prepare::<C>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((input, factors, Recompute(layer)), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// `tensor` as an autodiff tensor that records nothing.
fn untracked<B: PlainDispatch, const D: usize>(tensor: FloatTensor<B>) -> Tensor<D> {
    Tensor::from_dispatch(B::float_into_dispatch(tensor)).autodiff()
}

/// A fresh autodiff leaf (a graph of its own) holding `tensor`.
fn leaf<B: PlainDispatch, const D: usize>(tensor: FloatTensor<B>) -> Tensor<D> {
    untracked::<B, D>(tensor).require_grad()
}

/// The seed a checkpointed layer with adapter dropout draws from the device's generator before
/// its forward (so a run seeded once stays reproducible) and sets again before the recompute, so
/// both runs draw the same masks.
///
/// # Panics
/// If the drawn number cannot be read back (the recompute would then draw other masks).
pub fn dropout_seed(device: &burn::tensor::Device) -> u64 {
    let draw = Tensor::<1>::random(
        [1],
        burn::tensor::Distribution::Uniform(0.0, u32::MAX as f64),
        device,
    );
    let values = draw
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .expect("a checkpointed layer reads its dropout seed back from the device");
    values[0] as u64
}

/// The layer function as backward state (which must be `Debug`).
#[derive(Clone)]
struct Recompute(LayerFn);

impl std::fmt::Debug for Recompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recompute")
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use burn::module::Module;
    use burn::tensor::{Device, Int, Tensor, TensorData};

    use crate::config::LlamaConfig;
    use crate::lora::{LoraAdapter, ProjectionKind};
    use crate::model::Llama;
    use crate::model::tests::{assert_gradients_close, max_abs_diff, to_vec};

    thread_local! {
        /// Recomputes of a checkpointed layer on this thread (other tests' training runs the
        /// operation concurrently on theirs).
        pub(super) static RECOMPUTES: Cell<usize> = const { Cell::new(0) };
    }

    /// Deterministic values in [-scale, scale) without the device generator, which other tests
    /// draw from concurrently.
    fn values(count: usize, salt: usize, scale: f32) -> Vec<f32> {
        (0..count)
            .map(|i| ((i * 2_654_435_761 + salt * 97) % 1000) as f32 / 500.0 - 1.0)
            .map(|v| v * scale)
            .collect()
    }

    /// A tiny random model on the CPU training device, base frozen, with non-zero adapters on
    /// four of the seven projections of every layer (so no factor's gradient is trivially 0).
    fn adapted() -> Llama {
        let device = Device::flex().autodiff();
        let mut model = Llama::random(&LlamaConfig::tiny_for_tests(), 7, &device)
            .unwrap()
            .no_grad();
        for layer in 0..model.layers.len() {
            for (salt, kind) in [
                ProjectionKind::Q,
                ProjectionKind::V,
                ProjectionKind::Up,
                ProjectionKind::Down,
            ]
            .into_iter()
            .enumerate()
            {
                let [input, output] = model.projection(layer, kind).dims();
                let matrix = |rows, cols, salt| {
                    Tensor::<2>::from_data(
                        TensorData::new(values(rows * cols, salt, 0.3), [rows, cols]),
                        &device,
                    )
                    .autodiff()
                };
                let a = matrix(input, 4, layer * 10 + salt);
                let b = matrix(4, output, layer * 10 + salt + 5);
                model.projection_mut(layer, kind).lora =
                    Some(LoraAdapter::new(a, b, 2.0, 0.0).unwrap());
            }
        }
        model
    }

    /// The loss (a fixed weighting of every logit) and every factor's gradient.
    fn loss_and_grads(model: &Llama, padded: bool) -> (Vec<f32>, Vec<Vec<f32>>) {
        let device = model.device();
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::new((0..24).map(|i| (i * 37 % 256) as i64).collect(), [2, 12]),
            &device,
        );
        let mut mask = vec![1i64; 24];
        if padded {
            // Right padding, as training batches have it: the masked attention path.
            mask[20..].fill(0);
        }
        let mask = Tensor::<2, Int>::from_data(TensorData::new(mask, [2, 12]), &device);
        let logits = model.forward(tokens, mask, None);
        let weights = Tensor::<3>::from_data(
            TensorData::new(
                values(logits.dims().iter().product(), 3, 1.0),
                logits.dims(),
            ),
            &device,
        );
        let loss = (logits * weights).sum();
        let value = to_vec(loss.clone());
        let gradients = loss.backward();
        let grads = model
            .layers
            .iter()
            .flat_map(|layer| layer.lora_factors())
            .map(|factor| {
                to_vec(
                    factor
                        .grad(&gradients)
                        .expect("every factor has a gradient"),
                )
            })
            .collect();
        (value, grads)
    }

    /// Checkpointed layers give the loss and factor gradients of the plain graph, through the
    /// fused causal attention (no padding) and the masked path (padding), and the backward
    /// recomputes each layer once.
    #[test]
    fn checkpointed_layers_match_the_plain_gradients() {
        for padded in [false, true] {
            let mut model = adapted();
            let plain = loss_and_grads(&model, padded);
            model.checkpoint_layers = true;
            let before = RECOMPUTES.with(Cell::get);
            let checkpointed = loss_and_grads(&model, padded);
            assert_eq!(
                RECOMPUTES.with(Cell::get),
                before + 2,
                "one recompute per layer"
            );
            let loss_diff = max_abs_diff(&plain.0, &checkpointed.0);
            assert!(
                loss_diff <= 1e-4 * plain.0[0].abs().max(1.0),
                "loss {loss_diff}"
            );
            assert_eq!(plain.1.len(), 16);
            assert_gradients_close(&checkpointed.1, &plain.1, 1e-4);
        }
    }

    /// The forward hands the layer untracked factors; they must stay untracked inside it, or the
    /// forward records the whole layer's graph (kept until a backward) and saves no memory.
    #[test]
    fn factors_handed_to_the_layer_keep_their_tracking() {
        let model = adapted();
        let layer = &model.layers[0];
        let untracked: Vec<Tensor<2>> = layer
            .lora_factors()
            .into_iter()
            .map(|factor| factor.inner().autodiff())
            .collect();
        let rebuilt = layer.with_lora_factors(untracked);
        assert!(
            rebuilt
                .lora_factors()
                .iter()
                .all(|factor| !factor.is_require_grad())
        );
        let leaves: Vec<Tensor<2>> = layer
            .lora_factors()
            .into_iter()
            .map(|factor| factor.inner().autodiff().require_grad())
            .collect();
        let rebuilt = layer.with_lora_factors(leaves);
        assert!(rebuilt.lora_factors().iter().all(Tensor::is_require_grad));
    }

    /// Without autodiff the operation is the layer itself.
    #[test]
    fn inference_is_unchanged() {
        let mut model = adapted().valid();
        let device = model.device();
        let tokens =
            Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 3], [1, 4]), &device);
        let mask = Tensor::<2, Int>::ones([1, 4], &device);
        let plain = to_vec(model.forward(tokens.clone(), mask.clone(), None));
        model.checkpoint_layers = true;
        assert_eq!(plain, to_vec(model.forward(tokens, mask, None)));
    }
}
