// Torch-facing entry points of the compiled backends. Python validates every
// argument before calling these; absent optional tensors are passed empty.
// Called directly, each entry point checks its arguments itself first
// (rasterize_checks.h, the same checks for both backends) and raises a
// RuntimeError naming the argument rather than reading out of bounds.
#pragma once

// torch/types.h (tensors, factories, TORCH_CHECK) rather than torch/extension.h:
// no Python or pybind11 here, which halves nvcc's time on rasterize_points.cu.
// ext.cpp includes torch/extension.h itself.
#include <torch/types.h>

#include <tuple>
#include <string>
#include <utility>
#include <vector>

#include "cuda_rasterizer/preprocess.h"

// Data pointer of an optional input, null when it was not given (empty).
template <typename T>
T* ptr_or_null(const torch::Tensor& t) {
    return t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

// The per-Gaussian inputs as the shared math reads them (both backends).
inline dgr::GaussianInputs gaussian_inputs(const torch::Tensor& means3D, const torch::Tensor& scales,
                                           const torch::Tensor& rotations, const torch::Tensor& cov3D_precomp,
                                           const torch::Tensor& shs, const torch::Tensor& colors_precomp,
                                           const torch::Tensor& opacities, const torch::Tensor& importances,
                                           int64_t sh_degree, double scale_modifier, bool antialiasing) {
    dgr::GaussianInputs in;
    in.means3D = means3D.data_ptr<float>();
    in.scales = ptr_or_null<float>(scales);
    in.rotations = ptr_or_null<float>(rotations);
    in.cov3D_precomp = ptr_or_null<float>(cov3D_precomp);
    in.shs = ptr_or_null<float>(shs);
    in.colors_precomp = ptr_or_null<float>(colors_precomp);
    in.opacities = opacities.data_ptr<float>();
    in.importances = ptr_or_null<float>(importances);
    in.sh_coeffs = shs.dim() == 3 ? int(shs.size(1)) : 0;  // also for P = 0: d/dshs keeps its [P, M, 3] shape
    in.sh_degree = int(sh_degree);
    in.scale_modifier = float(scale_modifier);
    in.antialiasing = antialiasing;
    return in;
}

// Forward. Returns, in order: color [3,H,W], importance_map [H,W], radii [P]
// int32, invdepth [1,H,W], alpha [1,H,W], then the 7 tensors the backward
// needs (ForwardState in cpu/rasterize_points_cpu.cpp): splat_records [P,16]
// (per drawn Gaussian its 64-byte SplatRecord: mean2D, conic, opacity,
// colour, importance, 1 / depth, then as int32 its tile rectangle and its
// first entry slot less its chunk's; rows of the others unwritten),
// tiles_touched [P] int32, gaussian_offsets [P+1] int64, tile_ranges
// [tiles+1] int64, point_list [E] int32, final_T [H,W], n_contrib [H,W]
// int32; last, the per-Gaussian statistics accum_weight [P], hit_count [P]
// int32, max_weight [P], top_count [P] int32 (empty unless compute_stats;
// pixel_weights [H,W] or empty weighs accum_weight). The state is each
// backend's own (rasterize_checks.h, StateIndex and CpuStateIndex); the
// Python layer passes it back unchanged.
std::vector<torch::Tensor> rasterize_forward_cpu(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
    const torch::Tensor& opacities, const torch::Tensor& importances, const torch::Tensor& scales,
    const torch::Tensor& rotations, double scale_modifier, const torch::Tensor& cov3D_precomp,
    const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, double tan_fovx, double tan_fovy,
    int64_t image_height, int64_t image_width, const torch::Tensor& shs, int64_t sh_degree,
    const torch::Tensor& campos, bool antialiasing, bool compute_stats, const torch::Tensor& pixel_weights);

// Backward. `state` is the forward's outputs from index 5 on, unchanged; the
// upstream gradients are of color, importance_map, invdepth and alpha. Returns
// gradients of: means3D [P,3], means2D [P,3], opacities [P], importances [P],
// colors_precomp [P,3], shs [P,M,3], cov3D_precomp [P,6], scales [P,3],
// rotations [P,4] (zeros for inputs that were not given: on the CPU, a
// read-only zero row expanded to that shape).
std::vector<torch::Tensor> rasterize_backward_cpu(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
    const torch::Tensor& opacities, const torch::Tensor& importances, const torch::Tensor& scales,
    const torch::Tensor& rotations, double scale_modifier, const torch::Tensor& cov3D_precomp,
    const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, double tan_fovx, double tan_fovy,
    const torch::Tensor& shs, int64_t sh_degree, const torch::Tensor& campos, const std::vector<torch::Tensor>& state,
    bool antialiasing, const torch::Tensor& dL_dcolor, const torch::Tensor& dL_dimportance,
    const torch::Tensor& dL_dinvdepth, const torch::Tensor& dL_dalpha);

// Near-plane test per Gaussian: [P] bool.
torch::Tensor mark_visible_cpu(const torch::Tensor& means3D, const torch::Tensor& viewmatrix,
                               const torch::Tensor& projmatrix);

// Wall time in ms of each phase of the calling thread's last CPU forward
// (backward = false) or backward, in order: (phase, ms). For
// benchmarks/bench.py --phases.
std::vector<std::pair<std::string, double>> cpu_phase_times(bool backward);

// Frees the per-entry scratch memory the CPU backend keeps between calls
// (at most 1 GiB; see ScratchPool in cpu/rasterize_points_cpu.cpp).
void release_scratch_cpu();

// The binning's entry count arithmetic: tiles_touched [P] int32 -> [P+1]
// int64, the exclusive prefix sum (the first slot of each Gaussian, then the
// number of entries E). The forward's gaussian_offsets is this function's
// result; bound as _C._entry_offsets so the int64 arithmetic can be tested
// with counts near 2^31 without allocating the entries.
torch::Tensor entry_offsets_cpu(const torch::Tensor& tiles_touched);

#ifdef DGR_WITH_CUDA
// The CUDA backend (rasterize_points.cu): the CPU functions' arguments and
// results, for CUDA tensors all on one device, plus `debug` (synchronise
// after every stage and name the one that failed). Differences: its forward
// state is 11 tensors: means2D [P,2], depths [P], conic_opacity [P,4],
// colors [P,3], tiles_touched, gaussian_offsets, tile_ranges, point_list,
// entry_slots (an empty int64 tensor: the CUDA backward sums per-Gaussian
// gradients with atomics, so they are reproducible to float rounding only,
// not bit for bit), final_T, n_contrib.
std::vector<torch::Tensor> rasterize_forward_cuda(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
    const torch::Tensor& opacities, const torch::Tensor& importances, const torch::Tensor& scales,
    const torch::Tensor& rotations, double scale_modifier, const torch::Tensor& cov3D_precomp,
    const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, double tan_fovx, double tan_fovy,
    int64_t image_height, int64_t image_width, const torch::Tensor& shs, int64_t sh_degree,
    const torch::Tensor& campos, bool antialiasing, bool compute_stats, const torch::Tensor& pixel_weights,
    bool debug);

std::vector<torch::Tensor> rasterize_backward_cuda(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
    const torch::Tensor& opacities, const torch::Tensor& importances, const torch::Tensor& scales,
    const torch::Tensor& rotations, double scale_modifier, const torch::Tensor& cov3D_precomp,
    const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, double tan_fovx, double tan_fovy,
    const torch::Tensor& shs, int64_t sh_degree, const torch::Tensor& campos, const std::vector<torch::Tensor>& state,
    bool antialiasing, const torch::Tensor& dL_dcolor, const torch::Tensor& dL_dimportance,
    const torch::Tensor& dL_dinvdepth, const torch::Tensor& dL_dalpha, bool debug);

torch::Tensor mark_visible_cuda(const torch::Tensor& means3D, const torch::Tensor& viewmatrix,
                                const torch::Tensor& projmatrix);
#endif
