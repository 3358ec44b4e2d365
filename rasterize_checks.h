// Argument checks of the compiled entry points, shared by the CPU glue
// (cpu/rasterize_points_cpu.cpp) and the CUDA glue (rasterize_points.cu).
//
// The public API validates every argument in Python
// (diff_gaussian_rasterization_ks/_validation.py) before a kernel runs; these
// checks stand between a direct call of the raw bindings and an out-of-bounds
// access. They run before any data pointer is read, and each failure is a
// TORCH_CHECK (a RuntimeError in Python) whose message names the entry point,
// the argument, what was expected and what was received.
//
// Absent optional inputs (shs or colors_precomp, scales and rotations or
// cov3D_precomp, pixel_weights) arrive as tensors without elements, as
// ptr_or_null reads them; the rules are those of _validation.py: exactly one
// of shs / colors_precomp, and either scales and rotations or cov3D_precomp
// (with P = 0 every input is empty, so only the shapes are checked).
//
// The input checks are O(1). The backward also checks the values of the
// forward state that index memory (tiles_touched and gaussian_offsets,
// tile_ranges, point_list, n_contrib): one pass over each,
// O(P + E + H W), cheap next to the backward itself (which visits every entry
// for each pixel of its tile): on the CPU in parallel, under 2% of garden's
// backward, and one synchronisation on CUDA.
#pragma once

#include <ATen/Parallel.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_rasterizer/config.h"

namespace dgr {
namespace checks {

// Position of each forward-state tensor, per backend (rasterize_points.h
// documents both). The CUDA backend keeps the projected Gaussians' arrays
// (and an empty entry_slots); the CPU backend keeps each drawn Gaussian's
// splat record (cpu/rasterize_points_cpu.cpp, SplatRecord), from which it
// also computes each entry's slot.
enum StateIndex {
    S_MEANS2D = 0,
    S_DEPTHS,
    S_CONIC_OPACITY,
    S_COLORS,
    S_TILES_TOUCHED,
    S_GAUSSIAN_OFFSETS,
    S_TILE_RANGES,
    S_POINT_LIST,
    S_ENTRY_SLOTS,
    S_FINAL_T,
    S_N_CONTRIB,
    S_COUNT
};
enum CpuStateIndex {
    CPU_S_SPLAT_RECORDS = 0,
    CPU_S_TILES_TOUCHED,
    CPU_S_GAUSSIAN_OFFSETS,
    CPU_S_TILE_RANGES,
    CPU_S_POINT_LIST,
    CPU_S_FINAL_T,
    CPU_S_N_CONTRIB,
    CPU_S_COUNT
};
// A splat record: 16 floats (64 bytes, one cache line; 64-byte aligned)
constexpr int64_t SPLAT_RECORD_FLOATS = 16;

// Which entry points are checked: the tensors' device type, and the
// forward state's layout.
enum class Backend { CPU, CUDA };

// The state tensors both backends have, by name.
struct CommonState {
    const torch::Tensor &tiles_touched, &gaussian_offsets, &tile_ranges, &point_list, &final_T, &n_contrib;
};
inline int64_t state_count(Backend backend) { return backend == Backend::CPU ? int64_t(CPU_S_COUNT) : int64_t(S_COUNT); }
inline CommonState common_state(Backend backend, const std::vector<torch::Tensor>& s) {
    if (backend == Backend::CPU)
        return CommonState{s[CPU_S_TILES_TOUCHED], s[CPU_S_GAUSSIAN_OFFSETS], s[CPU_S_TILE_RANGES],
                           s[CPU_S_POINT_LIST],    s[CPU_S_FINAL_T],          s[CPU_S_N_CONTRIB]};
    return CommonState{s[S_TILES_TOUCHED], s[S_GAUSSIAN_OFFSETS], s[S_TILE_RANGES],
                       s[S_POINT_LIST],    s[S_FINAL_T],          s[S_N_CONTRIB]};
}

using Shape = std::vector<int64_t>;

inline std::string shapes_text(const std::vector<Shape>& shapes) {
    std::ostringstream os;
    for (size_t i = 0; i < shapes.size(); ++i) os << (i ? " or " : "") << c10::IntArrayRef(shapes[i]);
    return os.str();
}

inline std::string context_text(const std::string& context) { return context.empty() ? "" : " (" + context + ")"; }

class Checker {
   public:
    Checker(const char* fn, torch::Device device) : fn_(fn), device_(device) {}

