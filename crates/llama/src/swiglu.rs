//! The SwiGLU gate `silu(gate) * up` as one differentiable operation.
//!
//! Composed from tensor ops (`silu` is `x * sigmoid(x)`), autodiff records and differentiates
//! each op of the gate. As one operation it keeps the gate and `up` only and recomputes
//! `silu(gate)` in the backward, as Liger Kernel's and Unsloth's SwiGLU do. On LibTorch it is
//! PyTorch's own kernels: `silu` and a multiply forward; `silu`, `silu_backward` and two
//! multiplies backward (5.4% of the 8B-shape LoRA step on an H100, peak memory unchanged:
//! docs/benchmarks.md). Other backends run
//! [`reference_forward`] and [`reference_backward`] in their own ops.

// burn-tch (LibTorch) is deprecated upstream; it is the backend that links LibTorch, and the
// backend_extension macro names it in generated code.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::tensor::Tensor;

/// `silu(gate) * up` over tensors of one shape.
#[backend_extension(Flex: cfg(feature = "flex"), LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait SwiGluOps: Backend {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        reference_forward::<Self>(gate, up)
    }

    /// Gradients of the gate and of `up` from the output's gradient.
    fn swiglu_backward(
        grad_output: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_backward::<Self>(grad_output, gate, up)
    }
}

/// [`SwiGluOps::swiglu`] on `Tensor`s.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as SwiGluOps>::swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

#[cfg(feature = "flex")]
impl SwiGluOps for burn::backend::Flex {}

impl<B: Backend + SwiGluOps, C: CheckpointStrategy> SwiGluOps for Autodiff<B, C> {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SwiGluBackward;

        impl<B: Backend + SwiGluOps> Backward<B, 2> for SwiGluBackward {
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                #[cfg(test)]
                crate::op_tests::count_backward("swiglu");
                let grad_output = grads.consume::<B>(&ops.node);
                let (gate, up) = ops.state;
                let [gate_node, up_node] = ops.parents;
                let (grad_gate, grad_up) = B::swiglu_backward(grad_output, gate, up);
                if let Some(node) = gate_node {
                    grads.register::<B>(node.id, grad_gate);
                }
                if let Some(node) = up_node {
                    grads.register::<B>(node.id, grad_up);
                }
            }
        }

        let parents = [gate.node(), up.node()];
        let (gate, up) = (gate.into_primitive(), up.into_primitive());
        match SwiGluBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = B::swiglu(gate.clone(), up.clone());
                prep.finish((gate, up), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::swiglu(gate, up)),
        }
    }
}

/// `silu(gate) * up` in the backend's own ops.
pub fn reference_forward<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
    let sigmoid = B::sigmoid(gate.clone());
    B::float_mul(B::float_mul(gate, sigmoid), up)
}

/// With `s = sigmoid(gate)`: `d_up = dy ⊙ gate ⊙ s` and
/// `d_gate = dy ⊙ up ⊙ s ⊙ (1 + gate ⊙ (1 − s))`.
pub fn reference_backward<B: Backend>(
    grad_output: FloatTensor<B>,
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let sigmoid = B::sigmoid(gate.clone());
    let silu = B::float_mul(gate.clone(), sigmoid.clone());
    let grad_up = B::float_mul(grad_output.clone(), silu);
    let one_minus = B::float_add_scalar(B::float_neg(sigmoid.clone()), 1.0.into());
    let slope = B::float_add_scalar(B::float_mul(gate, one_minus), 1.0.into());
    let grad_gate = B::float_mul(B::float_mul(B::float_mul(grad_output, up), sigmoid), slope);
    (grad_gate, grad_up)
}

#[cfg(feature = "tch")]
mod libtorch {
    //! PyTorch's element-wise kernels, called on the tensors directly.
    #![allow(deprecated)] // burn-tch is deprecated upstream; it is the backend that links LibTorch

    use super::{SwiGluOps, reference_backward, reference_forward};
    use burn::backend::LibTorch;
    use burn::backend::libtorch::TchTensor;

