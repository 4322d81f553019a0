// scalar instantiation of the token-pruned attention kernel (tokens_cpu_kernel.h); CMake gives this TU the scalar flags
// by its suffix, and it runs only after run-time detection (csrc/common/cpu_isa.cpp).
#define SF_ISA_NS scalar_impl
#include "common/simd_scalar.h"
#include "common/cpu_dispatch.h"
#include "tokens/tokens_cpu_kernel.h"

namespace slimformer {
namespace tokens {
SF_DEFINE_CPU_KERNELS(CpuKernels, cpu_kernels_scalar, scalar_impl::kernels())
}  // namespace tokens
}  // namespace slimformer
