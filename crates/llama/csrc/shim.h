// What every C++ shim in this folder shares: the error convention of its C API.
#pragma once

#include <cstring>
#include <exception>

namespace tuneloop {

// Runs `body`: returns 0, or 1 with a malloc'd message in *error (freed by the caller with
// tl_free_error) when it throws, so that no C++ exception crosses into Rust.
template <typename F> int guarded(char **error, F &&body) {
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

} // namespace tuneloop
