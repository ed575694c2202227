// Selection kernels for the pruning strategies: the score-table scatter update, bandit scores,
// O(N) top-k plus uniform sampling without replacement (select_kernels.hpp: sampled threshold
// bracket + nth_element, Floyd's subsets as bitmaps), and the InfoBatch split (Knuth's selection
// sampling, which streams in index order and gives exact sizes).
// Every random draw comes from CounterRng(seed, epoch, stream) indexed by a counter (rng.hpp).
#include "core.hpp"
#include "half.hpp"
#include "rng.hpp"
#include "select_kernels.hpp"

#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <cstring>
#include <limits>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastprune {
namespace {

template <typename T>
using NumpyArray = nb::ndarray<nb::numpy, T, nb::ndim<1>>;

// Hands a std::vector to numpy without copying (the capsule frees it).
template <typename T>
NumpyArray<T> to_numpy(std::vector<T> &&values) {
    auto *owned = new std::vector<T>(std::move(values));
    nb::capsule owner(owned, [](void *p) noexcept { delete static_cast<std::vector<T> *>(p); });
    return NumpyArray<T>(owned->data(), {owned->size()}, owner);
}

// Derived RNG streams: a kernel call with stream s uses 4*s+0 for breaking ties at the top-k
// threshold, 4*s+1 for its uniform part and 4*s+2 for the sample that brackets the threshold
// (which affects only the speed), so they never share numbers.
constexpr uint64_t kTieStream = 0, kRandomStream = 1, kSampleStream = 2;
CounterRng derived_rng(uint64_t seed, uint64_t epoch, uint64_t stream, uint64_t part) {
    return CounterRng(seed, epoch, stream * 4 + part);
}

// Knuth's selection sampling (TAOCP 3.4.2, Algorithm S): visiting a population of size `total`
// in order, take each item with probability need/remaining. Exactly `want` items are taken and
// every subset of that size is equally likely. The test u < need/remaining is done in integers
// (u a 32-bit uniform: u * remaining < need * 2^32), branch-free and without a division.
struct SelectionSampler {
    CounterRng rng;
    uint64_t total, need, visited = 0;
    SelectionSampler(CounterRng r, uint64_t total_, uint64_t want) : rng(r), total(total_), need(want) {}
    // Whether the next item is taken; `visit` false means the item is not part of the population.
    bool take(bool visit = true) {
        uint64_t u = rng.bits(visited) >> 32;
        bool taken = visit & (u * (total - visited) < (need << 32));
        visited += visit;
        need -= taken;
        return taken;
    }
};

// The latest freed large buffer, kept for the next one of about its size: every epoch selects
// about as many samples as the last, and a fresh buffer's pages cost page faults and the kernel's
// zeroing, more than the selection's own writes. One block at most is kept; never destroyed, so
// that a buffer freed during interpreter shutdown still finds it.
class SpareBlock {
  public:
    static SpareBlock &get() {
        static SpareBlock *spare = new SpareBlock;
        return *spare;
    }
    // A kept block of bytes..bytes*5/4, or null.
    void *take(size_t bytes) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!block_ || bytes_ < bytes || bytes_ > bytes + bytes / 4) return nullptr;
        void *p = block_;
        block_ = nullptr;
        return p;
    }
    void give(void *p, size_t bytes) {
        void *old;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            old = block_;
            block_ = p, bytes_ = bytes;
        }
        std::free(old);
    }

  private:
    std::mutex mutex_;
    void *block_ = nullptr;
    size_t bytes_ = 0;
};

// A heap buffer handed to numpy without copying or zero-filling. Large buffers are 2 MiB aligned
// and advised to use transparent huge pages on Linux (a fresh 400 MB output otherwise spends
// more time in page faults than the selection itself), and go back to SpareBlock when freed.
template <typename T>
struct Buffer {
    T *data = nullptr;
    size_t size = 0, bytes = 0;  // bytes > 0: a large buffer (SpareBlock's)
    Buffer() = default;
    explicit Buffer(size_t capacity) : size(capacity) {
        size_t want = std::max<size_t>(capacity, 1) * sizeof(T);
#if defined(__linux__)
        constexpr size_t kHuge = size_t(1) << 21;
        if (want >= 2 * kHuge) {
            bytes = (want + kHuge - 1) & ~(kHuge - 1);
            void *p = SpareBlock::get().take(bytes);
            if (!p) {
                p = std::aligned_alloc(kHuge, bytes);
                if (!p) throw std::bad_alloc();
                madvise(p, bytes, MADV_HUGEPAGE);  // advice only: failure is harmless
            }
            data = static_cast<T *>(p);
            return;
        }
#endif
        void *p = std::malloc(want);
        if (!p) throw std::bad_alloc();
        data = static_cast<T *>(p);
    }
    static void free(void *p, size_t bytes) noexcept {
        if (bytes) SpareBlock::get().give(p, bytes);
        else std::free(p);
    }
    void release() { free(data, bytes); data = nullptr; }
};

