// The convolution path of the Swin ACmix layer as one CPU kernel pair, for MindSpore's CPU backend
// through ops.Custom(func_type='aot'); built and loaded by src/layers/cpu/kernels.py.
//
// The path (official WindowAttention_acmix): f = fc(qkv), a 1x1 map from the 3*nh q/k/v heads to
// k*k channels for every head-dim index d, then dep_conv, a k x k convolution with hd groups (group
// d reads f channels d*k2 + j, j < k*k, and writes outputs d*nh + m, m < nh), zero padding k / 2.
//
// Why a kernel: MindSpore's CPU ops run this path far below the CPU's speed. oneDNN runs a grouped
// convolution with 9 input and 3-24 output channels per group far below the CPU's speed (its
// forward copies k*k*9 values per pixel before a tiny matmul; its backward kernels are slower
// still), and the fc needs the token-major qkv transposed to channel planes.
//
// How: the hd groups are independent and alike, so the eight lanes of a vector hold eight
// consecutive groups d (a "d-block"; hd must be a multiple of 8) and every loop runs the same
// arithmetic for all eight at once. qkv keeps its token-major layout: for pixel p and head channel
// i the eight values qkv[p][i*hd + d] of a d-block are contiguous, so the fc reads them with one
// load and writes dqkv with one store, with no transposes. f lives in a ring of k padded rows,
// [column][d-block][j][lane], computed one row ahead of the convolution (and recomputed by the
// backward pass rather than kept); the per-group weights are rearranged once per call so that
// each tap's weights of a d-block are one vector. The inner loops are register tiles of FMAs:
// a few pixels by a few outputs (or, for the weight gradients, a few f channels by a few heads),
// each load shared by a row or column of the tile. Only y and dy, whose channel d*nh + m puts the
// heads of one group next to each other, are regrouped per pixel, C scalar moves against the
// 108*C multiply-adds of a pixel.
//
// Entry points (MindSpore aot signature; params are the inputs, then the outputs; float32):
//   FcConvForward(qkv (B, H, W, 3C), fc_w (k2, 3nh), fc_b (k2), dep_w (C, k2, k, k)) -> y (B, H, W, C)
//     qkv channel i*hd + d (i < 3nh, d < hd = C / nh), as nn.Dense writes it; y token-major too.
//   FcConvBackward(qkv, fc_w, fc_b, dep_w, dy (B, H, W, C)) -> dqkv (qkv's shape), dfc_w, dfc_b, ddep_w
//     Weight gradients are summed in float within a row of an image, the rows in double.
// qkv (and so dqkv) may also come window-partitioned, (B, H / ws, W / ws, ws * ws, 3C) (Swin's
// window_partition order, viewed with five axes); y and dy are the whole map (B, H, W, C) either way.
// Only qkv's token addresses differ, so the results are the same values: the Swin layer feeds the qkv
// of its windows, which its attention uses too, and never partitions the 3C-wide map.
// A call with hd not a multiple of 8, k not one of 1, 3, 5, 7 or operands whose shapes do not fit together
// returns 1 (kernels.py never makes one).
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common.h"

using namespace acmix;

