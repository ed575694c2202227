// Which SIMD code the core compiles. On x86: SSE2 paths (the x86-64 baseline) in the build, and
// AVX2 functions chosen at run time where the CPU has AVX2 (explicit dispatch; the build itself
// targets baseline x86-64). Elsewhere (ARM, ...): the portable scalar code, which every SIMD
// path must match byte for byte.
//
// -DFASTPRUNE_SIMD=OFF (CMake) defines FASTPRUNE_NO_SIMD and builds only the portable code on
// x86 too, so that the scalar paths an ARM machine runs are tested here (scripts/sanitize).
#pragma once

#if !defined(FASTPRUNE_NO_SIMD) && (defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2))
#include <emmintrin.h>
#define FASTPRUNE_SSE2 1
#else
#define FASTPRUNE_SSE2 0
#endif

#if !defined(FASTPRUNE_NO_SIMD) && defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define FASTPRUNE_AVX2_DISPATCH 1
#else
#define FASTPRUNE_AVX2_DISPATCH 0
#endif

#include <cstdlib>

namespace fastprune {

#if FASTPRUNE_AVX2_DISPATCH
// Whether the AVX2 functions run: the CPU has AVX2 and FASTPRUNE_DISABLE_AVX2 is not set in the
// environment (the tests run the SSE2 paths on AVX2 machines with it). Read once.
inline bool have_avx2() {
    static const bool yes = __builtin_cpu_supports("avx2") && !std::getenv("FASTPRUNE_DISABLE_AVX2");
    return yes;
}
#endif

// What the build compiled and this CPU runs: "sse2+avx2", "sse2" or "portable" (build_info).
inline const char *simd_paths() {
#if FASTPRUNE_AVX2_DISPATCH
    if (have_avx2()) return "sse2+avx2";
#endif
    return FASTPRUNE_SSE2 ? "sse2" : "portable";
}

}  // namespace fastprune
