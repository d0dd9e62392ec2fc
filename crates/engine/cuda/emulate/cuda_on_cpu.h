// Runs CUDA kernels written like cuda/fused.cu on the CPU, so their indexing, reductions and
// numerics are tested on machines without a GPU (crates/engine/tests/integration/cuda_kernels.rs).
// One block at a time; each of its threads is an OS thread (one set per launch, walking the blocks), so __syncthreads and warp shuffles are
// real barriers between them, and `__shared__` (a function-local static here) is shared by the
// block's threads exactly as shared memory is. Covers what fused.cu uses, nothing more: warps that
// shuffle must be whole (32 threads) and reach the same shuffles in the same order.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline dim3 gridDim, blockDim;
inline thread_local dim3 threadIdx, blockIdx;

using std::min;
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }

namespace emulate {
struct Block {
    std::unique_ptr<std::barrier<>> all;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<float> exchange;  // one slot per thread, for shuffles
};
inline Block* block = nullptr;
}  // namespace emulate

inline void __syncthreads() { emulate::block->all->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int offset) {
    auto& b = *emulate::block;
    const unsigned t = threadIdx.x, warp = t / 32, lane = t % 32;
    b.exchange[t] = v;
    b.warps[warp]->arrive_and_wait();
    const float other = b.exchange[warp * 32 + (lane ^ offset)];
    b.warps[warp]->arrive_and_wait();
    return other;
}

// kernel(args...) for every thread of every block of the grid.
template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 threads, Kernel kernel, Args... args) {
    gridDim = grid;
    blockDim = threads;
    emulate::Block b;
    b.all = std::make_unique<std::barrier<>>(threads.x);
    for (unsigned w = 0; w * 32 < threads.x; ++w)
        b.warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads.x - w * 32)));
    b.exchange.resize(threads.x);
    emulate::block = &b;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads.x; ++t)
        pool.emplace_back([=, &b] {
            threadIdx = dim3{t, 0, 0};
            for (unsigned by = 0; by < grid.y; ++by)
                for (unsigned bx = 0; bx < grid.x; ++bx) {
                    blockIdx = dim3{bx, by, 0};
                    kernel(args...);
                    b.all->arrive_and_wait();  // the block's shared memory is the next block's
                }
        });
    for (auto& th : pool) th.join();
    emulate::block = nullptr;
}
