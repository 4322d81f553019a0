// Raw-kernel benchmark of the 2:4 sparse CPU kernels: no torch, no Python, no dispatcher or conversion overhead.
// Streams `layers` distinct random 2:4 weights (more than fit in the last-level cache) and reports the median time
// per layer, the effective read bandwidth of the compressed weight (values + bitmask) and the GFLOP/s counted on
// the kept weights, for each ISA path the CPU supports: fp32 activations with fp32 and bf16 values ("-f32" /
// "-bf16v") and, where the level has it, bf16 activations and values ("-bf16"); and 2:4 + int4 (group 128, fp16
// scales, the tiles of the kernel layout) the way the op runs it: 8 rows unpacked into buffers then the sparse kernel
// on them, "-int4-f32" (fp32 activations) and "-int4-bf16" (bf16, where the level multiplies bf16), and
// "-int4-fused" / "-int4-fused-f32" (the kernels that multiply the codes straight from the tiles: bf16 activations
// with K a multiple of 64, fp32 activations on any AVX-512 level with K a multiple of 32); "-bf16-wide" is the
// large-M bf16 kernel (sparse24_cpu_wide.h; at amx the AMX one, sparse24_cpu_amx.h) on activations packed before the
// timing, and "-bf16-wide-pack" times that packing alone (the op packs once per call).
// The int4 bytes are the tiles (codes + positions) and the fp16 scales + zeros.
//
// usage: bench_sparse24_kernel [--k 4096] [--n 11008] [--m 1] [--layers 16] [--iters 20] [--threads 2]
//                              [--isa scalar|avx2|avx512|avx512bf16|amx] [--json]
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench_pool.h"
#include "common/amx_permission.h"
#include "sparse24/sparse24_cpu.h"

using namespace slimformer::sparse24;

