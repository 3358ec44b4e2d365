// Torch-facing entry points of the compiled backends. Python validates every
// argument before calling these; absent optional tensors are passed empty.
#pragma once

#include <torch/extension.h>

#include <tuple>
#include <vector>

// Forward. Returns, in order: color [3,H,W], importance_map [H,W], radii [P]
// int32, then the 11 tensors the backward needs (ForwardState in
// cpu/rasterize_points_cpu.cpp): means2D [P,2], depths [P],
// conic_opacity [P,4], colors [P,3], tiles_touched [P] int32,
// gaussian_offsets [P+1] int64, tile_ranges [tiles+1] int64, point_list [E]
// int32, slot_entries [E] int64, final_T [H,W], n_contrib [H,W] int32.
std::vector<torch::Tensor> rasterize_forward_cpu(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
    const torch::Tensor& opacities, const torch::Tensor& importances, const torch::Tensor& scales,
    const torch::Tensor& rotations, double scale_modifier, const torch::Tensor& cov3D_precomp,
    const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, double tan_fovx, double tan_fovy,
    int64_t image_height, int64_t image_width, const torch::Tensor& shs, int64_t sh_degree,
    const torch::Tensor& campos);

// Backward. `state` is the forward's outputs from index 3 on, unchanged. Returns
// gradients of: means3D [P,3], means2D [P,3], opacities [P], importances [P],
// colors_precomp [P,3], shs [P,M,3], cov3D_precomp [P,6], scales [P,3],
// rotations [P,4] (zeros for inputs that were not given).
std::vector<torch::Tensor> rasterize_backward_cpu(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
    const torch::Tensor& opacities, const torch::Tensor& importances, const torch::Tensor& scales,
    const torch::Tensor& rotations, double scale_modifier, const torch::Tensor& cov3D_precomp,
    const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, double tan_fovx, double tan_fovy,
    const torch::Tensor& shs, int64_t sh_degree, const torch::Tensor& campos, const std::vector<torch::Tensor>& state,
    const torch::Tensor& dL_dcolor, const torch::Tensor& dL_dimportance);

// Near-plane test per Gaussian: [P] bool.
torch::Tensor mark_visible_cpu(const torch::Tensor& means3D, const torch::Tensor& viewmatrix,
                               const torch::Tensor& projmatrix);