template <typename T>
NumpyArray<T> to_numpy(Buffer<T> buffer, size_t size) {
    struct Owned {
        void *data;
        size_t bytes;
    };
    Owned *owned = nullptr;
    try {
        owned = new Owned{buffer.data, buffer.bytes};
    } catch (...) {
        buffer.release();
        throw;
    }
    nb::capsule owner(owned, [](void *p) noexcept {
        auto *o = static_cast<Owned *>(p);
        Buffer<T>::free(o->data, o->bytes);
        delete o;
    });
    return NumpyArray<T>(buffer.data, {size}, owner);
}

// Indices (ascending) of the k_top highest scores plus k_rand drawn uniformly from the others
// (select_kernels.hpp has the definition and the algorithm).
template <class S>
Buffer<int64_t> top_plus_random(const select_detail::ScoreSource<S> &scores, uint64_t k_top, uint64_t k_rand,
                                uint64_t seed, uint64_t epoch, uint64_t stream, unsigned threads = 0,
                                bool one_pass = true) {
    if (scores.n >= (size_t(1) << 32)) fail_value("at most 2^32 - 1 samples are supported");
    Buffer<int64_t> out(k_top + k_rand + 1);
    int64_t got;
    try {
        got = select_detail::top_plus_random(scores, k_top, k_rand, derived_rng(seed, epoch, stream, kTieStream),
                                             derived_rng(seed, epoch, stream, kRandomStream),
                                             derived_rng(seed, epoch, stream, kSampleStream), out.data, threads,
                                             one_pass);
    } catch (...) {
        out.release();
        throw;
    }
    if (got < 0) {
        out.release();
        fail_value("scores[" + std::to_string(-1 - got) + "] is NaN; scores must be ordered");
    }
    if (uint64_t(got) != k_top + k_rand) {
        out.release();
        fail_value("internal error: top_plus_random selected the wrong count");
    }
    return out;
}

size_t checked_same_length(size_t n, size_t other, const char *name) {
    if (other != n)
        fail_value(std::string(name) + " has length " + std::to_string(other) + ", expected " + std::to_string(n));
    return n;
}

// ---- score table update --------------------------------------------------------------------

// The table's arrays; a null pointer is a field the table does not keep (ScoreTable allocates
// per strategy only what it reads). mean and seen are always kept. The float fields are stored as
// S::T (float, or the bits of a float16/bfloat16: half.hpp); the arithmetic is float's either way.
template <class S>
struct TableViews {
    typename S::T *mean, *var, *score;
    int32_t *seen, *last_epoch, *forgets;
    int8_t *last_correct;
    uint8_t *ever_correct;
    size_t n;
    double c;      // the bandit score's bonus weight (when score is kept)
    bool use_std;  // bonus = sqrt(var) (else var)
};

// A loss the table accepts: finite and |loss| <= kMaxLoss, so that a squared deviation between two
// accepted losses (at most (2e18)^2 = 4e36) fits in float32 (3.4e38) and the variance stays finite.
// A larger loss is treated as a non-finite one: refused, or skipped under skip_invalid.
constexpr float kMaxLoss = 1e18f;

inline bool loss_valid(float loss) { return std::isfinite(loss) && std::fabs(loss) <= kMaxLoss; }

std::string format_loss(float loss) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", double(loss));
    return buf;
}

// The first bad entry (index out of range, loss not finite or beyond kMaxLoss, correct not 0/1), or -1.
int64_t first_invalid(size_t n, const int64_t *idx, const float *loss, const int8_t *correct, size_t m,
                      std::string *why) {
    for (size_t j = 0; j < m; ++j) {
        if (idx[j] < 0 || uint64_t(idx[j]) >= n) {
            *why = "indices[" + std::to_string(j) + "] = " + std::to_string(idx[j]) + " is out of range for a table of " +
                   std::to_string(n) + " samples";
            return int64_t(j);
        }
        if (!loss_valid(loss[j])) {
            *why = "losses[" + std::to_string(j) + "] = " + format_loss(loss[j]) + " (sample " +
                   std::to_string(idx[j]) + (std::isfinite(loss[j]) ? ") is beyond +-1e18, where its variance "
                                                                         "would overflow float32"
                                                                       : ") is not finite");
            return int64_t(j);
        }
        if (correct && correct[j] != 0 && correct[j] != 1) {
            *why = "correct[" + std::to_string(j) + "] = " + std::to_string(int(correct[j])) + " is not 0 or 1";
            return int64_t(j);
        }
    }
    return -1;
}

