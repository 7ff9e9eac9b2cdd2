//! RMS normalisation as one differentiable operation, with HF's `LlamaRMSNorm` numerics:
//! `weight * (x / sqrt(mean(x²) + eps)).to(dtype)`, the statistics in f32 whatever `x`'s dtype.
//!
//! Composed from tensor ops, one norm is about eight kernels, and autodiff keeps the f32
//! copy of `x` and the normalised rows for the backward (64 MiB per norm of a 2048-token row
//! of the 8B model, 4 GiB over its 65 norms). As one operation it keeps `x` and the per-row
//! reciprocal RMS only; on LibTorch CUDA it is PyTorch's fused kernel forward and backward
//! (`csrc/attention.cpp`), one launch each, which also shortens a decode step's CUDA graph.
//! Other backends run [`reference_forward`] and [`reference_backward`] in their own ops.

// burn-tch (LibTorch) is deprecated upstream; it is the backend that links LibTorch, and the
// backend_extension macro names it in generated code.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{FloatDType, Shape, Tensor};

/// RMS norm over the last dimension of `[B, T, H]` activations with an `[H]` weight.
#[backend_extension(Flex: cfg(feature = "flex"), LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait RmsNormOps: Backend {
    /// The normalised, weighted rows and each row's reciprocal RMS (`[B, T, 1]`, f32).
    fn rms_norm_forward(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_forward::<Self>(input, weight, eps)
    }

    /// Gradients of the input and (zeros unless `weight_grad`) of the weight.
    fn rms_norm_backward(
        grad_output: FloatTensor<Self>,
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        weight_grad: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_backward::<Self>(grad_output, input, weight, rstd, weight_grad)
    }

    /// The normalised, weighted rows.
    fn rms_norm(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        Self::rms_norm_forward(input, weight, eps).0
    }
}

/// [`RmsNormOps::rms_norm`] on `Tensor`s: `input` `[B, T, H]`, `weight` `[H]`.
pub fn rms_norm(input: Tensor<3>, weight: Tensor<1>, eps: f64) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as RmsNormOps>::rms_norm(
        input.into_dispatch(),
        weight.into_dispatch(),
        eps,
    ))
}

#[cfg(feature = "flex")]
impl RmsNormOps for burn::backend::Flex {}

impl<B: Backend + RmsNormOps, C: CheckpointStrategy> RmsNormOps for Autodiff<B, C> {
    fn rms_norm(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RmsNormBackward;

        impl<B: Backend + RmsNormOps> Backward<B, 2> for RmsNormBackward {
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                #[cfg(test)]
                crate::op_tests::count_backward("rms_norm");
                let grad_output = grads.consume::<B>(&ops.node);
                let (input, weight, rstd) = ops.state;
                let [input_node, weight_node] = ops.parents;
                let (grad_input, grad_weight) =
                    B::rms_norm_backward(grad_output, input, weight, rstd, weight_node.is_some());
                if let Some(node) = input_node {
                    grads.register::<B>(node.id, grad_input);
                }
                if let Some(node) = weight_node {
                    grads.register::<B>(node.id, grad_weight);
                }
            }
        }

        let parents = [input.node(), weight.node()];
        let (input, weight) = (input.into_primitive(), weight.into_primitive());
        match RmsNormBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (output, rstd) = B::rms_norm_forward(input.clone(), weight.clone(), eps);
                prep.finish((input, weight, rstd), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rms_norm_forward(input, weight, eps).0),
        }
    }
}

/// `[H]` → `shape` (`[B, T, H]`), a view.
fn weight_rows<B: Backend>(weight: FloatTensor<B>, shape: &Shape) -> FloatTensor<B> {
    let hidden = shape[2];
    B::float_expand(
        B::float_reshape(weight, Shape::from([1, 1, hidden])),
        shape.clone(),
    )
}

