//! The log-probability of each target token under the logits (the training loss's core), as
//! one differentiable operation.
//!
//! Composed from tensor ops, `log_softmax(logits.f32)` then a gather is about ten passes over
//! the `[B, T, vocab]` f32 logits forward and backward, and autodiff keeps several of those
//! full-size tensors for the backward (at the Llama-3.1-8B vocabulary of 128,256 and 2,048
//! positions each one is 1 GiB). As one operation it keeps only the logits (in their own
//! dtype) and the per-position log-sum-exp, and the backward recomputes the probabilities in
//! one go: `∂ log p(t) / ∂ logits = onehot(t) − softmax(logits)`. On LibTorch it runs
//! PyTorch's fused log-softmax; other backends run [`reference_forward`] and
//! [`reference_backward`] in their own ops.

// burn-tch (LibTorch) is deprecated upstream; it is the backend that links LibTorch, and the
// backend_extension macro names it in generated code.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{FloatDType, IndexingUpdateOp, Int, Shape, Tensor};

/// `log softmax(logits)[target]` over the last dimension of `[B, T, V]` logits.
#[backend_extension(Flex: cfg(feature = "flex"), LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait TargetLogProbOps: Backend {
    /// The target tokens' log-probabilities and each position's log-sum-exp (both `[B, T]`,
    /// f32) from logits `[B, T, V]` and targets `[B, T]`.
    fn target_log_probs_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_forward::<Self>(logits, targets)
    }

    /// The logits' gradient (in their dtype) from the log-probabilities' gradient `[B, T]`.
    fn target_log_probs_backward(
        grad: FloatTensor<Self>,
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        logsumexp: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference_backward::<Self>(grad, logits, targets, logsumexp)
    }

    /// The target tokens' log-probabilities (`[B, T]`, f32).
    fn target_log_probs(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        Self::target_log_probs_forward(logits, targets).0
    }
}

/// [`TargetLogProbOps::target_log_probs`] on `Tensor`s: `logits` `[B, T, V]` (any float dtype),
/// `targets` `[B, T]` → f32 `[B, T]`.
pub fn target_log_probs(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as TargetLogProbOps>::target_log_probs(
        logits.into_dispatch(),
        targets.into_dispatch(),
    ))
}

#[cfg(feature = "flex")]
impl TargetLogProbOps for burn::backend::Flex {}

impl<B: Backend + TargetLogProbOps, C: CheckpointStrategy> TargetLogProbOps for Autodiff<B, C> {
    fn target_log_probs(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct TargetLogProbBackward;

        impl<B: Backend + TargetLogProbOps> Backward<B, 1> for TargetLogProbBackward {
            type State = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                #[cfg(test)]
                crate::op_tests::count_backward("cross_entropy");
                let grad = grads.consume::<B>(&ops.node);
                let (logits, targets, logsumexp) = ops.state;
                let [logits_node] = ops.parents;
                if let Some(node) = logits_node {
                    let grad_logits =
                        B::target_log_probs_backward(grad, logits, targets, logsumexp);
                    grads.register::<B>(node.id, grad_logits);
                }
            }
        }

        let parents = [logits.node()];
        let logits = logits.into_primitive();
        match TargetLogProbBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (log_probs, logsumexp) =
                    B::target_log_probs_forward(logits.clone(), targets.clone());
                prep.finish((logits, targets, logsumexp), log_probs)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::target_log_probs_forward(logits, targets).0),
        }
    }
}

/// `[B, T, V]` → `[B, T]` and `[B, T, 1]` of the same batch and positions.
fn positions(shape: &Shape) -> (Shape, Shape) {
    (
        Shape::from([shape[0], shape[1]]),
        Shape::from([shape[0], shape[1], 1]),
    )
}

/// The operation in the backend's own ops (f32 throughout).
pub fn reference_forward<B: Backend>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let shape = logits.shape();
    let (flat, column) = positions(&shape);
    let x = B::float_cast(logits, FloatDType::F32);
    let max = B::float_max_dim(x.clone(), 2);
    let shifted = B::float_sub(x.clone(), B::float_expand(max.clone(), shape.clone()));
    let logsumexp = B::float_add(
        B::float_log(B::float_sum_dim(B::float_exp(shifted), 2)),
        max,
    );
    let picked = B::float_gather(2, x, B::int_reshape(targets, column));
    let log_probs = B::float_sub(picked, logsumexp.clone());
    (
        B::float_reshape(log_probs, flat.clone()),
        B::float_reshape(logsumexp, flat),
    )
}

