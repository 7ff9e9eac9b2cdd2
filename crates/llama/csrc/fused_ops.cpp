// PyTorch's fused kernels for LibTorch-backed tensors, for the operations burn would compose
// from many small ones: flash attention (causal, no dropout; over padded or packed rows) and
// RMS norm, forward and backward. tch binds none of these forwards (they return integers or
// optional tensors beside tensors), so they go through this thin C API; llama/src/causal_attention.rs and
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

// [B, H, T, D] → [B·T, H, D], the variable-length kernels' layout (a view when the heads
// came from a [B, T, H·D] projection, as the model's do).
at::Tensor tokens_major(const at::Tensor &tensor) {
  return tensor.transpose(1, 2).reshape({-1, tensor.size(1), tensor.size(3)});
}

// [B·T, H, D] → [B, H, T, D] (a view), the batch and length taken from `like`.
at::Tensor heads_major(const at::Tensor &flat, const at::Tensor &like) {
  return flat.view({like.size(0), like.size(2), flat.size(1), flat.size(2)}).transpose(1, 2);
}

} // namespace

extern "C" {

// `query`, `key`, `value`: [B, H, T, D] with the same number of heads. `cu_seqlens` null:
// causal attention over each row. Otherwise packed rows: causal attention within each example of
// `cu_seqlens` (int, [S + 1]: the starts of the S examples over the B·T flattened positions, then
// B·T), none across them, through the variable-length kernels; `max_len` is the longest example.
// Returns the output [B, H, T, D] and the row log-sum-exp (f32; [B, H, T] for plain rows, the
// variable-length kernels' own layout for packed ones: it only goes back to the backward).
int tl_flash_attention_forward(const at::Tensor *query, const at::Tensor *key,
                               const at::Tensor *value, const at::Tensor *cu_seqlens,
                               int64_t max_len, double scale, at::Tensor **output,
                               at::Tensor **logsumexp, char **error) {
  return tuneloop::guarded(error, [&] {
    if (cu_seqlens == nullptr) {
      auto result = at::_scaled_dot_product_flash_attention(
          *query, *key, *value, /*dropout_p=*/0.0, /*is_causal=*/true,
          /*return_debug_mask=*/false, scale);
      *output = new at::Tensor(std::get<0>(result));
      *logsumexp = new at::Tensor(std::get<1>(result));
      return;
    }
    auto cu = cu_seqlens->to(at::kInt);
    auto result = at::_flash_attention_forward(
        tokens_major(*query), tokens_major(*key), tokens_major(*value), cu, cu, max_len, max_len,
        /*dropout_p=*/0.0, /*is_causal=*/true, /*return_debug_mask=*/false, scale);
    *output = new at::Tensor(heads_major(std::get<0>(result), *query));
    *logsumexp = new at::Tensor(std::get<1>(result));
  });
}

int tl_flash_attention_backward(const at::Tensor *grad_output, const at::Tensor *query,
                                const at::Tensor *key, const at::Tensor *value,
                                const at::Tensor *output, const at::Tensor *logsumexp,
                                const at::Tensor *cu_seqlens, int64_t max_len, double scale,
                                at::Tensor **grad_query, at::Tensor **grad_key,
                                at::Tensor **grad_value, char **error) {
  return tuneloop::guarded(error, [&] {
    // Without dropout the random-number state is never read.
    auto philox = at::empty({}, query->options().dtype(at::kLong));
    std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
    if (cu_seqlens == nullptr) {
      grads = at::_scaled_dot_product_flash_attention_backward(
          last_dim_contiguous(*grad_output), *query, *key, *value, *output, *logsumexp,
          /*cum_seq_q=*/at::Tensor(), /*cum_seq_k=*/at::Tensor(), query->size(2), key->size(2),
          /*dropout_p=*/0.0, /*is_causal=*/true, philox, philox, scale);
    } else {
      auto cu = cu_seqlens->to(at::kInt);
      auto flat = at::_flash_attention_backward(
          tokens_major(*grad_output), tokens_major(*query), tokens_major(*key),
          tokens_major(*value), tokens_major(*output), *logsumexp, cu, cu, max_len, max_len,
          /*dropout_p=*/0.0, /*is_causal=*/true, philox, philox, scale);
      grads = {heads_major(std::get<0>(flat), *query), heads_major(std::get<1>(flat), *key),
               heads_major(std::get<2>(flat), *value)};
    }
    *grad_query = new at::Tensor(std::get<0>(grads));
    *grad_key = new at::Tensor(std::get<1>(grads));
    *grad_value = new at::Tensor(std::get<2>(grads));
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
