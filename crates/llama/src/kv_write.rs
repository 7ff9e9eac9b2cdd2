//! Writing one position's keys or values into a preallocated cache buffer, at a position held
//! in a device tensor, in place: the write that a replayed CUDA graph of a decode step needs.
//!
//! The graph replays kernels on the addresses it captured, so the write must land in the same
//! buffer every step. burn's `select_assign` computes the same values, but on LibTorch it keeps a
//! second handle to its input and so never takes its in-place path: a captured graph would keep
//! writing into a buffer nobody reads. The one-hot form this replaces (`buffer + onehot ⊙ new`)
//! read and wrote the whole cache every step and needed the written column to hold zeros, so a
//! buffer could not be reused from one `generate` call to the next.

// burn-tch (LibTorch) is deprecated upstream; it is the backend that links LibTorch, and the
// backend_extension macro names it in generated code.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, backend_extension};
use burn::tensor::{IndexingUpdateOp, Int, Tensor};

/// Replaces one position (dim 2) of a `[B, H, C, D]` key or value buffer.
#[backend_extension(Flex: cfg(feature = "flex"), LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait KvWriteOps: Backend {
    /// `buffer` with position `position[0]` replaced by `new` (`[B, H, 1, D]`); in place where
    /// the backend allows.
    fn kv_write(
        buffer: FloatTensor<Self>,
        position: IntTensor<Self>,
        new: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::float_select_assign(buffer, 2, position, new, IndexingUpdateOp::Assign)
    }
}

/// [`KvWriteOps::kv_write`] on `Tensor`s: `buffer` `[B, H, C, D]`, `position` `[1]`, `new`
/// `[B, H, 1, D]`.
pub fn kv_write(buffer: Tensor<4>, position: Tensor<1, Int>, new: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as KvWriteOps>::kv_write(
        buffer.into_dispatch(),
        position.into_dispatch(),
        new.into_dispatch(),
    ))
}

#[cfg(feature = "flex")]
impl KvWriteOps for burn::backend::Flex {}

/// Cache buffers carry no gradient: the write runs on the inner backend, untracked.
impl<B: Backend + KvWriteOps, C: CheckpointStrategy> KvWriteOps for Autodiff<B, C> {
    fn kv_write(
        buffer: FloatTensor<Self>,
        position: IntTensor<Self>,
        new: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::kv_write(Self::inner(buffer), position, Self::inner(new)))
    }
}

#[cfg(feature = "tch")]
mod libtorch {
    #![allow(deprecated)] // burn-tch is deprecated upstream; it is the backend that links LibTorch

    use super::KvWriteOps;
    use burn::backend::LibTorch;
    use burn::backend::libtorch::TchTensor;

    impl KvWriteOps for LibTorch {
        fn kv_write(mut buffer: TchTensor, position: TchTensor, new: TchTensor) -> TchTensor {
            let index = position.tensor.view([-1]);
            // `index_copy_` where this is the buffer's only handle (the decoder owns it);
            // otherwise a copy, so that no other holder sees the write.
            match buffer.mut_ops(|tensor| tensor.index_copy_(2, &index, &new.tensor)) {
                Some(written) => written,
                None => TchTensor::new(buffer.tensor.index_copy(2, &index, &new.tensor)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, TensorData};

    #[test]
    fn replaces_exactly_one_position() {
        let device = Device::flex();
        let buffer = Tensor::<4>::random([2, 3, 5, 4], Distribution::Normal(0.0, 1.0), &device);
        let new = Tensor::<4>::random([2, 3, 1, 4], Distribution::Normal(5.0, 1.0), &device);
        let position = Tensor::<1, Int>::from_data(TensorData::new(vec![3i64], [1]), &device);
        let written = kv_write(buffer.clone(), position, new.clone());
        for column in 0..5 {
            let got = written.clone().narrow(2, column, 1);
            let want = if column == 3 {
                new.clone()
            } else {
                buffer.clone().narrow(2, column, 1)
            };
            let diff = (got - want).abs().max().into_scalar::<f32>();
            assert_eq!(diff, 0.0, "column {column}");
        }
    }
}
