// CUDA implementation of slimformer::token_attention (built only when the installed torch has CUDA): the shared
// checks, zeroed accumulators, normalized head weights, the framework-free launcher on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

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
  PreparedAttention pa = prepare_attention(q, k, v, key_bias_in, keep_in, head_weights_in, need_out, need_probs);
  const int64_t NK = pa.args.NK, B = pa.B, H = pa.args.H;
  TORCH_CHECK(NK <= kCudaMaxTokens, "token_attention on CUDA takes at most ", kCudaMaxTokens, " tokens, got ", NK);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor imp = at::zeros({B, H, NK}, q.options());
  at::Tensor probs = need_probs ? at::zeros({B, NK, NK}, q.options()) : at::empty({0}, q.options());
  at::Tensor w = need_probs ? normalized_head_weights(head_weights_in, B, H, q.options()) : at::Tensor();
  const AttnArgs& a = pa.args;
  const cudaError_t err = launch_token_attention(a, B, need_probs ? w.data_ptr<float>() : nullptr,
                                                 imp.data_ptr<float>(), need_probs ? probs.data_ptr<float>() : nullptr,
                                                 c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "token attention kernel failed: ", cudaGetErrorString(err));
  return {pa.out, imp, probs};
}

}  // namespace

TORCH_LIBRARY_IMPL(slimformer, CUDA, m) { m.impl("token_attention", &token_attention_cuda); }

}  // namespace tokens
}  // namespace slimformer
