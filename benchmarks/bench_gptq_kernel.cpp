// Raw-kernel benchmark of the GPTQ small-M CPU kernel: no torch, no Python, no dispatcher overhead.
// Streams `layers` distinct random weights (more than fit in the last-level cache) and reports the median time
// per layer, the effective weight-read bandwidth, and the GFLOP/s, for each ISA path the CPU supports: the float
// kernel (fp32 activations), for 2/4/8 bits the integer kernel that bf16 activations take ("-i16" rows), on
// AVX512-BF16 CPUs for 2/4 bits the bf16 kernel they take there ("-bf16" rows), and for 4 bits the opt-in int8
// activation mode ("-a8" rows; activation preparation not timed, for any of them).
//
// usage: bench_gptq_kernel [--k 4096] [--n 4096] [--m 1] [--bits 4] [--group 128] [--layers 16] [--iters 20]
//                          [--threads 2] [--isa scalar|avx2|avx512|avx512vnni|avx512bf16|amx] [--json]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_pool.h"
#include "gptq/gptq_cpu.h"

using namespace slimformer::gptq;

namespace {

struct Options {
  int64_t k = 4096, n = 4096, m = 1, bits = 4, group = 128, layers = 16, iters = 20, threads = 2;
  bool json = false;
  std::string isa;  // empty: every ISA path the CPU supports
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
    else if (a == "--bits") o.bits = next();
    else if (a == "--group") o.group = next();
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
  if (!(o.isa.empty() || o.isa == "scalar" || o.isa == "avx2" || o.isa == "avx512" || o.isa == "avx512vnni" ||
        o.isa == "avx512bf16" || o.isa == "amx")) {
    std::fprintf(stderr, "--isa must be scalar, avx2, avx512, avx512vnni, avx512bf16 or amx, got %s\n", o.isa.c_str());
    std::exit(2);
  }
  if (o.group <= 0) o.group = o.k;
  return o;
}

// Times fn over all layers with `threads` threads, each taking its share of the column tiles.
template <class Args>
double run_ms(void (*fn)(const Args&, int64_t, int64_t), std::vector<Args>& args, int64_t threads, int64_t iters) {
  return median_ms_per_layer(
      [&](int64_t th, int64_t layer) {
        const Args& a = args[layer];
        const int64_t nt = a.w.n_tiles();
        fn(a, nt * th / threads, nt * (th + 1) / threads);
      },
      static_cast<int64_t>(args.size()), threads, iters);
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (!(o.bits == 2 || o.bits == 3 || o.bits == 4 || o.bits == 8) || (o.k * o.bits) % 32 != 0) {
    std::fprintf(stderr, "need bits in {2,3,4,8} and k*bits divisible by 32\n");
    return 2;
  }
  std::mt19937 rng(0);
  std::vector<std::vector<int32_t>> q(o.layers);
  std::vector<std::vector<uint16_t>> sz(o.layers);
  std::vector<SmallMArgs> args(o.layers);
  const TiledWeight shape{nullptr, nullptr, o.k, o.n, o.bits, std::min(o.group, o.k)};
  std::vector<float> x(o.m * o.k), xs(o.m * o.k), xsum(o.m * shape.groups()), row_scale(2 * o.m), y(o.m * o.n);
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (auto& v : x) {  // bf16 values (what the integer path is for), normally distributed
    v = normal(rng);
    uint32_t b;
    std::memcpy(&b, &v, 4);
    b &= 0xFFFF0000u;
    std::memcpy(&v, &b, 4);
  }
  const int64_t nb = blocks_i16(shape);
  std::vector<int32_t> xq(o.m * o.k / 2), res_n(o.m), res_k(o.m * o.k), res_g(o.m * o.k);
  std::vector<float> bscale(o.m * nb), res_lo(o.m * o.k);
  std::vector<SmallMI16Args> args_i16(o.layers);
  std::vector<int32_t> xa8(o.m * o.k / 4);
  std::vector<float> ascale(o.m * nb), asum(o.m * nb);
  std::vector<SmallMA8Args> args_a8(o.layers);
  std::vector<uint16_t> xbf(o.m * o.k);  // x's bf16 bit patterns (x holds bf16 values)
  for (int64_t i = 0; i < o.m * o.k; ++i) {
    uint32_t b;
    std::memcpy(&b, &x[i], 4);
    xbf[i] = static_cast<uint16_t>(b >> 16);
  }
  std::vector<int32_t> xb(o.m * o.k / 2);
  std::vector<SmallMBf16Args> args_bf16(o.layers);
  for (int64_t l = 0; l < o.layers; ++l) {
    q[l].resize(shape.n_tiles() * shape.k_words() * kTileCols);
    for (auto& v : q[l]) v = static_cast<int32_t>(rng());
    sz[l].resize(shape.n_tiles() * shape.groups() * 2 * kTileCols);
    for (int64_t i = 0; i < static_cast<int64_t>(sz[l].size()); ++i)  // fp16: scales ~2^-7, zero points 8
      sz[l][i] = (i / kTileCols) % 2 == 0 ? static_cast<uint16_t>(0x2000u + rng() % 0x400u) : uint16_t{0x4800u};
    TiledWeight w = shape;
    w.qtiles = q[l].data();
    w.scale_zero = sz[l].data();
    const KernelOutput out{y.data(), false, nullptr, o.n};
    args[l] = SmallMArgs{w, xs.data(), xsum.data(), row_scale.data(), out, o.m};
    args_i16[l] = SmallMI16Args{w,           xq.data(),    bscale.data(), xsum.data(), res_n.data(),
                                res_k.data(), res_g.data(), res_lo.data(), out,         o.m};
    args_a8[l] = SmallMA8Args{w, xa8.data(), ascale.data(), asum.data(), out, o.m};
    args_bf16[l] = SmallMBf16Args{w, xb.data(), xsum.data(), out, o.m};
  }
  const double weight_bytes = double(o.k) * o.n * o.bits / 8 + double(shape.groups()) * o.n * 4;
  struct Path {
    const char* name;
    const CpuKernels& kern;
    bool ok;
  };
  __builtin_cpu_init();
  const Path paths[] = {
      {"scalar", cpu_kernels_scalar(), true},
      {"avx2", cpu_kernels_avx2(), __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")},
      {"avx512", cpu_kernels_avx512(),
       __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl")},
      {"avx512vnni", cpu_kernels_avx512vnni(),
       __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni")},
      {"avx512bf16", cpu_kernels_avx512bf16(),
       __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("avx512bf16")},
      {"amx", cpu_kernels_amx(),  // the avx512bf16 kernels with an fp32 kernel that converts (no tiles used)
       __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("amx-tile") &&
           __builtin_cpu_supports("amx-bf16")},
  };
  if (!o.json)
    std::printf("%-10s %6s %6s %4s %5s %6s %11s %9s %9s\n", "isa", "K", "N", "M", "bits", "group", "us/layer",
                "GB/s", "GFLOP/s");
  const KernelInput in{x.data(), false};  // fp32 holding bf16 values
  enum Kind { kFloat, kI16, kA8, kBf16 };
  for (const Path& p : paths)
    for (const Kind kind : {kFloat, kI16, kA8, kBf16}) {
    if (!p.ok || (!o.isa.empty() && o.isa != p.name) || (kind == kI16 && !i16_bits(o.bits)) || (kind == kA8 && !a8_bits(o.bits))) continue;
    if (kind == kBf16 && (p.kern.small_m_gemm_bf16 == nullptr || !bf16_bits(o.bits))) continue;
    const int64_t iters = std::string(p.name) == "scalar" ? std::max<int64_t>(3, o.iters / 5) : o.iters;
    double ms = 0;
    if (kind == kBf16) {
      if (!p.kern.prepare_rows_bf16(shape, KernelInput{xbf.data(), true}, 0, o.m, xb.data(), xsum.data())) return 1;
      ms = run_ms(p.kern.small_m_gemm_bf16, args_bf16, o.threads, iters);
    } else if (kind == kA8) {
      p.kern.prepare_rows_a8(shape, in, 0, o.m, xa8.data(), ascale.data(), asum.data());
      ms = run_ms(p.kern.small_m_gemm_a8, args_a8, o.threads, iters);
    } else if (kind == kI16) {
      p.kern.prepare_rows_i16(shape, in, 0, o.m, xq.data(), bscale.data(), xsum.data(), res_n.data(),
                              res_k.data(), res_g.data(), res_lo.data());
      ms = run_ms(p.kern.small_m_gemm_i16, args_i16, o.threads, iters);
    } else {
      p.kern.prepare_rows(shape, in, 0, o.m, xs.data(), xsum.data(), row_scale.data());  // this path's prescale
      ms = run_ms(p.kern.small_m_gemm, args, o.threads, iters);
    }
    const std::string name =
        std::string(p.name) + (kind == kI16 ? "-i16" : kind == kA8 ? "-a8" : kind == kBf16 ? "-bf16" : "");
    const double gbs = weight_bytes / (ms * 1e-3) / 1e9;
    const double gflops = 2.0 * o.m * o.k * o.n / (ms * 1e-3) / 1e9;
    if (o.json)
      std::printf("{\"isa\": \"%s\", \"k\": %lld, \"n\": %lld, \"m\": %lld, \"bits\": %lld, \"group\": %lld, "
                  "\"us_per_layer\": %.1f, \"gb_per_s\": %.2f, \"gflop_per_s\": %.2f}\n",
                  name.c_str(), (long long)o.k, (long long)o.n, (long long)o.m, (long long)o.bits, (long long)o.group,
                  ms * 1e3, gbs, gflops);
    else
      std::printf("%-10s %6lld %6lld %4lld %5lld %6lld %11.1f %9.2f %9.2f\n", name.c_str(), (long long)o.k, (long long)o.n,
                  (long long)o.m, (long long)o.bits, (long long)o.group, ms * 1e3, gbs, gflops);
  }
  return 0;
}
