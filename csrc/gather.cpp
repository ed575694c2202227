// Batch gather / decode for the loader.
//
// ImageGather holds read-only views of a memory-mapped store (the whole file as bytes, plus
// each sample's byte range, mode and size for one image field), validated once when built, and
// a persistent thread pool. Each call assembles one batch of selected samples into a
// caller-owned uint8 [B, H, W, 3] buffer with the GIL released:
//   gather(ids, out)              raw copy / JPEG decode; every sample must already be HxW.
//   gather_crops(ids, crops, out) read or decode, crop (top, left, h, w), bilinear resize
//                                 (antialiased where it shrinks); a JPEG decodes only the
//                                 window (see jpeg_decode.hpp).
// Both take optional per-row flips: the loader fuses a RandomHorizontalFlip that follows the
// gather into it, mirroring as it writes (a separate pass over the batch cost 20% of an RRC224
// batch of 256-pixel photos).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core.hpp"
#include "jpeg_decode.hpp"
#include "simd.hpp"  // SSE2 in the build, AVX2 by run-time dispatch
#include "thread_pool.hpp"

#include <nanobind/stl/string.h>  // check_jpeg_cost returns its reason as a str

namespace fastprune {
namespace {

constexpr uint8_t MODE_JPEG = 0;  // ffcv's IMAGE_MODES: 'jpg' = 0, 'raw' = 1
constexpr uint8_t MODE_RAW = 1;

using Batch4D = nb::ndarray<uint8_t, nb::ndim<4>, nb::c_contig, nb::device::cpu>;
using Crops2D = nb::ndarray<const int32_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

std::string sample_name(int64_t id) { return "sample " + std::to_string(id); }

// A crop window in a pixel buffer (edge coordinates: fractional when the JPEG decoder
// downscaled in the IDCT, integral otherwise).
struct Window {
    const uint8_t *pixels;
    int rows, cols;  // the buffer
    double top, left, height, width;
};

// Taps of a bilinear resample along one axis: output index x reads source indices x0 and
// x0 + step (step 0 at the clamped edge) with 8-bit weights 256 - frac and frac.
void make_taps(double start, double length, int first, int last, int out_size, int *x0_out, int *step_out,
               int *frac_out) {
    for (int x = 0; x < out_size; ++x) {
        double sx = start + (x + 0.5) * length / out_size - 0.5;  // pixel-centre sampling
        sx = std::min(std::max(sx, double(first)), double(last));
        int x0 = std::min(int(sx), last);
        x0_out[x] = x0;
        step_out[x] = x0 < last ? 1 : 0;
        frac_out[x] = int(std::lround((sx - x0) * 256));
    }
}

// A per-thread scratch buffer of at least n elements: grown to the largest image seen and then
// reused, no allocation per image.
template <typename T>
T *grow(std::vector<T> &v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
}

// This thread's instance of a scratch struct, taken once per image. Not inlined: in a shared
// library the compiler recomputes a thread_local's address (a __tls_get_addr call) at each use
// rather than keep it in a register, even through a reference (27 calls in the resize loops,
// 7% of an antialiased resize).
template <typename T>
#if defined(__GNUC__)
__attribute__((noinline))
#endif
T &thread_scratch() {
    thread_local T scratch;
    return scratch;
}

// Per-thread buffers of resize_window (see grow).
struct ResizeScratch {
    std::vector<int> x0, xstep, xfrac, y0, ystep, yfrac;
    std::vector<int32_t> xoffset;   // SIMD pass: byte offset of source column x0[x] in a row
    std::vector<uint16_t> xweight;  // SIMD pass: per output column 8 lanes (w0 w0 w0 w1 w1 w1 0 0)
    std::vector<uint16_t> rows;     // the two horizontally resampled source rows (+ padding)
};

// Horizontal pass of one source row: row[3x + c] = a[c] * (256 - f) + b[c] * f, exact in 16
// bits (at most 255 * 256), where a and b are the source pixels of output column x's taps.
void resample_row(const uint8_t *src, const int *x0, const int *step, const int *frac, int out_w, uint16_t *row) {
    for (int x = 0; x < out_w; ++x) {
        const uint8_t *a = src + size_t(x0[x]) * 3, *b = a + step[x] * 3;
        int f = frac[x];
        for (int c = 0; c < 3; ++c) row[x * 3 + c] = uint16_t(a[c] * (256 - f) + b[c] * f);
    }
}

// Vertical pass: out[i] = (a[i] * (256 - f) + b[i] * f + 32768) >> 16, 0..255. Always inlined,
// also into blend_rows_avx2 (for the end of a row): a call from AVX2 code to a function built for
// SSE costs a stall per row on some CPUs.
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline void blend_rows(const uint16_t *a, const uint16_t *b, int f, int n, uint8_t *out) {
    int i = 0;
#if FASTPRUNE_SSE2
    // pmaddwd multiplies signed 16-bit lanes: with a' = a - 32768 (a ^ 0x8000 read as signed),
    // a * (256 - f) + b * f = a' * (256 - f) + b' * f + 32768 * 256, exactly, in 32 bits.
    const __m128i weights = _mm_set1_epi32(int32_t(uint32_t(f) << 16 | uint32_t(256 - f)));
    const __m128i bias = _mm_set1_epi32((32768 << 8) + 32768);
    const __m128i sign = _mm_set1_epi16(int16_t(0x8000));
    for (; i + 16 <= n; i += 16) {
        __m128i r[2];
        for (int k = 0; k < 2; ++k) {
            __m128i va = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i *>(a + i + 8 * k)), sign);
            __m128i vb = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i *>(b + i + 8 * k)), sign);
            __m128i lo = _mm_add_epi32(_mm_madd_epi16(_mm_unpacklo_epi16(va, vb), weights), bias);
            __m128i hi = _mm_add_epi32(_mm_madd_epi16(_mm_unpackhi_epi16(va, vb), weights), bias);
            r[k] = _mm_packs_epi32(_mm_srli_epi32(lo, 16), _mm_srli_epi32(hi, 16));
        }
        _mm_storeu_si128(reinterpret_cast<__m128i *>(out + i), _mm_packus_epi16(r[0], r[1]));
    }
