// Counter-based random numbers for the selection kernels.
//
// A value is a pure function of (seed, epoch, stream, counter): no generator state is carried
// between calls, so a selection depends only on (seed, epoch) and the score table, every rank of
// a distributed job draws the same numbers, and a resumed process needs no RNG state.
// The mixer is splitmix64's finaliser (Steele, Lea, Flood 2014), which passes BigCrush when fed
// consecutive counters; keys are derived by chaining it over the three coordinates.
#pragma once
#include <cstdint>

namespace fastprune {

inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

class CounterRng {
  public:
    CounterRng(uint64_t seed, uint64_t epoch, uint64_t stream)
        : key_(mix64(mix64(mix64(seed + 0x9E3779B97F4A7C15ULL) ^ epoch) + stream * 0xD1B54A32D192ED03ULL)) {}

    uint64_t bits(uint64_t counter) const { return mix64(key_ + (counter + 1) * 0x9E3779B97F4A7C15ULL); }

  private:
    uint64_t key_;
};

}  // namespace fastprune
