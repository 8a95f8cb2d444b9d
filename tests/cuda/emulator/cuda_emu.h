/*
 * cuda_emu.h -- run the CUDA kernels of csrc/ on the CPU, for the tests.
 *
 * CI has no GPU, yet the GPU engine's kernels hold more than the per-row
 * math the CPU tests already cover: tiling, shared-memory layouts, warp
 * reductions, grid-stride loops, argument lists.  This header lets g++ compile
 * a .cu source unchanged and run its kernels with CUDA's execution model:
 *
 * - every thread of a block is a fiber with its own stack, so a
 *   thread's locals live across __syncthreads as on the device;
 * - __syncthreads() parks the fiber until every thread of the block has
 *   reached a barrier; __shfl_down_sync parks it until all 32 lanes of its
 *   warp have posted their value.  A barrier that not every thread (or lane)
 *   reaches is reported as an error instead of hanging;
 * - between barriers a block's threads run one at a time, in increasing
 *   order in one block and decreasing in the next (alternating by launch
 *   too), so that a race -- a result that depends on the order -- shows;
 * - blocks run one after another, each on freshly poisoned shared memory
 *   (every byte 0xFF, a NaN in float and double) so that reading a value no
 *   thread wrote shows up in the results; a write past the launch's dynamic
 *   shared memory is reported;
 * - the launcher checks the geometry (at most 1024 threads, 48 KiB of dynamic
 *   shared memory: the limits without opt-in) and every argument's type and
 *   size against the kernel's signature, as the driver would not.
 *
 * What it cannot show: timing, the device's libm (host libm is used), and
 * every interleaving of real warps (a race shows only where one of the two
 * orders exposes it).  The device runs remain the proof.
 *
 * tests/cuda/emulator/cupy (a stand-in for CuPy over NumPy) compiles each
 * RawModule source with this header first and a table of its kernels after
 * (PFC_EMU_KERNEL); Python calls pfc_emu_launch through ctypes.
 */
#ifndef PFC_CUDA_EMU_H
#define PFC_CUDA_EMU_H

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __align__(n) __attribute__((aligned(n)))

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };

static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;

namespace pfc_emu {

constexpr std::size_t kSmemLimit = 48 * 1024;     // dynamic shared memory without opt-in
constexpr std::size_t kSmemGuard = 16 * 1024;     // checked for stray writes past it
constexpr int kMaxThreads = 1024;
constexpr std::size_t kStackBytes = 256 * 1024;   // per thread, plus a guard page
constexpr std::size_t kPage = 4096;

enum class State { Runnable, AtSync, AtWarp, Done };

/* A fiber starts through makecontext/swapcontext; after that it and the
 * scheduler switch with _setjmp/_longjmp, which (unlike swapcontext) do not
 * save the signal mask with a system call: the VJP kernels switch fibers
 * hundreds of thousands of times per launch. */
struct Fiber {
    ucontext_t ctx;
    jmp_buf jump;
    bool started;
    State state;
    unsigned char slot[16];  // the value a lane offers to a shuffle
};

struct Machine {
    ucontext_t scheduler;
    jmp_buf scheduler_jump;
    Fiber fibers[kMaxThreads];
    int nthreads = 0;
    int current = 0;
    unsigned char* stacks = nullptr;  // kMaxThreads stacks, guard page below each
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
    std::string error;
};

static Machine machine;

inline void fail(const std::string& what) {
    if (machine.error.empty()) machine.error = what;
}

inline Fiber& self() { return machine.fibers[machine.current]; }

inline void park(State s) {
    Fiber& f = self();
    f.state = s;
    if (!_setjmp(f.jump)) _longjmp(machine.scheduler_jump, 1);
}

inline void fiber_entry() {
    machine.body(machine.body_arg);
    self().state = State::Done;
    _longjmp(machine.scheduler_jump, 1);  // never returns through uc_link
}

}  // namespace pfc_emu

inline void __syncthreads() { pfc_emu::park(pfc_emu::State::AtSync); }

template <typename T>
inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = 32) {
    static_assert(sizeof(T) <= sizeof(pfc_emu::Fiber::slot), "shuffled type too large");
    using pfc_emu::machine;
    if (mask != 0xffffffffu || width != 32) {
        pfc_emu::fail("__shfl_down_sync: only the full-warp form (mask 0xffffffff, width 32) is "
                      "emulated");
    }
    std::memcpy(pfc_emu::self().slot, &var, sizeof(T));
    pfc_emu::park(pfc_emu::State::AtWarp);  // every lane has posted its value
    T result = var;
    const int lane = machine.current % 32;
    if (lane + static_cast<int>(delta) < 32) {
        std::memcpy(&result, machine.fibers[machine.current + delta].slot, sizeof(T));
    }
    pfc_emu::park(pfc_emu::State::AtWarp);  // every lane has read before any posts again
    return result;
}

