//! Writing new values into an existing device buffer, seen by every holder of that buffer: how
//! new inputs and updated parameters reach a replayed CUDA graph, which reads the addresses it
//! captured (see `lora_training::step_graph`).
//!
//! burn's tensors have value semantics, and burn-tch writes in place only where a tensor's
//! storage has a single holder; a graph's input buffers and the adapter factors it reads are
//! held by the graph's owner, by the model's parameters (views of one flat vector) and by the
//! captured kernels, so none of burn's ops would write them. On LibTorch this is `copy_` on the
//! buffer itself. Backends without shared mutable storage return a copy of the new values, which
//! is all a caller there can observe (no graph runs on them).

// burn-tch (LibTorch) is deprecated upstream; it is the backend that links LibTorch, and the
// backend_extension macro names it in generated code.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, backend_extension};
use burn::tensor::{Int, Tensor};

/// Replaces a buffer's values with another tensor's of the same shape and dtype.
#[backend_extension(Flex: cfg(feature = "flex"), LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait OverwriteOps: Backend {
    /// The buffer holding `values`: `buffer` itself, written in place, where the backend shares
    /// storage between holders; otherwise `values`.
    fn float_overwrite(buffer: FloatTensor<Self>, values: FloatTensor<Self>) -> FloatTensor<Self> {
        drop(buffer);
        values
    }

    /// [`OverwriteOps::float_overwrite`] for integer tensors.
    fn int_overwrite(buffer: IntTensor<Self>, values: IntTensor<Self>) -> IntTensor<Self> {
        drop(buffer);
        values
    }
}

/// Writes `values` into `buffer` (same shape and dtype); returns the buffer.
///
/// # Panics
/// When the shapes or dtypes differ.
pub fn overwrite<const D: usize>(buffer: Tensor<D>, values: Tensor<D>) -> Tensor<D> {
    same_layout(&buffer, &values);
    Tensor::from_dispatch(<Dispatch as OverwriteOps>::float_overwrite(
        buffer.into_dispatch(),
        values.into_dispatch(),
    ))
}

/// [`overwrite`] for integer tensors.
///
/// # Panics
/// When the shapes or dtypes differ.
pub fn overwrite_int<const D: usize>(
    buffer: Tensor<D, Int>,
    values: Tensor<D, Int>,
) -> Tensor<D, Int> {
    same_layout(&buffer, &values);
    Tensor::from_dispatch(<Dispatch as OverwriteOps>::int_overwrite(
        buffer.into_dispatch(),
        values.into_dispatch(),
    ))
}

/// The precondition of both writes: one shape, one dtype.
fn same_layout<const D: usize, K: burn::tensor::kind::Basic>(
    buffer: &Tensor<D, K>,
    values: &Tensor<D, K>,
) {
    assert_eq!(buffer.dims(), values.dims(), "overwrite needs equal shapes");
    assert_eq!(
        buffer.dtype(),
        values.dtype(),
        "overwrite needs equal dtypes"
    );
}

#[cfg(feature = "flex")]
impl OverwriteOps for burn::backend::Flex {}

/// Buffers written this way carry no gradient: the write runs on the inner backend, untracked.
impl<B: Backend + OverwriteOps, C: CheckpointStrategy> OverwriteOps for Autodiff<B, C> {
    fn float_overwrite(buffer: FloatTensor<Self>, values: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::float_overwrite(Self::inner(buffer), Self::inner(values)))
    }

    fn int_overwrite(buffer: IntTensor<Self>, values: IntTensor<Self>) -> IntTensor<Self> {
        B::int_overwrite(buffer, values)
    }
}

#[cfg(feature = "tch")]
mod libtorch {
    #![allow(deprecated)] // burn-tch is deprecated upstream; it is the backend that links LibTorch

    use super::OverwriteOps;
    use burn::backend::LibTorch;
    use burn::backend::libtorch::TchTensor;

    /// `copy_` into the buffer's own storage, whoever else holds it: that every holder sees
    /// the write is the point (burn-tch's `mut_ops` would copy instead).
    fn copy_into(buffer: TchTensor, values: TchTensor) -> TchTensor {
        let mut target = buffer.tensor.shallow_clone();
        target.copy_(&values.tensor);
        buffer
    }

    impl OverwriteOps for LibTorch {
        fn float_overwrite(buffer: TchTensor, values: TchTensor) -> TchTensor {
            copy_into(buffer, values)
        }

        fn int_overwrite(buffer: TchTensor, values: TchTensor) -> TchTensor {
            copy_into(buffer, values)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, TensorData};

    /// On a value-semantics backend the result holds the new values and the old handle is
    /// untouched; shape mismatches are refused.
    #[test]
    fn overwrite_returns_the_new_values() {
        let device = Device::flex();
        let buffer = Tensor::<2>::zeros([3, 4], &device);
        let values = Tensor::<2>::random([3, 4], Distribution::Normal(0.0, 1.0), &device);
        let written = overwrite(buffer, values.clone());
        let diff = (written - values).abs().max().into_scalar::<f32>();
        assert_eq!(diff, 0.0);

        let ids = Tensor::<1, Int>::from_data(TensorData::new(vec![7i64, 8, 9], [3]), &device);
        let written = overwrite_int(Tensor::<1, Int>::zeros([3], &device), ids);
        assert_eq!(
            written
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .expect("i64"),
            vec![7, 8, 9]
        );

        let refused = std::panic::catch_unwind(|| {
            overwrite(
                Tensor::<2>::zeros([3, 4], &Device::flex()),
                Tensor::<2>::zeros([4, 3], &Device::flex()),
            )
        });
        assert!(refused.is_err(), "a shape mismatch must be refused");
    }
}
