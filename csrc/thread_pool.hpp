// A small persistent thread pool for the loader's batch kernels.
//
// Why persistent: a batch takes ~0.1-2 ms to gather; spawning threads per batch would cost as
// much as the work. Workers sleep on a condition variable between jobs. The calling thread
// takes part in every job, so a pool of N threads owns N-1 std::threads.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>  // getpid
#endif
#if defined(__linux__)
#include <cerrno>
#include <sys/resource.h>
#include <sys/syscall.h>
#endif

namespace fastprune {

class ThreadPool {
public:
    // nice > 0: the workers lower their scheduling priority by that much (Linux; see lower_priority).
    explicit ThreadPool(size_t threads, int nice = 0)
        : size_(std::max<size_t>(threads, 1)), nice_(nice), owner_(process_id()) {
        // A thread that cannot start (a container's thread or memory limit) throws: the workers
        // already running wait on this object's condition variables, so they are stopped and
        // joined before it unwinds (destroying a waited-on condition variable hangs in glibc,
        // and a joinable std::thread's destructor calls terminate()).
        try {
            workers_.reserve(size_ - 1);
            for (size_t t = 1; t < size_; ++t) workers_.emplace_back([this] { worker_loop(); });
        } catch (const std::exception &e) {
            const size_t started = workers_.size();
            stop_and_join();
            throw std::runtime_error("cannot start " + std::to_string(size_ - 1) + " native loader threads (" +
                                     std::to_string(started) + " started: " + e.what() +
                                     "); ask for fewer threads (Loader(threads=N))");
        }
    }
    ~ThreadPool() {
        if (forked()) {  // the workers were not copied into this process: nothing to stop or join
            new std::vector<std::thread>(std::move(workers_));  // leaked: destroying them would terminate()
            // The copied condition variables still count the parent's sleeping workers as
            // waiters, and glibc's pthread_cond_destroy waits for them forever: a child that
            // exited or dropped its Loader hung. Fresh ones (and fresh mutexes, which a parent
            // thread may have held at the fork) are what the member destructors then destroy;
            // the copies are abandoned, never destroyed.
            new (&wake_) std::condition_variable();
            new (&done_) std::condition_variable();
            new (&mutex_) std::mutex();
            new (&job_mutex_) std::mutex();
            return;
        }
        stop_and_join();
    }
    ThreadPool(const ThreadPool &) = delete;
    ThreadPool &operator=(const ThreadPool &) = delete;

    size_t size() const { return size_; }
    int nice() const { return nice_; }

    // Runs fn(i) for i in [0, n) on up to max_threads threads (0 = all) and rethrows the first
    // exception a task raised. Concurrent callers are serialised: one job at a time.
    void parallel_for(size_t n, size_t max_threads, const std::function<void(size_t)> &fn) {
        size_t wanted = max_threads == 0 ? size_ : std::min(max_threads, size_);
        // Inline: no locking, no wake-ups. Also in a forked child (a Loader iterated after
        // os.fork), which has no workers, and whose mutexes another thread may have held.
        if (wanted <= 1 || n <= 1 || forked()) {
            for (size_t i = 0; i < n; ++i) fn(i);
            return;
        }
        std::lock_guard<std::mutex> job_lock(job_mutex_);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            fn_ = &fn;
            n_ = n;
            next_.store(0);
            helpers_wanted_ = wanted - 1;
            helpers_joined_ = 0;  // reset only here, so no late worker joins a finished job
            helpers_done_ = 0;
            error_ = nullptr;
            ++generation_;
        }
        wake_.notify_all();
        run_tasks();
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [this] { return helpers_done_ == helpers_wanted_; });
        fn_ = nullptr;
        // taken out, not copied: the exception (and its message) does not live on in the pool
        // until the next job, which would free it on another thread under the job's locks
        if (std::exception_ptr error = std::exchange(error_, nullptr)) {
            lock.unlock();
            std::rethrow_exception(error);
        }
    }

private:
    void stop_and_join() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (auto &w : workers_) w.join();
        workers_.clear();
    }

    static long process_id() {
#if defined(__unix__) || defined(__APPLE__)
        return long(getpid());
#else
        return 0;
#endif
    }
    bool forked() const { return process_id() != owner_; }

    void run_tasks() {
        for (size_t i = next_.fetch_add(1); i < n_; i = next_.fetch_add(1)) {
            try {
                (*fn_)(i);
            } catch (...) {
                std::lock_guard<std::mutex> lock(mutex_);
                if (!error_) error_ = std::current_exception();
                next_.store(n_);  // stop handing out work
            }
        }
    }

    // A new thread starts at its creator's nice value; a worker adds nice_ to it, as the Python
    // producer threads do (Loader(thread_nice=...)), so that the thread launching a GPU's work
    // is not queued behind decoding. Failure (a sandbox forbidding it) leaves the priority as is.
    void lower_priority() const {
#if defined(__linux__)
        if (nice_ <= 0) return;
        const id_t tid = id_t(syscall(SYS_gettid));
        errno = 0;
        const int current = getpriority(PRIO_PROCESS, tid);
        if (current == -1 && errno != 0) return;
        setpriority(PRIO_PROCESS, tid, std::min(19, current + nice_));
#endif
    }

    void worker_loop() {
        lower_priority();
        size_t seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return stopping_ || (generation_ != seen && helpers_joined_ < helpers_wanted_); });
                if (stopping_) return;
                seen = generation_;
                ++helpers_joined_;
            }
            run_tasks();
            {
                std::lock_guard<std::mutex> lock(mutex_);
                ++helpers_done_;
            }
            done_.notify_all();
        }
    }

    size_t size_;
    int nice_;
    long owner_;  // the process that started the workers
    std::vector<std::thread> workers_;
    std::mutex job_mutex_;  // one job at a time
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    const std::function<void(size_t)> *fn_ = nullptr;
    size_t n_ = 0;
    std::atomic<size_t> next_{0};
    size_t generation_ = 0, helpers_wanted_ = 0, helpers_joined_ = 0, helpers_done_ = 0;
    bool stopping_ = false;
    std::exception_ptr error_;
};

}  // namespace fastprune