namespace pfc_emu {

inline bool allocate_stacks() {
    if (machine.stacks != nullptr) return true;
    const std::size_t total = kMaxThreads * (kStackBytes + kPage);
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) return false;
    machine.stacks = static_cast<unsigned char*>(p);
    // A guard page below each stack turns an overflow into a fault, not corruption.
    for (int t = 0; t < kMaxThreads; ++t) {
        mprotect(machine.stacks + t * (kStackBytes + kPage), kPage, PROT_NONE);
    }
    return true;
}

/* Run one block to completion (or to the first error).  Between barriers the
 * threads run one after another, in increasing order or, when `reverse`, in
 * decreasing order: a result that depends on the order is a race. */
inline void run_block(int nthreads, bool reverse) {
    machine.nthreads = nthreads;
    for (int t = 0; t < nthreads; ++t) {
        Fiber& f = machine.fibers[t];
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = machine.stacks + t * (kStackBytes + kPage) + kPage;
        f.ctx.uc_stack.ss_size = kStackBytes;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_entry, 0);
        f.started = false;
        f.state = State::Runnable;
    }
    for (;;) {
        for (int i = 0; i < nthreads; ++i) {
            const int t = reverse ? nthreads - 1 - i : i;
            Fiber& f = machine.fibers[t];
            if (f.state != State::Runnable) continue;
            machine.current = t;
            threadIdx = {static_cast<unsigned>(t) % blockDim.x,
                         static_cast<unsigned>(t) / blockDim.x % blockDim.y,
                         static_cast<unsigned>(t) / (blockDim.x * blockDim.y)};
            if (!_setjmp(machine.scheduler_jump)) {
                if (f.started) _longjmp(f.jump, 1);
                f.started = true;
                swapcontext(&machine.scheduler, &f.ctx);
            }
            if (!machine.error.empty()) return;
        }
        // Every fiber is parked or done.  Warps whose lanes all wait at a
        // shuffle go on first (warps run independently of each other) ...
        bool released = false;
        for (int w = 0; w * 32 < nthreads; ++w) {
            bool all = true;
            for (int t = w * 32; t < w * 32 + 32 && t < nthreads; ++t) {
                all = all && machine.fibers[t].state == State::AtWarp;
            }
            if (all) {
                for (int t = w * 32; t < w * 32 + 32 && t < nthreads; ++t) {
                    machine.fibers[t].state = State::Runnable;
                }
                released = true;
            }
        }
        if (released) continue;
        // ... then the block barrier, which needs every thread.
        int at_sync = 0, done = 0;
        for (int t = 0; t < nthreads; ++t) {
            at_sync += machine.fibers[t].state == State::AtSync;
            done += machine.fibers[t].state == State::Done;
        }
        if (done == nthreads) return;
        if (at_sync == nthreads) {
            for (int t = 0; t < nthreads; ++t) machine.fibers[t].state = State::Runnable;
            continue;
        }
        char buf[200];
        std::snprintf(buf, sizeof buf,
                      "block %u: a barrier not reached by every thread (%d at __syncthreads, %d "
                      "finished, %d at a warp shuffle of a partly waiting warp, of %d)",
                      blockIdx.x, at_sync, done, nthreads - at_sync - done, nthreads);
        fail(buf);
        return;
    }
}

/* The kernel table: one entry per instantiated kernel. */
struct Kernel {
    const char* name;
    // Checks the arguments' kinds ('F' / 'I': pointer to floating / integer
    // values; 'f' / 'i': scalars) and sizes against the signature; empty
    // string when they match.
    std::string (*check)(int nargs, const char* kinds, const int* sizes);
    void (*invoke)(void** args);
};

template <typename A>
std::string check_one(int i, char kind, int size) {
    using P = std::remove_cv_t<std::remove_pointer_t<A>>;
    char want_kind;
    int want_size;
    if constexpr (std::is_pointer_v<A>) {
        want_kind = std::is_floating_point_v<P> ? 'F' : 'I';
        want_size = static_cast<int>(sizeof(P));
    } else {
        want_kind = std::is_floating_point_v<A> ? 'f' : 'i';
        want_size = static_cast<int>(sizeof(A));
    }
    if (kind == want_kind && size == want_size) return "";
    char buf[160];
    std::snprintf(buf, sizeof buf,
                  "argument %d: the kernel takes %s of %d bytes, the launch passed %s of %d bytes",
                  i, (want_kind == 'F' || want_kind == 'I') ? "a pointer to values" : "a scalar",
                  want_size, (kind == 'F' || kind == 'I') ? "an array of values" : "a scalar", size);
    return buf;
}

template <auto F> struct KernelOf;

