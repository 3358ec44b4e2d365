// Torch glue of the CUDA backend: argument checks, allocation through torch
// (the caching allocator, on the current stream) and the pipeline order. The
// kernels live in cuda_rasterizer/*.cu behind the torch-free launchers of
// cuda_rasterizer/rasterizer.cuh; the math in the shared headers.
//
// Outputs have the CPU backend's order, shapes and dtypes
// (rasterize_points.h); the forward state is this backend's own (the CPU
// keeps splat records instead of the per-Gaussian arrays), which the Python
// layer passes back unchanged. entry_slots is an empty int64 tensor (the
// CUDA backward sums per Gaussian with atomics instead).
//
// Only c10/cuda headers are used (not ATen/cuda/CUDAContext.h), so this file
// needs no cuBLAS/cuSPARSE headers; c10::cuda::getCurrentCUDAStream is the
// function at::cuda::getCurrentCUDAStream names.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "cuda_rasterizer/rasterizer.cuh"
#include "rasterize_checks.h"
#include "rasterize_points.h"

namespace {

namespace dc = dgr::cuda;


// Python validates every argument before calling; the entry points check
// them again (rasterize_checks.h, shared with the CPU glue) so that a direct
// call raises instead of turning into an illegal memory access on the device.
// What is left here builds the launchers' arguments from checked tensors.
namespace ck = dgr::checks;
using ck::S_MEANS2D;
using ck::S_DEPTHS;
using ck::S_CONIC_OPACITY;
using ck::S_COLORS;
using ck::S_TILES_TOUCHED;
using ck::S_GAUSSIAN_OFFSETS;
using ck::S_TILE_RANGES;
using ck::S_POINT_LIST;
using ck::S_ENTRY_SLOTS;
using ck::S_FINAL_T;
using ck::S_N_CONTRIB;
using ck::S_COUNT;

// (arguments checked by ck::check_camera)
dc::CameraArgs camera_args(const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix,
                           const torch::Tensor& campos, double tan_fovx, double tan_fovy, int64_t height,
                           int64_t width) {
    dc::CameraArgs cam;
    cam.viewmatrix = viewmatrix.data_ptr<float>();
    cam.projmatrix = projmatrix.data_ptr<float>();
    cam.campos = campos.data_ptr<float>();
    cam.width = int(width);
    cam.height = int(height);
    cam.tan_fovx = float(tan_fovx);
    cam.tan_fovy = float(tan_fovy);
    cam.focal_x = dgr::focal_length(width, tan_fovx);
    cam.focal_y = dgr::focal_length(height, tan_fovy);
    return cam;
}

dc::Grid make_grid(int64_t height, int64_t width) {
    return dc::Grid{int((width + dgr::TILE_X - 1) / dgr::TILE_X), int((height + dgr::TILE_Y - 1) / dgr::TILE_Y)};
}

// Checks every launch. Without debug: launch errors only (no sync), and an
// asynchronous fault surfaces at a later synchronisation. With debug: the
// stream is synchronised after each stage and the failing one is named.
struct Launches {
    const char* fn;
    cudaStream_t stream;
    bool debug;

    void operator()(cudaError_t err, const char* stage) const {
        if (err == cudaSuccess && debug) err = cudaStreamSynchronize(stream);
        if (err == cudaSuccess && debug) err = cudaGetLastError();
        TORCH_CHECK(err == cudaSuccess, fn, ": CUDA stage '", stage, "' failed: ", cudaGetErrorName(err), ": ",
                    cudaGetErrorString(err),
                    debug ? "" : " (the fault may come from an earlier kernel; rerun with debug=True to name it)");
    }
};

}  // namespace

