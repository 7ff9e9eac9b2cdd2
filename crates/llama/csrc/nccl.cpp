// NCCL all-reduce for LibTorch CUDA tensors, for data-parallel training. NCCL's C API is
// declared here (a handful of functions; its ABI has been stable since 2.x) and resolved with
// dlopen from the libnccl.so.2 that libtorch_cuda already loaded, so the build needs no NCCL
// headers and no extra library. llama/src/nccl.rs is the only caller. Every function returns
// 0, or 1 with a malloc'd message in *error (freed with tl_free_error, in cuda_graph.cpp).

#include "shim.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <dlfcn.h>

#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

namespace {

struct NcclUniqueId {
  char internal[128];
};
using NcclComm = void *;
using NcclResult = int;
constexpr int kNcclSum = 0;
constexpr int kNcclFloat32 = 7;
constexpr int kNcclBfloat16 = 9;

struct NcclApi {
  NcclResult (*get_unique_id)(NcclUniqueId *);
  NcclResult (*comm_init_rank)(NcclComm *, int, NcclUniqueId, int);
  NcclResult (*all_reduce)(const void *, void *, size_t, int, int, NcclComm, cudaStream_t);
  NcclResult (*comm_destroy)(NcclComm);
  const char *(*get_error_string)(NcclResult);
};

const NcclApi &api() {
  static NcclApi loaded = [] {
    void *library = dlopen("libnccl.so.2", RTLD_NOW | RTLD_GLOBAL);
    if (!library) {
      throw std::runtime_error(std::string("cannot load libnccl.so.2: ") + dlerror());
    }
    auto symbol = [&](const char *name) {
      void *found = dlsym(library, name);
      if (!found) throw std::runtime_error(std::string("libnccl.so.2 has no ") + name);
      return found;
    };
    NcclApi api;
    api.get_unique_id = reinterpret_cast<decltype(api.get_unique_id)>(symbol("ncclGetUniqueId"));
    api.comm_init_rank = reinterpret_cast<decltype(api.comm_init_rank)>(symbol("ncclCommInitRank"));
    api.all_reduce = reinterpret_cast<decltype(api.all_reduce)>(symbol("ncclAllReduce"));
    api.comm_destroy = reinterpret_cast<decltype(api.comm_destroy)>(symbol("ncclCommDestroy"));
    api.get_error_string =
        reinterpret_cast<decltype(api.get_error_string)>(symbol("ncclGetErrorString"));
    return api;
  }();
  return loaded;
}

void check(NcclResult result, const char *what) {
  if (result != 0) {
    throw std::runtime_error(std::string(what) + ": " + api().get_error_string(result));
  }
}

// Makes `device` current for a scope. (c10's CUDAGuard would pull inline CUDA runtime calls
// into this object; c10::cuda's functions live in libc10_cuda.)
struct CurrentDevice {
  c10::DeviceIndex previous;
  explicit CurrentDevice(c10::DeviceIndex device) : previous(c10::cuda::current_device()) {
    c10::cuda::set_device(device);
  }
  ~CurrentDevice() { c10::cuda::set_device(previous); }
};

} // namespace

extern "C" {

// A fresh 128-byte NCCL id (rank 0 makes it; every rank needs the same one).
int tl_nccl_unique_id(char *id, char **error) {
  return tuneloop::guarded(error, [&] {
    NcclUniqueId unique;
    check(api().get_unique_id(&unique), "ncclGetUniqueId");
    std::memcpy(id, unique.internal, sizeof(unique.internal));
  });
}

// Joins the group: blocks until all `world_size` ranks have called it with the same id.
int tl_nccl_init(const char *id, int world_size, int rank, int device, void **comm, char **error) {
  return tuneloop::guarded(error, [&] {
    CurrentDevice current(static_cast<c10::DeviceIndex>(device));
    NcclUniqueId unique;
    std::memcpy(unique.internal, id, sizeof(unique.internal));
    NcclComm created = nullptr;
    check(api().comm_init_rank(&created, world_size, unique, rank), "ncclCommInitRank");
    *comm = created;
  });
}

void tl_nccl_destroy(void *comm) {
  if (comm) api().comm_destroy(static_cast<NcclComm>(comm));
}

// Sums a contiguous f32 or bf16 CUDA tensor over the group, in place, on the tensor's
// device's current stream (ordered after the work that produced it).
int tl_nccl_all_reduce_sum(void *comm, const at::Tensor *tensor, char **error) {
  return tuneloop::guarded(error, [&] {
    if (!tensor->is_cuda() || !tensor->is_contiguous()) {
      throw std::runtime_error("all-reduce needs a contiguous CUDA tensor");
    }
    int dtype = tensor->scalar_type() == at::kFloat      ? kNcclFloat32
                : tensor->scalar_type() == at::kBFloat16 ? kNcclBfloat16
                                                         : -1;
    if (dtype < 0) throw std::runtime_error("all-reduce supports f32 and bf16 tensors");
    // NCCL enqueues on the current device, which must be the communicator's.
    CurrentDevice current(tensor->device().index());
    auto stream = c10::cuda::getCurrentCUDAStream(tensor->device().index());
    check(api().all_reduce(tensor->data_ptr(), tensor->data_ptr(), tensor->numel(), dtype, kNcclSum,
                           static_cast<NcclComm>(comm), stream.stream()),
          "ncclAllReduce");
  });
}

} // extern "C"