template <typename... Args, void (*F)(Args...)>
struct KernelOf<F> {
    static std::string check(int nargs, const char* kinds, const int* sizes) {
        if (nargs != static_cast<int>(sizeof...(Args))) {
            return "the kernel takes " + std::to_string(sizeof...(Args)) + " arguments, the launch passed " +
                   std::to_string(nargs);
        }
        return check_all(kinds, sizes, std::index_sequence_for<Args...>{});
    }
    template <std::size_t... I>
    static std::string check_all(const char* kinds, const int* sizes, std::index_sequence<I...>) {
        std::string err;
        ((err.empty() ? (void)(err = check_one<Args>(static_cast<int>(I), kinds[I], sizes[I]))
                      : (void)0),
         ...);
        return err;
    }
    template <std::size_t... I>
    static void call(void** args, std::index_sequence<I...>) {
        F(*static_cast<std::remove_reference_t<Args>*>(args[I])...);
    }
    static void invoke(void** args) { call(args, std::index_sequence_for<Args...>{}); }
};

}  // namespace pfc_emu

#define PFC_EMU_KERNEL(...) \
    { #__VA_ARGS__, &pfc_emu::KernelOf<&__VA_ARGS__>::check, &pfc_emu::KernelOf<&__VA_ARGS__>::invoke },

/* After the kernel table (pfc_emu_kernels[]) is defined: the dynamic shared
 * memory of pfc_cuda.cuh and the entry point Python calls. */
#define PFC_EMU_LAUNCHER                                                                         \
    namespace pfc { namespace cuda {                                                             \
    __attribute__((aligned(64))) unsigned char smem_bytes[pfc_emu::kSmemLimit + pfc_emu::kSmemGuard]; \
    } }                                                                                          \
    extern "C" int pfc_emu_launch(const char* name, const unsigned* grid, const unsigned* block,  \
                                  unsigned long long smem, int nargs, void** args,               \
                                  const char* kinds, const int* sizes, char* err, int errlen) {  \
        return pfc_emu::launch(pfc_emu_kernels, sizeof pfc_emu_kernels / sizeof *pfc_emu_kernels, \
                               pfc::cuda::smem_bytes, name, grid, block, smem, nargs, args,       \
                               kinds, sizes, err, errlen);                                       \
    }

namespace pfc_emu {

struct Launch {
    const Kernel* kernel;
    void** args;
};

inline void run_kernel(void* launch) {
    const Launch* l = static_cast<const Launch*>(launch);
    l->kernel->invoke(l->args);
}

inline int launch(const Kernel* table, std::size_t count, unsigned char* smem_area,
                  const char* name, const unsigned* grid, const unsigned* block,
                  unsigned long long smem, int nargs, void** args, const char* kinds,
                  const int* sizes, char* err, int errlen) {
    static unsigned long long launches = 0;
    ++launches;
    machine.error.clear();
    const Kernel* kernel = nullptr;
    for (std::size_t i = 0; i < count; ++i) {
        if (std::strcmp(table[i].name, name) == 0) kernel = &table[i];
    }
    std::string e;
    const unsigned long long threads = 1ull * block[0] * block[1] * block[2];
    if (kernel == nullptr) {
        e = std::string("no kernel named ") + name;
    } else if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[1] > 65535 || grid[2] > 65535) {
        e = "invalid grid";
    } else if (threads == 0 || threads > kMaxThreads || block[2] > 64) {
        e = "invalid block: " + std::to_string(threads) + " threads";
    } else if (smem > kSmemLimit) {
        e = "dynamic shared memory of " + std::to_string(smem) + " bytes is over the 48 KiB limit";
    } else if (!allocate_stacks()) {
        e = "no memory for the thread stacks";
    } else {
        e = kernel->check(nargs, kinds, sizes);
    }
    if (e.empty()) {
        Launch l{kernel, args};
        machine.body = run_kernel;
        machine.body_arg = &l;
        blockDim = {block[0], block[1], block[2]};
        gridDim = {grid[0], grid[1], grid[2]};
        const std::size_t area = kSmemLimit + kSmemGuard;
        for (unsigned z = 0; z < grid[2] && e.empty(); ++z)
            for (unsigned y = 0; y < grid[1] && e.empty(); ++y)
                for (unsigned x = 0; x < grid[0] && e.empty(); ++x) {
                    blockIdx = {x, y, z};
                    std::memset(smem_area, 0xFF, area);
                    // Alternate the order by launch and block, so that the
                    // tests' repeated runs (determinism, agreement) see both.
                    run_block(static_cast<int>(threads), (launches + x + y + z) % 2 == 1);
                    e = machine.error;
                    for (std::size_t b = smem; b < area && e.empty(); ++b) {
                        if (smem_area[b] != 0xFF) {
                            e = "block " + std::to_string(x) + " wrote shared memory at byte " +
                                std::to_string(b) + ", past the launch's " + std::to_string(smem);
                        }
                    }
                }
    }
    if (e.empty()) return 0;
    std::snprintf(err, static_cast<std::size_t>(errlen), "%s: %s", name, e.c_str());
    return 1;
}

}  // namespace pfc_emu

#endif  /* PFC_CUDA_EMU_H */
