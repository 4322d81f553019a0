// ISA dispatch of CPU kernel tables, in the manner of ATen's DispatchStub. A method declares its table type (a
// struct of function pointers, e.g. gptq::CpuKernels) and compiles it once per ISA level in files named
// <name>_<isa>.cpp (CMake gives each its flags by suffix). Each such TU defines one getter with
// SF_DEFINE_CPU_KERNELS; the op glue (compiled with baseline flags) lists the getters the method has in a
// CpuDispatch and calls active() on every op call.
//
// A method need not have every level: CpuDispatch returns the table of the active level or, when the method has
// no TU for it, of the best lower level it has (a method with scalar + avx2 TUs runs its avx2 kernels on an
// AVX-512 machine). Only the getter of a level the CPU supports is ever called, and the table is built inside it
// (a function-local static, on first use), so no code compiled with a higher level's flags runs at load time.
// Framework-free (the per-ISA kernel library links no torch).
#pragma once
#include <stdexcept>
#include <string>

#include "common/cpu_isa.h"

namespace slimformer {

template <class Table>
struct CpuDispatch {
  using Getter = const Table& (*)();
  // Indexed by CpuIsa: scalar, avx2, avx512, avx512vnni, avx512bf16, amx; nullptr where the method has no kernels of that level.
  Getter by_isa[kNumCpuIsas];

  const Table& get(CpuIsa isa) const {
    for (int i = static_cast<int>(isa); i >= 0; --i)
      if (by_isa[i] != nullptr) return by_isa[i]();
    throw std::runtime_error(std::string("no CPU kernels registered at or below ") + cpu_isa_name(isa) +
                             " (every method needs a scalar TU)");
  }
  // The table for SLIMFORMER_CPU_ISA / the detected CPU (validated by active_cpu_isa()).
  const Table& active() const { return get(active_cpu_isa()); }
};

}  // namespace slimformer

// In a per-ISA TU: defines `const Table& getter()` returning the table built by `make` (an expression of this TU's
// ISA namespace), constructed once, on first use.
#define SF_DEFINE_CPU_KERNELS(Table, getter, make) \
  const Table& getter() {                          \
    static const Table table = make;               \
    return table;                                  \
  }
