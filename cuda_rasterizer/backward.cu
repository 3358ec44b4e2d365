// CUDA backward: per-tile back-to-front walk (dgr::PixelBackward::step) with
// per-Gaussian SplatGrad sums, then per-Gaussian chaining through the
// preprocess (dgr::preprocess_gaussian_backward).
//
// Summation: all threads of a block visit the same splat at the same time, so
// a warp first sums its 32 pixels' SplatGrads with shuffles and one lane adds
// the sum to the Gaussian's row with atomicAdd. The order of those atomic
// additions varies from run to run, so CUDA gradients are reproducible only
// to float rounding, not bit for bit (the CPU backend is bit-deterministic).
#include "rasterizer.cuh"

namespace dgr {
namespace cuda {
namespace {

__device__ __forceinline__ void warp_sum_and_add(SplatGrad& g, float* __restrict__ dst) {
    float* v = reinterpret_cast<float*>(&g);
#pragma unroll
    for (int k = 0; k < SPLAT_GRAD_FLOATS; ++k) {
        float s = v[k];
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_down_sync(0xffffffffu, s, offset);
        v[k] = s;
    }
    if ((threadIdx.x + threadIdx.y * BLOCK_X) % 32 == 0) {
#pragma unroll
        for (int k = 0; k < SPLAT_GRAD_FLOATS; ++k)
            if (v[k] != 0.0f) atomicAdd(dst + k, v[k]);
    }
}

// One block per tile, one thread per pixel. The block walks the tile's list
// from the largest n_contrib of its pixels down to 0 in batches staged in
// shared memory; every thread runs the same (block-uniform) loop so that the
// warp-wide shuffles see all 32 lanes, and a pixel only takes part in the
// splats it blended in the forward pass (position < its n_contrib, alpha
// test passed).
__global__ void __launch_bounds__(BLOCK_SIZE)
    render_backward_kernel(RenderBackwardArgs b, Grid grid, float* __restrict__ splat_grads) {
    const RenderArgs& a = b.forward;
    const BlockPixel bp(grid, a.width, a.height);
    const int64_t tile = bp.tile, pix = bp.pix;
    const int rank = bp.rank;
    const bool inside = bp.inside;
    const float px = float(bp.x), py = float(bp.y);
    const int64_t HW = int64_t(a.height) * a.width;

    const int64_t begin = a.tile_ranges[tile];

    __shared__ int s_max_last;
    __shared__ int s_gaussian[BLOCK_SIZE];
    __shared__ Splat s_splat[BLOCK_SIZE];
    __shared__ SplatFeatures s_features[BLOCK_SIZE];

    PixelBackward pb;
    int last = 0;
    if (inside) {
        last = b.n_contrib[pix];
        PixelUpstream up;
        for (int ch = 0; ch < NUM_CHANNELS; ++ch) up.feature[ch] = b.dL_dcolor[ch * HW + pix];
        up.feature[FEATURE_IMPORTANCE] = b.dL_dimportance[pix];
        up.feature[FEATURE_INVDEPTH] = b.dL_dinvdepth[pix];
        up.alpha = b.dL_dalpha[pix];
        pb.init(b.final_T[pix], up, a.background);
    }
    if (rank == 0) s_max_last = 0;
    __syncthreads();
    if (last > 0) atomicMax(&s_max_last, last);
    __syncthreads();
    const int max_last = s_max_last;

    const float half_w = 0.5f * float(a.width), half_h = 0.5f * float(a.height);
    for (int batch_end = max_last; batch_end > 0; batch_end -= BLOCK_SIZE) {
        const int n = min(BLOCK_SIZE, batch_end);
        __syncthreads();  // the previous batch is no longer read
        if (rank < n) {
            // slot rank holds tile-list position batch_end - 1 - rank: back to front
            const int g = a.point_list[begin + batch_end - 1 - rank];
            s_gaussian[rank] = g;
            load_splat(a.splats, g, s_splat[rank], s_features[rank]);
        }
        __syncthreads();
        for (int j = 0; j < n; ++j) {
            const int position = batch_end - 1 - j;
            SplatGrad g = SplatGrad();  // zero unless this pixel blended the splat
            bool contributes = false;
            if (position < last) {
                const Splat& s = s_splat[j];
                const float dx = s.mean.x - px, dy = s.mean.y - py;
                float alpha, G;
                if (splat_alpha(s.conic_opacity, dx, dy, alpha, G)) {
                    g = splat_grad(pb.step(s, dx, dy, alpha, G, s_features[j]), s.conic_opacity, half_w, half_h);
                    contributes = true;
                }
            }
            if (!__any_sync(0xffffffffu, contributes)) continue;  // warp-uniform
            warp_sum_and_add(g, splat_grads + int64_t(s_gaussian[j]) * SPLAT_GRAD_FLOATS);
        }
    }
}

__global__ void preprocess_backward_kernel(int P, GaussianInputs in, CameraArgs cam_args, Grid grid,
                                           const int32_t* __restrict__ tiles_touched,
                                           const float* __restrict__ splat_grads, GaussianGrads out) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= P || tiles_touched[idx] == 0) return;
    SplatGrad g;
    float* v = reinterpret_cast<float*>(&g);
    for (int k = 0; k < SPLAT_GRAD_FLOATS; ++k) v[k] = splat_grads[int64_t(idx) * SPLAT_GRAD_FLOATS + k];
    const Camera cam = device_camera(cam_args);
    preprocess_gaussian_backward(idx, in, cam, grid.grid_x, grid.grid_y, g, out);
}

}  // namespace

cudaError_t render_backward(const RenderBackwardArgs& args, Grid grid, float* splat_grads, cudaStream_t stream) {
    if (grid.num_tiles() <= 0) return cudaSuccess;
    render_backward_kernel<<<unsigned(grid.num_tiles()), dim3(BLOCK_X, BLOCK_Y), 0, stream>>>(args, grid,
                                                                                              splat_grads);
    return cudaGetLastError();
}

cudaError_t preprocess_backward(int64_t P, const GaussianInputs& in, const CameraArgs& cam, Grid grid,
                                const int32_t* tiles_touched, const float* splat_grads, const GaussianGrads& out,
                                cudaStream_t stream) {
    if (P <= 0) return cudaSuccess;
    const unsigned blocks = unsigned((P + LINEAR_BLOCK - 1) / LINEAR_BLOCK);
    preprocess_backward_kernel<<<blocks, LINEAR_BLOCK, 0, stream>>>(int(P), in, cam, grid, tiles_touched,
                                                                    splat_grads, out);
    return cudaGetLastError();
}

}  // namespace cuda
}  // namespace dgr
