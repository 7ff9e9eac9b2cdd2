// PyTorch's CUDA caching allocator seen from Rust: its peak statistics (what
// torch.cuda.max_memory_allocated / max_memory_reserved report to a Python program, so both sides
// of a benchmark are measured alike) and its settings (PYTORCH_CUDA_ALLOC_CONF's syntax), which
// PyTorch reads when new memory segments are made. llama/src/cuda_memory.rs is its only caller.

#include "shim.h"

#include <c10/core/AllocatorConfig.h>
#include <c10/cuda/CUDACachingAllocator.h>

#include <cstdint>
#include <string>

using tuneloop::guarded;

extern "C" {

int tl_cuda_memory_peaks(int device, int64_t *allocated, int64_t *reserved, char **error) {
  return guarded(error, [&] {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[all].peak;
    *reserved = stats.reserved_bytes[all].peak;
  });
}

int tl_cuda_memory_reset_peaks(int device, char **error) {
  return guarded(error, [&] {
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
  });
}

// Returns the cached free blocks to the driver (torch.cuda.empty_cache).
int tl_cuda_empty_cache(char **error) {
  return guarded(error, [&] { c10::cuda::CUDACachingAllocator::emptyCache(); });
}

int tl_cuda_set_allocator_settings(const char *settings, char **error) {
  return guarded(error, [&] { c10::CachingAllocator::setAllocatorSettings(std::string(settings)); });
}

} // extern "C"
