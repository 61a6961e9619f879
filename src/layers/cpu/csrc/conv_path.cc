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
// Here each image's f is built straight from the token-major qkv into zero-padded planes with row
// pitch Wp = W + 2p. On that grid output (r, c) reads input (r + ky, c + kx) at flat offset
// (r * Wp + c) + ky * Wp + kx, so every tap is one contiguous run over the flat output range
// [0, H * Wp) and the inner loops are plain vector FMAs; the 2p garbage columns per row are dropped
// when results are copied out. The backward pass recomputes f rather than keeping it.
//
// Entry points (MindSpore aot signature; params are the inputs, then the outputs; float32):
//   FcConvForward(qkv (B, H, W, 3C), fc_w (k2, 3nh), fc_b (k2), dep_w (C, k2, k, k)) -> y (B, H, W, C)
//     qkv channel i*hd + d (i < 3nh, d < hd = C / nh), as nn.Dense writes it; y token-major too.
//   FcConvBackward(qkv, fc_w, fc_b, dep_w, dy (B, H, W, C)) -> dqkv (qkv's shape), dfc_w, dfc_b, ddep_w
//     Weight gradients are summed in double.
// qkv (and so dqkv) may also come window-partitioned, (B, H / ws, W / ws, ws * ws, 3C) (Swin's
// window_partition order, viewed with five axes); y and dy are the whole map (B, H, W, C) either way.
// Only qkv's token addresses differ, so the results are the same values: the Swin layer feeds the qkv
// of its windows, which its attention uses too, and never partitions the 3C-wide map.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

using namespace acmix;

