// 16-bit storage of the score table's float fields: IEEE float16 and bfloat16, held as raw uint16
// bits (numpy has no bfloat16, and the compiler's _Float16 is neither portable nor saturating).
// float -> half rounds to nearest, ties to even, and saturates a finite value that would round to
// infinity at the largest finite half (float16 65504, bfloat16 3.3895e38): the table keeps a huge
// loss as a huge finite mean, so only an unseen sample's score is +inf. Infinities stay
// infinities; NaN stays NaN (quiet, sign and leading payload bits kept). half -> float is exact.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "simd.hpp"

namespace fastprune {
namespace half {

inline uint32_t bits_of(float x) {
    uint32_t b;
    std::memcpy(&b, &x, sizeof b);
    return b;
}

inline float float_of(uint32_t b) {
    float x;
    std::memcpy(&x, &b, sizeof x);
    return x;
}

// x >> shift rounded to nearest, ties to even (1 <= shift <= 31).
inline uint32_t shift_round_even(uint32_t x, unsigned shift) {
    uint32_t kept = x >> shift, rest = x & ((uint32_t(1) << shift) - 1), halfway = uint32_t(1) << (shift - 1);
    return kept + (rest > halfway || (rest == halfway && (kept & 1)));
}

// ---- float16: 1 sign, 5 exponent (bias 15), 10 mantissa bits ---------------------------------

inline uint16_t float_to_f16(float x) {
    const uint32_t f = bits_of(x), a = f & 0x7fffffffu;
    const uint16_t sign = uint16_t((f >> 16) & 0x8000u);
    if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN, made quiet
    if (a == 0x7f800000u) return uint16_t(sign | 0x7c00u);                      // infinity
    if (a >= 0x477ff000u) return uint16_t(sign | 0x7bffu);  // >= 65520 would round to inf: 65504
    if (a >= 0x38800000u)                                   // normal (>= 2^-14): rebias 127 -> 15
        return uint16_t(sign | shift_round_even(a - 0x38000000u, 13));
    const uint32_t exponent = a >> 23;
    if (exponent < 102) return sign;  // below 2^-25, half the smallest subnormal: rounds to 0
    // Subnormal: value = mantissa_with_implicit_one * 2^(exponent - 150) = h * 2^-24.
    return uint16_t(sign | shift_round_even((a & 0x7fffffu) | 0x800000u, 126 - exponent));
}

inline float f16_to_float_exact(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0x1f) return float_of(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN (payload kept)
    if (exponent == 0) return float_of(sign | bits_of(float(mantissa) * 0x1p-24f));  // zero, subnormal: exact
    return float_of(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

// Every float16 widened by f16_to_float_exact (256 KiB, filled when the module loads): one load
// instead of its branches (the table update widens three fields per entry).
struct F16Table {
    float value[65536];
    F16Table() {
        for (uint32_t h = 0; h < 65536; ++h) value[h] = f16_to_float_exact(uint16_t(h));
    }
};
inline const F16Table kF16Table{};

inline float f16_to_float(uint16_t h) { return kF16Table.value[h]; }

// f16_to_float of in[0, count) into out, four at a time without a branch: the exponent and
// mantissa shifted into place and rebiased (+112), then infinities and NaNs (exponent 31) rebiased
// once more to 255, zeros and subnormals (exponent 0) made exact by 2^-14 * (1 + m/1024) - 2^-14 =
// m * 2^-24 (a normal float, so no flush-to-zero mode touches it).
inline void f16_to_float_n(const uint16_t *in, size_t count, float *out) {
    size_t i = 0;
#if FASTPRUNE_SSE2
    const __m128i zero = _mm_setzero_si128(), low15 = _mm_set1_epi32(0x7fff), exponent = _mm_set1_epi32(0x0f800000);
    const __m128i rebias = _mm_set1_epi32(112 << 23), subnormal_bias = _mm_set1_epi32(113 << 23);
    const __m128 two_to_minus_14 = _mm_castsi128_ps(subnormal_bias);
    auto widen4 = [&](__m128i h) {  // four halves, one per 32-bit lane
        __m128i em = _mm_slli_epi32(_mm_and_si128(h, low15), 13), e = _mm_and_si128(em, exponent);
        __m128i r = _mm_add_epi32(em, rebias);
        r = _mm_add_epi32(r, _mm_and_si128(_mm_cmpeq_epi32(e, exponent), rebias));
        __m128i small = _mm_cmpeq_epi32(e, zero);
        __m128i sub = _mm_castps_si128(_mm_sub_ps(_mm_castsi128_ps(_mm_add_epi32(em, subnormal_bias)), two_to_minus_14));
        r = _mm_or_si128(_mm_and_si128(small, sub), _mm_andnot_si128(small, r));
        return _mm_castsi128_ps(_mm_or_si128(r, _mm_slli_epi32(_mm_srli_epi32(h, 15), 31)));
    };
    for (; i + 8 <= count; i += 8) {
        __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(in + i));
        _mm_storeu_ps(out + i, widen4(_mm_unpacklo_epi16(h, zero)));
        _mm_storeu_ps(out + i + 4, widen4(_mm_unpackhi_epi16(h, zero)));
    }
#endif
    for (; i < count; ++i) out[i] = f16_to_float(in[i]);
}

// ---- bfloat16: the high 16 bits of a float32 ----------------------------------------------------

inline uint16_t float_to_bf16(float x) {
    const uint32_t f = bits_of(x), a = f & 0x7fffffffu;
    if (a > 0x7f800000u) return uint16_t((f >> 16) | 0x40u);  // NaN, made quiet
    if (a == 0x7f800000u) return uint16_t(f >> 16);           // infinity
    if (a >= 0x7f7f8000u) return uint16_t(((f >> 16) & 0x8000u) | 0x7f7fu);  // would round to inf
    return uint16_t(((f >> 16) & 0x8000u) | shift_round_even(a, 16));
}

inline float bf16_to_float(uint16_t h) { return float_of(uint32_t(h) << 16); }

// bf16_to_float of in[0, count) into out: each half moved into the high 16 bits of a zero word.
inline void bf16_to_float_n(const uint16_t *in, size_t count, float *out) {
    size_t i = 0;
#if FASTPRUNE_SSE2
    const __m128i zero = _mm_setzero_si128();
    for (; i + 8 <= count; i += 8) {
        __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(in + i));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(out + i), _mm_unpacklo_epi16(zero, h));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(out + i + 4), _mm_unpackhi_epi16(zero, h));
    }
#endif
    for (; i < count; ++i) out[i] = bf16_to_float(in[i]);
}

}  // namespace half

// Storage policies of the score table's float fields: the stored type T, widen (exact; widen_n:
// an array of them) and narrow (float32 -> T as above). Float32's are the identity, so its
// instantiation is the plain float code.
struct Float32Storage {
    using T = float;
    static float widen(float v) { return v; }
    static void widen_n(const float *in, size_t count, float *out) { std::memcpy(out, in, count * sizeof(float)); }
    static float narrow(float v) { return v; }
};
struct Float16Storage {
    using T = uint16_t;
    static float widen(uint16_t v) { return half::f16_to_float(v); }
    static void widen_n(const uint16_t *in, size_t count, float *out) { half::f16_to_float_n(in, count, out); }
    static uint16_t narrow(float v) { return half::float_to_f16(v); }
};
struct BFloat16Storage {
    using T = uint16_t;
    static float widen(uint16_t v) { return half::bf16_to_float(v); }
    static void widen_n(const uint16_t *in, size_t count, float *out) { half::bf16_to_float_n(in, count, out); }
    static uint16_t narrow(float v) { return half::float_to_bf16(v); }
};

}  // namespace fastprune
