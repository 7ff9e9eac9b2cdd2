//! A LoRA projection `x·W + (x·A)·B` as one differentiable operation, its low-rank term
//! accumulated into the base product's output and into the input gradient.
//!
//! Composed, the base product and the adapter's product are summed by an add kernel in the
//! forward, and autodiff sums the input's two gradients (through `W` and through `A`) with
//! another: one pass over a `[tokens × width]` activation per projection and direction, 14 per
//! decoder layer (the profile in docs/benchmarks.md counts 794 bf16 adds, 12.8 ms, in a
//! 2048-token step of the 8B model; this operation measured 2.8% of the step). As one operation
//! on LibTorch, `(x·A)·B` is added by `addmm_` into `x·W` in place (the GEMM's epilogue reads
//! the output once) and `(dy·Bᵀ)·Aᵀ` likewise into `dy·Wᵀ`, as Unsloth's `fast_lora.py` does.
//! Other backends run [`reference_forward`] and [`reference_backward`] in their own ops.
//! `B` arrives already scaled (`scale·B`, see [`crate::lora::LoraAdapter::forward`]).

// burn-tch (LibTorch) is deprecated upstream; it is the backend that links LibTorch, and the
// backend_extension macro names it in generated code.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{Shape, Tensor};

/// The gradients of `x·W + (x·A)·B`: `(x, W, A, B)`. One not asked for is a zero-stride view
/// of a single zero (no allocation of its shape).
pub type LoraGrads<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
);

/// `x·W + (x·A)·B` for `x` `[rows, in]`, `W` `[in, out]`, `A` `[in, r]`, `B` `[r, out]`.
#[backend_extension(Flex: cfg(feature = "flex"), LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait LoraLinearOps: Backend {
    /// The output and `x·A` (kept for the backward).
    fn lora_linear_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_forward::<Self>(x, weight, a, b)
    }

    /// The gradients, those of `x` and `W` only when asked for (`A` and `B` always train).
    #[allow(clippy::too_many_arguments)]
    fn lora_linear_backward(
        grad_output: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        xa: FloatTensor<Self>,
        want_x: bool,
        want_weight: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        reference_backward::<Self>(grad_output, [x, weight, a, b, xa], [want_x, want_weight])
    }

    fn lora_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::lora_linear_forward(x, weight, a, b).0
    }
}

/// [`LoraLinearOps::lora_linear`] on `Tensor`s of any rank: `x` `[.., in]` is taken as rows.
pub fn lora_linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    a: Tensor<2>,
    b: Tensor<2>,
) -> Tensor<D> {
    let dims = x.dims();
    let width = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let out = weight.dims()[1];
    let rows_2d: Tensor<2> = x.reshape([rows, width]);
    let y = Tensor::<2>::from_dispatch(<Dispatch as LoraLinearOps>::lora_linear(
        rows_2d.into_dispatch(),
        weight.into_dispatch(),
        a.into_dispatch(),
        b.into_dispatch(),
    ));
    let mut out_dims = dims;
    out_dims[D - 1] = out;
    y.reshape(out_dims)
}

#[cfg(feature = "flex")]
impl LoraLinearOps for burn::backend::Flex {}

impl<B: Backend + LoraLinearOps, C: CheckpointStrategy> LoraLinearOps for Autodiff<B, C> {
    fn lora_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LoraLinearBackward;

        impl<B: Backend + LoraLinearOps> Backward<B, 4> for LoraLinearBackward {
            type State = [FloatTensor<B>; 5];

            fn backward(
                self,
                ops: Ops<Self::State, 4>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                #[cfg(test)]
                crate::op_tests::count_backward("lora_linear");
                let grad_output = grads.consume::<B>(&ops.node);
                let [x, weight, a, b, xa] = ops.state;
                let [x_node, weight_node, a_node, b_node] = ops.parents;
                let (grad_x, grad_weight, grad_a, grad_b) = B::lora_linear_backward(
                    grad_output,
                    x,
                    weight,
                    a,
                    b,
                    xa,
                    x_node.is_some(),
                    weight_node.is_some(),
                );
                let computed = [grad_x, grad_weight, grad_a, grad_b];
                for (node, grad) in [x_node, weight_node, a_node, b_node]
                    .into_iter()
                    .zip(computed)
                {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        let parents = [x.node(), weight.node(), a.node(), b.node()];
        let (x, weight, a, b) = (
            x.into_primitive(),
            weight.into_primitive(),
            a.into_primitive(),
            b.into_primitive(),
        );
        match LoraLinearBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (output, xa) =
                    B::lora_linear_forward(x.clone(), weight.clone(), a.clone(), b.clone());
                prep.finish([x, weight, a, b, xa], output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::lora_linear_forward(x, weight, a, b).0),
        }
    }
}

/// The projection in the backend's own ops (what the composed code computed).
pub fn reference_forward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    a: FloatTensor<B>,
    b: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let xa = B::float_matmul(x.clone(), a);
    let output = B::float_add(B::float_matmul(x, weight), B::float_matmul(xa.clone(), b));
    (output, xa)
}

