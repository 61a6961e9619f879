// LayerNorm over the last axis (Swin's nn.LayerNorm((C,))) as one kernel pair for MindSpore's CPU
// backend (ops.Custom, built by src/layers/cpu/kernels.py): MindSpore's CPU LayerNormGrad takes many
// times the time of a pass over its data. Each row is normalised with its mean and variance from two passes (the variance from the
// centred values, as torch does, not from E[x^2] - mean^2); the backward pass recomputes them instead
// of keeping them.
//   LayerNormForward(x (..., C), gamma (C), beta (C), eps (1)) -> y (x's shape)
//   LayerNormBackward(x, gamma, eps, dy) -> dx (x's shape), dgamma (C), dbeta (C)
//     dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gamma, xhat = (x - mean) * rstd;
//     dgamma and dbeta are summed in float over blocks of rows, the blocks in double.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"

using namespace acmix;

namespace {

constexpr int64_t kRowBlock = 64;  // rows per job of the LayerNorm kernels

struct RowStats {
  float mean, rstd;
};

RowStats row_stats(const float *x, int64_t C, float eps) {
  v8 acc = {};
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) acc += load8(x + c);
  float sum = sum8(acc);
  for (; c < C; ++c) sum += x[c];
  const float mean = sum / static_cast<float>(C);
  v8 acc2 = {};
  for (c = 0; c + 8 <= C; c += 8) {
    const v8 d = load8(x + c) - mean;
    acc2 += d * d;
  }
  float sq = sum8(acc2);
  for (; c < C; ++c) sq += (x[c] - mean) * (x[c] - mean);
  return {mean, 1.f / std::sqrt(sq / static_cast<float>(C) + eps)};
}

// rows and C of a (..., C) shape
void rows_and_width(int ndim, const int64_t *shape, int64_t *rows, int64_t *C) {
  *rows = 1;
  for (int i = 0; i + 1 < ndim; ++i) *rows *= shape[i];
  *C = shape[ndim - 1];
}

}  // namespace

// LayerNormForward(x, gamma, beta, eps) -> y
extern "C" int LayerNormForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
  if (nparam != 5) return 1;
  int64_t rows, C;
  rows_and_width(ndims[0], shapes[0], &rows, &C);
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  parallel_for((rows + kRowBlock - 1) / kRowBlock, num_threads(), [&](int64_t blk, int64_t) {
    for (int64_t r = blk * kRowBlock; r < std::min(rows, (blk + 1) * kRowBlock); ++r) {
      const float *xr = x + r * C;
      float *yr = y + r * C;
      const RowStats st = row_stats(xr, C, eps);
      int64_t c = 0;
      for (; c + 8 <= C; c += 8) store8(yr + c, (load8(xr + c) - st.mean) * st.rstd * load8(gamma + c) + load8(beta + c));
      for (; c < C; ++c) yr[c] = (xr[c] - st.mean) * st.rstd * gamma[c] + beta[c];
    }
  });
  return 0;
}

// LayerNormBackward(x, gamma, eps, dy) -> dx, dgamma, dbeta
extern "C" int LayerNormBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *stream, void *extra) {
  if (nparam != 7) return 1;
  int64_t rows, C;
  rows_and_width(ndims[0], shapes[0], &rows, &C);
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float eps = *static_cast<const float *>(params[2]);
  const float *dy = static_cast<const float *>(params[3]);
  float *dx = static_cast<float *>(params[4]);
  float *dgamma = static_cast<float *>(params[5]);
  float *dbeta = static_cast<float *>(params[6]);
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  const int64_t nthreads = std::min(num_threads(), blocks);
  // per thread: double sums of dgamma then dbeta (2C), and the float sums of the current block (2C)
  std::vector<double> acc(nthreads * 2 * C, 0.0);
  std::vector<float> part(nthreads * 2 * C);
  parallel_for(blocks, nthreads, [&](int64_t blk, int64_t tid) {
    float *pg = part.data() + tid * 2 * C, *pb = pg + C;
    std::fill(pg, pg + 2 * C, 0.f);
    for (int64_t r = blk * kRowBlock; r < std::min(rows, (blk + 1) * kRowBlock); ++r) {
      const float *xr = x + r * C, *dyr = dy + r * C;
      float *dxr = dx + r * C;
      const RowStats st = row_stats(xr, C, eps);
      v8 sg = {}, sgx = {};
      int64_t c = 0;
      for (; c + 8 <= C; c += 8) {
        const v8 xh = (load8(xr + c) - st.mean) * st.rstd, d = load8(dyr + c), g = d * load8(gamma + c);
        sg += g;
        sgx += g * xh;
        store8(pg + c, load8(pg + c) + d * xh);
        store8(pb + c, load8(pb + c) + d);
      }
      float sum_g = sum8(sg), sum_gx = sum8(sgx);
      for (; c < C; ++c) {
        const float xh = (xr[c] - st.mean) * st.rstd, g = dyr[c] * gamma[c];
        sum_g += g;
        sum_gx += g * xh;
        pg[c] += dyr[c] * xh;
        pb[c] += dyr[c];
      }
      const float mean_g = sum_g / static_cast<float>(C), mean_gx = sum_gx / static_cast<float>(C);
      for (c = 0; c + 8 <= C; c += 8) {
        const v8 xh = (load8(xr + c) - st.mean) * st.rstd, g = load8(dyr + c) * load8(gamma + c);
        store8(dxr + c, st.rstd * (g - mean_g - xh * mean_gx));
      }
      for (; c < C; ++c) {
        const float xh = (xr[c] - st.mean) * st.rstd;
        dxr[c] = st.rstd * (dyr[c] * gamma[c] - mean_g - xh * mean_gx);
      }
    }
    double *ag = acc.data() + tid * 2 * C;
    for (int64_t c = 0; c < 2 * C; ++c) ag[c] += pg[c];
  });
  for (int64_t c = 0; c < 2 * C; ++c) {
    double sum = 0.0;
    for (int64_t t = 0; t < nthreads; ++t) sum += acc[t * 2 * C + c];
    (c < C ? dgamma[c] : dbeta[c - C]) = static_cast<float>(sum);
  }
  return 0;
}
