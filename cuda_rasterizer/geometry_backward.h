// Backward of the per-Gaussian projection math in geometry.h, derived by
// hand and checked against the autograd oracle in the tests.
#pragma once

#include "geometry.h"

namespace dgr {

// conic = (c, -b, a) / det of the dilated covariance (a, b, c). The dilation
// is a constant, so this is also the gradient of the undilated entries.
// With Q = [[A, B], [B, C]] the conic (the inverse of [[a, b], [b, c]]),
// dQ = -Q dSigma Q. B is one stored entry (the pixels use -B dx dy, and gB
// is its gradient) and b one variable (dSigma = [[0, 1], [1, 0]] db), so:
//   dL/da = -(A^2 gA + A B gB + B^2 gC)
//   dL/db = -(2 A B gA + (A C + B^2) gB + 2 B C gC)
//   dL/dc = -(B^2 gA + B C gB + C^2 gC)
// Written with the conic entries, not as (...) / det^2: det^2 overflows
// float32 for det > 1.8e19 (splats of radius > ~2e5 px), which flushed
// these gradients to zero.
RASTER_HD glm::vec3 conic_backward(const glm::vec3& cov2d, const glm::vec3& dL_dconic) {
    const float a = cov2d.x + LOWPASS_DILATION, b = cov2d.y, c = cov2d.z + LOWPASS_DILATION;
    const float inv_det = 1.0f / (a * c - b * b);
    const float A = c * inv_det, B = -b * inv_det, C = a * inv_det;  // as conic_and_radius computes them
    const float gA = dL_dconic.x, gB = dL_dconic.y, gC = dL_dconic.z;
    return -glm::vec3(A * A * gA + A * B * gB + B * B * gC,
                      2.f * A * B * gA + (A * C + B * B) * gB + 2.f * B * C * gC,
                      B * B * gA + B * C * gB + C * C * gC);
}

// d(det0 / det1) / d(a, b, c) of the undilated covariance, exact: det0 is
// differentiated at the undilated entries, det1 at the dilated ones. With
// d = 0.3 and det1 = det0 + d (a + c + d), the quotient rule's numerators
// simplify to
//   c det1 - det0 (c + d) = d (c (c + d) + b^2)
//   -2 b (det1 - det0)    = -2 d b (a + c + d)
//   a det1 - det0 (a + d) = d (a (a + d) + b^2)
// which are evaluated as such: the left-hand sides cancel catastrophically
// in float32 once a, c >> d (all digits gone for a splat of radius ~1e4 px),
// and dividing by det1^2 overflows for det1 > 1.8e19.
RASTER_HD glm::vec3 antialias_ratio_backward(const glm::vec3& cov2d) {
    constexpr float d = LOWPASS_DILATION;
    const float a = cov2d.x, b = cov2d.y, c = cov2d.z;
    const float inv_det1 = 1.0f / ((a + d) * (c + d) - b * b);
    const float a_ = a * inv_det1, b_ = b * inv_det1, c_ = c * inv_det1;  // scaled first: no overflow
    return glm::vec3(d * (c_ * (c + d) + b_ * b) * inv_det1,
                     -2.f * d * b_ * (a + c + d) * inv_det1,
                     d * (a_ * (a + d) + b_ * b) * inv_det1);
}

// Gradient of the opacity scale sqrt(max(floor, ratio)) to (a, b, c); zero
// where the floor is active.
RASTER_HD glm::vec3 antialias_opacity_scale_backward(const glm::vec3& cov2d, float dL_dscale) {
    const float ratio = antialias_ratio(cov2d);
    if (!(ratio > ANTIALIAS_MIN_RATIO)) return glm::vec3(0.f);
    return dL_dscale * 0.5f / sqrtf(ratio) * antialias_ratio_backward(cov2d);
}

// cov2D = [t0; t1] Sigma [t0; t1]^T with t0, t1 the rows of J W: gradient to
// the six stored entries of Sigma and to the view-space mean (through J,
// including the tanfov clamp: a clamped coordinate follows t.z instead).
RASTER_HD void covariance_2d_backward(const EwaProjection& e, const Camera& cam, const float* cov3D,
                                      const glm::vec3& dL_dcov2d, float dL_dcov3D[6], glm::vec3& dL_dt) {
    const float ga = dL_dcov2d.x, gb = dL_dcov2d.y, gc = dL_dcov2d.z;
    const glm::vec3& t0 = e.t0;
    const glm::vec3& t1 = e.t1;
    // (written out, not a loop over a table of rows and columns: GCC kept
    // that loop, and a loop inside stops the CPU's vectorisation across Gaussians)
    auto sym = [&](int i, int j) {
        return ga * t0[i] * t0[j] + 0.5f * gb * (t0[i] * t1[j] + t0[j] * t1[i]) + gc * t1[i] * t1[j];
    };
    // an off-diagonal entry appears twice in Sigma
    dL_dcov3D[0] = sym(0, 0);
    dL_dcov3D[1] = 2.f * sym(0, 1);
    dL_dcov3D[2] = 2.f * sym(0, 2);
    dL_dcov3D[3] = sym(1, 1);
    dL_dcov3D[4] = 2.f * sym(1, 2);
    dL_dcov3D[5] = sym(2, 2);
    const glm::vec3 s0 = sym3_mul(cov3D, t0);
    const glm::vec3 s1 = sym3_mul(cov3D, t1);
    const glm::vec3 dL_dt0 = 2.f * ga * s0 + gb * s1;
    const glm::vec3 dL_dt1 = gb * s0 + 2.f * gc * s1;
    const glm::vec3 w0 = view_rotation_row(cam.viewmatrix, 0);
    const glm::vec3 w1 = view_rotation_row(cam.viewmatrix, 1);
    const glm::vec3 w2 = view_rotation_row(cam.viewmatrix, 2);
    const float dL_dj00 = glm::dot(dL_dt0, w0), dL_dj02 = glm::dot(dL_dt0, w2);
    const float dL_dj11 = glm::dot(dL_dt1, w1), dL_dj12 = glm::dot(dL_dt1, w2);
    const float inv_z = 1.0f / e.t.z, inv_z2 = inv_z * inv_z, inv_z3 = inv_z2 * inv_z;
    const float dL_dtx_c = -cam.focal_x * inv_z2 * dL_dj02;
    const float dL_dty_c = -cam.focal_y * inv_z2 * dL_dj12;
    float dL_dtz = -cam.focal_x * inv_z2 * dL_dj00 - cam.focal_y * inv_z2 * dL_dj11 +
                   2.f * cam.focal_x * e.t.x * inv_z3 * dL_dj02 + 2.f * cam.focal_y * e.t.y * inv_z3 * dL_dj12;
    // t_c = clamp(t / t.z) t.z: unclamped it is t itself, clamped it is +-lim t.z
    if (e.clamped_x) dL_dtz += dL_dtx_c * e.t.x * inv_z;
    if (e.clamped_y) dL_dtz += dL_dty_c * e.t.y * inv_z;
    dL_dt = glm::vec3(e.clamped_x ? 0.f : dL_dtx_c, e.clamped_y ? 0.f : dL_dty_c, dL_dtz);
}

// Sigma = R diag(s^2) R^T, s = scale_modifier * scale: gradient to scale and
// to the (unnormalised) quaternion.
RASTER_HD void covariance_3d_backward(const glm::vec3& scale, float scale_modifier, const glm::vec4& rot,
                                      const float dL_dcov3D[6], glm::vec3& dL_dscale, glm::vec4& dL_drot) {
    float R[3][3];
    quaternion_to_rotation(rot, R);
    const float s[3] = {scale_modifier * scale.x, scale_modifier * scale.y, scale_modifier * scale.z};
    float G[3][3];  // dL/dSigma as a symmetric matrix
    const int rows[6] = {0, 0, 0, 1, 1, 2}, cols[6] = {0, 1, 2, 1, 2, 2};
    for (int k = 0; k < 6; ++k) {
        const int i = rows[k], j = cols[k];
        const float v = i == j ? dL_dcov3D[k] : 0.5f * dL_dcov3D[k];
        G[i][j] = v;
        G[j][i] = v;
    }
    float GR[3][3];
    for (int i = 0; i < 3; ++i)
        for (int k = 0; k < 3; ++k) GR[i][k] = G[i][0] * R[0][k] + G[i][1] * R[1][k] + G[i][2] * R[2][k];
    float gR[3][3];  // dL/dR = 2 G R diag(s^2)
    float dL_ds[3];
    for (int k = 0; k < 3; ++k) {
        dL_ds[k] = 2.f * s[k] * (R[0][k] * GR[0][k] + R[1][k] * GR[1][k] + R[2][k] * GR[2][k]);
        for (int i = 0; i < 3; ++i) gR[i][k] = 2.f * GR[i][k] * s[k] * s[k];
    }
    dL_dscale = scale_modifier * glm::vec3(dL_ds[0], dL_ds[1], dL_ds[2]);
    const float r = rot.x, x = rot.y, y = rot.z, z = rot.w;
    dL_drot = 2.f * glm::vec4(
        -z * gR[0][1] + y * gR[0][2] + z * gR[1][0] - x * gR[1][2] - y * gR[2][0] + x * gR[2][1],
        y * gR[0][1] + z * gR[0][2] + y * gR[1][0] - 2.f * x * gR[1][1] - r * gR[1][2] + z * gR[2][0] +
            r * gR[2][1] - 2.f * x * gR[2][2],
        -2.f * y * gR[0][0] + x * gR[0][1] + r * gR[0][2] + x * gR[1][0] + z * gR[1][2] - r * gR[2][0] +
            z * gR[2][1] - 2.f * y * gR[2][2],
        -2.f * z * gR[0][0] - r * gR[0][1] + x * gR[0][2] + r * gR[1][0] - 2.f * z * gR[1][1] + y * gR[1][2] +
            x * gR[2][0] + y * gR[2][1]);
}

// ndc = p_hom.xy / (p_hom.w + eps): gradient of the mean from dL/dndc.
RASTER_HD glm::vec3 projection_backward(const glm::vec3& mean, const float* proj, float dL_dndc_x, float dL_dndc_y) {
    const glm::vec4 p = transform_point_4x4(mean, proj);
    const float p_w = 1.0f / (p.w + PROJ_W_EPS);
    glm::vec3 g;
    for (int k = 0; k < 3; ++k) {
        const float dw = proj[4 * k + 3] * p_w * p_w;
        g[k] = dL_dndc_x * (proj[4 * k] * p_w - p.x * dw) + dL_dndc_y * (proj[4 * k + 1] * p_w - p.y * dw);
    }
    return g;
}

}  // namespace dgr
