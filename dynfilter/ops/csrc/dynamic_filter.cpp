// Native CPU kernels of per-pixel dynamic filtering (dynfilter._native builds and loads this file).
//
// Plain C ABI on raw contiguous buffers, no torch headers, so it compiles in about a second:
//   x, grad, out:  (n, h, w) with n = B*C planes
//   kernels:       (n, taps, h, w), taps = ks*ks, tap t = i*ks + j at offset ((i-r)*dil, (j-r)*dil)
//
// Each plane is cut into blocks of rows. A block's accumulator (rows*w values) stays in cache while
// the kernel rows stream past it once, so the kernels -- the only tensor k^2 times larger
// than the input -- are read (or, for the kernel gradient, written) exactly once, front to back.
// OpenMP shares the thread pool torch already loaded (same libgomp soname). Blocks are handed out
// dynamically, so a thread the OS pauses (a busy machine) does not hold the others at the barrier.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <vector>

namespace {

struct bf16 {
  uint16_t bits;
};

// Storage type T, accumulation type Acc: bfloat16 accumulates in float and rounds once per output.
template <typename T>
struct Io {
  using Acc = T;
  static inline Acc load(T v) { return v; }
  static inline T store(Acc v) { return v; }
};

template <>
struct Io<bf16> {
  using Acc = float;
  static inline float load(bf16 v) {
    uint32_t u = uint32_t(v.bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  static inline bf16 store(float f) {  // round to nearest even, as torch does; NaN stays NaN
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40u)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return bf16{uint16_t(u >> 16)};
  }
};

// Rows per block: about 32k accumulator values (128 KiB of float), at least one row.
inline int64_t block_rows(int64_t h, int64_t w) { return std::max<int64_t>(1, std::min<int64_t>(h, 32768 / std::max<int64_t>(w, 1))); }

// out[y][i] = sum_t v[y + s*dy][i + s*dx] * K_t[y + c*s*dy][i + c*s*dx], zero outside the image,
// with s = sign and c = shift_kernels. (s, c) = (+1, 0) is the filter, (-1, 1) its adjoint in x.
template <typename T, int Sign, bool ShiftKernels>
void accumulate(const T* __restrict__ v, const T* __restrict__ k, T* __restrict__ out, int64_t n, int64_t h,
                int64_t w, int64_t ks, int64_t dil, int threads) {
  using Acc = typename Io<T>::Acc;
  const int64_t taps = ks * ks, r = (ks - 1) / 2, rows = block_rows(h, w), blocks = (h + rows - 1) / rows;
  const int64_t plane = h * w, m = r * dil;  // m: the column shift of the outer taps
#pragma omp parallel num_threads(threads)
  {
    std::vector<Acc> scratch(rows * w);
    Acc* __restrict__ acc = scratch.data();
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t p = 0; p < n; ++p) {
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t y0 = b * rows, y1 = std::min(h, y0 + rows);
        std::fill(acc, acc + (y1 - y0) * w, Acc(0));
        // Kernel row by kernel row: its k taps read one source row, while the accumulator row is in L1.
        for (int64_t ki = 0; ki < ks; ++ki) {
          const int64_t dy = Sign * (ki - r) * dil, ky = ShiftKernels ? dy : 0;
          const int64_t ya = std::max(y0, -dy), yb = std::min(y1, h - dy);
          for (int64_t y = ya; y < yb; ++y) {
            const T* __restrict__ vr = v + (p * h + y + dy) * w;
            Acc* __restrict__ a = acc + (y - y0) * w;
            const T* __restrict__ krow = k + ((p * taps + ki * ks) * h + y + ky) * w;  // tap ki*ks, row y+ky
            if (ks == 3 && 2 * m < w) {
              // The three taps in one sweep over the columns where all are inside (one accumulator
              // load and store per pixel instead of three), then the border columns.
              const T* __restrict__ k0 = krow;
              const T* __restrict__ k1 = krow + plane;
              const T* __restrict__ k2 = krow + 2 * plane;
              const int64_t s0 = -Sign * m, s2 = Sign * m;  // column shifts of taps 0 and 2 (tap 1: 0)
              const int64_t c0 = ShiftKernels ? s0 : 0, c2 = ShiftKernels ? s2 : 0;
              for (int64_t i = m; i < w - m; ++i)
                a[i] += Io<T>::load(vr[i + s0]) * Io<T>::load(k0[i + c0]) + Io<T>::load(vr[i]) * Io<T>::load(k1[i]) +
                        Io<T>::load(vr[i + s2]) * Io<T>::load(k2[i + c2]);
              for (int64_t i = 0; i < m; ++i) {  // left and right borders: only the taps that stay inside
                for (const int64_t j : {i, w - 1 - i}) {
                  Acc sum = Io<T>::load(vr[j]) * Io<T>::load(k1[j]);
                  if (j + s0 >= 0 && j + s0 < w) sum += Io<T>::load(vr[j + s0]) * Io<T>::load(k0[j + c0]);
                  if (j + s2 >= 0 && j + s2 < w) sum += Io<T>::load(vr[j + s2]) * Io<T>::load(k2[j + c2]);
                  a[j] += sum;
                }
              }
              continue;
            }
            for (int64_t kj = 0; kj < ks; ++kj) {
              const int64_t dx = Sign * (kj - r) * dil, kx = ShiftKernels ? dx : 0;
              const int64_t xa = std::max<int64_t>(0, -dx), xb = std::min(w, w - dx);
              const T* __restrict__ kr = krow + kj * plane;
              for (int64_t i = xa; i < xb; ++i) a[i] += Io<T>::load(vr[i + dx]) * Io<T>::load(kr[i + kx]);
            }
          }
        }
        T* __restrict__ o = out + (p * h + y0) * w;
        for (int64_t i = 0; i < (y1 - y0) * w; ++i) o[i] = Io<T>::store(acc[i]);
      }
    }
  }
}

