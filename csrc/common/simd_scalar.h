// Portable scalar vector interface (one lane): the reference form of every V operation, compiled with the
// baseline flags only.
// The including translation unit defines SF_ISA_NS (its ISA's namespace, e.g. avx2_impl) and is the only one compiled
// with this ISA's -m flags; V lives in slimformer::simd::SF_ISA_NS, so no inline function of it is shared with a TU
// compiled for another ISA (the linker could otherwise keep an AVX-512 copy for the scalar path).
//
// The interface every kernel is written against (csrc/gptq/gptq_cpu_float.h lists what the GPTQ kernels use):
//   L (fp32 lanes), MR_MAX (activation rows a kernel keeps in registers),
//   kMantissaExtraction (integers may be read as denormal mantissas), F / I (float / int vectors),
//   zero, set1, load, load_half (fp16 -> float), store, bcast, fma(a,b,c)=a*b+c, fnma(a,b,c)=c-a*b,
//   fms(a,b,c)=a*b-c, add, mul, loadi, storei, and_, or_, srl<S>, as_float (bit cast), cvt (int -> float),
//   zeroi, bcasti, addi, madd16 (vpmaddwd), dpwssd(acc,a,b)=acc+madd16(a,b), maddubs (vpmaddubsw), addi16,
//   srlv (run-time count), srli / srli16 (a count that folds to a constant), keep (compiler barrier); for the
//   attention kernels: sub, max, round_int (float -> int32, to nearest), sll<S>, as_int, hsum, hmax.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/float_convert.h"

#ifndef SF_ISA_NS
#error "define SF_ISA_NS (the including TU's ISA namespace) before including this header"
#endif

namespace slimformer {
namespace simd {
namespace SF_ISA_NS {
struct V {
  static constexpr int L = 1;
  static constexpr int MR_MAX = 1;
  static constexpr bool kMantissaExtraction = false;  // portable: convert, do not rely on denormal handling
  using F = float;
  using I = uint32_t;
  static F zero() { return 0.f; }
  static F set1(float v) { return v; }
  static F load(const float* p) { return *p; }
  static void store(float* p, F v) { *p = v; }
  static F bcast(const float* p) { return *p; }
  static F fma(F a, F b, F c) { return std::fma(a, b, c); }
  static F fnma(F a, F b, F c) { return std::fma(-a, b, c); }
  static F fms(F a, F b, F c) { return std::fma(a, b, -c); }
  static F add(F a, F b) { return a + b; }
  static F mul(F a, F b) { return a * b; }
  static I loadi(const int32_t* p) { return static_cast<uint32_t>(*p); }
  static void storei(int32_t* p, I v) { *p = static_cast<int32_t>(v); }
  static I and_(I a, uint32_t m) { return a & m; }
  static I or_(I a, I b) { return a | b; }
  template <int S> static I srl(I a) { return a >> S; }
  static F as_float(I a) {
    F f;
    std::memcpy(&f, &a, sizeof f);
    return f;
  }
  static F cvt(I a) { return static_cast<float>(static_cast<int32_t>(a)); }
  static F load_half(const uint16_t* p) { return half_to_float(*p); }
  static I zeroi() { return 0u; }
  static I bcasti(const int32_t* p) { return static_cast<uint32_t>(*p); }
  static I addi(I a, I b) { return a + b; }  // unsigned wrap-around = two's complement int32 addition
  static I madd16(I a, I b) {  // vpmaddwd on one 32-bit lane
    const int32_t lo = int32_t(int16_t(a & 0xFFFFu)) * int32_t(int16_t(b & 0xFFFFu));
    const int32_t hi = int32_t(int16_t(a >> 16)) * int32_t(int16_t(b >> 16));
    return static_cast<uint32_t>(lo + hi);
  }
  static I dpwssd(I acc, I a, I b) { return acc + madd16(a, b); }
  static I maddubs(I a, I b) {  // vpmaddubsw on one 32-bit lane: unsigned bytes of a times signed bytes of b
    uint32_t r = 0;
    for (int h = 0; h < 2; ++h) {
      int32_t s = 0;
      for (int j = 0; j < 2; ++j) {
        const int sh = 16 * h + 8 * j;
        s += int32_t((a >> sh) & 0xFFu) * int32_t(int8_t((b >> sh) & 0xFFu));
      }
      s = s > 32767 ? 32767 : (s < -32768 ? -32768 : s);  // signed saturation, as the instruction
      r |= (static_cast<uint32_t>(s) & 0xFFFFu) << (16 * h);
    }
    return r;
  }
  static I addi16(I a, I b) {  // two wrapping 16-bit additions
    return ((a + b) & 0xFFFFu) | (((a >> 16) + (b >> 16)) << 16);
  }
  static I srlv(I a, int s) { return a >> s; }
  // Shifts by a count that folds to a constant once the caller's loop is unrolled (an immediate operand).
  static I srli(I a, int s) { return a >> s; }
  static I srli16(I a, int s) { return (a >> s) & ((0xFFFFu >> s) * 0x10001u); }
  static void keep(I&) {}
  // for the attention kernels (csrc/tokens): subtract, maximum, round-to-nearest float -> int32, left shift, the
  // bits of a float as an int, and the horizontal sum / maximum of the lanes
  static F sub(F a, F b) { return a - b; }
  static F max(F a, F b) { return a > b ? a : b; }
  static I round_int(F a) { return static_cast<uint32_t>(static_cast<int32_t>(std::nearbyint(a))); }
  template <int S> static I sll(I a) { return a << S; }
  static I as_int(F a) {
    I i;
    std::memcpy(&i, &a, sizeof i);
    return i;
  }
  static float hsum(F a) { return a; }
  static float hmax(F a) { return a; }
};
}  // namespace SF_ISA_NS
}  // namespace simd
}  // namespace slimformer
