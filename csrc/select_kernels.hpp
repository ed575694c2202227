// The hot loops of top-k-plus-random selection, free of Python/nanobind so that they can be timed
// and profiled from a plain C++ driver. select.cpp binds them.
//
// Definition (what the test oracles in tests/test_select_kernels.py implement):
//   1. T = the k_top-th largest score (floats ordered as numbers, -0.0 == +0.0; NaN rejected);
//      every score > T is taken; of the `equal` scores == T, `k_top - above` are taken: the
//      uniform subset of their ranks (in index order) given by Floyd's algorithm (subset_bits)
//      on RNG stream "tie".
//   2. Of the n - k_top items not taken in 1, k_rand are taken: Floyd's subset of their ranks on
//      stream "random".
//   Output: the taken indices, ascending. Depends only on (scores, k_top, k_rand, seed, epoch,
//   stream), not on how it is computed.
//
// How it is computed fast:
//   - T: a random sample of the scores brackets T; one streaming SSE2 pass counts the scores
//     above, at and inside the bracket and copies the (few) inside; std::nth_element on the copy
//     gives T exactly. If the bracket misses, or holds too many scores, an exact two-pass radix
//     histogram is the fallback, so the sample only affects speed, never the result.
//   - The uniform subsets depend only on (population size, count, stream), not on the scores,
//     so they are drawn into bitmaps with O(min(k, total - k)) random numbers (on the other
//     thread while the scores are read).
//   - One pass (the common case): the same streaming pass marks the scores above the bracket in
//     a bitmap and copies those inside with their indices; marking the copies above T and the
//     chosen ties completes the top-k bitmap, and the output is written from the bitmaps, so the
//     scores are read once. When ties crowd the bracket's ends, a second (emit) pass compares
//     every score with T instead.
//   - Output words are built 64 positions at a time: the subset bits of the non-top positions
//     put in place by a nibble-table "parallel deposit", set bits written out (dense words by a
//     byte table, without a branch per bit).
//   - The scores may be float32, or float16/bfloat16 bits (a 16-bit score table's column): every
//     pass reads them through a ScoreSource, which widens 16-bit scores a chunk at a time, so
//     they need no float32 copy (4 bytes per sample) and select exactly as widened float32 would.
#pragma once
#include "half.hpp"
#include "rng.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#endif

namespace fastprune {
namespace select_detail {

// Maps a float to a uint32 whose unsigned order is the float order (-0.0 folded into +0.0).
inline uint32_t sortable_key(float x) {
    x = x + 0.0f;
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    uint32_t negative = uint32_t(int32_t(bits) >> 31);  // all ones for negatives (branch-free: vectorises)
    return bits ^ (negative | 0x80000000u);
}

// The inverse of sortable_key (for non-NaN keys).
inline float key_to_float(uint32_t key) {
    uint32_t bits = (key & 0x80000000u) ? (key ^ 0x80000000u) : ~key;
    float x;
    std::memcpy(&x, &bits, sizeof x);
    return x;
}

// ---- where the scores come from ------------------------------------------------------------

// Widened scores are handed out in chunks of this many (16 KiB of floats on the stack). A multiple
// of 4096, so that the 64-score words and 4096-score blocks of every pass, counted from the start
// of its range, fall as they do on a float array, and so does every choice made per block (a copy
// buffer filling up): the widened path takes the float path's steps, not only its result.
inline constexpr size_t kChunk = 4096;

// n scores stored as S::T (half.hpp's storage policies): float32 read in place, float16/bfloat16
// bits widened exactly, one chunk at a time, into a buffer on the calling thread's stack.
template <class S>
struct ScoreSource {
    const typename S::T *data;
    size_t n;

    float at(size_t i) const { return S::widen(data[i]); }
    const void *address(size_t i) const { return data + i; }