// gk_t[y][i] = g[y][i] * x[y + dy][i + dx], zero where the shifted pixel is outside the image.
template <typename T>
void grad_kernels(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gk, int64_t n, int64_t h,
                  int64_t w, int64_t ks, int64_t dil, int threads) {
  const int64_t taps = ks * ks, r = (ks - 1) / 2, rows = block_rows(h, w), blocks = (h + rows - 1) / rows;
  const T zero = Io<T>::store(0);
#pragma omp parallel for collapse(2) schedule(dynamic) num_threads(threads)
  for (int64_t p = 0; p < n; ++p) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t y0 = b * rows, y1 = std::min(h, y0 + rows);
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t dy = (t / ks - r) * dil, dx = (t % ks - r) * dil;
        const int64_t xa = std::min(w, std::max<int64_t>(0, -dx)), xb = std::max(xa, std::min(w, w - dx));
        for (int64_t y = y0; y < y1; ++y) {
          T* __restrict__ o = gk + ((p * taps + t) * h + y) * w;
          if (y + dy < 0 || y + dy >= h) {
            std::fill(o, o + w, zero);
            continue;
          }
          const T* __restrict__ gr = g + (p * h + y) * w;
          const T* __restrict__ xr = x + (p * h + y + dy) * w;
          std::fill(o, o + xa, zero);
          for (int64_t i = xa; i < xb; ++i) o[i] = Io<T>::store(Io<T>::load(gr[i]) * Io<T>::load(xr[i + dx]));
          std::fill(o + xb, o + w, zero);
        }
      }
    }
  }
}


// ---------------------------------------------------------------------------------------------------------
// Fused kernel generation and filtering (DConv, MDCB): kernels = w · guide + bias (a 1x1 conv), then the
// dynamic filter, one image row at a time, so the (B, C*taps, H, W) kernel map is never held. Shapes:
//   x: (B, C, H, W)   guide: (B, G, H, W)   w: (C*taps, G)   bias: (C*taps) or null
//   outs / grads: D pointers to (B, C, H, W) tensors, one per dilation (MDCB's branches share the kernels).
// A row's kernels for one channel (taps x W values) are made and used while they are in L1; the guide row
// (G x W) stays in cache across the channels. The weights are copied once, transposed to (C, G, taps) in the
// accumulation type, so the row generator reads them front to back.

// One 256-bit vector of the accumulation type (GCC/Clang vector extensions: AVX2 registers on x86-64, pairs of
// NEON registers on ARM, scalar code elsewhere).
template <typename Acc>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  static constexpr int64_t n = 8;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  static constexpr int64_t n = 4;
};

