// Selection kernels for the pruning strategies (score updates, top-k, sampling, RNG).
#include "core.hpp"

namespace fastprune {
void bind_select(nb::module_ &m) {}
}  // namespace fastprune