    /// `TUNELOOP_FUSED_SWIGLU=0` takes the reference path on LibTorch too (to compare).
    fn fused_enabled() -> bool {
        static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ENABLED.get_or_init(|| {
            std::env::var_os("TUNELOOP_FUSED_SWIGLU").is_none_or(|value| value != "0")
        })
    }

    fn eligible(a: &TchTensor, b: &TchTensor) -> bool {
        fused_enabled() && a.tensor.kind() == b.tensor.kind() && a.tensor.size() == b.tensor.size()
    }

    impl SwiGluOps for LibTorch {
        fn swiglu(gate: TchTensor, up: TchTensor) -> TchTensor {
            if !eligible(&gate, &up) {
                return reference_forward::<Self>(gate, up);
            }
            let mut output = gate.tensor.silu();
            let _ = output
                .f_mul_(&up.tensor)
                .expect("in-place multiply of equal shapes");
            TchTensor::new(output)
        }

        fn swiglu_backward(
            grad_output: TchTensor,
            gate: TchTensor,
            up: TchTensor,
        ) -> (TchTensor, TchTensor) {
            if !eligible(&gate, &up) || !eligible(&grad_output, &gate) {
                return reference_backward::<Self>(grad_output, gate, up);
            }
            let grad_up = gate.tensor.silu() * &grad_output.tensor;
            let grad_silu = &grad_output.tensor * &up.tensor;
            let grad_gate = gate.tensor.silu_backward(&grad_silu);
            (TchTensor::new(grad_gate), TchTensor::new(grad_up))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op_tests::{backward_calls, max_abs_diff};
    use burn::tensor::activation::silu;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn matches_the_composed_gate_and_its_gradients() {
        let device = Device::default().autodiff();
        device.seed(5);
        let shape = [2, 7, 24];
        let gate = Tensor::<3>::random(shape, Distribution::Normal(0.0, 3.0), &device);
        let up = Tensor::<3>::random(shape, Distribution::Normal(0.5, 2.0), &device);
        let loss_weights = Tensor::<3>::random(shape, Distribution::Default, &device);
        let run = |fused: bool| {
            let (gate, up) = (gate.clone().require_grad(), up.clone().require_grad());
            let out = if fused {
                swiglu(gate.clone(), up.clone())
            } else {
                silu(gate.clone()) * up.clone()
            };
            let grads = (out.clone() * loss_weights.clone()).sum().backward();
            (
                out.inner(),
                gate.grad(&grads).expect("d gate"),
                up.grad(&grads).expect("d up"),
            )
        };
        let before = backward_calls("swiglu");
        let (out, d_gate, d_up) = run(true);
        assert_eq!(backward_calls("swiglu"), before + 1, "custom backward ran");
        let (out_ref, d_gate_ref, d_up_ref) = run(false);
        assert!(max_abs_diff(out, out_ref) < 1e-5);
        assert!(max_abs_diff(d_gate, d_gate_ref) < 1e-5);
        assert!(max_abs_diff(d_up, d_up_ref) < 1e-5);
    }

    /// The derivative against central differences of the forward, at gates where silu bends.
    #[test]
    fn gate_gradient_matches_finite_differences() {
        let device = Device::default();
        let gates = [-6.0f32, -2.5, -1.0, -0.3, 0.0, 0.4, 1.3, 4.0];
        let up = [0.7f32, -1.2, 2.0, 0.5, -0.8, 1.1, -0.4, 0.9];
        let tensor = |values: &[f32]| Tensor::<1>::from_floats(values, &device);
        let (grad_gate, _) = reference_backward::<Dispatch>(
            tensor(&[1.0; 8]).into_dispatch(),
            tensor(&gates).into_dispatch(),
            tensor(&up).into_dispatch(),
        );
        let grad_gate = Tensor::<1>::from_dispatch(grad_gate)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let f = |g: f64, u: f64| g / (1.0 + (-g).exp()) * u;
        for i in 0..gates.len() {
            let (g, u, h) = (f64::from(gates[i]), f64::from(up[i]), 1e-4);
            let numeric = (f(g + h, u) - f(g - h, u)) / (2.0 * h);
            assert!(
                (f64::from(grad_gate[i]) - numeric).abs() < 1e-4,
                "gate {g}: {} vs {numeric}",
                grad_gate[i]
            );
        }
    }
}
