// AMX instantiation of the 2:4 sparse CPU kernels (Sapphire Rapids and later Xeons): the avx512bf16 kernels with the
// large-M bf16 route on AMX tiles (sparse24_cpu_amx.h); CMake gives this TU the amx flags by its suffix.
#define SF_ISA_NS amx_impl
#include "common/cpu_dispatch.h"
#include "sparse24/sparse24_cpu_kernel.h"

namespace slimformer {
namespace sparse24 {
SF_DEFINE_CPU_KERNELS(CpuKernels, cpu_kernels_amx, amx_impl::kernels())
}  // namespace sparse24
}  // namespace slimformer
