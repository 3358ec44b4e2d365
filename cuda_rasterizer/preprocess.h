// One Gaussian's preprocess (forward) and its backward, built from the
// pieces in geometry.h, sh.h and geometry_backward.h. The CUDA kernels call
// these once per thread, the CPU driver once per loop iteration.
#pragma once

#include "blend.h"
#include "geometry.h"
#include "geometry_backward.h"
#include "sh.h"

namespace dgr {

// Where the SH entries of Gaussian idx lie in an array of them: its row
// starts at (idx - row_first) * row_stride (0: 3 * sh_coeffs, a
// [P, sh_coeffs, 3] tensor) and its entries are entry_stride apart. The
// CPU's vectorised pass 2 points shs and their gradients at buffers with an
// entry per lane.
struct ShLayout {
    int row_first = 0;
    int row_stride = 0;
    int entry_stride = 1;
    template <typename T>
    RASTER_HD T* row(T* base, int idx, int sh_coeffs) const {
        return base + (idx - row_first) * (row_stride != 0 ? row_stride : 3 * sh_coeffs);
    }
};

// Per-Gaussian inputs; pointers the caller did not give are null.
struct GaussianInputs {
    const float* means3D;         // [P, 3]
    const float* scales;          // [P, 3] (with rotations) or null
    const float* rotations;       // [P, 4] (r, x, y, z) or null
    const float* cov3D_precomp;   // [P, 6] or null
    const float* shs;             // [P, sh_coeffs, 3] or null
    const float* colors_precomp;  // [P, 3] or null
    const float* opacities;       // [P]
    const float* importances;     // [P], or null (all ones)
    int sh_coeffs;
    int sh_degree;
    float scale_modifier;
    bool antialiasing;            // scale opacity by antialias_opacity_scale
    ShLayout sh_layout;           // of shs, where drawn_gaussian_backward reads them
};

// What the preprocess writes per Gaussian. Invisible Gaussians get radius 0
// and no tiles; their other fields are left as the caller initialised them.
struct ProjectedGaussians {
    int* radii;             // [P]
    float* means2D;         // [P, 2] pixel coordinates
    float* depths;          // [P] view-space z
    float* conic_opacity;   // [P, 4]
    float* colors;          // [P, 3]
    int* tile_rects;        // [P, 4] min x, min y, max x, max y
    int* tiles_touched;     // [P]
};

RASTER_HD glm::vec3 load_vec3(const float* p, int i) { return glm::vec3(p[3 * i], p[3 * i + 1], p[3 * i + 2]); }
RASTER_HD glm::vec4 load_vec4(const float* p, int i) {
    return glm::vec4(p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]);
}

RASTER_HD void gaussian_covariance(const GaussianInputs& in, int idx, float cov[6]) {
    if (in.cov3D_precomp != nullptr) {
        for (int k = 0; k < 6; ++k) cov[k] = in.cov3D_precomp[6 * idx + k];
    } else {
        covariance_3d(load_vec3(in.scales, idx), in.scale_modifier, load_vec4(in.rotations, idx), cov);
    }
}

// Whether the attributes that reach the pixels directly are all finite: the
// opacity, the importance, and the colour (its colors_precomp row, or the SH
// coefficients the degree reads: the first (sh_degree + 1)^2 of its M). A
// Gaussian failing this is culled like one behind the camera. (means3D and
// the covariance inputs need no check here: a non-finite one makes the pixel
// mean, the conic or the radius non-finite, which culls it already.)
RASTER_HD bool attributes_finite(const GaussianInputs& in, int idx) {
    if (!is_finite(in.opacities[idx])) return false;
    if (in.importances != nullptr && !is_finite(in.importances[idx])) return false;
    const bool precomp = in.colors_precomp != nullptr;
    const float* color = precomp ? in.colors_precomp + 3 * idx : in.shs + 3 * in.sh_coeffs * idx;
    const int n = precomp ? 3 : 3 * sh_coefficient_count(in.sh_degree);
    return all_finite(color, n);
}

// Everything the forward computes about one Gaussian before the pixels.
struct GaussianProjection {
    bool visible;
    glm::vec3 t_view;
    glm::vec2 mean2D;
    glm::vec3 cov2d;  // undilated
    glm::vec3 conic;
    float opacity_scale;  // 1, or the antialiasing compensation
    float radius;
    TileRect rect;
    float cov3D[6];
    EwaProjection ewa;
};

