// Per-Gaussian projection math (ALGORITHM.md "Forward, per Gaussian"):
// view transform, near-plane test, 3D covariance, EWA 2D covariance, conic,
// screen radius and tile rectangle. Shared by the CPU and CUDA backends.
#pragma once

#include "config.h"

#include <string.h>  // memcpy (all_finite)

namespace dgr {

// The camera as every kernel sees it. Matrices are 4x4, read column-major
// (element m[4 * col + row]), exactly as PyTorch stores the transposed
// matrices 3DGS training code passes in.
struct Camera {
    const float* viewmatrix;  // world-to-camera
    const float* projmatrix;  // view x projection
    glm::vec3 campos;
    int width;
    int height;
    float tan_fovx;
    float tan_fovy;
    float focal_x;  // width / (2 tan_fovx)
    float focal_y;  // height / (2 tan_fovy)
};

// focal = size / (2 tanfov), in double then rounded (both backends alike).
inline float focal_length(int64_t size, double tan_fov) { return float(double(size) / (2.0 * tan_fov)); }

RASTER_HD glm::vec3 transform_point_4x3(const glm::vec3& p, const float* m) {
    return glm::vec3(m[0] * p.x + m[4] * p.y + m[8] * p.z + m[12],
                     m[1] * p.x + m[5] * p.y + m[9] * p.z + m[13],
                     m[2] * p.x + m[6] * p.y + m[10] * p.z + m[14]);
}

RASTER_HD glm::vec4 transform_point_4x4(const glm::vec3& p, const float* m) {
    return glm::vec4(m[0] * p.x + m[4] * p.y + m[8] * p.z + m[12],
                     m[1] * p.x + m[5] * p.y + m[9] * p.z + m[13],
                     m[2] * p.x + m[6] * p.y + m[10] * p.z + m[14],
                     m[3] * p.x + m[7] * p.y + m[11] * p.z + m[15]);
}

// The near-plane test (also the whole of markVisible). NaN depth fails it.
RASTER_HD bool in_front_of_near_plane(const glm::vec3& t_view) { return t_view.z > NEAR_PLANE; }

// Row r of the 3x3 world-to-camera rotation.
RASTER_HD glm::vec3 view_rotation_row(const float* m, int r) {
    return glm::vec3(m[r], m[4 + r], m[8 + r]);
}

// Pixel centres sit on integer coordinates.
RASTER_HD float ndc_to_pixel(float v, int size) {
    return ((v + 1.0f) * size - 1.0f) * 0.5f;
}

RASTER_HD bool is_finite(float v) {
    return v - v == 0.0f;  // false for NaN and +-Inf, also under fast-math-free nvcc
}

// Whether v[0, n) are all finite, by their exponent bits (all ones for NaN
// and +-Inf): an integer max, which the CPU's compiler vectorises (a loop of
// is_finite stayed scalar, ~4 instructions an entry: a quarter of the
// forward preprocess with degree-3 SH).
RASTER_HD bool all_finite(const float* v, int n) {
    uint32_t top = 0u;
    for (int k = 0; k < n; ++k) {
        uint32_t bits;
        memcpy(&bits, v + k, sizeof(bits));
        const uint32_t exponent = bits & 0x7f800000u;
        top = exponent > top ? exponent : top;
    }
    return top != 0x7f800000u;
}

// 3D covariance stored as its upper triangle (xx, xy, xz, yy, yz, zz).
RASTER_HD float sym3_get(const float* s, int i, int j) {
    // index of (i, j) in the packed upper triangle
    const int lo = i < j ? i : j, hi = i < j ? j : i;
    const int index[3][3] = {{0, 1, 2}, {1, 3, 4}, {2, 4, 5}};
    return s[index[lo][hi]];
}

RASTER_HD glm::vec3 sym3_mul(const float* s, const glm::vec3& v) {
    return glm::vec3(s[0] * v.x + s[1] * v.y + s[2] * v.z,
                     s[1] * v.x + s[3] * v.y + s[4] * v.z,
                     s[2] * v.x + s[4] * v.y + s[5] * v.z);
}

// Rotation matrix (row-major R[row][col]) of the quaternion q = (r, x, y, z),
// used as given: the training code normalises quaternions, the rasterizer
// does not.
RASTER_HD void quaternion_to_rotation(const glm::vec4& q, float R[3][3]) {
    const float r = q.x, x = q.y, y = q.z, z = q.w;
    R[0][0] = 1.f - 2.f * (y * y + z * z); R[0][1] = 2.f * (x * y - r * z); R[0][2] = 2.f * (x * z + r * y);
    R[1][0] = 2.f * (x * y + r * z); R[1][1] = 1.f - 2.f * (x * x + z * z); R[1][2] = 2.f * (y * z - r * x);
    R[2][0] = 2.f * (x * z - r * y); R[2][1] = 2.f * (y * z + r * x); R[2][2] = 1.f - 2.f * (x * x + y * y);
}

// Sigma = R diag(s)^2 R^T with s = scale_modifier * scale.
RASTER_HD void covariance_3d(const glm::vec3& scale, float scale_modifier, const glm::vec4& rot, float cov[6]) {
    float R[3][3];
    quaternion_to_rotation(rot, R);
    const float s2[3] = {scale_modifier * scale.x * scale_modifier * scale.x,
                         scale_modifier * scale.y * scale_modifier * scale.y,
                         scale_modifier * scale.z * scale_modifier * scale.z};
    const int rows[6] = {0, 0, 0, 1, 1, 2}, cols[6] = {0, 1, 2, 1, 2, 2};
    for (int e = 0; e < 6; ++e) {
        const int i = rows[e], j = cols[e];
        cov[e] = R[i][0] * R[j][0] * s2[0] + R[i][1] * R[j][1] * s2[1] + R[i][2] * R[j][2] * s2[2];
    }
}

// The EWA Jacobian J evaluated at the view-space mean, with t.x/t.z and
// t.y/t.z clamped to +-1.3 tanfov, premultiplied into the view rotation:
// rows t0, t1 of J W, so that cov2D = [t0; t1] Sigma [t0; t1]^T.
struct EwaProjection {
    glm::vec3 t;        // view-space mean after the clamp
    int clamped_x;  // (int, not bool: the CPU keeps a bool field of a struct in memory, unvectorised)
    int clamped_y;
    float j00, j02, j11, j12;
    glm::vec3 t0, t1;
};

RASTER_HD EwaProjection ewa_projection(const glm::vec3& t_view, const Camera& cam) {
    EwaProjection e;
    const float lim_x = TANFOV_CLAMP * cam.tan_fovx;
    const float lim_y = TANFOV_CLAMP * cam.tan_fovy;
    const float txtz = t_view.x / t_view.z;
    const float tytz = t_view.y / t_view.z;
    e.clamped_x = txtz < -lim_x || txtz > lim_x;
    e.clamped_y = tytz < -lim_y || tytz > lim_y;
    e.t = glm::vec3(clamp_between(txtz, -lim_x, lim_x) * t_view.z, clamp_between(tytz, -lim_y, lim_y) * t_view.z,
                    t_view.z);
    const float inv_z = 1.0f / e.t.z;
    e.j00 = cam.focal_x * inv_z;
    e.j02 = -cam.focal_x * e.t.x * inv_z * inv_z;
    e.j11 = cam.focal_y * inv_z;
    e.j12 = -cam.focal_y * e.t.y * inv_z * inv_z;
    const glm::vec3 w0 = view_rotation_row(cam.viewmatrix, 0);
    const glm::vec3 w1 = view_rotation_row(cam.viewmatrix, 1);
    const glm::vec3 w2 = view_rotation_row(cam.viewmatrix, 2);
    e.t0 = e.j00 * w0 + e.j02 * w2;
    e.t1 = e.j11 * w1 + e.j12 * w2;
    return e;
}

// The undilated screen-space covariance (a, b, c) = (cov00, cov01, cov11).
RASTER_HD glm::vec3 covariance_2d(const EwaProjection& e, const float* cov3D) {
    const glm::vec3 s0 = sym3_mul(cov3D, e.t0);
    const glm::vec3 s1 = sym3_mul(cov3D, e.t1);
    return glm::vec3(glm::dot(e.t0, s0), glm::dot(e.t0, s1), glm::dot(e.t1, s1));
}

// ceilf(x) for x >= 0, +inf or NaN, in plain float arithmetic (no
// rounding instruction or conversion), so that the CPU forward's loop
// vectorises on baseline x86-64 too. Below 2^23, adding and subtracting
// 2^23 rounds x to an integer r with |r - x| <= 0.5, exactly; from 2^23 on
// every float is an integer.
RASTER_HD float ceil_nonnegative(float x) {
    const float r = (x + 8388608.0f) - 8388608.0f;
    const float c = r < x ? r + 1.0f : r;
    return x < 8388608.0f ? c : x;
}

// Conic (inverse of the dilated 2D covariance) and the 3-sigma radius in
// pixels. Returns false when the covariance is singular or not finite.
// Branch-free (a zero det divides without trapping, and the result is
// discarded), so that the CPU forward can vectorise it across Gaussians.
RASTER_HD bool conic_and_radius(const glm::vec3& cov2d, glm::vec3& conic, float& radius) {
    const float a = cov2d.x + LOWPASS_DILATION;
    const float b = cov2d.y;
    const float c = cov2d.z + LOWPASS_DILATION;
    const float det = a * c - b * b;
    const float inv_det = 1.0f / det;
    conic = glm::vec3(c * inv_det, -b * inv_det, a * inv_det);
    const float mid = 0.5f * (a + c);
    const float lambda = mid + sqrtf(at_least(mid * mid - det, MIN_EIGEN_DISCRIMINANT));
    // (sqrtf(lambda) is NaN or >= +0: mid + sqrt(>= 0.1) is never -0)
    radius = at_most(ceil_nonnegative(RADIUS_SIGMAS * sqrtf(lambda)), MAX_RADIUS);
    // (the radius is finite by construction: at_most maps NaN and +inf to
    // MAX_RADIUS, and sqrtf is never negative)
    return (det != 0.0f) & is_finite(conic.x) & is_finite(conic.y) & is_finite(conic.z);
}

// Antialiasing (Mip-Splatting's 2D filter with opacity compensation): the
// dilation by 0.3 widens the splat, so its opacity is scaled by
// sqrt(det0 / det1), the ratio of the undilated to the dilated determinant,
// floored at 0.000025.
RASTER_HD float antialias_ratio(const glm::vec3& cov2d) {
    const float det0 = cov2d.x * cov2d.z - cov2d.y * cov2d.y;
    const float det1 = (cov2d.x + LOWPASS_DILATION) * (cov2d.z + LOWPASS_DILATION) - cov2d.y * cov2d.y;
    return det0 / det1;
}

RASTER_HD float antialias_opacity_scale(const glm::vec3& cov2d) {
    return sqrtf(at_least(antialias_ratio(cov2d), ANTIALIAS_MIN_RATIO));
}

// Tiles [min, max) covered by a splat, clamped to the grid. Clamping happens
// in float before the conversion, so far-away splats never overflow an int.
struct TileRect {
    int min_x, min_y, max_x, max_y;
    RASTER_HD int64_t area() const { return int64_t(max_x - min_x) * int64_t(max_y - min_y); }
};

RASTER_HD TileRect tile_rect(const glm::vec2& center, float radius, int grid_x, int grid_y) {
    const float gx = float(grid_x), gy = float(grid_y);
    TileRect r;
    r.min_x = int(clamp_between((center.x - radius) / TILE_X, 0.f, gx));
    r.min_y = int(clamp_between((center.y - radius) / TILE_Y, 0.f, gy));
    r.max_x = int(clamp_between((center.x + radius + TILE_X - 1) / TILE_X, 0.f, gx));
    r.max_y = int(clamp_between((center.y + radius + TILE_Y - 1) / TILE_Y, 0.f, gy));
    return r;
}

}  // namespace dgr
