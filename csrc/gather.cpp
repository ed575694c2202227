// Batch gather / decode for the loader.
#include "core.hpp"

namespace fastprune {
void bind_loader(nb::module_ &m) {}
}  // namespace fastprune
