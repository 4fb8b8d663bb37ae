// Runs the CUDA kernels of backends/dsnt_cupy/dsnt_kernels.cu on the CPU, for the tests.
//
// Machines without a GPU cannot run CuPy kernels, but the kernels are plain CUDA C++: this
// file supplies what they use of CUDA (thread and block indices, __syncthreads and
// __syncthreads_or, warp shuffles, atomicAdd, dynamic shared memory, bit casts) and then
// includes the very same source. Each block runs as blockDim.x std::threads that meet at
// real barriers, and each warp's 32 threads exchange values through a per-warp buffer, so
// the block algorithms (the online maximum agreed by vote, the rescaling, the segmented warp
// sums, the shared-memory marginals) run as written. Blocks run one after another.
//
// What it cannot show: the CUDA compiler's code (NVRTC is checked separately), the GPU's
// memory model, timing, and flush-to-zero of subnormal floats (CuPy compiles with
// -ftz=true): results agree with a GPU's to rounding, not to the bit.
//
// Built by tests/test_cuda_kernels.py with: g++ -std=c++20 -O2 -pthread -shared -fPIC
// -I backends/dsnt_cupy; the extern "C" functions at the end launch each kernel.

#include <algorithm>
#include <barrier>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <math.h>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace dsnt_emulation {

struct Dim3 {
  unsigned int x = 0, y = 0, z = 0;
};

inline thread_local Dim3 thread_index;
inline Dim3 block_index, block_dim, grid_dim;

struct Block;

struct VoteCompletion {
  Block* block;
  void operator()() noexcept;
};

// What the threads of the running block share.
struct Block {
  explicit Block(unsigned int threads, size_t shared_bytes)
      : votes(threads, 0), barrier(threads, VoteCompletion{this}), shared(shared_bytes + 16) {
    for (unsigned int w = 0; w < threads / 32; ++w) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    lanes.resize(threads / 32 * 32);
  }
  std::vector<int> votes;  // __syncthreads_or: each thread's predicate
  int vote = 0;            // their OR, computed once all have arrived
  std::barrier<VoteCompletion> barrier;
  std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
  std::vector<unsigned long long> lanes;  // one 8-byte slot per thread for shuffles
  std::vector<unsigned char> shared;      // dynamic shared memory
};

inline void VoteCompletion::operator()() noexcept {
  block->vote = std::any_of(block->votes.begin(), block->votes.end(), [](int v) { return v != 0; });
}

inline Block* block = nullptr;
inline std::mutex atomic_mutex;

inline unsigned char* shared_memory() {
  auto address = reinterpret_cast<std::uintptr_t>(block->shared.data());
  return block->shared.data() + ((16 - address % 16) % 16);
}

template <typename V>
V shuffle(V value, int source_lane) {
  static_assert(sizeof(V) <= 8);
  const unsigned int warp = thread_index.x / 32, lane = thread_index.x % 32;
  std::memcpy(&block->lanes[warp * 32 + lane], &value, sizeof(V));
  block->warp_barriers[warp]->arrive_and_wait();
  V result;
  std::memcpy(&result, &block->lanes[warp * 32 + source_lane], sizeof(V));
  block->warp_barriers[warp]->arrive_and_wait();
  return result;
}

// Launches kernel(args...) on `grid` blocks of `threads` threads (a multiple of 32), one
// block after another. A thread that returns leaves the barriers, as an exited GPU thread does.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), unsigned int grid, unsigned int threads, size_t shared_bytes, Args... args) {
  grid_dim = Dim3{grid, 1, 1};
  block_dim = Dim3{threads, 1, 1};
  for (unsigned int b = 0; b < grid; ++b) {
    block_index = Dim3{b, 0, 0};
    Block state(threads, shared_bytes);
    block = &state;
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        thread_index = Dim3{t, 0, 0};
        kernel(static_cast<Params>(args)...);
        state.warp_barriers[t / 32]->arrive_and_drop();
        state.barrier.arrive_and_drop();
      });
    }
    for (auto& thread : pool) thread.join();
    block = nullptr;
  }
}

}  // namespace dsnt_emulation

