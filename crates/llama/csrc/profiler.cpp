// PyTorch's profiler (Kineto) around LibTorch work driven from Rust: every ATen op the thread
// runs and every CUDA kernel it launches, saved as a Chrome trace, the same format
// torch.profiler writes for a Python program, so the two can be compared kernel by kernel.
// llama/src/torch_profiler.rs is its only caller.

#include "shim.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <set>
#include <string>

using tuneloop::guarded;
using torch::profiler::impl::ActivityType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;

namespace {

ProfilerConfig config() {
  return ProfilerConfig(ProfilerState::KINETO, /*report_input_shapes=*/true);
}

std::set<ActivityType> activities() { return {ActivityType::CPU, ActivityType::CUDA}; }

} // namespace

extern "C" {

int tl_profiler_start(char **error) {
  return guarded(error, [&] {
    torch::autograd::profiler::prepareProfiler(config(), activities());
    torch::autograd::profiler::enableProfiler(config(), activities());
  });
}

int tl_profiler_stop(const char *path, char **error) {
  return guarded(error, [&] {
    auto result = torch::autograd::profiler::disableProfiler();
    result->save(std::string(path));
  });
}

} // extern "C"
