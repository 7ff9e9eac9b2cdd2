//! PyTorch's profiler around LibTorch work (`tch` feature): the ATen ops this thread runs and
//! the CUDA kernels they launch, saved as a Chrome trace (`chrome://tracing`, Perfetto), in the
//! format `torch.profiler` writes for Python programs, so that a burn program and its PyTorch
//! counterpart can be compared kernel by kernel (tools/bench/trace_summary.py).

use std::ffi::{CString, c_char, c_int};
use std::path::Path;

use crate::{Error, Result};

unsafe extern "C" {
    fn tl_profiler_start(error: *mut *mut c_char) -> c_int;
    fn tl_profiler_stop(path: *const c_char, error: *mut *mut c_char) -> c_int;
}

/// Records from now until [`TorchProfiler::save`].
#[derive(Debug)]
pub struct TorchProfiler {
    _private: (),
}

impl TorchProfiler {
    pub fn start() -> Result<Self> {
        // SAFETY: plain C call; `error` points to a valid out-slot.
        crate::torch_shim::status(|error| unsafe { tl_profiler_start(error) })
            .map_err(|message| Error::Profiler(format!("starting: {message}")))?;
        Ok(Self { _private: () })
    }

    /// Stops recording and writes the trace (JSON) to `path`.
    pub fn save(self, path: &Path) -> Result<()> {
        let text = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| Error::Profiler(format!("{}: NUL in the path", path.display())))?;
        // SAFETY: `text` outlives the call; `error` as above.
        crate::torch_shim::status(|error| unsafe { tl_profiler_stop(text.as_ptr(), error) })
            .map_err(|message| {
                Error::Profiler(format!("saving the trace to {}: {message}", path.display()))
            })
    }
}
