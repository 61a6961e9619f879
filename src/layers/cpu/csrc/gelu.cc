// The exact GELU, x * Phi(x) with Phi the standard normal CDF (torch's default GELU), as one kernel
// pair for MindSpore's CPU backend (ops.Custom, built by src/layers/cpu/kernels.py): in MindSpore's
// CPU ops it is a chain of element-wise kernels (Erf, Mul, RealDiv and, for the gradient, Exp, Pow
// and more), each a pass over the data, where this is one pass each way.
//   GeluForward(x) -> y = x * Phi(x)
//   GeluBackward(x, dy) -> dx = dy * (Phi(x) + x * phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
// With z = |x| / sqrt(2): below z = 1, erf(z) = z * P(z^2) and Phi = (1 +- erf(z)) / 2; from z = 1,
// erfc(z) = exp(-z^2) * R(s), s = 4.125 / (1 + z / 2) - 1.75 (s in [-1, 1] for z in [1, 9]), and Phi is
// 1 - erfc(z) / 2 or erfc(z) / 2, so Phi of a negative x keeps its relative precision instead of
// coming out of 1 + erf(x / sqrt(2)) with cancellation. P (degree 6 in z^2) and R (degree 8) were
// fitted here by least squares on the relative error, against erf and erfc to 30 digits (mpmath);
// in float32 their relative error is below 2e-7 for erf on [0, 1] and 5e-6 for erfc on [1, 9] (the
// rounding of z^2 in exp(-z^2)), and erfc(9) < 5e-37, so z is clamped at 9.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"

using namespace acmix;

namespace {

typedef int32_t i8v __attribute__((vector_size(32), aligned(4)));

// e^x for x in [-87, 0]: x = n ln2 + r, |r| <= ln2 / 2 (ln2 in two parts, the first exact in few bits),
// e^r by its Taylor series to r^7 / 7! (truncation below 2e-8 relative), 2^n from the exponent bits.
inline v8 exp_nonpositive(v8 x) {
  x = x < -87.f ? v8{} - 87.f : x;
  const float shifter = 12582912.f;  // 1.5 * 2^23: adding it rounds x / ln2 to an integer in the low bits
  const v8 k = x * 1.44269504088896341f + shifter;
  const v8 n = k - shifter;
  const v8 r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  v8 p = v8{} + 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  // n + 127 is the low bits of k's representation minus those of the shifter (0x4b400000); a vector
  // cast reinterprets the bits
  const i8v scale_bits = (((i8v)k - 0x4b400000) + 127) << 23;
  return p * (v8)scale_bits;
}

// Phi(x) and exp(-x^2 / 2) of eight values
inline void normal_cdf(v8 x, v8 *phi, v8 *gauss) {
  const v8 ax = x < 0.f ? -x : x;
  v8 z = ax * 0.707106781186547524f;
  z = z > 9.f ? v8{} + 9.f : z;
  const v8 u = z * z;
  const v8 e = exp_nonpositive(-u);
  v8 pe = v8{} + 7.898209878476337e-05f;  // erf(z) / z on [0, 1], in u = z^2
  pe = pe * u - 0.0008024353883229196f;
  pe = pe * u + 0.00519005348905921f;
  pe = pe * u - 0.026854809373617172f;
  pe = pe * u + 0.11283612251281738f;
  pe = pe * u - 0.3761262893676758f;
  pe = pe * u + 1.128379225730896f;
  const v8 erf_small = z * pe;
  const v8 s = 4.125f / (1.f + 0.5f * z) - 1.75f;
  v8 pr = v8{} + 9.195265988637402e-07f;  // erfc(z) * exp(z^2) on [1, 9], in s
  pr = pr * s + 4.40402527601691e-06f;
  pr = pr * s - 2.3620776119059883e-05f;
  pr = pr * s - 0.0001543678663438186f;
  pr = pr * s + 0.0004767942300532013f;
  pr = pr * s + 0.008569461293518543f;
  pr = pr * s + 0.04854549840092659f;
  pr = pr * s + 0.17421843111515045f;
  pr = pr * s + 0.19594605267047882f;
  const v8 half_erfc = 0.5f * (e * pr);
  const v8 half_erf = 0.5f * erf_small;
  const v8 pos = z < 1.f ? 0.5f + half_erf : 1.f - half_erfc;  // Phi(|x|)
  const v8 neg = z < 1.f ? 0.5f - half_erf : half_erfc;        // Phi(-|x|)
  *phi = x < 0.f ? neg : pos;
  *gauss = e;
}

constexpr int64_t kElementBlock = 4096;  // elements per job of the GELU kernels

// fn(x8, dy8) -> the output's eight values, over n elements in jobs of kElementBlock; a short tail goes
// through zero-padded registers.
template <typename F>
void elementwise(int64_t n, const float *x, const float *dy, float *out, F fn) {
  parallel_for((n + kElementBlock - 1) / kElementBlock, num_threads(), [&](int64_t blk, int64_t) {
    const int64_t end = std::min(n, (blk + 1) * kElementBlock);
    int64_t i = blk * kElementBlock;
    for (; i + 8 <= end; i += 8) store8(out + i, fn(load8(x + i), dy ? load8(dy + i) : v8{}));
    if (i < end) {
      v8 xs = {}, ds = {};
      std::memcpy(&xs, x + i, (end - i) * sizeof(float));
      if (dy) std::memcpy(&ds, dy + i, (end - i) * sizeof(float));
      const v8 o = fn(xs, ds);
      std::memcpy(out + i, &o, (end - i) * sizeof(float));
    }
  });
}

int64_t num_elements(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

}  // namespace

// GeluForward(x) -> y
extern "C" int GeluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
  if (nparam != 2) return 1;
  elementwise(num_elements(ndims[0], shapes[0]), static_cast<const float *>(params[0]), nullptr,
              static_cast<float *>(params[1]), [](v8 x, v8) {
                v8 phi, gauss;
                normal_cdf(x, &phi, &gauss);
                return x * phi;
              });
  return 0;
}

// GeluBackward(x, dy) -> dx
extern "C" int GeluBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *stream, void *extra) {
  if (nparam != 3) return 1;
  elementwise(num_elements(ndims[0], shapes[0]), static_cast<const float *>(params[0]),
              static_cast<const float *>(params[1]), static_cast<float *>(params[2]), [](v8 x, v8 dy) {
                v8 phi, gauss;
                normal_cdf(x, &phi, &gauss);
                return dy * (phi + x * gauss * 0.398942280401432678f);  // 1 / sqrt(2 pi)
              });
  return 0;
}
