// View-dependent colour from spherical harmonics of degree 0..3, and its
// backward (ALGORITHM.md, preprocess step 7). Coefficients are float [M][3].
#pragma once

#include "config.h"

namespace dgr {

// Basis values Y_k(d) for k < (degree+1)^2 and their derivatives along x, y,
// z of the unit direction d; one place for the forward and the backward.
struct ShBasis {
    float y[16];
    float dx[16];
    float dy[16];
    float dz[16];
};

RASTER_HD void sh_basis(int degree, const glm::vec3& d, ShBasis& b, bool with_derivatives) {
    const float x = d.x, y = d.y, z = d.z;
    b.y[0] = SH_C0;
    if (with_derivatives) { b.dx[0] = 0.f; b.dy[0] = 0.f; b.dz[0] = 0.f; }
    if (degree < 1) return;
    b.y[1] = -SH_C1 * y; b.y[2] = SH_C1 * z; b.y[3] = -SH_C1 * x;
    if (with_derivatives) {
        b.dx[1] = 0.f;     b.dy[1] = -SH_C1; b.dz[1] = 0.f;
        b.dx[2] = 0.f;     b.dy[2] = 0.f;    b.dz[2] = SH_C1;
        b.dx[3] = -SH_C1;  b.dy[3] = 0.f;    b.dz[3] = 0.f;
    }
    if (degree < 2) return;
    const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
    b.y[4] = SH_C2_0 * xy;
    b.y[5] = SH_C2_1 * yz;
    b.y[6] = SH_C2_2 * (2.f * zz - xx - yy);
    b.y[7] = SH_C2_3 * xz;
    b.y[8] = SH_C2_4 * (xx - yy);
    if (with_derivatives) {
        b.dx[4] = SH_C2_0 * y;        b.dy[4] = SH_C2_0 * x;        b.dz[4] = 0.f;
        b.dx[5] = 0.f;                b.dy[5] = SH_C2_1 * z;        b.dz[5] = SH_C2_1 * y;
        b.dx[6] = SH_C2_2 * -2.f * x; b.dy[6] = SH_C2_2 * -2.f * y; b.dz[6] = SH_C2_2 * 4.f * z;
        b.dx[7] = SH_C2_3 * z;        b.dy[7] = 0.f;                b.dz[7] = SH_C2_3 * x;
        b.dx[8] = SH_C2_4 * 2.f * x;  b.dy[8] = SH_C2_4 * -2.f * y; b.dz[8] = 0.f;
    }
    if (degree < 3) return;
    b.y[9] = SH_C3_0 * y * (3.f * xx - yy);
    b.y[10] = SH_C3_1 * xy * z;
    b.y[11] = SH_C3_2 * y * (4.f * zz - xx - yy);
    b.y[12] = SH_C3_3 * z * (2.f * zz - 3.f * xx - 3.f * yy);
    b.y[13] = SH_C3_4 * x * (4.f * zz - xx - yy);
    b.y[14] = SH_C3_5 * z * (xx - yy);
    b.y[15] = SH_C3_6 * x * (xx - 3.f * yy);
    if (with_derivatives) {
        b.dx[9] = SH_C3_0 * 6.f * xy;                   b.dy[9] = SH_C3_0 * 3.f * (xx - yy);             b.dz[9] = 0.f;
        b.dx[10] = SH_C3_1 * yz;                        b.dy[10] = SH_C3_1 * xz;                         b.dz[10] = SH_C3_1 * xy;
        b.dx[11] = SH_C3_2 * -2.f * xy;                 b.dy[11] = SH_C3_2 * (4.f * zz - xx - 3.f * yy); b.dz[11] = SH_C3_2 * 8.f * yz;
        b.dx[12] = SH_C3_3 * -6.f * xz;                 b.dy[12] = SH_C3_3 * -6.f * yz;                  b.dz[12] = SH_C3_3 * (6.f * zz - 3.f * xx - 3.f * yy);
        b.dx[13] = SH_C3_4 * (4.f * zz - 3.f * xx - yy); b.dy[13] = SH_C3_4 * -2.f * xy;                 b.dz[13] = SH_C3_4 * 8.f * xz;
        b.dx[14] = SH_C3_5 * 2.f * xz;                  b.dy[14] = SH_C3_5 * -2.f * yz;                  b.dz[14] = SH_C3_5 * (xx - yy);
        b.dx[15] = SH_C3_6 * 3.f * (xx - yy);           b.dy[15] = SH_C3_6 * -6.f * xy;                  b.dz[15] = 0.f;
    }
}

RASTER_HD int sh_coefficient_count(int degree) { return (degree + 1) * (degree + 1); }

// Colour = sum_k Y_k(dir) sh_k + 0.5, clamped at 0 from below; `clamped`
// remembers which channels the clamp hit (their gradient is zero).
RASTER_HD glm::vec3 sh_to_color(int degree, const float* sh, const glm::vec3& mean, const glm::vec3& campos,
                                bool clamped[3], int sh_stride = 1) {
    const glm::vec3 d = glm::normalize(mean - campos);
    ShBasis b;
    sh_basis(degree, d, b, false);
    glm::vec3 c(0.f);
    for (int k = 0; k < sh_coefficient_count(degree); ++k)
        c += b.y[k] * glm::vec3(sh[(3 * k) * sh_stride], sh[(3 * k + 1) * sh_stride], sh[(3 * k + 2) * sh_stride]);
    c += 0.5f;
    clamped[0] = c.x < 0.f; clamped[1] = c.y < 0.f; clamped[2] = c.z < 0.f;
    return glm::max(c, glm::vec3(0.f));
}

// Given dL/dcolour with the clamped channels already zeroed: writes
// dL/dsh (all M coefficients, zero beyond the degree) and returns the
// gradient the colour passes to the Gaussian's mean through the direction.
// The coefficients are read sh_stride floats apart and their gradients
// written dL_dsh_stride apart (1 and 1 for a Gaussian's row of the tensors;
// the CPU's vectorised pass 2 uses buffers with an entry per lane).
RASTER_HD glm::vec3 sh_to_color_backward(int degree, int num_coeffs, const float* sh, int sh_stride,
                                         const glm::vec3& mean, const glm::vec3& campos, const glm::vec3& dL_dcolor,
                                         float* dL_dsh, int dL_dsh_stride) {
    const glm::vec3 v = mean - campos;
    const float inv_len = 1.0f / glm::length(v);
    const glm::vec3 d = v * inv_len;
    ShBasis b;
    sh_basis(degree, d, b, true);
    glm::vec3 dL_ddir(0.f);
    const int used = sh_coefficient_count(degree);
    for (int k = 0; k < num_coeffs; ++k) {
        const float w = k < used ? b.y[k] : 0.f;
        dL_dsh[(3 * k) * dL_dsh_stride] = w * dL_dcolor.x;
        dL_dsh[(3 * k + 1) * dL_dsh_stride] = w * dL_dcolor.y;
        dL_dsh[(3 * k + 2) * dL_dsh_stride] = w * dL_dcolor.z;
    }
    for (int k = 1; k < used; ++k) {
        const float g = sh[(3 * k) * sh_stride] * dL_dcolor.x + sh[(3 * k + 1) * sh_stride] * dL_dcolor.y +
                        sh[(3 * k + 2) * sh_stride] * dL_dcolor.z;
        dL_ddir += g * glm::vec3(b.dx[k], b.dy[k], b.dz[k]);
    }
    // d = v / |v|: dd/dv = (I - d d^T) / |v|
    return (dL_ddir - d * glm::dot(d, dL_ddir)) * inv_len;
}

}  // namespace dgr
