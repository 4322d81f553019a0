// Argument checks shared by the op implementations. Every failure is a c10::Error, which PyTorch turns into a
// Python RuntimeError/ValueError-like exception carrying the message: expected vs. actual, never a crash.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace slimformer {

inline std::string shape_str(at::IntArrayRef s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

inline void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape,
                         const at::Device& device) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", c10::toString(dtype), ", got ",
              c10::toString(t.scalar_type()));
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape_str(shape), ", got ", shape_str(t.sizes()));
  TORCH_CHECK(t.device() == device, name, " must be on ", device.str(), ", got ", t.device().str());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous (call .contiguous() on it)");
}

}  // namespace slimformer