#endif
    for (; i < n; ++i) out[i] = uint8_t((a[i] * (256 - f) + b[i] * f + 32768) >> 16);
}

#if FASTPRUNE_AVX2_DISPATCH
// blend_rows 32 lanes at a time, on CPUs with AVX2 (checked at run time: the build targets
// baseline x86-64); the rest of a row goes to blend_rows.
__attribute__((target("avx2"))) void blend_rows_avx2(const uint16_t *a, const uint16_t *b, int f, int n,
                                                     uint8_t *out) {
    const __m256i weights = _mm256_set1_epi32(int32_t(uint32_t(f) << 16 | uint32_t(256 - f)));
    const __m256i bias = _mm256_set1_epi32((32768 << 8) + 32768);
    const __m256i sign = _mm256_set1_epi16(int16_t(0x8000));
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i r[2];
        for (int k = 0; k < 2; ++k) {
            __m256i va = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(a + i + 16 * k)), sign);
            __m256i vb = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(b + i + 16 * k)), sign);
            __m256i lo = _mm256_add_epi32(_mm256_madd_epi16(_mm256_unpacklo_epi16(va, vb), weights), bias);
            __m256i hi = _mm256_add_epi32(_mm256_madd_epi16(_mm256_unpackhi_epi16(va, vb), weights), bias);
            r[k] = _mm256_packs_epi32(_mm256_srli_epi32(lo, 16), _mm256_srli_epi32(hi, 16));  // in order per 128-bit lane
        }
        __m256i bytes = _mm256_packus_epi16(r[0], r[1]);  // 64-bit blocks: r0 lo, r1 lo, r0 hi, r1 hi
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(out + i), _mm256_permute4x64_epi64(bytes, 0xD8));
    }
    blend_rows(a + i, b + i, f, n - i, out + i);
}

#endif

// Copies one row of w RGB pixels, mirrored left-right when flip is set.
void copy_row(const uint8_t *src, uint8_t *dst, int w, bool flip) {
    if (!flip) {
        std::memcpy(dst, src, size_t(w) * 3);
        return;
    }
    for (int x = 0; x < w; ++x) {
        const uint8_t *p = src + size_t(w - 1 - x) * 3;
        dst[x * 3] = p[0], dst[x * 3 + 1] = p[1], dst[x * 3 + 2] = p[2];
    }
}

// Antialiased resampling, for a window that shrinks (PIL's BILINEAR, torchvision's antialias=True):
// a triangle filter stretched to the scale, so every source pixel under an output pixel counts.
// The 2-tap path below reads two pixels whatever the scale, and a 3-pixel stripe pattern
// shrunk 7x came out as stripes (aliasing), where PIL and torchvision give flat grey.
constexpr int FILTER_BITS = 14;  // the weights of one output pixel sum to 1 << 14

// Output x reads count[x] source pixels from first[x] on, with weights[x * width + k]
// (nonnegative, summing to exactly 1 << FILTER_BITS), restricted to the pixels [lo, hi] the window covers
// and renormalised there (PIL's rule at image edges; its tap range too: no zero-weight taps).
struct FilterTaps {
    std::vector<int> first, count;
    std::vector<int32_t> weights;
    std::vector<double> raw;
    int width = 0;
};

void make_filter_taps(double start, double length, int lo, int hi, int out_size, FilterTaps &t) {
    const double scale = length / out_size, support = std::max(scale, 1.0);
    t.width = int(std::ceil(2 * support)) + 2;
    grow(t.first, out_size);
    grow(t.count, out_size);
    grow(t.weights, size_t(out_size) * t.width);
    grow(t.raw, t.width);
    for (int x = 0; x < out_size; ++x) {
        const double center = start + (x + 0.5) * scale;
        const int k_lo = std::max(int(std::floor(center - support + 0.5)), lo);
        const int k_hi = std::min(int(std::floor(center + support + 0.5)), hi + 1);
        double total = 0;
        int n = 0;
        for (int k = k_lo; k < k_hi; ++k, ++n) {
            t.raw[n] = std::max(0.0, 1.0 - std::fabs((k + 0.5 - center) / support));
            total += t.raw[n];
        }
        // Largest remainders: each weight floored, then +1 to those that lost the most until the
        // sum is exact. Every weight stays within 1 of exact and >= 0 (the remainder put on the
        // largest weight made it negative past ~1000x: 1280 rows shrunk to 1 came out white for black).
        int32_t *w = t.weights.data() + size_t(x) * t.width;
        int sum = 0;
        for (int k = 0; k < n; ++k) {
            t.raw[k] = t.raw[k] / total * (1 << FILTER_BITS);
            w[k] = int32_t(std::floor(t.raw[k]));
            t.raw[k] -= w[k];  // what the floor lost
            sum += w[k];
        }
        for (int left = (1 << FILTER_BITS) - sum; left > 0; --left) {
            int most = 0;  // the first of the largest losses (the Python model picks the same)
            for (int k = 1; k < n; ++k)
                if (t.raw[k] > t.raw[most]) most = k;
            ++w[most];
            t.raw[most] = -1;
        }
        std::fill(w + n, w + t.width, 0);
        t.first[x] = k_lo;
        t.count[x] = n;
    }
}

// Output column order reversed: the mirrored image's taps (the fused flip).
void mirror_filter_taps(FilterTaps &t, int out_size) {
    std::reverse(t.first.begin(), t.first.begin() + out_size);
    std::reverse(t.count.begin(), t.count.begin() + out_size);
    for (int a = 0, b = out_size - 1; a < b; ++a, --b)
        std::swap_ranges(t.weights.begin() + size_t(a) * t.width, t.weights.begin() + size_t(a + 1) * t.width,
                         t.weights.begin() + size_t(b) * t.width);
}

