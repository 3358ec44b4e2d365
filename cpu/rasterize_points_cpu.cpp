// The CPU backend: a thin driver that maps the shared per-Gaussian and
// per-pixel math (cuda_rasterizer/*.h) onto loops over Gaussians and tiles,
// parallelised with ATen's thread pool (so torch.set_num_threads applies).
//
// Every result is independent of the thread count: pixels are computed by
// one thread each, per-Gaussian gradients are first written per (Gaussian,
// tile) entry by the tile that owns it and then summed in a fixed order.

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <numeric>
#include <type_traits>

#include "../cuda_rasterizer/preprocess.h"
#include "../rasterize_points.h"

namespace {

using dgr::TILE_X;
using dgr::TILE_Y;

// Runs f(i) for i in [0, n) on ATen's threads, handing out indices one at a
// time so that expensive tiles do not leave other threads idle.
template <typename F>
void parallel_for_dynamic(int64_t n, const F& f) {
    if (n <= 0) return;
    std::atomic<int64_t> next{0};
    const int64_t workers = std::min<int64_t>(at::get_num_threads(), n);
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
        for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) f(i);
    });
}

dgr::Camera make_camera(const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, const torch::Tensor& campos,
                        double tan_fovx, double tan_fovy, int64_t height, int64_t width) {
    dgr::Camera cam;
    cam.viewmatrix = viewmatrix.data_ptr<float>();
    cam.projmatrix = projmatrix.data_ptr<float>();
    const float* c = campos.data_ptr<float>();
    cam.campos = glm::vec3(c[0], c[1], c[2]);
    cam.width = int(width);
    cam.height = int(height);
    cam.tan_fovx = float(tan_fovx);
    cam.tan_fovy = float(tan_fovy);
    cam.focal_x = dgr::focal_length(width, tan_fovx);
    cam.focal_y = dgr::focal_length(height, tan_fovy);
    return cam;
}

struct TileGrid {
    int grid_x, grid_y;
    int64_t num_tiles() const { return int64_t(grid_x) * grid_y; }
};

TileGrid make_grid(int64_t height, int64_t width) {
    return TileGrid{int((width + TILE_X - 1) / TILE_X), int((height + TILE_Y - 1) / TILE_Y)};
}

// Binning: one entry per (Gaussian, touched tile), ordered by tile and then
// by depth (ties by Gaussian index: a stable order). Besides the sorted
// Gaussian list it records, for slot k of Gaussian g (its k-th tile in
// row-major order of its rectangle), the position of that entry in the
// sorted list, so the backward can gather a Gaussian's entries in order.
struct Binning {
    torch::Tensor gaussian_offsets;  // [P+1] int64: first slot of each Gaussian
    torch::Tensor tile_ranges;       // [tiles+1] int64: first entry of each tile
    torch::Tensor point_list;        // [E] int32: Gaussian of each sorted entry
    torch::Tensor slot_entries;      // [E] int64: sorted entry of each slot
};

Binning bin_gaussians(const torch::Tensor& depths, const torch::Tensor& tile_rects,
                      const torch::Tensor& tiles_touched, const TileGrid& grid) {
    const int64_t P = depths.size(0);
    const float* depth = depths.data_ptr<float>();
    const int* rects = tile_rects.data_ptr<int>();
    const int* touched = tiles_touched.data_ptr<int>();

    Binning b;
    b.gaussian_offsets = torch::zeros({P + 1}, torch::kInt64);
    int64_t* offsets = b.gaussian_offsets.data_ptr<int64_t>();
    for (int64_t i = 0; i < P; ++i) offsets[i + 1] = offsets[i] + touched[i];
    const int64_t num_entries = offsets[P];

    std::vector<int32_t> order;
    order.reserve(P);
    for (int64_t i = 0; i < P; ++i)
        if (touched[i] > 0) order.push_back(int32_t(i));
    std::stable_sort(order.begin(), order.end(), [depth](int32_t a, int32_t c) { return depth[a] < depth[c]; });

    const int64_t num_tiles = grid.num_tiles();
    b.tile_ranges = torch::zeros({num_tiles + 1}, torch::kInt64);
    int64_t* ranges = b.tile_ranges.data_ptr<int64_t>();
    for (int32_t g : order) {
        const int* r = rects + 4 * int64_t(g);
        for (int ty = r[1]; ty < r[3]; ++ty)
            for (int tx = r[0]; tx < r[2]; ++tx) ++ranges[int64_t(ty) * grid.grid_x + tx + 1];
    }
    for (int64_t t = 0; t < num_tiles; ++t) ranges[t + 1] += ranges[t];

    b.point_list = torch::empty({num_entries}, torch::kInt32);
    b.slot_entries = torch::empty({num_entries}, torch::kInt64);
    int32_t* points = b.point_list.data_ptr<int32_t>();
    int64_t* slots = b.slot_entries.data_ptr<int64_t>();
    std::vector<int64_t> cursor(ranges, ranges + num_tiles);
    for (int32_t g : order) {
        const int* r = rects + 4 * int64_t(g);
        int64_t slot = offsets[g];
        for (int ty = r[1]; ty < r[3]; ++ty)
            for (int tx = r[0]; tx < r[2]; ++tx) {
                const int64_t entry = cursor[int64_t(ty) * grid.grid_x + tx]++;
                points[entry] = g;
                slots[slot++] = entry;
            }
    }
    return b;
}

