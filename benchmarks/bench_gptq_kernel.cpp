// Raw-kernel benchmark of the GPTQ small-M CPU kernel: no torch, no Python, no dispatcher overhead.
// Streams `layers` distinct random weights (more than fit in the last-level cache) and reports the median time
// per layer, the effective weight-read bandwidth, and the GFLOP/s, for each ISA path the CPU supports.
//
// usage: bench_gptq_kernel [--k 4096] [--n 4096] [--m 1] [--bits 4] [--group 128] [--layers 16] [--iters 20]
//                          [--threads 2] [--json]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gptq/gptq_cpu.h"

using namespace slimformer::gptq;

namespace {

struct Options {
  int64_t k = 4096, n = 4096, m = 1, bits = 4, group = 128, layers = 16, iters = 20, threads = 2;
  bool json = false;
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
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      std::exit(2);
    }
  }
  if (o.group <= 0) o.group = o.k;
  return o;
}

using KernelFn = void (*)(const SmallMArgs&, int64_t, int64_t);

double run_ms(KernelFn fn, std::vector<SmallMArgs>& args, int64_t threads, int64_t iters) {
  std::vector<double> times;
  for (int64_t it = 0; it < iters + 1; ++it) {
    const auto t0 = std::chrono::steady_clock::now();
    for (auto& a : args) {
      const int64_t nt = a.w.n_tiles();
      std::vector<std::thread> pool;
      for (int64_t th = 0; th < threads; ++th) {
        const int64_t b = nt * th / threads, e = nt * (th + 1) / threads;
        pool.emplace_back([&, b, e] { fn(a, b, e); });
      }
      for (auto& t : pool) t.join();
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (it > 0) times.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count() / args.size());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
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
  std::vector<std::vector<float>> sz(o.layers);
  std::vector<SmallMArgs> args(o.layers);
  const TiledWeight shape{nullptr, nullptr, o.k, o.n, o.bits, std::min(o.group, o.k)};
  std::vector<float> x(o.m * o.k), xs(o.m * o.k), xsum(o.m * shape.groups()), row_scale(o.m), y(o.m * o.n);
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  for (auto& v : x) v = uni(rng);
  for (int64_t l = 0; l < o.layers; ++l) {
    q[l].resize(shape.n_tiles() * shape.k_words() * kTileCols);
    for (auto& v : q[l]) v = static_cast<int32_t>(rng());
    sz[l].resize(shape.n_tiles() * shape.groups() * 2 * kTileCols);
    for (auto& v : sz[l]) v = uni(rng) * 0.01f;
    TiledWeight w = shape;
    w.qtiles = q[l].data();
    w.scale_zero = sz[l].data();
    args[l] = SmallMArgs{w, xs.data(), xsum.data(), row_scale.data(), y.data(), o.m, o.n};
  }
  const double weight_bytes = double(o.k) * o.n * o.bits / 8 + double(shape.groups()) * o.n * 8;
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
  };
  if (!o.json)
    std::printf("%-7s %6s %6s %4s %5s %6s %11s %9s %9s\n", "isa", "K", "N", "M", "bits", "group", "us/layer",
                "GB/s", "GFLOP/s");
  for (const Path& p : paths) {
    if (!p.ok) continue;
    const int64_t iters = std::string(p.name) == "scalar" ? std::max<int64_t>(3, o.iters / 5) : o.iters;
    p.kern.prepare_rows(shape, x.data(), 0, o.m, xs.data(), xsum.data(), row_scale.data());  // this path's prescale
    const double ms = run_ms(p.kern.small_m_gemm, args, o.threads, iters);
    const double gbs = weight_bytes / (ms * 1e-3) / 1e9;
    const double gflops = 2.0 * o.m * o.k * o.n / (ms * 1e-3) / 1e9;
    if (o.json)
      std::printf("{\"isa\": \"%s\", \"k\": %lld, \"n\": %lld, \"m\": %lld, \"bits\": %lld, \"group\": %lld, "
                  "\"us_per_layer\": %.1f, \"gb_per_s\": %.2f, \"gflop_per_s\": %.2f}\n",
                  p.name, (long long)o.k, (long long)o.n, (long long)o.m, (long long)o.bits, (long long)o.group,
                  ms * 1e3, gbs, gflops);
    else
      std::printf("%-7s %6lld %6lld %4lld %5lld %6lld %11.1f %9.2f %9.2f\n", p.name, (long long)o.k, (long long)o.n,
                  (long long)o.m, (long long)o.bits, (long long)o.group, ms * 1e3, gbs, gflops);
  }
  return 0;
}
