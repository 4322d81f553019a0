// Operand fragments of the sparse tensor-core instruction mma.sp.sync.aligned.m16n8k32.row.col.f32.{bf16,f16}, built
// from slimformer's 2:4 layout (values [N, K/2], bitmask [N, ceil(K/8)]; sparse24_cpu.h). Host and device code: the
// CUDA kernel (sparse24.cu) gathers its registers with these functions, and the CPU build runs the same functions
// through an emulation of the instruction (emulate_mma_sp below, op slimformer::sparse24_mma_emulate), so the index
// arithmetic, the tails and the metadata conversion are tested on every CI run, GPU or not.
//
// The product tile: y^T[16 weight rows, 8 tokens] += W[16, 32] (2:4, as A) x x^T[32, 8] (as B). Per lane of the warp
// (g = lane / 4, t = lane % 4), as PTX ISA 9.7.14.6 ("mma.sp with sparse matrix A") lays them out:
// * A: 4 registers of 2 packed 16-bit values of the compressed 16 x 16 tile, the layout of dense m16n8k16's A:
//   register j holds compressed columns 2t, 2t+1 (+8 for j >= 2) of row g (+8 for odd j).
// * metadata e (sparsity selector 0, so lanes with t = 0, 1 supply it): lane t covers input columns 16t..16t+15;
//   bits [15:0] are row g, bits [31:16] row g + 8, 4 bits per group of 4 inputs, lowest group first; a group's
//   4 bits are the in-group position of its first kept value (bits 1:0) and of its second (bits 3:2) -- the same
//   encoding as pair_of_nibble in sparse24_layout.h.
// * B: 4 registers of 2 packed values; register j holds inputs 8j + 2t, 8j + 2t + 1 of token g.
// * C/D: 4 floats; c0, c1 are row g, tokens 2t, 2t + 1; c2, c3 row g + 8.
// Triton's sparse-dot lowering builds its metadata registers the same way (16-bit halves of rows r and r + 8,
// one K-half per lane of a pair), which is the cross-check of this reading until a GPU runs the kernel.
#pragma once
#include <cstdint>
#include <cstring>

#include "sparse24/sparse24_layout.h"