/// The norm in the backend's own ops (what the composed `Tensor` code computed before).
pub fn reference_forward<B: Backend>(
    input: FloatTensor<B>,
    weight: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let dtype = FloatDType::from(input.dtype());
    let shape = input.shape();
    let input = B::float_cast(input, FloatDType::F32);
    let variance = B::float_mean_dim(B::float_mul(input.clone(), input.clone()), 2);
    // x^-0.5 is one kernel (LibTorch runs it as rsqrt, as HF's `torch.rsqrt`).
    let rstd = B::float_powf_scalar(B::float_add_scalar(variance, eps.into()), (-0.5).into());
    let normed = B::float_mul(input, B::float_expand(rstd.clone(), shape.clone()));
    let output = B::float_mul(
        weight_rows::<B>(weight, &shape),
        B::float_cast(normed, dtype),
    );
    (output, rstd)
}

/// The norm's backward: with `n = x·rstd` and `g = dy ⊙ weight` (f32),
/// `dx = rstd ⊙ (g − n ⊙ mean(g ⊙ n))` and `dweight = Σ_rows dy ⊙ n`.
pub fn reference_backward<B: Backend>(
    grad_output: FloatTensor<B>,
    input: FloatTensor<B>,
    weight: FloatTensor<B>,
    rstd: FloatTensor<B>,
    weight_grad: bool,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let input_dtype = FloatDType::from(input.dtype());
    let weight_dtype = FloatDType::from(weight.dtype());
    let shape = input.shape();
    let f32 = |tensor: FloatTensor<B>| B::float_cast(tensor, FloatDType::F32);
    let rstd = B::float_expand(f32(rstd), shape.clone());
    let normed = B::float_mul(f32(input), rstd.clone());
    let grad_output = f32(grad_output);
    let grad_normed = B::float_mul(
        grad_output.clone(),
        weight_rows::<B>(f32(weight.clone()), &shape),
    );
    let mean = B::float_mean_dim(B::float_mul(grad_normed.clone(), normed.clone()), 2);
    let grad_input = B::float_mul(
        rstd,
        B::float_sub(
            grad_normed,
            B::float_mul(normed.clone(), B::float_expand(mean, shape.clone())),
        ),
    );
    let grad_weight = if weight_grad {
        let rows = shape[0] * shape[1];
        let per_row = B::float_reshape(
            B::float_mul(grad_output, normed),
            Shape::from([rows, shape[2]]),
        );
        B::float_reshape(B::float_sum_dim(per_row, 0), Shape::from([shape[2]]))
    } else {
        B::float_zeros(weight.shape(), &weight.device(), FloatDType::F32)
    };
    (
        B::float_cast(grad_input, input_dtype),
        B::float_cast(grad_weight, weight_dtype),
    )
}

#[cfg(feature = "tch")]
mod libtorch {
    //! PyTorch's fused RMS-norm kernels on CUDA (input and weight of one dtype).
    #![allow(deprecated)] // burn-tch is deprecated upstream; it is the backend that links LibTorch

    use super::{RmsNormOps, reference_backward, reference_forward};
    use crate::torch_shim::{call, owned, raw};
    use burn::backend::LibTorch;
    use burn::backend::libtorch::TchTensor;
    use std::ffi::{c_char, c_int, c_void};

    unsafe extern "C" {
        fn tl_rms_norm_forward(
            input: *const c_void,
            weight: *const c_void,
            eps: f64,
            output: *mut *mut c_void,
            rstd: *mut *mut c_void,
            error: *mut *mut c_char,
        ) -> c_int;
        fn tl_rms_norm_backward(
            grad_output: *const c_void,
            input: *const c_void,
            weight: *const c_void,
            rstd: *const c_void,
            weight_grad: bool,
            grad_input: *mut *mut c_void,
            grad_weight: *mut *mut c_void,
            error: *mut *mut c_char,
        ) -> c_int;
    }

    /// `TUNELOOP_FUSED_RMS_NORM=0` takes the reference path on CUDA too (to compare).
    fn fused_enabled() -> bool {
        static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ENABLED.get_or_init(|| {
            std::env::var_os("TUNELOOP_FUSED_RMS_NORM").is_none_or(|value| value != "0")
        })
    }

    fn fused_eligible(input: &TchTensor, weight: &TchTensor) -> bool {
        fused_enabled()
            && input.tensor.device().is_cuda()
            && input.tensor.kind() == weight.tensor.kind()
    }

