// CUDA binning: one (tile|depth key, Gaussian) pair per touched tile, a CUB
// radix sort over the key bits in use, and each tile's range of the sorted
// list. Entry counts and offsets are 64-bit throughout.
#include <cub/cub.cuh>

#include <climits>

#include "rasterizer.cuh"

namespace dgr {
namespace cuda {
namespace {

__global__ void duplicate_keys_kernel(int P, const int64_t* __restrict__ offsets, const int32_t* __restrict__ rects,
                                      const float* __restrict__ depths, Grid grid, uint64_t* __restrict__ keys,
                                      int32_t* __restrict__ values) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= P) return;
    int64_t out = offsets[idx];
    if (offsets[idx + 1] == out) return;  // invisible: no tiles
    const uint64_t depth_bits = __float_as_uint(depths[idx]);  // depth > 0.2: bits sort like the value
    const int* r = rects + 4 * int64_t(idx);
    for (int ty = r[1]; ty < r[3]; ++ty)
        for (int tx = r[0]; tx < r[2]; ++tx) {
            const uint64_t tile = uint64_t(ty) * uint64_t(grid.grid_x) + uint64_t(tx);
            keys[out] = (tile << 32) | depth_bits;
            values[out] = idx;
            ++out;
        }
}

// Entry e starts tile t = tile(e) and every empty tile between the previous
// entry's tile and t; the last entry also ends every tile after its own.
__global__ void tile_ranges_kernel(int64_t E, const uint64_t* __restrict__ keys, int64_t num_tiles,
                                   int64_t* __restrict__ ranges) {
    const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e >= E) return;
    const int64_t tile = int64_t(keys[e] >> 32);
    const int64_t prev = e == 0 ? -1 : int64_t(keys[e - 1] >> 32);
    for (int64_t t = prev + 1; t <= tile; ++t) ranges[t] = e;
    if (e == E - 1)
        for (int64_t t = tile + 1; t <= num_tiles; ++t) ranges[t] = E;
}

unsigned int blocks_for(int64_t n) { return unsigned((n + LINEAR_BLOCK - 1) / LINEAR_BLOCK); }

}  // namespace

cudaError_t duplicate_keys(int64_t P, const int64_t* gaussian_offsets, const int32_t* tile_rects,
                           const float* depths, Grid grid, uint64_t* keys, int32_t* values, cudaStream_t stream) {
    if (P <= 0) return cudaSuccess;
    duplicate_keys_kernel<<<blocks_for(P), LINEAR_BLOCK, 0, stream>>>(int(P), gaussian_offsets, tile_rects, depths,
                                                                       grid, keys, values);
    return cudaGetLastError();
}

int sort_end_bit(int64_t num_tiles) {
    int bits = 0;  // bits needed for the largest tile id, num_tiles - 1
    while (bits < 32 && (int64_t(1) << bits) < num_tiles) ++bits;
    return 32 + bits;
}

// DeviceRadixSort takes a templated (64-bit capable) item count from CUB
// 1.16 on (NVIDIA/cub#340; CUDA 11.7+); older CUBs take an int.
#if CUB_VERSION >= 101600
#define DGR_CUB_64BIT_ITEMS 1
#else
#define DGR_CUB_64BIT_ITEMS 0
#endif

int64_t max_sort_entries() { return DGR_CUB_64BIT_ITEMS ? INT64_MAX : int64_t(INT_MAX); }

cudaError_t sort_pairs(void* temp, size_t& temp_bytes, const uint64_t* keys_in, uint64_t* keys_out,
                       const int32_t* values_in, int32_t* values_out, int64_t num_entries, int end_bit,
                       cudaStream_t stream) {
    if (num_entries > max_sort_entries()) return cudaErrorInvalidValue;
#if DGR_CUB_64BIT_ITEMS
    const int64_t n = num_entries;
#else
    const int n = int(num_entries);
#endif
    return cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, values_in, values_out, n, 0, end_bit,
                                           stream);
}

cudaError_t tile_ranges(int64_t num_entries, const uint64_t* sorted_keys, int64_t num_tiles, int64_t* ranges,
                        cudaStream_t stream) {
    if (num_entries <= 0) return cudaMemsetAsync(ranges, 0, sizeof(int64_t) * size_t(num_tiles + 1), stream);
    tile_ranges_kernel<<<blocks_for(num_entries), LINEAR_BLOCK, 0, stream>>>(num_entries, sorted_keys, num_tiles,
                                                                             ranges);
    return cudaGetLastError();
}

}  // namespace cuda
}  // namespace dgr
