// Argument checks shared by the CPU and CUDA glue of slimformer::token_attention.
#pragma once
#include <ATen/ATen.h>

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

}  // namespace tokens
}  // namespace slimformer
