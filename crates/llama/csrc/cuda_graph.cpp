// CUDA graphs for LibTorch-backed tensors: capture a sequence of tensor ops once, replay it
// with one launch. tch exposes neither streams nor at::cuda::CUDAGraph, so this thin C API
// does; llama/src/cuda_graph.rs is its only caller. Every function returns 0 on success, or
// 1 with a malloc'd message in *error (freed by the caller with tl_free_error).

#include "shim.h"

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <cstring>
#include <exception>

using tuneloop::guarded;

extern "C" {

void tl_free_error(char *error) { free(error); }

// Makes a non-default stream current for this thread on `device` (graph capture needs one):
// the same stream every time, so that what it has warmed up (cuBLAS workspaces) stays valid
// for later captures. Waits for all earlier work on the device first, so that nothing
// enqueued on the default stream is still running when the side stream uses its results.
int tl_use_side_stream(int device, char **error) {
  return guarded(error, [&] {
    static std::mutex lock;
    static std::map<int, c10::cuda::CUDAStream> streams;
    c10::cuda::device_synchronize();
    std::lock_guard<std::mutex> guard(lock);
    auto found = streams.find(device);
    if (found == streams.end()) {
      auto stream = c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device));
      found = streams.emplace(device, stream).first;
    }
    c10::cuda::setCurrentCUDAStream(found->second);
  });
}

// Waits for the side stream's work, then makes the default stream current again.
int tl_use_default_stream(int device, char **error) {
  return guarded(error, [&] {
    c10::cuda::device_synchronize();
    c10::cuda::setCurrentCUDAStream(
        c10::cuda::getDefaultCUDAStream(static_cast<c10::DeviceIndex>(device)));
  });
}

int tl_graph_new(void **graph, char **error) {
  return guarded(error, [&] { *graph = new at::cuda::CUDAGraph(); });
}

void tl_graph_delete(void *graph) { delete static_cast<at::cuda::CUDAGraph *>(graph); }

// Begins capturing into `graph`: in a memory pool of its own when `pool_of` is null, else in
// `pool_of`'s pool (graphs that never replay concurrently may share one, as training's graphs
// of different micro-batch shapes do: what a graph returns stays allocated, so no other
// capture is given its memory).
int tl_graph_capture_begin(void *graph, void *pool_of, char **error) {
  return guarded(error, [&] {
    auto *captured = static_cast<at::cuda::CUDAGraph *>(graph);
    if (pool_of == nullptr) {
      captured->capture_begin();
    } else {
      captured->capture_begin(static_cast<at::cuda::CUDAGraph *>(pool_of)->pool());
    }
  });
}

int tl_graph_capture_end(void *graph, char **error) {
  return guarded(error, [&] { static_cast<at::cuda::CUDAGraph *>(graph)->capture_end(); });
}

int tl_graph_replay(void *graph, char **error) {
  return guarded(error, [&] { static_cast<at::cuda::CUDAGraph *>(graph)->replay(); });
}

} // extern "C"
