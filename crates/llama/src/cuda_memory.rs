//! PyTorch's CUDA caching allocator (`tch` feature): the peak statistics that
//! `torch.cuda.max_memory_allocated` / `max_memory_reserved` give a Python program, so a burn
//! program and its PyTorch counterpart are measured alike, and the allocator's settings.

use std::ffi::{CString, c_char, c_int};

use burn::tensor::Device;

use crate::{Error, Result};

unsafe extern "C" {
    fn tl_cuda_memory_peaks(
        device: c_int,
        allocated: *mut i64,
        reserved: *mut i64,
        error: *mut *mut c_char,
    ) -> c_int;
    fn tl_cuda_memory_reset_peaks(device: c_int, error: *mut *mut c_char) -> c_int;
    fn tl_cuda_set_allocator_settings(settings: *const c_char, error: *mut *mut c_char) -> c_int;
    fn tl_cuda_empty_cache(error: *mut *mut c_char) -> c_int;
}

/// Peak bytes since the process started (or the last [`reset_peaks`]), as PyTorch's allocator
/// counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPeaks {
    /// Bytes handed to tensors at the worst moment.
    pub allocated: u64,
    /// Bytes the allocator held from the driver at the worst moment (allocated plus cached
    /// free blocks, and what fragmentation strands).
    pub reserved: u64,
}

/// The allocator's peaks on `device` (a LibTorch CUDA device).
pub fn peaks(device: &Device) -> Result<MemoryPeaks> {
    let index = cuda_device_index(device)?;
    let (mut allocated, mut reserved) = (0i64, 0i64);
    // SAFETY: plain C call; the out-pointers point to live locals.
    crate::torch_shim::status(|error| unsafe {
        tl_cuda_memory_peaks(index, &mut allocated, &mut reserved, error)
    })
    .map_err(|message| Error::InvalidArgument(format!("CUDA memory statistics: {message}")))?;
    Ok(MemoryPeaks {
        allocated: allocated.max(0) as u64,
        reserved: reserved.max(0) as u64,
    })
}

/// Starts the peaks afresh from what is held now (`torch.cuda.reset_peak_memory_stats`).
pub fn reset_peaks(device: &Device) -> Result<()> {
    let index = cuda_device_index(device)?;
    // SAFETY: plain C call; `error` points to a valid out-slot.
    crate::torch_shim::status(|error| unsafe { tl_cuda_memory_reset_peaks(index, error) })
        .map_err(|message| Error::InvalidArgument(format!("CUDA memory statistics: {message}")))
}

/// Training's allocator settings: expandable segments, so that the activations of each step,
/// whose sizes vary, reuse one growing mapping instead of stranding free blocks between cached
/// segments (PyTorch's own advice for that case). Applied only where the user has not set
/// `PYTORCH_CUDA_ALLOC_CONF`, which always wins. Not for inference: its CUDA graphs capture
/// into private pools, which the expandable segments of PyTorch 2.11 do not serve.
pub fn use_training_allocator_settings(device: &Device) -> Result<()> {
    set_expandable_segments(device, true)
}

/// Turns the allocator's expandable segments on or off for the segments it makes from now on
/// (a captured training step turns them off: its graph allocates from a private pool), unless
/// the user has set `PYTORCH_CUDA_ALLOC_CONF`, which always wins.
pub fn set_expandable_segments(device: &Device, on: bool) -> Result<()> {
    if std::env::var_os("PYTORCH_CUDA_ALLOC_CONF").is_some() || cuda_device_index(device).is_err() {
        return Ok(());
    }
    let settings = CString::new(format!(
        "expandable_segments:{}",
        if on { "True" } else { "False" }
    ))
    .expect("no NUL");
    // SAFETY: `settings` outlives the call; `error` points to a valid out-slot.
    crate::torch_shim::status(|error| unsafe {
        tl_cuda_set_allocator_settings(settings.as_ptr(), error)
    })
    .map_err(|message| Error::InvalidArgument(format!("CUDA allocator settings: {message}")))
}

/// Hands the allocator's cached free blocks back to the driver (`torch.cuda.empty_cache`): what
/// eager steps left cached is then free for a graph's private pool.
pub fn empty_cache() -> Result<()> {
    // SAFETY: plain C call; `error` points to a valid out-slot.
    crate::torch_shim::status(|error| unsafe { tl_cuda_empty_cache(error) })
        .map_err(|message| Error::InvalidArgument(format!("CUDA allocator: {message}")))
}

fn cuda_device_index(device: &Device) -> Result<c_int> {
    crate::cuda_graph::cuda_index(&device.clone().inner())
        .map(|index| index as c_int)
        .ok_or_else(|| {
            Error::InvalidArgument("CUDA memory statistics need a LibTorch CUDA device".into())
        })
}
