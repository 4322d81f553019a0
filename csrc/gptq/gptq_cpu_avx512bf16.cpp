// AVX-512 + VNNI + BF16 instantiation of the GPTQ CPU kernels (Cooper Lake, Sapphire Rapids, Zen 4 and later): the
// avx512vnni kernels, plus the bf16 kernel (gptq_cpu_bf16.h) that bf16 activations take for 2- and 4-bit weights.
// CMake compiles this TU alone with the avx512bf16 flags (by its suffix).
#define SF_ISA_NS avx512bf16_impl
#include "common/simd_avx512.h"

namespace slimformer {
namespace gptq {
namespace avx512bf16_impl {
using V = simd::avx512bf16_impl::V;
}  // namespace avx512bf16_impl
}  // namespace gptq
}  // namespace slimformer
#include "common/cpu_dispatch.h"
#include "gptq_cpu_bf16.h"
#include "gptq_cpu_kernel.h"

namespace slimformer {
namespace gptq {
SF_DEFINE_CPU_KERNELS(CpuKernels, cpu_kernels_avx512bf16, avx512bf16_impl::kernels())
}  // namespace gptq
}  // namespace slimformer