// Calls f(x, y, pixel_index) for each pixel of a tile inside the image.
template <typename F>
void for_each_pixel(int64_t tile, const TileGrid& grid, int64_t H, int64_t W, const F& f) {
    const int64_t x0 = (tile % grid.grid_x) * TILE_X, y0 = (tile / grid.grid_x) * TILE_Y;
    for (int64_t y = y0; y < std::min<int64_t>(y0 + TILE_Y, H); ++y)
        for (int64_t x = x0; x < std::min<int64_t>(x0 + TILE_X, W); ++x) f(float(x), float(y), y * W + x);
}

// The splats of one tile copied into contiguous arrays, front to back.
struct TileSplats {
    std::vector<dgr::Splat> splats;
    std::vector<dgr::SplatFeatures> features;

    void load(const dgr::SplatSource& src, const int32_t* points, int64_t begin, int64_t end) {
        splats.resize(end - begin);
        features.resize(end - begin);
        for (int64_t j = 0; j < end - begin; ++j) dgr::load_splat(src, points[begin + j], splats[j], features[j]);
    }
};

// What the forward hands to the backward, by name. The order of
// to_vector() is the order documented in rasterize_points.h.
struct ForwardState {
    torch::Tensor means2D, depths, conic_opacity, colors, tiles_touched, gaussian_offsets, tile_ranges, point_list,
        slot_entries, final_T, n_contrib;

    std::vector<torch::Tensor> to_vector() const {
        return {means2D,     depths,     conic_opacity, colors,  tiles_touched, gaussian_offsets,
                tile_ranges, point_list, slot_entries,  final_T, n_contrib};
    }
    static ForwardState from_vector(const std::vector<torch::Tensor>& v) {
        TORCH_CHECK(v.size() == 11, "rasterizer backward: expected 11 forward-state tensors, got ", v.size());
        return ForwardState{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10]};
    }
};

void add_splat_grad(dgr::SplatGrad& acc, const dgr::SplatGrad& g) {
    float* a = reinterpret_cast<float*>(&acc);
    const float* b = reinterpret_cast<const float*>(&g);
    for (int k = 0; k < dgr::SPLAT_GRAD_FLOATS; ++k) a[k] += b[k];
}

}  // namespace

