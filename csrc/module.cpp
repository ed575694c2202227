// fastprune._core: the native core. This file only assembles the module; each area binds its
// own functions from its own translation unit (see the bind_* declarations in core.hpp).
#include "core.hpp"

NB_MODULE(_core, m) {
    m.doc() = "fastprune native core: store checks, selection kernels, batch gather/decode";
    m.attr("ABI_VERSION") = 1;
    // A Loader still referenced at exit (a daemon thread's frame, a forked child) is not freed by
    // the interpreter's teardown; nanobind would call that "likely a reference counting issue in
    // the binding code", a false alarm for users.
    nb::set_leak_warnings(false);
    fastprune::bind_store(m);
    fastprune::bind_select(m);
    fastprune::bind_loader(m);
    fastprune::bind_readahead(m);
    // Test-only hooks live apart, so the product's surface is exactly the names above.
    nb::module_ testing = m.def_submodule("testing", "hooks for fastprune's tests only (oracles, forced paths)");
    fastprune::bind_store_testing(testing);
    fastprune::bind_select_testing(testing);
    fastprune::bind_gil_testing(testing);
    fastprune::bind_readahead_testing(testing);
}
