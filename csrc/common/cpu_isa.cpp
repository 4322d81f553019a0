#include "common/cpu_isa.h"

#include "common/amx_permission.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace slimformer {

namespace {
bool cpu_has(const char* feature) {
#if defined(__x86_64__) || defined(__i386__)
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0), so AVX-512 reported here is
  // usable.
  __builtin_cpu_init();
  if (!std::strcmp(feature, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (!std::strcmp(feature, "avx512"))
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  if (!std::strcmp(feature, "avx512vnni")) return __builtin_cpu_supports("avx512vnni");
  if (!std::strcmp(feature, "avx512bf16")) return __builtin_cpu_supports("avx512bf16");
  if (!std::strcmp(feature, "avx512vbmi")) return __builtin_cpu_supports("avx512vbmi");
  if (!std::strcmp(feature, "avx512vbmi2")) return __builtin_cpu_supports("avx512vbmi2");
  if (!std::strcmp(feature, "avx512vpopcntdq")) return __builtin_cpu_supports("avx512vpopcntdq");
  if (!std::strcmp(feature, "amx"))
    return __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") && amx_permitted();
#endif
  (void)feature;
  return false;
}
}  // namespace

CpuIsa detected_cpu_isa() {
  static const CpuIsa isa = [] {
    if (!cpu_has("avx512")) return cpu_has("avx2") ? CpuIsa::kAvx2 : CpuIsa::kScalar;
    if (!cpu_has("avx512vnni")) return CpuIsa::kAvx512;
    const bool bf16 = cpu_has("avx512bf16") && cpu_has("avx512vbmi") && cpu_has("avx512vbmi2");
    if (!bf16) return CpuIsa::kAvx512Vnni;
    return cpu_has("amx") ? CpuIsa::kAmx : CpuIsa::kAvx512Bf16;
  }();
  return isa;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAmx: return "amx";
    case CpuIsa::kAvx512Bf16: return "avx512bf16";
    case CpuIsa::kAvx512Vnni: return "avx512vnni";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

CpuIsa active_cpu_isa() {
  const char* forced = std::getenv("SLIMFORMER_CPU_ISA");
  const CpuIsa best = detected_cpu_isa();
  if (forced == nullptr || *forced == '\0') return best;
  int want = -1;
  for (int i = 0; i < kNumCpuIsas; ++i)
    if (!std::strcmp(forced, cpu_isa_name(static_cast<CpuIsa>(i)))) want = i;
  TORCH_CHECK(want >= 0, "SLIMFORMER_CPU_ISA must be one of scalar, avx2, avx512, avx512vnni, avx512bf16, amx; got '", forced, "'");
  TORCH_CHECK(want <= static_cast<int>(best), "SLIMFORMER_CPU_ISA=", forced,
              " was requested but this CPU supports at most ", cpu_isa_name(best));
  return static_cast<CpuIsa>(want);
}

std::string cpu_feature_summary() {
  std::string s = std::string("isa=") + cpu_isa_name(detected_cpu_isa());
  for (const char* f : {"avx2", "avx512", "avx512vnni", "avx512bf16", "avx512vbmi", "avx512vbmi2", "avx512vpopcntdq", "amx"})
    s += std::string(" ") + f + "=" + (cpu_has(f) ? "1" : "0");
  return s;
}

}  // namespace slimformer