bool entry_valid(size_t n, int64_t i, float loss, const int8_t *correct, size_t j) {
    return i >= 0 && uint64_t(i) < n && loss_valid(loss) && (!correct || correct[j] == 0 || correct[j] == 1);
}

// The bandit score: +inf while unseen (every arm is tried once before any is exploited), -inf
// for a sample tried whose every loss was skipped (seen == -1: it ranks last, retried only by a
// random part), else mean + c * (sqrt(var) or var), computed in double, saturated at the largest
// float (only an unseen sample scores +inf) and rounded once. c == 0 reads no variance, so a
// table without one (epsilon-greedy) ranks by the mean. var is stored as S::T, read widened.
template <class S = Float32Storage>
inline float bandit_score(float mean, const typename S::T *var, size_t i, int32_t seen, double c, bool use_std) {
    if (seen == 0) return std::numeric_limits<float>::infinity();
    if (seen < 0) return -std::numeric_limits<float>::infinity();
    if (c == 0.0) return mean;
    const float v = S::widen(var[i]);
    float bonus = use_std ? std::sqrt(std::max(v, 0.0f)) : v;
    double score = double(mean) + c * double(bonus);
    return float(std::min(score, double(std::numeric_limits<float>::max())));
}

// EMA of the loss and of its squared deviation (the incremental form of Finch 2009, "Incremental
// calculation of weighted mean and variance"). decay < 0 selects a plain running mean. The score
// column, where kept, is recomputed from the new state, so it always equals bandit_score.
// A 16-bit table computes the same from its stored values widened to float, and narrows each
// float32 result (S::narrow: round to nearest even, saturating, so mean and var stay finite).
template <class S>
void apply_one(TableViews<S> &t, int64_t i, float loss, int correct, double decay, int32_t epoch) {
    int32_t seen = std::max(t.seen[i], 0);  // -1 (tried, every loss skipped) starts afresh, as unseen
    if (seen == 0) {
        t.mean[i] = S::narrow(loss);
        if (t.var) t.var[i] = S::narrow(0.0f);
    } else {
        double alpha = decay < 0 ? 1.0 / (double(seen) + 1.0) : 1.0 - decay;
        const float mean = S::widen(t.mean[i]);
        double diff = double(loss) - mean;
        t.mean[i] = S::narrow(float(mean + alpha * diff));
        if (t.var) t.var[i] = S::narrow(float((1.0 - alpha) * (S::widen(t.var[i]) + alpha * diff * diff)));
    }
    if (seen < std::numeric_limits<int32_t>::max()) t.seen[i] = seen + 1;
    if (t.score)
        t.score[i] = S::narrow(bandit_score<S>(S::widen(t.mean[i]), t.var, size_t(i), t.seen[i], t.c, t.use_std));
    if (t.last_epoch) t.last_epoch[i] = epoch;
    if (correct >= 0) {
        if (t.last_correct[i] == 1 && correct == 0 && t.forgets[i] < std::numeric_limits<int32_t>::max()) ++t.forgets[i];
        t.last_correct[i] = int8_t(correct);
        t.ever_correct[i] |= uint8_t(correct);
    }
}

// A skipped entry of an unseen sample (index in range) marks it tried: seen = -1, score -inf, so a
// sample whose loss is always NaN is not re-chosen as "unseen" every epoch. A seen sample keeps its
// statistics.
template <class S>
void mark_tried(TableViews<S> &t, int64_t i) {
    if (i < 0 || uint64_t(i) >= t.n || t.seen[i] != 0) return;
    t.seen[i] = -1;
    if (t.score) t.score[i] = S::narrow(bandit_score<S>(S::widen(t.mean[i]), t.var, size_t(i), -1, t.c, t.use_std));
}

// An optional field: length n, or 0 for "not kept" (null).
template <typename T>
T *optional_field(Array1D<T> a, size_t n, const char *name) {
    if (a.shape(0) == 0) return nullptr;
    checked_same_length(n, a.shape(0), name);
    return a.data();
}