// Everything the forward computes about one Gaussian before the pixels, and
// whether it is drawn (`visible`): in front of the near plane, a finite pixel
// mean, an invertible finite conic and a tile rectangle of positive area.
// Every step runs whatever the tests say (no early exits): branch-free, so
// that the CPU forward vectorises it across Gaussians; the fields of an
// invisible Gaussian are meaningless.
RASTER_HD GaussianProjection project_geometry(const GaussianInputs& in, int idx, const Camera& cam, int grid_x,
                                              int grid_y) {
    GaussianProjection g;
    const glm::vec3 mean = load_vec3(in.means3D, idx);
    g.t_view = transform_point_4x3(mean, cam.viewmatrix);
    const glm::vec4 p_hom = transform_point_4x4(mean, cam.projmatrix);
    const float p_w = 1.0f / (p_hom.w + PROJ_W_EPS);
    g.mean2D = glm::vec2(ndc_to_pixel(p_hom.x * p_w, cam.width), ndc_to_pixel(p_hom.y * p_w, cam.height));
    gaussian_covariance(in, idx, g.cov3D);
    g.ewa = ewa_projection(g.t_view, cam);
    g.cov2d = covariance_2d(g.ewa, g.cov3D);
    const bool conic_ok = conic_and_radius(g.cov2d, g.conic, g.radius);
    g.opacity_scale = in.antialiasing ? antialias_opacity_scale(g.cov2d) : 1.0f;
    g.rect = tile_rect(g.mean2D, g.radius, grid_x, grid_y);
    // (area() > 0 without its int64 product: the factors are int32)
    const int w = g.rect.max_x - g.rect.min_x, h = g.rect.max_y - g.rect.min_y;
    const bool has_area = ((w > 0) & (h > 0)) | ((w < 0) & (h < 0));
    g.visible = in_front_of_near_plane(g.t_view) & is_finite(g.mean2D.x) & is_finite(g.mean2D.y) & conic_ok & has_area;
    return g;
}

// project_geometry, and the attributes that reach the pixels must be finite
// (attributes_finite): the per-Gaussian preprocess of both backends and of
// the backward.
RASTER_HD GaussianProjection project_gaussian(const GaussianInputs& in, int idx, const Camera& cam, int grid_x,
                                              int grid_y) {
    GaussianProjection g = project_geometry(in, idx, cam, grid_x, grid_y);
    g.visible = g.visible && attributes_finite(in, idx);
    return g;
}

// A Gaussian's SH coefficients (where in.sh_layout puts them) evaluated
// towards the camera from `mean`.
RASTER_HD glm::vec3 sh_color(const GaussianInputs& in, int idx, const glm::vec3 mean, const Camera& cam) {
    bool clamped[3];
    return sh_to_color(in.sh_degree, in.sh_layout.row(in.shs, idx, in.sh_coeffs), mean, cam.campos, clamped,
                       in.sh_layout.entry_stride);
}
// A Gaussian's colour: its colors_precomp row, or sh_color from its mean.
RASTER_HD glm::vec3 gaussian_color(const GaussianInputs& in, int idx, const Camera& cam) {
    if (in.colors_precomp != nullptr) return load_vec3(in.colors_precomp, idx);
    return sh_color(in, idx, load_vec3(in.means3D, idx), cam);
}

// The opacity a drawn Gaussian blends with (antialiasing scales it).
RASTER_HD float splat_opacity(const GaussianInputs& in, int idx, const GaussianProjection& g) {
    return in.opacities[idx] * g.opacity_scale;
}

// Writes a drawn Gaussian's outputs: from its projection the fields radius,
// mean2D, t_view.z, conic, opacity_scale and rect (the CPU's vectorised
// preprocess fills just these), and its colour (gaussian_color).
// The part of write_projection that says which tiles a Gaussian covers:
// its radius, tile rectangle and tile count.
RASTER_HD void write_coverage(int idx, const GaussianProjection& g, const ProjectedGaussians& out) {
    out.radii[idx] = int(g.radius);
    out.tile_rects[4 * idx] = g.rect.min_x;
    out.tile_rects[4 * idx + 1] = g.rect.min_y;
    out.tile_rects[4 * idx + 2] = g.rect.max_x;
    out.tile_rects[4 * idx + 3] = g.rect.max_y;
    out.tiles_touched[idx] = int(g.rect.area());
}

