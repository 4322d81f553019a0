// CPU implementation of slimformer::sparse24_gemm: argument checks, the choice between the sparse small-M kernel,
// the large-M bf16 kernel and decompressed tiles + the dense GEMM, and threading through ATen's parallel_for
// (torch.set_num_threads governs).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "common/cpu_dispatch.h"
#include "common/cpu_isa.h"
#include "sparse24/sparse24_cpu.h"
#include "sparse24/sparse24_ops_common.h"

namespace slimformer {
namespace sparse24 {
namespace {

constexpr CpuDispatch<CpuKernels> kCpuKernels{
    {&cpu_kernels_scalar, &cpu_kernels_avx2, &cpu_kernels_avx512, nullptr, &cpu_kernels_avx512bf16, &cpu_kernels_amx}};

// Activation rows from which the weight is decompressed, a tile of rows at a time, into the dense bf16 GEMM instead
// of running the sparse kernel (whose multiply-adds use one lane per kept weight but re-gather the activations for
// every output row), where the CPU multiplies bf16 natively and both operands are bf16. Measured on Zen 4
// (2 threads, 8 x 4096x11008, us per layer, sparse kernel / tiles / dense torch): bf16 M=32 9653 / 10873 / 9782,
// M=64 18677 / 17779 / 16367, M=128 36320 / 31304 / 29392 -> tiles from 48; fp32 M=32 17992 / 31634 / 40549, M=64
// 34728 / 84075 / 61670, M=128 67159 / 80976 / 100106 -> the sparse kernel at every M (half the multiply-adds of
// the dense fp32 GEMM). Where the large-M bf16 kernel runs instead of the tiles (sparse24_cpu_wide.h; bf16 values
// stored as such), it takes over from 32 rows: raw kernels (bench_sparse24_kernel, 2 threads, 8 x 4096x11008, us per
// layer, sparse kernel / wide kernel): M=8 3322 / 8578, M=16 6826 / 9186, M=32 11000 / 10046, M=48 15449 / 10949.
// 2:4 + int4 with bf16 activations switches from its fused kernel to the wide one (rows unpacked to bf16) at the same
// 32 (through the op, 8 x 4096x11008, us per layer, fused / wide / tiles): M=16 5521 / 9843 / 9079, M=24 8336 /
// 10046 / 11026, M=32 11332 / 10086 / 14723, M=40 14064 / 13746 / 16582, M=128 - / 29049 / 34144.
// On AMX the large-M route is the AMX kernel (sparse24_cpu_amx.h), from the level's own wide_min_rows.
// SLIMFORMER_SPARSE24_LARGE_M overrides the threshold for all of them.
int64_t large_m_threshold(const CpuKernels& kern, bool native_bf16, bool wide, bool int4 = false) {
  if (const char* s = std::getenv("SLIMFORMER_SPARSE24_LARGE_M")) {
    char* end = nullptr;
    const long v = std::strtol(s, &end, 10);
    TORCH_CHECK(end != s && *end == '\0' && v >= 1, "SLIMFORMER_SPARSE24_LARGE_M must be a positive integer, got '",
                s, "'");
    return v;
  }
  if (wide) return int4 ? kern.wide_min_rows_int4 : kern.wide_min_rows;
  if (native_bf16) return 48;
  return kern.f32_tiles_min_rows > 0 ? kern.f32_tiles_min_rows : std::numeric_limits<int64_t>::max();
}

// Output rows decompressed per dense GEMM call: 512 x K bf16 is 4 MiB at K=4096, which stays in the last-level
// cache between the decompression and the GEMM that reads it (256 and 1024 measured no better at M=64 and 128).
constexpr int64_t kDenseTileRows = 512;
// Activation rows from which fp32 2:4 + int4 unpacks rows into the 2:4 fp32 kernel (4 x 4 accumulators) instead of
// the fused fp32 kernel (4 x 2). Measured on Zen 4 (bench_sparse24_kernel, 2 threads, 8 x 4096x11008, us per layer,
// unpacked / fused): M=1 4259 / 967, M=4 5034 / 2833, M=8 7109 / 5191, M=16 12897 / 11309; through the op at M=16
// the unpacked route measured 10595 against 11869 fused, so the fused kernel stops below 16.
constexpr int64_t kInt4FusedF32Rows = 16;
// Output rows per thread task in the sparse kernel (each row is K/2 values).
constexpr int64_t kRowGrain = 32;

constexpr const char* kNot24 =
    "bitmask is not 2:4: some group of 4 consecutive inputs does not keep exactly 2 (a corrupt or non-2:4 mask)";
constexpr const char* kNotPairs =
    "2:4 + int4 tiles hold a position nibble that is not a pair of distinct columns in order (corrupt tiles)";

// Where the values and bitmask of a block of W's rows come from: the tensors themselves (PlainValues), or buffers
// that the rows' 2:4 + int4 tiles are unpacked into (Int4Values, a few rows at a time so they stay in L2).
struct RowBlock {
  const void* values;
  const uint8_t* bitmask;
  bool ok;  // false: a 2:4 + int4 position nibble that is not a pair of columns
};
struct PlainValues {
  static constexpr bool kInt4 = false;
  static constexpr int64_t kBlockRows = std::numeric_limits<int64_t>::max();
  const uint8_t* values;
  int64_t row_bytes;
  const uint8_t* bitmask;
  int64_t KB;
  RowBlock rows(int64_t n0, int64_t, std::vector<uint8_t>&) const {
    return {values + n0 * row_bytes, bitmask + n0 * KB, true};
  }
};
struct Int4Values {
  static constexpr bool kInt4 = true;
  // 8 rows of 11008 inputs are 176 KiB of fp32 values, 88 KiB bf16
  static constexpr int64_t kBlockRows = 8;
  const CpuKernels* kern;
  Int4Args q;
  bool bf16;
  RowBlock rows(int64_t n0, int64_t n1, std::vector<uint8_t>& buf) const {
    const int64_t vbytes = (n1 - n0) * (q.K / 2) * (bf16 ? 2 : 4), KB = (q.K + 7) / 8;
    buf.resize(static_cast<size_t>(vbytes + (n1 - n0) * KB));
    const bool ok = kern->unpack_int4(q, n0, n1, buf.data(), bf16, buf.data() + vbytes);
    return {buf.data(), buf.data() + vbytes, ok};
  }
};

// fn(r0, r1, the RowBlock of rows [r0, r1)) for rows [n0, n1) in blocks of Values::kBlockRows (one buffer reused)
template <class Values, class Fn>
void for_row_blocks(const Values& vals, int64_t n0, int64_t n1, Fn&& fn) {
  std::vector<uint8_t> buf;
  for (int64_t r0 = n0; r0 < n1;) {
    const int64_t r1 = r0 + std::min(Values::kBlockRows, n1 - r0);
    fn(r0, r1, vals.rows(r0, r1, buf));
    r0 = r1;
  }
}

// Activation rows the large-M bf16 route takes per pass: on AVX-512 their packed activations are 12 x rows x K bytes
// (6 MiB at 256 x 4096; the kernel's fp32 sums of a superblock, 240 x rows x 4 bytes, stay in L2), on AMX 2 x rows
// x K bytes.
constexpr int64_t kWideMaxRows = 256;

// The calling thread's buffer for the packed activations, grown as needed and kept: a fresh allocation of that size
// on every call would be mapped anew and page-faulted in on every call.
uint8_t* wide_workspace(size_t bytes) {
  thread_local std::vector<uint8_t> buf;
  if (buf.size() < bytes + 64) buf.resize(bytes + 64);
  return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t{63});
}

// The large-M bf16 kernel (sparse24_cpu_wide.h, or sparse24_cpu_amx.h on AMX) instead of decompressed tiles: bf16 values (stored as such, or 2:4 +
// int4 unpacked to bf16 a superblock of rows at a time), a level that has it, and not switched off by
// SLIMFORMER_SPARSE24_WIDE=0 (which the tests use to reach the tile route).
bool use_wide_kernel(const CpuKernels& kern, bool native_bf16) {
  const char* s = std::getenv("SLIMFORMER_SPARSE24_WIDE");
  if (s != nullptr && std::string(s) != "0" && std::string(s) != "1")
    TORCH_CHECK(false, "SLIMFORMER_SPARSE24_WIDE must be 0 or 1, got '", s, "'");
  return native_bf16 && kern.gemm_wide_bf16 != nullptr && (s == nullptr || std::string(s) == "1");
}

// y [M, N] (fp32, or bf16 from the tile route) + bias, in x's dtype and leading shape
at::Tensor finish(at::Tensor& y, const at::Tensor& x, const c10::optional<at::Tensor>& bias, int64_t N) {
  if (bias.has_value() && bias->defined()) y.add_(bias->to(y.scalar_type()));
  return y.to(x.scalar_type()).view(output_shape(x, N));
}

// y = x @ W^T (+ bias) with W's values from `vals` (bf16 or fp32 as values_bf16 says) and the bitmask.
template <class Values>
at::Tensor sparse_gemm(const at::Tensor& x, const Values& vals, bool values_bf16, int64_t K, int64_t N,
                       const c10::optional<at::Tensor>& bias, const char* bad_message) {
  const int64_t M = x.numel() / K;
  if (M == 0) return at::empty(output_shape(x, N), x.options());
  const CpuKernels& kern = kCpuKernels.active();
  at::Tensor y;
  std::atomic<bool> ok{true};
  // Both operands bf16 on a level that multiplies bf16 natively: the bf16 sparse kernel, and bf16 tiles for the
  // dense GEMM. Otherwise fp32 arithmetic (and fp32 tiles, so fp32 values are never rounded).
  const bool native_bf16 = kern.gemm_bf16 != nullptr && values_bf16 && x.scalar_type() == at::kBFloat16;
  const bool wide = use_wide_kernel(kern, native_bf16);
  if (M < large_m_threshold(kern, native_bf16, wide, Values::kInt4)) {
    y = at::empty({M, N}, x.options().dtype(at::kFloat));
    GemmArgs args{M, K, N, nullptr, nullptr, nullptr, values_bf16, nullptr, y.data_ptr<float>()};
    at::Tensor xin;
    auto fn = kern.gemm;
    if (native_bf16) {
      xin = x.reshape({M, K}).contiguous();
      args.xb = reinterpret_cast<const uint16_t*>(xin.data_ptr());
      fn = kern.gemm_bf16;
    } else {
      xin = x.reshape({M, K}).to(at::kFloat).contiguous();
      args.x = xin.data_ptr<float>();
    }
    at::parallel_for(0, N, kRowGrain, [&](int64_t n0, int64_t n1) {
      GemmArgs a = args;
      for_row_blocks(vals, n0, n1, [&](int64_t r0, int64_t r1, const RowBlock& rb) {
        a.values = rb.values;
        a.bitmask = rb.bitmask;
        a.row0 = r0;
        if (!rb.ok || !fn(a, r0, r1)) ok = false;
      });
    });
  } else if (wide) {
    // both operands bf16, many rows: per chunk of at most kWideMaxRows activation rows, the activations packed once
    // in their 6 pairings (into this thread's workspace), then the output rows in superblocks (sparse24_cpu_wide.h).
    // The kernel writes bf16 (x's dtype) and adds the bias in fp32 before that rounding.
    const at::Tensor xin = x.reshape({M, K}).contiguous();
    const uint16_t* xb = reinterpret_cast<const uint16_t*>(xin.data_ptr());
    y = at::empty({M, N}, x.options());
    uint16_t* yb = reinterpret_cast<uint16_t*>(y.data_ptr());
    at::Tensor b32;
    if (bias.has_value() && bias->defined()) b32 = bias->to(at::kFloat).contiguous();
    const int64_t KBn = kern.wide_pack_blocks(K), grain = kern.wide_task_rows;
    for (int64_t m0 = 0; m0 < M && ok; m0 += kWideMaxRows) {
      const int64_t rows = std::min(kWideMaxRows, M - m0);
      uint8_t* pk = wide_workspace(static_cast<size_t>(kern.wide_packed_bytes(rows, K)));
      at::parallel_for(0, KBn, 1, [&](int64_t kb0, int64_t kb1) {
        kern.pack_wide_bf16(xb + m0 * K, rows, K, pk, kb0, kb1);
      });
      GemmArgs args{rows, K, N, nullptr, nullptr, nullptr, true, nullptr, nullptr};
      args.bias = b32.defined() ? b32.data_ptr<float>() : nullptr;
      args.yb = yb + m0 * N;
      at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
        // a superblock of rows at a time: the tensors themselves (PlainValues), or 2:4 + int4 unpacked to bf16 into
        // this thread's buffer (~1 MiB at 4096 inputs), which the kernel then reads from cache for every row block
        thread_local std::vector<uint8_t> buf;
        GemmArgs a = args;
        for (int64_t s0 = n0; s0 < n1; s0 += grain) {
          const int64_t s1 = std::min(n1, s0 + grain);
          const RowBlock rb = vals.rows(s0, s1, buf);
          a.values = rb.values;
          a.bitmask = rb.bitmask;
          a.row0 = s0;
          if (!rb.ok || !kern.gemm_wide_bf16(a, pk, s0, s1)) ok = false;
        }
      });
    }
    TORCH_CHECK(ok.load(), bad_message);
    return y.view(output_shape(x, N));
  } else {
    const at::ScalarType dt = native_bf16 ? at::kBFloat16 : at::kFloat;
    const at::Tensor x2 = x.reshape({M, K}).to(dt).contiguous();
    y = at::empty({M, N}, x.options().dtype(dt));
    at::Tensor tile = at::empty({std::min(N, kDenseTileRows), K}, x.options().dtype(dt));
    for (int64_t t0 = 0; t0 < N && ok; t0 += kDenseTileRows) {
      const int64_t rows = std::min(kDenseTileRows, N - t0);
      at::parallel_for(t0, t0 + rows, 16, [&](int64_t n0, int64_t n1) {
        for_row_blocks(vals, n0, n1, [&](int64_t r0, int64_t r1, const RowBlock& rb) {
          DecompressArgs a{K, N, rb.values, values_bf16, rb.bitmask,
                           static_cast<uint8_t*>(tile.data_ptr()) + (r0 - t0) * K * tile.element_size(),
                           dt == at::kBFloat16, r0};
          if (!rb.ok || !kern.decompress(a, r0, r1)) ok = false;
        });
      });
      y.narrow(1, t0, rows).copy_(at::mm(x2, tile.narrow(0, 0, rows).t()));
    }
  }
  TORCH_CHECK(ok.load(), bad_message);
  return finish(y, x, bias, N);
}