/// With `g = dy·Bᵀ`: `dx = dy·Wᵀ + g·Aᵀ`, `dW = xᵀ·dy`, `dA = xᵀ·g`, `dB = (x·A)ᵀ·dy`.
pub fn reference_backward<B: Backend>(
    grad_output: FloatTensor<B>,
    [x, weight, a, b, xa]: [FloatTensor<B>; 5],
    [want_x, want_weight]: [bool; 2],
) -> LoraGrads<B> {
    let grad_xa = B::float_matmul(grad_output.clone(), B::float_transpose(b));
    let grad_x = if want_x {
        B::float_add(
            B::float_matmul(grad_output.clone(), B::float_transpose(weight.clone())),
            B::float_matmul(grad_xa.clone(), B::float_transpose(a.clone())),
        )
    } else {
        not_asked::<B>(&x)
    };
    let x_t = B::float_transpose(x);
    let grad_weight = if want_weight {
        B::float_matmul(x_t.clone(), grad_output.clone())
    } else {
        not_asked::<B>(&weight)
    };
    let grad_a = B::float_matmul(x_t, grad_xa);
    let grad_b = B::float_matmul(B::float_transpose(xa), grad_output);
    (grad_x, grad_weight, grad_a, grad_b)
}

/// A gradient nobody reads, shaped like `like`: one zero expanded (a view).
fn not_asked<B: Backend>(like: &FloatTensor<B>) -> FloatTensor<B> {
    let shape = like.shape();
    let one = B::float_zeros(
        Shape::from(vec![1; shape.num_dims()]),
        &like.device(),
        like.dtype().into(),
    );
    B::float_expand(one, shape)
}

#[cfg(feature = "tch")]
mod libtorch {
    //! PyTorch's GEMMs, the low-rank term accumulated with `addmm_`.
    #![allow(deprecated)] // burn-tch is deprecated upstream; it is the backend that links LibTorch

    use super::{LoraGrads, LoraLinearOps, not_asked, reference_backward, reference_forward};
    use burn::backend::libtorch::TchTensor;
    use burn::backend::{LibTorch, TensorMetadata};
    use burn::tensor::Shape;

    /// Whether the four shapes can take the fused path: 2-D, and they chain.
    fn chains(x: &Shape, weight: &Shape, a: &Shape, b: &Shape) -> bool {
        let two = |s: &Shape| s.num_dims() == 2;
        two(x)
            && two(weight)
            && two(a)
            && two(b)
            && x[1] == weight[0]
            && x[1] == a[0]
            && a[1] == b[0]
            && b[1] == weight[1]
    }

    /// `TUNELOOP_FUSED_LORA=0` takes the reference path on LibTorch too (to compare).
    fn fused_enabled() -> bool {
        static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ENABLED.get_or_init(|| {
            std::env::var_os("TUNELOOP_FUSED_LORA").is_none_or(|value| value != "0")
        })
    }

    fn eligible(x: &TchTensor, weight: &TchTensor, a: &TchTensor, b: &TchTensor) -> bool {
        let kind = x.tensor.kind();
        fused_enabled()
            && [weight, a, b].iter().all(|t| t.tensor.kind() == kind)
            && chains(&x.shape(), &weight.shape(), &a.shape(), &b.shape())
    }

    impl LoraLinearOps for LibTorch {
        fn lora_linear_forward(
            x: TchTensor,
            weight: TchTensor,
            a: TchTensor,
            b: TchTensor,
        ) -> (TchTensor, TchTensor) {
            if !eligible(&x, &weight, &a, &b) {
                return reference_forward::<Self>(x, weight, a, b);
            }
            let xa = x.tensor.matmul(&a.tensor);
            let mut output = x.tensor.matmul(&weight.tensor);
            let _ = output
                .f_addmm_(&xa, &b.tensor)
                .expect("addmm of shapes that chain");
            (TchTensor::new(output), TchTensor::new(xa))
        }