// The taps of one output row of the vertical pass, in pairs for pmaddwd: pair j reads source
// rows a[j] and b[j] with weights (wa, wb) packed in one int32 (low half wa). An odd last tap is
// paired with itself at weight 0.
struct VerticalPairs {
    std::vector<const uint8_t *> a, b;
    std::vector<int32_t> weights;
    int count = 0;
};

struct FilterScratch {
    FilterTaps x, y;
    std::vector<int16_t> pairs;  // per column, per pair of taps: (w0 w1 w0 w1 w0 w1 0 0)
    VerticalPairs vertical;      // one output row's source rows and weights
    std::vector<int16_t> row;    // one vertically filtered row: (pixel * 256) - 32768
};

// The horizontal pass's weights: every column gets `steps` pairs of taps (zero weights past its
// own taps, so every column runs the same loop), (w0 w1 w0 w1 w0 w1 0 0) each.
void make_pairs(const FilterTaps &t, int out_w, int steps, std::vector<int16_t> &pairs) {
    pairs.assign(size_t(out_w) * steps * 8, 0);
    for (int x = 0; x < out_w; ++x)
        for (int k = 0; k < t.count[x]; ++k) {
            int16_t *lanes = pairs.data() + (size_t(x) * steps + k / 2) * 8;
            const int16_t w = int16_t(t.weights[size_t(x) * t.width + k]);
            lanes[k % 2] = lanes[2 + k % 2] = lanes[4 + k % 2] = w;
        }
}

void make_vertical_pairs(const Window &win, const FilterTaps &t, int y, int col_first, VerticalPairs &p) {
    const int n = t.count[y], pairs = (n + 1) / 2;
    const int32_t *w = t.weights.data() + size_t(y) * t.width;
    const uint8_t *first = win.pixels + (size_t(t.first[y]) * win.cols + col_first) * 3;
    const size_t stride = size_t(win.cols) * 3;
    grow(p.a, pairs);
    grow(p.b, pairs);
    grow(p.weights, pairs);
    for (int j = 0; j < pairs; ++j) {
        const int k = 2 * j, wb = k + 1 < n ? w[k + 1] : 0;
        p.a[j] = first + size_t(k) * stride;
        p.b[j] = k + 1 < n ? p.a[j] + stride : p.a[j];
        p.weights[j] = int32_t(uint32_t(wb) << 16 | uint32_t(w[k]));
    }
    p.count = pairs;
}

// One output row of the vertical pass, values [i, end): row[i] = ((sum_k src_k[i] * w_k + 32) >> 6)
// - 32768 (see resize_window_filtered). The + 32 rounds the >> 6; - 32768 * 64 makes the stored
// value fit int16. Every path computes the same integer sums (each fits int32: 255 * 2^14 + 2^21).
constexpr int32_t VERTICAL_BIAS = 32 - 32768 * 64;

#if defined(__GNUC__)
__attribute__((always_inline))  // also into vertical_row_avx2, for the last values of a row
#endif
inline void vertical_values(const VerticalPairs &p, size_t i, size_t end, int16_t *row) {
    for (; i < end; ++i) {
        int32_t sum = VERTICAL_BIAS;
        for (int j = 0; j < p.count; ++j)
            sum += int32_t(p.a[j][i]) * int16_t(p.weights[j]) + int32_t(p.b[j][i]) * (p.weights[j] >> 16);
        row[i] = int16_t(sum >> 6);
    }
}

// 8 values at a time: the pixels of rows a and b widened to 16 bits and interleaved, so that one
// pmaddwd gives a * wa + b * wb per value, the sums staying in registers across all taps. Always
// inlined, also into vertical_row_avx2 (for the end of a row; see blend_rows).
#if FASTPRUNE_SSE2
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline size_t vertical_values_sse2(const VerticalPairs &p, size_t i, size_t end, int16_t *row) {
    const __m128i zero = _mm_setzero_si128(), bias = _mm_set1_epi32(VERTICAL_BIAS);
    for (; i + 8 <= end; i += 8) {
        __m128i lo = bias, hi = bias;
        for (int j = 0; j < p.count; ++j) {
            const __m128i a = _mm_unpacklo_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p.a[j] + i)), zero);
            const __m128i b = _mm_unpacklo_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p.b[j] + i)), zero);
            const __m128i w = _mm_set1_epi32(p.weights[j]);
            lo = _mm_add_epi32(lo, _mm_madd_epi16(_mm_unpacklo_epi16(a, b), w));
            hi = _mm_add_epi32(hi, _mm_madd_epi16(_mm_unpackhi_epi16(a, b), w));
        }
        _mm_storeu_si128(reinterpret_cast<__m128i *>(row + i),
                         _mm_packs_epi32(_mm_srai_epi32(lo, 6), _mm_srai_epi32(hi, 6)));
    }
    return i;
}
#endif

void vertical_row(const VerticalPairs &p, size_t row_len, int16_t *row) {
    size_t i = 0;
#if FASTPRUNE_SSE2
    i = vertical_values_sse2(p, i, row_len, row);
#endif
    vertical_values(p, i, row_len, row);
}

#if FASTPRUNE_AVX2_DISPATCH
// 16 values at a time. unpacklo/hi work within 128-bit lanes, and packs puts the lanes back in
// order: lo holds values 0-3 and 8-11, hi 4-7 and 12-15.
__attribute__((target("avx2"))) void vertical_row_avx2(const VerticalPairs &p, size_t row_len, int16_t *row) {
    const __m256i bias = _mm256_set1_epi32(VERTICAL_BIAS);
    size_t i = 0;
    for (; i + 16 <= row_len; i += 16) {
        __m256i lo = bias, hi = bias;
        for (int j = 0; j < p.count; ++j) {
            const __m256i a = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p.a[j] + i)));
            const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p.b[j] + i)));
            const __m256i w = _mm256_set1_epi32(p.weights[j]);
            lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(a, b), w));
            hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(a, b), w));
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(row + i),
                            _mm256_packs_epi32(_mm256_srai_epi32(lo, 6), _mm256_srai_epi32(hi, 6)));
    }
    i = vertical_values_sse2(p, i, row_len, row);
    vertical_values(p, i, row_len, row);
}
#endif

