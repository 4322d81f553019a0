// Argument checks shared by the CPU and CUDA glue of slimformer::token_attention.
#pragma once
#include <ATen/ATen.h>

#include <cmath>

#include "tokens/tokens_cpu.h"

namespace slimformer {
namespace tokens {

// Returns the number of tokens taking part (keep's row length, or N).
inline int64_t check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const c10::optional<at::Tensor>& key_bias,
                                      const c10::optional<at::Tensor>& keep,
                                      const c10::optional<at::Tensor>& head_weights, bool need_out,
                                      bool need_probs) {
  TORCH_CHECK(need_out || need_probs, "token_attention: asked for neither the output nor the probabilities");
  TORCH_CHECK(q.dim() == 4, "q must be [batch, tokens, heads, head_dim], got shape ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), "q, k and v must have one shape [B, N, H, D], got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  for (const at::Tensor* t : {&q, &k, &v}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, "token_attention takes float32 q, k, v, got ",
                c10::toString(t->scalar_type()));
    TORCH_CHECK(t->device() == q.device(), "q, k and v must be on one device, got ", q.device(), " and ",
                t->device());
  }
  const int64_t B = q.size(0), N = q.size(1);
  TORCH_CHECK(B > 0 && N > 0 && q.size(2) > 0 && q.size(3) > 0, "token_attention needs non-empty q, got ",
              q.sizes());
  if (key_bias.has_value() && key_bias->defined()) {
    TORCH_CHECK(key_bias->scalar_type() == at::kFloat && key_bias->dim() == 2 && key_bias->size(0) == B &&
                    key_bias->size(1) == N,
                "key_bias must be float32 [batch, tokens] = [", B, ", ", N, "], got ",
                c10::toString(key_bias->scalar_type()), " ", key_bias->sizes());
    TORCH_CHECK(key_bias->device() == q.device(), "key_bias must be on q's device (", q.device(), "), got ",
                key_bias->device());
  }
  if (head_weights.has_value() && head_weights->defined()) {
    TORCH_CHECK(need_probs, "head_weights weight the head-averaged probabilities: pass need_probs=True");
    TORCH_CHECK(head_weights->is_floating_point() && head_weights->dim() == 2 && head_weights->size(0) == B &&
                    head_weights->size(1) == q.size(2),
                "head_weights must be floating [batch, heads] = [", B, ", ", q.size(2), "], got ",
                c10::toString(head_weights->scalar_type()), " ", head_weights->sizes());
    TORCH_CHECK(head_weights->device() == q.device(), "head_weights must be on q's device (", q.device(), "), got ",
                head_weights->device());
    TORCH_CHECK(head_weights->min().item<double>() >= 0, "head_weights must not be negative");
  }
  if (!(keep.has_value() && keep->defined())) return N;
  TORCH_CHECK(keep->scalar_type() == at::kLong && keep->dim() == 2 && keep->size(0) == B && keep->size(1) >= 1,
              "keep must be int64 [batch, kept tokens] with at least one token, got ",
              c10::toString(keep->scalar_type()), " ", keep->sizes());
  TORCH_CHECK(keep->device() == q.device(), "keep must be on q's device (", q.device(), "), got ", keep->device());
  const auto lo = keep->min().item<int64_t>(), hi = keep->max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < N, "keep holds token indices in [0, ", N, "), got values from ", lo, " to ", hi);
  return keep->size(1);
}

// The checked inputs in the layout the kernels read (d contiguous, other strides as they are), the output tensor, and
// the kernels' argument block pointing into them (valid while this object lives).
struct PreparedAttention {
  at::Tensor q, k, v, bias, keep, out;
  AttnArgs args;
  int64_t B;
};

inline PreparedAttention prepare_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const c10::optional<at::Tensor>& key_bias,
                                           const c10::optional<at::Tensor>& keep,
                                           const c10::optional<at::Tensor>& head_weights, bool need_out,
                                           bool need_probs) {
  const int64_t NK = check_attention_inputs(q, k, v, key_bias, keep, head_weights, need_out, need_probs);
  PreparedAttention p;
  p.q = q.stride(3) == 1 ? q : q.contiguous();
  p.k = k.stride(3) == 1 ? k : k.contiguous();
  p.v = v.stride(3) == 1 ? v : v.contiguous();
  if (key_bias.has_value() && key_bias->defined()) p.bias = key_bias->contiguous();
  if (keep.has_value() && keep->defined()) p.keep = keep->contiguous();
  const int64_t B = q.size(0), N = q.size(1), H = q.size(2), D = q.size(3);
  p.B = B;
  p.out = need_out ? at::empty({B, NK, H, D}, q.options()) : at::empty({0}, q.options());
  p.args = AttnArgs{N,
                    NK,
                    H,
                    D,
                    p.q.data_ptr<float>(),
                    p.k.data_ptr<float>(),
                    p.v.data_ptr<float>(),
                    {p.q.stride(0), p.q.stride(1), p.q.stride(2)},
                    {p.k.stride(0), p.k.stride(1), p.k.stride(2)},
                    {p.v.stride(0), p.v.stride(1), p.v.stride(2)},
                    p.keep.defined() ? p.keep.data_ptr<int64_t>() : nullptr,
                    p.bias.defined() ? p.bias.data_ptr<float>() : nullptr,
                    static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))),
                    need_out ? p.out.data_ptr<float>() : nullptr};
  return p;
}

// Head weights normalized per sequence ([B, H]; all 1 / H when none are given).
inline at::Tensor normalized_head_weights(const c10::optional<at::Tensor>& head_weights, int64_t B, int64_t H,
                                          const at::TensorOptions& options) {
  at::Tensor w = head_weights.has_value() && head_weights->defined() ? head_weights->to(options.dtype(at::kFloat))
                                                                     : at::ones({B, H}, options.dtype(at::kFloat));
  return (w / w.sum(1, true).clamp_min(1e-30)).contiguous();
}

}  // namespace tokens
}  // namespace slimformer
