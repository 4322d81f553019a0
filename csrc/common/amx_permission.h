// Linux hands out the AMX tile-data state (XFEATURE 18) only to a process that asks for it (arch_prctl
// ARCH_REQ_XCOMP_PERM, kernel 5.16+); until then the first tile instruction faults. The permission covers every thread
// of the process, so asking once, before any AMX kernel runs, is enough (oneDNN asks the same way). Framework-free:
// the op glue's ISA detection (cpu_isa.cpp) and the C++ benchmark both ask through this.
#pragma once

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace slimformer {

// True when this process may use the AMX tile registers (asked on the first call, remembered after).
inline bool amx_permitted() {
#if defined(__linux__) && defined(__x86_64__)
  static const bool ok = [] {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

}  // namespace slimformer