at::Tensor sparse24_gemm_cpu(const at::Tensor& x, const at::Tensor& values_in, const at::Tensor& bitmask_in,
                             const c10::optional<at::Tensor>& bias, int64_t in_features) {
  const int64_t K = in_features;
  check_inputs(x, values_in, bitmask_in, bias, K);
  const at::Tensor values = values_in.contiguous(), bitmask = bitmask_in.contiguous();
  const bool values_bf16 = values.scalar_type() == at::kBFloat16;
  const PlainValues vals{static_cast<const uint8_t*>(values.data_ptr()), (K / 2) * values.element_size(),
                         bitmask.data_ptr<uint8_t>(), (K + 7) / 8};
  return sparse_gemm(x, vals, values_bf16, K, values.size(0), bias, kNot24);
}

at::Tensor sparse24_int4_gemm_cpu(const at::Tensor& x, const at::Tensor& tiles_in, const at::Tensor& scales_in,
                                  const at::Tensor& zeros_in, const c10::optional<at::Tensor>& bias,
                                  int64_t in_features, int64_t group_size) {
  const int64_t K = in_features;
  const int64_t gs = check_int4_inputs(x, tiles_in, scales_in, zeros_in, bias, K, group_size);
  const at::Tensor tiles = tiles_in.contiguous(), scales = scales_in.contiguous(), zeros = zeros_in.contiguous();
  const CpuKernels& kern = kCpuKernels.active();
  // bf16 values where the level multiplies bf16 natively and x is bf16 (as for 2:4 with bf16 values), else fp32
  const bool bf16 = kern.gemm_bf16 != nullptr && x.scalar_type() == at::kBFloat16;
  const ScaleType st = scales.scalar_type() == at::kFloat    ? ScaleType::kFloat
                       : scales.scalar_type() == at::kBFloat16 ? ScaleType::kBFloat16
                                                                : ScaleType::kHalf;
  const int64_t N = scales.size(0), M = x.numel() / K;
  const Int4Args q{K, N, gs, scales.size(1), tiles.data_ptr<uint8_t>(), scales.data_ptr(), st,
                   zeros.data_ptr<uint8_t>()};
  // the fused kernels, a tile (4 rows) at a time, codes straight into the products: bf16 activations where the CPU
  // multiplies bf16 (below the tile threshold), else fp32 arithmetic below kInt4FusedF32Rows
  const bool fused_bf16 = bf16 && kern.gemm_int4_bf16 != nullptr && K % 64 == 0 && gs % 64 == 0 &&
                          M < large_m_threshold(kern, true, use_wide_kernel(kern, true), true);
  const bool fused_f32 = !bf16 && kern.gemm_int4_f32 != nullptr && K % 32 == 0 && gs % 32 == 0 &&
                         M < std::min(kInt4FusedF32Rows, large_m_threshold(kern, false, false));
  if ((fused_bf16 || fused_f32) && q.groups <= kInt4MaxGroups && M > 0) {
    const at::Tensor xin = x.reshape({M, K}).to(fused_bf16 ? at::kBFloat16 : at::kFloat).contiguous();
    at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
    GemmArgs args{M, K, N, nullptr, nullptr, nullptr, fused_bf16, nullptr, y.data_ptr<float>()};
    if (fused_bf16)
      args.xb = reinterpret_cast<const uint16_t*>(xin.data_ptr());
    else
      args.x = xin.data_ptr<float>();
    const auto fn = fused_bf16 ? kern.gemm_int4_bf16 : kern.gemm_int4_f32;
    std::atomic<bool> ok{true};
    at::parallel_for(0, tiles.size(0), kRowGrain / kTileRows, [&](int64_t t0, int64_t t1) {
      if (!fn(args, q, t0, t1)) ok = false;
    });
    TORCH_CHECK(ok.load(), kNotPairs);
    return finish(y, x, bias, N);
  }
  const Int4Values vals{&kern, q, bf16};
  return sparse_gemm(x, vals, bf16, K, N, bias, kNotPairs);
}

}  // namespace

TORCH_LIBRARY_IMPL(slimformer, CPU, m) {
  m.impl("sparse24_gemm", &sparse24_gemm_cpu);
  m.impl("sparse24_int4_gemm", &sparse24_int4_gemm_cpu);
}

}  // namespace sparse24
}  // namespace slimformer
