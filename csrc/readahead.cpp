// Read-ahead hints for a memory-mapped store whose pages are not in memory.
//
// A gather reads each sample through the file mapping: on a store the OS has not cached (the
// first epoch after a reboot, or a store larger than RAM), every sample is a page fault that
// waits for its own read, so only as many reads are in flight as there are loader threads. The
// loader knows its order ahead of time: madvise(MADV_WILLNEED) over the next batches' bytes
// queues all their reads at once, and the device serves them in parallel (benchmarks/cold_read.py).
//   advise_willneed(buffer, offsets, sizes, ids)   hint the pages of these samples' bytes
//   resident_fraction(buffer, offsets, ids, fd)    share of these samples whose first page is cached
// Both are hints and measures only: a failing madvise/mincore/preadv2 is ignored (the gather's own page
// fault reads the data anyway); ids and byte ranges are bounds-checked like the gather's.
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core.hpp"

#if defined(__linux__) || defined(__APPLE__)
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
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

// Sample id (at `row` of the ids given), checked against the store's sample count.
int64_t checked_id(int64_t id, size_t row, size_t samples) {
    if (id < 0 || uint64_t(id) >= samples)
        fail_index("readahead: sample id " + std::to_string(id) + " at row " + std::to_string(row) +
                   " is out of range for a store of " + std::to_string(samples) + " samples");
    return id;
}

// The byte range [offset, offset + size) of sample ids[b], checked against the buffer.
std::pair<uint64_t, uint64_t> sample_range(const ROArray1D<uint64_t> &offsets, const ROArray1D<uint64_t> &sizes,
                                           int64_t id, size_t row, uint64_t total) {
    checked_id(id, row, offsets.shape(0));
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

// Whether the page holding byte `off` of the file is in memory, asked in the first way that
// answers here, without reading the file:
//   cachestat(2) on the file's descriptor (Linux 6.5+);
//   mincore on the mapping, where its answer can be trusted: since Linux 5.0 it calls every page
//     of a file the caller may not write resident (a shared dataset owned by another account);
//   a 1-byte preadv2(RWF_NOWAIT) on the descriptor (EAGAIN: not in memory; it may start the
//     kernel's read-ahead around that byte, which a hint would have asked for anyway).
// Where none answers, the page counts as resident: no hints on a guess.
class Residency {
public:
    enum Way { ANY, CACHESTAT, MINCORE, NOWAIT_READ };  // all in turn; or one alone (tests)
    Residency(const uint8_t *base, int fd, bool mincore_trusted, Way only = ANY)
        : base_(reinterpret_cast<uintptr_t>(base)), fd_(fd), nowait_fd_(only == ANY || only == NOWAIT_READ ? fd : -1),
          mincore_trusted_(mincore_trusted && (only == ANY || only == MINCORE)),
          use_cachestat_(only == ANY || only == CACHESTAT) {}

    bool resident(uint64_t off) {
#if FASTPRUNE_HAVE_MADVISE
        const uint64_t page = page_size();
#if defined(__linux__)
        if (fd_ >= 0 && use_cachestat_) {
            struct { uint64_t off, len; } range = {off / page * page, page};
            struct { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; } stat = {};
            if (syscall(CACHESTAT_SYSCALL, fd_, &range, &stat, 0) == 0) return stat.nr_cache > 0;
            use_cachestat_ = false;  // ENOSYS (older kernel) or refused: not again
        }
#endif
        if (mincore_trusted_) {
            uintptr_t at = (base_ + off) / page * page;
#if defined(__APPLE__)
            char in_core = 0;
#else
            unsigned char in_core = 0;
#endif
            return mincore(reinterpret_cast<void *>(at), size_t(page), &in_core) != 0 || (in_core & 1);
        }
#if defined(__linux__) && defined(RWF_NOWAIT)
        if (nowait_fd_ >= 0) {
            char byte;
            struct iovec v = {&byte, 1};
            ssize_t got = preadv2(nowait_fd_, &v, 1, off_t(off), RWF_NOWAIT);
            if (got >= 0) return true;
            if (errno == EAGAIN) return false;
            nowait_fd_ = -1;  // not supported here
        }
#endif
#endif
        (void)off;
        return true;
    }

private:
    static constexpr long CACHESTAT_SYSCALL = 451;  // the same number on every Linux architecture
    uintptr_t base_;
    int fd_, nowait_fd_;
    bool mincore_trusted_;
    bool use_cachestat_;
};

double resident_fraction_by(ROArray1D<uint8_t> buffer, ROArray1D<uint64_t> offsets, ROArray1D<int64_t> ids, int fd,
                            bool mincore_trusted, Residency::Way way) {
    const uint64_t total = buffer.shape(0);
    if (ids.shape(0) == 0) return 1.0;
    std::vector<uint64_t> firsts(ids.shape(0));
    for (size_t b = 0; b < ids.shape(0); ++b) {
        int64_t id = checked_id(ids.data()[b], b, offsets.shape(0));
        if (offsets.data()[id] >= total)
            fail_index("readahead: sample " + std::to_string(id) + " starts at byte " +
                       std::to_string(offsets.data()[id]) + ", outside the " + std::to_string(total) + "-byte store");
        firsts[b] = offsets.data()[id];
    }
    GilReleased no_gil;
    Residency residency(buffer.data(), fd, mincore_trusted, way);
    size_t resident = 0;
    for (uint64_t off : firsts) resident += residency.resident(off);
    return double(resident) / double(firsts.size());
}

double resident_fraction(ROArray1D<uint8_t> buffer, ROArray1D<uint64_t> offsets, ROArray1D<int64_t> ids, int fd,
                         bool mincore_trusted) {
    return resident_fraction_by(buffer, offsets, ids, fd, mincore_trusted, Residency::ANY);
}

// One way alone (1 cachestat, 2 mincore, 3 preadv2 RWF_NOWAIT): the tests check each against the truth.
double resident_fraction_one_way(ROArray1D<uint8_t> buffer, ROArray1D<uint64_t> offsets, ROArray1D<int64_t> ids,
                                 int fd, int way) {
    if (way < 1 || way > 3) fail_value("resident_fraction_one_way: way must be 1, 2 or 3");
    return resident_fraction_by(buffer, offsets, ids, fd, true, Residency::Way(way));
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
          nb::arg("fd") = -1, nb::arg("mincore_trusted") = true,
          "The share of samples ids whose first byte's page is in memory: cachestat on fd (the file the buffer "
          "maps), else mincore on the buffer where mincore_trusted (the caller may write the file), else a "
          "1-byte preadv2 RWF_NOWAIT on fd; 1.0 where none can tell.");
}

void bind_readahead_testing(nb::module_ &t) {
    t.def("readahead_page_ranges", &page_ranges_for_tests, nb::arg("buffer"), nb::arg("offsets"), nb::arg("sizes"),
          nb::arg("ids"), nb::arg("granule") = 0,
          "advise_willneed's merged [start, end) page ranges, in bytes from the start of the buffer's first page.");
    t.def("resident_fraction_one_way", &resident_fraction_one_way, nb::arg("buffer"), nb::arg("offsets"),
          nb::arg("ids"), nb::arg("fd"), nb::arg("way"),
          "resident_fraction asked one way only: 1 cachestat, 2 mincore, 3 preadv2 RWF_NOWAIT (1.0 where it cannot tell).");
}

}  // namespace fastprune