RASTER_HD void write_projection(int idx, const GaussianInputs& in, const GaussianProjection& g,
                                const glm::vec3& color, const ProjectedGaussians& out) {
    write_coverage(idx, g, out);
    out.means2D[2 * idx] = g.mean2D.x;
    out.means2D[2 * idx + 1] = g.mean2D.y;
    out.depths[idx] = g.t_view.z;
    out.conic_opacity[4 * idx] = g.conic.x;
    out.conic_opacity[4 * idx + 1] = g.conic.y;
    out.conic_opacity[4 * idx + 2] = g.conic.z;
    out.conic_opacity[4 * idx + 3] = splat_opacity(in, idx, g);
    out.colors[3 * idx] = color.x;
    out.colors[3 * idx + 1] = color.y;
    out.colors[3 * idx + 2] = color.z;
}

// The splat write_projection's outputs give load_splat (importance: the
// Gaussian's, 1 when none are given), from the projection directly.
RASTER_HD void projected_splat(int idx, const GaussianInputs& in, const GaussianProjection& g,
                               const glm::vec3& color, Splat& s, SplatFeatures& f) {
    s.mean = g.mean2D;
    s.conic_opacity = glm::vec4(g.conic.x, g.conic.y, g.conic.z, splat_opacity(in, idx, g));
    for (int ch = 0; ch < NUM_CHANNELS; ++ch) f.v[ch] = color[ch];
    f.v[FEATURE_IMPORTANCE] = in.importances != nullptr ? in.importances[idx] : 1.0f;
    f.v[FEATURE_INVDEPTH] = inverse_depth(g.t_view.z);
}

RASTER_HD void store_projection(int idx, const GaussianInputs& in, const Camera& cam, const GaussianProjection& g,
                                const ProjectedGaussians& out) {
    write_projection(idx, in, g, gaussian_color(in, idx, cam), out);
}

RASTER_HD void preprocess_gaussian(int idx, const GaussianInputs& in, const Camera& cam, int grid_x, int grid_y,
                                   const ProjectedGaussians& out) {
    out.radii[idx] = 0;
    out.tiles_touched[idx] = 0;
    const GaussianProjection g = project_gaussian(in, idx, cam, grid_x, grid_y);
    if (g.visible) store_projection(idx, in, cam, g, out);
}

// Gradients of the per-Gaussian inputs; null pointers are not written.
struct GaussianGrads {
    float* means3D;         // [P, 3]
    float* means2D;         // [P, 3] (NDC; third column zero)
    float* opacities;       // [P]
    float* importances;     // [P]
    float* colors_precomp;  // [P, 3]
    float* shs;             // [P, sh_coeffs, 3]
    float* cov3D_precomp;   // [P, 6]
    float* scales;          // [P, 3]
    float* rotations;       // [P, 4]
    ShLayout sh_layout;     // of shs
};

