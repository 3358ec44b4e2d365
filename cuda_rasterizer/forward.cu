// CUDA forward: per-Gaussian preprocess, per-tile front-to-back blend, and the
// near-plane test of markVisible. Thin drivers around preprocess.h/blend.h.
#include "rasterizer.cuh"

namespace dgr {
namespace cuda {
namespace {

__global__ void preprocess_kernel(int P, GaussianInputs in, CameraArgs cam_args, Grid grid, ProjectedGaussians out) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= P) return;
    const Camera cam = device_camera(cam_args);
    preprocess_gaussian(idx, in, cam, grid.grid_x, grid.grid_y, out);
}

// One block per tile (1D grid: no 65535 limit on the tile rows), one thread
// per pixel. The tile's splats are staged in shared memory BLOCK_SIZE at a
// time; the block stops fetching once every pixel is finished.
__global__ void __launch_bounds__(BLOCK_SIZE)
    render_kernel(RenderArgs a, Grid grid, float* __restrict__ out_color, float* __restrict__ out_importance,
                  float* __restrict__ out_invdepth, float* __restrict__ final_T, int32_t* __restrict__ n_contrib) {
    const BlockPixel bp(grid, a.width, a.height);
    const int64_t tile = bp.tile, pix = bp.pix;
    const int rank = bp.rank;
    const bool inside = bp.inside;
    const float px = float(bp.x), py = float(bp.y);

    const int64_t begin = a.tile_ranges[tile];
    const int64_t count = a.tile_ranges[tile + 1] - begin;

    __shared__ Splat s_splat[BLOCK_SIZE];
    __shared__ SplatFeatures s_features[BLOCK_SIZE];
    __shared__ int s_gaussian[BLOCK_SIZE];

    const bool stats = a.accum_weight != nullptr;
    const float pixel_weight = stats && inside && a.pixel_weights != nullptr ? a.pixel_weights[pix] : 1.0f;
    PixelTopContributor top;
    PixelAccumulator acc;
    bool done = !inside;
    int64_t last = 0;  // tile-list position + 1 of the last blended splat

    for (int64_t batch = 0; batch < count; batch += BLOCK_SIZE) {
        // Also the barrier that protects the shared arrays of the last batch.
        if (__syncthreads_count(done) == BLOCK_SIZE) break;
        const int64_t fetch = batch + rank;
        if (fetch < count) {
            s_gaussian[rank] = a.point_list[begin + fetch];
            load_splat(a.splats, s_gaussian[rank], s_splat[rank], s_features[rank]);
        }
        __syncthreads();
        const int n = int(min(int64_t(BLOCK_SIZE), count - batch));
        for (int j = 0; !done && j < n; ++j) {
            const Splat& s = s_splat[j];
            float alpha, G;
            if (!splat_alpha(s.conic_opacity, s.mean.x - px, s.mean.y - py, alpha, G)) continue;
            if (!acc.blend(alpha, s_features[j])) {
                done = true;
                break;
            }
            last = batch + j + 1;
            if (stats) {  // the atomic form of add_pixel_to_stats (blend.h)
                const int g = s_gaussian[j];
                atomicAdd(&a.accum_weight[g], pixel_weight * acc.last_weight);
                atomicAdd(&a.hit_count[g], 1);
                // non-negative floats order like their bit patterns
                atomicMax(reinterpret_cast<int*>(&a.max_weight[g]), __float_as_int(acc.last_weight));
                top.offer(acc.last_weight, g);
            }
        }
    }

    if (!inside) return;
    if (stats && top.id >= 0) atomicAdd(&a.top_count[top.id], 1);
    const int64_t HW = int64_t(a.height) * a.width;
    for (int ch = 0; ch < NUM_CHANNELS; ++ch) out_color[ch * HW + pix] = acc.final_color(ch, a.background);
    out_importance[pix] = acc.importance();
    out_invdepth[pix] = acc.invdepth();
    final_T[pix] = acc.T;
    n_contrib[pix] = int32_t(last);
}

__global__ void mark_visible_kernel(int P, const float* __restrict__ means3D, const float* __restrict__ viewmatrix,
                                    bool* __restrict__ visible) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= P) return;
    visible[idx] = in_front_of_near_plane(transform_point_4x3(load_vec3(means3D, idx), viewmatrix));
}

unsigned int blocks_for(int64_t n) { return unsigned((n + LINEAR_BLOCK - 1) / LINEAR_BLOCK); }

}  // namespace

cudaError_t preprocess(int64_t P, const GaussianInputs& in, const CameraArgs& cam, Grid grid,
                       const ProjectedGaussians& out, cudaStream_t stream) {
    if (P <= 0) return cudaSuccess;
    preprocess_kernel<<<blocks_for(P), LINEAR_BLOCK, 0, stream>>>(int(P), in, cam, grid, out);
    return cudaGetLastError();
}

cudaError_t render(const RenderArgs& args, Grid grid, float* out_color, float* out_importance, float* out_invdepth,
                   float* final_T, int32_t* n_contrib, cudaStream_t stream) {
    if (grid.num_tiles() <= 0) return cudaSuccess;
    render_kernel<<<unsigned(grid.num_tiles()), dim3(BLOCK_X, BLOCK_Y), 0, stream>>>(
        args, grid, out_color, out_importance, out_invdepth, final_T, n_contrib);
    return cudaGetLastError();
}

cudaError_t mark_visible(int64_t P, const float* means3D, const float* viewmatrix, bool* visible,
                         cudaStream_t stream) {
    if (P <= 0) return cudaSuccess;
    mark_visible_kernel<<<blocks_for(P), LINEAR_BLOCK, 0, stream>>>(int(P), means3D, viewmatrix, visible);
    return cudaGetLastError();
}

}  // namespace cuda
}  // namespace dgr
