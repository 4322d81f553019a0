// GPTQ CPU kernels of one ISA: included once by each per-ISA TU (gptq_cpu_<isa>.cpp), after it has defined
// SF_ISA_NS and slimformer::gptq::SF_ISA_NS::V, the way ATen compiles its native kernels per CPU capability.
// One file per kernel, each with the header comment that explains its tiling and constants:
//   gptq_cpu_float.h    float kernel, small M, fp32/bf16 activations, every bit width (mantissa extraction)
//   gptq_cpu_int16.h    integer kernel, small M, bf16 activations (fp32 on request), every bit width (vpmaddwd)
//   gptq_cpu_a8.h       int8 activation mode, 4-bit weights (vpmaddubsw)
//   gptq_cpu_dequant.h  dequantized fp32 tiles for the large-M path and gptq_dequantize
//   gptq_cpu_common.h   what they share
// This file binds them per bit width (with_gptq_bits over the one list in gptq_layout.h) into the ISA's
// CpuKernels table (gptq_cpu.h), which the per-ISA TU registers for dispatch (common/cpu_dispatch.h).
#pragma once
#include "gptq_cpu_a8.h"
#include "gptq_cpu_dequant.h"
#include "gptq_cpu_float.h"
#include "gptq_cpu_int16.h"

namespace slimformer {
namespace gptq {
namespace SF_ISA_NS {

template <template <int> class Fn, class... Args>
void dispatch_bits(int64_t bits, Args&&... args) {
  // bits are validated by the torch glue before any kernel runs
  with_gptq_bits(bits, [&](auto b) { Fn<decltype(b)::value>::run(args...); });
}

template <int BITS>
struct SmallMGemm {
  static void run(const SmallMArgs& a, int64_t t0, int64_t t1) { small_m_gemm_bits<BITS>(a, t0, t1); }
};
template <int BITS>
struct PrepareRows {
  static void run(const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, float* xs, float* xsum,
                  float* row_scale) {
    with_input(x, [&](const auto* p) { prepare_rows<BITS>(w, p, m0, m1, xs, xsum, row_scale); });
  }
};
template <int BITS>
struct DequantTiles {
  static void run(const DequantArgs& a, int64_t t0, int64_t t1) { dequant_tiles_bits<BITS>(a, t0, t1); }
};

inline void prepare_rows_any(const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, float* xs, float* xsum,
                             float* row_scale) {
  dispatch_bits<PrepareRows>(w.bits, w, x, m0, m1, xs, xsum, row_scale);
}
inline void small_m_gemm_any(const SmallMArgs& a, int64_t t0, int64_t t1) {
  dispatch_bits<SmallMGemm>(a.w.bits, a, t0, t1);
}
inline void dequant_tiles_any(const DequantArgs& a, int64_t t0, int64_t t1) {
  dispatch_bits<DequantTiles>(a.w.bits, a, t0, t1);
}
template <int BITS>
struct PrepareRowsI16 {
  static void run(bool* ok, const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, int32_t* xq, float* bscale,
                  float* xsum, int32_t* res_n, int32_t* res_k, int32_t* res_g, float* res_lo) {
    if constexpr (i16_bits(BITS))
      *ok = with_input(x, [&](const auto* p) {
        return prepare_rows_i16<BITS>(w, p, m0, m1, xq, bscale, xsum, res_n, res_k, res_g, res_lo);
      });
  }
};
template <int BITS>
struct SmallMGemmI16 {
  static void run(const SmallMI16Args& a, int64_t t0, int64_t t1) {
    if constexpr (i16_bits(BITS)) small_m_gemm_i16_bits<BITS>(a, t0, t1);
  }
};
inline bool prepare_rows_i16_any(const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, int32_t* xq,
                                 float* bscale, float* xsum, int32_t* res_n, int32_t* res_k, int32_t* res_g, float* res_lo) {
  bool ok = false;  // bits without an integer path: the caller falls back to the float path
  dispatch_bits<PrepareRowsI16>(w.bits, &ok, w, x, m0, m1, xq, bscale, xsum, res_n, res_k, res_g, res_lo);
  return ok;
}
inline void small_m_gemm_i16_any(const SmallMI16Args& a, int64_t t0, int64_t t1) {
  dispatch_bits<SmallMGemmI16>(a.w.bits, a, t0, t1);
}
// The level's table; the bf16 kernel is in it where the TU included gptq_cpu_bf16.h first (avx512bf16, amx), the
// AMX large-M route where it included gptq_cpu_amx.h (amx).
inline CpuKernels kernels() {
#if defined(SF_GPTQ_AMX_KERNEL)
  constexpr auto large_m_amx = &large_m_gemm_amx_any;
#else
  constexpr void (*large_m_amx)(const LargeMAmxArgs&, int64_t, int64_t) = nullptr;
#endif
#if defined(SF_GPTQ_BF16_KERNEL)
  return CpuKernels{&prepare_rows_any,      &small_m_gemm_any,    &dequant_tiles_any, &prepare_rows_i16_any,
                    &small_m_gemm_i16_any,  &prepare_rows_a8_any, &small_m_gemm_a8,   &prepare_rows_bf16_any,
                    &small_m_gemm_bf16_any, large_m_amx};
#else
  return CpuKernels{&prepare_rows_any,     &small_m_gemm_any,    &dequant_tiles_any, &prepare_rows_i16_any,
                    &small_m_gemm_i16_any, &prepare_rows_a8_any, &small_m_gemm_a8,   nullptr,
                    nullptr,               large_m_amx};
#endif
}

}  // namespace SF_ISA_NS
}  // namespace gptq
}  // namespace slimformer
