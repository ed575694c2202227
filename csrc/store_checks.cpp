// Integrity checks for the packed store: CRC-32 over byte ranges of a memory-mapped file, with
// every range bounds-checked against the buffer before it is touched.
#include "core.hpp"
#include <array>
#include <atomic>
#include <system_error>
#include <thread>
#include <vector>

namespace fastprune {
namespace {

// CRC-32 (IEEE 802.3, reflected, the polynomial zlib uses) with slicing-by-8 tables, so results
// equal Python's zlib.crc32 and the Python side can verify without the native core if needed.
struct Crc32Tables {
    std::array<std::array<uint32_t, 256>, 8> t{};
    Crc32Tables() {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
            t[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; ++i)
            for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
    }
};
const Crc32Tables &tables() {
    static const Crc32Tables tabs;
    return tabs;
}

}  // namespace

uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n) {
    const auto &t = tables().t;
    crc = ~crc;
    while (n >= 8) {
        uint32_t lo = (uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24) ^ crc;
        uint32_t hi = uint32_t(p[4]) | uint32_t(p[5]) << 8 | uint32_t(p[6]) << 16 | uint32_t(p[7]) << 24;
        crc = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^
              t[3][hi & 0xFF] ^ t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xFF];
    return ~crc;
}

void bind_store(nb::module_ &m) {
    m.def(
        "crc32_ranges",
        [](ROArray1D<uint8_t> buffer, ROArray1D<uint64_t> offsets, ROArray1D<uint64_t> sizes,
           int threads) {
            if (offsets.shape(0) != sizes.shape(0))
                fail_value("crc32_ranges: offsets has " + std::to_string(offsets.shape(0)) +
                           " entries but sizes has " + std::to_string(sizes.shape(0)));
            const size_t n = offsets.shape(0), len = buffer.shape(0);
            const uint64_t *off = offsets.data(), *sz = sizes.data();
            for (size_t i = 0; i < n; ++i)
                if (off[i] > len || sz[i] > len - off[i])
                    fail_index("crc32_ranges: range " + std::to_string(i) + " [" + std::to_string(off[i]) +
                               ", +" + std::to_string(sz[i]) + ") lies outside the buffer of " +
                               std::to_string(len) + " bytes");
            auto *out = new uint32_t[n];
            nb::capsule owner(out, [](void *p) noexcept { delete[] static_cast<uint32_t *>(p); });
            const uint8_t *base = buffer.data();
            {
                GilReleased release;
                const int nt = std::max(1, std::min<int>(threads, int(n / 64) + 1));
                constexpr size_t CHUNK = 64;  // ranges taken at a time
                std::atomic<size_t> next{0};
                auto work = [&] {
                    for (size_t begin; (begin = next.fetch_add(CHUNK)) < n;)
                        for (size_t i = begin; i < std::min(n, begin + CHUNK); ++i)
                            out[i] = crc32_update(0, base + off[i], sz[i]);
                };
                std::vector<std::thread> pool;
                try {
                    pool.reserve(size_t(nt));  // no reallocation (bad_alloc) once threads run
                    for (int w = 1; w < nt; ++w) pool.emplace_back(work);
                } catch (const std::exception &) {  // system_error, or bad_alloc for a thread's state
                    // a container's thread or memory limit: the threads that started and this one
                    // share the ranges (a joinable std::thread destroyed by the unwinding aborted)
                }
                work();
                for (auto &th : pool) th.join();
            }
            return nb::ndarray<nb::numpy, uint32_t, nb::ndim<1>>(out, {n}, owner);
        },
        nb::arg("buffer"), nb::arg("offsets"), nb::arg("sizes"), nb::arg("threads") = 1,
        "CRC-32 of each byte range [offsets[i], offsets[i]+sizes[i]) of buffer; every range is "
        "bounds-checked first (IndexError names the first bad one).");
}

// Hook for the tests only (fastprune._core.testing): the CRC of one buffer, so the slicing-by-8
// kernel can be checked against zlib.crc32 on every length and start value directly.
void bind_store_testing(nb::module_ &t) {
    t.def(
        "crc32",
        [](ROArray1D<uint8_t> data, uint32_t start) {
            const uint8_t *p = data.data();
            size_t n = data.shape(0);
            GilReleased release;
            return crc32_update(start, p, n);
        },
        nb::arg("data"), nb::arg("start") = 0,
        "CRC-32 of a uint8 buffer (same value as zlib.crc32).");
}

}  // namespace fastprune