// One output row of the horizontal pass, out[x] from row's pixels at first[x] - col_first on:
// two taps per step, the channels of the two pixels interleaved (r0 r1 g0 g1 b0 b1) for pmaddwd.
#if FASTPRUNE_SSE2
inline __m128i two_taps(const int16_t *p) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p));
    return _mm_unpacklo_epi16(v, _mm_srli_si128(v, 6));
}

void horizontal_row(const int16_t *row, const FilterTaps &t, const int16_t *pairs, int col_first, int out_w,
                    int steps, uint8_t *out, int x_begin = 0) {
    for (int x = x_begin; x < out_w; ++x) {
        const int16_t *p = row + size_t(t.first[x] - col_first) * 3;
        const __m128i *w = reinterpret_cast<const __m128i *>(pairs) + size_t(x) * steps;
        __m128i sum = _mm_set1_epi32((1 << 29) + (1 << 21));
        for (int k = 0; k < steps; ++k) sum = _mm_add_epi32(sum, _mm_madd_epi16(two_taps(p + 6 * k), _mm_loadu_si128(w + k)));
        const __m128i words = _mm_packs_epi32(_mm_srai_epi32(sum, 22), _mm_setzero_si128());
        const int32_t bytes = _mm_cvtsi128_si32(_mm_packus_epi16(words, words));
        std::memcpy(out + size_t(x) * 3, &bytes, 3);
    }
}
#else
void horizontal_row(const int16_t *row, const FilterTaps &t, const int16_t *pairs, int col_first, int out_w,
                    int steps, uint8_t *out, int x_begin = 0) {
    for (int x = x_begin; x < out_w; ++x) {
        const int16_t *p = row + size_t(t.first[x] - col_first) * 3;
        const int16_t *w = pairs + size_t(x) * steps * 8;
        int32_t rgb[3] = {(1 << 29) + (1 << 21), (1 << 29) + (1 << 21), (1 << 29) + (1 << 21)};
        for (int k = 0; k < 2 * steps; ++k)
            for (int c = 0; c < 3; ++c) rgb[c] += int32_t(p[k * 3 + c]) * w[(k / 2) * 8 + 2 * c + k % 2];
        for (int c = 0; c < 3; ++c) out[x * 3 + c] = uint8_t(rgb[c] >> 22);
    }
}
#endif

#if FASTPRUNE_AVX2_DISPATCH
// horizontal_row two columns at a time (one per 128-bit lane); the last, odd one by the SSE2 code.
__attribute__((target("avx2"))) void horizontal_row_avx2(const int16_t *row, const FilterTaps &t,
                                                         const int16_t *pairs, int col_first, int out_w,
                                                         int steps, uint8_t *out) {
    int x = 0;
    for (; x + 2 <= out_w; x += 2) {
        const int16_t *p0 = row + size_t(t.first[x] - col_first) * 3, *p1 = row + size_t(t.first[x + 1] - col_first) * 3;
        const __m128i *w0 = reinterpret_cast<const __m128i *>(pairs) + size_t(x) * steps, *w1 = w0 + steps;
        __m256i sum = _mm256_set1_epi32((1 << 29) + (1 << 21));
        for (int k = 0; k < steps; ++k) {
            const __m256i v = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p0 + 6 * k))),
                _mm_loadu_si128(reinterpret_cast<const __m128i *>(p1 + 6 * k)), 1);
            const __m256i two = _mm256_unpacklo_epi16(v, _mm256_srli_si256(v, 6));  // per 128-bit lane
            const __m256i w = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(w0 + k)),
                                                      _mm_loadu_si128(w1 + k), 1);
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(two, w));
        }
        const __m256i words = _mm256_packs_epi32(_mm256_srai_epi32(sum, 22), _mm256_setzero_si256());
        const __m256i bytes = _mm256_packus_epi16(words, words);
        const int32_t a = _mm256_cvtsi256_si32(bytes), b = _mm_cvtsi128_si32(_mm256_extracti128_si256(bytes, 1));
        std::memcpy(out + size_t(x) * 3, &a, 3);
        std::memcpy(out + size_t(x) * 3 + 3, &b, 3);
    }
    if (x < out_w) horizontal_row(row, t, pairs, col_first, out_w, steps, out, x);
}
#endif

