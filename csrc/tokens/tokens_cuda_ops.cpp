// CUDA implementation of slimformer::token_attention (built only when the installed torch has CUDA): the shared
// checks, zeroed accumulators, normalized head weights, the framework-free launcher on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "tokens/tokens_cuda.h"
#include "tokens/tokens_ops_common.h"

namespace slimformer {
namespace tokens {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                                    const at::Tensor& v,
                                                                    const c10::optional<at::Tensor>& key_bias_in,
                                                                    const c10::optional<at::Tensor>& keep_in,
                                                                    const c10::optional<at::Tensor>& head_weights_in,
                                                                    bool need_out, bool need_probs) {
  const int64_t NK = check_attention_inputs(q, k, v, key_bias_in, keep_in, head_weights_in, need_out, need_probs);
  TORCH_CHECK(NK <= kCudaMaxTokens, "token_attention on CUDA takes at most ", kCudaMaxTokens, " tokens, got ", NK);
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), N = q.size(1), H = q.size(2), D = q.size(3);
  const at::Tensor qc = q.stride(3) == 1 ? q : q.contiguous();
  const at::Tensor kc = k.stride(3) == 1 ? k : k.contiguous();
  const at::Tensor vc = v.stride(3) == 1 ? v : v.contiguous();
  const bool has_bias = key_bias_in.has_value() && key_bias_in->defined();
  const bool has_keep = keep_in.has_value() && keep_in->defined();
  const at::Tensor bias = has_bias ? key_bias_in->contiguous() : at::Tensor();
  const at::Tensor keep = has_keep ? keep_in->contiguous() : at::Tensor();
  at::Tensor out = need_out ? at::empty({B, NK, H, D}, q.options()) : at::empty({0}, q.options());
  at::Tensor imp = at::zeros({B, H, NK}, q.options());
  at::Tensor probs = need_probs ? at::zeros({B, NK, NK}, q.options()) : at::empty({0}, q.options());
  at::Tensor w;
  if (need_probs) {
    w = head_weights_in.has_value() && head_weights_in->defined() ? head_weights_in->to(at::kFloat)
                                                                   : at::ones({B, H}, q.options());
    w = (w / w.sum(1, true).clamp_min(1e-30)).contiguous();
  }
  AttnArgs a{N,
             NK,
             H,
             D,
             qc.data_ptr<float>(),
             kc.data_ptr<float>(),
             vc.data_ptr<float>(),
             {qc.stride(0), qc.stride(1), qc.stride(2)},
             {kc.stride(0), kc.stride(1), kc.stride(2)},
             {vc.stride(0), vc.stride(1), vc.stride(2)},
             has_keep ? keep.data_ptr<int64_t>() : nullptr,
             has_bias ? bias.data_ptr<float>() : nullptr,
             static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))),
             need_out ? out.data_ptr<float>() : nullptr};
  const cudaError_t err = launch_token_attention(a, B, need_probs ? w.data_ptr<float>() : nullptr,
                                                 imp.data_ptr<float>(), need_probs ? probs.data_ptr<float>() : nullptr,
                                                 c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "token attention kernel failed: ", cudaGetErrorString(err));
  return {out, imp, probs};
}

}  // namespace

TORCH_LIBRARY_IMPL(slimformer, CUDA, m) { m.impl("token_attention", &token_attention_cuda); }

}  // namespace tokens
}  // namespace slimformer
