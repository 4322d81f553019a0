// AMX-level instantiation of the GPTQ CPU kernels (Sapphire Rapids and later Xeons): the avx512bf16 kernels, except
// that the fp32 kernel converts its integers to float instead of reading them as denormals (simd_avx512.h: Intel
// cores take a microcode assist on each denormal operand), plus the large-M route for bf16 activations on the tiles
// (gptq_cpu_amx.h). CMake compiles this TU with the amx flags (by its suffix).
#define SF_ISA_NS amx_impl
#define SF_SIMD_MANTISSA_EXTRACTION 0
#include "common/simd_avx512.h"

namespace slimformer {
namespace gptq {
namespace amx_impl {
using V = simd::amx_impl::V;
}  // namespace amx_impl
}  // namespace gptq
}  // namespace slimformer
#include "common/cpu_dispatch.h"
#include "gptq_cpu_bf16.h"
#include "gptq_cpu_amx.h"
#include "gptq_cpu_kernel.h"

namespace slimformer {
namespace gptq {
SF_DEFINE_CPU_KERNELS(CpuKernels, cpu_kernels_amx, amx_impl::kernels())
}  // namespace gptq
}  // namespace slimformer
