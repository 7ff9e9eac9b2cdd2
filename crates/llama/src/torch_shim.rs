//! Calling the C++ shims in csrc/ on LibTorch tensors (`tch` feature): every shim function
//! returns 0, or 1 with a malloc'd message; tensors cross as `at::Tensor*`.
#![allow(deprecated)] // burn-tch is deprecated upstream; it is the backend that links LibTorch

use burn::backend::libtorch::TchTensor;
use std::ffi::{CStr, c_char, c_int, c_void};

unsafe extern "C" {
    fn tl_free_error(error: *mut c_char);
}

/// Runs one shim call; a failure comes back as the shim's message.
pub(crate) fn status(call: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<(), String> {
    let mut message: *mut c_char = std::ptr::null_mut();
    if call(&mut message) == 0 {
        return Ok(());
    }
    if message.is_null() {
        return Err("no message".to_string());
    }
    // SAFETY: a non-null message is a NUL-terminated string from strdup, freed once here.
    unsafe {
        let text = CStr::from_ptr(message).to_string_lossy().into_owned();
        tl_free_error(message);
        Err(text)
    }
}

/// Runs one shim call that computes tensors, panicking with its message on failure: burn's
/// backend operations cannot return errors, and burn-tch panics on a failed kernel too.
pub(crate) fn call(what: &str, body: impl FnOnce(*mut *mut c_char) -> c_int) {
    if let Err(message) = status(body) {
        panic!("{what}: {message}");
    }
}

/// The `at::Tensor*` inside a burn-tch primitive.
pub(crate) fn raw(tensor: &TchTensor) -> *const c_void {
    tensor.tensor.as_ptr() as *const c_void
}

/// Takes ownership of a tensor the shim allocated.
pub(crate) fn owned(raw: *mut c_void) -> TchTensor {
    // SAFETY: the shim returns a heap `at::Tensor*` that nothing else references.
    TchTensor::new(unsafe { tch::Tensor::from_ptr(raw as *mut _) })
}