// Antialiased resize of a window (see FilterTaps), vertical pass first, so that the costlier
// horizontal one runs on out_h rows rather than on every row of the window:
//   row[i] = (sum_k src_k[i] * wy_k + 32) >> 6: the pixel times 256 (0..65280), stored less
//            32768 so that it fits int16 lanes (pmaddwd);
//   out    = (sum_k row[x_k] * wx_k + 2^21) >> 22, where sum_k (row - 32768) * wx_k fits int32
//            (|.| <= 2^15 * 2^14) and adds back 32768 * 2^14 = 2^29, the weights summing to 2^14.
// transforms.py's _filtered_crop models this arithmetic for the numba path (equal bytes).
void resize_window_filtered(const Window &win, uint8_t *dst, int out_h, int out_w, bool flip, int x_last,
                            int y_last) {
    if (out_h == 0 || out_w == 0) return;
    FilterScratch &s = thread_scratch<FilterScratch>();
    make_filter_taps(win.left, win.width, int(win.left), x_last, out_w, s.x);
    make_filter_taps(win.top, win.height, int(win.top), y_last, out_h, s.y);
    const int col_first = s.x.first[0], cols = s.x.first[out_w - 1] + s.x.count[out_w - 1] - col_first;
    if (flip) mirror_filter_taps(s.x, out_w);
    const int steps = (*std::max_element(s.x.count.begin(), s.x.count.begin() + out_w) + 1) / 2;
    make_pairs(s.x, out_w, steps, s.pairs);
    // + room for the zero-weighted taps past a column's own and for the last 8-lane load
    const size_t row_len = size_t(cols) * 3, padded = row_len + size_t(steps) * 6 + 8;
    grow(s.row, padded);
    std::fill(s.row.begin() + row_len, s.row.begin() + padded, int16_t(0));
#if FASTPRUNE_AVX2_DISPATCH
    const bool avx2 = have_avx2();
#endif
    for (int y = 0; y < out_h; ++y) {
        uint8_t *out = dst + size_t(y) * out_w * 3;
        make_vertical_pairs(win, s.y, y, col_first, s.vertical);
#if FASTPRUNE_AVX2_DISPATCH
        if (avx2) {
            vertical_row_avx2(s.vertical, row_len, s.row.data());
            horizontal_row_avx2(s.row.data(), s.x, s.pairs.data(), col_first, out_w, steps, out);
            continue;
        }
#endif
        vertical_row(s.vertical, row_len, s.row.data());
        horizontal_row(s.row.data(), s.x, s.pairs.data(), col_first, out_w, steps, out);
    }
}

// Bilinear resize of a window into dst (out_h x out_w x 3), sampling at pixel centres (the
// convention of cv2.INTER_LINEAR / PIL), clamped to the pixels the window covers. Separable, in
// 8-bit fixed point: each output row blends two horizontally resampled source rows (each
// source row is resampled once: consecutive output rows share them). Within 1 grey level of the
// float formula; the SIMD paths give the same bytes as the scalar one. With flip, the output is
// mirrored left-right for free: output column x takes the taps of column out_w - 1 - x, so the
// bytes equal resizing and then flipping (RandomHorizontalFlip fused into the gather).
void resize_window(const Window &win, uint8_t *dst, int out_h, int out_w, bool flip, bool antialias) {
    const int top = int(win.top), left = int(win.left);
    if (win.top == top && win.left == left && win.height == out_h && win.width == out_w) {  // pure crop
        for (int y = 0; y < out_h; ++y)
            copy_row(win.pixels + (size_t(top + y) * win.cols + left) * 3, dst + size_t(y) * out_w * 3, out_w, flip);
        return;
    }
    auto last_of = [](double start, double length, int size) {
        return std::min(int(std::ceil(start + length)) - 1, size - 1);
    };
    if (antialias && (win.width > out_w || win.height > out_h)) {  // it shrinks: filter (it enlarges: same as below)
        resize_window_filtered(win, dst, out_h, out_w, flip, last_of(win.left, win.width, win.cols),
                               last_of(win.top, win.height, win.rows));
        return;
    }
    ResizeScratch &s = thread_scratch<ResizeScratch>();
    int *x0 = grow(s.x0, out_w), *xstep = grow(s.xstep, out_w), *xfrac = grow(s.xfrac, out_w);
    int *y0 = grow(s.y0, out_h), *ystep = grow(s.ystep, out_h), *yfrac = grow(s.yfrac, out_h);
    make_taps(win.left, win.width, left, last_of(win.left, win.width, win.cols), out_w, x0, xstep, xfrac);
    if (flip) {
        std::reverse(x0, x0 + out_w);
        std::reverse(xstep, xstep + out_w);
        std::reverse(xfrac, xfrac + out_w);
    }
    make_taps(win.top, win.height, top, last_of(win.top, win.height, win.rows), out_h, y0, ystep, yfrac);
    const size_t row_len = size_t(out_w) * 3 + 8;  // + room for the 4-lane stores of the SIMD pass
    uint16_t *rows[2] = {grow(s.rows, 2 * row_len), nullptr};
    rows[1] = rows[0] + row_len;
    int cached[2] = {-1, -1};
#if FASTPRUNE_SSE2
    // The SIMD horizontal pass loads 8 bytes at each output column's first tap: both pixels when
    // step is 1, and 2 bytes more. At step 0 the weights are made (256, 0), which gives the
    // scalar a * (256 - f) + a * f whatever the second pixel read is, as long as it is inside
    // the buffer: the rightmost source columns of the buffer's last row(s) take the scalar path
    // (the last output columns, or the first ones when flipped: x0 runs backwards then).
    int32_t *xoffset = grow(s.xoffset, out_w);
    uint16_t *xweight = grow(s.xweight, size_t(out_w) * 8);  // 16-byte aligned (operator new)
    for (int x = 0; x < out_w; ++x) {
        xoffset[x] = x0[x] * 3;
        const uint16_t f = uint16_t(xstep[x] ? xfrac[x] : 0), w = uint16_t(256 - f);
        const uint16_t lanes[8] = {w, w, w, f, f, f, 0, 0};
        std::memcpy(xweight + size_t(x) * 8, lanes, sizeof lanes);
    }
    const int64_t buffer_bytes = int64_t(win.rows) * win.cols * 3;
#endif
    auto horizontal = [&](int src_row, int slot) {
        if (cached[slot] == src_row) return;
        const uint8_t *src = win.pixels + size_t(src_row) * win.cols * 3;
        uint16_t *row = rows[slot];
        int simd_begin = 0, simd_end = 0;  // SIMD columns [simd_begin, simd_end), scalar the rest
#if FASTPRUNE_SSE2
        const int64_t readable = buffer_bytes - int64_t(src_row) * win.cols * 3;  // from src on
        simd_end = out_w;
        if (flip)  // x0 is nonincreasing
            while (simd_begin < out_w && xoffset[simd_begin] + 8 > readable) ++simd_begin;
        else  // x0 is nondecreasing
            while (simd_end > 0 && xoffset[simd_end - 1] + 8 > readable) --simd_end;
        const __m128i zero = _mm_setzero_si128();
        const __m128i *weights = reinterpret_cast<const __m128i *>(xweight);
        auto column = [&](int x) {
            __m128i p = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(src + xoffset[x]));  // a, b, 2 more
            p = _mm_mullo_epi16(_mm_unpacklo_epi8(p, zero), _mm_load_si128(weights + x));
            p = _mm_add_epi16(p, _mm_srli_si128(p, 6));  // lanes 0-2: a * w0 + b * w1
            _mm_storel_epi64(reinterpret_cast<__m128i *>(row + size_t(x) * 3), p);  // lane 3: the next one's
        };
        int x = simd_begin;
        for (; x + 4 <= simd_end; x += 4) {
            column(x);
            column(x + 1);
            column(x + 2);
            column(x + 3);
        }
        for (; x < simd_end; ++x) column(x);
#endif
        // After the SIMD columns: each of those also writes one lane into the next column's slot.
        const int tail = std::max(simd_end, simd_begin);
        resample_row(src, x0, xstep, xfrac, simd_begin, row);
        resample_row(src, x0 + tail, xstep + tail, xfrac + tail, out_w - tail, row + size_t(tail) * 3);
        cached[slot] = src_row;
    };
