//! What the tests of the differentiable operations share: a count of each operation's custom
//! backward runs (to tell it from burn differentiating the forward's ops) and the largest
//! difference between two tensors.

use std::cell::RefCell;
use std::collections::HashMap;

use burn::tensor::Tensor;

thread_local! {
    /// Per thread: tests on other threads train models that run the operations too.
    static BACKWARD_CALLS: RefCell<HashMap<&'static str, usize>> = RefCell::new(HashMap::new());
}

/// Called by `operation`'s custom backward.
pub(crate) fn count_backward(operation: &'static str) {
    BACKWARD_CALLS.with(|calls| *calls.borrow_mut().entry(operation).or_default() += 1);
}

/// Runs of `operation`'s custom backward on this thread so far.
pub(crate) fn backward_calls(operation: &'static str) -> usize {
    BACKWARD_CALLS.with(|calls| calls.borrow().get(operation).copied().unwrap_or(0))
}

pub(crate) fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}
