// Helpers every per-ISA CPU kernel TU shares (any method): the DAZ guard, compile-time loops and the row-block
// dispatcher. Like the SIMD wrappers (simd_*.h) they live in the including TU's own namespace SF_ISA_NS, so no
// inline function compiled with one ISA's flags can be picked by the linker for another ISA's code.
#pragma once
#include <cstdint>
#include <type_traits>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#ifndef SF_ISA_NS
#error "define SF_ISA_NS (the TU's ISA namespace) before including common/cpu_kernel_util.h"
#endif

namespace slimformer {
namespace cpu {
namespace SF_ISA_NS {

// Kernels that feed denormals to the FPU (GPTQ's mantissa extraction) clear MXCSR.DAZ (torch.set_flush_denormal
// sets it) on whichever thread runs them, and restore it after: declare one of these for the call's duration.
// FTZ may stay set: it only flushes results, and such kernels produce normal floats.
struct NoFloatEnvironmentChange {};
#if defined(__x86_64__) || defined(__i386__)
struct ClearDenormalsAreZero {
  static constexpr unsigned kDaz = 0x0040;
  unsigned saved;
  ClearDenormalsAreZero() : saved(_mm_getcsr()) {
    if (saved & kDaz) _mm_setcsr(saved & ~kDaz);
  }
  ~ClearDenormalsAreZero() {
    if (saved & kDaz) _mm_setcsr(saved);
  }
};
#else
using ClearDenormalsAreZero = NoFloatEnvironmentChange;
#endif

// fn(std::integral_constant<int, i>{}) for i = I .. N-1, unrolled at compile time.
template <int I, int N, class Fn>
inline void static_for(Fn&& fn) {
  if constexpr (I < N) {
    fn(std::integral_constant<int, I>{});
    static_for<I + 1, N>(fn);
  }
}

// The row-block dispatcher: calls fn(std::integral_constant<int, MR>{}, m0) for the rows [0, M) in blocks of
// MR_MAX rows, the last block with its actual row count as the compile-time MR (kernels that keep MR activation
// rows in registers get one instantiation per row count, and no run-time row loop).
template <int MR, class Fn>
inline void with_rows(int64_t rows, int64_t m0, Fn&& fn) {
  if constexpr (MR > 1) {
    if (rows < MR) return with_rows<MR - 1>(rows, m0, fn);
  }
  fn(std::integral_constant<int, MR>{}, m0);
}
template <int MR_MAX, class Fn>
inline void for_row_blocks(int64_t M, Fn&& fn) {
  for (int64_t m0 = 0; m0 < M; m0 += MR_MAX) with_rows<MR_MAX>(M - m0 < MR_MAX ? M - m0 : MR_MAX, m0, fn);
}

}  // namespace SF_ISA_NS
}  // namespace cpu
}  // namespace slimformer