namespace {

constexpr int64_t kMaxTile = 12;  // pixels of the widest register tile: the rows' zero margin

// The sizes of a call, from qkv (B, H, W, 3C) or (B, H / ws, W / ws, ws * ws, 3C), fc_w (k2, 3nh)
// and dep_w (C, k2, K, K).
struct Dims {
  int64_t B, H, W, C3, C, I, hd, nh, k2, K, P, DB, ws, Wn;  // DB: d-blocks; Wn: windows per row
  int64_t cols;  // columns of a padded row: P + W + P, then the zero margin of the widest tile
  bool ok = true;
  Dims(const int *ndims, int64_t **shapes) {
    // the operands' ranks: qkv, fc_w (k2, 3nh), fc_b (k2), dep_w (C, k2, K, K), y or dy (B, H, W, C)
    ok = (ndims[0] == 4 || ndims[0] == 5) && ndims[1] == 2 && ndims[2] == 1 && ndims[3] == 4 && ndims[4] == 4;
    if (!ok) return;
    B = shapes[0][0];
    if (ndims[0] == 5) {
      const int64_t n = shapes[0][3];
      ws = 1;
      while (ws * ws < n) ++ws;
      ok = ws * ws == n;
      H = shapes[0][1] * ws; W = shapes[0][2] * ws; C3 = shapes[0][4];
    } else {
      ws = 1; H = shapes[0][1]; W = shapes[0][2]; C3 = shapes[0][3];
    }
    Wn = W / ws;
    k2 = shapes[1][0]; I = shapes[1][1]; C = shapes[3][0]; K = shapes[3][2];
    ok = ok && I > 0 && C3 == 3 * C && C3 % I == 0;
    hd = ok ? C3 / I : 1; nh = C / hd; P = K / 2; DB = hd / 8;
    cols = W + 2 * P + kMaxTile;
    ok = ok && hd % 8 == 0 && I == 3 * nh && k2 == K * K && (K == 1 || K == 3 || K == 5 || K == 7);
    ok = ok && shapes[2][0] == k2 && shapes[3][1] == k2 && shapes[3][3] == K;
    ok = ok && shapes[4][0] == B && shapes[4][1] == H && shapes[4][2] == W && shapes[4][3] == C;
  }
  // index of pixel (r, c) among its image's H * W qkv tokens (r * W + c when not partitioned)
  int64_t token(int64_t r, int64_t c) const {
    return ((r / ws) * Wn + c / ws) * ws * ws + (r % ws) * ws + c % ws;
  }
  int64_t f_row_floats() const { return cols * DB * k2 * 8; }
  int64_t dy_row_floats() const { return cols * C; }
};

// Tile sizes: HB heads by 12 / HB pixels in the convolution, HB a divisor of nh.
template <int HB>
constexpr int pixels_per_tile() { return static_cast<int>(kMaxTile) / HB; }
// f channels per tile of the data and weight gradients: a divisor of k2 = K * K
template <int K>
constexpr int f_channels_per_tile() { return K; }

// f of image row r into `row` ([column][d-block][j][lane]; column c + P holds pixel c), zero outside
// the image: f[j][d] = fc_b[j] + sum over i of fc_w[j, i] * qkv[i*hd + d].
template <int K2>
void f_row(const Dims &s, const float *qkv_b, const float *fc_w, const float *fc_b, int64_t r, float *row) {
  const int64_t pix = s.DB * K2 * 8;
  if (r < 0 || r >= s.H) {
    std::fill(row, row + s.cols * pix, 0.f);
    return;
  }
  std::fill(row, row + s.P * pix, 0.f);
  std::fill(row + (s.W + s.P) * pix, row + s.cols * pix, 0.f);
  for (int64_t c = 0; c < s.W; ++c) {
    const float *q = qkv_b + s.token(r, c) * s.C3;
    float *dst = row + (c + s.P) * pix;
    for (int64_t db = 0; db < s.DB; ++db) {
      v8 acc[K2];
      for (int j = 0; j < K2; ++j) acc[j] = splat(fc_b[j]);
      for (int64_t i = 0; i < s.I; ++i) {
        const v8 qv = load8(q + i * s.hd + db * 8);
        for (int j = 0; j < K2; ++j) acc[j] += fc_w[j * s.I + i] * qv;
      }
      for (int j = 0; j < K2; ++j) store8(dst + (db * K2 + j) * 8, acc[j]);
    }
  }
}

// Output row r of one image from the f rows r - P .. r + P (rows[ky]):
// y[r][c][(db*8 + l)*nh + m] = sum over taps t = (ky, kx) and j of wv[db][t][j][m][l] * f[..][c + kx - P][db][j][l].
template <int K, int HB>
void conv_row(const Dims &s, float *const *rows, const float *wv, float *y_row) {
  constexpr int K2 = K * K, PB = pixels_per_tile<HB>();
  const int64_t pix = s.DB * K2 * 8;
  for (int64_t c0 = 0; c0 < s.W; c0 += PB) {
    const int64_t np = std::min<int64_t>(PB, s.W - c0);  // pixels past the row read the zero margin
    for (int64_t db = 0; db < s.DB; ++db)
      for (int64_t m0 = 0; m0 < s.nh; m0 += HB) {
        v8 acc[PB][HB] = {};
        for (int ky = 0; ky < K; ++ky) {
          const float *f = rows[ky] + db * K2 * 8;
          for (int kx = 0; kx < K; ++kx) {
            const float *w = wv + ((db * K2 + ky * K + kx) * K2 * s.nh + m0) * 8;
            for (int j = 0; j < K2; ++j) {
              v8 wm[HB];
              for (int mm = 0; mm < HB; ++mm) wm[mm] = load8(w + (j * s.nh + mm) * 8);
              for (int pp = 0; pp < PB; ++pp) {
                const v8 fv = load8(f + (c0 + pp + kx) * pix + j * 8);
                for (int mm = 0; mm < HB; ++mm) acc[pp][mm] += wm[mm] * fv;
              }
            }
          }
        }
        for (int64_t pp = 0; pp < np; ++pp) {
          float *yp = y_row + (c0 + pp) * s.C + db * 8 * s.nh + m0;
          for (int mm = 0; mm < HB; ++mm)
            for (int l = 0; l < 8; ++l) yp[l * s.nh + mm] = acc[pp][mm][l];
        }
      }
  }
}

template <int K, int HB>
void forward_image(const Dims &s, const float *qkv_b, const float *fc_w, const float *fc_b, const float *wv,
                   float *ring, float *y_b) {
  auto slot = [&](int64_t ri) { return ring + ((ri + s.P) % K) * s.f_row_floats(); };
  for (int64_t ri = -s.P; ri < s.P; ++ri) f_row<K * K>(s, qkv_b, fc_w, fc_b, ri, slot(ri));
  float *rows[K];
  for (int64_t r = 0; r < s.H; ++r) {
    f_row<K * K>(s, qkv_b, fc_w, fc_b, r + s.P, slot(r + s.P));
    for (int ky = 0; ky < K; ++ky) rows[ky] = slot(r - s.P + ky);
    conv_row<K, HB>(s, rows, wv, y_b + r * s.W * s.C);
  }
}

// dy of image row r into `row` ([column][d-block][m][lane], padded and zero outside as f_row)
void dy_row(const Dims &s, const float *dy_b, int64_t r, float *row) {
  if (r < 0 || r >= s.H) {
    std::fill(row, row + s.cols * s.C, 0.f);
    return;
  }
  std::fill(row, row + s.P * s.C, 0.f);
  std::fill(row + (s.W + s.P) * s.C, row + s.cols * s.C, 0.f);
  for (int64_t c = 0; c < s.W; ++c) {
    const float *src = dy_b + (r * s.W + c) * s.C;
    float *dst = row + (c + s.P) * s.C;
    for (int64_t db = 0; db < s.DB; ++db)
      for (int64_t m = 0; m < s.nh; ++m)
        for (int l = 0; l < 8; ++l) dst[(db * s.nh + m) * 8 + l] = src[(db * 8 + l) * s.nh + m];
  }
}

// The dep_w gradient of output row r, added to acc[db][t][j][m] (over lanes):
// sum over c of dy[r][c][db][m] * f[r + ky - P][c + kx - P][db][j].
template <int K, int HB>
void dep_w_grad_row(const Dims &s, float *const *f_rows, const float *dy, v8 *acc) {
  constexpr int K2 = K * K, JB = f_channels_per_tile<K>();
  const int64_t fpix = s.DB * K2 * 8;
  for (int64_t db = 0; db < s.DB; ++db)
    for (int ky = 0; ky < K; ++ky)
      for (int kx = 0; kx < K; ++kx)
        for (int j0 = 0; j0 < K2; j0 += JB)
          for (int64_t m0 = 0; m0 < s.nh; m0 += HB) {
            v8 a[JB][HB] = {};
            const float *f = f_rows[ky] + (db * K2 + j0) * 8;
            const float *g = dy + (db * s.nh + m0) * 8;
            for (int64_t c = 0; c < s.W; ++c) {
              v8 fv[JB], gv[HB];
              for (int jj = 0; jj < JB; ++jj) fv[jj] = load8(f + (c + kx) * fpix + jj * 8);
              for (int mm = 0; mm < HB; ++mm) gv[mm] = load8(g + (c + s.P) * s.C + mm * 8);
              for (int jj = 0; jj < JB; ++jj)
                for (int mm = 0; mm < HB; ++mm) a[jj][mm] += fv[jj] * gv[mm];
            }
            v8 *out = acc + ((db * K2 + ky * K + kx) * K2 + j0) * s.nh + m0;
            for (int jj = 0; jj < JB; ++jj)
              for (int mm = 0; mm < HB; ++mm) out[jj * s.nh + mm] += a[jj][mm];
          }
}

// The f gradient of image row r ([c][db][j][lane]) from the dy rows r - P .. r + P (dy_rows[ky]):
// df[c][db][j] = sum over t = (ky, kx) and m of wt[db][t][m][j] * dy[r + P - ky][c + P - kx][db][m].
template <int K>
void f_grad_row(const Dims &s, float *const *dy_rows, const float *wt, float *df) {
  constexpr int K2 = K * K, JB = f_channels_per_tile<K>(), PB = static_cast<int>(kMaxTile) / JB;
  for (int64_t c0 = 0; c0 < s.W; c0 += PB)
    for (int64_t db = 0; db < s.DB; ++db)
      for (int j0 = 0; j0 < K2; j0 += JB) {
        v8 a[PB][JB] = {};
        for (int ky = 0; ky < K; ++ky) {
          const float *g = dy_rows[K - 1 - ky] + db * s.nh * 8;
          for (int kx = 0; kx < K; ++kx) {
            const float *w = wt + ((db * K2 + ky * K + kx) * s.nh * K2 + j0) * 8;
            for (int64_t m = 0; m < s.nh; ++m) {
              v8 wj[JB];
              for (int jj = 0; jj < JB; ++jj) wj[jj] = load8(w + (m * K2 + jj) * 8);
              for (int pp = 0; pp < PB; ++pp) {
                const v8 gv = load8(g + (c0 + pp + 2 * s.P - kx) * s.C + m * 8);
                for (int jj = 0; jj < JB; ++jj) a[pp][jj] += wj[jj] * gv;
              }
            }
          }
        }
        // df has room for the pixels past the row end (kMaxTile columns of margin)
        for (int pp = 0; pp < PB; ++pp)
          for (int jj = 0; jj < JB; ++jj) store8(df + (((c0 + pp) * s.DB + db) * K2 + j0 + jj) * 8, a[pp][jj]);
      }
}

// dqkv of image row r: dqkv[c][i*hd + d] = sum over j of fc_w[j, i] * df[c][j][d]
template <int K2>
void qkv_grad_row(const Dims &s, const float *fc_w, const float *df, int64_t r, float *dqkv_b) {
  for (int64_t c = 0; c < s.W; ++c) {
    float *dq = dqkv_b + s.token(r, c) * s.C3;
    for (int64_t db = 0; db < s.DB; ++db) {
      v8 g[K2];
      for (int j = 0; j < K2; ++j) g[j] = load8(df + ((c * s.DB + db) * K2 + j) * 8);
      for (int64_t i = 0; i < s.I; ++i) {
        v8 o = {};
        for (int j = 0; j < K2; ++j) o += fc_w[j * s.I + i] * g[j];
        store8(dq + i * s.hd + db * 8, o);
      }
    }
  }
}

// The fc gradients of image row r, added to fw[j][i] and fb[j] (double): sums over c, d of
// df[c][j][d] * qkv[c][i*hd + d] and of df[c][j][d]. The head channels i come three at a time (I = 3nh).
template <int K>
void fc_grad_row(const Dims &s, const float *qkv_b, const float *df, int64_t r, double *fw, double *fb) {
  constexpr int K2 = K * K, JB = f_channels_per_tile<K>(), IB = 3;
  for (int j0 = 0; j0 < K2; j0 += JB)
    for (int64_t i0 = 0; i0 < s.I; i0 += IB) {
      v8 a[JB][IB] = {}, b[JB] = {};
      for (int64_t c = 0; c < s.W; ++c) {
        const float *q = qkv_b + s.token(r, c) * s.C3 + i0 * s.hd;
        for (int64_t db = 0; db < s.DB; ++db) {
          v8 gv[JB], qv[IB];
          for (int jj = 0; jj < JB; ++jj) gv[jj] = load8(df + ((c * s.DB + db) * K2 + j0 + jj) * 8);
          for (int ii = 0; ii < IB; ++ii) qv[ii] = load8(q + ii * s.hd + db * 8);
          for (int jj = 0; jj < JB; ++jj) {
            b[jj] += gv[jj];
            for (int ii = 0; ii < IB; ++ii) a[jj][ii] += gv[jj] * qv[ii];
          }
        }
      }
      for (int jj = 0; jj < JB; ++jj) {
        for (int ii = 0; ii < IB; ++ii) fw[(j0 + jj) * s.I + i0 + ii] += sum8(a[jj][ii]);
        if (i0 == 0) fb[j0 + jj] += sum8(b[jj]);
      }
    }
}

// Per-thread state of the backward pass: the rows, df of one row, the row's dep_w partial sums
// (v8) and the thread's double sums of all three weight gradients.
struct BackwardScratch {
  float *f_ring, *dy_ring, *df;
  v8 *dep_row;
  double *dep, *fw, *fb;
};

template <int K, int HB>
void backward_image(const Dims &s, const float *qkv_b, const float *fc_w, const float *fc_b, const float *wt,
                    const float *dy_b, float *dqkv_b, const BackwardScratch &w) {
  constexpr int K2 = K * K;
  auto f_slot = [&](int64_t ri) { return w.f_ring + ((ri + s.P) % K) * s.f_row_floats(); };
  auto dy_slot = [&](int64_t ri) { return w.dy_ring + ((ri + s.P) % K) * s.dy_row_floats(); };
  for (int64_t ri = -s.P; ri < s.P; ++ri) {
    f_row<K2>(s, qkv_b, fc_w, fc_b, ri, f_slot(ri));
    dy_row(s, dy_b, ri, dy_slot(ri));
  }
  const int64_t n_dep = s.C * K2 * K2;
  float *f_rows[K], *dy_rows[K];
  for (int64_t r = 0; r < s.H; ++r) {
    f_row<K2>(s, qkv_b, fc_w, fc_b, r + s.P, f_slot(r + s.P));
    dy_row(s, dy_b, r + s.P, dy_slot(r + s.P));
    for (int ky = 0; ky < K; ++ky) {
      f_rows[ky] = f_slot(r - s.P + ky);
      dy_rows[ky] = dy_slot(r - s.P + ky);
    }
    std::fill(w.dep_row, w.dep_row + n_dep / 8, v8{});
    dep_w_grad_row<K, HB>(s, f_rows, dy_rows[s.P], w.dep_row);
    const float *part = reinterpret_cast<const float *>(w.dep_row);
    for (int64_t e = 0; e < n_dep; ++e) w.dep[e] += part[e];
    f_grad_row<K>(s, dy_rows, wt, w.df);
    qkv_grad_row<K2>(s, fc_w, w.df, r, dqkv_b);
    fc_grad_row<K>(s, qkv_b, w.df, r, w.fw, w.fb);
  }
}

template <int V>
using Int = std::integral_constant<int, V>;

// Calls fn(Int<K>, Int<HB>) with the call's kernel size and head tile: HB = 3 when 3 divides nh,
// else 4, 2 or 1.
template <typename F>
void dispatch(const Dims &s, F fn) {
  auto heads = [&](auto k) {
    if (s.nh % 3 == 0) fn(k, Int<3>{});
    else if (s.nh % 4 == 0) fn(k, Int<4>{});
    else if (s.nh % 2 == 0) fn(k, Int<2>{});
    else fn(k, Int<1>{});
  };
  switch (s.K) {
    case 1: heads(Int<1>{}); break;
    case 3: heads(Int<3>{}); break;
    case 5: heads(Int<5>{}); break;
    default: heads(Int<7>{}); break;
  }
}

// dep_w rearranged per d-block and tap: heads_last[db][t][j][m][l] (forward) or j_last[db][t][m][j][l]
// (backward) = dep_w[(db*8 + l)*nh + m][j][t]
std::vector<float> arrange_weights(const Dims &s, const float *dep_w, bool heads_last) {
  const int64_t KK = s.K * s.K;
  std::vector<float> out(s.C * s.k2 * KK);
  for (int64_t db = 0; db < s.DB; ++db)
    for (int64_t t = 0; t < KK; ++t)
      for (int64_t j = 0; j < s.k2; ++j)
        for (int64_t m = 0; m < s.nh; ++m)
          for (int64_t l = 0; l < 8; ++l) {
            const int64_t inner = heads_last ? j * s.nh + m : m * s.k2 + j;
            out[((db * KK + t) * s.k2 * s.nh + inner) * 8 + l] = dep_w[(((db * 8 + l) * s.nh + m) * s.k2 + j) * KK + t];
          }
  return out;
}

}  // namespace

