// Portable scalar instantiation of the GPTQ CPU kernels (compiled with the baseline flags only).
#define SF_ISA_NS scalar_impl
#include "common/simd_scalar.h"

namespace slimformer {
namespace gptq {
namespace scalar_impl {
using V = simd::scalar_impl::V;
}  // namespace scalar_impl
}  // namespace gptq
}  // namespace slimformer
#include "common/cpu_dispatch.h"
#include "gptq_cpu_kernel.h"

namespace slimformer {
namespace gptq {
SF_DEFINE_CPU_KERNELS(CpuKernels, cpu_kernels_scalar, scalar_impl::kernels())
}  // namespace gptq
}  // namespace slimformer