// Guide rows [ya, yb) of one image, packed for generate_row: per row, per vector of pixels, the G channels' values
// side by side (a vector each), the last vector zero-padded. Unpacked, the G values a vector of pixels needs lie a
// plane apart, a multiple of 4 KiB for most image sizes, so they would compete for the same few L1 sets.
template <typename T>
void pack_rows(const T* guide, int64_t plane, int64_t g, int64_t w, int64_t ya, int64_t yb, std::vector<typename Io<T>::Acc>& packed) {
  using Acc = typename Io<T>::Acc;
  constexpr int64_t n = Vec<Acc>::n;
  const int64_t blocks = (w + n - 1) / n, pitch = blocks * g * n;
  packed.assign((yb - ya) * pitch, Acc(0));
  for (int64_t y = ya; y < yb; ++y) {
    Acc* row = packed.data() + (y - ya) * pitch;
    for (int64_t j = 0; j < g; ++j) {
      const T* src = guide + j * plane + y * w;
      for (int64_t i = 0; i < w; ++i) row[((i / n) * g + j) * n + i % n] = Io<T>::load(src[i]);
    }
  }
}

inline int64_t packed_pitch(int64_t g, int64_t w, int64_t n) { return (w + n - 1) / n * g * n; }

// krow[t][i] = bias[t] + sum_j wt[j][t] * guide[j][i] for TAPS taps, i in [0, W), from one packed guide row.
// The TAPS accumulators of one vector of pixels stay in registers over the G guide channels: per channel one
// load and TAPS multiply-adds with broadcast weights.
template <typename Acc, int TAPS>
inline void generate_row(const Acc* __restrict__ packed, int64_t g, const Acc* __restrict__ wt, int64_t wstride,
                         const Acc* __restrict__ bias, Acc* __restrict__ krow, int64_t kstride, int64_t w) {
  using V = typename Vec<Acc>::type;
  constexpr int64_t n = Vec<Acc>::n;
  for (int64_t i = 0; i < w; i += n) {
    V acc[TAPS];
    for (int t = 0; t < TAPS; ++t) acc[t] = V{} + (bias ? bias[t] : Acc(0));
    const Acc* __restrict__ sp = packed + (i / n) * g * n;
    const Acc* __restrict__ wj = wt;
    for (int64_t j = 0; j < g; ++j, sp += n, wj += wstride) {
      V sv;
      std::memcpy(&sv, sp, sizeof sv);
      for (int t = 0; t < TAPS; ++t) acc[t] += wj[t] * sv;
    }
    const int64_t lanes = std::min(n, w - i);
    for (int t = 0; t < TAPS; ++t) std::memcpy(krow + t * kstride + i, &acc[t], lanes * sizeof(Acc));
  }
}

// All taps of one channel's kernel rows, nine at a time (each chunk's accumulators fit in registers); tap t
// goes to krow + t * kstride.
template <typename Acc>
void generate(const Acc* packed, int64_t g, const Acc* wt, int64_t taps, const Acc* bias, Acc* krow, int64_t kstride, int64_t w) {
  for (int64_t t0 = 0; t0 < taps; t0 += 9) {
    const Acc* wc = wt + t0;
    const Acc* bc = bias ? bias + t0 : nullptr;
    Acc* kc = krow + t0 * kstride;
    switch (std::min<int64_t>(9, taps - t0)) {
#define DYNFILTER_GEN(m) \
  case m:                \
    generate_row<Acc, m>(packed, g, wc, taps, bc, kc, kstride, w); \
    break;
      DYNFILTER_GEN(1) DYNFILTER_GEN(2) DYNFILTER_GEN(3) DYNFILTER_GEN(4) DYNFILTER_GEN(5)
      DYNFILTER_GEN(6) DYNFILTER_GEN(7) DYNFILTER_GEN(8) DYNFILTER_GEN(9)
#undef DYNFILTER_GEN
    }
  }
}

// (C*taps, G) weights and bias -> (C, G, taps) and (C, taps) in the accumulation type.
template <typename T>
void transpose_weights(const T* w, const T* bias, int64_t c, int64_t g, int64_t taps, std::vector<typename Io<T>::Acc>& wt,
                       std::vector<typename Io<T>::Acc>& bt) {
  wt.resize(c * g * taps);
  for (int64_t ch = 0; ch < c; ++ch)
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t j = 0; j < g; ++j) wt[(ch * g + j) * taps + t] = Io<T>::load(w[(ch * taps + t) * g + j]);
  if (bias) {
    bt.resize(c * taps);
    for (int64_t i = 0; i < c * taps; ++i) bt[i] = Io<T>::load(bias[i]);
  }
}