        fn lora_linear_backward(
            grad_output: TchTensor,
            x: TchTensor,
            weight: TchTensor,
            a: TchTensor,
            b: TchTensor,
            xa: TchTensor,
            want_x: bool,
            want_weight: bool,
        ) -> LoraGrads<Self> {
            if !eligible(&x, &weight, &a, &b) || grad_output.tensor.kind() != x.tensor.kind() {
                return reference_backward::<Self>(
                    grad_output,
                    [x, weight, a, b, xa],
                    [want_x, want_weight],
                );
            }
            let dy = &grad_output.tensor;
            let grad_xa = dy.matmul(&b.tensor.tr());
            let grad_x = if want_x {
                let mut grad_x = dy.matmul(&weight.tensor.tr());
                let _ = grad_x
                    .f_addmm_(&grad_xa, &a.tensor.tr())
                    .expect("addmm of shapes that chain");
                TchTensor::new(grad_x)
            } else {
                not_asked::<Self>(&x)
            };
            let x_t = x.tensor.tr();
            let grad_weight = if want_weight {
                TchTensor::new(x_t.matmul(dy))
            } else {
                not_asked::<Self>(&weight)
            };
            let grad_a = TchTensor::new(x_t.matmul(&grad_xa));
            let grad_b = TchTensor::new(xa.tensor.tr().matmul(dy));
            (grad_x, grad_weight, grad_a, grad_b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op_tests::{backward_calls, max_abs_diff};
    use burn::tensor::module::linear;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn matches_the_composed_projection_and_its_gradients() {
        let device = Device::default().autodiff();
        device.seed(9);
        let (batch, seq, width, rank, out) = (2, 5, 12, 3, 7);
        let random = |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Default, &device);
        let x = Tensor::<3>::random([batch, seq, width], Distribution::Normal(0.0, 1.0), &device);
        let (weight, a, b) = (
            random([width, out]),
            random([width, rank]),
            random([rank, out]),
        );
        let loss_weights = Tensor::<3>::random([batch, seq, out], Distribution::Default, &device);
        let run = |fused: bool| {
            let x = x.clone().require_grad();
            let (weight, a, b) = (
                weight.clone().require_grad(),
                a.clone().require_grad(),
                b.clone().require_grad(),
            );
            let y = if fused {
                lora_linear(x.clone(), weight.clone(), a.clone(), b.clone())
            } else {
                linear(x.clone(), weight.clone(), None)
                    + linear(linear(x.clone(), a.clone(), None), b.clone(), None)
            };
            let grads = (y.clone() * loss_weights.clone()).sum().backward();
            let grad = |t: &Tensor<2>| t.grad(&grads).expect("gradient");
            (
                y.inner(),
                x.grad(&grads).expect("dx"),
                [grad(&weight), grad(&a), grad(&b)],
            )
        };
        let before = backward_calls("lora_linear");
        let (y, dx, [dw, da, db]) = run(true);
        assert_eq!(
            backward_calls("lora_linear"),
            before + 1,
            "custom backward ran"
        );
        let (y_ref, dx_ref, [dw_ref, da_ref, db_ref]) = run(false);
        assert!(max_abs_diff(y, y_ref) < 1e-5);
        assert!(max_abs_diff(dx, dx_ref) < 1e-5);
        assert!(max_abs_diff(dw, dw_ref) < 1e-5);
        assert!(max_abs_diff(da, da_ref) < 1e-5);
        assert!(max_abs_diff(db, db_ref) < 1e-5);
    }

    /// A frozen base weight (LoRA training) gets no gradient, the others are unchanged.
    #[test]
    fn a_frozen_weight_gets_no_gradient() {
        let device = Device::default().autodiff();
        device.seed(10);
        let random = |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Default, &device);
        let x = random([4, 6]).require_grad();
        let weight = random([6, 5]);
        let (a, b) = (random([6, 2]).require_grad(), random([2, 5]).require_grad());
        let grads = lora_linear(x.clone(), weight.clone(), a.clone(), b.clone())
            .sum()
            .backward();
        assert!(weight.grad(&grads).is_none());
        assert!(x.grad(&grads).is_some() && a.grad(&grads).is_some() && b.grad(&grads).is_some());
    }
}
