//! NCCL all-reduce over LibTorch CUDA tensors (`tch` feature), for data-parallel training: one
//! process per GPU, each holding a [`Communicator`]. The NCCL id is made by rank 0 and handed
//! to the others by the caller (lora-training bootstraps it over TCP); csrc/nccl.cpp does the rest.

// burn-tch (LibTorch) is deprecated upstream; it is the backend that links LibTorch, and the
// backend_extension macro names it in generated code.
#![allow(deprecated)]

use std::ffi::{c_char, c_int, c_void};

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::{Device, Tensor};

use crate::torch_shim::status;
use crate::{Error, Result};

unsafe extern "C" {
    fn tl_nccl_unique_id(id: *mut c_char, error: *mut *mut c_char) -> c_int;
    fn tl_nccl_init(
        id: *const c_char,
        world_size: c_int,
        rank: c_int,
        device: c_int,
        comm: *mut *mut c_void,
        error: *mut *mut c_char,
    ) -> c_int;
    fn tl_nccl_destroy(comm: *mut c_void);
    fn tl_nccl_all_reduce_sum(
        comm: *mut c_void,
        tensor: *const c_void,
        error: *mut *mut c_char,
    ) -> c_int;
}

/// The bytes every rank passes to [`Communicator::join`].
pub type NcclId = [u8; 128];

/// A fresh NCCL id (rank 0 makes it).
pub fn unique_id() -> Result<NcclId> {
    let mut id = [0u8; 128];
    status(|error| unsafe { tl_nccl_unique_id(id.as_mut_ptr() as *mut c_char, error) })
        .map_err(|message| Error::Nccl(format!("making an NCCL id: {message}")))?;
    Ok(id)
}

/// One rank's membership of an NCCL group, bound to one GPU.
#[derive(Debug)]
pub struct Communicator {
    raw: *mut c_void,
    device: Device,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time (`&mut`-free
// use here is serialised by the training loop, which is single-threaded).
unsafe impl Send for Communicator {}
unsafe impl Sync for Communicator {}

impl Communicator {
    /// Joins the group as `rank` of `world_size` on `device` (a LibTorch CUDA device); blocks
    /// until every rank has joined with the same `id`.
    pub fn join(id: &NcclId, world_size: usize, rank: usize, device: &Device) -> Result<Self> {
        let Some(index) = crate::cuda_graph::cuda_index(&device.clone().inner()) else {
            return Err(Error::Nccl(
                "data-parallel training needs a LibTorch CUDA device (--device cuda:N)".into(),
            ));
        };
        let mut raw = std::ptr::null_mut();
        status(|error| unsafe {
            tl_nccl_init(
                id.as_ptr() as *const c_char,
                world_size as c_int,
                rank as c_int,
                index as c_int,
                &mut raw,
                error,
            )
        })
        .map_err(|message| {
            Error::Nccl(format!("joining as rank {rank} of {world_size}: {message}"))
        })?;
        Ok(Self {
            raw,
            device: device.clone(),
        })
    }

    /// The GPU this rank's communicator is bound to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The element-wise sum of `tensor` over every rank (each rank passes its own).
    pub fn all_reduce_sum(&self, tensor: Tensor<1>) -> Tensor<1> {
        debug_assert!(tensor.device().inner() == self.device.clone().inner());
        Tensor::from_dispatch(<Dispatch as AllReduceOps>::all_reduce_sum(
            tensor.into_dispatch(),
            self.raw as usize,
        ))
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        // SAFETY: created by tl_nccl_init, destroyed once.
        unsafe { tl_nccl_destroy(self.raw) }
    }
}

/// The all-reduce as a backend operation, to reach the LibTorch tensor inside a `Tensor`.
#[backend_extension(LibTorch)]
pub trait AllReduceOps: Backend {
    /// In-place sum over the communicator `comm` (a `tl_nccl_init` handle).
    fn all_reduce_sum(tensor: FloatTensor<Self>, comm: usize) -> FloatTensor<Self>;
}

#[allow(deprecated)]
impl AllReduceOps for burn::backend::LibTorch {
    fn all_reduce_sum(
        tensor: burn::backend::libtorch::TchTensor,
        comm: usize,
    ) -> burn::backend::libtorch::TchTensor {
        let tensor = burn::backend::libtorch::TchTensor::new(tensor.tensor.contiguous());
        crate::torch_shim::call("NCCL all-reduce", |error| unsafe {
            tl_nccl_all_reduce_sum(comm as *mut c_void, crate::torch_shim::raw(&tensor), error)
        });
        tensor
    }
}