template <class S>
int64_t score_update(Array1D<typename S::T> mean, Array1D<typename S::T> var, Array1D<typename S::T> score,
                     Array1D<int32_t> seen, Array1D<int32_t> last_epoch, Array1D<int32_t> forgets,
                     Array1D<int8_t> last_correct, Array1D<uint8_t> ever_correct, ROArray1D<int64_t> indices,
                     ROArray1D<float> losses, ROArray1D<int8_t> correct, double decay, int32_t epoch,
                     bool has_correct, bool skip_invalid, double c, bool use_std) {
    size_t n = mean.shape(0);
    checked_same_length(n, seen.shape(0), "seen");
    TableViews<S> t{mean.data(), optional_field(var, n, "var"), optional_field(score, n, "score"), seen.data(),
                    optional_field(last_epoch, n, "last_epoch"), optional_field(forgets, n, "forgets"),
                    optional_field(last_correct, n, "last_correct"), optional_field(ever_correct, n, "ever_correct"),
                    n, c, use_std};
    size_t m = indices.shape(0);
    checked_same_length(m, losses.shape(0), "losses");
    if (has_correct) checked_same_length(m, correct.shape(0), "correct");
    if (has_correct && !(t.forgets && t.last_correct && t.ever_correct))
        fail_value("score update: `correct` given but the table keeps no forgets/last_correct/ever_correct");
    if (t.score && c != 0.0 && !t.var) fail_value("score update: a score with c != 0 needs the var field");
    if (!(decay < 1.0)) fail_value("decay must be < 1 (or negative for a running mean), got " + std::to_string(decay));

    const int64_t *idx = indices.data();
    const float *loss = losses.data();
    const int8_t *corr = has_correct ? correct.data() : nullptr;
    int64_t skipped = 0;
    std::string why;
    {
        GilReleased release;
        // Validate everything before touching the table, so an error leaves it unchanged.
        int64_t bad = skip_invalid ? -1 : first_invalid(n, idx, loss, corr, m, &why);
        if (bad < 0) {
            for (size_t j = 0; j < m; ++j) {
                if (skip_invalid && !entry_valid(n, idx[j], loss[j], corr, j)) {
                    ++skipped;
                    mark_tried(t, idx[j]);
                    continue;
                }
                apply_one(t, idx[j], loss[j], corr ? corr[j] : -1, decay, epoch);
            }
        }
    }
    if (!why.empty()) {
        if (why.rfind("indices", 0) == 0) fail_index("score update: " + why);
        fail_value("score update: " + why + " (pass skip_invalid=True to drop such entries)");
    }
    return skipped;
}

// The 16-bit storage a kind names ("float16" or "bfloat16", as ScoreTable's dtype spells it).
bool is_bfloat16(const std::string &kind) {
    if (kind != "float16" && kind != "bfloat16")
        fail_value("kind must be 'float16' or 'bfloat16', got '" + kind + "'");
    return kind == "bfloat16";
}

// score_update of a table whose float fields hold float16 or bfloat16 bits.
int64_t score_update_half(Array1D<uint16_t> mean, Array1D<uint16_t> var, Array1D<uint16_t> score,
                          Array1D<int32_t> seen, Array1D<int32_t> last_epoch, Array1D<int32_t> forgets,
                          Array1D<int8_t> last_correct, Array1D<uint8_t> ever_correct, ROArray1D<int64_t> indices,
                          ROArray1D<float> losses, ROArray1D<int8_t> correct, double decay, int32_t epoch,
                          bool has_correct, bool skip_invalid, double c, bool use_std, const std::string &kind) {
    auto update = is_bfloat16(kind) ? &score_update<BFloat16Storage> : &score_update<Float16Storage>;
    return update(mean, var, score, seen, last_epoch, forgets, last_correct, ever_correct, indices, losses, correct,
                  decay, epoch, has_correct, skip_invalid, c, use_std);
}

// `in` converted by `convert_n(in, n, out)` into a new array.
template <typename To, typename From, typename ConvertN>
NumpyArray<To> convert_all(ROArray1D<From> in, ConvertN convert_n) {
    size_t n = in.shape(0);
    Buffer<To> out(n);
    const From *p = in.data();
    {
        GilReleased release;
        convert_n(p, n, out.data);
    }
    return to_numpy(out, n);
}

NumpyArray<float> half_to_float32(ROArray1D<uint16_t> bits, const std::string &kind) {
    return is_bfloat16(kind) ? convert_all<float>(bits, BFloat16Storage::widen_n)
                             : convert_all<float>(bits, Float16Storage::widen_n);
}