struct Geometry {
  int64_t b, c, g, h, w, ks, taps, r;
  const int64_t* dils;
  int64_t nd, halo;  // halo: rows a tap of the widest dilation reaches
};

inline Geometry geometry(int64_t b, int64_t c, int64_t g, int64_t h, int64_t w, int64_t ks, const int64_t* dils, int64_t nd) {
  int64_t dmax = 0;
  for (int64_t i = 0; i < nd; ++i) dmax = std::max(dmax, dils[i]);
  const int64_t r = (ks - 1) / 2;
  return {b, c, g, h, w, ks, ks * ks, r, dils, nd, r * dmax};
}

// Rows per work item. The backward pass remakes `halo` kernel rows on each side of an item, so its items are tall
// enough to amortise them; both are cut smaller while there are too few items to balance the threads.
inline int64_t fused_rows(const Geometry& q, int threads, bool halo) {
  const int64_t floor = halo ? std::max<int64_t>(2, q.halo) : 1;
  int64_t rows = halo ? std::max<int64_t>(16, 4 * q.halo) : 4;
  while (rows > floor && q.b * ((q.h + rows - 1) / rows) < 4 * threads) rows = std::max(floor, rows / 2);
  return std::max<int64_t>(1, std::min(rows, q.h));
}

// acc[i] += sum_t v[y + sy*dy_t][i + sy*dx_t] * krows_t[(ky)][i + ...]: one output row of the filter (Sign = +1,
// kernels at the output pixel) or of its adjoint in x (Sign = -1, kernels at the source pixel). krows points at the
// kernel row of the output row; kernel rows are kstride apart per tap and krow_pitch apart per image row.
template <typename T, int Sign>
inline void filter_row(const T* __restrict__ v, const typename Io<T>::Acc* __restrict__ krows, int64_t kstride,
                       int64_t krow_pitch, int64_t y, int64_t ylo, int64_t yhi, int64_t h, int64_t w, int64_t ks, int64_t d,
                       typename Io<T>::Acc* __restrict__ acc) {
  using Acc = typename Io<T>::Acc;
  const int64_t r = (ks - 1) / 2;
  for (int64_t ki = 0; ki < ks; ++ki) {
    const int64_t dy = Sign * (ki - r) * d, yy = y + dy;
    if (yy < 0 || yy >= h || (Sign < 0 && (yy < ylo || yy >= yhi))) continue;
    const T* __restrict__ vr = v + yy * w;
    const Acc* __restrict__ kr0 = krows + (Sign < 0 ? dy * krow_pitch : 0) + ki * ks * kstride;
    for (int64_t kj = 0; kj < ks; ++kj) {
      const int64_t dx = Sign * (kj - r) * d;
      const int64_t xa = std::min(w, std::max<int64_t>(0, -dx)), xb = std::max(xa, std::min(w, w - dx));
      const Acc* __restrict__ kr = kr0 + kj * kstride + (Sign < 0 ? dx : 0);
      for (int64_t i = xa; i < xb; ++i) acc[i] += Io<T>::load(vr[i + dx]) * kr[i];
    }
  }
}

template <typename T>
void fused_forward(const T* x, const T* guide, const T* wgt, const T* bias, T* const* outs, const Geometry& q, int threads) {
  using Acc = typename Io<T>::Acc;
  std::vector<Acc> wt, bt;
  transpose_weights(wgt, bias, q.c, q.g, q.taps, wt, bt);
  const int64_t plane = q.h * q.w, rows = fused_rows(q, threads, false), blocks = (q.h + rows - 1) / rows;
  const Acc* bp = bias ? bt.data() : nullptr;
#pragma omp parallel num_threads(threads)
  {
    std::vector<Acc> krow(q.taps * q.w), acc(q.w), packed;
    const int64_t pitch = packed_pitch(q.g, q.w, Vec<Acc>::n);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < q.b; ++b) {
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t y0 = blk * rows, y1 = std::min(q.h, y0 + rows);
        pack_rows(guide + b * q.g * plane, plane, q.g, q.w, y0, y1, packed);
        for (int64_t y = y0; y < y1; ++y) {
          for (int64_t ch = 0; ch < q.c; ++ch) {
            generate<Acc>(packed.data() + (y - y0) * pitch, q.g, wt.data() + ch * q.g * q.taps, q.taps,
                          bp ? bp + ch * q.taps : nullptr, krow.data(), q.w, q.w);
            const T* xp = x + (b * q.c + ch) * plane;
            for (int64_t di = 0; di < q.nd; ++di) {
              std::fill(acc.begin(), acc.end(), Acc(0));
              filter_row<T, 1>(xp, krow.data(), q.w, 0, y, 0, q.h, q.h, q.w, q.ks, q.dils[di], acc.data());
              T* o = outs[di] + (b * q.c + ch) * plane + y * q.w;
              for (int64_t i = 0; i < q.w; ++i) o[i] = Io<T>::store(acc[i]);
            }
          }
        }
      }
    }
  }
}

