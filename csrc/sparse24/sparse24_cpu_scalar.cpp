// scalar instantiation of the 2:4 sparse CPU kernels (sparse24_cpu_kernel.h); CMake gives this TU the scalar flags
// by its suffix.
#define SF_ISA_NS scalar_impl
#include "common/cpu_dispatch.h"
#include "sparse24/sparse24_cpu_kernel.h"

namespace slimformer {
namespace sparse24 {
SF_DEFINE_CPU_KERNELS(CpuKernels, cpu_kernels_scalar, scalar_impl::kernels())
}  // namespace sparse24
}  // namespace slimformer
