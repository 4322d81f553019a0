// Timing harness shared by the C++ kernel benchmarks: runs work(thread, layer) for every layer with `threads`
// threads (the calling thread plus threads-1 workers started once and woken through a generation counter,
// spinning: a thread start per layer would cost as much as the kernel) and returns the median over `iters` passes
// (after one untimed pass) of the time per layer, in ms.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

template <class Work>
double median_ms_per_layer(Work&& work, int64_t layers, int64_t threads, int64_t iters) {
  std::atomic<int64_t> gen{0}, done{0};
  std::atomic<bool> stop{false};
  int64_t layer = 0;
  std::vector<std::thread> pool;
  for (int64_t th = 1; th < threads; ++th)
    pool.emplace_back([&, th] {
      int64_t seen = 0;
      while (true) {
        while (gen.load(std::memory_order_acquire) == seen && !stop.load(std::memory_order_acquire)) {
        }
        if (stop.load(std::memory_order_acquire)) return;
        seen = gen.load(std::memory_order_acquire);
        work(th, layer);
        done.fetch_add(1, std::memory_order_acq_rel);
      }
    });
  std::vector<double> times;
  for (int64_t it = 0; it < iters + 1; ++it) {
    const auto t0 = std::chrono::steady_clock::now();
    for (layer = 0; layer < layers; ++layer) {
      done.store(0, std::memory_order_release);
      gen.fetch_add(1, std::memory_order_acq_rel);
      work(0, layer);
      while (done.load(std::memory_order_acquire) != threads - 1) {
      }
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (it > 0) times.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count() / layers);
  }
  stop.store(true, std::memory_order_release);
  for (auto& t : pool) t.join();
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}