// S::narrow of in[0, n) into out.
template <class S>
void narrow_n(const float *in, size_t n, uint16_t *out) {
    for (size_t i = 0; i < n; ++i) out[i] = S::narrow(in[i]);
}

NumpyArray<uint16_t> float32_to_half(ROArray1D<float> values, const std::string &kind) {
    return is_bfloat16(kind) ? convert_all<uint16_t>(values, narrow_n<BFloat16Storage>)
                             : convert_all<uint16_t>(values, narrow_n<Float16Storage>);
}

// ---- scores and selections -----------------------------------------------------------------

// The bandit scores of the whole table (what ScoreTable's score column holds; it recomputes it
// after loading a checkpoint). var may be empty when c == 0.
NumpyArray<float> bandit_scores(ROArray1D<float> mean, ROArray1D<float> var, ROArray1D<int32_t> seen, double c,
                                bool use_std) {
    size_t n = mean.shape(0);
    checked_same_length(n, seen.shape(0), "seen");
    if (c != 0.0 || var.shape(0) != 0) checked_same_length(n, var.shape(0), "var");
    Buffer<float> out(n);
    const float *mu = mean.data(), *v = var.shape(0) ? var.data() : nullptr;
    const int32_t *s = seen.data();
    {
        GilReleased release;
        for (size_t i = 0; i < n; ++i) out.data[i] = bandit_score(mu[i], v, i, s[i], c, use_std);
    }
    return to_numpy(out, n);
}

// select_top_random of n scores stored as S::T, after the argument checks (`name` is the binding's).
template <class S>
NumpyArray<int64_t> select_stored(const char *name, const typename S::T *scores, size_t n, int64_t k_top,
                                  int64_t k_rand, uint64_t seed, uint64_t epoch, uint64_t stream, int64_t threads,
                                  bool one_pass) {
    const std::string prefix = std::string(name) + ": ";
    if (threads < 0) fail_value(prefix + "threads must be >= 0 (0 = automatic)");
    if (n >= (size_t(1) << 32)) fail_value(prefix + "at most 2^32 - 1 samples are supported");
    if (k_top < 0 || k_rand < 0) fail_value(prefix + "k_top and k_rand must be >= 0");
    if (uint64_t(k_top) + uint64_t(k_rand) > n)
        fail_value(prefix + "k_top + k_rand = " + std::to_string(k_top + k_rand) + " exceeds the " +
                   std::to_string(n) + " scores");
    Buffer<int64_t> out;
    {
        GilReleased release;
        out = top_plus_random(select_detail::ScoreSource<S>{scores, n}, uint64_t(k_top), uint64_t(k_rand), seed,
                              epoch, stream, unsigned(std::min<int64_t>(threads, 2)), one_pass);
    }
    return to_numpy(out, size_t(k_top + k_rand));
}

NumpyArray<int64_t> select_top_random(ROArray1D<float> scores, int64_t k_top, int64_t k_rand, uint64_t seed,
                                      uint64_t epoch, uint64_t stream, int64_t threads, bool one_pass) {
    return select_stored<Float32Storage>("select_top_random", scores.data(), scores.shape(0), k_top, k_rand, seed,
                                         epoch, stream, threads, one_pass);
}

// select_top_random of float16 or bfloat16 (kind) scores given as their uint16 bits: read in place,
// widened a chunk at a time (no float32 copy), the same selection as of the widened scores.
NumpyArray<int64_t> select_top_random_half(ROArray1D<uint16_t> bits, const std::string &kind, int64_t k_top,
                                           int64_t k_rand, uint64_t seed, uint64_t epoch, uint64_t stream,
                                           int64_t threads, bool one_pass) {
    auto select = is_bfloat16(kind) ? &select_stored<BFloat16Storage> : &select_stored<Float16Storage>;
    return select("select_top_random_half", bits.data(), bits.shape(0), k_top, k_rand, seed, epoch, stream, threads,
                  one_pass);
}

NumpyArray<int64_t> sample_uniform(int64_t n, int64_t k, uint64_t seed, uint64_t epoch, uint64_t stream) {
    if (n < 0 || k < 0 || k > n)
        fail_value("sample_uniform: need 0 <= k <= n, got n=" + std::to_string(n) + " k=" + std::to_string(k));
    Buffer<int64_t> out;
    {
        GilReleased release;
        out = top_plus_random(select_detail::FloatScores{nullptr, size_t(n)}, 0, uint64_t(k), seed, epoch, stream);
    }
    return to_numpy(out, size_t(k));
}

