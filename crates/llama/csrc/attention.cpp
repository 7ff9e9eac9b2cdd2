// PyTorch's flash-attention forward and backward for LibTorch-backed tensors (causal, no
// dropout). tch binds the backward but not the forward (it returns integers beside tensors),
// so both go through this thin C API; llama/src/causal_attention.rs is its only caller.
// Every function returns 0 on success, or 1 with a malloc'd message in *error (freed by the
// caller with tl_free_error, defined in cuda_graph.cpp).

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace {

template <typename F> int guarded_attention(char **error, F &&body) {
  try {
    body();
    return 0;
  } catch (const std::exception &e) {
    if (error) *error = strdup(e.what());
  } catch (...) {
    if (error) *error = strdup("unknown C++ exception");
  }
  return 1;
}

} // namespace

extern "C" {

// `query`, `key`, `value`: [B, H, T, D] with the same number of heads. Returns the output
// [B, H, T, D] and the row log-sum-exp [B, H, T] (f32).
int tl_flash_attention_forward(const at::Tensor *query, const at::Tensor *key,
                               const at::Tensor *value, double scale, at::Tensor **output,
                               at::Tensor **logsumexp, char **error) {
  return guarded_attention(error, [&] {
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
  return guarded_attention(error, [&] {
    // The kernel reads the head dimension as contiguous (autograd's SDPA does the same).
    auto grad = grad_output->stride(-1) == 1 ? *grad_output : grad_output->contiguous();
    // Without dropout the random-number state is never read.
    auto philox = at::empty({}, query->options().dtype(at::kLong));
    auto result = at::_scaled_dot_product_flash_attention_backward(
        grad, *query, *key, *value, *output, *logsumexp, /*cum_seq_q=*/at::Tensor(),
        /*cum_seq_k=*/at::Tensor(), query->size(2), key->size(2), /*dropout_p=*/0.0,
        /*is_causal=*/true, philox, philox, scale);
    *grad_query = new at::Tensor(std::get<0>(result));
    *grad_key = new at::Tensor(std::get<1>(result));
    *grad_value = new at::Tensor(std::get<2>(result));
  });
}

} // extern "C"