// FcConvForward(qkv, fc_w, fc_b, dep_w) -> y (B, H, W, C)
extern "C" int FcConvForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                             void *stream, void *extra) {
  if (nparam != 5) return 1;
  const Dims s(ndims, shapes);
  if (!s.ok) return 1;
  const float *qkv = static_cast<const float *>(params[0]);
  const float *fc_w = static_cast<const float *>(params[1]);
  const float *fc_b = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[4]);
  const std::vector<float> wv = arrange_weights(s, static_cast<const float *>(params[3]), true);
  const int64_t ring = s.K * s.f_row_floats(), nthreads = std::min(num_threads(), s.B);
  Scratch scratch(nthreads * ring);
  parallel_for(s.B, nthreads, [&](int64_t b, int64_t tid) {  // one image per job
    dispatch(s, [&](auto k, auto hb) {
      forward_image<decltype(k)::value, decltype(hb)::value>(s, qkv + b * s.H * s.W * s.C3, fc_w, fc_b, wv.data(), scratch.data() + tid * ring,
                           y + b * s.H * s.W * s.C);
    });
  });
  return 0;
}

// FcConvBackward(qkv, fc_w, fc_b, dep_w, dy (B, H, W, C)) -> dqkv, dfc_w, dfc_b, ddep_w
extern "C" int FcConvBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                              void *stream, void *extra) {
  if (nparam != 9) return 1;
  const Dims s(ndims, shapes);
  if (!s.ok) return 1;
  const float *qkv = static_cast<const float *>(params[0]);
  const float *fc_w = static_cast<const float *>(params[1]);
  const float *fc_b = static_cast<const float *>(params[2]);
  const float *dy = static_cast<const float *>(params[4]);
  float *dqkv = static_cast<float *>(params[5]);
  float *dfc_w = static_cast<float *>(params[6]);
  float *dfc_b = static_cast<float *>(params[7]);
  float *ddep_w = static_cast<float *>(params[8]);
  const std::vector<float> wt = arrange_weights(s, static_cast<const float *>(params[3]), false);
  const int64_t KK = s.K * s.K, n_dep = s.C * s.k2 * KK, n_fw = s.k2 * s.I;
  const int64_t floats = s.K * (s.f_row_floats() + s.dy_row_floats()) + s.cols * s.DB * s.k2 * 8 + n_dep;
  const int64_t nthreads = std::min(num_threads(), s.B);
  Scratch scratch(nthreads * floats);
  const int64_t n_sums = n_dep + n_fw + s.k2;
  std::vector<double> sums(nthreads * n_sums, 0.0);  // per thread: dep_w, then fc_w, then fc_b
  parallel_for(s.B, nthreads, [&](int64_t b, int64_t tid) {  // one image per job
    float *base = scratch.data() + tid * floats;
    double *own = sums.data() + tid * n_sums;
    BackwardScratch w;
    w.f_ring = base;
    w.dy_ring = w.f_ring + s.K * s.f_row_floats();
    w.df = w.dy_ring + s.K * s.dy_row_floats();
    w.dep_row = reinterpret_cast<v8 *>(w.df + s.cols * s.DB * s.k2 * 8);
    w.dep = own;
    w.fw = own + n_dep;
    w.fb = w.fw + n_fw;
    dispatch(s, [&](auto k, auto hb) {
      backward_image<decltype(k)::value, decltype(hb)::value>(s, qkv + b * s.H * s.W * s.C3, fc_w, fc_b, wt.data(), dy + b * s.H * s.W * s.C,
                            dqkv + b * s.H * s.W * s.C3, w);
    });
  });
  auto total = [&](int64_t e) {
    double sum = 0.0;
    for (int64_t t = 0; t < nthreads; ++t) sum += sums[t * n_sums + e];
    return static_cast<float>(sum);
  };
  // ddep_w[(db*8 + l)*nh + m][j][t] from the sums' [db][t][j][m][l]
  for (int64_t db = 0; db < s.DB; ++db)
    for (int64_t t = 0; t < KK; ++t)
      for (int64_t j = 0; j < s.k2; ++j)
        for (int64_t m = 0; m < s.nh; ++m)
          for (int64_t l = 0; l < 8; ++l)
            ddep_w[(((db * 8 + l) * s.nh + m) * s.k2 + j) * KK + t] = total((((db * KK + t) * s.k2 + j) * s.nh + m) * 8 + l);
  for (int64_t e = 0; e < n_fw; ++e) dfc_w[e] = total(n_dep + e);
  for (int64_t j = 0; j < s.k2; ++j) dfc_b[j] = total(n_dep + n_fw + j);
  return 0;
}
