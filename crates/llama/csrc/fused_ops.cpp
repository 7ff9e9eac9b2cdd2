// PyTorch's fused kernels for LibTorch-backed tensors, for the operations burn would compose
// from many small ones: flash attention (causal, no dropout) and RMS norm, forward and
// backward. tch binds neither forward (they return integers or optional tensors beside
// tensors), so both go through this thin C API; llama/src/causal_attention.rs and
// llama/src/rms_norm.rs are its only callers. Every function returns 0 on success, or 1 with
// a malloc'd message in *error (freed by the caller with tl_free_error, in cuda_graph.cpp).

#include "shim.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace {

// The kernels read the last dimension as contiguous (autograd passes them such tensors).
at::Tensor last_dim_contiguous(const at::Tensor &tensor) {
  return tensor.stride(-1) == 1 ? tensor : tensor.contiguous();
}

} // namespace

extern "C" {

// `query`, `key`, `value`: [B, H, T, D] with the same number of heads. Returns the output
// [B, H, T, D] and the row log-sum-exp [B, H, T] (f32).
int tl_flash_attention_forward(const at::Tensor *query, const at::Tensor *key,
                               const at::Tensor *value, double scale, at::Tensor **output,
                               at::Tensor **logsumexp, char **error) {
  return tuneloop::guarded(error, [&] {
    auto result = at::_scaled_dot_product_flash_attention(*query, *key, *value, /*dropout_p=*/0.0,
                                                          /*is_causal=*/true,
                                                          /*return_debug_mask=*/false, scale);
    *output = new at::Tensor(std::get<0>(result));
    *logsumexp = new at::Tensor(std::get<1>(result));
  });
}

int tl_flash_attention_backward(const at::Tensor *grad_output, const at::Tensor *query,
                                const at::Tensor *key, const at::Tensor *value,
                                const at::Tensor *output, const at::Tensor *logsumexp,
                                double scale, at::Tensor **grad_query, at::Tensor **grad_key,
                                at::Tensor **grad_value, char **error) {
  return tuneloop::guarded(error, [&] {
    // Without dropout the random-number state is never read.
    auto philox = at::empty({}, query->options().dtype(at::kLong));
    auto result = at::_scaled_dot_product_flash_attention_backward(
        last_dim_contiguous(*grad_output), *query, *key, *value, *output, *logsumexp,
        /*cum_seq_q=*/at::Tensor(), /*cum_seq_k=*/at::Tensor(), query->size(2), key->size(2),
        /*dropout_p=*/0.0, /*is_causal=*/true, philox, philox, scale);
    *grad_query = new at::Tensor(std::get<0>(result));
    *grad_key = new at::Tensor(std::get<1>(result));
    *grad_value = new at::Tensor(std::get<2>(result));
  });
}

// RMS norm over the last dimension of `input` with `weight` (same dtype). Returns the output
// and the reciprocal RMS per row (f32, the last dimension kept as 1).
int tl_rms_norm_forward(const at::Tensor *input, const at::Tensor *weight, double eps,
                        at::Tensor **output, at::Tensor **rstd, char **error) {
  return tuneloop::guarded(error, [&] {
    auto result = at::_fused_rms_norm(last_dim_contiguous(*input), {input->size(-1)}, *weight, eps);
    *output = new at::Tensor(std::get<0>(result));
    *rstd = new at::Tensor(std::get<1>(result));
  });
}

// Gradients of the input and, when `weight_grad`, of the weight (zeros otherwise).
int tl_rms_norm_backward(const at::Tensor *grad_output, const at::Tensor *input,
                         const at::Tensor *weight, const at::Tensor *rstd, bool weight_grad,
                         at::Tensor **grad_input, at::Tensor **grad_weight, char **error) {
  return tuneloop::guarded(error, [&] {
    auto result = at::_fused_rms_norm_backward(last_dim_contiguous(*grad_output),
                                               last_dim_contiguous(*input), {input->size(-1)},
                                               *rstd, *weight, {true, weight_grad});
    *grad_input = new at::Tensor(std::get<0>(result));
    *grad_weight = new at::Tensor(weight_grad ? std::get<1>(result) : at::zeros_like(*weight));
  });
}

} // extern "C"