std::vector<torch::Tensor> rasterize_forward_cpu(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
    const torch::Tensor& opacities, const torch::Tensor& importances, const torch::Tensor& scales,
    const torch::Tensor& rotations, double scale_modifier, const torch::Tensor& cov3D_precomp,
    const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, double tan_fovx, double tan_fovy,
    int64_t image_height, int64_t image_width, const torch::Tensor& shs, int64_t sh_degree,
    const torch::Tensor& campos, bool antialiasing, bool compute_stats, const torch::Tensor& pixel_weights) {
    const int64_t P = means3D.size(0);
    const int64_t H = image_height, W = image_width;
    const dgr::Camera cam = make_camera(viewmatrix, projmatrix, campos, tan_fovx, tan_fovy, H, W);
    const dgr::GaussianInputs in =
        gaussian_inputs(means3D, scales, rotations, cov3D_precomp, shs, colors_precomp, opacities, importances, sh_degree, scale_modifier,
                        antialiasing);
    const TileGrid grid = make_grid(H, W);

    auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    auto i32 = torch::TensorOptions().dtype(torch::kInt32);
    torch::Tensor radii = torch::zeros({P}, i32);
    torch::Tensor means2D = torch::zeros({P, 2}, f32);
    torch::Tensor depths = torch::zeros({P}, f32);
    torch::Tensor conic_opacity = torch::zeros({P, 4}, f32);
    torch::Tensor colors = torch::zeros({P, 3}, f32);
    torch::Tensor tile_rects = torch::zeros({P, 4}, i32);
    torch::Tensor tiles_touched = torch::zeros({P}, i32);
    dgr::ProjectedGaussians proj{radii.data_ptr<int>(),           means2D.data_ptr<float>(),
                                 depths.data_ptr<float>(),        conic_opacity.data_ptr<float>(),
                                 colors.data_ptr<float>(),        tile_rects.data_ptr<int>(),
                                 tiles_touched.data_ptr<int>()};
    at::parallel_for(0, P, 1024, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) dgr::preprocess_gaussian(int(i), in, cam, grid.grid_x, grid.grid_y, proj);
    });

    Binning bins = bin_gaussians(depths, tile_rects, tiles_touched, grid);

    torch::Tensor out_color = torch::empty({3, H, W}, f32);
    torch::Tensor out_importance = torch::empty({H, W}, f32);
    torch::Tensor out_invdepth = torch::empty({1, H, W}, f32);
    torch::Tensor final_T = torch::empty({H, W}, f32);
    torch::Tensor n_contrib = torch::empty({H, W}, i32);
    float* color_px = out_color.data_ptr<float>();
    float* importance_px = out_importance.data_ptr<float>();
    float* invdepth_px = out_invdepth.data_ptr<float>();
    float* final_T_px = final_T.data_ptr<float>();
    int* n_contrib_px = n_contrib.data_ptr<int>();
    const float* bg = background.data_ptr<float>();
    const int64_t* ranges = bins.tile_ranges.data_ptr<int64_t>();
    const int32_t* points = bins.point_list.data_ptr<int32_t>();
    const dgr::SplatSource src{means2D.data_ptr<float>(), conic_opacity.data_ptr<float>(), colors.data_ptr<float>(),
                               importances.data_ptr<float>(), depths.data_ptr<float>()};

    // Statistics go per (Gaussian, tile) entry, owned by one tile: race free.
    const int64_t num_entries = bins.point_list.size(0);
    std::vector<dgr::SplatStats> entry_stats(compute_stats ? num_entries : 0, dgr::SplatStats{0.f, 0.f, 0, 0});
    const float* pixel_weight = compute_stats ? ptr_or_null<float>(pixel_weights) : nullptr;

    // stats_flag is std::true_type or std::false_type: without statistics the
    // pixel loop carries no trace of them.
    auto render = [&](auto stats_flag) {
        constexpr bool kStats = decltype(stats_flag)::value;
        parallel_for_dynamic(grid.num_tiles(), [&](int64_t tile) {
            TileSplats ts;
            ts.load(src, points, ranges[tile], ranges[tile + 1]);
            const int64_t n = ranges[tile + 1] - ranges[tile];
            dgr::SplatStats* stats = kStats ? entry_stats.data() + ranges[tile] : nullptr;
            for_each_pixel(tile, grid, H, W, [&](float x, float y, int64_t pix) {
                dgr::PixelAccumulator acc;
                dgr::PixelTopContributor top;
                const float pw = kStats && pixel_weight != nullptr ? pixel_weight[pix] : 1.0f;
                int last = 0;
                for (int64_t j = 0; j < n; ++j) {
                    const dgr::Splat& s = ts.splats[j];
                    float alpha, G;
                    if (!dgr::splat_alpha(s.conic_opacity, s.mean.x - x, s.mean.y - y, alpha, G)) continue;
                    if (!acc.blend(alpha, ts.features[j])) break;
                    last = int(j + 1);
                    if (kStats) {
                        dgr::add_pixel_to_stats(stats[j], acc.last_weight, pw);
                        top.offer(acc.last_weight, j);
                    }
                }
                if (kStats && top.id >= 0) stats[top.id].top_count += 1;
                for (int ch = 0; ch < 3; ++ch) color_px[ch * H * W + pix] = acc.final_color(ch, bg);
                importance_px[pix] = acc.importance();
                invdepth_px[pix] = acc.invdepth();
                final_T_px[pix] = acc.T;
                n_contrib_px[pix] = last;
            });
        });
    };
    if (compute_stats)
        render(std::true_type{});
    else
        render(std::false_type{});

    const ForwardState st{means2D,          depths,          conic_opacity,   colors,  tiles_touched,
                          bins.gaussian_offsets, bins.tile_ranges, bins.point_list, bins.slot_entries, final_T,
                          n_contrib};
    torch::Tensor out_alpha = (1.0f - final_T).unsqueeze(0);
    std::vector<torch::Tensor> result = {out_color, out_importance, radii, out_invdepth, out_alpha};
    for (const torch::Tensor& t : st.to_vector()) result.push_back(t);

    // Per-Gaussian statistics: its entries in slot order (deterministic).
    const int64_t stats_P = compute_stats ? P : 0;
    torch::Tensor accum_weight = torch::zeros({stats_P}, f32), max_weight = torch::zeros({stats_P}, f32);
    torch::Tensor hit_count = torch::zeros({stats_P}, i32), top_count = torch::zeros({stats_P}, i32);
    if (compute_stats) {
        const int64_t* offsets = bins.gaussian_offsets.data_ptr<int64_t>();
        const int64_t* slots = bins.slot_entries.data_ptr<int64_t>();
        float* accum = accum_weight.data_ptr<float>();
        float* maxw = max_weight.data_ptr<float>();
        int* hits = hit_count.data_ptr<int>();
        int* tops = top_count.data_ptr<int>();
        at::parallel_for(0, P, 1024, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i)
                for (int64_t k = offsets[i]; k < offsets[i + 1]; ++k) {
                    const dgr::SplatStats& e = entry_stats[slots[k]];
                    accum[i] += e.accum_weight;
                    maxw[i] = std::max(maxw[i], e.max_weight);
                    hits[i] += e.hit_count;
                    tops[i] += e.top_count;
                }
        });
    }
    for (const torch::Tensor& t : {accum_weight, hit_count, max_weight, top_count}) result.push_back(t);
    return result;
}