// Weight and guide gradients of one row and channel from gk (taps x wpad, zero past w) and the packed guide row:
//   gw[t][j] += sum_i gk[t][i] * guide[j][i]     (TAPS accumulators in registers over the row, per j)
//   gs[j][i] += sum_t wt[j][t] * gk[t][i]        (gs packed as the guide is; TAPS weights in registers, per j)
template <typename Acc, int TAPS>
inline void grad_params_row(const Acc* __restrict__ gk, int64_t kstride, const Acc* __restrict__ packed, int64_t g, int64_t w,
                            const Acc* __restrict__ wt, int64_t wstride, Acc* __restrict__ gw, int64_t gwstride,
                            Acc* __restrict__ gs) {
  using V = typename Vec<Acc>::type;
  constexpr int64_t n = Vec<Acc>::n;
  const int64_t blocks = (w + n - 1) / n;
  for (int64_t j = 0; j < g; ++j) {
    if (gw) {
      V acc[TAPS];
      for (int t = 0; t < TAPS; ++t) acc[t] = V{};
      for (int64_t ib = 0; ib < blocks; ++ib) {
        V sv;
        std::memcpy(&sv, packed + (ib * g + j) * n, sizeof sv);
        for (int t = 0; t < TAPS; ++t) {
          V kv;
          std::memcpy(&kv, gk + t * kstride + ib * n, sizeof kv);
          acc[t] += kv * sv;
        }
      }
      for (int t = 0; t < TAPS; ++t) {
        Acc sum = 0;
        for (int64_t l = 0; l < n; ++l) sum += acc[t][l];
        gw[t * gwstride + j] += sum;
      }
    }
    if (gs) {
      Acc wv[TAPS];
      for (int t = 0; t < TAPS; ++t) wv[t] = wt[j * wstride + t];
      for (int64_t ib = 0; ib < blocks; ++ib) {
        V sv;
        Acc* dst = gs + (ib * g + j) * n;
        std::memcpy(&sv, dst, sizeof sv);
        for (int t = 0; t < TAPS; ++t) {
          V kv;
          std::memcpy(&kv, gk + t * kstride + ib * n, sizeof kv);
          sv += wv[t] * kv;
        }
        std::memcpy(dst, &sv, sizeof sv);
      }
    }
  }
}

template <typename Acc>
void grad_params(const Acc* gk, int64_t kstride, const Acc* packed, int64_t g, int64_t w, const Acc* wt, int64_t taps, Acc* gw,
                 Acc* gs) {
  for (int64_t t0 = 0; t0 < taps; t0 += 9) {
    const Acc* gkc = gk + t0 * kstride;
    const Acc* wc = wt + t0;
    Acc* gwc = gw ? gw + t0 * g : nullptr;
    switch (std::min<int64_t>(9, taps - t0)) {
#define DYNFILTER_GRAD(m) \
  case m:                 \
    grad_params_row<Acc, m>(gkc, kstride, packed, g, w, wc, taps, gwc, g, gs); \
    break;
      DYNFILTER_GRAD(1) DYNFILTER_GRAD(2) DYNFILTER_GRAD(3) DYNFILTER_GRAD(4) DYNFILTER_GRAD(5)
      DYNFILTER_GRAD(6) DYNFILTER_GRAD(7) DYNFILTER_GRAD(8) DYNFILTER_GRAD(9)
#undef DYNFILTER_GRAD
    }
  }
}

// out[i] = sum of parts[k][i] over the threads' partial sums, in thread order (null out: not wanted).
template <typename T, typename Acc>
void store_sum(const std::vector<std::vector<Acc>>& parts, T* out, int64_t count) {
  if (!out) return;
  for (int64_t i = 0; i < count; ++i) {
    Acc sum = 0;
    for (const auto& part : parts)
      if (!part.empty()) sum += part[i];
    out[i] = Io<T>::store(sum);
  }
}

