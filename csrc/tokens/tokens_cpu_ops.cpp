// CPU implementation of slimformer::token_attention: checks, the kernel table of the active ISA, and the work split
// (a task per sequence and head; a task per sequence when the head-averaged matrix is asked for, so the heads add
// into one buffer without races). Importance comes back per head; the caller sums the heads (or filters them).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
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

// (CPU only: on CUDA such a bias gives NaN rows rather than a host synchronization on every call)
void check_bias_values(const PreparedAttention& pa) {
  TORCH_CHECK(!pa.bias.defined() ||
                  !(at::isnan(pa.bias).any().item<bool>() || at::isposinf(pa.bias).any().item<bool>()),
              "key_bias must be finite or -inf (a masked key); it holds NaN or +inf");
}

// torch.quantile's linear interpolation on sorted float values (rank q (n - 1) in float, torch.lerp's two-sided
// formula), so the filter below draws its bounds exactly where the Python one does.
float quantile_sorted(const std::vector<float>& v, double q) {
  const float rank = static_cast<float>(q) * static_cast<float>(v.size() - 1);
  const auto below = static_cast<size_t>(rank), above = static_cast<size_t>(std::ceil(rank));
  const float w = rank - static_cast<float>(below), a = v[below], b = v[above];
  return std::abs(w) < 0.5f ? a + w * (b - a) : b - (b - a) * (1.f - w);
}

// Zero-TPrune's head filter for one sequence, as slimformer.tokens.algorithms.head_filter defines it: per head, the
// population variance of the attention its real tokens receive (imp [H, nkp], real [NK]); weight 1 for the heads
// whose variance lies within the [low, high] quantiles of the sequence's heads, else 0.
void head_filter_weights(const float* imp, int64_t H, int64_t nkp, int64_t NK, const std::vector<uint8_t>& real,
                         double low, double high, float* w) {
  int64_t n = 0;
  for (int64_t j = 0; j < NK; ++j) n += real[j];
  const double count = static_cast<double>(std::max<int64_t>(n, 1));
  std::vector<float> var(static_cast<size_t>(H));
  for (int64_t h = 0; h < H; ++h) {
    const float* r = imp + h * nkp;
    double sum = 0.0, sq = 0.0;
    for (int64_t j = 0; j < NK; ++j)
      if (real[j]) sum += r[j];
    const double mean = sum / count;
    for (int64_t j = 0; j < NK; ++j)
      if (real[j]) sq += (r[j] - mean) * (r[j] - mean);
    var[h] = static_cast<float>(sq / count);
  }
  std::vector<float> sorted = var;
  std::sort(sorted.begin(), sorted.end());
  const float lo = quantile_sorted(sorted, low), hi = quantile_sorted(sorted, high);
  for (int64_t h = 0; h < H; ++h) w[h] = var[h] >= lo && var[h] <= hi ? 1.f : 0.f;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                   const at::Tensor& v,
                                                                   const c10::optional<at::Tensor>& key_bias_in,
                                                                   const c10::optional<at::Tensor>& keep_in,
                                                                   const c10::optional<at::Tensor>& head_weights_in,
                                                                   bool need_out, bool need_probs) {
  PreparedAttention pa = prepare_attention(q, k, v, key_bias_in, keep_in, head_weights_in, need_out, need_probs);
  check_bias_values(pa);
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
        kern.attention_head(a, t / H, t % H, ip + t * nkp, nullptr, 0.f, false, need_out, work.data());
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
            kern.attention_head(a, b, h, ip + (b * H + h) * nkp, pp + b * NK * nkp, wp[b * H + h], false, need_out,
                                work.data());
    });
    probs = pr.narrow(2, 0, NK).contiguous();
  }
  return {pa.out, imp.narrow(2, 0, NK).contiguous(), probs};
}

// Zero-TPrune's attention pass in one call: per sequence, every head's output, importance and probabilities (the
// latter into this thread's slabs, [H, NK, padded(NK)], L2-sized at 6 heads and 197 tokens), then the head filter
// on the importance, then the mean of the kept heads' probabilities. Two passes over the attention (the second over
// the dropped heads, to take them out of the all-heads mean) become one.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> token_attention_head_filtered_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& key_bias_in,
    const c10::optional<at::Tensor>& keep_in, double low, double high) {
  TORCH_CHECK(0.0 <= low && low <= high && high <= 1.0,
              "the head filter's quantiles must satisfy 0 <= low <= high <= 1, got low=", low, ", high=", high);
  PreparedAttention pa = prepare_attention(q, k, v, key_bias_in, keep_in, c10::nullopt, true, true);
  check_bias_values(pa);
  const AttnArgs& a = pa.args;
  const int64_t B = pa.B, NK = a.NK, H = a.H;
  TORCH_CHECK(H <= kMaxFilterHeads, "the head-filtered attention takes at most ", kMaxFilterHeads, " heads, got ", H);
  const CpuKernels& kern = kCpuKernels.active();
  const int64_t nkp = padded(NK);
  const size_t scratch = scratch_floats(a);
  at::Tensor imp = at::zeros({B, H, nkp}, q.options());
  at::Tensor probs = at::empty({B, NK, NK}, q.options());
  at::Tensor weights = at::empty({B, H}, q.options());
  float *ip = imp.data_ptr<float>(), *pp = probs.data_ptr<float>(), *wp = weights.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> work(scratch), slabs(static_cast<size_t>(H * NK * nkp)), wn(static_cast<size_t>(H));
    std::vector<uint8_t> real(static_cast<size_t>(NK));
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t h = 0; h < H; ++h)
        kern.attention_head(a, b, h, ip + (b * H + h) * nkp, slabs.data() + h * NK * nkp, 1.f, true, true,
                            work.data());
      for (int64_t j = 0; j < NK; ++j) real[j] = !masks_token(a.bias(b, j));
      head_filter_weights(ip + b * H * nkp, H, nkp, NK, real, low, high, wp + b * H);
      float kept = 0.f;
      for (int64_t h = 0; h < H; ++h) kept += wp[b * H + h];
      for (int64_t h = 0; h < H; ++h) wn[h] = wp[b * H + h] / std::max(kept, 1e-30f);
      kern.weighted_head_sum(slabs.data(), H, NK * nkp, wn.data(), NK, nkp, pp + b * NK * NK);
    }
  });
  return {pa.out, imp.narrow(2, 0, NK).contiguous(), probs, weights};
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
  m.impl("token_attention_head_filtered", &token_attention_head_filtered_cpu);
  m.impl("wpr", &wpr_cpu);
}

}  // namespace tokens
}  // namespace slimformer