// ------------------------------------------------------------------ CUDA, as the kernels use it

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define threadIdx (dsnt_emulation::thread_index)
#define blockIdx (dsnt_emulation::block_index)
#define blockDim (dsnt_emulation::block_dim)
#define gridDim (dsnt_emulation::grid_dim)
#define DSNT_HOST_EMULATION 1
#define DSNT_DYNAMIC_SHARED(name) unsigned char* const name = dsnt_emulation::shared_memory()

inline void __syncthreads() { dsnt_emulation::block->barrier.arrive_and_wait(); }

inline int __syncthreads_or(int predicate) {
  dsnt_emulation::block->votes[threadIdx.x] = predicate;
  dsnt_emulation::block->barrier.arrive_and_wait();
  return dsnt_emulation::block->vote;
}

template <typename V>
V __shfl_xor_sync(unsigned int, V value, int lane_mask) {
  return dsnt_emulation::shuffle(value, static_cast<int>(threadIdx.x % 32) ^ lane_mask);
}

template <typename V>
V __shfl_up_sync(unsigned int, V value, unsigned int delta) {
  const int lane = static_cast<int>(threadIdx.x % 32), source = lane - static_cast<int>(delta);
  return dsnt_emulation::shuffle(value, source < 0 ? lane : source);
}

template <typename V>
V atomicAdd(V* address, V value) {
  const std::lock_guard<std::mutex> guard(dsnt_emulation::atomic_mutex);
  const V old = *address;
  *address = old + value;
  return old;
}

inline float __int_as_float(int bits) { return std::bit_cast<float>(bits); }
inline float __uint_as_float(unsigned int bits) { return std::bit_cast<float>(bits); }
inline double __longlong_as_double(long long bits) { return std::bit_cast<double>(bits); }
inline float dsnt_host_half_to_float(unsigned short bits) { return static_cast<float>(std::bit_cast<_Float16>(bits)); }

#include "dsnt_kernels.cu"

// ------------------------------------------------------------------------------ entry points
//
// One per kernel family; `type` picks the input type: 0 float16, 1 bfloat16, 2 float32,
// 3 float64 (the order of TEMPLATE_TYPES in cuda_kernels.py), `kind` the divergence: 0 none,
// 1 KL, 2 JS. Pointers are to the arrays' data, in the kernel's parameter order.

namespace {

template <typename T>
void statistics(unsigned int grid, unsigned int threads, size_t shared, const void* logits, int W, int H, int D,
                int ndim, double inv_t, int entropy, int mixture, void* const* pointers) {
  typedef typename dsnt::Accumulator<T>::type A;
  dsnt_emulation::launch(dsnt_statistics<T>, grid, threads, shared, static_cast<const T*>(logits), W, H, D, ndim,
                         static_cast<A>(inv_t), entropy, mixture, static_cast<const A*>(pointers[0]),
                         static_cast<const A*>(pointers[1]), static_cast<const A*>(pointers[2]),
                         static_cast<A*>(pointers[3]), static_cast<A*>(pointers[4]), static_cast<A*>(pointers[5]),
                         static_cast<A*>(pointers[6]), static_cast<A*>(pointers[7]), static_cast<A*>(pointers[8]),
                         static_cast<A*>(pointers[9]));
}

template <typename T>
void moments(unsigned int grid, unsigned int threads, size_t shared, const void* logits, int W, int H, int D, int ndim,
             double inv_t, void* lse, void* mu) {
  typedef typename dsnt::Accumulator<T>::type A;
  dsnt_emulation::launch(dsnt_moments<T>, grid, threads, shared, static_cast<const T*>(logits), W, H, D, ndim,
                         static_cast<A>(inv_t), static_cast<A*>(lse), static_cast<A*>(mu));
}

template <typename T, int kKind>
void gradient(unsigned int grid, unsigned int threads, const void* logits, int W, int H, int D, int ndim, int chunks,
              double inv_t, void* const* pointers) {
  typedef typename dsnt::Accumulator<T>::type A;
  dsnt_emulation::launch(dsnt_gradient_map<T, kKind>, grid, threads, 0, static_cast<const T*>(logits), W, H, D, ndim,
                         chunks, static_cast<A>(inv_t), static_cast<const A*>(pointers[0]),
                         static_cast<const A*>(pointers[1]), static_cast<const A*>(pointers[2]),
                         static_cast<const A*>(pointers[3]), static_cast<const A*>(pointers[4]),
                         static_cast<const A*>(pointers[5]), static_cast<const A*>(pointers[6]),
                         static_cast<const A*>(pointers[7]), static_cast<A*>(pointers[8]));
}

}  // namespace