std::pair<double, int64_t> masked_mean(ROArray1D<float> scores, ROArray1D<int32_t> seen) {
    size_t n = checked_same_length(scores.shape(0), seen.shape(0), "seen");
    const float *p = scores.data();
    const int32_t *s = seen.data();
    double sum = 0.0;
    int64_t count = 0;
    {
        GilReleased release;
        for (size_t i = 0; i < n; ++i) {
            bool used = s[i] > 0;
            sum += used ? double(p[i]) : 0.0;
            count += used;
        }
    }
    return {count ? sum / double(count) : 0.0, count};
}

// "Below" = seen and score < threshold, or tried with every loss skipped (seen == -1): the samples
// InfoBatch may prune.
inline bool is_below(const float *p, const int32_t *s, size_t i, float threshold) {
    return s[i] < 0 || (s[i] > 0 && p[i] < threshold);
}

int64_t count_below(ROArray1D<float> scores, ROArray1D<int32_t> seen, float threshold) {
    size_t n = checked_same_length(scores.shape(0), seen.shape(0), "seen");
    const float *p = scores.data();
    const int32_t *s = seen.data();
    int64_t count = 0;
    {
        GilReleased release;
        for (size_t i = 0; i < n; ++i) count += is_below(p, s, i, threshold);
    }
    return count;
}

std::pair<NumpyArray<int64_t>, NumpyArray<float>> split_sample(ROArray1D<float> scores, ROArray1D<int32_t> seen,
                                                                float threshold, int64_t k_below, float below_weight,
                                                                uint64_t seed, uint64_t epoch, uint64_t stream) {
    size_t n = checked_same_length(scores.shape(0), seen.shape(0), "seen");
    const float *p = scores.data();
    const int32_t *s = seen.data();
    std::vector<int64_t> idx;
    std::vector<float> weights;
    std::string error;
    {
        GilReleased release;
        uint64_t n_below = 0;
        for (size_t i = 0; i < n; ++i) n_below += is_below(p, s, i, threshold);
        if (n >= (size_t(1) << 32)) {
            error = "split_sample: at most 2^32 - 1 samples are supported";
        } else if (k_below < 0 || uint64_t(k_below) > n_below) {
            error = "split_sample: k_below = " + std::to_string(k_below) + " but only " + std::to_string(n_below) +
                    " samples lie below the threshold";
        } else {
            size_t k = n - n_below + uint64_t(k_below);
            idx.resize(k);
            weights.resize(k);
            SelectionSampler below(derived_rng(seed, epoch, stream, kRandomStream), n_below, uint64_t(k_below));
            size_t pos = 0;
            for (size_t i = 0; i < n; ++i) {
                if (!is_below(p, s, i, threshold)) {
                    idx[pos] = int64_t(i);
                    weights[pos++] = 1.0f;
                } else if (below.take()) {
                    idx[pos] = int64_t(i);
                    weights[pos++] = below_weight;
                }
            }
        }
    }
    if (!error.empty()) fail_value(error);
    return {to_numpy(std::move(idx)), to_numpy(std::move(weights))};
}

// The 32-bit uniforms selection sampling uses (the high half of each counter's 64 bits).
NumpyArray<uint32_t> random_u32(uint64_t seed, uint64_t epoch, uint64_t stream, uint64_t start, int64_t n) {
    if (n < 0) fail_value("random_u32: n must be >= 0");
    std::vector<uint32_t> out(static_cast<size_t>(n));
    CounterRng rng(seed, epoch, stream);
    for (int64_t i = 0; i < n; ++i) out[size_t(i)] = uint32_t(rng.bits(start + uint64_t(i)) >> 32);
    return to_numpy(std::move(out));
}

// The top-k threshold of n scores stored as S::T by one method, for tests: 0 automatic, 1 copy +
// nth_element, 2 radix histogram, 3 sampled bracket with a sample of `sample_size` and a margin of
// `sigmas`. Returns (key as float, # above, # equal, path taken).
template <class S>
std::tuple<float, int64_t, int64_t, int> threshold_of(const typename S::T *scores, size_t n, int64_t k, int method,
                                                      int64_t sample_size, double sigmas, uint64_t seed) {
    if (n >= (size_t(1) << 32) || k < 1 || uint64_t(k) > n) fail_value("threshold: need 1 <= k <= n < 2^32");
    if (sample_size < 0 || sample_size > (int64_t(1) << 24)) fail_value("threshold: bad sample_size");
    const select_detail::ScoreSource<S> p{scores, n};
    if (select_detail::first_nan(p) >= 0) fail_value("threshold: NaN");
    select_detail::ThresholdResult r;
    if (method == 1) r = {select_detail::kth_largest_copy(p, uint64_t(k)), -1, 0};
    else if (method == 2) r = {select_detail::kth_largest_histogram(p, uint64_t(k)), -1, 3};
    else if (method == 0 || method == 3)
        r = select_detail::kth_largest(p, uint64_t(k), CounterRng(seed, 0, 2), method == 3 ? size_t(sample_size) : 0,
                                       method == 3 ? sigmas : 4.5);
    else fail_value("threshold: unknown method");
    return {select_detail::key_to_float(r.th.key), int64_t(r.th.above), int64_t(r.th.equal), r.path};
}

