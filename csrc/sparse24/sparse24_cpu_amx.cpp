// AMX instantiation of the 2:4 sparse CPU kernels (Sapphire Rapids and later Xeons): the avx512bf16 kernels with the
// large-M bf16 route on AMX tiles (sparse24_cpu_amx.h); CMake gives this TU the amx flags by its suffix.
#define SF_ISA_NS amx_impl
// The small-M kernel's software prefetch, this many bytes ahead in each row's values (sparse24_cpu_kernel.h). Every
// AMX CPU is an Intel Xeon, whose cores keep fewer reads in flight than Zen 4's: on a 2-core Emerald Rapids, 2
// threads, 16 x 4096x11008 bf16 values, M=1, six alternating runs, median us per layer: none 4161, 1024 bytes 2957,
// 2048 bytes 2680 (on Zen 4 the prefetch measured slower than none, so the other levels go without).
#define SF_S24_PREFETCH 2048
#include "common/cpu_dispatch.h"
#include "sparse24/sparse24_cpu_kernel.h"

namespace slimformer {
namespace sparse24 {
SF_DEFINE_CPU_KERNELS(CpuKernels, cpu_kernels_amx, amx_impl::kernels())
}  // namespace sparse24
}  // namespace slimformer
