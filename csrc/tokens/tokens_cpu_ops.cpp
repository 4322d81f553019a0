// CPU implementation of slimformer::token_attention: checks, the kernel table of the active ISA, and the work split
// (a task per sequence and head; a task per sequence when the head-averaged matrix is asked for, so the heads add
// into one buffer without races). Importance comes back per head; the caller sums the heads (or filters them).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/cpu_dispatch.h"
#include "common/cpu_isa.h"
#include "tokens/tokens_cpu.h"
#include "tokens/tokens_ops_common.h"

namespace slimformer {
namespace tokens {
namespace {

constexpr CpuDispatch<CpuKernels> kCpuKernels{{&cpu_kernels_scalar, &cpu_kernels_avx2, &cpu_kernels_avx512, nullptr,
                                               nullptr}};

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                   const at::Tensor& v,
                                                                   const c10::optional<at::Tensor>& key_bias_in,
                                                                   const c10::optional<at::Tensor>& keep_in,
                                                                   const c10::optional<at::Tensor>& head_weights_in,
                                                                   bool need_out, bool need_probs) {
  PreparedAttention pa = prepare_attention(q, k, v, key_bias_in, keep_in, head_weights_in, need_out, need_probs);
  // (CPU only: on CUDA such a bias gives NaN rows rather than a host synchronization on every call)
  TORCH_CHECK(!pa.bias.defined() ||
                  !(at::isnan(pa.bias).any().item<bool>() || at::isposinf(pa.bias).any().item<bool>()),
              "key_bias must be finite or -inf (a masked key); it holds NaN or +inf");
  const AttnArgs& a = pa.args;
  const int64_t B = pa.B, NK = a.NK, H = a.H;
  const CpuKernels& kern = kCpuKernels.active();
  const int64_t nkp = padded(NK);
  const size_t scratch = scratch_floats(a);
  at::Tensor imp = at::zeros({B, H, nkp}, q.options());
  float* ip = imp.data_ptr<float>();
  at::Tensor probs = at::empty({0}, q.options());
  if (!need_probs) {
    at::parallel_for(0, B * H, 1, [&](int64_t t0, int64_t t1) {
      std::vector<float> work(scratch);
      for (int64_t t = t0; t < t1; ++t)
        kern.attention_head(a, t / H, t % H, ip + t * nkp, nullptr, 0.f, need_out, work.data());
    });
  } else {
    const at::Tensor w = normalized_head_weights(head_weights_in, B, H, q.options());
    const float* wp = w.data_ptr<float>();
    at::Tensor pr = at::zeros({B, NK, nkp}, q.options());
    float* pp = pr.data_ptr<float>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> work(scratch);
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t h = 0; h < H; ++h)
          if (need_out || wp[b * H + h] != 0.f)  // statistics only: a head of weight 0 adds nothing
            kern.attention_head(a, b, h, ip + (b * H + h) * nkp, pp + b * NK * nkp, wp[b * H + h], need_out,
                              work.data());
    });
    probs = pr.narrow(2, 0, NK).contiguous();
  }
  return {pa.out, imp.narrow(2, 0, NK).contiguous(), probs};
}

at::Tensor wpr_cpu(const at::Tensor& attn, const at::Tensor& s0, int64_t iterations) {
  TORCH_CHECK(attn.dim() == 3 && attn.size(1) == attn.size(2), "attn must be [B, N, N], got ", attn.sizes());
  TORCH_CHECK(s0.dim() == 2 && s0.size(0) == attn.size(0) && s0.size(1) == attn.size(1), "s must be [B, N] = [",
              attn.size(0), ", ", attn.size(1), "], got ", s0.sizes());
  TORCH_CHECK(attn.scalar_type() == at::kFloat && s0.scalar_type() == at::kFloat, "attn and s must be float32, got ",
              attn.scalar_type(), " and ", s0.scalar_type());
  TORCH_CHECK(attn.device() == s0.device(), "attn and s must be on one device");
  TORCH_CHECK(iterations >= 0, "iterations must be >= 0, got ", iterations);
  // rows may be strided (a narrowed, padded buffer), columns must be contiguous
  const at::Tensor a = attn.stride(2) == 1 && attn.stride(1) >= attn.size(2) ? attn : attn.contiguous();
  at::Tensor s = s0.contiguous().clone();
  const int64_t B = a.size(0), N = a.size(1), lb = a.stride(0), ld = a.stride(1);
  const float* ap = a.data_ptr<float>();
  float* sp = s.data_ptr<float>();
  const CpuKernels& kern = kCpuKernels.active();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> t(static_cast<size_t>(N));
    for (int64_t b = b0; b < b1; ++b) kern.wpr_sequence(ap + b * lb, N, ld, sp + b * N, t.data(), iterations);
  });
  return s;
}

}  // namespace

TORCH_LIBRARY_IMPL(slimformer, CPU, m) {
  m.impl("token_attention", &token_attention_cpu);
  m.impl("wpr", &wpr_cpu);
}

}  // namespace tokens
}  // namespace slimformer