    const char* fn() const { return fn_; }

    // `t` has one of `shapes`, dtype `dtype`, lives on the device of means3D
    // and is contiguous. `context` says where the expected sizes come from.
    void tensor(const char* name, const torch::Tensor& t, c10::ScalarType dtype, const std::vector<Shape>& shapes,
                const std::string& context = "") const {
        defined(name, t);
        bool ok = false;
        for (const Shape& s : shapes) ok = ok || t.sizes() == c10::IntArrayRef(s);
        TORCH_CHECK(ok, fn_, ": ", name, ": expected shape ", shapes_text(shapes), context_text(context), ", got ",
                    t.sizes());
        storage(name, t, dtype);
    }

    // `t` has `numel` elements in any shape (the camera tensors).
    void elements(const char* name, const torch::Tensor& t, c10::ScalarType dtype, int64_t numel,
                  const std::string& context) const {
        defined(name, t);
        TORCH_CHECK(t.numel() == numel, fn_, ": ", name, ": expected ", numel, " elements", context_text(context),
                    ", got a tensor of shape ", t.sizes());
        storage(name, t, dtype);
    }

    // An optional input: absent (no elements) or as tensor() checks it.
    // Returns whether it was given.
    bool optional(const char* name, const torch::Tensor& t, c10::ScalarType dtype, const std::vector<Shape>& shapes,
                  const std::string& context = "") const {
        defined(name, t);
        if (t.numel() == 0) return false;
        tensor(name, t, dtype, shapes, context);
        return true;
    }

   private:
    void defined(const char* name, const torch::Tensor& t) const {
        TORCH_CHECK(t.defined(), fn_, ": ", name, ": expected a tensor, got an undefined one");
    }
    void storage(const char* name, const torch::Tensor& t, c10::ScalarType dtype) const {
        TORCH_CHECK(t.device() == device_, fn_, ": ", name, " is on ", t.device(), " but means3D is on ", device_,
                    device_.is_cuda() ? "; all tensors must be on the same CUDA device"
                                      : "; the CPU entry points take CPU tensors only");
        TORCH_CHECK(t.scalar_type() == dtype, fn_, ": ", name, ": expected dtype ", dtype, ", got ", t.scalar_type(),
                    " (shape ", t.sizes(), ")");
        TORCH_CHECK(t.is_contiguous(), fn_, ": ", name, ": expected a contiguous tensor, got a non-contiguous one",
                    " of shape ", t.sizes(), " and strides ", t.strides(), "; call .contiguous()");
    }

