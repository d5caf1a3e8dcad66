// Ownership of libuv handles. A handle's memory may only be released in (or
// after) its close callback (libuv docs/src/handle.rst), so the deleter
// closes the handle and the close callback frees it. The loop must run once
// more after the owner goes away for the memory to be released.
#pragma once

#include <memory>

#include <uv.h>

namespace keyfed {

template <typename Handle>
struct UvCloseDeleter {
  void operator()(Handle* handle) const {
    if (handle == nullptr) return;
    auto* base = reinterpret_cast<uv_handle_t*>(handle);
    if (uv_is_closing(base)) return;  // already closing: its close callback frees it
    uv_close(base, [](uv_handle_t* h) { delete reinterpret_cast<Handle*>(h); });
  }
};

template <typename Handle>
using UvHandle = std::unique_ptr<Handle, UvCloseDeleter<Handle>>;

/// Allocates a handle of this type; the caller still calls uv_*_init on it.
template <typename Handle>
UvHandle<Handle> make_uv_handle() {
  return UvHandle<Handle>(new Handle{});
}

}  // namespace keyfed