// Gradients of fused_forward. gx (null: not wanted) needs the kernels again, which are remade for the block's rows and
// the halo around them; the weight, bias and guide gradients need only gK_t[p] = sum_d g_d[p] * x[p + s_t(d)], made
// a row and channel at a time.
template <typename T>
void fused_backward(const T* const* grads, const T* x, const T* guide, const T* wgt, const T* bias, T* gx, T* gguide, T* gw,
                    T* gbias, const Geometry& q, int threads) {
  using Acc = typename Io<T>::Acc;
  constexpr int64_t n = Vec<Acc>::n;
  std::vector<Acc> wt, bt;
  transpose_weights(wgt, bias, q.c, q.g, q.taps, wt, bt);
  const int64_t plane = q.h * q.w, rows = fused_rows(q, threads, gx != nullptr), blocks = (q.h + rows - 1) / rows;
  const int64_t wpad = (q.w + n - 1) / n * n, ppitch = packed_pitch(q.g, q.w, n);
  const Acc* bp = bias ? bt.data() : nullptr;
  const bool params = gw || gbias;
  const int64_t nw = q.c * q.taps * q.g, nb = q.c * q.taps;
  // One partial sum of the weight and bias gradients per thread, summed in thread order afterwards, and a static
  // schedule: the same thread count gives the same bits.
  std::vector<std::vector<Acc>> gw_parts(std::max(threads, 1)), gb_parts(std::max(threads, 1));
#pragma omp parallel num_threads(threads)
  {
    std::vector<Acc> kbuf, packed, acc(q.w), gk(q.taps * wpad, Acc(0)), gs_row(gguide ? ppitch : 0);
    int me = 0;
#ifdef _OPENMP
    me = omp_get_thread_num();
#endif
    std::vector<Acc>& gw_part = gw_parts[me];
    std::vector<Acc>& gb_part = gb_parts[me];
    gw_part.assign(gw ? nw : 0, Acc(0));
    gb_part.assign(gbias ? nb : 0, Acc(0));
    if (gx) kbuf.resize(q.taps * (rows + 2 * q.halo) * q.w);
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < q.b; ++b) {
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t y0 = blk * rows, y1 = std::min(q.h, y0 + rows);
        // Guide rows [ka, kb): the block's, and with gx the halo whose kernels the block's gx gathers.
        const int64_t ka = gx ? std::max<int64_t>(0, y0 - q.halo) : y0, kb = gx ? std::min(q.h, y1 + q.halo) : y1;
        pack_rows(guide + b * q.g * plane, plane, q.g, q.w, ka, kb, packed);
        if (gx) {
          const int64_t pitch = q.w, kstride = (kb - ka) * q.w;
          for (int64_t ch = 0; ch < q.c; ++ch) {
            for (int64_t y = ka; y < kb; ++y)
              generate<Acc>(packed.data() + (y - ka) * ppitch, q.g, wt.data() + ch * q.g * q.taps, q.taps,
                            bp ? bp + ch * q.taps : nullptr, kbuf.data() + (y - ka) * pitch, kstride, q.w);
            for (int64_t y = y0; y < y1; ++y) {
              std::fill(acc.begin(), acc.end(), Acc(0));
              for (int64_t di = 0; di < q.nd; ++di) {
                const T* gp = grads[di] + (b * q.c + ch) * plane;
                filter_row<T, -1>(gp, kbuf.data() + (y - ka) * pitch, kstride, pitch, y, ka, kb, q.h, q.w, q.ks, q.dils[di],
                                  acc.data());
              }
              T* o = gx + (b * q.c + ch) * plane + y * q.w;
              for (int64_t i = 0; i < q.w; ++i) o[i] = Io<T>::store(acc[i]);
            }
          }
        }
        if (!gguide && !params) continue;
        for (int64_t y = y0; y < y1; ++y) {
          const Acc* prow = packed.data() + (y - ka) * ppitch;
          if (gguide) std::fill(gs_row.begin(), gs_row.end(), Acc(0));
          for (int64_t ch = 0; ch < q.c; ++ch) {
            // gK_t[i] = sum_d g_d[y][i] * x[y + dy][i + dx], zero where the source pixel is outside.
            for (int64_t t = 0; t < q.taps; ++t) std::fill(gk.begin() + t * wpad, gk.begin() + t * wpad + q.w, Acc(0));
            const T* xp = x + (b * q.c + ch) * plane;
            for (int64_t di = 0; di < q.nd; ++di) {
              const int64_t d = q.dils[di];
              const T* gr = grads[di] + (b * q.c + ch) * plane + y * q.w;
              for (int64_t t = 0; t < q.taps; ++t) {
                const int64_t dy = (t / q.ks - q.r) * d, dx = (t % q.ks - q.r) * d;
                if (y + dy < 0 || y + dy >= q.h) continue;
                const int64_t xa = std::min(q.w, std::max<int64_t>(0, -dx)), xb = std::max(xa, std::min(q.w, q.w - dx));
                const T* xr = xp + (y + dy) * q.w;
                Acc* __restrict__ o = gk.data() + t * wpad;
                for (int64_t i = xa; i < xb; ++i) o[i] += Io<T>::load(gr[i]) * Io<T>::load(xr[i + dx]);
              }
            }
            grad_params<Acc>(gk.data(), wpad, prow, q.g, q.w, wt.data() + ch * q.g * q.taps, q.taps,
                             gw ? gw_part.data() + ch * q.taps * q.g : nullptr, gguide ? gs_row.data() : nullptr);
            if (gbias)
              for (int64_t t = 0; t < q.taps; ++t) {
                const Acc* o = gk.data() + t * wpad;
                Acc sum = 0;
                for (int64_t i = 0; i < q.w; ++i) sum += o[i];
                gb_part[ch * q.taps + t] += sum;
              }
          }
          if (gguide)
            for (int64_t j = 0; j < q.g; ++j) {
              T* o = gguide + (b * q.g + j) * plane + y * q.w;
              for (int64_t i = 0; i < q.w; ++i) o[i] = Io<T>::store(gs_row[((i / n) * q.g + j) * n + i % n]);
            }
        }
      }
    }
  }
  store_sum(gw_parts, gw, nw);
  store_sum(gb_parts, gbias, nb);
}

}  // namespace

