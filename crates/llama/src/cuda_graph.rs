//! CUDA graphs for LibTorch tensors (`tch` feature): a decode step captured once and replayed
//! with one launch instead of ~1,500 kernel launches from the host.
//!
//! On the GPU hosts this project measures, launching one kernel from the host costs about
//! 20 µs, so an 8B-shaped decode step is bound by launches (~100 ms) rather than by reading
//! the weights (~5 ms). tch exposes neither CUDA streams nor `at::cuda::CUDAGraph`; the small
//! C API in csrc/cuda_graph.cpp does.

use std::ffi::{c_char, c_int, c_void};

use crate::{Error, Result};

unsafe extern "C" {
    fn tl_use_side_stream(device: c_int, error: *mut *mut c_char) -> c_int;
    fn tl_use_default_stream(device: c_int, error: *mut *mut c_char) -> c_int;
    fn tl_graph_new(graph: *mut *mut c_void, error: *mut *mut c_char) -> c_int;
    fn tl_graph_delete(graph: *mut c_void);
    fn tl_graph_capture_begin(
        graph: *mut c_void,
        pool_of: *mut c_void,
        error: *mut *mut c_char,
    ) -> c_int;
    fn tl_graph_capture_end(graph: *mut c_void, error: *mut *mut c_char) -> c_int;
    fn tl_graph_replay(graph: *mut c_void, error: *mut *mut c_char) -> c_int;
}

/// Runs one C call and turns its status and message into a `Result`.
fn check(what: &str, call: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<()> {
    crate::torch_shim::status(call)
        .map_err(|message| Error::CudaGraph(format!("{what}: {message}")))
}

/// Makes a non-default CUDA stream current for this thread while alive (graph capture needs
/// one); the default stream is current again after drop. Both switches wait for the device.
#[derive(Debug)]
pub struct SideStream {
    device: c_int,
}

impl SideStream {
    pub fn enter(device: usize) -> Result<Self> {
        let device = device as c_int;
        // SAFETY: plain C call; `error` points to a valid out-slot.
        check("switching to a side stream", |error| unsafe {
            tl_use_side_stream(device, error)
        })?;
        Ok(Self { device })
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        let device = self.device;
        // SAFETY: as above. A failure leaves the side stream current, which is still correct.
        let _ = check("switching back to the default stream", |error| unsafe {
            tl_use_default_stream(device, error)
        });
    }
}

/// A captured CUDA graph (`at::cuda::CUDAGraph`).
#[derive(Debug)]
pub struct CudaGraph {
    raw: *mut c_void,
}

impl CudaGraph {
    /// Records the kernels `body` enqueues on the current (side) stream without running them,
    /// in a memory pool of the graph's own.
    /// `body` must not synchronise with the host or copy host memory to the device.
    pub fn capture<R>(body: impl FnOnce() -> R) -> Result<(Self, R)> {
        Self::capture_in_pool(None, body)
    }

    /// [`CudaGraph::capture`], allocating from `pool_of`'s memory pool when given: graphs that
    /// are never replayed concurrently share one pool instead of each holding its own peak.
    /// What each graph returns stays allocated while it is held, so no later capture reuses it.
    pub fn capture_in_pool<R>(
        pool_of: Option<&CudaGraph>,
        body: impl FnOnce() -> R,
    ) -> Result<(Self, R)> {
        let pool_of = pool_of.map_or(std::ptr::null_mut(), |graph| graph.raw);
        let mut raw: *mut c_void = std::ptr::null_mut();
        // SAFETY: `raw` receives a new graph owned by the returned value.
        check("creating a CUDA graph", |error| unsafe {
            tl_graph_new(&mut raw, error)
        })?;
        let graph = Self { raw };
        // SAFETY: `graph.raw` is a live graph; `pool_of` is null or a live, captured graph
        // borrowed for this call.
        check("beginning capture", |error| unsafe {
            tl_graph_capture_begin(graph.raw, pool_of, error)
        })?;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        // SAFETY: as above; ending a capture also cleans up after a failed one.
        let ended = check("ending capture", |error| unsafe {
            tl_graph_capture_end(graph.raw, error)
        });
        match out {
            Ok(out) => ended.map(|()| (graph, out)),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".to_string());
                Err(Error::CudaGraph(format!(
                    "an op failed during capture: {message}"
                )))
            }
        }
    }

    /// Runs the recorded kernels again on the current stream.
    pub fn replay(&self) -> Result<()> {
        // SAFETY: `self.raw` is a live, captured graph.
        check("replaying", |error| unsafe {
            tl_graph_replay(self.raw, error)
        })
    }
}

// SAFETY: the graph is owned by this value alone and used through `&self`/drop only;
// `at::cuda::CUDAGraph` is not tied to the thread that captured it (a replay enqueues on the
// calling thread's current stream), so moving it to another thread is sound. Callers that
// share it (`DecodeGraphs`) hold it behind a mutex.
unsafe impl Send for CudaGraph {}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: created by tl_graph_new, deleted once.
        unsafe { tl_graph_delete(self.raw) }
    }
}

/// The CUDA index of a LibTorch CUDA device, `None` for any other device.
pub fn cuda_index(device: &burn::tensor::Device) -> Option<usize> {
    #[allow(deprecated)] // burn-tch is deprecated upstream; it is the backend that links LibTorch
    (0..16).find(|&index| *device == burn::tensor::Device::libtorch_cuda(index))
}