// The chain of preprocess_gaussian_backward for a Gaussian that is drawn (p:
// its projection).
RASTER_HD void drawn_gaussian_backward(int idx, const GaussianInputs& in, const Camera& cam,
                                       const GaussianProjection& p, const SplatGrad& g, const GaussianGrads& out) {
    // (the inputs are read before any gradient is written: the two might
    // alias for all the compiler knows, and a read after a write keeps the
    // CPU's loop across Gaussians from vectorising)
    const glm::vec3 mean = load_vec3(in.means3D, idx);
    const float opacity = in.opacities[idx];
    const bool cov3D_given = in.cov3D_precomp != nullptr;
    const glm::vec3 scale = cov3D_given ? glm::vec3(0.f) : load_vec3(in.scales, idx);
    const glm::vec4 rot = cov3D_given ? glm::vec4(0.f) : load_vec4(in.rotations, idx);

    glm::vec3 dL_dmean = projection_backward(mean, cam.projmatrix, g.mean[0], g.mean[1]);
    const glm::vec3 dL_dcolor(g.feature[0], g.feature[1], g.feature[2]);
    if (in.colors_precomp == nullptr) {
        const float* sh = in.sh_layout.row(in.shs, idx, in.sh_coeffs);
        bool clamped[3];
        sh_to_color(in.sh_degree, sh, mean, cam.campos, clamped, in.sh_layout.entry_stride);
        const glm::vec3 masked(clamped[0] ? 0.f : dL_dcolor.x, clamped[1] ? 0.f : dL_dcolor.y,
                               clamped[2] ? 0.f : dL_dcolor.z);
        dL_dmean += sh_to_color_backward(in.sh_degree, in.sh_coeffs, sh, in.sh_layout.entry_stride, mean, cam.campos,
                                         masked, out.sh_layout.row(out.shs, idx, in.sh_coeffs),
                                         out.sh_layout.entry_stride);
    }

    glm::vec3 dL_dcov2d = conic_backward(p.cov2d, glm::vec3(g.conic[0], g.conic[1], g.conic[2]));
    if (in.antialiasing)  // the pixels saw opacity * scale(cov2D)
        dL_dcov2d += antialias_opacity_scale_backward(p.cov2d, g.opacity * opacity);
    float dL_dcov3D[6];
    glm::vec3 dL_dt;
    covariance_2d_backward(p.ewa, cam, p.cov3D, dL_dcov2d, dL_dcov3D, dL_dt);
    // inverse depth 1 / t.z (the unclamped view depth)
    dL_dt.z -= g.feature[FEATURE_INVDEPTH] / (p.t_view.z * p.t_view.z);
    // t = W mean + translation
    dL_dmean += dL_dt.x * view_rotation_row(cam.viewmatrix, 0) + dL_dt.y * view_rotation_row(cam.viewmatrix, 1) +
                dL_dt.z * view_rotation_row(cam.viewmatrix, 2);

    out.means2D[3 * idx] = g.mean[0];
    out.means2D[3 * idx + 1] = g.mean[1];
    out.means2D[3 * idx + 2] = 0.f;
    out.opacities[idx] = g.opacity * p.opacity_scale;
    out.importances[idx] = g.feature[FEATURE_IMPORTANCE];
    if (in.colors_precomp != nullptr) {
        out.colors_precomp[3 * idx] = dL_dcolor.x;
        out.colors_precomp[3 * idx + 1] = dL_dcolor.y;
        out.colors_precomp[3 * idx + 2] = dL_dcolor.z;
    }
    out.means3D[3 * idx] = dL_dmean.x;
    out.means3D[3 * idx + 1] = dL_dmean.y;
    out.means3D[3 * idx + 2] = dL_dmean.z;
    if (cov3D_given) {
        for (int k = 0; k < 6; ++k) out.cov3D_precomp[6 * idx + k] = dL_dcov3D[k];
    } else {
        glm::vec3 dL_dscale;
        glm::vec4 dL_drot;
        covariance_3d_backward(scale, in.scale_modifier, rot, dL_dcov3D, dL_dscale, dL_drot);
        for (int k = 0; k < 3; ++k) out.scales[3 * idx + k] = dL_dscale[k];
        for (int k = 0; k < 4; ++k) out.rotations[4 * idx + k] = dL_drot[k];
    }
}

// project_geometry and drawn_gaussian_backward whether or not the Gaussian
// is drawn (returns whether it is; if not, what it wrote is meaningless):
// branch-free, for the CPU's loop across Gaussians in SIMD lanes. (One
// function, so that the projection is its local, and g by value: a
// variable of the loop passed by reference is kept in memory, a copy per
// lane, and the loop left unvectorised.)
RASTER_HD bool gaussian_backward_unchecked(int idx, const GaussianInputs& in, const Camera& cam, int grid_x,
                                           int grid_y, SplatGrad g, const GaussianGrads& out) {
    const GaussianProjection p = project_geometry(in, idx, cam, grid_x, grid_y);
    drawn_gaussian_backward(idx, in, cam, p, g, out);
    return p.visible;
}

// Chains one visible Gaussian's screen-space gradient (summed over its
// pixels) back to its inputs, recomputing the forward quantities it needs.
// Returns false, writing nothing, for a Gaussian the preprocess culls
// (radius 0: behind the camera, a non-finite attribute, ...): its gradients
// are zero whatever the upstream says, and the caller provides those zeros.
// (The drivers call this only for Gaussians that touched a tile, so that
// happens only if the inputs changed since the forward.)
RASTER_HD bool preprocess_gaussian_backward(int idx, const GaussianInputs& in, const Camera& cam, int grid_x,
                                            int grid_y, const SplatGrad& g, const GaussianGrads& out) {
    const GaussianProjection p = project_gaussian(in, idx, cam, grid_x, grid_y);
    if (!p.visible) return false;
    drawn_gaussian_backward(idx, in, cam, p, g, out);
    return true;
}

}  // namespace dgr
