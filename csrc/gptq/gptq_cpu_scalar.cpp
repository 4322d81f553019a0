// Portable scalar instantiation of the GPTQ CPU kernels (compiled with the baseline flags only), plus the
// activation prescale shared by every ISA path.
#include <cmath>
#include <cstdint>

#define SF_ISA_NS scalar_impl
namespace slimformer {
namespace gptq {
namespace scalar_impl {
struct V {
  static constexpr int L = 1;
  static constexpr int MR_MAX = 1;
  using F = float;
  using I = uint32_t;
  static F zero() { return 0.f; }
  static F set1(float v) { return v; }
  static F load(const float* p) { return *p; }
  static void store(float* p, F v) { *p = v; }
  static F bcast(const float* p) { return *p; }
  static F fma(F a, F b, F c) { return std::fma(a, b, c); }
  static F fnma(F a, F b, F c) { return std::fma(-a, b, c); }
  static F fms(F a, F b, F c) { return std::fma(a, b, -c); }
  static F add(F a, F b) { return a + b; }
  static F mul(F a, F b) { return a * b; }
  static I loadi(const int32_t* p) { return static_cast<uint32_t>(*p); }
  static I and_(I a, uint32_t m) { return a & m; }
  static I or_(I a, I b) { return a | b; }
  template <int S> static I srl(I a) { return a >> S; }
  template <int S> static I sll(I a) { return a << S; }
  static F cvt(I a) { return static_cast<float>(static_cast<int32_t>(a)); }
};
}  // namespace scalar_impl
}  // namespace gptq
}  // namespace slimformer
#include "gptq_cpu_kernel.h"

namespace slimformer {
namespace gptq {

void small_m_gemm_scalar(const SmallMArgs& a, int64_t t0, int64_t t1) {
  scalar_impl::dispatch_bits<scalar_impl::SmallMGemm>(a.w.bits, a, t0, t1);
}
void dequant_tiles_scalar(const DequantArgs& a, int64_t t0, int64_t t1) {
  scalar_impl::dispatch_bits<scalar_impl::DequantTiles>(a.w.bits, a, t0, t1);
}

void prescale_activation_row(const float* x, int64_t K, int64_t bits, int64_t group_size, float* xs, float* xsum) {
  const int uv = unit_values(static_cast<int>(bits));
  float factor[32];
  for (int r = 0; r < uv; ++r) factor[r] = std::ldexp(1.0f, -value_prescale_shift(static_cast<int>(bits), r));
  for (int64_t k = 0; k < K; ++k) xs[k] = x[k] * factor[k % uv];
  const int64_t groups = (K + group_size - 1) / group_size;
  for (int64_t g = 0; g < groups; ++g) {
    double s = 0.0;  // double: the group sum multiplies the zero point, keep it exact enough for any K
    const int64_t k1 = (g + 1) * group_size < K ? (g + 1) * group_size : K;
    for (int64_t k = g * group_size; k < k1; ++k) s += x[k];
    xsum[g] = static_cast<float>(s);
  }
}

}  // namespace gptq
}  // namespace slimformer
