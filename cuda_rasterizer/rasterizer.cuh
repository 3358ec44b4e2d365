// The CUDA backend's host API: one launcher per pipeline stage, torch-free.
//
// The kernels behind these launchers (forward.cu, binning.cu, backward.cu)
// are thin drivers: they map threads, shared memory and sorting onto the
// shared math in preprocess.h / blend.h and contain no formula of their own.
// The torch glue (rasterize_points.cu) allocates every buffer through torch
// and calls these launchers in order on the current stream.
//
// Every launcher returns the cudaError_t of its launch (cudaGetLastError or
// the CUB call); it does not synchronise. Empty launches (zero Gaussians,
// zero entries) are skipped and return cudaSuccess.
//
// CUDA-only (needs cuda_runtime.h), hence .cuh: host-only compilers never see it.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "preprocess.h"

namespace dgr {
namespace cuda {

constexpr int BLOCK_X = TILE_X;  // one thread per pixel, one block per tile
constexpr int BLOCK_Y = TILE_Y;
constexpr int BLOCK_SIZE = BLOCK_X * BLOCK_Y;
constexpr int LINEAR_BLOCK = 256;  // per-Gaussian and per-entry kernels
static_assert(BLOCK_SIZE % 32 == 0, "the backward's warp reductions need whole warps");

// The camera with every pointer on the device. `campos` stays a device
// pointer (3 floats) so that no launch needs a device-to-host copy; each
// thread builds its dgr::Camera with device_camera().
struct CameraArgs {
    const float* viewmatrix;  // [16] column-major, see geometry.h
    const float* projmatrix;  // [16]
    const float* campos;      // [3]
    int width;
    int height;
    float tan_fovx;
    float tan_fovy;
    float focal_x;
    float focal_y;
};

#ifdef __CUDACC__
__device__ __forceinline__ Camera device_camera(const CameraArgs& a) {
    Camera c;
    c.viewmatrix = a.viewmatrix;
    c.projmatrix = a.projmatrix;
    c.campos = glm::vec3(a.campos[0], a.campos[1], a.campos[2]);
    c.width = a.width;
    c.height = a.height;
    c.tan_fovx = a.tan_fovx;
    c.tan_fovy = a.tan_fovy;
    c.focal_x = a.focal_x;
    c.focal_y = a.focal_y;
    return c;
}
#endif

struct Grid {
    int grid_x;
    int grid_y;
    int64_t num_tiles() const { return int64_t(grid_x) * grid_y; }
};

#ifdef __CUDACC__
// The pixel of this thread in the render kernels: one 16x16 block per tile
// (a 1D grid of blocks, so no 65535 limit on tile rows), one thread per pixel.
struct BlockPixel {
    int64_t tile;
    int rank;  // thread index within the block
    int x, y;
    bool inside;  // false for the threads of a partial tile beyond the image
    int64_t pix;  // y * width + x
    __device__ BlockPixel(const Grid& grid, int width, int height)
        : tile(blockIdx.x),
          rank(threadIdx.y * BLOCK_X + threadIdx.x),
          x(int(tile % grid.grid_x) * BLOCK_X + threadIdx.x),
          y(int(tile / grid.grid_x) * BLOCK_Y + threadIdx.y),
          inside(x < width && y < height),
          pix(int64_t(y) * width + x) {}
};
#endif

// ---- forward.cu -----------------------------------------------------------

// dgr::preprocess_gaussian for i in [0, P). `out` must be zero-initialised
// (invisible Gaussians keep what the caller put there, as on the CPU).
cudaError_t preprocess(int64_t P, const GaussianInputs& in, const CameraArgs& cam, Grid grid,
                       const ProjectedGaussians& out, cudaStream_t stream);

// Front-to-back blend, one 16x16 block per tile. Writes color [3,H,W]
// (background included), importance [H,W], invdepth [H,W], final_T [H,W]
// and n_contrib [H,W] (tile-list position + 1 of the last blended splat).
struct RenderArgs {
    const int64_t* tile_ranges;   // [tiles+1]: tile t owns sorted entries [r[t], r[t+1])
    const int32_t* point_list;    // [E]: Gaussian of each sorted entry
    SplatSource splats;           // the preprocess outputs the pixels read
    const float* background;      // [3]
    int width;
    int height;
    // Per-Gaussian statistics, updated atomically (all null: not computed).
    // Zero-initialised by the caller; pixel_weights [H,W] may be null (1).
    float* accum_weight;          // [P]
    int32_t* hit_count;           // [P]
    float* max_weight;            // [P]
    int32_t* top_count;           // [P]
    const float* pixel_weights;   // [H,W]
};
cudaError_t render(const RenderArgs& args, Grid grid, float* out_color, float* out_importance, float* out_invdepth,
                   float* final_T, int32_t* n_contrib, cudaStream_t stream);

// visible[i] = dgr::in_front_of_near_plane(view * means3D[i]).
cudaError_t mark_visible(int64_t P, const float* means3D, const float* viewmatrix, bool* visible,
                         cudaStream_t stream);

// ---- binning.cu -----------------------------------------------------------

// One (key, value) per (Gaussian, touched tile): key = tile_id << 32 |
// float_bits(depth), value = Gaussian index. Gaussian g writes its tiles in
// row-major order of its rectangle at [offsets[g], offsets[g+1]), so the
// unsorted order is by Gaussian index and the (stable) radix sort breaks
// depth ties by Gaussian index, the CPU backend's order.
cudaError_t duplicate_keys(int64_t P, const int64_t* gaussian_offsets, const int32_t* tile_rects,
                           const float* depths, Grid grid, uint64_t* keys, int32_t* values, cudaStream_t stream);

// Number of key bits the sort must look at: 32 depth bits + the tile id.
int sort_end_bit(int64_t num_tiles);

// Largest number of entries this build's CUB radix sort accepts.
int64_t max_sort_entries();

// cub::DeviceRadixSort::SortPairs. With temp == nullptr it only sets
// temp_bytes (the usual CUB two-call protocol).
cudaError_t sort_pairs(void* temp, size_t& temp_bytes, const uint64_t* keys_in, uint64_t* keys_out,
                       const int32_t* values_in, int32_t* values_out, int64_t num_entries, int end_bit,
                       cudaStream_t stream);

// tile_ranges [tiles+1] in the CPU's layout: r[t] = first sorted entry whose
// tile is >= t, r[tiles] = E. Every element is written.
cudaError_t tile_ranges(int64_t num_entries, const uint64_t* sorted_keys, int64_t num_tiles, int64_t* ranges,
                        cudaStream_t stream);

// ---- backward.cu ----------------------------------------------------------

// Back-to-front walk per pixel (dgr::PixelBackward::step); each splat's
// SplatGrad is summed over a warp and added atomically into
// splat_grads[P, SPLAT_GRAD_FLOATS] (zero-initialised by the caller). The
// atomics make the sums order-dependent: CUDA gradients are not
// bit-deterministic run to run (the CPU backend's are).
struct RenderBackwardArgs {
    RenderArgs forward;           // the forward's inputs (background, lists, splats)
    const float* final_T;         // [H,W]
    const int32_t* n_contrib;     // [H,W]
    const float* dL_dcolor;       // [3,H,W]
    const float* dL_dimportance;  // [H,W]
    const float* dL_dinvdepth;    // [H,W]
    const float* dL_dalpha;       // [H,W]
};
cudaError_t render_backward(const RenderBackwardArgs& args, Grid grid, float* splat_grads, cudaStream_t stream);

// dgr::preprocess_gaussian_backward for every Gaussian that touched a tile;
// the others keep the caller's zeros.
cudaError_t preprocess_backward(int64_t P, const GaussianInputs& in, const CameraArgs& cam, Grid grid,
                                const int32_t* tiles_touched, const float* splat_grads, const GaussianGrads& out,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace dgr
