// Releasing the GIL around native work, safe at interpreter exit.
//
// Why not nb::gil_scoped_release: a thread still in native work when Python finalizes (a daemon
// thread of the user's, calling Store.verify or a selection kernel) takes the GIL back in that
// guard's destructor. Python 3.10-3.13 then end the thread with pthread_exit, which glibc runs as a
// forced unwind; the unwind reaches the noexcept destructor (or nanobind's catch (...), which
// swallows it) and the process aborts: "terminate called without an active exception". Python
// 3.14 parks such a thread instead; this guard does the same on every version: it catches the
// unwind and the thread sleeps until the process ends, holding nothing (Python released the GIL
// before ending it). Elsewhere (macOS, Windows) ending a thread does not unwind C++ frames.
#pragma once
#include <nanobind/nanobind.h>

#include <chrono>
#include <thread>

namespace fastprune {

// Never returns: the process is ending and the thread must not run on without the GIL.
[[noreturn]] inline void park_thread_until_exit() noexcept {
    for (;;) std::this_thread::sleep_for(std::chrono::hours(24));
}

class GilReleased {
public:
    GilReleased() : state_(PyEval_SaveThread()) {}
    // Python decides which thread it ends: any but the one finalizing (which may itself run native
    // code in a __del__ at teardown, and must go on). No check of Py_IsFinalizing() here, which
    // is true on that thread too: parking it hung the exit.
    ~GilReleased() {
        try {
            PyEval_RestoreThread(state_);
        } catch (...) {  // glibc's forced unwind (Python ending this thread): never leave the handler
            park_thread_until_exit();  // (catching abi::__forced_unwind & by name binds a null reference: UBSan)
        }
    }
    GilReleased(const GilReleased &) = delete;
    GilReleased &operator=(const GilReleased &) = delete;

private:
    PyThreadState *state_;
};

}  // namespace fastprune