std::tuple<float, int64_t, int64_t, int> threshold_for_tests(ROArray1D<float> scores, int64_t k, int method,
                                                             int64_t sample_size, double sigmas, uint64_t seed) {
    return threshold_of<Float32Storage>(scores.data(), scores.shape(0), k, method, sample_size, sigmas, seed);
}

std::tuple<float, int64_t, int64_t, int> threshold_half_for_tests(ROArray1D<uint16_t> bits, const std::string &kind,
                                                                  int64_t k, int method, int64_t sample_size,
                                                                  double sigmas, uint64_t seed) {
    auto threshold = is_bfloat16(kind) ? &threshold_of<BFloat16Storage> : &threshold_of<Float16Storage>;
    return threshold(bits.data(), bits.shape(0), k, method, sample_size, sigmas, seed);
}

}  // namespace

void bind_select(nb::module_ &m) {
    m.def("score_update", &score_update<Float32Storage>, nb::arg("mean"), nb::arg("var"), nb::arg("score"),
          nb::arg("seen"), nb::arg("last_epoch"), nb::arg("forgets"), nb::arg("last_correct"), nb::arg("ever_correct"),
          nb::arg("indices"), nb::arg("losses"), nb::arg("correct"), nb::arg("decay"), nb::arg("epoch"),
          nb::arg("has_correct"), nb::arg("skip_invalid"), nb::arg("c") = 0.0, nb::arg("use_std") = true,
          "Scatter (index, loss[, correct]) into the score table, in order; returns the number skipped. "
          "Optional fields (var, score, last_epoch, the correctness ones) may be empty: not kept. A kept "
          "score is set to bandit_scores' value (c, use_std) of every updated sample.");
    // noconvert: a converted copy of a table array would take the update and be dropped, and
    // float16 values converted to uint16 are not their bits.
    m.def("score_update_half", &score_update_half, nb::arg("mean").noconvert(), nb::arg("var").noconvert(),
          nb::arg("score").noconvert(), nb::arg("seen").noconvert(), nb::arg("last_epoch").noconvert(),
          nb::arg("forgets").noconvert(), nb::arg("last_correct").noconvert(), nb::arg("ever_correct").noconvert(),
          nb::arg("indices"), nb::arg("losses"), nb::arg("correct"), nb::arg("decay"), nb::arg("epoch"),
          nb::arg("has_correct"), nb::arg("skip_invalid"), nb::arg("c"), nb::arg("use_std"), nb::arg("kind"),
          "score_update for mean/var/score stored as float16 or bfloat16 (kind) bits, uint16: the same "
          "float arithmetic on the widened values, each result rounded to nearest even and saturated "
          "at the largest finite value of the kind.");
    m.def("half_to_float32", &half_to_float32, nb::arg("bits").noconvert(), nb::arg("kind"),
          "float16 or bfloat16 (kind) values given as uint16 bits, widened exactly to float32.");
    m.def("float32_to_half", &float32_to_half, nb::arg("values").noconvert(), nb::arg("kind"),
          "float32 values rounded to float16 or bfloat16 (kind) bits, uint16: to nearest even; a finite "
          "value saturates at the largest finite one (65504, 3.3895e38); inf stays inf, NaN NaN.");
    m.def("bandit_scores", &bandit_scores, nb::arg("mean"), nb::arg("var"), nb::arg("seen"), nb::arg("c"),
          nb::arg("use_std"), "mean + c*sqrt(var) (or c*var; var unread and may be empty when c == 0); "
          "+inf for unseen samples.");
    m.def(
        "select_top_random",
        [](ROArray1D<float> scores, int64_t k_top, int64_t k_rand, uint64_t seed, uint64_t epoch, uint64_t stream,
           int64_t threads) { return select_top_random(scores, k_top, k_rand, seed, epoch, stream, threads, true); },
        nb::arg("scores"), nb::arg("k_top"), nb::arg("k_rand"), nb::arg("seed"), nb::arg("epoch"), nb::arg("stream"),
        nb::arg("threads") = 0,
        "Ascending indices of the k_top highest scores (ties broken uniformly at random) plus k_rand "
        "uniformly sampled without replacement from the rest. O(N), no sort. threads: 0 = automatic "
        "(up to 2, from 2^20 scores); the result is the same for every thread count.");
    // noconvert: float16 values converted to uint16 are not their bits (nor would a float32 copy be wanted)
    m.def(
        "select_top_random_half",
        [](ROArray1D<uint16_t> bits, const std::string &kind, int64_t k_top, int64_t k_rand, uint64_t seed,
           uint64_t epoch, uint64_t stream, int64_t threads) {
            return select_top_random_half(bits, kind, k_top, k_rand, seed, epoch, stream, threads, true);
        },
        nb::arg("bits").noconvert(), nb::arg("kind"), nb::arg("k_top"), nb::arg("k_rand"), nb::arg("seed"),
        nb::arg("epoch"), nb::arg("stream"), nb::arg("threads") = 0,
        "select_top_random of float16 or bfloat16 (kind) scores given as their bits (uint16, C-contiguous), "
        "read in place without a float32 copy: the same indices as select_top_random of "
        "half_to_float32(bits, kind).");
    m.def("sample_uniform", &sample_uniform, nb::arg("n"), nb::arg("k"), nb::arg("seed"), nb::arg("epoch"),
          nb::arg("stream"), "k ascending indices drawn uniformly without replacement from range(n).");
    m.def("masked_mean", &masked_mean, nb::arg("scores"), nb::arg("seen"),
          "(mean of scores over seen samples, number of seen samples).");
    m.def("count_below", &count_below, nb::arg("scores"), nb::arg("seen"), nb::arg("threshold"),
          "Number of samples seen with score < threshold, plus those tried with every loss skipped (seen -1).");
    m.def("split_sample", &split_sample, nb::arg("scores"), nb::arg("seen"), nb::arg("threshold"),
          nb::arg("k_below"), nb::arg("below_weight"), nb::arg("seed"), nb::arg("epoch"), nb::arg("stream"),
          "InfoBatch split: every sample not below the threshold (weight 1) plus k_below of the below ones, "
          "uniformly without replacement (weight below_weight). Returns (indices, weights).");
}

