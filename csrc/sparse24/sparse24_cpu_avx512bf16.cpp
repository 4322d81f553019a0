// AVX-512 BF16 + VBMI instantiation of the 2:4 sparse CPU kernels (Sapphire Rapids, Zen 4): the avx512 kernels plus
// the bf16 one (sparse24_cpu_kernel.h, OpsBf16); CMake gives this TU the avx512bf16 flags by its suffix.
#define SF_ISA_NS avx512bf16_impl
#include "common/cpu_dispatch.h"
#include "sparse24/sparse24_cpu_kernel.h"

namespace slimformer {
namespace sparse24 {
SF_DEFINE_CPU_KERNELS(CpuKernels, cpu_kernels_avx512bf16, avx512bf16_impl::kernels())
}  // namespace sparse24
}  // namespace slimformer
