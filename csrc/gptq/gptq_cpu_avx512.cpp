// AVX-512 (F, BW, DQ, VL) instantiation of the GPTQ CPU kernels; CMake compiles this TU alone with the avx512
// flags (by its _avx512.cpp suffix), and it is only called after run-time detection (csrc/common/cpu_isa.cpp).
#define SF_ISA_NS avx512_impl
#include "common/simd_avx512.h"

namespace slimformer {
namespace gptq {
namespace avx512_impl {
using V = simd::avx512_impl::V;
}  // namespace avx512_impl
}  // namespace gptq
}  // namespace slimformer
#include "common/cpu_dispatch.h"
#include "gptq_cpu_kernel.h"

namespace slimformer {
namespace gptq {
SF_DEFINE_CPU_KERNELS(CpuKernels, cpu_kernels_avx512, avx512_impl::kernels())
}  // namespace gptq
}  // namespace slimformer
