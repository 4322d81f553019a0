// Token-pruned attention for one (sequence, head), written against the SIMD interface V (common/simd_*.h); included
// once by each per-ISA TU (tokens_cpu_<isa>.cpp) after it has defined SF_ISA_NS.
//
// 1. Pack: the kept tokens' keys transposed into Kt [D, NKp] (so a vector holds one input of L keys), their values
//    into Vp [NK, Dp], and per key the bias (-inf -> 0), a 0/1 mask and -1e30 for masked or padding keys.
// 2. Per block of MR = 4 queries (then single rows): scores S = q Kt in registers (MR x 2 vectors of keys per
//    pass over D, each q element broadcast), s * scale + bias, masked keys pushed to -1e30; the row's maximum,
//    exp(s - max) by a polynomial (exact zeros for masked keys through the mask), the sum, P = e / sum. P is added
//    to the importance accumulator when the query is real, and to probs / H when asked.
// 3. O = P Vp: MR rows x up to 4 vectors of D per pass over the keys (P broadcast), stored to out[b, i, h, :]
//    (skipped when the caller wants only the importance and probabilities).
// Every accumulator is fp32 and so is every product: the result matches the float64 reference to fp32 rounding.
#pragma once
#include <cmath>
#include <cstring>

#include "common/cpu_kernel_util.h"
#include "tokens/tokens_cpu.h"

namespace slimformer {
namespace tokens {
namespace SF_ISA_NS {

using V = simd::SF_ISA_NS::V;
using F = V::F;

constexpr int MR = kRowBlock;  // query rows per block
inline constexpr int32_t kExpBias = 127;

// e^x for x <= 0 (the scores minus their maximum), relative error ~1e-7: x = n ln2 + r with |r| <= ln2 / 2, e^r by
// its degree-6 Taylor polynomial, 2^n built in the exponent field. Below -87 the result is clamped to e^-87 (the
// mask zeroes masked keys; a real key that far below the maximum has no weight anyway).
inline F vexp(F x) {
  x = V::max(x, V::set1(-87.0f));
  const V::I n = V::round_int(V::mul(x, V::set1(1.44269504088896341f)));
  const F nf = V::cvt(n);
  F r = V::fnma(nf, V::set1(0.693145751953125f), x);
  r = V::fnma(nf, V::set1(1.428606765330187045e-06f), r);
  F p = V::set1(1.f / 720);
  p = V::fma(p, r, V::set1(1.f / 120));
  p = V::fma(p, r, V::set1(1.f / 24));
  p = V::fma(p, r, V::set1(1.f / 6));
  p = V::fma(p, r, V::set1(0.5f));
  p = V::fma(p, r, V::set1(1.f));
  p = V::fma(p, r, V::set1(1.f));
  const F two_n = V::as_float(V::sll<23>(V::addi(n, V::bcasti(&kExpBias))));
  return V::mul(p, two_n);
}

struct Head {
  const AttnArgs& a;
  int64_t b, h, nkp, dp;
  float* kt;    // [D, nkp]
  float* vp;    // [NK, dp]
  float* bias;  // [nkp]
  float* mask;  // [nkp]
  float* neg;   // [nkp]
  float* s;     // [MR, nkp]: scores, then probabilities

