// A profiling aid, not part of the library: an LD_PRELOAD module that wraps oneDNN's dnnl_sgemm,
// times every call and prints, at exit, the time and GFLOP/s per (op, M, N, K) on stderr,
// slowest total first. It shows how fast each GEMM of a real workload runs in place (operands
// cold, after other kernels), which a standalone GEMM benchmark does not (docs/performance.md).
//   LD_PRELOAD=./build/libxmoe_sgemm_calls.so ./build/xmoe --threads 2 bench train
//       --config configs/small-xmoe-softmax.json --steps 4 --warmup 1      (one command line)
// Calls made concurrently from several threads (single-threaded GEMMs inside a parallel region)
// are each timed, so their sum can exceed the wall time.
#include <oneapi/dnnl/dnnl.h>

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace {

using Sgemm = dnnl_status_t (*)(char, char, dnnl_dim_t, dnnl_dim_t, dnnl_dim_t, float,
                                const float*, dnnl_dim_t, const float*, dnnl_dim_t, float, float*,
                                dnnl_dim_t);
using Shape = std::tuple<char, char, dnnl_dim_t, dnnl_dim_t, dnnl_dim_t>;

struct Totals {
  double ms = 0;
  long calls = 0;
};

struct Registry {
  std::mutex mutex;
  std::map<Shape, Totals> by_shape;

  ~Registry() {
    std::vector<std::pair<Shape, Totals>> rows(by_shape.begin(), by_shape.end());
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
    double total = 0;
    for (const auto& row : rows) total += row.second.ms;
    std::fprintf(stderr, "dnnl_sgemm: %.1f ms in all (op, M, N, K, calls, ms, GFLOP/s)\n", total);
    for (const auto& [shape, t] : rows) {
      const auto [ta, tb, m, n, k] = shape;
      const double gflop = 2.0 * static_cast<double>(m) * n * k * t.calls / 1e9;
      std::fprintf(stderr, "%c%c %6ld %6ld %6ld %7ld %10.1f %6.0f\n", ta, tb, static_cast<long>(m),
                   static_cast<long>(n), static_cast<long>(k), t.calls, t.ms, gflop / t.ms * 1e3);
    }
  }
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

extern "C" dnnl_status_t dnnl_sgemm(char transa, char transb, dnnl_dim_t M, dnnl_dim_t N,
                                    dnnl_dim_t K, float alpha, const float* A, dnnl_dim_t lda,
                                    const float* B, dnnl_dim_t ldb, float beta, float* C,
                                    dnnl_dim_t ldc) {
  static const auto next = reinterpret_cast<Sgemm>(dlsym(RTLD_NEXT, "dnnl_sgemm"));
  Registry& r = registry();  // constructed before the first call, so destroyed after the last
  const auto start = std::chrono::steady_clock::now();
  const dnnl_status_t status = next(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::lock_guard<std::mutex> lock(r.mutex);
  Totals& t = r.by_shape[{transa, transb, M, N, K}];
  t.ms += ms;
  ++t.calls;
  return status;
}