namespace {

constexpr int64_t kBlock = 16;  // output pixels per register block (two v8)
constexpr int64_t kMaxTaps = 49;  // k * k for kernels up to 7 x 7 (cpu_kernels.MAX_KERNEL_SIZE)

// Geometry of the padded planes.
struct Grid {
  int64_t H, W, K, P, Wp, len, plane;  // len: flat output range rounded up to kBlock
  Grid(int64_t h, int64_t w, int64_t k) : H(h), W(w), K(k), P(k / 2), Wp(w + 2 * (k / 2)) {
    len = (H * Wp + kBlock - 1) / kBlock * kBlock;
    // rows enough for the last block's farthest tap, (K - 1) * Wp + K - 1 past its start
    const int64_t need = len + (K - 1) * Wp + K - 1;
    plane = (need + Wp - 1) / Wp * Wp;
  }
  // Zeroes everything of the `planes` padded planes at `dst` but the image interior.
  void zero_border(int64_t planes, float *dst) const {
    for (int64_t i = 0; i < planes; ++i) {
      float *p = dst + i * plane;
      std::fill(p, p + P * Wp + P, 0.f);
      for (int64_t r = 0; r < H; ++r)  // right pad of row r and left pad of row r + 1
        std::fill(p + (r + P) * Wp + P + W, p + (r + P + 1) * Wp + P, 0.f);
      std::fill(p + (H + P) * Wp, p + plane, 0.f);
    }
  }
  std::vector<int64_t> tap_offsets() const {
    std::vector<int64_t> off(K * K);
    for (int64_t t = 0; t < K * K; ++t) off[t] = (t / K) * Wp + t % K;
    return off;
  }
};

// NM output channels of one group over one block of kBlock flat pixels:
// out[m] = sum over input channel i and tap t of w[m, i, t] * xp_i[p + off_t].
template <int NM>
inline void conv_block(const float *xp, int64_t plane, const float *w, int64_t w_stride, const int64_t *off,
                       int64_t ipg, int64_t k2, float *out, int64_t out_stride) {
  v8 acc[NM][2] = {};
  for (int64_t i = 0; i < ipg; ++i) {
    const float *xi = xp + i * plane;
    const float *wi = w + i * k2;
    for (int64_t t = 0; t < k2; ++t) {
      const v8 a = *reinterpret_cast<const v8 *>(xi + off[t]);
      const v8 b = *reinterpret_cast<const v8 *>(xi + off[t] + 8);
      for (int m = 0; m < NM; ++m) {
        const float wv = wi[m * w_stride + t];
        acc[m][0] += wv * a;
        acc[m][1] += wv * b;
      }
    }
  }
  for (int m = 0; m < NM; ++m) {
    *reinterpret_cast<v8 *>(out + m * out_stride) = acc[m][0];
    *reinterpret_cast<v8 *>(out + m * out_stride + 8) = acc[m][1];
  }
}

// The shapes of a call, from qkv (B, H, W, 3C) or (B, H / ws, W / ws, ws * ws, 3C), fc_w (k2, 3nh)
// and dep_w (C, k2, K, K); ok is false for a window axis that is not a square.
struct Dims {
  int64_t B, H, W, C3, C, I, hd, nh, k2, K, ws, Wn;  // Wn: windows per row
  bool ok = true;
  Dims(const int *ndims, int64_t **shapes) {
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
    hd = C3 / I; nh = C / hd;
  }
  // index of pixel (r, c) among its image's H * W qkv tokens (r * W + c when not partitioned)
  int64_t qkv_token(int64_t r, int64_t c) const {
    return ((r / ws) * Wn + c / ws) * ws * ws + (r % ws) * ws + c % ws;
  }
};

// The qkv rows of the `nv` (<= 8) pixels (r, c0 + v) of one image's map q, transposed into the
// channel-major block qt (8 floats per channel, in L1); lanes past nv are zero.
void load_pixel_block(const Dims &s, const float *q, int64_t r, int64_t c0, int64_t nv, float *qt) {
  for (int64_t v = 0; v < nv; ++v) {
    const float *row = q + s.qkv_token(r, c0 + v) * s.C3;
    for (int64_t ch = 0; ch < s.C3; ++ch) qt[ch * 8 + v] = row[ch];
  }
  for (int64_t v = nv; v < 8; ++v)
    for (int64_t ch = 0; ch < s.C3; ++ch) qt[ch * 8 + v] = 0.f;
}

// Padded f planes of one image, fpad (hd*k2 planes of grid.plane floats):
// f[d*k2 + j] = fc_b[j] + sum_i fc_w[j, i] * qkv[i*hd + d] inside the image, zero outside (the
// official convolution zero-pads f, bias included).
void build_f(const Dims &s, const Grid &grid, const float *qkv_b, const float *fc_w, const float *fc_b, float *fpad) {
  grid.zero_border(s.hd * s.k2, fpad);
  // Eight pixels of a row at a time: their qkv rows transposed into qt (channel-major, 8 floats per
  // channel, in L1), then every f value is one v8 over the eight pixels and lands in its plane as
  // one contiguous store; a short last block goes through `last` so the pad stays zero.
  std::vector<float> qt(s.C3 * 8);
  v8 last;
  for (int64_t r = 0; r < s.H; ++r)
    for (int64_t c0 = 0; c0 < s.W; c0 += 8) {
      const int64_t nv = std::min<int64_t>(8, s.W - c0);
      load_pixel_block(s, qkv_b, r, c0, nv, qt.data());
      const int64_t pos = (r + grid.P) * grid.Wp + c0 + grid.P;
      for (int64_t j = 0; j < s.k2; ++j) {
        const float *wj = fc_w + j * s.I;
        for (int64_t d = 0; d < s.hd; ++d) {
          v8 acc = v8{} + fc_b[j];
          for (int64_t i = 0; i < s.I; ++i) acc += wj[i] * *reinterpret_cast<const v8 *>(&qt[(i * s.hd + d) * 8]);
          float *dst = fpad + (d * s.k2 + j) * grid.plane + pos;
          if (nv == 8) {
            *reinterpret_cast<v8 *>(dst) = acc;
          } else {
            last = acc;
            std::memcpy(dst, &last, nv * sizeof(float));
          }
        }
      }
    }
}

// One group's convolution: out (opg planes of grid.len floats) from `ipg` padded input planes
void conv_group(const float *xp, int64_t plane, const float *w, int64_t ipg, int64_t opg, int64_t k2,
                const int64_t *off, const Grid &grid, float *out) {
  const int nm = opg % 4 == 0 ? 4 : opg % 3 == 0 ? 3 : opg % 2 == 0 ? 2 : 1;
  for (int64_t m0 = 0; m0 < opg; m0 += nm)
    for (int64_t p0 = 0; p0 < grid.len; p0 += kBlock) {
      const float *wm = w + m0 * ipg * k2;
      float *o = out + m0 * grid.len + p0;
      const int64_t ws = ipg * k2;
      switch (nm) {
        case 4: conv_block<4>(xp + p0, plane, wm, ws, off, ipg, k2, o, grid.len); break;
        case 3: conv_block<3>(xp + p0, plane, wm, ws, off, ipg, k2, o, grid.len); break;
        case 2: conv_block<2>(xp + p0, plane, wm, ws, off, ipg, k2, o, grid.len); break;
        default: conv_block<1>(xp + p0, plane, wm, ws, off, ipg, k2, o, grid.len);
      }
    }
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
  const float *dep_w = static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  const Grid grid(s.H, s.W, s.K);
  const int64_t img = s.hd * s.k2 * grid.plane, nthreads = std::min(num_threads(), s.B);
  const std::vector<int64_t> off = grid.tap_offsets();
  Scratch scratch(nthreads * (img + s.nh * grid.len));
  parallel_for(s.B, [&](int64_t b, int64_t tid) {  // one image per job, f still in cache for the convolution
    float *fpad = scratch.data() + tid * (img + s.nh * grid.len), *yp = fpad + img;
    build_f(s, grid, qkv + b * s.H * s.W * s.C3, fc_w, fc_b, fpad);
    for (int64_t d = 0; d < s.hd; ++d) {
      conv_group(fpad + d * s.k2 * grid.plane, grid.plane, dep_w + d * s.nh * s.k2 * s.K * s.K, s.k2, s.nh,
                 s.K * s.K, off.data(), grid, yp);
      float *yb = y + b * s.H * s.W * s.C + d * s.nh;
      for (int64_t r = 0; r < s.H; ++r)
        for (int64_t c = 0; c < s.W; ++c)
          for (int64_t m = 0; m < s.nh; ++m) yb[(r * s.W + c) * s.C + m] = yp[m * grid.len + r * grid.Wp + c];
    }
  });
  return 0;
}

// FcConvBackward(qkv, fc_w, fc_b, dep_w, dy (B, H, W, C)) -> dqkv, dfc_w, dfc_b, ddep_w
extern "C" int FcConvBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                              void *stream, void *extra) {
  if (nparam != 9 || shapes[1][0] > kMaxTaps) return 1;  // cpu_kernels.MAX_KERNEL_SIZE keeps k2 in bound
  const Dims s(ndims, shapes);
  if (!s.ok) return 1;
  const float *qkv = static_cast<const float *>(params[0]);
  const float *fc_w = static_cast<const float *>(params[1]);
  const float *fc_b = static_cast<const float *>(params[2]);
  const float *dep_w = static_cast<const float *>(params[3]);
  const float *dy = static_cast<const float *>(params[4]);
  float *dqkv = static_cast<float *>(params[5]);
  float *dfc_w = static_cast<float *>(params[6]);
  float *dfc_b = static_cast<float *>(params[7]);
  float *ddep_w = static_cast<float *>(params[8]);
  const Grid grid(s.H, s.W, s.K);
  const int64_t KK = s.K * s.K, HW = s.H * s.W;
  const int64_t fimg = s.hd * s.k2 * grid.plane, dimg = s.C * grid.plane, gimg = s.hd * s.k2 * grid.len;
  // the data gradient of a group is the convolution of its dy planes with the transposed, mirrored
  // weight: wt[d][j][m][t] = dep_w[d*nh + m][j][KK - 1 - t]
  std::vector<float> wt(s.C * s.k2 * KK);
  for (int64_t d = 0; d < s.hd; ++d)
    for (int64_t j = 0; j < s.k2; ++j)
      for (int64_t m = 0; m < s.nh; ++m)
        for (int64_t t = 0; t < KK; ++t)
          wt[((d * s.k2 + j) * s.nh + m) * KK + t] = dep_w[((d * s.nh + m) * s.k2 + j) * KK + KK - 1 - t];
  const std::vector<int64_t> off = grid.tap_offsets();
  const int64_t nthreads = std::min(num_threads(), s.B);
  const int64_t nfc = s.k2 * s.I + s.k2;
  std::vector<double> acc_dep(nthreads * s.C * s.k2 * KK, 0.0);
  std::vector<float> fc_acc(nthreads * nfc * 8, 0.f), fc_scratch(nthreads * 2 * s.C3 * 8);
  const int64_t shift = grid.P * grid.Wp + grid.P;  // padded plane -> output grid
  // One image per job, all of its steps in a row while its planes are still in cache.
  Scratch scratch(nthreads * (fimg + dimg + gimg));
  parallel_for(s.B, [&](int64_t b, int64_t tid) {
    float *fpad = scratch.data() + tid * (fimg + dimg + gimg), *dypad = fpad + fimg, *df = dypad + dimg;
    build_f(s, grid, qkv + b * HW * s.C3, fc_w, fc_b, fpad);
    grid.zero_border(s.C, dypad);
    const float *dyb = dy + b * HW * s.C;
    for (int64_t r = 0; r < s.H; ++r)
      for (int64_t c = 0; c < s.W; ++c) {
        const float *src = dyb + (r * s.W + c) * s.C;
        const int64_t pos = (r + grid.P) * grid.Wp + c + grid.P;
        for (int64_t o = 0; o < s.C; ++o) dypad[o * grid.plane + pos] = src[o];
      }
    // per group: df = conv(dy, wt) on the output grid, and ddep_w += dy (x) shifted f
    for (int64_t d = 0; d < s.hd; ++d) {
      const float *dyg = dypad + d * s.nh * grid.plane;  // this group's nh planes
      conv_group(dyg, grid.plane, wt.data() + d * s.k2 * s.nh * KK, s.nh, s.k2, KK, off.data(), grid,
                 df + d * s.k2 * grid.len);
      const float *fg = fpad + d * s.k2 * grid.plane;
      double *acc = acc_dep.data() + (tid * s.C + d * s.nh) * s.k2 * KK;
      for (int64_t m = 0; m < s.nh; ++m)
        for (int64_t j = 0; j < s.k2; ++j) {
          const float *g = dyg + m * grid.plane + shift;  // dy on the output grid, zero in garbage columns
          const float *xj = fg + j * grid.plane;
          for (int64_t t0 = 0; t0 < KK; t0 += 9) {
            const int64_t nt = std::min<int64_t>(9, KK - t0);
            v8 part[9][2] = {};
            for (int64_t p0 = 0; p0 < grid.len; p0 += kBlock) {
              const v8 g0 = *reinterpret_cast<const v8 *>(g + p0);
              const v8 g1 = *reinterpret_cast<const v8 *>(g + p0 + 8);
              for (int64_t tt = 0; tt < nt; ++tt) {
                const float *x = xj + off[t0 + tt] + p0;
                part[tt][0] += g0 * *reinterpret_cast<const v8 *>(x);
                part[tt][1] += g1 * *reinterpret_cast<const v8 *>(x + 8);
              }
            }
            for (int64_t tt = 0; tt < nt; ++tt) {
              double sum = 0.0;
              for (int v = 0; v < 8; ++v) sum += static_cast<double>(part[tt][0][v]) + part[tt][1][v];
              acc[(m * s.k2 + j) * KK + t0 + tt] += sum;
            }
          }
        }
    }
    // df -> dqkv (token-major), dfc_w, dfc_b, eight pixels of a row at a time: df is read as v8
    // over the pixels, qkv and dqkv go through channel-major blocks (qt, dqt) as in build_f.
    float *qt = fc_scratch.data() + tid * 2 * s.C3 * 8, *dqt = qt + s.C3 * 8;
    v8 *aw = reinterpret_cast<v8 *>(fc_acc.data()) + tid * nfc;  // dfc_w then dfc_b, one v8 each
    for (int64_t r = 0; r < s.H; ++r)
      for (int64_t c0 = 0; c0 < s.W; c0 += 8) {
        const int64_t nv = std::min<int64_t>(8, s.W - c0);
        const float *dfp = df + r * grid.Wp + c0;
        // in a short last block the lanes past the row end hold garbage df: zero qkv there keeps it
        // out of dfc_w, the mask out of dfc_b
        load_pixel_block(s, qkv + b * HW * s.C3, r, c0, nv, qt);
        v8 valid = {};
        for (int64_t v = 0; v < nv; ++v) valid[v] = 1.f;
        for (int64_t d = 0; d < s.hd; ++d) {
          v8 g[kMaxTaps];
          for (int64_t j = 0; j < s.k2; ++j) g[j] = *reinterpret_cast<const v8 *>(dfp + (d * s.k2 + j) * grid.len);
          for (int64_t j = 0; j < s.k2; ++j) aw[s.k2 * s.I + j] += g[j] * valid;
          for (int64_t i = 0; i < s.I; ++i) {
            const v8 q = *reinterpret_cast<const v8 *>(&qt[(i * s.hd + d) * 8]);
            v8 o = {};
            for (int64_t j = 0; j < s.k2; ++j) {
              o += fc_w[j * s.I + i] * g[j];
              aw[j * s.I + i] += g[j] * q;
            }
            *reinterpret_cast<v8 *>(&dqt[(i * s.hd + d) * 8]) = o;
          }
        }
        for (int64_t v = 0; v < nv; ++v) {
          float *dq = dqkv + (b * HW + s.qkv_token(r, c0 + v)) * s.C3;
          for (int64_t ch = 0; ch < s.C3; ++ch) dq[ch] = dqt[ch * 8 + v];
        }
      }
  });
  for (int64_t e = 0; e < s.C * s.k2 * KK; ++e) {
    double sum = 0.0;
    for (int64_t t = 0; t < nthreads; ++t) sum += acc_dep[t * s.C * s.k2 * KK + e];
    ddep_w[e] = static_cast<float>(sum);
  }
  for (int64_t e = 0; e < nfc; ++e) {
    double sum = 0.0;
    for (int64_t t = 0; t < nthreads; ++t)
      for (int v = 0; v < 8; ++v) sum += fc_acc[(t * nfc + e) * 8 + v];
    (e < s.k2 * s.I ? dfc_w[e] : dfc_b[e - s.k2 * s.I]) = static_cast<float>(sum);
  }
  return 0;
}