extern "C" {

// pointers: fx, fy, fz, lse, mx, my, mz, neg_entropy, m_log_m, p_log_m.
int dsnt_emulate_statistics(int type, unsigned int grid, unsigned int threads, unsigned long long shared,
                            const void* logits, int W, int H, int D, int ndim, double inv_t, int entropy, int mixture,
                            void* const* pointers) {
  switch (type) {
    case 0: statistics<dsnt::float16>(grid, threads, shared, logits, W, H, D, ndim, inv_t, entropy, mixture, pointers); break;
    case 1: statistics<dsnt::bfloat16>(grid, threads, shared, logits, W, H, D, ndim, inv_t, entropy, mixture, pointers); break;
    case 2: statistics<float>(grid, threads, shared, logits, W, H, D, ndim, inv_t, entropy, mixture, pointers); break;
    case 3: statistics<double>(grid, threads, shared, logits, W, H, D, ndim, inv_t, entropy, mixture, pointers); break;
    default: return 1;
  }
  return 0;
}

int dsnt_emulate_moments(int type, unsigned int grid, unsigned int threads, unsigned long long shared,
                         const void* logits, int W, int H, int D, int ndim, double inv_t, void* lse, void* mu) {
  switch (type) {
    case 0: moments<dsnt::float16>(grid, threads, shared, logits, W, H, D, ndim, inv_t, lse, mu); break;
    case 1: moments<dsnt::bfloat16>(grid, threads, shared, logits, W, H, D, ndim, inv_t, lse, mu); break;
    case 2: moments<float>(grid, threads, shared, logits, W, H, D, ndim, inv_t, lse, mu); break;
    case 3: moments<double>(grid, threads, shared, logits, W, H, D, ndim, inv_t, lse, mu); break;
    default: return 1;
  }
  return 0;
}

// pointers: lse, ax, ay, az, coef, fx, fy, fz, grad.
int dsnt_emulate_gradient_map(int type, int kind, unsigned int grid, unsigned int threads, const void* logits, int W,
                              int H, int D, int ndim, int chunks, double inv_t, void* const* pointers) {
#define DSNT_GRADIENT(T)                                                                         \
  switch (kind) {                                                                                \
    case 0: gradient<T, dsnt::kNone>(grid, threads, logits, W, H, D, ndim, chunks, inv_t, pointers); break; \
    case 1: gradient<T, dsnt::kKL>(grid, threads, logits, W, H, D, ndim, chunks, inv_t, pointers); break;   \
    case 2: gradient<T, dsnt::kJS>(grid, threads, logits, W, H, D, ndim, chunks, inv_t, pointers); break;   \
    default: return 1;                                                                           \
  }
  switch (type) {
    case 0: DSNT_GRADIENT(dsnt::float16) break;
    case 1: DSNT_GRADIENT(dsnt::bfloat16) break;
    case 2: DSNT_GRADIENT(float) break;
    case 3: DSNT_GRADIENT(double) break;
    default: return 1;
  }
#undef DSNT_GRADIENT
  return 0;
}

}  // extern "C"