namespace {

struct Options {
  int64_t k = 4096, n = 11008, m = 1, layers = 16, iters = 20, threads = 2;
  bool json = false;
  std::string isa;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> int64_t {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atoll(argv[++i]);
    };
    if (a == "--k") o.k = next();
    else if (a == "--n") o.n = next();
    else if (a == "--m") o.m = next();
    else if (a == "--layers") o.layers = next();
    else if (a == "--iters") o.iters = next();
    else if (a == "--threads") o.threads = next();
    else if (a == "--json") o.json = true;
    else if (a == "--isa" && i + 1 < argc) o.isa = argv[++i];
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      std::exit(2);
    }
  }
  if (o.k <= 0 || o.k % 4 || o.n <= 0 || o.m <= 0 || o.layers <= 0 || o.threads <= 0) {
    std::fprintf(stderr, "need k a positive multiple of 4 and positive n, m, layers, threads\n");
    std::exit(2);
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const int64_t K = o.k, N = o.n, M = o.m, KB = (K + 7) / 8;
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.f, 1.f);
  // every layer: a random 2:4 mask (one of the 6 valid nibbles per group) and values in both dtypes
  static const uint8_t kNibbles[6] = {0x3, 0x5, 0x6, 0x9, 0xA, 0xC};
  std::vector<std::vector<uint8_t>> masks(o.layers, std::vector<uint8_t>(N * KB, 0));
  std::vector<std::vector<float>> vf(o.layers, std::vector<float>(N * K / 2));
  std::vector<std::vector<uint16_t>> vb(o.layers, std::vector<uint16_t>(N * K / 2));
  for (int64_t l = 0; l < o.layers; ++l) {
    for (int64_t n = 0; n < N; ++n)
      for (int64_t g = 0; g < K / 4; ++g) masks[l][n * KB + g / 2] |= kNibbles[rng() % 6] << (4 * (g % 2));
    for (int64_t i = 0; i < N * K / 2; ++i) {
      float v = normal(rng) * 0.02f;
      uint32_t b;
      std::memcpy(&b, &v, 4);
      b &= 0xFFFF0000u;
      std::memcpy(&v, &b, 4);
      vf[l][i] = v;
      vb[l][i] = static_cast<uint16_t>(b >> 16);
    }
  }
  // 2:4 + int4 in the kernel layout (sparse24_cpu.h): random codes, positions of the layer's masks, fp16 scales
  // 0.01 (0x211F), symmetric zeros
  const int64_t G = (K + 127) / 128, T = (N + kTileRows - 1) / kTileRows, TB = tile_bytes(K);
  std::vector<std::vector<uint8_t>> tiles(o.layers, std::vector<uint8_t>(T * TB));
  std::vector<uint16_t> scales(N * G, 0x211F);
  std::vector<uint8_t> zeros(N * G, 8);
  for (int64_t l = 0; l < o.layers; ++l)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < TB / kTileBlockBytes; ++b) {
        uint8_t* blk = tiles[l].data() + t * TB + b * kTileBlockBytes;
        for (int i = 0; i < 128; ++i) blk[i] = static_cast<uint8_t>(rng());
        for (int r = 0; r < kTileRows; ++r)
          for (int i = 0; i < 16; ++i) {
            const int64_t n = t * kTileRows + r, byte = b * 16 + i;  // the mask byte of groups 2 byte, 2 byte + 1
            const uint8_t m = n < N && byte < KB ? masks[l][n * KB + byte] : 0x33;
            const uint8_t lo = pair_of_nibble(m & 15), hi = pair_of_nibble(m >> 4);
            blk[128 + 16 * r + i] = static_cast<uint8_t>((lo == kBadNibble ? 4 : lo) | (hi == kBadNibble ? 4 : hi) << 4);
          }
      }
  std::vector<float> x(M * K), y(M * N);
  std::vector<uint16_t> xb(M * K);
  for (int64_t i = 0; i < M * K; ++i) {
    x[i] = normal(rng);
    uint32_t b;
    std::memcpy(&b, &x[i], 4);
    xb[i] = static_cast<uint16_t>(b >> 16);
    b &= 0xFFFF0000u;
    std::memcpy(&x[i], &b, 4);
  }
  struct Path {
    const char* name;
    const CpuKernels& (*kern)();
    bool ok;
  };
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  const bool bf16 = avx512 && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16") &&
                    __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vbmi2");
  const Path paths[] = {
      {"scalar", &cpu_kernels_scalar, true},
      {"avx2", &cpu_kernels_avx2, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")},
      {"avx512", &cpu_kernels_avx512, avx512},
      {"avx512bf16", &cpu_kernels_avx512bf16, bf16},
      {"amx", &cpu_kernels_amx,
       bf16 && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") && slimformer::amx_permitted()},
  };
  if (!o.json)
    std::printf("%-18s %6s %6s %4s %11s %9s %9s\n", "path", "K", "N", "M", "us/layer", "GB/s", "GFLOP/s");
  enum Kind { kF32, kBf16Values, kBf16, kInt4F32, kInt4Bf16, kInt4Fused, kInt4FusedF32, kWide, kWidePack };
  std::vector<uint8_t> packed_buf;
  for (const Path& p : paths)
    for (const Kind kind :
         {kF32, kBf16Values, kBf16, kInt4F32, kInt4Bf16, kInt4Fused, kInt4FusedF32, kWide, kWidePack}) {
      if (!p.ok || (!o.isa.empty() && o.isa != p.name)) continue;
      const CpuKernels& kern = p.kern();
      if ((kind == kBf16 || kind == kInt4Bf16) && kern.gemm_bf16 == nullptr) continue;
      if (kind == kInt4Fused && (kern.gemm_int4_bf16 == nullptr || K % 64)) continue;
      if (kind == kInt4FusedF32 && (kern.gemm_int4_f32 == nullptr || K % 32)) continue;
      if ((kind == kWide || kind == kWidePack) && kern.gemm_wide_bf16 == nullptr) continue;
      const int64_t KBn = kern.wide_pack_blocks != nullptr ? kern.wide_pack_blocks(K) : 0;
      uint8_t* packed = nullptr;
      if (kind == kWide || kind == kWidePack) {
        packed_buf.assign(static_cast<size_t>(kern.wide_packed_bytes(M, K) + 64), 0);
        packed = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(packed_buf.data()) + 63) & ~uintptr_t{63});
      }
      if (kind == kWide) kern.pack_wide_bf16(xb.data(), M, K, packed, 0, KBn);
      const bool int4 = kind >= kInt4F32 && kind <= kInt4FusedF32;
      std::vector<GemmArgs> args(o.layers);
      for (int64_t l = 0; l < o.layers; ++l)
        args[l] = GemmArgs{M, K, N, x.data(), xb.data(),
                           kind == kF32 ? static_cast<const void*>(vf[l].data()) : vb[l].data(), kind != kF32,
                           masks[l].data(), y.data()};
      auto fn = kind == kBf16 || kind == kInt4Bf16 ? kern.gemm_bf16 : kern.gemm;
      bool ok = true;
      const int64_t iters = std::string(p.name) == "scalar" ? std::max<int64_t>(3, o.iters / 5) : o.iters;
      constexpr int64_t kBlock = 8;  // as the op (sparse24_cpu_ops.cpp, Int4Values)
      std::vector<std::vector<uint8_t>> bufs(o.threads, std::vector<uint8_t>(kBlock * ((K / 2) * 4 + KB)));
      const double ms = median_ms_per_layer(
          [&](int64_t th, int64_t layer) {
            const int64_t n0 = N * th / o.threads, n1 = N * (th + 1) / o.threads;
            if (kind == kWide) {
              if (!kern.gemm_wide_bf16(args[layer], packed, n0, n1)) ok = false;
              return;
            }
            if (kind == kWidePack) {
              kern.pack_wide_bf16(xb.data(), M, K, packed, KBn * th / o.threads, KBn * (th + 1) / o.threads);
              return;
            }
            if (!int4) {
              if (!fn(args[layer], n0, n1)) ok = false;
              return;
            }
            const Int4Args q{K, N, 128, G, tiles[layer].data(), scales.data(), ScaleType::kHalf, zeros.data()};
            if (kind == kInt4Fused || kind == kInt4FusedF32) {  // whole tiles per thread
              const auto fused = kind == kInt4Fused ? kern.gemm_int4_bf16 : kern.gemm_int4_f32;
              if (!fused(args[layer], q, T * th / o.threads, T * (th + 1) / o.threads)) ok = false;
              return;
            }
            GemmArgs a = args[layer];
            a.values_bf16 = kind == kInt4Bf16;
            for (int64_t r0 = n0; r0 < n1; r0 += kBlock) {
              const int64_t r1 = std::min(r0 + kBlock, n1);
              uint8_t* buf = bufs[th].data();
              if (!kern.unpack_int4(q, r0, r1, buf, a.values_bf16, buf + kBlock * (K / 2) * 4)) ok = false;
              a.values = buf;
              a.bitmask = buf + kBlock * (K / 2) * 4;
              a.row0 = r0;
              if (!fn(a, r0, r1)) ok = false;
            }
          },
          o.layers, o.threads, iters);
      if (!ok) {
        std::fprintf(stderr, "%s: the kernel reported a mask that is not 2:4\n", p.name);
        return 1;
      }
      static const char* const kSuffix[] = {"-f32",        "-bf16v",          "-bf16",      "-int4-f32",
                                            "-int4-bf16",  "-int4-fused",     "-int4-fused-f32", "-bf16-wide",
                                            "-bf16-wide-pack"};
      const std::string name = std::string(p.name) + kSuffix[kind];
      // bytes read from memory: values and the bitmask, or the tiles and fp16 scales + zeros
      const double bytes = kind == kWidePack ? 0.0
                           : int4          ? double(T) * TB + 3.0 * N * G
                                : double(N) * (K / 2) * (kind == kF32 ? 4 : 2) + double(N) * KB;
      const double gbs = bytes / (ms * 1e-3) / 1e9;
      const double gflops = kind == kWidePack ? 0.0 : 2.0 * M * N * (K / 2) / (ms * 1e-3) / 1e9;
      if (o.json)
        std::printf("{\"path\": \"%s\", \"k\": %lld, \"n\": %lld, \"m\": %lld, \"us_per_layer\": %.1f, "
                    "\"gb_per_s\": %.2f, \"gflop_per_s\": %.2f}\n",
                    name.c_str(), (long long)K, (long long)N, (long long)M, ms * 1e3, gbs, gflops);
      else
        std::printf("%-18s %6lld %6lld %4lld %11.1f %9.2f %9.2f\n", name.c_str(), (long long)K, (long long)N,
                    (long long)M, ms * 1e3, gbs, gflops);
    }
  return 0;
}
