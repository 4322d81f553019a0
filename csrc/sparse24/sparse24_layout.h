// The 2:4 metadata decode shared by the CPU kernels and the CUDA kernels (host and device): a group's 4-bit mask
// (one nibble of the sparse-24-bitmask layout, csrc/sparse24/sparse24_cpu.h) -> its two kept columns.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define SF_S24_HD __host__ __device__
#else
#define SF_S24_HD
#endif

namespace slimformer {
namespace sparse24 {

// For a group's 4-bit mask: first kept column | second kept column << 2 (bits 0-3), or kBadNibble when the nibble
// does not keep exactly two columns.
constexpr uint8_t kBadNibble = 0x80;
SF_S24_HD constexpr uint8_t pair_of_nibble(int nib) {
  int first = -1, second = -1, count = 0;
  for (int b = 0; b < 4; ++b)
    if (nib >> b & 1) {
      ++count;
      if (first < 0) first = b;
      else second = b;
    }
  return count == 2 ? static_cast<uint8_t>(first | second << 2) : kBadNibble;
}
SF_S24_HD constexpr uint8_t first_of(uint8_t pair) { return pair == kBadNibble ? kBadNibble : (pair & 3); }
SF_S24_HD constexpr uint8_t second_of(uint8_t pair) { return pair == kBadNibble ? kBadNibble : (pair >> 2 & 3); }

}  // namespace sparse24
}  // namespace slimformer
