// avx512 instantiation of the token-pruned attention kernel (tokens_cpu_kernel.h); CMake gives this TU the avx512 flags
// by its suffix, and it runs only after run-time detection (csrc/common/cpu_isa.cpp).
#define SF_ISA_NS avx512_impl
#include "common/simd_avx512.h"
#include "common/cpu_dispatch.h"
#include "tokens/tokens_cpu_kernel.h"

namespace slimformer {
namespace tokens {
SF_DEFINE_CPU_KERNELS(CpuKernels, cpu_kernels_avx512, avx512_impl::kernels())
}  // namespace tokens
}  // namespace slimformer
