// Test-only hooks for gil.hpp: a native section that ends while the interpreter exits.
#include <chrono>
#include <thread>

#include "core.hpp"

namespace fastprune {

void bind_gil_testing(nb::module_ &t) {
    t.def(
        "sleep_without_gil",
        [](double seconds) {
            GilReleased release;
            std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
        },
        nb::arg("seconds"), "Sleep in a native section that runs without the GIL (as a kernel does).");
    t.def(
        "sleep_holding_gil",
        [](double seconds) { std::this_thread::sleep_for(std::chrono::duration<double>(seconds)); },
        nb::arg("seconds"), "Sleep holding the GIL: other threads wait for it meanwhile.");
}

}  // namespace fastprune