    impl RmsNormOps for LibTorch {
        fn rms_norm_forward(
            input: TchTensor,
            weight: TchTensor,
            eps: f64,
        ) -> (TchTensor, TchTensor) {
            if !fused_eligible(&input, &weight) {
                return reference_forward::<Self>(input, weight, eps);
            }
            let (mut output, mut rstd) = (std::ptr::null_mut(), std::ptr::null_mut());
            call("fused RMS norm forward", |error| unsafe {
                // SAFETY: valid tensors in, fresh tensors out (or an error message).
                tl_rms_norm_forward(
                    raw(&input),
                    raw(&weight),
                    eps,
                    &mut output,
                    &mut rstd,
                    error,
                )
            });
            (owned(output), owned(rstd))
        }

        fn rms_norm_backward(
            grad_output: TchTensor,
            input: TchTensor,
            weight: TchTensor,
            rstd: TchTensor,
            weight_grad: bool,
        ) -> (TchTensor, TchTensor) {
            if !fused_eligible(&input, &weight) {
                return reference_backward::<Self>(grad_output, input, weight, rstd, weight_grad);
            }
            let (mut grad_input, mut grad_weight) = (std::ptr::null_mut(), std::ptr::null_mut());
            call("fused RMS norm backward", |error| unsafe {
                // SAFETY: as in the forward.
                tl_rms_norm_backward(
                    raw(&grad_output),
                    raw(&input),
                    raw(&weight),
                    raw(&rstd),
                    weight_grad,
                    &mut grad_input,
                    &mut grad_weight,
                    error,
                )
            });
            (owned(grad_input), owned(grad_weight))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op_tests::{backward_calls, max_abs_diff};
    use burn::tensor::{Device, Distribution};

    /// The composed `Tensor` code the operation replaces, differentiated by burn's autodiff.
    fn composed(x: Tensor<3>, weight: Tensor<1>, eps: f64) -> Tensor<3> {
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let variance = x.clone().square().mean_dim(2);
        let normed = x * variance.add_scalar(eps).powf_scalar(-0.5);
        weight.unsqueeze::<3>() * normed.cast(dtype)
    }

    #[test]
    fn matches_the_composed_norm_and_its_gradients() {
        let device = Device::default().autodiff();
        device.seed(3);
        let shape = [2, 5, 16];
        let x = Tensor::<3>::random(shape, Distribution::Normal(0.5, 2.0), &device);
        let weight = Tensor::<1>::random([16], Distribution::Normal(1.0, 0.3), &device);
        let loss_weights = Tensor::<3>::random(shape, Distribution::Default, &device);
        let run = |fused: bool| {
            let (x, weight) = (x.clone().require_grad(), weight.clone().require_grad());
            let out = if fused {
                rms_norm(x.clone(), weight.clone(), 1e-5)
            } else {
                composed(x.clone(), weight.clone(), 1e-5)
            };
            let grads = (out.clone() * loss_weights.clone()).sum().backward();
            (
                out.inner(),
                x.grad(&grads).expect("dx"),
                weight.grad(&grads).expect("dweight"),
            )
        };
        let before = backward_calls("rms_norm");
        let (out, dx, dw) = run(true);
        assert_eq!(
            backward_calls("rms_norm"),
            before + 1,
            "custom backward ran"
        );
        let (out_ref, dx_ref, dw_ref) = run(false);
        assert!(max_abs_diff(out, out_ref) < 1e-6);
        assert!(max_abs_diff(dx, dx_ref) < 1e-5);
        assert!(max_abs_diff(dw, dw_ref) < 1e-5);
    }

    /// A frozen weight (LoRA training) gets no gradient and the input's is unchanged.
    #[test]
    fn frozen_weight_gets_no_gradient() {
        let device = Device::default().autodiff();
        device.seed(4);
        let x = Tensor::<3>::random([1, 3, 8], Distribution::Default, &device).require_grad();
        let weight = Tensor::<1>::random([8], Distribution::Default, &device);
        let grads = rms_norm(x.clone(), weight.clone(), 1e-6).sum().backward();
        let dx = x.grad(&grads).expect("dx");
        let grads_ref = composed(x.clone(), weight.clone(), 1e-6).sum().backward();
        assert!(max_abs_diff(dx, x.grad(&grads_ref).unwrap()) < 1e-5);
        assert!(weight.grad(&grads).is_none());
    }
}
