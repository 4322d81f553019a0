// Run-time CPU ISA selection. Shipped builds never use -march=native: every ISA path is compiled into the
// extension and the best one the running CPU supports is chosen when an op is called.
// SLIMFORMER_CPU_ISA=scalar|avx2|avx512|avx512vnni|avx512bf16|amx forces a path (the tests use it to cover every path on one machine);
// forcing a path the CPU cannot run is an error, not a crash.
#pragma once
#include <string>

namespace slimformer {

// Ordered levels, each a superset of the one before: avx2 = AVX2 + FMA + F16C; avx512 = AVX-512 F/BW/DQ/VL
// (Skylake-SP); avx512vnni = avx512 + VNNI (Ice Lake, Cascade Lake); avx512bf16 = avx512vnni + AVX512_BF16 +
// AVX512_VBMI + AVX512_VBMI2 (Sapphire Rapids, Zen 4); amx = avx512bf16 + AMX-TILE + AMX-BF16 (Sapphire Rapids and
// later Xeons), with the Linux kernel's permission to use the tile registers (requested once, for the process).
enum class CpuIsa { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Vnni = 3, kAvx512Bf16 = 4, kAmx = 5 };
constexpr int kNumCpuIsas = 6;

// Best ISA the CPU (and OS) supports.
CpuIsa detected_cpu_isa();
// The ISA to run now: SLIMFORMER_CPU_ISA when set (validated), else detected_cpu_isa(). Throws c10::Error on a
// bad or unsupported request.
CpuIsa active_cpu_isa();
const char* cpu_isa_name(CpuIsa isa);
// Human-readable summary of the CPU features that matter to slimformer's kernels.
std::string cpu_feature_summary();

}  // namespace slimformer