// Hooks for the tests only (fastprune._core.testing): oracles reach the kernels' random numbers and
// internal paths through them; nothing in src/fastprune calls them.
void bind_select_testing(nb::module_ &t) {
    t.def("random_u32", &random_u32, nb::arg("seed"), nb::arg("epoch"), nb::arg("stream"), nb::arg("start"),
          nb::arg("n"),
          "The 32-bit uniforms (high half of each counter's 64 bits) that selection sampling compares and "
          "Floyd's subset draws use.");
    t.def("threshold", &threshold_for_tests, nb::arg("scores"), nb::arg("k"), nb::arg("method"),
          nb::arg("sample_size") = 0, nb::arg("sigmas") = 4.5, nb::arg("seed") = 0,
          "The k-th largest score, # above, # equal, path (0 copy, 1 bracket, 2 bracket end, "
          "3 histogram) by method 0 auto, 1 copy, 2 histogram, 3 bracket with the given sample.");
    t.def("threshold_half", &threshold_half_for_tests, nb::arg("bits").noconvert(), nb::arg("kind"), nb::arg("k"),
          nb::arg("method"), nb::arg("sample_size") = 0, nb::arg("sigmas") = 4.5, nb::arg("seed") = 0,
          "threshold of float16 or bfloat16 (kind) scores given as their uint16 bits, read in place.");
    t.def("select_top_random", &select_top_random, nb::arg("scores"), nb::arg("k_top"), nb::arg("k_rand"),
          nb::arg("seed"), nb::arg("epoch"), nb::arg("stream"), nb::arg("threads") = 0, nb::arg("one_pass") = true,
          "fastprune._core.select_top_random with the path chosen: one_pass=False forces the two-pass "
          "path (the result must be the same).");
    t.def("select_top_random_half", &select_top_random_half, nb::arg("bits").noconvert(), nb::arg("kind"),
          nb::arg("k_top"), nb::arg("k_rand"), nb::arg("seed"), nb::arg("epoch"), nb::arg("stream"),
          nb::arg("threads") = 0, nb::arg("one_pass") = true,
          "fastprune._core.select_top_random_half with the path chosen, as select_top_random's hook.");
}

}  // namespace fastprune
