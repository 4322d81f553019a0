// AVX2 + FMA instantiation of the GPTQ CPU kernels; CMake compiles this TU alone with the avx2 flags (by its
// _avx2.cpp suffix), and it is only called after run-time detection (csrc/common/cpu_isa.cpp).
#define SF_ISA_NS avx2_impl
#include "common/simd_avx2.h"

namespace slimformer {
namespace gptq {
namespace avx2_impl {
using V = simd::avx2_impl::V;
}  // namespace avx2_impl
}  // namespace gptq
}  // namespace slimformer
#include "common/cpu_dispatch.h"
#include "gptq_cpu_kernel.h"

namespace slimformer {
namespace gptq {
SF_DEFINE_CPU_KERNELS(CpuKernels, cpu_kernels_avx2, avx2_impl::kernels())
}  // namespace gptq
}  // namespace slimformer