#if FASTPRUNE_AVX2_DISPATCH
    const bool avx2 = have_avx2();
#endif
    for (int y = 0; y < out_h; ++y) {
        int ya = y0[y], yb = ya + ystep[y];
        if (cached[1] == ya) {  // slide down: the old bottom row is the new top row
            std::swap(rows[0], rows[1]);
            std::swap(cached[0], cached[1]);
        }
        horizontal(ya, 0);
        horizontal(yb, 1);
        uint8_t *out = dst + size_t(y) * out_w * 3;
#if FASTPRUNE_AVX2_DISPATCH
        if (avx2) {
            blend_rows_avx2(rows[0], rows[1], yfrac[y], out_w * 3, out);
            continue;
        }
#endif
        blend_rows(rows[0], rows[1], yfrac[y], out_w * 3, out);
    }
}

class ImageGather {
public:
    ImageGather(ROArray1D<uint8_t> buffer, ROArray1D<uint64_t> offsets, ROArray1D<uint64_t> sizes,
                ROArray1D<uint8_t> modes, ROArray1D<uint32_t> heights, ROArray1D<uint32_t> widths, size_t threads,
                uint64_t max_pixels, int nice)
        : buffer_(buffer), offsets_(offsets), sizes_(sizes), modes_(modes), heights_(heights), widths_(widths),
          max_pixels_(max_pixels), pool_(std::make_unique<ThreadPool>(threads == 0 ? 1 : threads, checked_nice(nice))) {
        size_t n = offsets.shape(0);
        if (sizes.shape(0) != n || modes.shape(0) != n || heights.shape(0) != n || widths.shape(0) != n)
            fail_value("ImageGather: offsets, sizes, modes, heights and widths must have one entry per sample (got " +
                       std::to_string(n) + ", " + std::to_string(sizes.shape(0)) + ", " + std::to_string(modes.shape(0)) +
                       ", " + std::to_string(heights.shape(0)) + ", " + std::to_string(widths.shape(0)) + ")");
        for (size_t i = 0; i < n; ++i) validate_sample(i);
    }

    size_t num_samples() const { return offsets_.shape(0); }
    size_t threads() const { return pool_->size(); }
    int nice() const { return pool_->nice(); }
    uint64_t max_pixels() const { return max_pixels_; }

    void gather(ROArray1D<int64_t> ids, Batch4D out, size_t max_threads, ROArray1D<uint8_t> flips) {
        check_out(ids, out, "gather");
        const uint8_t *flip = check_flips(ids, flips, "gather");
        const int out_h = int(out.shape(1)), out_w = int(out.shape(2));
        const size_t stride = size_t(out_h) * out_w * 3;
        const int64_t *id = ids.data();
        uint8_t *dst = out.data();
        GilReleased no_gil;
        run(ids.shape(0), max_threads, [&](size_t b) {
            int64_t s = checked_id(id[b], b);
            if (heights_.data()[s] != uint32_t(out_h) || widths_.data()[s] != uint32_t(out_w))
                fail_value("gather: " + sample_name(s) + " is " + std::to_string(heights_.data()[s]) + "x" +
                           std::to_string(widths_.data()[s]) + " but the batch is " + std::to_string(out_h) + "x" +
                           std::to_string(out_w) + "; all images of a batch must share a shape (use a resized crop "
                           "for datasets with several sizes)");
            const uint8_t *src = buffer_.data() + offsets_.data()[s];
            JpegRegionOwner decoded;
            if (modes_.data()[s] != MODE_RAW) {
                decode(s, JpegRequest{}, decoded.region);  // the whole image, checked to be out_h x out_w
                src = decoded.region.pixels;
            }
            if (flip && flip[b]) {
                for (int y = 0; y < out_h; ++y)
                    copy_row(src + size_t(y) * out_w * 3, dst + b * stride + size_t(y) * out_w * 3, out_w, true);
            } else {
                std::memcpy(dst + b * stride, src, stride);
            }
        });
    }