/// `grad ⊙ (onehot(target) − softmax(logits))`, from the saved log-sum-exp.
pub fn reference_backward<B: Backend>(
    grad: FloatTensor<B>,
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    logsumexp: FloatTensor<B>,
) -> FloatTensor<B> {
    let dtype = FloatDType::from(logits.dtype());
    let shape = logits.shape();
    let (_, column) = positions(&shape);
    let column_of =
        |t: FloatTensor<B>| B::float_reshape(B::float_cast(t, FloatDType::F32), column.clone());
    let (grad, logsumexp) = (column_of(grad), column_of(logsumexp));
    let x = B::float_cast(logits, FloatDType::F32);
    let probs = B::float_exp(B::float_sub(x, B::float_expand(logsumexp, shape.clone())));
    let spread = B::float_neg(B::float_mul(probs, B::float_expand(grad.clone(), shape)));
    let grad_logits = B::float_scatter(
        2,
        spread,
        B::int_reshape(targets, column),
        grad,
        IndexingUpdateOp::Add,
    );
    B::float_cast(grad_logits, dtype)
}

#[cfg(feature = "tch")]
mod libtorch {
    //! PyTorch's fused log-softmax.
    #![allow(deprecated)] // burn-tch is deprecated upstream; it is the backend that links LibTorch

    use super::TargetLogProbOps;
    use burn::backend::LibTorch;
    use burn::backend::libtorch::TchTensor;
    use tch::Kind;

    /// f32 log-softmax over the last dimension: `torch.log_softmax(x, -1, dtype=float32)`, which
    /// reads f16 logits straight into f32 on CUDA and converts other dtypes first. (Calling
    /// `_log_softmax(half_to_float)` directly fails for bf16: measured on an H200.)
    fn log_softmax_f32(logits: &tch::Tensor) -> tch::Tensor {
        logits.log_softmax(-1, Kind::Float)
    }

    impl TargetLogProbOps for LibTorch {
        fn target_log_probs_forward(
            logits: TchTensor,
            targets: TchTensor,
        ) -> (TchTensor, TchTensor) {
            let index = targets.tensor.unsqueeze(-1);
            let log_probs = log_softmax_f32(&logits.tensor)
                .gather(-1, &index, false)
                .squeeze_dim(-1);
            // log p(t) = x_t − lse, so lse = x_t − log p(t): no second pass over the logits.
            let picked = logits
                .tensor
                .gather(-1, &index, false)
                .squeeze_dim(-1)
                .to_kind(Kind::Float);
            let logsumexp = picked - &log_probs;
            (TchTensor::new(log_probs), TchTensor::new(logsumexp))
        }

        fn target_log_probs_backward(
            grad: TchTensor,
            logits: TchTensor,
            targets: TchTensor,
            logsumexp: TchTensor,
        ) -> TchTensor {
            let grad = grad.tensor.to_kind(Kind::Float).unsqueeze(-1);
            // softmax = exp(x − lse), computed in place in one f32 buffer.
            let mut probs = logits.tensor.to_kind(Kind::Float);
            let _ = probs.g_sub_(&logsumexp.tensor.unsqueeze(-1));
            let _ = probs.exp_();
            let _ = probs.g_mul_(&grad.neg());
            let _ = probs.scatter_add_(-1, &targets.tensor.unsqueeze(-1), &grad);
            TchTensor::new(probs.to_kind(logits.tensor.kind()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op_tests::{backward_calls, max_abs_diff};
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Device, Distribution, TensorData};

    /// burn's log-softmax and gather, differentiated by burn, is the reference for the value
    /// and the logits' gradient.
    #[test]
    fn matches_log_softmax_and_its_gradient() {
        let device = Device::default().autodiff();
        device.seed(5);
        let (rows, width, vocab) = (2, 7, 33);
        let logits = Tensor::<3>::random(
            [rows, width, vocab],
            Distribution::Normal(0.0, 3.0),
            &device,
        );
        let targets: Vec<i64> = (0..rows * width).map(|i| (i * 13 % vocab) as i64).collect();
        let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [rows, width]), &device);
        let weights = Tensor::<2>::random([rows, width], Distribution::Default, &device);
        let run = |fused: bool| {
            let logits = logits.clone().require_grad();
            let picked = if fused {
                target_log_probs(logits.clone(), targets.clone())
            } else {
                log_softmax(logits.clone(), 2)
                    .gather(2, targets.clone().unsqueeze_dim::<3>(2))
                    .reshape([rows, width])
            };
            let grads = (picked.clone() * weights.clone()).sum().backward();
            (picked.inner(), logits.grad(&grads).expect("dlogits"))
        };
        let before = backward_calls("cross_entropy");
        let (picked, grad) = run(true);
        assert_eq!(
            backward_calls("cross_entropy"),
            before + 1,
            "custom backward ran"
        );
        let (picked_ref, grad_ref) = run(false);
        assert!(max_abs_diff(picked, picked_ref) < 1e-5);
        assert!(max_abs_diff(grad, grad_ref) < 1e-6);
    }
}