  int64_t token(int64_t i) const { return a.token(b, i); }
  const float* qrow(int64_t i) const { return a.q + b * a.qs[0] + token(i) * a.qs[1] + h * a.qs[2]; }
};

inline void pack(Head& c) {
  const AttnArgs& a = c.a;
  for (int64_t j = 0; j < a.NK; ++j) {
    const int64_t t = c.token(j);
    const float* kr = a.k + c.b * a.ks[0] + t * a.ks[1] + c.h * a.ks[2];
    const float* vr = a.v + c.b * a.vs[0] + t * a.vs[1] + c.h * a.vs[2];
    for (int64_t d = 0; d < a.D; ++d) c.kt[d * c.nkp + j] = kr[d];
    std::memcpy(c.vp + j * c.dp, vr, a.D * sizeof(float));
    for (int64_t d = a.D; d < c.dp; ++d) c.vp[j * c.dp + d] = 0.f;
    const float bj = a.bias(c.b, j);
    const bool real = !masks_token(bj);
    c.bias[j] = real ? bj : 0.f;
    c.mask[j] = real ? 1.f : 0.f;
    c.neg[j] = real ? 0.f : -1e30f;
  }
  for (int64_t j = a.NK; j < c.nkp; ++j) {
    for (int64_t d = 0; d < a.D; ++d) c.kt[d * c.nkp + j] = 0.f;
    c.bias[j] = 0.f;
    c.mask[j] = 0.f;
    c.neg[j] = -1e30f;
  }
}

// S[r, :] for queries i0 .. i0 + R - 1, stored to c.s (already scaled, biased and masked).
template <int R>
inline void scores(const Head& c, int64_t i0) {
  const AttnArgs& a = c.a;
  const float* qr[R];
  for (int r = 0; r < R; ++r) qr[r] = c.qrow(i0 + r);
  const F scale = V::set1(a.scale);
  int64_t j = 0;
  for (; j + 2 * V::L <= c.nkp; j += 2 * V::L) {
    F acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = V::zero();
    for (int64_t d = 0; d < a.D; ++d) {
      const F k0 = V::load(c.kt + d * c.nkp + j), k1 = V::load(c.kt + d * c.nkp + j + V::L);
      for (int r = 0; r < R; ++r) {
        const F qb = V::bcast(qr[r] + d);
        acc[r][0] = V::fma(qb, k0, acc[r][0]);
        acc[r][1] = V::fma(qb, k1, acc[r][1]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < 2; ++u) {
        const int64_t jj = j + u * V::L;
        const F s = V::fma(acc[r][u], scale, V::load(c.bias + jj));
        V::store(c.s + r * c.nkp + jj, V::fma(s, V::load(c.mask + jj), V::load(c.neg + jj)));
      }
  }
  for (; j < c.nkp; j += V::L) {
    F acc[R];
    for (int r = 0; r < R; ++r) acc[r] = V::zero();
    for (int64_t d = 0; d < a.D; ++d) {
      const F k0 = V::load(c.kt + d * c.nkp + j);
      for (int r = 0; r < R; ++r) acc[r] = V::fma(V::bcast(qr[r] + d), k0, acc[r]);
    }
    for (int r = 0; r < R; ++r) {
      const F s = V::fma(acc[r], scale, V::load(c.bias + j));
      V::store(c.s + r * c.nkp + j, V::fma(s, V::load(c.mask + j), V::load(c.neg + j)));
    }
  }
}

// Row r of c.s: scores -> probabilities; importance accumulated for query i, and probs row i either accumulated
// (+= weight x P) or, with store, overwritten by P (its padding columns too: zeros).
inline void softmax_row(const Head& c, int r, int64_t i, float* importance, float* probs, float weight, bool store) {
  float* s = c.s + r * c.nkp;
  F m = V::load(s);
  for (int64_t j = V::L; j < c.nkp; j += V::L) m = V::max(m, V::load(s + j));
  const F mx = V::set1(V::hmax(m));
  F sum = V::zero();
  for (int64_t j = 0; j < c.nkp; j += V::L) {
    const F e = V::mul(vexp(V::sub(V::load(s + j), mx)), V::load(c.mask + j));
    V::store(s + j, e);
    sum = V::add(sum, e);
  }
  const float total = V::hsum(sum);
  const F inv = V::set1(total > 0.f ? 1.f / total : 0.f);
  const bool real_query = c.mask[i] != 0.f;
  const F wv = V::set1(weight);
  for (int64_t j = 0; j < c.nkp; j += V::L) {
    const F p = V::mul(V::load(s + j), inv);
    V::store(s + j, p);
    if (real_query) V::store(importance + j, V::add(V::load(importance + j), p));
    if (probs != nullptr)
      V::store(probs + i * c.nkp + j, store ? p : V::fma(p, wv, V::load(probs + i * c.nkp + j)));
  }
}

// the block's R output rows (dst), columns [d0, d0 + NT * L) of Vp.
template <int R, int NT>
inline void pv_tile(const Head& c, int64_t d0, float* const* dst) {
  const AttnArgs& a = c.a;
  F acc[R][NT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = V::zero();
  for (int64_t j = 0; j < a.NK; ++j) {
    F vv[NT];
    for (int t = 0; t < NT; ++t) vv[t] = V::load(c.vp + j * c.dp + d0 + t * V::L);
    for (int r = 0; r < R; ++r) {
      const F pb = V::bcast(c.s + r * c.nkp + j);
      for (int t = 0; t < NT; ++t) acc[r][t] = V::fma(pb, vv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < NT; ++t) V::store(dst[r] + d0 + t * V::L, acc[r][t]);
}

template <int R>
inline void pv(const Head& c, int64_t i0, float* tmp) {
  const AttnArgs& a = c.a;
  // destination rows: straight into out when D is a multiple of L, else through tmp (R x dp) and a copy
  float* dst[R];
  const bool direct = a.D % V::L == 0;
  for (int r = 0; r < R; ++r)
    dst[r] = direct ? a.out + ((c.b * a.NK + i0 + r) * a.H + c.h) * a.D : tmp + r * c.dp;
  const int64_t nv = (direct ? a.D : c.dp) / V::L;
  int64_t v0 = 0;
  for (; v0 + 4 <= nv; v0 += 4) pv_tile<R, 4>(c, v0 * V::L, dst);
  switch (nv - v0) {
    case 3: pv_tile<R, 3>(c, v0 * V::L, dst); break;
    case 2: pv_tile<R, 2>(c, v0 * V::L, dst); break;
    case 1: pv_tile<R, 1>(c, v0 * V::L, dst); break;
    default: break;
  }
  if (!direct)
    for (int r = 0; r < R; ++r)
      std::memcpy(a.out + ((c.b * a.NK + i0 + r) * a.H + c.h) * a.D, tmp + r * c.dp, a.D * sizeof(float));
}

inline void attention_head(const AttnArgs& a, int64_t b, int64_t h, float* importance, float* probs, float weight,
                           bool store_probs, bool need_out, float* scratch) {
  const int64_t nkp = padded(a.NK), dp = padded(a.D);
  float* p = scratch;
  Head c{a, b, h, nkp, dp, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  c.kt = p;
  p += a.D * nkp;
  c.vp = p;
  p += a.NK * dp;
  c.bias = p;
  p += nkp;
  c.mask = p;
  p += nkp;
  c.neg = p;
  p += nkp;
  c.s = p;
  p += MR * nkp;
  float* tmp = p;  // MR x dp (scratch_floats counts every buffer above)
  pack(c);
  int64_t i = 0;
  for (; i + MR <= a.NK; i += MR) {
    scores<MR>(c, i);
    for (int r = 0; r < MR; ++r) softmax_row(c, r, i + r, importance, probs, weight, store_probs);
    if (need_out) pv<MR>(c, i, tmp);
  }
  for (; i < a.NK; ++i) {
    scores<1>(c, i);
    softmax_row(c, 0, i, importance, probs, weight, store_probs);
    if (need_out) pv<1>(c, i, tmp);
  }
}

// Zero-TPrune's WPR for one sequence: `iterations` times s <- attn^T s (s_j = sum_i s_i attn[i, j]). Each pass sweeps
// the [N, N] matrix in column strips of up to 8 vectors, whose sums stay in registers while every row adds its strip
// scaled by s_i (rows with s_i = 0, pads, are skipped); the matrix stays in L2 across the passes, which is what the
// batched torch loop (a bmm per iteration over the whole batch, re-read from memory each time) cannot do.
// t: [N] scratch.
template <int C>
inline void wpr_strip(const float* attn, int64_t N, int64_t ld, const float* s, float* t, int64_t j0) {
  F acc[C];
  for (int u = 0; u < C; ++u) acc[u] = V::zero();
  for (int64_t i = 0; i < N; ++i) {
    if (s[i] == 0.f) continue;
    const F si = V::set1(s[i]);
    const float* r = attn + i * ld + j0;
    for (int u = 0; u < C; ++u) acc[u] = V::fma(si, V::load(r + u * V::L), acc[u]);
  }
  for (int u = 0; u < C; ++u) V::store(t + j0 + u * V::L, acc[u]);
}

inline void wpr_sequence(const float* attn, int64_t N, int64_t ld, float* s, float* t, int64_t iterations) {
  constexpr int L = V::L, kStrip = 8;
  const int64_t vecs = N / L;
  for (int64_t it = 0; it < iterations; ++it) {
    // strips of kStrip vectors, the last one of what is left (its vector count a compile-time constant)
    cpu::SF_ISA_NS::for_row_blocks<kStrip>(
        vecs, [&](auto c, int64_t v0) { wpr_strip<decltype(c)::value>(attn, N, ld, s, t, v0 * L); });
    for (int64_t j = vecs * L; j < N; ++j) {  // the last N % L columns
      float acc = 0.f;
      for (int64_t i = 0; i < N; ++i) acc += s[i] * attn[i * ld + j];
      t[j] = acc;
    }
    std::memcpy(s, t, sizeof(float) * N);
  }
}

// out [NK, NK] (row stride NK) = sum over heads h of w[h] x P_h, P_h the head's probabilities [NK, ld] at
// slabs + h * slab_stride; heads of weight 0 are not read.
inline void weighted_head_sum(const float* slabs, int64_t H, int64_t slab_stride, const float* w, int64_t NK,
                              int64_t ld, float* out) {
  constexpr int L = V::L;
  int64_t heads[kMaxFilterHeads];
  float weights[kMaxFilterHeads];
  int n = 0;
  for (int64_t h = 0; h < H && n < kMaxFilterHeads; ++h)
    if (w[h] != 0.f) {
      heads[n] = h;
      weights[n++] = w[h];
    }
  for (int64_t i = 0; i < NK; ++i) {
    float* o = out + i * NK;
    int64_t j = 0;
    for (; j + L <= NK; j += L) {
      F acc = V::zero();
      for (int u = 0; u < n; ++u)
        acc = V::fma(V::set1(weights[u]), V::load(slabs + heads[u] * slab_stride + i * ld + j), acc);
      V::store(o + j, acc);
    }
    for (; j < NK; ++j) {
      float acc = 0.f;
      for (int u = 0; u < n; ++u) acc += weights[u] * slabs[heads[u] * slab_stride + i * ld + j];
      o[j] = acc;
    }
  }
}

inline CpuKernels kernels() { return CpuKernels{&attention_head, &wpr_sequence, &weighted_head_sum}; }

}  // namespace SF_ISA_NS
}  // namespace tokens
}  // namespace slimformer
