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
  }

DYNFILTER_EXPORT(float32, float)
DYNFILTER_EXPORT(float64, double)
DYNFILTER_EXPORT(bfloat16, bf16)

extern "C" int dynfilter_abi_version() { return 1; }
