// Shared declarations of the native core.
#pragma once
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include "gil.hpp"  // GilReleased: every native section that runs without the GIL
#include <cstdint>
#include <stdexcept>
#include <string>

namespace nb = nanobind;

namespace fastprune {

// One registration function per area; each lives in its own .cpp.
void bind_store(nb::module_ &m);   // store_checks.cpp: checksums, bounds validation
void bind_select(nb::module_ &m);  // select.cpp: score updates, selection kernels, RNG
void bind_loader(nb::module_ &m);  // gather.cpp: batch gather / decode
void bind_readahead(nb::module_ &m);  // readahead.cpp: read-ahead hints for a store not in memory
// Hooks that exist only for the tests, bound into the submodule fastprune._core.testing.
void bind_store_testing(nb::module_ &t);   // store_checks.cpp
void bind_select_testing(nb::module_ &t);  // select.cpp
void bind_gil_testing(nb::module_ &t);     // gil_testing.cpp
void bind_readahead_testing(nb::module_ &t);  // readahead.cpp

// Read-only 1-D views used by the kernels (C-contiguous, on the CPU).
template <typename T>
using Array1D = nb::ndarray<T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
template <typename T>
using ROArray1D = nb::ndarray<const T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// Errors raised with context become Python ValueError / IndexError (nanobind translates
// std::invalid_argument -> ValueError, std::out_of_range -> IndexError).
[[noreturn]] inline void fail_value(const std::string &msg) { throw std::invalid_argument(msg); }
[[noreturn]] inline void fail_index(const std::string &msg) { throw std::out_of_range(msg); }

}  // namespace fastprune
