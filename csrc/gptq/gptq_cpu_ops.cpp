// CPU implementations of the slimformer GPTQ ops: argument checks, activation preparation, the choice between
// the fused small-M kernel and the dequantize-tile + dense GEMM path, and threading through ATen's parallel_for
// (so torch.set_num_threads governs).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "common/cpu_dispatch.h"
#include "common/cpu_isa.h"
#include "gptq/gptq_cpu.h"
#include "gptq/gptq_ops_common.h"

namespace slimformer {
namespace gptq {
namespace {

// GPTQ's CPU kernels per ISA level (gptq_cpu_<isa>.cpp); the avx512bf16 level adds the bf16 kernel to the
// avx512vnni ones; the amx level (Intel only) is avx512bf16 with an fp32 kernel that never computes on denormals.
constexpr CpuDispatch<CpuKernels> kCpuKernels{{&cpu_kernels_scalar, &cpu_kernels_avx2, &cpu_kernels_avx512,
                                               &cpu_kernels_avx512vnni, &cpu_kernels_avx512bf16, &cpu_kernels_amx}};
const CpuKernels& kernels_for(CpuIsa isa) { return kCpuKernels.get(isa); }

// Rows from which the dequantize-tile + fp32 GEMM path is used instead of the fused kernels, per ISA. The fused
// kernels keep the weight tile in L2 while they sweep the rows, so they stay ahead until the GEMM's blocking wins.
// Measured (4096x4096 int4 g128, 16 layers, 2 threads, us per layer, fused vs tiled):
//   2-core AVX2 EPYC (Zen 3), fp32: 29.0 vs 32.2 ms at M=128, 62.8 vs 62.6 at 256, 123 vs 117 at 512 -> 256;
//   2-core AVX-512 EPYC (Zen 4), bf16 (avx512vnni integer kernel): 12.0 vs 27.3 ms at 128, 24.5 vs 51.1 at 256,
//   51.1 vs 105.6 at 512; fp32: 22.5 vs 27.0, 44.2 vs 68.5, 88.3 vs 105.0 -> the fused kernels at every M.
// On the amx level, bf16 activations with 2- or 4-bit weights (K and the group size multiples of 32) take the AMX
// route (gptq_cpu_amx.h) from kAmxMinRows rows instead. Measured on a 2-vCPU Xeon (AMX, KVM; 8 x 4096x11008 int4
// g128, 2 threads, ms per layer, fused bf16 kernel / AMX route): M=1 1.07-1.15 / 2.81-2.85, M=4 2.31-2.36 /
// 2.69-2.82, M=8 4.46-4.53 / 2.67-2.89, M=16 8.98-9.42 / 2.82, M=32 17.8-18.5 / 3.15-3.54; the AMX route costs
// ~2.8 ms up to 16 rows (building its weight tiles), the fused kernel ~0.57 ms a row -> from 6 rows.
// SLIMFORMER_CPU_LARGE_M overrides both.
constexpr int64_t kAmxMinRows = 6;
int64_t large_m_threshold(CpuIsa isa, bool amx) {
  if (const char* s = std::getenv("SLIMFORMER_CPU_LARGE_M")) {
    char* end = nullptr;
    const long v = std::strtol(s, &end, 10);
    TORCH_CHECK(end != s && *end == '\0' && v >= 1, "SLIMFORMER_CPU_LARGE_M must be a positive integer, got '", s,
                "'");
    return v;
  }
  if (amx) return kAmxMinRows;
  return isa >= CpuIsa::kAvx512 ? std::numeric_limits<int64_t>::max() : 256;
}

// Columns dequantized per dense GEMM call: K x 256 fp32 is 4 MiB at K=4096, which stays in the last-level cache
// between the dequantization and the GEMM that reads it.
constexpr int64_t kTilesPerChunk = 8;

// Activation rows prepared per thread at least: one row takes 1-3 us at K=4096, less than waking a thread (at
// M=1 a parallel region would cost more than the work).
constexpr int64_t kPrepareGrain = 8;

at::Tensor workspace(int64_t words) { return at::empty({words}, at::TensorOptions().dtype(at::kInt)); }

void small_m_path(KernelInput x, int64_t M, const TiledWeight& w, const KernelOutput& y, const CpuKernels& kern) {
  const int64_t K = w.K, G = w.groups();
  // One workspace (at M=1 each ATen allocation is a noticeable share of a call): xs [M, K], xsum [M, G],
  // row_scale [M, 2], all fp32.
  at::Tensor ws = workspace(M * K + M * G + 2 * M);
  float* xs = reinterpret_cast<float*>(ws.data_ptr<int32_t>());
  float* xsum = xs + M * K;
  float* row_scale = xsum + M * G;
  at::parallel_for(0, M, kPrepareGrain,
                   [&](int64_t b, int64_t e) { kern.prepare_rows(w, x, b, e, xs, xsum, row_scale); });
  bool rescaled = false;  // rows with |x| >= 2^100 (prepare_rows): their output is scaled back in store_tile
  for (int64_t m = 0; m < M && !rescaled; ++m) rescaled = row_scale[2 * m + 1] != 1.f;
  KernelOutput yr = y;
  if (rescaled) yr.row_factor = row_scale + 1;
  const SmallMArgs args{w, xs, xsum, row_scale, yr, M};
  at::parallel_for(0, w.n_tiles(), 1, [&](int64_t b, int64_t e) { kern.small_m_gemm(args, b, e); });
}

// Which kernel the small-M path runs, from SLIMFORMER_CPU_INT_PATH: auto (default: bf16 activations take the
// bf16 kernel where the CPU has AVX512-BF16, the width is bf16_bits and M >= kBf16MinRows, else the integer
// kernel; fp32 activations the float kernel), always (the integer kernel for every activation dtype: correct but
// slower for fp32, since nearly every fp32 value leaves a residual; the tests use it to check the integer kernel at
// fp32 output precision) or never (the float kernel for everything). All three compute exact bf16 products; they
// differ only in how the sums are rounded.
enum class SmallMKernel { kFloat, kInteger, kBf16 };
// Rows from which bf16 activations take the bf16 kernel: below, its lookups are shared by too few rows and the
// integer kernel is faster (Zen 4, 4096^2 int4 g128, 1 thread, weights in cache, integer / bf16 us: M=1 362/394,
// 2 391/456, 3 540/548, 4 689/639, 16 2753/2583; from DRAM at M=1 both stream at the memory's speed).
constexpr int64_t kBf16MinRows = 4;
SmallMKernel small_m_kernel(at::ScalarType dtype, int64_t bits, int64_t M, const CpuKernels& kern) {
  const char* s = std::getenv("SLIMFORMER_CPU_INT_PATH");
  const std::string v = s == nullptr ? "" : s;
  TORCH_CHECK(v.empty() || v == "auto" || v == "always" || v == "never",
              "SLIMFORMER_CPU_INT_PATH must be 'auto', 'always' or 'never', got '", v, "'");
  if (!i16_bits(bits) || v == "never") return SmallMKernel::kFloat;
  if (v == "always") return SmallMKernel::kInteger;
  if (dtype != at::kBFloat16) return SmallMKernel::kFloat;
  return kern.small_m_gemm_bf16 != nullptr && bf16_bits(bits) && M >= kBf16MinRows ? SmallMKernel::kBf16
                                                                                   : SmallMKernel::kInteger;
}

// The bf16 small-M path; returns false (having written nothing to y) when prepare_rows_bf16 refuses a row.
bool small_m_bf16_path(KernelInput x, int64_t M, const TiledWeight& w, const KernelOutput& y, const CpuKernels& kern) {
  const int64_t K = w.K, G = w.groups();
  at::Tensor ws = workspace(M * (K / 2) + M * G);  // xb [M, K/2] (int32), xsum [M, G] (fp32)
  int32_t* xb = ws.data_ptr<int32_t>();
  float* xsum = reinterpret_cast<float*>(xb + M * (K / 2));
  std::atomic<bool> ok{true};
  at::parallel_for(0, M, kPrepareGrain, [&](int64_t b, int64_t e) {
    if (!kern.prepare_rows_bf16(w, x, b, e, xb, xsum)) ok = false;
  });
  if (!ok) return false;
  const SmallMBf16Args args{w, xb, xsum, y, M};
  at::parallel_for(0, w.n_tiles(), 1, [&](int64_t b, int64_t e) { kern.small_m_gemm_bf16(args, b, e); });
  return true;
}

// The integer small-M path; returns false (having written nothing to y) when a row holds inf or NaN.
bool small_m_i16_path(KernelInput x, int64_t M, const TiledWeight& w, const KernelOutput& y, const CpuKernels& kern) {
  const int64_t K = w.K, G = w.groups(), NB = blocks_i16(w);
  // One workspace of 4-byte words: xq [M, K/2], res_k [M, K], res_g [M, K], res_n [M] (int32); bscale [M, NB],
  // xsum [M, G], res_lo [M, K] (fp32).
  const int64_t n_xq = M * (K / 2), n_rk = M * K, n_bs = M * NB, n_xs = M * G;
  at::Tensor ws = workspace(n_xq + 2 * n_rk + M + n_bs + n_xs + M * K);
  int32_t* xq = ws.data_ptr<int32_t>();
  int32_t* res_k = xq + n_xq;
  int32_t* res_g = res_k + n_rk;
  int32_t* res_n = res_g + n_rk;
  float* bscale = reinterpret_cast<float*>(res_n + M);
  float* xsum = bscale + n_bs;
  float* res_lo = xsum + n_xs;
  std::atomic<bool> ok{true};
  at::parallel_for(0, M, kPrepareGrain, [&](int64_t b, int64_t e) {
    if (!kern.prepare_rows_i16(w, x, b, e, xq, bscale, xsum, res_n, res_k, res_g, res_lo)) ok = false;
  });
  if (!ok) return false;
  const SmallMI16Args args{w, xq, bscale, xsum, res_n, res_k, res_g, res_lo, y, M};
  at::parallel_for(0, w.n_tiles(), 1, [&](int64_t b, int64_t e) { kern.small_m_gemm_i16(args, b, e); });
  return true;
}

// y [M, N] (x's dtype) = x [M, K] @ W + bias, through fp32 tiles of W and torch's fp32 GEMM.
void large_m_path(const at::Tensor& x, const TiledWeight& w, const at::Tensor& bias, at::Tensor& y,
                  const CpuKernels& kern) {
  const at::Tensor xf = x.to(at::kFloat);
  const int64_t M = xf.size(0);
  at::Tensor y32 = y.scalar_type() == at::kFloat ? y : at::empty({M, w.N}, xf.options());
  const auto fn = kern.dequant_tiles;
  const int64_t n_tiles = w.n_tiles();
  const int64_t chunk_cols = kTilesPerChunk * kTileCols;
  at::Tensor wbuf = at::empty({w.K, chunk_cols}, xf.options());
  for (int64_t c0 = 0; c0 < n_tiles; c0 += kTilesPerChunk) {
    const int64_t c1 = std::min(n_tiles, c0 + kTilesPerChunk);
    float* out = wbuf.data_ptr<float>();
    at::parallel_for(c0, c1, 1, [&](int64_t b, int64_t e) {
      fn(DequantArgs{w, out + (b - c0) * kTileCols, chunk_cols}, b, e);
    });
    const int64_t n0 = c0 * kTileCols;
    const int64_t ncols = std::min(w.N, c1 * kTileCols) - n0;
    y32.narrow(1, n0, ncols).copy_(at::mm(xf, wbuf.narrow(1, 0, ncols)));
  }
  if (bias.defined()) y32.add_(bias);
  if (!y32.is_same(y)) y.copy_(y32);
}

// The AMX large-M route (bf16 activations); false, having written nothing, when prepare_rows_bf16 refuses a row.
bool large_m_amx_path(KernelInput x, int64_t M, const TiledWeight& w, const KernelOutput& y, const CpuKernels& kern) {
  const int64_t K = w.K, G = w.groups(), Mp = (M + 15) / 16 * 16;
  // xsum [Mp, G] (fp32, padding 0); no xb: the tiles read x itself
  at::Tensor ws = workspace(Mp * G);
  float* xsum = reinterpret_cast<float*>(ws.data_ptr<int32_t>());
  std::fill(xsum + M * G, xsum + Mp * G, 0.f);
  std::atomic<bool> ok{true};
  at::parallel_for(0, M, kPrepareGrain, [&](int64_t b, int64_t e) {
    if (!kern.prepare_rows_bf16(w, x, b, e, nullptr, xsum)) ok = false;
  });
  if (!ok) return false;
  // A tiles load 16 rows at a time: pad x with zero rows to a multiple of 16
  const uint16_t* xr = static_cast<const uint16_t*>(x.data);
  at::Tensor padded;
  if (Mp != M) {
    padded = at::zeros({Mp, K}, at::TensorOptions().dtype(at::kBFloat16));
    std::memcpy(padded.data_ptr(), xr, static_cast<size_t>(M * K) * 2);
    xr = reinterpret_cast<const uint16_t*>(padded.data_ptr());
  }
  const LargeMAmxArgs args{w, xr, xsum, y, M};
  at::parallel_for(0, w.n_tiles(), 1, [&](int64_t b, int64_t e) { kern.large_m_gemm_amx(args, b, e); });
  return true;
}

// What both GEMM ops set up from their arguments: checked, kernel-order activations x2 [M, K] (x itself when
// possible), the output y in x's dtype and shape, an fp32 bias (every path adds it to the fp32 result before
// rounding to y's dtype), and the kernels' views of them.
struct GemmCall {
  at::Tensor x2, y, bias_f;
  int64_t M;
  KernelInput in;
  KernelOutput out;
};

GemmCall prepare_gemm_call(const at::Tensor& x, const TiledWeight& w, const c10::optional<at::Tensor>& perm,
                           const c10::optional<at::Tensor>& bias, const at::Device& device) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "x must be float32 or bfloat16 on the CPU, got ", c10::toString(x.scalar_type()));
  GemmCall c;
  c.x2 = prepare_activations(x, perm, bias, w.K, w.N, device);
  c.M = c.x2.numel() / w.K;
  // The kernels read x in its own dtype and write y in it: no converted copies on the decode path.
  c.y = at::empty(output_shape(x, w.N), x.options());
  if (bias.has_value() && bias->defined())
    c.bias_f = bias->scalar_type() == at::kFloat ? bias->contiguous() : bias->to(at::kFloat).contiguous();
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  c.in = KernelInput{c.x2.data_ptr(), bf16};
  c.out = KernelOutput{c.y.data_ptr(), bf16, c.bias_f.defined() ? c.bias_f.data_ptr<float>() : nullptr, w.N};
  return c;
}

// The exact GEMM of a set-up call (M > 0) into c.y.
void exact_gemm(const GemmCall& c, const TiledWeight& w, at::ScalarType x_dtype, CpuIsa isa) {
  const CpuKernels& kern = kernels_for(isa);
  const int64_t gs = std::min(w.group_size, w.K);
  // the AMX route multiplies as the bf16 kernel does, so it goes where the bf16 kernel would at any row count
  // (SLIMFORMER_CPU_INT_PATH=never or always keeps it out)
  const bool amx = kern.large_m_gemm_amx != nullptr && w.K % 32 == 0 && gs % 32 == 0 &&
                   small_m_kernel(x_dtype, w.bits, std::max(c.M, kBf16MinRows), kern) == SmallMKernel::kBf16;
  if (c.M >= large_m_threshold(isa, amx)) {
    if (amx && large_m_amx_path(c.in, c.M, w, c.out, kern)) return;
    at::Tensor y2 = c.y.view({c.M, w.N});
    large_m_path(c.x2.view({c.M, w.K}), w, c.bias_f, y2, kern);
    return;
  }
  // Each path falls through to the next when it refuses the input (bf16: extreme rows; integer: non-finite values).
  const SmallMKernel which = small_m_kernel(x_dtype, w.bits, c.M, kern);
  if (which == SmallMKernel::kBf16 && small_m_bf16_path(c.in, c.M, w, c.out, kern)) return;
  if (which != SmallMKernel::kFloat && small_m_i16_path(c.in, c.M, w, c.out, kern)) return;
  small_m_path(c.in, c.M, w, c.out, kern);
}

at::Tensor gptq_gemm_cpu(const at::Tensor& x, const at::Tensor& qtiles, const at::Tensor& scale_zero,
                         const c10::optional<at::Tensor>& perm, const c10::optional<at::Tensor>& bias, int64_t bits,
                         int64_t group_size, int64_t in_features, int64_t out_features) {
  const TiledWeight w = check_tiled_weight(qtiles, scale_zero, bits, group_size, in_features, out_features);
  GemmCall c = prepare_gemm_call(x, w, perm, bias, qtiles.device());
  if (c.M == 0) return c.y;
  exact_gemm(c, w, x.scalar_type(), active_cpu_isa());
  return c.y;
}

// Int8 dynamic-activation mode (gptq_cpu.h, SmallMA8Args). Every row count takes the fused kernels: at 128, 256
// and 512 rows they take under half the time of the exact path (fused below 256 rows, dequantize + fp32 GEMM from
// 256) and of dense fp32 torch (benchmarks/README.md). A call whose activations hold inf or NaN is computed by the
// exact path instead, which propagates them as fp32 arithmetic does.
at::Tensor gptq_gemm_a8_cpu(const at::Tensor& x, const at::Tensor& qtiles, const at::Tensor& scale_zero,
                            const c10::optional<at::Tensor>& perm, const c10::optional<at::Tensor>& bias,
                            int64_t bits, int64_t group_size, int64_t in_features, int64_t out_features) {
  TORCH_CHECK(a8_bits(bits), "the int8 activation mode needs 4-bit weights, got bits=", bits);
  const TiledWeight w = check_tiled_weight(qtiles, scale_zero, bits, group_size, in_features, out_features);
  GemmCall c = prepare_gemm_call(x, w, perm, bias, qtiles.device());
  const int64_t M = c.M, K = w.K, NB = blocks_i16(w);
  if (M == 0) return c.y;
  const CpuIsa isa = active_cpu_isa();
  const CpuKernels& kern = kernels_for(isa);
  // One workspace of 4-byte words: xa8 [M, K/4] (int32), ascale [M, NB], asum [M, NB] (fp32).
  at::Tensor ws = workspace(M * (K / 4) + 2 * M * NB);
  int32_t* xa8 = ws.data_ptr<int32_t>();
  float* ascale = reinterpret_cast<float*>(xa8 + M * (K / 4));
  float* asum = ascale + M * NB;
  std::atomic<bool> ok{true};
  at::parallel_for(0, M, kPrepareGrain, [&](int64_t b, int64_t e) {
    if (!kern.prepare_rows_a8(w, c.in, b, e, xa8, ascale, asum)) ok = false;
  });
  if (!ok) {  // the same call set-up serves the exact path
    exact_gemm(c, w, x.scalar_type(), isa);
    return c.y;
  }
  const SmallMA8Args args{w, xa8, ascale, asum, c.out, M};
  at::parallel_for(0, w.n_tiles(), 1, [&](int64_t b, int64_t e) { kern.small_m_gemm_a8(args, b, e); });
  return c.y;
}

at::Tensor gptq_dequantize_cpu(const at::Tensor& qtiles, const at::Tensor& scale_zero, int64_t bits,
                               int64_t group_size, int64_t in_features, int64_t out_features) {
  const TiledWeight w = check_tiled_weight(qtiles, scale_zero, bits, group_size, in_features, out_features);
  const int64_t padded = w.n_tiles() * kTileCols;
  at::Tensor out = at::empty({in_features, padded}, scale_zero.options().dtype(at::kFloat));
  const auto fn = kernels_for(active_cpu_isa()).dequant_tiles;
  float* p = out.data_ptr<float>();
  at::parallel_for(0, w.n_tiles(), 1, [&](int64_t b, int64_t e) { fn(DequantArgs{w, p + b * kTileCols, padded}, b, e); });
  return out.narrow(1, 0, out_features).contiguous();
}

// Test hook for the shared decode header: unpacks `count` values per column from words [W, C] (rows packed along
// dim 0 as one bit stream), exactly as the kernels decode them.
at::Tensor unpack_bits_cpu(const at::Tensor& words, int64_t bits, int64_t count) {
  TORCH_CHECK(gptq_bits_supported(bits), "bits must be one of ", kGptqBitsText, ", got ", bits);
  TORCH_CHECK(words.dim() == 2 && words.scalar_type() == at::kInt, "words must be a 2-D int32 tensor, got ",
              words.dim(), "-D ", c10::toString(words.scalar_type()));
  TORCH_CHECK(count >= 0 && count * bits <= words.size(0) * 32, "count=", count, " values of ", bits,
              " bits do not fit in ", words.size(0), " words");
  const int uv = unit_values(static_cast<int>(bits)), uw = unit_words(static_cast<int>(bits));
  TORCH_CHECK(count % uv == 0, "count must be a multiple of ", uv, " for ", bits, "-bit values, got ", count);
  const at::Tensor wc = words.contiguous();
  const int64_t C = wc.size(1);
  at::Tensor out = at::empty({count, C}, wc.options());
  const uint32_t* src = reinterpret_cast<const uint32_t*>(wc.data_ptr<int32_t>());
  int32_t* dst = out.data_ptr<int32_t>();
  for (int64_t u = 0; u < count / uv; ++u)
    for (int r = 0; r < uv; ++r)
      for (int64_t c = 0; c < C; ++c)
        dst[(u * uv + r) * C + c] = static_cast<int32_t>(unpack_value(src + u * uw * C + c, C, static_cast<int>(bits), r));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(slimformer, CPU, m) {
  m.impl("gptq_gemm", &gptq_gemm_cpu);
  m.impl("gptq_gemm_a8", &gptq_gemm_a8_cpu);
  m.impl("gptq_dequantize", &gptq_dequantize_cpu);
  m.impl("_unpack_bits", &unpack_bits_cpu);
}

}  // namespace gptq
}  // namespace slimformer