    void gather_crops(ROArray1D<int64_t> ids, Crops2D crops, Batch4D out, size_t max_threads,
                      ROArray1D<uint8_t> flips, bool antialias) {
        check_out(ids, out, "gather_crops");
        const uint8_t *flip = check_flips(ids, flips, "gather_crops");
        if (crops.shape(0) != ids.shape(0) || crops.shape(1) != 4)
            fail_value("gather_crops: crops must be int32 [B, 4] (top, left, height, width) with B = len(ids) = " +
                       std::to_string(ids.shape(0)));
        const int out_h = int(out.shape(1)), out_w = int(out.shape(2));
        const size_t stride = size_t(out_h) * out_w * 3;
        const int64_t *id = ids.data();
        const int32_t *crop = crops.data();
        uint8_t *dst = out.data();
        GilReleased no_gil;
        run(ids.shape(0), max_threads, [&](size_t b) {
            int64_t s = checked_id(id[b], b);
            const int32_t *c = crop + b * 4;
            const int height = int(heights_.data()[s]), width = int(widths_.data()[s]);
            if (c[0] < 0 || c[1] < 0 || c[2] <= 0 || c[3] <= 0 || int64_t(c[0]) + c[2] > height ||
                int64_t(c[1]) + c[3] > width)
                fail_value("gather_crops: crop (top=" + std::to_string(c[0]) + ", left=" + std::to_string(c[1]) +
                           ", h=" + std::to_string(c[2]) + ", w=" + std::to_string(c[3]) + ") of batch row " +
                           std::to_string(b) + " is outside " + sample_name(s) + " (" + std::to_string(height) +
                           "x" + std::to_string(width) + ")");
            if (modes_.data()[s] == MODE_RAW) {
                Window win{buffer_.data() + offsets_.data()[s], height, width, double(c[0]), double(c[1]),
                           double(c[2]), double(c[3])};
                resize_window(win, dst + b * stride, out_h, out_w, flip && flip[b], antialias);
                return;
            }
            JpegRequest request;  // decode only the window, downscaled in the IDCT when it is >= 2x the output
            request.top = c[0], request.left = c[1], request.height = c[2], request.width = c[3];
            request.min_height = out_h, request.min_width = out_w;
            JpegRegionOwner decoded;
            decode(s, request, decoded.region);
            const JpegRegion &r = decoded.region;
            resize_window(Window{r.pixels, r.rows, r.cols, r.top, r.left, r.height, r.width}, dst + b * stride,
                          out_h, out_w, flip && flip[b], antialias);
        });
    }

private:
    // Every byte range must lie inside the file, and raw images must hold h*w*3 bytes: after
    // this check, the per-batch paths only need to check sample ids.
    void validate_sample(size_t i) const {
        uint64_t off = offsets_.data()[i], size = sizes_.data()[i], total = buffer_.shape(0);
        if (off > total || size > total - off)
            fail_index("ImageGather: " + sample_name(int64_t(i)) + " has byte range [" + std::to_string(off) + ", " +
                       std::to_string(off) + "+" + std::to_string(size) + ") outside the " + std::to_string(total) +
                       "-byte store");
        uint8_t mode = modes_.data()[i];
        uint64_t h = heights_.data()[i], w = widths_.data()[i];
        if (mode != MODE_RAW && mode != MODE_JPEG)
            fail_value("ImageGather: " + sample_name(int64_t(i)) + " has image mode " + std::to_string(mode) +
                       " (expected 0 = jpg or 1 = raw)");
        if (h == 0 || w == 0)
            fail_value("ImageGather: " + sample_name(int64_t(i)) + " has an empty image shape " + std::to_string(h) +
                       "x" + std::to_string(w));
        if (mode == MODE_RAW && size < h * w * 3)
            fail_value("ImageGather: raw " + sample_name(int64_t(i)) + " is " + std::to_string(h) + "x" +
                       std::to_string(w) + "x3 but its data holds only " + std::to_string(size) + " bytes");
    }

    static int checked_nice(int nice) {  // before the pool starts its workers
        if (nice < 0 || nice > 19) fail_value("ImageGather: nice must be in [0, 19], got " + std::to_string(nice));
        return nice;
    }

    int64_t checked_id(int64_t s, size_t row) const {
        if (s < 0 || uint64_t(s) >= num_samples())
            fail_index("sample id " + std::to_string(s) + " at batch row " + std::to_string(row) +
                       " is out of range for a store of " + std::to_string(num_samples()) + " samples");
        return s;
    }

    void check_out(const ROArray1D<int64_t> &ids, const Batch4D &out, const char *fn) const {
        if (out.shape(3) != 3)
            fail_value(std::string(fn) + ": out must be uint8 [B, H, W, 3], got last dimension " +
                       std::to_string(out.shape(3)));
        if (out.shape(0) < ids.shape(0))
            fail_value(std::string(fn) + ": out has room for " + std::to_string(out.shape(0)) + " images but ids has " +
                       std::to_string(ids.shape(0)));
        // the kernels index rows and columns with int (a side of 2^32 + k wrapped to k)
        if (out.shape(1) > MAX_OUT_SIDE || out.shape(2) > MAX_OUT_SIDE)
            fail_value(std::string(fn) + ": out images of " + std::to_string(out.shape(1)) + "x" +
                       std::to_string(out.shape(2)) + " exceed the largest side handled, " + std::to_string(MAX_OUT_SIDE));
    }
    static constexpr size_t MAX_OUT_SIDE = 1 << 20;

    // The optional per-row mirror flags (None: no flips): one uint8 per id, nonzero = mirror.
    static const uint8_t *check_flips(const ROArray1D<int64_t> &ids, const ROArray1D<uint8_t> &flips, const char *fn) {
        if (!flips.is_valid()) return nullptr;
        if (flips.shape(0) != ids.shape(0))
            fail_value(std::string(fn) + ": flips must hold one uint8 per id (" + std::to_string(ids.shape(0)) +
                       "), got " + std::to_string(flips.shape(0)));
        return flips.data();
    }

    // Decodes (part of) JPEG sample s. The header is checked against the metadata and the pixel
    // cap before the decoder allocates anything: a corrupted header must not make it allocate
    // (and fill) an image far larger than the one the metadata describes.
    void decode(int64_t s, JpegRequest request, JpegRegion &out) const {
        request.expect_height = heights_.data()[s];
        request.expect_width = widths_.data()[s];
        request.max_pixels = max_pixels_;
        std::string error;
        if (!decode_jpeg_region(buffer_.data() + offsets_.data()[s], sizes_.data()[s], request, out, error))
            fail_value("JPEG decode of " + sample_name(s) + " failed: " + error);
    }

