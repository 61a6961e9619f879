// Shared by the CPU kernels of this folder (compiled together into one library by kernels.py):
// 8-float vectors, the thread count and the parallel loop, and a pool of scratch buffers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
#ifdef __linux__
#include <sched.h>
#include <unistd.h>
#endif

namespace acmix {

// 8 floats, loaded and stored unaligned (GCC/Clang vector extension: AVX on x86, NEON pairs on ARM)
typedef float v8 __attribute__((vector_size(32), aligned(4)));

inline v8 load8(const float *p) { return *reinterpret_cast<const v8 *>(p); }
inline void store8(float *p, v8 v) { *reinterpret_cast<v8 *>(p) = v; }
// x in all eight lanes (one broadcast; `v8{} + x` would be an addition, which -0.0 keeps from folding)
inline v8 splat(float x) { return v8{x, x, x, x, x, x, x, x}; }
inline float sum8(v8 v) { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }

// Threads a kernel may run on: the CPUs this process may use (the main thread's affinity, which the
// launching thread may not share), at most ACMIX_KERNEL_THREADS when that is a positive number.
inline int64_t num_threads() {
  int64_t cpus = std::max(1u, std::thread::hardware_concurrency());
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(getpid(), sizeof(set), &set) == 0) cpus = std::max(1, CPU_COUNT(&set));
#endif
  if (const char *env = std::getenv("ACMIX_KERNEL_THREADS")) {
    const int cap = std::atoi(env);
    if (cap > 0) cpus = std::min<int64_t>(cpus, cap);
  }
  return cpus;
}

// Runs fn(i, thread) for i in [0, n) on min(threads, n) threads, each taking one contiguous range of
// i (neighbouring jobs write neighbouring memory: no false sharing between threads). A caller that
// keeps per-thread buffers sizes them for the same `threads`, read once per call.
template <typename F>
void parallel_for(int64_t n, int64_t threads, F fn) {
  const int64_t nt = std::max<int64_t>(1, std::min(threads, n));
  auto run = [&fn, n, nt](int64_t t) {
    for (int64_t i = t * n / nt; i < (t + 1) * n / nt; ++i) fn(i, t);
  };
  std::vector<std::thread> workers;
  for (int64_t t = 1; t < nt; ++t) workers.emplace_back(run, t);
  run(0);
  for (auto &w : workers) w.join();
}

// Large scratch buffers are kept between calls: a fresh multi-megabyte allocation is mmap-ed and
// page-faulted in on every call, which costs as much as the arithmetic. A pool, not one static
// buffer, because MindSpore may launch two kernels at once.
class Scratch {
 public:
  explicit Scratch(int64_t n) {
    std::lock_guard<std::mutex> lock(mutex());
    auto &pool = free_list();
    auto it = std::find_if(pool.begin(), pool.end(), [n](const std::unique_ptr<std::vector<float>> &b) {
      return static_cast<int64_t>(b->size()) >= n;
    });
    if (it == pool.end()) {
      buf_ = std::make_unique<std::vector<float>>(n);
    } else {
      buf_ = std::move(*it);
      pool.erase(it);
    }
  }
  ~Scratch() {
    std::lock_guard<std::mutex> lock(mutex());
    free_list().push_back(std::move(buf_));
  }
  float *data() { return buf_->data(); }

 private:
  static std::mutex &mutex() { static std::mutex m; return m; }
  static std::vector<std::unique_ptr<std::vector<float>>> &free_list() {
    static std::vector<std::unique_ptr<std::vector<float>>> pool;
    return pool;
  }
  std::unique_ptr<std::vector<float>> buf_;
};

}  // namespace acmix