    const char* fn_;
    torch::Device device_;
};

// means3D [P, 3] float32 on the backend's device type; the checker for the
// other arguments (all on the device of means3D).
inline Checker check_means3D(const char* fn, Backend backend, const torch::Tensor& means3D) {
    TORCH_CHECK(means3D.defined(), fn, ": means3D: expected a tensor, got an undefined one");
    const bool cuda = backend == Backend::CUDA;
    TORCH_CHECK(cuda ? means3D.is_cuda() : means3D.is_cpu(), fn, ": means3D: expected a ", cuda ? "CUDA" : "CPU",
                " tensor, got one on ", means3D.device());
    TORCH_CHECK(means3D.dim() == 2 && means3D.size(1) == 3, fn, ": means3D: expected shape [P, 3], got ",
                means3D.sizes());
    const Checker c(fn, means3D.device());
    c.tensor("means3D", means3D, torch::kFloat32, {{means3D.size(0), 3}});
    TORCH_CHECK(means3D.size(0) < int64_t(INT32_MAX), fn, ": means3D: at most 2^31 - 2 Gaussians, got ",
                means3D.size(0));
    return c;
}

// The per-Gaussian inputs (forward and backward). Returns P.
inline int64_t check_gaussians(const Checker& c, const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
                               const torch::Tensor& opacities, const torch::Tensor& importances,
                               const torch::Tensor& scales, const torch::Tensor& rotations,
                               const torch::Tensor& cov3D_precomp, const torch::Tensor& shs, int64_t sh_degree) {
    const int64_t P = means3D.size(0);
    const std::string from_P = "P = " + std::to_string(P) + " from means3D";
    c.tensor("opacities", opacities, torch::kFloat32, {{P}, {P, 1}}, from_P);
    c.tensor("importances", importances, torch::kFloat32, {{P}, {P, 1}}, from_P);

    TORCH_CHECK(sh_degree >= 0 && sh_degree <= dgr::MAX_SH_DEGREE, c.fn(), ": sh_degree: expected an int in [0, ",
                dgr::MAX_SH_DEGREE, "], got ", sh_degree);
    const int64_t needed = (sh_degree + 1) * (sh_degree + 1);
    // shs [P, M, 3], M >= (sh_degree + 1)^2; also with P = 0, where it is
    // empty but its M still sets the shape of d/dshs
    const bool has_shs = shs.defined() && (shs.numel() > 0 || shs.dim() == 3);
    if (has_shs) {
        TORCH_CHECK(shs.dim() == 3 && shs.size(0) == P && shs.size(1) >= needed && shs.size(2) == 3, c.fn(),
                    ": shs: expected shape [", P, ", M, 3] with M >= ", needed, " coefficients (sh_degree ",
                    sh_degree, "; ", from_P, "), got ", shs.sizes());
        c.tensor("shs", shs, torch::kFloat32, {{P, shs.size(1), 3}}, from_P);
    }
    const bool has_colors = c.optional("colors_precomp", colors_precomp, torch::kFloat32, {{P, 3}}, from_P);
    const bool has_scales = c.optional("scales", scales, torch::kFloat32, {{P, 3}}, from_P);
    const bool has_rotations = c.optional("rotations", rotations, torch::kFloat32, {{P, 4}}, from_P);
    const bool has_cov3D = c.optional("cov3D_precomp", cov3D_precomp, torch::kFloat32, {{P, 6}}, from_P);
    if (P > 0) {
        TORCH_CHECK(has_shs != has_colors, c.fn(),
                    ": shs / colors_precomp: expected exactly one of them (the other empty), got ",
                    has_shs ? "both" : "neither");
        TORCH_CHECK(has_scales == has_rotations, c.fn(),
                    ": scales / rotations: expected both or neither (they go together), got only ",
                    has_scales ? "scales" : "rotations");
        TORCH_CHECK(has_scales != has_cov3D, c.fn(),
                    ": scales+rotations / cov3D_precomp: expected either scales and rotations or cov3D_precomp "
                    "(the other empty), got ",
                    has_cov3D ? "both" : "neither");
    }
    return P;
}

// The camera and the image size.
inline void check_camera(const Checker& c, const torch::Tensor& background, const torch::Tensor& viewmatrix,
                         const torch::Tensor& projmatrix, const torch::Tensor& campos, int64_t height, int64_t width) {
    c.elements("background", background, torch::kFloat32, 3, "an RGB color");
    c.elements("viewmatrix", viewmatrix, torch::kFloat32, 16, "a 4x4 matrix");
    c.elements("projmatrix", projmatrix, torch::kFloat32, 16, "a 4x4 matrix");
    c.elements("campos", campos, torch::kFloat32, 3, "a 3D point");
    TORCH_CHECK(height > 0 && width > 0 && height < INT32_MAX && width < INT32_MAX, c.fn(),
                ": image size: expected a positive height and width below 2^31 - 1, got ", height, " x ", width);
}

struct Sizes {
    int64_t P, H, W;
};

inline Sizes check_forward_args(const char* fn, Backend backend, const torch::Tensor& background,
                                const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
                                const torch::Tensor& opacities, const torch::Tensor& importances,
                                const torch::Tensor& scales, const torch::Tensor& rotations,
                                const torch::Tensor& cov3D_precomp, const torch::Tensor& viewmatrix,
                                const torch::Tensor& projmatrix, int64_t image_height, int64_t image_width,
                                const torch::Tensor& shs, int64_t sh_degree, const torch::Tensor& campos,
                                const torch::Tensor& pixel_weights) {
    const Checker c = check_means3D(fn, backend, means3D);
    const int64_t P = check_gaussians(c, means3D, colors_precomp, opacities, importances, scales, rotations,
                                      cov3D_precomp, shs, sh_degree);
    check_camera(c, background, viewmatrix, projmatrix, campos, image_height, image_width);
    c.optional("pixel_weights", pixel_weights, torch::kFloat32, {{image_height, image_width}},
               "image_height, image_width");
    return Sizes{P, image_height, image_width};
}

// [H, W]: for each pixel, the number of entries of its tile (tile_ranges
// already checked to be non-decreasing).
inline torch::Tensor per_pixel_counts(const torch::Tensor& ranges, int64_t grid_x, int64_t grid_y, int64_t H,
                                      int64_t W) {
    return ranges.diff()
        .view({grid_y, grid_x})
        .repeat_interleave(dgr::TILE_Y, 0)
        .repeat_interleave(dgr::TILE_X, 1)
        .narrow(0, 0, H)
        .narrow(1, 0, W);
}

// Whether holds(begin, end) is true for every part of [0, n), the parts
// (of at least `grain` indices) checked on ATen's threads. True for n = 0.
template <typename F>
bool holds_in_parts(int64_t n, const F& holds, int64_t grain = int64_t(1) << 15) {
    // (int, not bool: parallel_reduce keeps a vector of the parts' results)
    return at::parallel_reduce(
               int64_t(0), n, grain, 1, [&](int64_t begin, int64_t end, int) { return holds(begin, end) ? 1 : 0; },
               [](int a, int b) { return a & b; }) != 0;
}

// The forward state: shapes and dtypes against P (means3D), H, W (final_T)
// and the tile grid, then the values that index memory.
inline void check_forward_state(const Checker& c, Backend backend, const std::vector<torch::Tensor>& state, int64_t P,
                                int64_t H, int64_t W) {
    const int64_t grid_x = (W + dgr::TILE_X - 1) / dgr::TILE_X, grid_y = (H + dgr::TILE_Y - 1) / dgr::TILE_Y;
    const int64_t tiles = grid_x * grid_y;
    const CommonState common = common_state(backend, state);
    const torch::Tensor& point_list = common.point_list;
    TORCH_CHECK(point_list.defined() && point_list.dim() == 1, c.fn(), ": state.point_list: expected shape [E], got ",
                point_list.defined() ? point_list.sizes() : c10::IntArrayRef());
    const int64_t E = point_list.numel();
    const std::string from_P = "P = " + std::to_string(P) + " from means3D";
    const std::string from_HW = "H = " + std::to_string(H) + ", W = " + std::to_string(W) + " from state.final_T";
    const std::string from_E = "E = " + std::to_string(E) + " from state.point_list";
    const bool cpu = backend == Backend::CPU;
    if (cpu) {
        const torch::Tensor& records = state[CPU_S_SPLAT_RECORDS];
        c.tensor("state.splat_records", records, torch::kFloat32, {{P, SPLAT_RECORD_FLOATS}}, from_P);
        TORCH_CHECK(reinterpret_cast<uintptr_t>(records.data_ptr()) % 64 == 0, c.fn(),
                    ": state.splat_records: expected 64-byte aligned data (as the forward returns it), got address ",
                    records.data_ptr());
    } else {
        c.tensor("state.means2D", state[S_MEANS2D], torch::kFloat32, {{P, 2}}, from_P);
        c.tensor("state.depths", state[S_DEPTHS], torch::kFloat32, {{P}}, from_P);
        c.tensor("state.conic_opacity", state[S_CONIC_OPACITY], torch::kFloat32, {{P, 4}}, from_P);
        c.tensor("state.colors", state[S_COLORS], torch::kFloat32, {{P, 3}}, from_P);
        // (unused by the CUDA backward, which leaves it empty)
        c.tensor("state.entry_slots", state[S_ENTRY_SLOTS], torch::kInt64, {{0}, {E}}, from_E);
    }
    c.tensor("state.tiles_touched", common.tiles_touched, torch::kInt32, {{P}}, from_P);
    c.tensor("state.gaussian_offsets", common.gaussian_offsets, torch::kInt64, {{P + 1}}, from_P);
    c.tensor("state.tile_ranges", common.tile_ranges, torch::kInt64, {{tiles + 1}},
             std::to_string(grid_x) + " x " + std::to_string(grid_y) + " tiles of " + std::to_string(dgr::TILE_X) +
                 " x " + std::to_string(dgr::TILE_Y) + " pixels for " + from_HW);
    c.tensor("state.point_list", point_list, torch::kInt32, {{E}});
    c.tensor("state.final_T", common.final_T, torch::kFloat32, {{H, W}});
    c.tensor("state.n_contrib", common.n_contrib, torch::kInt32, {{H, W}}, from_HW);

    // The values. CPU: one pass over each (checked, contiguous) tensor, in
    // parts on ATen's threads, no temporaries (serial, they were 3% of
    // garden's 2-thread backward, a part its second thread did not share;
    // torch ops would make temporaries). CUDA: the same conditions as torch
    // ops, read back together (one synchronisation). The message of a
    // failing one is built only then.
    const torch::Tensor& touched = common.tiles_touched;
    const torch::Tensor& offsets = common.gaussian_offsets;
    const torch::Tensor& ranges = common.tile_ranges;
    const torch::Tensor& n_contrib = common.n_contrib;
    enum { TOUCHED, OFFSETS, RANGES, POINTS, N_CONTRIB, NUM_CONDITIONS };
    bool ok[NUM_CONDITIONS];
    if (cpu) {
        const int32_t* t = touched.data_ptr<int32_t>();
        const int64_t* o = offsets.data_ptr<int64_t>();
        const int64_t* r = ranges.data_ptr<int64_t>();
        ok[TOUCHED] = holds_in_parts(P, [t](int64_t begin, int64_t end) {
            int32_t t_min = 0;
            for (int64_t i = begin; i < end; ++i) t_min = std::min(t_min, t[i]);
            return t_min >= 0;
        });
        // (unsigned: wraps instead of overflowing on garbage; with counts in
        // [0, 2^31) and P < 2^31 the sums cannot wrap, so this is exact)
        ok[OFFSETS] = o[0] == 0 && o[P] == E && holds_in_parts(P, [o, t](int64_t begin, int64_t end) {
                          bool steps = true;
                          for (int64_t i = begin; i < end; ++i)
                              steps &= uint64_t(o[i + 1]) - uint64_t(o[i]) == uint64_t(int64_t(t[i]));
                          return steps;
                      });
        bool monotone = r[0] == 0 && r[tiles] == E;
        for (int64_t k = 0; k < tiles; ++k) monotone &= r[k + 1] >= r[k];
        ok[RANGES] = monotone;
        auto in_range = [](const auto* v, int64_t n, int64_t end) {
            return holds_in_parts(n, [v, end](int64_t begin, int64_t stop) {
                auto lo = v[begin], hi = v[begin];
                for (int64_t i = begin + 1; i < stop; ++i) {
                    lo = std::min(lo, v[i]);
                    hi = std::max(hi, v[i]);
                }
                return lo >= 0 && int64_t(hi) < end;
            });
        };
        ok[POINTS] = in_range(point_list.data_ptr<int32_t>(), E, P);
        // (if not monotone the tile counts are meaningless; RANGES fails first)
        const int32_t* nc = n_contrib.data_ptr<int32_t>();
        ok[N_CONTRIB] = !monotone || holds_in_parts(H, [&](int64_t y0, int64_t y1) {
            bool contrib = true;
            for (int64_t y = y0; y < y1; ++y)
                for (int64_t x = 0; x < W; ++x) {
                    const int64_t tile = (y / dgr::TILE_Y) * grid_x + x / dgr::TILE_X;
                    const int64_t v = nc[y * W + x];
                    contrib &= v >= 0 && v <= r[tile + 1] - r[tile];
                }
            return contrib;
        }, 64);
    } else {
        std::vector<torch::Tensor> conditions(NUM_CONDITIONS);
        conditions[TOUCHED] = (touched >= 0).all();
        conditions[OFFSETS] =
            (offsets[0] == 0).logical_and((offsets.diff() == touched).all()).logical_and(offsets[-1] == E);
        conditions[RANGES] = (ranges[0] == 0).logical_and((ranges.diff() >= 0).all()).logical_and(ranges[-1] == E);
        conditions[POINTS] = E == 0 ? torch::ones({}, touched.options().dtype(torch::kBool))
                                    : (point_list >= 0).logical_and(point_list < P).all();
        conditions[N_CONTRIB] = n_contrib.le(per_pixel_counts(ranges, grid_x, grid_y, H, W))
                                    .logical_and(n_contrib >= 0)
                                    .all();
        const torch::Tensor verdict = torch::stack(conditions).cpu();  // synchronises
        for (int k = 0; k < NUM_CONDITIONS; ++k) ok[k] = verdict[k].item<bool>();
    }

    auto first_last = [](const torch::Tensor& t) {
        std::ostringstream os;
        os << "first " << t[0].item<int64_t>() << ", last " << t[-1].item<int64_t>();
        return os.str();
    };
    auto min_max = [](const torch::Tensor& t) {
        std::ostringstream os;
        os << "[" << t.min().item<int64_t>() << ", " << t.max().item<int64_t>() << "]";
        return os.str();
    };
    TORCH_CHECK(ok[TOUCHED], c.fn(), ": state.tiles_touched: expected non-negative counts, got a minimum of ",
                touched.min().item<int64_t>());
    TORCH_CHECK(ok[OFFSETS], c.fn(),
                ": state.gaussian_offsets: expected the exclusive prefix sum of state.tiles_touched, from 0 to E (",
                from_E, "), got ", first_last(offsets), " (or steps other than tiles_touched)");
    TORCH_CHECK(ok[RANGES], c.fn(), ": state.tile_ranges: expected non-decreasing tile starts from 0 to E (", from_E,
                "), got ", first_last(ranges), " (or a decreasing step)");
    TORCH_CHECK(ok[POINTS], c.fn(), ": state.point_list: expected Gaussian indices in [0, ", P, ") (", from_P,
                "), got values in ", min_max(point_list));
    if (!ok[N_CONTRIB]) {
        const torch::Tensor per_pixel = per_pixel_counts(ranges, grid_x, grid_y, H, W);
        const torch::Tensor bad = (n_contrib < 0).logical_or(n_contrib > per_pixel).nonzero()[0];
        const int64_t y = bad[0].item<int64_t>(), x = bad[1].item<int64_t>();
        TORCH_CHECK(false, c.fn(), ": state.n_contrib: expected per pixel a count in [0, length of its tile's list], got ",
                    n_contrib[y][x].item<int64_t>(), " at pixel (y ", y, ", x ", x, ") whose tile lists ",
                    per_pixel[y][x].item<int64_t>(), " entries");
    }
}

inline Sizes check_backward_args(const char* fn, Backend backend, const torch::Tensor& background,
                                 const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
                                 const torch::Tensor& opacities, const torch::Tensor& importances,
                                 const torch::Tensor& scales, const torch::Tensor& rotations,
                                 const torch::Tensor& cov3D_precomp, const torch::Tensor& viewmatrix,
                                 const torch::Tensor& projmatrix, const torch::Tensor& shs, int64_t sh_degree,
                                 const torch::Tensor& campos, const std::vector<torch::Tensor>& state,
                                 const torch::Tensor& dL_dcolor, const torch::Tensor& dL_dimportance,
                                 const torch::Tensor& dL_dinvdepth, const torch::Tensor& dL_dalpha) {
    const Checker c = check_means3D(fn, backend, means3D);
    const int64_t P = check_gaussians(c, means3D, colors_precomp, opacities, importances, scales, rotations,
                                      cov3D_precomp, shs, sh_degree);
    const int64_t count = state_count(backend);
    TORCH_CHECK(int64_t(state.size()) == count, fn, ": state: expected the ", count,
                " forward-state tensors the forward returns after its first five outputs, got ", state.size());
    const torch::Tensor& final_T = common_state(backend, state).final_T;
    TORCH_CHECK(final_T.defined() && final_T.dim() == 2, fn, ": state.final_T: expected shape [H, W], got ",
                final_T.defined() ? final_T.sizes() : c10::IntArrayRef());
    const int64_t H = final_T.size(0), W = final_T.size(1);
    check_camera(c, background, viewmatrix, projmatrix, campos, H, W);
    const std::string from_HW = "H = " + std::to_string(H) + ", W = " + std::to_string(W) + " from state.final_T";
    c.tensor("dL_dcolor", dL_dcolor, torch::kFloat32, {{3, H, W}}, from_HW);
    c.tensor("dL_dimportance", dL_dimportance, torch::kFloat32, {{H, W}}, from_HW);
    c.tensor("dL_dinvdepth", dL_dinvdepth, torch::kFloat32, {{H, W}, {1, H, W}}, from_HW);
    c.tensor("dL_dalpha", dL_dalpha, torch::kFloat32, {{H, W}, {1, H, W}}, from_HW);
    check_forward_state(c, backend, state, P, H, W);
    return Sizes{P, H, W};
}

inline int64_t check_mark_visible_args(const char* fn, Backend backend, const torch::Tensor& means3D,
                                       const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix) {
    const Checker c = check_means3D(fn, backend, means3D);
    c.elements("viewmatrix", viewmatrix, torch::kFloat32, 16, "a 4x4 matrix");
    c.elements("projmatrix", projmatrix, torch::kFloat32, 16, "a 4x4 matrix");
    return means3D.size(0);
}

}  // namespace checks
}  // namespace dgr