#define DYNFILTER_EXPORT(suffix, T)                                                                              \
  extern "C" void dynfilter_forward_##suffix(const void* x, const void* k, void* out, int64_t n, int64_t h,      \
                                             int64_t w, int64_t ks, int64_t dil, int threads) {                  \
    accumulate<T, 1, false>((const T*)x, (const T*)k, (T*)out, n, h, w, ks, dil, threads);                       \
  }                                                                                                              \
  extern "C" void dynfilter_grad_input_##suffix(const void* g, const void* k, void* out, int64_t n, int64_t h,   \
                                                int64_t w, int64_t ks, int64_t dil, int threads) {               \
    accumulate<T, -1, true>((const T*)g, (const T*)k, (T*)out, n, h, w, ks, dil, threads);                       \
  }                                                                                                              \
  extern "C" void dynfilter_grad_kernels_##suffix(const void* g, const void* x, void* out, int64_t n, int64_t h, \
                                                  int64_t w, int64_t ks, int64_t dil, int threads) {             \
    grad_kernels<T>((const T*)g, (const T*)x, (T*)out, n, h, w, ks, dil, threads);                               \
  }                                                                                                              \
  extern "C" void dynfilter_fused_forward_##suffix(const void* x, const void* s, const void* w, const void* bias, \
                                                   void* const* outs, const int64_t* shape, const int64_t* dils,  \
                                                   int64_t nd, int threads) {                                     \
    const Geometry q = geometry(shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], dils, nd);            \
    fused_forward<T>((const T*)x, (const T*)s, (const T*)w, (const T*)bias, (T* const*)outs, q, threads);         \
  }                                                                                                              \
  extern "C" void dynfilter_fused_backward_##suffix(const void* const* g, const void* x, const void* s, const void* w,   \
                                                    const void* bias, void* gx, void* gs, void* gw, void* gb,     \
                                                    const int64_t* shape, const int64_t* dils, int64_t nd,        \
                                                    int threads) {                                                \
    const Geometry q = geometry(shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], dils, nd);            \
    fused_backward<T>((const T* const*)g, (const T*)x, (const T*)s, (const T*)w, (const T*)bias, (T*)gx, (T*)gs, (T*)gw, \
                      (T*)gb, q, threads);                                                                        \
  }

DYNFILTER_EXPORT(float32, float)
DYNFILTER_EXPORT(float64, double)
DYNFILTER_EXPORT(bfloat16, bf16)

extern "C" int dynfilter_abi_version() { return 2; }