std::vector<torch::Tensor> rasterize_backward_cpu(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
    const torch::Tensor& opacities, const torch::Tensor& importances, const torch::Tensor& scales,
    const torch::Tensor& rotations, double scale_modifier, const torch::Tensor& cov3D_precomp,
    const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, double tan_fovx, double tan_fovy,
    const torch::Tensor& shs, int64_t sh_degree, const torch::Tensor& campos, const std::vector<torch::Tensor>& state,
    bool antialiasing, const torch::Tensor& dL_dcolor, const torch::Tensor& dL_dimportance,
    const torch::Tensor& dL_dinvdepth, const torch::Tensor& dL_dalpha) {
    const ForwardState st = ForwardState::from_vector(state);
    const int64_t P = means3D.size(0);
    const int64_t H = st.final_T.size(0), W = st.final_T.size(1);
    const dgr::Camera cam = make_camera(viewmatrix, projmatrix, campos, tan_fovx, tan_fovy, H, W);
    const dgr::GaussianInputs in =
        gaussian_inputs(means3D, scales, rotations, cov3D_precomp, shs, colors_precomp, opacities, importances, sh_degree, scale_modifier,
                        antialiasing);
    const TileGrid grid = make_grid(H, W);

    // Pass 1, per tile: each pixel walks its splats back to front; the
    // gradient of entry e goes to entry_grads[e], owned by this tile alone.
    const int64_t num_entries = st.point_list.size(0);
    std::vector<dgr::SplatGrad> entry_grads(num_entries);
    std::memset(entry_grads.data(), 0, sizeof(dgr::SplatGrad) * num_entries);
    const int64_t* ranges = st.tile_ranges.data_ptr<int64_t>();
    const int32_t* points = st.point_list.data_ptr<int32_t>();
    const float* final_T = st.final_T.data_ptr<float>();
    const int* n_contrib = st.n_contrib.data_ptr<int>();
    const float* dL_dpix = dL_dcolor.data_ptr<float>();
    const float* dL_dimp = dL_dimportance.data_ptr<float>();
    const float* dL_dinv = dL_dinvdepth.data_ptr<float>();
    const float* dL_dalp = dL_dalpha.data_ptr<float>();
    const float* bg = background.data_ptr<float>();
    const float half_w = 0.5f * float(W), half_h = 0.5f * float(H);
    const dgr::SplatSource src{st.means2D.data_ptr<float>(), st.conic_opacity.data_ptr<float>(),
                               st.colors.data_ptr<float>(), importances.data_ptr<float>(), st.depths.data_ptr<float>()};
    parallel_for_dynamic(grid.num_tiles(), [&](int64_t tile) {
        TileSplats ts;
        ts.load(src, points, ranges[tile], ranges[tile + 1]);
        dgr::SplatGrad* grads = entry_grads.data() + ranges[tile];
        for_each_pixel(tile, grid, H, W, [&](float x, float y, int64_t pix) {
            dgr::PixelUpstream up;
            for (int ch = 0; ch < 3; ++ch) up.feature[ch] = dL_dpix[ch * H * W + pix];
            up.feature[dgr::FEATURE_IMPORTANCE] = dL_dimp[pix];
            up.feature[dgr::FEATURE_INVDEPTH] = dL_dinv[pix];
            up.alpha = dL_dalp[pix];
            dgr::PixelBackward pb;
            pb.init(final_T[pix], up, bg);
            for (int j = n_contrib[pix] - 1; j >= 0; --j) {
                const dgr::Splat& s = ts.splats[j];
                const float dx = s.mean.x - x, dy = s.mean.y - y;
                float alpha, G;
                if (!dgr::splat_alpha(s.conic_opacity, dx, dy, alpha, G)) continue;
                add_splat_grad(grads[j], pb.step(s, dx, dy, alpha, G, ts.features[j], half_w, half_h));
            }
        });
    });

    // Pass 2, per Gaussian: sum its entries in slot order (deterministic for
    // any thread count) and chain back through the preprocess.
    auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    torch::Tensor g_means3D = torch::zeros({P, 3}, f32);
    torch::Tensor g_means2D = torch::zeros({P, 3}, f32);
    torch::Tensor g_opacities = torch::zeros({P}, f32);
    torch::Tensor g_importances = torch::zeros({P}, f32);
    torch::Tensor g_colors = torch::zeros({P, 3}, f32);
    torch::Tensor g_shs = torch::zeros({P, std::max<int64_t>(in.sh_coeffs, 1), 3}, f32);
    torch::Tensor g_cov3D = torch::zeros({P, 6}, f32);
    torch::Tensor g_scales = torch::zeros({P, 3}, f32);
    torch::Tensor g_rotations = torch::zeros({P, 4}, f32);
    const dgr::GaussianGrads out{g_means3D.data_ptr<float>(),     g_means2D.data_ptr<float>(),
                                 g_opacities.data_ptr<float>(),   g_importances.data_ptr<float>(),
                                 g_colors.data_ptr<float>(),      g_shs.data_ptr<float>(),
                                 g_cov3D.data_ptr<float>(),       g_scales.data_ptr<float>(),
                                 g_rotations.data_ptr<float>()};
    const int* touched = st.tiles_touched.data_ptr<int>();
    const int64_t* offsets = st.gaussian_offsets.data_ptr<int64_t>();
    const int64_t* slots = st.slot_entries.data_ptr<int64_t>();
    at::parallel_for(0, P, 256, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            if (touched[i] == 0) continue;
            dgr::SplatGrad sum;
            std::memset(&sum, 0, sizeof(sum));
            for (int64_t k = offsets[i]; k < offsets[i + 1]; ++k) add_splat_grad(sum, entry_grads[slots[k]]);
            dgr::preprocess_gaussian_backward(int(i), in, cam, grid.grid_x, grid.grid_y, sum, out);
        }
    });
    return {g_means3D, g_means2D, g_opacities, g_importances, g_colors, g_shs, g_cov3D, g_scales, g_rotations};
}

torch::Tensor mark_visible_cpu(const torch::Tensor& means3D, const torch::Tensor& viewmatrix,
                               const torch::Tensor& projmatrix) {
    (void)projmatrix;
    const int64_t P = means3D.size(0);
    torch::Tensor visible = torch::zeros({P}, torch::kBool);
    const float* m = means3D.data_ptr<float>();
    const float* view = viewmatrix.data_ptr<float>();
    bool* out = visible.data_ptr<bool>();
    at::parallel_for(0, P, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
            out[i] = dgr::in_front_of_near_plane(
                dgr::transform_point_4x3(glm::vec3(m[3 * i], m[3 * i + 1], m[3 * i + 2]), view));
    });
    return visible;
}