namespace slimformer {
namespace sparse24 {
namespace mma {

constexpr int kTileRows = 16;  // weight rows (output features) of one instruction
constexpr int kTileCols = 8;   // tokens of one instruction
constexpr int kTileK = 32;     // inputs of one instruction
// A group that keeps columns 0 and 1: the metadata of padding (its values are zero) and of groups whose mask is
// corrupt (the row is reported, its output made NaN); a bad group must never reach the instruction, whose behaviour
// on such metadata is undefined.
constexpr uint32_t kPadPair = 0 | 1 << 2;

// 32 bits from a 4-byte-aligned address (the callers' offsets are even element indices of 16-bit tensors whose
// rows hold a multiple of 2 elements).
SF_S24_HD inline uint32_t load_pair(const uint16_t* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const uint32_t*>(p);
#else
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
#endif
}

struct FragA {
  uint32_t a[4];
  uint32_t e;
  bool bad_lo, bad_hi;  // row g / g + 8 has a group in this lane's half of the tile that is not 2:4
};

// Lane `lane`'s A registers and metadata for W rows n0 .. n0+15, inputs k0 .. k0+31 (k0 a multiple of 32). Rows at
// or past N and inputs at or past K (K a multiple of 4) are zeros with kPadPair metadata.
SF_S24_HD inline FragA gather_a(const uint16_t* values, const uint8_t* bitmask, int64_t N, int64_t K, int64_t n0,
                                int64_t k0, int lane) {
  const int g = lane / 4, t = lane % 4;
  const int64_t half = K / 2, groups = K / 4, kb = (K + 7) / 8;
  FragA f{};
  for (int j = 0; j < 4; ++j) {
    const int64_t row = n0 + g + 8 * (j & 1), col = k0 / 2 + 2 * t + 8 * (j >> 1);
    f.a[j] = row < N && col < half ? load_pair(values + row * half + col) : 0u;
  }
  for (int r = 0; r < 2; ++r) {
    const int64_t row = n0 + g + 8 * r;
    for (int q = 0; q < 4; ++q) {
      const int64_t grp = k0 / 4 + 4 * (t % 2) + q;
      uint32_t pair = kPadPair;
      if (row < N && grp < groups) {
        const uint8_t p = pair_of_nibble(bitmask[row * kb + grp / 2] >> (4 * (grp % 2)) & 15);
        if (p == kBadNibble) (r ? f.bad_hi : f.bad_lo) = true;
        else pair = p;
      }
      f.e |= pair << (16 * r + 4 * q);
    }
  }
  return f;
}

// Lane `lane`'s B registers: x [M, K] tokens m0 .. m0+7, inputs k0 .. k0+31 (zeros past M and K).
SF_S24_HD inline void gather_b(const uint16_t* x, int64_t M, int64_t K, int64_t m0, int64_t k0, int lane,
                               uint32_t b[4]) {
  const int g = lane / 4, t = lane % 4;
  const int64_t m = m0 + g;
  for (int j = 0; j < 4; ++j) {
    const int64_t k = k0 + 8 * j + 2 * t;
    b[j] = m < M && k < K ? load_pair(x + m * K + k) : 0u;
  }
}

// Where accumulator i of lane `lane` lands: weight row (output feature) and token, relative to the tile.
SF_S24_HD inline void c_position(int lane, int i, int& row, int& token) {
  row = lane / 4 + 8 * (i >> 1);
  token = 2 * (lane % 4) + (i & 1);
}

// The instruction's semantics as PTX describes them, on the 32 lanes' registers (sparsity selector 0): rebuild the
// dense 16 x 32 A from the compressed registers and the metadata, B from its registers, and add A x B to the
// accumulators. to_float converts a 16-bit element (bf16 or fp16). Returns false if a metadata group's first position
// is not below its second (undefined behaviour for the ordered-metadata form the kernel issues; the gathers above
// never produce one).
template <typename ToFloat>
inline bool emulate_mma_sp(const FragA (&a)[32], const uint32_t (&b)[32][4], float (&c)[32][4], ToFloat to_float) {
  float A[kTileRows][kTileK] = {}, B[kTileK][kTileCols] = {};
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int j = 0; j < 4; ++j)
      for (int h = 0; h < 2; ++h) {
        const uint16_t bits_b = static_cast<uint16_t>(b[lane][j] >> (16 * h));
        B[8 * j + 2 * t + h][g] = to_float(bits_b);
      }
  }
  for (int row = 0; row < kTileRows; ++row) {
    for (int grp = 0; grp < 8; ++grp) {
      const int lane = 4 * (row % 8) + grp / 4;  // selector 0: lanes t = 0 (groups 0-3) and t = 1 (groups 4-7)
      const uint32_t nib = a[lane].e >> (16 * (row / 8) + 4 * (grp % 4)) & 15;
      const int first = nib & 3, second = nib >> 2;
      if (first >= second) return false;
      for (int e = 0; e < 2; ++e) {
        const int ccol = 2 * grp + e;  // compressed column: which lane and register hold it
        const int holder = 4 * (row % 8) + (ccol % 8) / 2, j = (row / 8) + 2 * (ccol / 8);
        const uint16_t bits_a = static_cast<uint16_t>(a[holder].a[j] >> (16 * (ccol % 2)));
        A[row][4 * grp + (e ? second : first)] = to_float(bits_a);
      }
    }
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      int row, token;
      c_position(lane, i, row, token);
      float acc = c[lane][i];
      for (int k = 0; k < kTileK; ++k) acc += A[row][k] * B[k][token];
      c[lane][i] = acc;
    }
  return true;
}

}  // namespace mma
}  // namespace sparse24
}  // namespace slimformer