    // Calls f(x, offset, count) on consecutive pieces of [begin, end): x[j] is score
    // begin + offset + j as a float. Float32 is one piece, the array itself.
    template <class F>
    void pieces(size_t begin, size_t end, F &&f) const {
        if constexpr (std::is_same_v<typename S::T, float>) {
            if (begin < end) f(data + begin, size_t(0), end - begin);
        } else {
            float chunk[kChunk];
            for (size_t offset = 0; begin + offset < end; offset += kChunk) {
                size_t count = std::min(kChunk, end - begin - offset);
                S::widen_n(data + begin + offset, count, chunk);
                f(static_cast<const float *>(chunk), offset, count);
            }
        }
    }
};
using FloatScores = ScoreSource<Float32Storage>;

// The k-th largest score (1-based) as a key, and how many scores lie strictly above / equal.
struct Threshold {
    uint32_t key;
    uint64_t above;  // # keys > key
    uint64_t equal;  // # keys == key
};

// Index of the first NaN, or -1.
template <class Source>
inline int64_t first_nan(const Source &scores) {
    int64_t found = -1;
    scores.pieces(0, scores.n, [&](const float *x, size_t offset, size_t count) {
        for (size_t t = 0; t < count && found < 0; ++t)
            if (std::isnan(x[t])) found = int64_t(offset + t);
    });
    return found;
}

// Exact: two histogram passes (high 16 bits of the key, then the low 16 bits inside the bucket
// that holds the k-th largest). Scores must be NaN-free. 1 <= k <= n.
template <class Source>
inline Threshold kth_largest_histogram(const Source &scores, uint64_t k) {
    // Four interleaved histograms break the store-to-load chain when many keys are equal.
    std::vector<uint32_t> hist(4 * 65536, 0);
    scores.pieces(0, scores.n, [&](const float *x, size_t, size_t count) {
        size_t i = 0;
        for (; i + 4 <= count; i += 4)
            for (int j = 0; j < 4; ++j) ++hist[j * 65536 + (sortable_key(x[i + j]) >> 16)];
        for (; i < count; ++i) ++hist[sortable_key(x[i]) >> 16];
    });
    uint64_t above = 0;
    uint32_t high = 65535;
    for (;; --high) {
        uint64_t count = uint64_t(hist[high]) + hist[65536 + high] + hist[2 * 65536 + high] + hist[3 * 65536 + high];
        if (above + count >= k) break;
        above += count;
    }
    std::vector<uint64_t> low_hist(65536, 0);
    scores.pieces(0, scores.n, [&](const float *x, size_t, size_t count) {
        for (size_t t = 0; t < count; ++t) {
            uint32_t key = sortable_key(x[t]);
            if ((key >> 16) == high) ++low_hist[key & 0xFFFFu];
        }
    });
    uint32_t low = 65535;
    for (;; --low) {
        if (above + low_hist[low] >= k) break;
        above += low_hist[low];
    }
    return {(high << 16) | low, above, low_hist[low]};
}

// Exact, for small n: copy the keys and nth_element. Scores must be NaN-free. 1 <= k <= n.
template <class Source>
inline Threshold kth_largest_copy(const Source &scores, uint64_t k) {
    const size_t n = scores.n;
    std::vector<uint32_t> keys(n);
    scores.pieces(0, n, [&](const float *x, size_t offset, size_t count) {
        for (size_t i = 0; i < count; ++i) keys[offset + i] = sortable_key(x[i]);
    });
    std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<uint32_t>());
    uint32_t key = keys[k - 1];
    uint64_t above = 0, equal = 0;
    for (size_t i = 0; i < n; ++i) {
        above += keys[i] > key;
        equal += keys[i] == key;
    }
    return {key, above, equal};
}

struct ThresholdResult {
    Threshold th;
    int64_t nan_index;  // >= 0: scores[nan_index] is NaN and th is meaningless
    int path;           // 0 copy, 1 bracket, 2 bracket with a single key, 3 histogram fallback
};

// ---- bit helpers ---------------------------------------------------------------------------

inline int ctz64(uint64_t x) {  // x != 0
#if defined(_MSC_VER) && !defined(__clang__)
    unsigned long i;
    _BitScanForward64(&i, x);
    return int(i);
#else
    return __builtin_ctzll(x);
#endif
}

// A hint to load the cache line of p (no effect on results).
inline void prefetch(const void *p) {
#if FASTPRUNE_SSE2
    _mm_prefetch(static_cast<const char *>(p), _MM_HINT_T0);
#else
    (void)p;
#endif
}

// Portable popcount (the POPCNT instruction is not in the x86-64 baseline).
inline uint64_t popcount64(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (x * 0x0101010101010101ULL) >> 56;
}

// dep[m][v]: the low bits of v placed, in order, at the set bits of the nibble m (a 4-bit
// "parallel deposit"); pop[m]: the number of set bits of m.
struct NibbleTables {
    uint8_t dep[16][16];
    uint8_t pop[16];
    constexpr NibbleTables() : dep(), pop() {
        for (int m = 0; m < 16; ++m) {
            pop[m] = uint8_t((m & 1) + ((m >> 1) & 1) + ((m >> 2) & 1) + ((m >> 3) & 1));
            for (int v = 0; v < 16; ++v) {
                int r = 0, k = 0;
                for (int b = 0; b < 4; ++b)
                    if (m & (1 << b)) r |= ((v >> k++) & 1) << b;
                dep[m][v] = uint8_t(r);
            }
        }
    }
};
inline constexpr NibbleTables kNibble{};

// The consecutive low bits of `stream` placed, in order, at the set bits of `mask` (what the
// BMI2 instruction PDEP does, which baseline x86-64 lacks). Uses popcount(mask) bits of stream.
inline uint64_t deposit(uint64_t mask, uint64_t stream) {
    uint64_t r = 0;
    for (int nib = 0; nib < 64; nib += 4) {
        unsigned m = unsigned(mask >> nib) & 15u;
        r |= uint64_t(kNibble.dep[m][stream & 15u]) << nib;
        stream >>= kNibble.pop[m];
    }
    return r;
}

// 64 bits of a bitmap starting at bit `offset`; words[offset / 64 + 1] must be readable.
inline uint64_t bits_at(const uint64_t *words, uint64_t offset) {
    size_t i = size_t(offset >> 6);
    unsigned s = unsigned(offset & 63);
    return (words[i] >> s) | ((words[i + 1] << 1) << (63 - s));
}

// A word array (no zero-fill of the body) with two zero words past the end, so that bits_at may
// read at any offset up to the bit count.
struct Bitmap {
    std::unique_ptr<uint64_t[]> words;
    explicit Bitmap(uint64_t bits) {
        size_t nwords = size_t((bits + 63) / 64);
        words.reset(new uint64_t[nwords + 2]);
        words[nwords] = words[nwords + 1] = 0;
    }
    uint64_t *data() { return words.get(); }
};

// Comparison masks of up to 64 floats against t: bit j set iff x[j] OP t.
enum class Cmp { Ge, Gt, Eq };

template <Cmp kOp>
inline bool compare(float x, float t) {
    if constexpr (kOp == Cmp::Ge) return x >= t;
    else if constexpr (kOp == Cmp::Gt) return x > t;
    else return x == t;
}

template <Cmp kOp>
inline uint64_t mask_of(const float *x, size_t count, float t) {
    uint64_t m = 0;
    for (size_t j = 0; j < count; ++j) m |= uint64_t(compare<kOp>(x[j], t)) << j;
    return m;
}

template <Cmp kOp>
inline uint64_t mask64(const float *x, float t) {
#if FASTPRUNE_SSE2
    const __m128 tv = _mm_set1_ps(t);
    uint64_t m = 0;
    for (int j = 0; j < 64; j += 16) {
        __m128 a = _mm_loadu_ps(x + j), b = _mm_loadu_ps(x + j + 4), c = _mm_loadu_ps(x + j + 8),
               d = _mm_loadu_ps(x + j + 12);
        int ma, mb, mc, md;
        if constexpr (kOp == Cmp::Ge) {
            ma = _mm_movemask_ps(_mm_cmpge_ps(a, tv)), mb = _mm_movemask_ps(_mm_cmpge_ps(b, tv));
            mc = _mm_movemask_ps(_mm_cmpge_ps(c, tv)), md = _mm_movemask_ps(_mm_cmpge_ps(d, tv));
        } else if constexpr (kOp == Cmp::Gt) {
            ma = _mm_movemask_ps(_mm_cmpgt_ps(a, tv)), mb = _mm_movemask_ps(_mm_cmpgt_ps(b, tv));
            mc = _mm_movemask_ps(_mm_cmpgt_ps(c, tv)), md = _mm_movemask_ps(_mm_cmpgt_ps(d, tv));
        } else {
            ma = _mm_movemask_ps(_mm_cmpeq_ps(a, tv)), mb = _mm_movemask_ps(_mm_cmpeq_ps(b, tv));
            mc = _mm_movemask_ps(_mm_cmpeq_ps(c, tv)), md = _mm_movemask_ps(_mm_cmpeq_ps(d, tv));
        }
        m |= uint64_t(unsigned(ma | (mb << 4) | (mc << 8) | (md << 12))) << j;
    }
    return m;
#else
    return mask_of<kOp>(x, 64, t);
#endif
}

// Appends base + j for every set bit j of `taken`, ascending.
inline size_t write_bits(int64_t *out, size_t pos, uint64_t base, uint64_t taken) {
    while (taken) {
        out[pos++] = int64_t(base + uint64_t(ctz64(taken)));
        taken &= taken - 1;
    }
    return pos;
}

// offset[b]: the positions of the set bits of the byte b, ascending (the rest 0); 16 KiB.
struct ByteExpansion {
    int64_t offset[256][8];
    constexpr ByteExpansion() : offset() {
        for (int b = 0; b < 256; ++b)
            for (int j = 0, k = 0; j < 8; ++j)
                if (b & (1 << j)) offset[b][k++] = j;
    }
};
inline constexpr ByteExpansion kByteExpansion{};

// write_bits for dense words, without a branch per bit: every byte of `taken` writes 8 values
// (its set bits' indices, then filler) and advances by its popcount, so up to 7 slots past the
// returned pos get filler, which later words overwrite.
inline size_t write_bits_dense(int64_t *out, size_t pos, uint64_t base, uint64_t taken) {
    for (int byte = 0; byte < 8; ++byte, base += 8, taken >>= 8) {
        unsigned b = unsigned(taken & 0xFF);
        const int64_t *offset = kByteExpansion.offset[b];
#if FASTPRUNE_SSE2
        const __m128i bv = _mm_set1_epi64x(int64_t(base));
        for (int j = 0; j < 8; j += 2)
            _mm_storeu_si128(reinterpret_cast<__m128i *>(out + pos + j),
                             _mm_add_epi64(bv, _mm_loadu_si128(reinterpret_cast<const __m128i *>(offset + j))));
#else
        for (int j = 0; j < 8; ++j) out[pos + j] = int64_t(base) + offset[j];
#endif
        pos += kNibble.pop[b & 15] + kNibble.pop[b >> 4];
    }
    return pos;
}

// write_bits into out[pos, limit), where `limit` is where this part of the output ends: the
// branch-free form for dense words whose filler stays below the limit (later words of the same
// part overwrite it).
inline size_t write_word(int64_t *out, size_t pos, uint64_t base, uint64_t taken, size_t limit) {
    uint64_t count = popcount64(taken);
    if (count >= 16 && pos + count + 8 <= limit) return write_bits_dense(out, pos, base, taken);
    return write_bits(out, pos, base, taken);
}

// ---- two threads ---------------------------------------------------------------------------

// Below this many scores everything runs on the calling thread (a thread start costs ~50 us).
inline constexpr size_t kParallelMin = size_t(1) << 20;

// The number of threads to use for n scores: `threads` (0 = min(2, hardware threads)), capped at 2;
// 1 below kParallelMin. The result never depends on it.
inline unsigned pick_threads(size_t n, unsigned threads) {
    if (n < kParallelMin) return 1;
    if (threads == 0) threads = std::max(1u, std::min(2u, std::thread::hardware_concurrency()));
    return std::min(threads, 2u);
}

// Runs f0() and f1(), on two threads when `parallel` (f1 on a new thread), else in turn; falls back
// to running both here if the thread cannot be started. f0 and f1 must not throw.
template <typename F0, typename F1>
inline void run_two(bool parallel, F0 &&f0, F1 &&f1) {
    if (parallel) {
        std::thread worker;
        try {
            worker = std::thread(std::forward<F1>(f1));
        } catch (...) {
            parallel = false;
        }
        if (parallel) {
            f0();
            worker.join();
            return;
        }
    }
    f0();
    f1();
}

// ---- the threshold -------------------------------------------------------------------------

// One pass over the scores against a bracket lo <= hi: how many are > hi, == hi, strictly
// inside, == lo, whether any is NaN; the strictly-inside ones are copied to cand (up to cap,
// else `overflow`).
struct BracketCounts {
    uint64_t above = 0, at_hi = 0, inside = 0, at_lo = 0;
    size_t stored = 0;
    bool overflow = false, nan = false;
};

inline void bracket_scalar(const float *x, size_t count, float lo, float hi, float *cand, size_t cap,
                           BracketCounts &c) {
    uint64_t above = 0, at_hi = 0, inside = 0, at_lo = 0;
    bool nan = false;
    size_t pos = c.stored;
    bool store = !c.overflow && c.stored + count <= cap;
    for (size_t i = 0; i < count; ++i) {
        float v = x[i];
        nan |= v != v;
        above += v > hi;
        at_hi += v == hi;
        at_lo += v == lo;
        bool in = (v > lo) & (v < hi);
        inside += in;
        if (store) {
            cand[pos] = v;
            pos += in;
        }
    }
    c.above += above, c.at_hi += at_hi, c.inside += inside, c.at_lo += at_lo;
    c.nan |= nan;
    if (store) c.stored = pos;
    else if (inside) c.overflow = true;
}

// bracket_pass and bracket_pass_fast add to c: a range may be passed in pieces.
inline void bracket_pass(const float *scores, size_t n, float lo, float hi, float *cand, size_t cap,
                         BracketCounts &c) {
    constexpr size_t kBlock = 4096;  // int32 lane counters cannot overflow within a block
    size_t b = 0;
#if FASTPRUNE_SSE2
    const __m128 lv = _mm_set1_ps(lo), hv = _mm_set1_ps(hi);
    for (; b + kBlock <= n; b += kBlock) {
        const float *x = scores + b;
        __m128i above = _mm_setzero_si128(), at_hi = above, at_lo = above, inside = above;
        __m128 nan = _mm_setzero_ps();
        size_t pos = c.stored;
        bool store = !c.overflow && c.stored + kBlock <= cap;
        for (size_t j = 0; j < kBlock; j += 4) {
            __m128 v = _mm_loadu_ps(x + j);
            nan = _mm_or_ps(nan, _mm_cmpunord_ps(v, v));
            above = _mm_sub_epi32(above, _mm_castps_si128(_mm_cmpgt_ps(v, hv)));
            at_hi = _mm_sub_epi32(at_hi, _mm_castps_si128(_mm_cmpeq_ps(v, hv)));
            at_lo = _mm_sub_epi32(at_lo, _mm_castps_si128(_mm_cmpeq_ps(v, lv)));
            __m128 in = _mm_and_ps(_mm_cmpgt_ps(v, lv), _mm_cmplt_ps(v, hv));
            inside = _mm_sub_epi32(inside, _mm_castps_si128(in));
            int m = _mm_movemask_ps(in);
            if (m && store) {
                for (int l = 0; l < 4; ++l) {
                    cand[pos] = x[j + size_t(l)];
                    pos += (m >> l) & 1;
                }
            }
        }
        alignas(16) int32_t lanes[4][4];
        _mm_store_si128(reinterpret_cast<__m128i *>(lanes[0]), above);
        _mm_store_si128(reinterpret_cast<__m128i *>(lanes[1]), at_hi);
        _mm_store_si128(reinterpret_cast<__m128i *>(lanes[2]), at_lo);
        _mm_store_si128(reinterpret_cast<__m128i *>(lanes[3]), inside);
        uint64_t sums[4];
        for (int r = 0; r < 4; ++r) sums[r] = uint64_t(lanes[r][0]) + lanes[r][1] + lanes[r][2] + lanes[r][3];
        c.above += sums[0], c.at_hi += sums[1], c.at_lo += sums[2], c.inside += sums[3];
        c.nan |= _mm_movemask_ps(nan) != 0;
        if (store) c.stored = pos;
        else if (sums[3]) c.overflow = true;
    }
#endif
    for (; b < n; b += kBlock) bracket_scalar(scores + b, std::min(kBlock, n - b), lo, hi, cand, cap, c);
}

// The common case, with fewer counters: how many scores are > hi and how many in [lo, hi]
// (in `inside`; at_hi = at_lo = 0), copying the latter when `store`. Ties at the bracket's ends
// are copied like any score inside it, so kth_largest uses bracket_pass when the sample shows
// many of them.
inline void bracket_fast_scalar(const float *x, size_t count, float lo, float hi, float *cand, size_t cap,
                                bool store, BracketCounts &c) {
    uint64_t above = 0, inside = 0;
    bool nan = false;
    size_t pos = c.stored;
    store = store && !c.overflow && c.stored + count <= cap;
    for (size_t i = 0; i < count; ++i) {
        float v = x[i];
        nan |= v != v;
        above += v > hi;
        bool in = (v >= lo) & (v <= hi);
        inside += in;
        if (store) {
            cand[pos] = v;
            pos += in;
        }
    }
    c.above += above, c.inside += inside;
    c.nan |= nan;
    if (store) c.stored = pos;
    else if (inside) c.overflow = true;
}

inline void bracket_pass_fast(const float *scores, size_t n, float lo, float hi, float *cand, size_t cap,
                              bool store, BracketCounts &c) {
    constexpr size_t kBlock = 4096;
    size_t b = 0;
#if FASTPRUNE_SSE2
    const __m128 lv = _mm_set1_ps(lo), hv = _mm_set1_ps(hi);
    for (; b + kBlock <= n; b += kBlock) {
        const float *x = scores + b;
        __m128i above = _mm_setzero_si128(), at_least_lo = above;
        __m128 nan = _mm_setzero_ps();
        size_t pos = c.stored;
        bool store_block = store && !c.overflow && c.stored + kBlock <= cap;
        for (size_t j = 0; j < kBlock; j += 4) {
            __m128 v = _mm_loadu_ps(x + j);
            nan = _mm_or_ps(nan, _mm_cmpunord_ps(v, v));
            __m128 gt = _mm_cmpgt_ps(v, hv), ge = _mm_cmpge_ps(v, lv);
            above = _mm_sub_epi32(above, _mm_castps_si128(gt));
            at_least_lo = _mm_sub_epi32(at_least_lo, _mm_castps_si128(ge));
            int m = _mm_movemask_ps(_mm_andnot_ps(gt, ge));
            if (m && store_block) {
                for (int l = 0; l < 4; ++l) {
                    cand[pos] = x[j + size_t(l)];
                    pos += (m >> l) & 1;
                }
            }
        }
        alignas(16) int32_t lanes[2][4];
        _mm_store_si128(reinterpret_cast<__m128i *>(lanes[0]), above);
        _mm_store_si128(reinterpret_cast<__m128i *>(lanes[1]), at_least_lo);
        uint64_t a = uint64_t(lanes[0][0]) + lanes[0][1] + lanes[0][2] + lanes[0][3];
        uint64_t inside = uint64_t(lanes[1][0]) + lanes[1][1] + lanes[1][2] + lanes[1][3] - a;
        c.above += a, c.inside += inside;
        c.nan |= _mm_movemask_ps(nan) != 0;
        if (store_block) c.stored = pos;
        else if (inside) c.overflow = true;
    }
#endif
    for (; b < n; b += kBlock)
        bracket_fast_scalar(scores + b, std::min(kBlock, n - b), lo, hi, cand, cap, store, c);
}

// Below this many scores the threshold is found by copy + nth_element, without a sample.
inline constexpr size_t kCopyBelow = 16384;

// Scores in [lo, hi] (lo_key/hi_key as sortable keys) bracket the k-th largest with high
// probability; `fast`: few sample elements equal a bound, so ties at the ends can be copied like
// any score inside; cap: room for the copies of scores inside, per pass.
struct Bracket {
    uint32_t lo_key, hi_key;
    float lo, hi;
    bool fast;
    size_t cap;
};

// The bracket from a stratified random sample of m scores: its elements at descending ranks
// centre -+ margin (~4.5 standard deviations of the sample rank of the k-th largest).
template <class Source>
inline Bracket choose_bracket(const Source &scores, uint64_t k, const CounterRng &sample_rng, size_t sample_size,
                              double sigmas) {
    const size_t n = scores.n;
    size_t m = sample_size ? sample_size : std::min<size_t>(65536, std::max<size_t>(4096, n / 64));
    std::vector<uint32_t> sample(m);
    for (size_t j = 0; j < m; ++j) {  // stratified: one position in each m-th of the array, in order
        uint64_t offset = ((sample_rng.bits(j) >> 32) * uint64_t(n)) >> 32;  // n < 2^32, m < 2^25
        sample[j] = uint32_t((uint64_t(j) * n + offset) / m);
    }
    // The positions first, then the loads, prefetched ahead: each is a cache miss.
    constexpr size_t kAhead = 32;
    for (size_t j = 0; j < std::min(m, kAhead); ++j) prefetch(scores.address(sample[j]));
    for (size_t j = 0; j < m; ++j) {
        if (j + kAhead < m) prefetch(scores.address(sample[j + kAhead]));
        sample[j] = sortable_key(scores.at(sample[j]));
    }
    double q = double(k) / double(n);
    double centre = q * double(m) - 0.5;
    double margin = sigmas * std::sqrt(double(m) * q * (1.0 - q)) + (sigmas > 0 ? 4.0 : 0.0);
    double hi_rank = std::floor(centre - margin), lo_rank = std::ceil(centre + margin);
    const uint32_t kPlusInf = 0xFF800000u, kMinusInf = 0x007FFFFFu;
    uint32_t hi_key = kPlusInf, lo_key = kMinusInf;
    auto desc = std::greater<uint32_t>();
    size_t from = 0;
    if (hi_rank >= 0) {
        std::nth_element(sample.begin(), sample.begin() + size_t(hi_rank), sample.end(), desc);
        hi_key = sample[size_t(hi_rank)];
        from = size_t(hi_rank);
    }
    if (lo_rank < double(m)) {
        size_t at = std::max(size_t(lo_rank), from);
        std::nth_element(sample.begin() + from, sample.begin() + at, sample.end(), desc);
        lo_key = sample[at];
    }
    // A NaN in the sample gives a NaN bound; harmless, as the pass then reports the NaN.
    hi_key = std::min(hi_key, 0xFFC00000u);
    size_t expected = size_t(double(n) * (2.0 * margin + 2.0) / double(m)) + 1;
    // Many sample elements equal to a bound mean many ties there: count them apart, not copy them.
    size_t ends = 0;
    for (size_t j = 0; j < m; ++j) ends += (sample[j] == hi_key) | (sample[j] == lo_key);
    const bool fast = lo_key == hi_key || ends <= std::max<size_t>(8, m / 256);
    return {lo_key, hi_key, key_to_float(lo_key), key_to_float(hi_key), fast, std::min(n, 2 * expected + 8192)};
}

// The threshold when it is the r-th largest (0-based) of the `stored` copies v of the scores
// inside the bracket, `before` scores lying above them. Reorders v.
inline Threshold threshold_among(float *v, size_t stored, size_t r, uint64_t before) {
    std::nth_element(v, v + r, v + stored, std::greater<float>());
    float t = v[r];
    uint64_t gt = 0, eq = 0;
    for (size_t i = 0; i < stored; ++i) {
        gt += v[i] > t;
        eq += v[i] == t;
    }
    return {sortable_key(t), before + gt, eq};
}

// The k-th largest key (1 <= k <= n), or the first NaN. `sample_rng` only picks the sample that
// brackets the threshold: it changes the speed, never the result.
// (Tests shrink the sample and the margin to force the exact fallback: sample_size, sigmas.)
template <class Source>
inline ThresholdResult kth_largest(const Source &scores, uint64_t k, const CounterRng &sample_rng,
                                   size_t sample_size = 0, double sigmas = 4.5, unsigned threads = 1) {
    const size_t n = scores.n;
    if (n < kCopyBelow && sample_size == 0) {
        int64_t bad = first_nan(scores);
        if (bad >= 0) return {{0, 0, 0}, bad, 0};
        return {kth_largest_copy(scores, k), -1, 0};
    }
    const Bracket br = choose_bracket(scores, k, sample_rng, sample_size, sigmas);
    const uint32_t lo_key = br.lo_key, hi_key = br.hi_key;
    const float lo = br.lo, hi = br.hi;
    const bool fast = br.fast;
    const size_t cap = br.cap;
    const bool parallel = pick_threads(n, threads) > 1;
    // With two threads each copies into its own cap-sized half; the halves are joined after.
    std::unique_ptr<float[]> cand(new float[parallel ? 2 * cap : cap]);
    auto pass = [&](size_t begin, size_t end, float *buf) {
        BracketCounts counts;
        scores.pieces(begin, end, [&](const float *x, size_t, size_t count) {
            if (fast) bracket_pass_fast(x, count, lo, hi, buf, cap, lo_key != hi_key, counts);
            else bracket_pass(x, count, lo, hi, buf, cap, counts);
        });
        return counts;
    };
    BracketCounts c;
    if (parallel) {
        size_t mid = (n / 2) & ~size_t(4095);
        BracketCounts c1;
        run_two(true, [&] { c = pass(0, mid, cand.get()); }, [&] { c1 = pass(mid, n, cand.get() + cap); });
        // The counts add up; the copies (any order will do: only their values matter) are joined.
        c.above += c1.above, c.at_hi += c1.at_hi, c.inside += c1.inside, c.at_lo += c1.at_lo;
        c.nan |= c1.nan;
        c.overflow |= c1.overflow;
        if (!c.overflow) {
            std::memmove(cand.get() + c.stored, cand.get() + cap, c1.stored * sizeof(float));
            c.stored += c1.stored;
        }
    } else {
        c = pass(0, n, cand.get());
    }
    if (fast && lo_key == hi_key) std::swap(c.at_hi, c.inside);  // all of them equal hi
    if (c.nan) return {{0, 0, 0}, first_nan(scores), 1};
    if (lo_key == hi_key) c.at_lo = 0;  // the same scores as at_hi
    uint64_t a = c.above;
    if (k <= a) return {kth_largest_histogram(scores, k), -1, 3};
    if (k <= a + c.at_hi) return {{hi_key, a, c.at_hi}, -1, 2};
    a += c.at_hi;
    if (k <= a + c.inside) {
        if (c.overflow) return {kth_largest_histogram(scores, k), -1, 3};
        return {threshold_among(cand.get(), c.stored, size_t(k - a - 1), a), -1, 1};
    }
    a += c.inside;
    if (k <= a + c.at_lo) return {{lo_key, a, c.at_lo}, -1, 2};
    return {kth_largest_histogram(scores, k), -1, 3};
}

// ---- uniform subsets as bitmaps ------------------------------------------------------------

// A uniform integer in [0, range) (1 <= range < 2^32), exactly, by Lemire's multiply-shift with
// rejection ("Fast random integer generation in an interval", 2019), from the high 32 bits of
// counter `counter`; a rejected draw retries with counter + 2^32, + 2*2^32, ...
inline uint32_t uniform_below(const CounterRng &rng, uint32_t range, uint64_t counter) {
    for (;; counter += uint64_t(1) << 32) {
        uint64_t product = (rng.bits(counter) >> 32) * uint64_t(range);
        uint32_t low = uint32_t(product);
        if (low >= range || low >= uint32_t(0u - range) % range) return uint32_t(product >> 32);
    }
}

// A uniform `want`-subset of range(total) as a bitmap (bit t set iff t is chosen), by Floyd's
// algorithm (Bentley & Floyd, "A sample of brilliance", CACM 1987): for i = 0..pick-1 and
// j = total - pick + i, draw t = uniform_below(j + 1, counter i); choose t unless it is already
// chosen, else j. pick = want if 2*want <= total, else pick = total - want items are chosen to be
// left out. O(pick) random numbers; every subset of the size is equally likely. total < 2^32;
// `words` has room for (total + 63) / 64 words.
inline void subset_bits(const CounterRng &rng, uint64_t total, uint64_t want, uint64_t *words) {
    size_t nwords = size_t((total + 63) / 64);
    std::memset(words, 0, nwords * sizeof(uint64_t));
    bool complement = 2 * want > total;
    uint64_t pick = complement ? total - want : want;
    // The draws do not depend on the bitmap: draw a batch and prefetch its words, then set the
    // bits in order (a bitmap of millions of bits misses the caches at every random draw).
    constexpr uint64_t kBatch = 64;
    uint32_t t[kBatch];
    for (uint64_t i0 = 0; i0 < pick; i0 += kBatch) {
        uint64_t count = std::min(kBatch, pick - i0);
        for (uint64_t b = 0; b < count; ++b) {
            t[b] = uniform_below(rng, uint32_t(total - pick + i0 + b + 1), i0 + b);
            prefetch(words + (t[b] >> 6));
        }
        for (uint64_t b = 0; b < count; ++b) {
            uint64_t j = total - pick + i0 + b;
            uint64_t hit = (words[t[b] >> 6] >> (t[b] & 63)) & 1;
            uint64_t target = hit ? j : t[b];
            words[target >> 6] |= uint64_t(1) << (target & 63);
        }
    }
    if (complement) {
        for (size_t w = 0; w < nwords; ++w) words[w] = ~words[w];
        if (total % 64) words[nwords - 1] &= (uint64_t(1) << (total % 64)) - 1;
    }
}

// ---- the selection -------------------------------------------------------------------------

// How many of x[0, count) are > t and == t.
inline std::pair<uint64_t, uint64_t> count_gt_eq(const float *x, size_t count, float t) {
    uint64_t gt = 0, eq = 0;
    size_t b = 0;
#if FASTPRUNE_SSE2
    constexpr size_t kBlock = 4096;  // int32 lane counters cannot overflow within a block
    const __m128 tv = _mm_set1_ps(t);
    for (; b + kBlock <= count; b += kBlock) {
        __m128i g = _mm_setzero_si128(), e = g;
        for (size_t j = 0; j < kBlock; j += 4) {
            __m128 v = _mm_loadu_ps(x + b + j);
            g = _mm_sub_epi32(g, _mm_castps_si128(_mm_cmpgt_ps(v, tv)));
            e = _mm_sub_epi32(e, _mm_castps_si128(_mm_cmpeq_ps(v, tv)));
        }
        alignas(16) int32_t lanes[2][4];
        _mm_store_si128(reinterpret_cast<__m128i *>(lanes[0]), g);
        _mm_store_si128(reinterpret_cast<__m128i *>(lanes[1]), e);
        gt += uint64_t(lanes[0][0]) + lanes[0][1] + lanes[0][2] + lanes[0][3];
        eq += uint64_t(lanes[1][0]) + lanes[1][1] + lanes[1][2] + lanes[1][3];
    }
#endif
    for (; b < count; ++b) {
        gt += x[b] > t;
        eq += x[b] == t;
    }
    return {gt, eq};
}

// How many of scores[0, end) are > t and == t.
template <class Source>
inline std::pair<uint64_t, uint64_t> count_gt_eq(const Source &scores, size_t end, float t) {
    std::pair<uint64_t, uint64_t> total{0, 0};
    scores.pieces(0, end, [&](const float *x, size_t, size_t count) {
        std::pair<uint64_t, uint64_t> piece = count_gt_eq(x, count, t);
        total.first += piece.first, total.second += piece.second;
    });
    return total;
}

// How many of the first `bits` bits of a bitmap are set.
inline uint64_t popcount_prefix(const uint64_t *words, uint64_t bits) {
    uint64_t total = 0;
    size_t full = size_t(bits >> 6);
    for (size_t w = 0; w < full; ++w) total += popcount64(words[w]);
    if (bits & 63) total += popcount64(words[full] & ((uint64_t(1) << (bits & 63)) - 1));
    return total;
}

// The taken bits of 64 scores x[0, count) (count < 64 only at the end): those > t, the chosen ties
// == t (tc: the rank of the first of them among the ties) and, with_rest, the chosen others (rc:
// likewise among the rest). Advances tc and rc past these scores.
inline uint64_t emit_word(const float *x, size_t count, float t, bool all_ties, const uint64_t *tw, uint64_t &tc,
                          const uint64_t *rw, uint64_t &rc, bool with_rest) {
    uint64_t valid = count == 64 ? ~uint64_t(0) : (uint64_t(1) << count) - 1;
    uint64_t top;
    if (all_ties) {
        top = count == 64 ? mask64<Cmp::Ge>(x, t) : mask_of<Cmp::Ge>(x, count, t);
    } else {
        uint64_t gt = count == 64 ? mask64<Cmp::Gt>(x, t) : mask_of<Cmp::Gt>(x, count, t);
        uint64_t eq = count == 64 ? mask64<Cmp::Eq>(x, t) : mask_of<Cmp::Eq>(x, count, t);
        top = gt;
        if (eq) {
            top |= deposit(eq, bits_at(tw, tc));
            tc += popcount64(eq);
        }
    }
    uint64_t taken = top;
    if (with_rest) {
        uint64_t others = ~top & valid;
        taken |= deposit(others, bits_at(rw, rc));
        rc += popcount64(others);
    }
    return taken;
}

// The emit pass over scores[begin, end) (begin a multiple of 64): rc and tc are the ranks among
// the rest and among the ties of scores[begin]; writes from out[pos]; returns the new pos.
template <class Source>
inline size_t emit_range(const Source &scores, size_t begin, size_t end, float t, bool all_ties, const uint64_t *tw,
                         uint64_t tc, const uint64_t *rw, uint64_t rc, bool with_rest, int64_t *out, size_t pos) {
    scores.pieces(begin, end, [&](const float *x, size_t offset, size_t length) {
        for (size_t j = 0; j < length; j += 64) {
            uint64_t taken = emit_word(x + j, std::min<size_t>(64, length - j), t, all_ties, tw, tc, rw, rc, with_rest);
            pos = write_bits(out, pos, begin + offset + j, taken);
        }
    });
    return pos;
}

// The tie subset (which of the `equal` scores == T are taken) as a bitmap, or none (null) when
// all of them are.
struct TieBits {
    Bitmap bits;
    bool all;
    TieBits(const Threshold &th, uint64_t k_top, const CounterRng &tie_rng)
        : bits(k_top - th.above == th.equal ? 0 : th.equal), all(k_top - th.above == th.equal) {
        if (!all) subset_bits(tie_rng, th.equal, k_top - th.above, bits.data());
    }
};

// The two-pass selection, for every input: the threshold (kth_largest), then an emit pass that
// compares every score with it again. `rw`: the subset of the non-top ranks (if k_rand > 0).
template <class Source>
inline int64_t top_plus_random_two_pass(const Source &scores, uint64_t k_top, const uint64_t *rw,
                                        const CounterRng &tie_rng, const CounterRng &sample_rng, int64_t *out,
                                        bool parallel) {
    const size_t n = scores.n;
    ThresholdResult r = kth_largest(scores, k_top, sample_rng, 0, 4.5, parallel ? 2u : 1u);
    if (r.nan_index >= 0) return -1 - r.nan_index;
    const float t = key_to_float(r.th.key);
    const TieBits ties(r.th, k_top, tie_rng);
    const bool all_ties = ties.all, with_rest = rw != nullptr;
    const uint64_t *tw = ties.bits.words.get();
    if (!parallel)
        return int64_t(emit_range(scores, 0, n, t, all_ties, tw, 0, rw, 0, with_rest, out, 0));
    // Two threads: this one emits [0, mid) from the start; the other first counts the scores > t
    // and == t in [0, mid) (cheaper than emitting them, hence mid past n/2), which with the subset
    // bitmaps gives the ranks and the output position at mid, then emits [mid, n).
    size_t mid = (size_t(double(n) * 0.58)) & ~size_t(63);
    size_t end_second = 0;
    run_two(
        true, [&] { emit_range(scores, 0, mid, t, all_ties, tw, 0, rw, 0, with_rest, out, 0); },
        [&] {
            std::pair<uint64_t, uint64_t> ge = count_gt_eq(scores, mid, t);
            uint64_t tc = all_ties ? 0 : ge.second;         // ties before mid
            uint64_t top = ge.first + (all_ties ? ge.second : popcount_prefix(tw, tc));
            uint64_t rc = mid - top;                        // non-top scores before mid
            uint64_t start = top + (with_rest ? popcount_prefix(rw, rc) : 0);
            end_second = emit_range(scores, mid, n, t, all_ties, tw, tc, rw, rc, with_rest, out, size_t(start));
        });
    return int64_t(end_second);
}

// ---- the one-pass selection (the common case) ----------------------------------------------
//
// One streaming pass over the scores against a "fast" bracket [lo, hi] marks the scores > hi in a
// bitmap (n/8 bytes) and copies the few inside [lo, hi], with their indices, in index order. The
// threshold T is among the copies; marking those > T and the chosen ties at T completes the
// top-k bitmap, and the output is written from the bitmaps alone: the scores are read once.
// When the bracket misses or is not fast, the two-pass selection runs instead.

// What a marking pass over scores[begin, end) found.
struct Marks {
    uint64_t above = 0, inside = 0;
    size_t stored = 0;
    bool overflow = false, nan = false;
    float *value = nullptr;     // the copies: room for `cap`
    uint32_t *index = nullptr;  // their indices
};

// Records the scores of x[0, count) flagged in `inside` (bit j: x[j]) at base + j.
inline void store_inside(const float *x, uint64_t base, uint64_t inside, size_t cap, Marks &mk) {
    if (mk.overflow || mk.stored + size_t(popcount64(inside)) > cap) {
        mk.overflow = true;
        return;
    }
    for (; inside; inside &= inside - 1) {
        unsigned j = unsigned(ctz64(inside));
        mk.value[mk.stored] = x[j];
        mk.index[mk.stored++] = uint32_t(base + j);
    }
}

// 64 scores (or `count` < 64): bit j of the result is x[j] > hi; `inside` gets lo <= x[j] <= hi.
inline uint64_t mark64(const float *x, size_t count, float lo, float hi, uint64_t &inside, bool &nan) {
#if FASTPRUNE_SSE2
    if (count == 64) {
        const __m128 lv = _mm_set1_ps(lo), hv = _mm_set1_ps(hi);
        uint64_t gt = 0, in = 0;
        __m128 unordered = _mm_setzero_ps();
        for (int j = 0; j < 64; j += 4) {
            __m128 v = _mm_loadu_ps(x + j);
            unordered = _mm_or_ps(unordered, _mm_cmpunord_ps(v, v));
            __m128 g = _mm_cmpgt_ps(v, hv);
            gt |= uint64_t(unsigned(_mm_movemask_ps(g))) << j;
            in |= uint64_t(unsigned(_mm_movemask_ps(_mm_andnot_ps(g, _mm_cmpge_ps(v, lv))))) << j;
        }
        nan |= _mm_movemask_ps(unordered) != 0;
        inside = in;
        return gt;
    }
#endif
    uint64_t gt = 0, in = 0;
    for (size_t j = 0; j < count; ++j) {
        nan |= x[j] != x[j];
        gt |= uint64_t(x[j] > hi) << j;
        in |= uint64_t((x[j] >= lo) & (x[j] <= hi)) << j;
    }
    inside = in;
    return gt;
}

// The marking pass over scores[begin, end) (begin a multiple of 64): words[w] = the > hi bits of
// scores[64w, 64w + 64).
template <class Source>
inline void mark_pass(const Source &scores, size_t begin, size_t end, float lo, float hi, size_t cap,
                      uint64_t *words, Marks &mk) {
    scores.pieces(begin, end, [&](const float *piece, size_t offset, size_t length) {
        for (size_t j = 0; j < length; j += 64) {
            const size_t base = begin + offset + j, count = std::min<size_t>(64, length - j);
            uint64_t inside;
            uint64_t gt = mark64(piece + j, count, lo, hi, inside, mk.nan);
            words[base >> 6] = gt;
            mk.above += popcount64(gt);
            if (inside) {
                mk.inside += popcount64(inside);
                store_inside(piece + j, base, inside, cap, mk);
            }
        }
    });
}

// Writes the taken indices of words [w_begin, w_end) to out[pos, limit): the marked (top) bits,
// plus, when rw is given, the subset bits of the unmarked positions from rank rc on. Returns the
// new pos (== limit).
inline size_t emit_marked(const uint64_t *top, size_t w_begin, size_t w_end, size_t n, const uint64_t *rw,
                          uint64_t rc, int64_t *out, size_t pos, size_t limit) {
    for (size_t w = w_begin; w < w_end; ++w) {
        uint64_t base = uint64_t(w) * 64;
        uint64_t taken = top[w];
        if (rw) {
            uint64_t valid = n - base >= 64 ? ~uint64_t(0) : (uint64_t(1) << (n - base)) - 1;
            uint64_t others = ~taken & valid;
            taken |= deposit(others, bits_at(rw, rc));
            rc += popcount64(others);
        }
        pos = write_word(out, pos, base, taken, limit);
    }
    return pos;
}

// The result of the marking pass: the threshold, or why the two-pass selection must run.
enum class MarkedStatus { Ok, Nan, Fallback };

// Runs the marking pass (split over two threads when `parallel` and there is no uniform part;
// else the other thread draws the uniform subset `draw_rest` meanwhile) and finds the threshold
// among the copies. `value`/`index`: room for 2 * cap copies.
template <class Source, typename DrawRest>
inline MarkedStatus mark_and_threshold(const Source &scores, uint64_t k, const Bracket &br, bool parallel,
                                       uint64_t *words, Marks (&mk)[2], DrawRest &&draw_rest, Threshold &th) {
    const size_t n = scores.n;
    const bool split = parallel && !draw_rest.needed();
    size_t mid = split ? (n / 2) & ~size_t(4095) : n;
    run_two(
        parallel, [&] { mark_pass(scores, 0, mid, br.lo, br.hi, br.cap, words, mk[0]); },
        [&] {
            draw_rest();
            mark_pass(scores, mid, n, br.lo, br.hi, br.cap, words, mk[1]);
        });
    if (mk[0].nan || mk[1].nan) return MarkedStatus::Nan;
    uint64_t above = mk[0].above + mk[1].above, inside = mk[0].inside + mk[1].inside;
    if (mk[0].overflow || mk[1].overflow || k <= above || k > above + inside) return MarkedStatus::Fallback;
    std::vector<float> values(mk[0].stored + mk[1].stored);  // a copy: mk keeps the index order
    std::copy(mk[0].value, mk[0].value + mk[0].stored, values.begin());
    std::copy(mk[1].value, mk[1].value + mk[1].stored, values.begin() + ptrdiff_t(mk[0].stored));
    th = threshold_among(values.data(), values.size(), size_t(k - above - 1), above);
    return MarkedStatus::Ok;
}

// Completes the top-k bitmap: marks the copies > t and, in index order, the chosen ties == t.
inline void mark_threshold(const Marks (&mk)[2], float t, const TieBits &ties, uint64_t *words) {
    uint64_t tie_rank = 0;
    const uint64_t *tw = ties.bits.words.get();
    for (const Marks &m : mk) {
        for (size_t j = 0; j < m.stored; ++j) {
            float v = m.value[j];
            bool take = v > t;
            if (v == t) {
                take = ties.all || ((tw[tie_rank >> 6] >> (tie_rank & 63)) & 1);
                ++tie_rank;
            }
            if (take) words[m.index[j] >> 6] |= uint64_t(1) << (m.index[j] & 63);
        }
    }
}

// The uniform subset of the non-top ranks, drawn when (and where) the selection asks for it.
struct RestDraw {
    const CounterRng &rng;
    uint64_t total, want;
    Bitmap bits;
    RestDraw(const CounterRng &r, uint64_t total_, uint64_t want_) : rng(r), total(total_), want(want_), bits(want_ ? total_ : 0) {}
    bool needed() const { return want != 0; }
    void operator()() {
        if (want) subset_bits(rng, total, want, bits.data());
    }
    const uint64_t *words() const { return want ? bits.words.get() : nullptr; }
};

// What top_plus_random_marked returns when the two-pass selection must run instead.
inline constexpr int64_t kFallback = std::numeric_limits<int64_t>::min();

// The one-pass selection: the count written, -1 - i for a NaN at scores[i], or kFallback (the
// rest subset is drawn either way).
template <class Source>
inline int64_t top_plus_random_marked(const Source &scores, uint64_t k_top, RestDraw &rest,
                                      const CounterRng &tie_rng, const CounterRng &sample_rng, int64_t *out,
                                      bool parallel) {
    const size_t n = scores.n;
    const Bracket br = choose_bracket(scores, k_top, sample_rng, 0, 4.5);
    if (!br.fast || br.lo_key == br.hi_key) {  // ties at the bracket's ends are not copied
        rest();
        return kFallback;
    }
    Bitmap top(n);
    std::unique_ptr<float[]> values(new float[2 * br.cap]);
    std::unique_ptr<uint32_t[]> indices(new uint32_t[2 * br.cap]);
    Marks mk[2];
    for (int h = 0; h < 2; ++h) mk[h].value = values.get() + h * br.cap, mk[h].index = indices.get() + h * br.cap;
    Threshold th;
    MarkedStatus status = mark_and_threshold(scores, k_top, br, parallel, top.data(), mk, rest, th);
    if (status == MarkedStatus::Nan) return -1 - first_nan(scores);
    if (status == MarkedStatus::Fallback) return kFallback;
    const TieBits ties(th, k_top, tie_rng);
    mark_threshold(mk, key_to_float(th.key), ties, top.data());
    const uint64_t *tw = top.data(), *rw = rest.words();
    const size_t nwords = (n + 63) / 64, total = size_t(k_top + rest.want);
    if (!parallel) return int64_t(emit_marked(tw, 0, nwords, n, rw, 0, out, 0, total));
    // Two threads: the output position and rest rank at the middle word follow from popcounts.
    const size_t mid = nwords / 2;
    const uint64_t top_before = popcount_prefix(tw, uint64_t(mid) * 64);
    const uint64_t rc = uint64_t(mid) * 64 - top_before;  // non-top positions before mid
    const size_t start = size_t(top_before + (rw ? popcount_prefix(rw, rc) : 0));
    size_t end_second = 0;
    run_two(
        true, [&] { emit_marked(tw, 0, mid, n, rw, 0, out, 0, start); },
        [&] { end_second = emit_marked(tw, mid, nwords, n, rw, rc, out, start, total); });
    return int64_t(end_second);
}

// Indices (ascending) of the k_top highest scores plus k_rand drawn uniformly from the others,
// written to `out` (room for k_top + k_rand + 1). Returns the count written, or -1 - i if
// scores[i] is NaN (only checked when k_top > 0). n < 2^32. `scores.data` may be null if
// k_top == 0. threads: 0 = min(2, hardware threads), else at most 2 (1 below kParallelMin scores);
// the output is the same for every thread count, for either path (one-pass or two-pass), and for
// 16-bit scores the same as for the float32 scores they widen to.
template <class Source>
inline int64_t top_plus_random(const Source &scores, uint64_t k_top, uint64_t k_rand, const CounterRng &tie_rng,
                               const CounterRng &random_rng, const CounterRng &sample_rng, int64_t *out,
                               unsigned threads = 0, bool allow_one_pass = true) {
    const size_t n = scores.n;
    if (k_top == 0 && k_rand == 0) return 0;
    RestDraw rest(random_rng, n - k_top, k_rand);
    if (k_top == 0) {
        rest();
        size_t pos = 0;
        for (size_t j = 0, nw = size_t((n + 63) / 64); j < nw; ++j) pos = write_word(out, pos, j * 64, rest.bits.words[j], size_t(k_rand));
        return int64_t(pos);
    }
    const bool parallel = pick_threads(n, threads) > 1;
    if (n >= kCopyBelow && allow_one_pass) {
        int64_t got = top_plus_random_marked(scores, k_top, rest, tie_rng, sample_rng, out, parallel);
        if (got != kFallback) return got;
    } else {
        rest();
    }
    return top_plus_random_two_pass(scores, k_top, rest.words(), tie_rng, sample_rng, out, parallel);
}

}  // namespace select_detail
}  // namespace fastprune
