// Read-ahead hints for a memory-mapped store whose pages are not in memory.
//
// A gather reads each sample through the file mapping: on a store the OS has not cached (the
// first epoch after a reboot, or a store larger than RAM), every sample is a page fault that
// waits for its own read, so only as many reads are in flight as there are loader threads. The
// loader knows its order ahead of time: madvise(MADV_WILLNEED) over the next batches' bytes
// queues all their reads at once, and the device serves them in parallel (benchmarks/cold_read.py).
//   advise_willneed(buffer, offsets, sizes, ids)   hint the pages of these samples' bytes
//   resident_fraction(buffer, offsets, ids)        share of these samples whose first page is cached
// Both are hints and measures only: a failing madvise/mincore is ignored (the gather's own page
// fault reads the data anyway); ids and byte ranges are bounds-checked like the gather's.
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core.hpp"

#if defined(__linux__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define FASTPRUNE_HAVE_MADVISE 1
#else
#define FASTPRUNE_HAVE_MADVISE 0
#endif

namespace fastprune {
namespace {

uint64_t page_size() {
#if FASTPRUNE_HAVE_MADVISE
    static const uint64_t page = uint64_t(sysconf(_SC_PAGESIZE));
    return page;
#else
    return 4096;
#endif
}

// The byte range [offset, offset + size) of sample ids[b], checked against the buffer.
std::pair<uint64_t, uint64_t> sample_range(const ROArray1D<uint64_t> &offsets, const ROArray1D<uint64_t> &sizes,
                                           int64_t id, size_t row, uint64_t total) {
    if (id < 0 || uint64_t(id) >= offsets.shape(0))
        fail_index("readahead: sample id " + std::to_string(id) + " at row " + std::to_string(row) +
                   " is out of range for a store of " + std::to_string(offsets.shape(0)) + " samples");
    uint64_t off = offsets.data()[id], size = sizes.data()[id];
    if (off > total || size > total - off)
        fail_index("readahead: sample " + std::to_string(id) + " has byte range [" + std::to_string(off) + ", " +
                   std::to_string(off) + "+" + std::to_string(size) + ") outside the " + std::to_string(total) +
                   "-byte store");
    return {off, off + size};
}

// The ids' bytes as sorted, disjoint [start, end) byte ranges, each rounded out to whole blocks
// of `granule` bytes (at least a page), adjacent and overlapping ones merged: one madvise per
// run of blocks rather than one per sample. Offsets count from the start of the page holding
// the buffer's first byte (madvise takes page-aligned addresses; a mapped file starts on one),
// and no range passes the page holding its last byte.
std::vector<std::pair<uint64_t, uint64_t>> page_ranges(const ROArray1D<uint8_t> &buffer,
                                                       const ROArray1D<uint64_t> &offsets,
                                                       const ROArray1D<uint64_t> &sizes, const ROArray1D<int64_t> &ids,
                                                       uint64_t granule) {
    if (sizes.shape(0) != offsets.shape(0))
        fail_value("readahead: offsets and sizes must have one entry per sample (got " +
                   std::to_string(offsets.shape(0)) + " and " + std::to_string(sizes.shape(0)) + ")");
    const uint64_t page = page_size(), total = buffer.shape(0);
    const uint64_t block = std::max(page, granule / page * page);
    const uint64_t skew = uint64_t(reinterpret_cast<uintptr_t>(buffer.data()) % page);
    const uint64_t mapped_end = (total + skew + page - 1) / page * page;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    ranges.reserve(ids.shape(0));
    for (size_t b = 0; b < ids.shape(0); ++b) {
        auto [start, end] = sample_range(offsets, sizes, ids.data()[b], b, total);
        if (start == end) continue;
        uint64_t first = (start + skew) / block * block, last = (end + skew + block - 1) / block * block;
        ranges.emplace_back(first, std::min(last, mapped_end));
    }
    std::sort(ranges.begin(), ranges.end());
    size_t kept = 0;
    for (size_t i = 0; i < ranges.size(); ++i) {
        if (kept > 0 && ranges[i].first <= ranges[kept - 1].second)
            ranges[kept - 1].second = std::max(ranges[kept - 1].second, ranges[i].second);
        else
            ranges[kept++] = ranges[i];
    }
    ranges.resize(kept);
    return ranges;
}

uint64_t advise_willneed(ROArray1D<uint8_t> buffer, ROArray1D<uint64_t> offsets, ROArray1D<uint64_t> sizes,
                         ROArray1D<int64_t> ids, uint64_t granule) {
    auto ranges = page_ranges(buffer, offsets, sizes, ids, granule);
    uint64_t bytes = 0;
    GilReleased no_gil;
    const uint64_t page = page_size();
    uint8_t *page0 = const_cast<uint8_t *>(buffer.data()) - reinterpret_cast<uintptr_t>(buffer.data()) % page;
    for (const auto &r : ranges) {
        bytes += r.second - r.first;
#if FASTPRUNE_HAVE_MADVISE
        (void)madvise(page0 + r.first, size_t(r.second - r.first), MADV_WILLNEED);  // a hint: failure is harmless
#else
        (void)page0;
#endif
    }
    return bytes;
}

double resident_fraction(ROArray1D<uint8_t> buffer, ROArray1D<uint64_t> offsets, ROArray1D<int64_t> ids) {
    const uint64_t total = buffer.shape(0), page = page_size();
    if (ids.shape(0) == 0) return 1.0;
    std::vector<uint64_t> firsts(ids.shape(0));
    for (size_t b = 0; b < ids.shape(0); ++b) {
        int64_t id = ids.data()[b];
        if (id < 0 || uint64_t(id) >= offsets.shape(0))
            fail_index("readahead: sample id " + std::to_string(id) + " at row " + std::to_string(b) +
                       " is out of range for a store of " + std::to_string(offsets.shape(0)) + " samples");
        if (offsets.data()[id] >= total)
            fail_index("readahead: sample " + std::to_string(id) + " starts at byte " +
                       std::to_string(offsets.data()[id]) + ", outside the " + std::to_string(total) + "-byte store");
        firsts[b] = offsets.data()[id];
    }
#if FASTPRUNE_HAVE_MADVISE
    GilReleased no_gil;
    const uintptr_t base = reinterpret_cast<uintptr_t>(buffer.data());
    size_t resident = 0;
    for (uint64_t off : firsts) {
        uintptr_t at = (base + off) / page * page;
#if defined(__APPLE__)
        char in_core = 0;
#else
        unsigned char in_core = 0;
#endif
        // unknown (mincore refused): counted as resident, so no hints are sent on its word
        if (mincore(reinterpret_cast<void *>(at), size_t(page), &in_core) != 0 || (in_core & 1)) ++resident;
    }
    return double(resident) / double(firsts.size());
#else
    (void)page;
    return 1.0;  // no way to tell: treated as cached (no hints)
#endif
}

nb::ndarray<nb::numpy, uint64_t, nb::ndim<2>> page_ranges_for_tests(ROArray1D<uint8_t> buffer,
                                                                     ROArray1D<uint64_t> offsets,
                                                                     ROArray1D<uint64_t> sizes,
                                                                     ROArray1D<int64_t> ids, uint64_t granule) {
    auto ranges = page_ranges(buffer, offsets, sizes, ids, granule);
    auto *data = new uint64_t[ranges.size() * 2 + 1];
    for (size_t i = 0; i < ranges.size(); ++i) data[2 * i] = ranges[i].first, data[2 * i + 1] = ranges[i].second;
    nb::capsule owner(data, [](void *p) noexcept { delete[] static_cast<uint64_t *>(p); });
    return nb::ndarray<nb::numpy, uint64_t, nb::ndim<2>>(data, {ranges.size(), 2}, owner);
}

}  // namespace

void bind_readahead(nb::module_ &m) {
    m.def("advise_willneed", &advise_willneed, nb::arg("buffer"), nb::arg("offsets"), nb::arg("sizes"),
          nb::arg("ids"), nb::arg("granule") = 0,
          "Ask the OS to read the pages of samples ids' bytes (buffer[offsets[i]:offsets[i]+sizes[i]]) into "
          "memory in the background (madvise MADV_WILLNEED over merged page runs); returns the bytes hinted.");
    m.def("resident_fraction", &resident_fraction, nb::arg("buffer"), nb::arg("offsets"), nb::arg("ids"),
          "The share of samples ids whose first byte's page is in memory (mincore); 1.0 where that cannot be told.");
}

void bind_readahead_testing(nb::module_ &t) {
    t.def("readahead_page_ranges", &page_ranges_for_tests, nb::arg("buffer"), nb::arg("offsets"), nb::arg("sizes"),
          nb::arg("ids"), nb::arg("granule") = 0,
          "advise_willneed's merged [start, end) page ranges, in bytes from the start of the buffer's first page.");
}

}  // namespace fastprune