std::vector<torch::Tensor> rasterize_forward_cuda(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
    const torch::Tensor& opacities, const torch::Tensor& importances, const torch::Tensor& scales,
    const torch::Tensor& rotations, double scale_modifier, const torch::Tensor& cov3D_precomp,
    const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, double tan_fovx, double tan_fovy,
    int64_t image_height, int64_t image_width, const torch::Tensor& shs, int64_t sh_degree,
    const torch::Tensor& campos, bool antialiasing, bool compute_stats, const torch::Tensor& pixel_weights,
    bool debug) {
    const char* const fn = "rasterize_forward_cuda";
    const ck::Sizes sizes =
        ck::check_forward_args(fn, ck::Backend::CUDA, background, means3D, colors_precomp, opacities, importances,
                               scales, rotations, cov3D_precomp, viewmatrix, projmatrix, image_height, image_width,
                               shs, sh_degree, campos, pixel_weights);
    const int64_t P = sizes.P, H = sizes.H, W = sizes.W;
    const dgr::GaussianInputs gaussians = gaussian_inputs(means3D, scales, rotations, cov3D_precomp, shs,
                                                          colors_precomp, opacities, importances, sh_degree,
                                                          scale_modifier, antialiasing);
    const dc::CameraArgs cam = camera_args(viewmatrix, projmatrix, campos, tan_fovx, tan_fovy, H, W);
    const dc::Grid grid = make_grid(H, W);
    const int64_t num_tiles = grid.num_tiles();

    const c10::cuda::CUDAGuard guard(means3D.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const Launches launch{fn, stream, debug};
    const auto f32 = means3D.options().dtype(torch::kFloat32);
    const auto i32 = means3D.options().dtype(torch::kInt32);
    const auto i64 = means3D.options().dtype(torch::kInt64);

    // Per Gaussian. Zero-initialised: invisible Gaussians keep zeros, as on the CPU.
    torch::Tensor radii = torch::zeros({P}, i32);
    torch::Tensor means2D = torch::zeros({P, 2}, f32);
    torch::Tensor depths = torch::zeros({P}, f32);
    torch::Tensor conic_opacity = torch::zeros({P, 4}, f32);
    torch::Tensor colors = torch::zeros({P, 3}, f32);
    torch::Tensor tile_rects = torch::zeros({P, 4}, i32);
    torch::Tensor tiles_touched = torch::zeros({P}, i32);
    const dgr::ProjectedGaussians proj{radii.data_ptr<int>(),           means2D.data_ptr<float>(),
                                       depths.data_ptr<float>(),        conic_opacity.data_ptr<float>(),
                                       colors.data_ptr<float>(),        tile_rects.data_ptr<int>(),
                                       tiles_touched.data_ptr<int>()};
    launch(dc::preprocess(P, gaussians, cam, grid, proj, stream), "preprocess");

    // Binning. gaussian_offsets = [0, inclusive scan of tiles_touched] in int64.
    torch::Tensor gaussian_offsets = torch::zeros({P + 1}, i64);
    if (P > 0) gaussian_offsets.narrow(0, 1, P).copy_(torch::cumsum(tiles_touched, 0, torch::kInt64));
    const int64_t num_entries = P > 0 ? gaussian_offsets[P].item<int64_t>() : 0;  // synchronises
    TORCH_CHECK(num_entries <= dc::max_sort_entries(), fn, ": ", num_entries,
                " (Gaussian, tile) entries exceed what this CUDA toolkit's radix sort accepts (",
                dc::max_sort_entries(), ")");
    torch::Tensor tile_ranges = torch::empty({num_tiles + 1}, i64);
    torch::Tensor point_list = torch::empty({num_entries}, i32);
    if (num_entries > 0) {
        torch::Tensor keys_unsorted = torch::empty({num_entries}, i64);
        torch::Tensor keys_sorted = torch::empty({num_entries}, i64);
        torch::Tensor values_unsorted = torch::empty({num_entries}, i32);
        auto* keys_in = reinterpret_cast<uint64_t*>(keys_unsorted.data_ptr<int64_t>());
        auto* keys_out = reinterpret_cast<uint64_t*>(keys_sorted.data_ptr<int64_t>());
        launch(dc::duplicate_keys(P, gaussian_offsets.data_ptr<int64_t>(), tile_rects.data_ptr<int32_t>(),
                                  depths.data_ptr<float>(), grid, keys_in, values_unsorted.data_ptr<int32_t>(), stream),
               "duplicate_keys");
        const int end_bit = dc::sort_end_bit(num_tiles);
        size_t temp_bytes = 0;
        launch(dc::sort_pairs(nullptr, temp_bytes, keys_in, keys_out, values_unsorted.data_ptr<int32_t>(),
                              point_list.data_ptr<int32_t>(), num_entries, end_bit, stream),
               "sort_pairs (temp size)");
        torch::Tensor temp = torch::empty({int64_t(std::max<size_t>(temp_bytes, 1))}, means3D.options().dtype(torch::kUInt8));
        launch(dc::sort_pairs(temp.data_ptr(), temp_bytes, keys_in, keys_out, values_unsorted.data_ptr<int32_t>(),
                              point_list.data_ptr<int32_t>(), num_entries, end_bit, stream),
               "sort_pairs");
        launch(dc::tile_ranges(num_entries, keys_out, num_tiles, tile_ranges.data_ptr<int64_t>(), stream),
               "tile_ranges");
    } else {
        launch(dc::tile_ranges(0, nullptr, num_tiles, tile_ranges.data_ptr<int64_t>(), stream), "tile_ranges");
    }

    // Per pixel.
    torch::Tensor out_color = torch::empty({3, H, W}, f32);
    torch::Tensor out_importance = torch::empty({H, W}, f32);
    torch::Tensor out_invdepth = torch::empty({1, H, W}, f32);
    torch::Tensor final_T = torch::empty({H, W}, f32);
    torch::Tensor n_contrib = torch::empty({H, W}, i32);
    dc::RenderArgs args = {};
    args.tile_ranges = tile_ranges.data_ptr<int64_t>();
    args.point_list = point_list.data_ptr<int32_t>();
    args.splats = dgr::SplatSource{means2D.data_ptr<float>(), conic_opacity.data_ptr<float>(), colors.data_ptr<float>(),
                                   ptr_or_null<float>(importances), depths.data_ptr<float>()};
    args.background = background.data_ptr<float>();
    args.width = int(W);
    args.height = int(H);
    const int64_t stats_P = compute_stats ? P : 0;
    torch::Tensor accum_weight = torch::zeros({stats_P}, f32), max_weight = torch::zeros({stats_P}, f32);
    torch::Tensor hit_count = torch::zeros({stats_P}, i32), top_count = torch::zeros({stats_P}, i32);
    args.accum_weight = compute_stats ? accum_weight.data_ptr<float>() : nullptr;
    args.hit_count = compute_stats ? hit_count.data_ptr<int32_t>() : nullptr;
    args.max_weight = compute_stats ? max_weight.data_ptr<float>() : nullptr;
    args.top_count = compute_stats ? top_count.data_ptr<int32_t>() : nullptr;
    args.pixel_weights = compute_stats ? ptr_or_null<float>(pixel_weights) : nullptr;
    launch(dc::render(args, grid, out_color.data_ptr<float>(), out_importance.data_ptr<float>(),
                      out_invdepth.data_ptr<float>(), final_T.data_ptr<float>(), n_contrib.data_ptr<int32_t>(),
                      stream),
           "render");

    // Not used by the CUDA backward (it reduces with atomics); kept in the
    // state's documented layout (rasterize_points.h).
    torch::Tensor entry_slots = torch::empty({0}, i64);

    constexpr int S = 5;  // the state follows the five outputs
    std::vector<torch::Tensor> result(S + int(S_COUNT));
    result[0] = out_color;
    result[1] = out_importance;
    result[2] = radii;
    result[3] = out_invdepth;
    result[4] = (1.0f - final_T).unsqueeze(0);
    result[S + S_MEANS2D] = means2D;
    result[S + S_DEPTHS] = depths;
    result[S + S_CONIC_OPACITY] = conic_opacity;
    result[S + S_COLORS] = colors;
    result[S + S_TILES_TOUCHED] = tiles_touched;
    result[S + S_GAUSSIAN_OFFSETS] = gaussian_offsets;
    result[S + S_TILE_RANGES] = tile_ranges;
    result[S + S_POINT_LIST] = point_list;
    result[S + S_ENTRY_SLOTS] = entry_slots;
    result[S + S_FINAL_T] = final_T;
    result[S + S_N_CONTRIB] = n_contrib;
    for (const torch::Tensor& t : {accum_weight, hit_count, max_weight, top_count}) result.push_back(t);
    return result;
}

std::vector<torch::Tensor> rasterize_backward_cuda(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
    const torch::Tensor& opacities, const torch::Tensor& importances, const torch::Tensor& scales,
    const torch::Tensor& rotations, double scale_modifier, const torch::Tensor& cov3D_precomp,
    const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, double tan_fovx, double tan_fovy,
    const torch::Tensor& shs, int64_t sh_degree, const torch::Tensor& campos, const std::vector<torch::Tensor>& state,
    bool antialiasing, const torch::Tensor& dL_dcolor, const torch::Tensor& dL_dimportance,
    const torch::Tensor& dL_dinvdepth, const torch::Tensor& dL_dalpha, bool debug) {
    const char* const fn = "rasterize_backward_cuda";
    // (the value checks of the forward state run as torch ops on the state's
    // device, and read their verdict back once)
    const ck::Sizes sizes =
        ck::check_backward_args(fn, ck::Backend::CUDA, background, means3D, colors_precomp, opacities, importances,
                                scales, rotations, cov3D_precomp, viewmatrix, projmatrix, shs, sh_degree, campos,
                                state, dL_dcolor, dL_dimportance, dL_dinvdepth, dL_dalpha);
    const int64_t P = sizes.P, H = sizes.H, W = sizes.W;
    const dgr::GaussianInputs gaussians = gaussian_inputs(means3D, scales, rotations, cov3D_precomp, shs,
                                                          colors_precomp, opacities, importances, sh_degree,
                                                          scale_modifier, antialiasing);
    const torch::Tensor& final_T = state[S_FINAL_T];
    const dc::CameraArgs cam = camera_args(viewmatrix, projmatrix, campos, tan_fovx, tan_fovy, H, W);
    const dc::Grid grid = make_grid(H, W);
    const int64_t num_entries = state[S_POINT_LIST].numel();

    const c10::cuda::CUDAGuard guard(means3D.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const Launches launch{fn, stream, debug};
    const auto f32 = means3D.options().dtype(torch::kFloat32);

    // Pass 1, per tile: per-Gaussian sums of the screen-space SplatGrads.
    torch::Tensor splat_grads = torch::zeros({P, int64_t(dgr::SPLAT_GRAD_FLOATS)}, f32);
    if (num_entries > 0) {
        dc::RenderBackwardArgs args = {};  // statistics pointers stay null
        args.forward.tile_ranges = state[S_TILE_RANGES].data_ptr<int64_t>();
        args.forward.point_list = state[S_POINT_LIST].data_ptr<int32_t>();
        args.forward.splats = dgr::SplatSource{state[S_MEANS2D].data_ptr<float>(), state[S_CONIC_OPACITY].data_ptr<float>(),
                                               state[S_COLORS].data_ptr<float>(), importances.data_ptr<float>(),
                                               state[S_DEPTHS].data_ptr<float>()};
        args.forward.background = background.data_ptr<float>();
        args.forward.width = int(W);
        args.forward.height = int(H);
        args.final_T = final_T.data_ptr<float>();
        args.n_contrib = state[S_N_CONTRIB].data_ptr<int32_t>();
        args.dL_dcolor = dL_dcolor.data_ptr<float>();
        args.dL_dimportance = dL_dimportance.data_ptr<float>();
        args.dL_dinvdepth = dL_dinvdepth.data_ptr<float>();
        args.dL_dalpha = dL_dalpha.data_ptr<float>();
        launch(dc::render_backward(args, grid, splat_grads.data_ptr<float>(), stream), "render_backward");
    }

    // Pass 2, per Gaussian: chain back through the preprocess.
    torch::Tensor g_means3D = torch::zeros({P, 3}, f32);
    torch::Tensor g_means2D = torch::zeros({P, 3}, f32);
    torch::Tensor g_opacities = torch::zeros({P}, f32);
    torch::Tensor g_importances = torch::zeros({P}, f32);
    torch::Tensor g_colors = torch::zeros({P, 3}, f32);
    torch::Tensor g_shs = torch::zeros({P, std::max<int64_t>(gaussians.sh_coeffs, 1), 3}, f32);
    torch::Tensor g_cov3D = torch::zeros({P, 6}, f32);
    torch::Tensor g_scales = torch::zeros({P, 3}, f32);
    torch::Tensor g_rotations = torch::zeros({P, 4}, f32);
    const dgr::GaussianGrads out{g_means3D.data_ptr<float>(),   g_means2D.data_ptr<float>(),
                                 g_opacities.data_ptr<float>(), g_importances.data_ptr<float>(),
                                 g_colors.data_ptr<float>(),    g_shs.data_ptr<float>(),
                                 g_cov3D.data_ptr<float>(),     g_scales.data_ptr<float>(),
                                 g_rotations.data_ptr<float>()};
    if (num_entries > 0)
        launch(dc::preprocess_backward(P, gaussians, cam, grid, state[S_TILES_TOUCHED].data_ptr<int32_t>(),
                                       splat_grads.data_ptr<float>(), out, stream),
               "preprocess_backward");
    return {g_means3D, g_means2D, g_opacities, g_importances, g_colors, g_shs, g_cov3D, g_scales, g_rotations};
}

torch::Tensor mark_visible_cuda(const torch::Tensor& means3D, const torch::Tensor& viewmatrix,
                                const torch::Tensor& projmatrix) {
    // (projmatrix is checked but unused: the test is the near plane in view space only)
    const char* const fn = "mark_visible_cuda";
    const int64_t P = ck::check_mark_visible_args(fn, ck::Backend::CUDA, means3D, viewmatrix, projmatrix);

    const c10::cuda::CUDAGuard guard(means3D.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    torch::Tensor visible = torch::empty({P}, means3D.options().dtype(torch::kBool));
    const Launches launch{fn, stream, false};
    launch(dc::mark_visible(P, means3D.data_ptr<float>(), viewmatrix.data_ptr<float>(), visible.data_ptr<bool>(),
                            stream),
           "mark_visible");
    return visible;
}