    // One task per chunk of rows: few enough to keep pool overhead small, enough to balance.
    template <typename F>
    void run(size_t rows, size_t max_threads, F &&per_row) {
        size_t threads = max_threads == 0 ? pool_->size() : std::min(max_threads, pool_->size());
        size_t chunks = std::min(rows, threads * 4);
        if (chunks == 0) return;
        std::function<void(size_t)> task = [&](size_t c) {
            size_t begin = rows * c / chunks, end = rows * (c + 1) / chunks;
            for (size_t b = begin; b < end; ++b) per_row(b);
        };
        pool_->parallel_for(chunks, threads, task);
    }

    ROArray1D<uint8_t> buffer_;
    ROArray1D<uint64_t> offsets_, sizes_;
    ROArray1D<uint8_t> modes_;
    ROArray1D<uint32_t> heights_, widths_;
    uint64_t max_pixels_;
    std::unique_ptr<ThreadPool> pool_;
};

// One-off decode (tests, the converter's check of JPEGs it stores as they are): JPEG bytes ->
// uint8 [H, W, 3] numpy array; with min_height/min_width, DCT-downscaled (libjpeg-turbo) as far
// as keeps at least that size (a cheap full check of the entropy-coded data).
nb::ndarray<nb::numpy, uint8_t, nb::ndim<3>> decode_jpeg(ROArray1D<uint8_t> data, uint64_t max_pixels, int min_height,
                                                         int min_width) {
    std::string error;
    JpegRequest request;
    request.max_pixels = max_pixels;
    request.min_height = min_height;
    request.min_width = min_width;
    auto *owner = new JpegRegionOwner();
    bool ok;
    {
        GilReleased no_gil;
        ok = decode_jpeg_region(data.data(), data.shape(0), request, owner->region, error);
    }
    if (!ok) {
        delete owner;
        fail_value("decode_jpeg: " + error);
    }
    const JpegRegion &r = owner->region;
    nb::capsule capsule(owner, [](void *p) noexcept { delete static_cast<JpegRegionOwner *>(p); });
    return nb::ndarray<nb::numpy, uint8_t, nb::ndim<3>>(r.pixels, {size_t(r.rows), size_t(r.cols), 3}, capsule);
}

// The decode-time limits alone (scan count, scans x pixels, too little data for the claimed
// size), for JPEGs another decoder reads: the converter decodes with PIL, which has no such
// limits (its memory is bounded by the pixel limit the caller checks). "" when the stream passes
// (or its structure is unclear), else the reason.
std::string check_jpeg_cost(ROArray1D<uint8_t> data, uint64_t max_pixels) {
    std::string error;
    JpegRequest request;
    request.max_pixels = max_pixels;
    request.limit_coefficients = false;
    GilReleased no_gil;
    check_jpeg_stream(data.data(), data.shape(0), request, error);
    return error;
}

}  // namespace

void bind_loader(nb::module_ &m) {
    nb::class_<ImageGather>(m, "ImageGather",
                            "Assembles batches of one image field of a memory-mapped store (see csrc/gather.cpp).")
        .def(nb::init<ROArray1D<uint8_t>, ROArray1D<uint64_t>, ROArray1D<uint64_t>, ROArray1D<uint8_t>,
                      ROArray1D<uint32_t>, ROArray1D<uint32_t>, size_t, uint64_t, int>(),
             nb::arg("buffer"), nb::arg("offsets"), nb::arg("sizes"), nb::arg("modes"), nb::arg("heights"),
             nb::arg("widths"), nb::arg("threads") = 1, nb::arg("max_pixels") = DEFAULT_MAX_PIXELS,
             nb::arg("nice") = 0)
        .def_prop_ro("num_samples", &ImageGather::num_samples)
        .def_prop_ro("threads", &ImageGather::threads)
        .def_prop_ro("nice", &ImageGather::nice)
        .def_prop_ro("max_pixels", &ImageGather::max_pixels)
        .def("gather", &ImageGather::gather, nb::arg("ids"), nb::arg("out"), nb::arg("max_threads") = 0,
             nb::arg("flips").none() = nb::none(),
             "Copy/decode samples ids into out[:len(ids)] (uint8 [B, H, W, 3]); all must be HxW. Rows whose "
             "flips entry is nonzero are mirrored left-right.")
        .def("gather_crops", &ImageGather::gather_crops, nb::arg("ids"), nb::arg("crops"), nb::arg("out"),
             nb::arg("max_threads") = 0, nb::arg("flips").none() = nb::none(), nb::arg("antialias") = true,
             "Read/decode samples ids, crop crops[b] = (top, left, h, w) and resize bilinearly into out[b], "
             "mirrored left-right where flips[b] is nonzero; a window that shrinks is filtered (antialiased, "
             "as PIL's BILINEAR) unless antialias is False.");
    m.def("decode_jpeg", &decode_jpeg, nb::arg("data"), nb::arg("max_pixels") = DEFAULT_MAX_PIXELS,
          nb::arg("min_height") = 0, nb::arg("min_width") = 0,
          "Decode JPEG bytes (uint8 1-D) to uint8 [H, W, 3] RGB.");
    m.def("check_jpeg_cost", &check_jpeg_cost, nb::arg("data"), nb::arg("max_pixels") = DEFAULT_MAX_PIXELS,
          "'' if decoding these JPEG bytes stays within the decode-time limits (scans, scans x pixels, "
          "data for the claimed size), else why not.");
    m.attr("JPEG_BACKEND") = jpeg_backend();
    m.attr("SIMD") = simd_paths();
    m.attr("DEFAULT_MAX_PIXELS") = DEFAULT_MAX_PIXELS;
}

}  // namespace fastprune
