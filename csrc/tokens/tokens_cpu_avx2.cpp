// avx2 instantiation of the token-pruned attention kernel (tokens_cpu_kernel.h); CMake gives this TU the avx2 flags
// by its suffix, and it runs only after run-time detection (csrc/common/cpu_isa.cpp).
#define SF_ISA_NS avx2_impl
#include "common/simd_avx2.h"
#include "common/cpu_dispatch.h"
#include "tokens/tokens_cpu_kernel.h"

namespace slimformer {
namespace tokens {
SF_DEFINE_CPU_KERNELS(CpuKernels, cpu_kernels_avx2, avx2_impl::kernels())
}  // namespace tokens
}  // namespace slimformer
