// The per-pixel blend (ALGORITHM.md "Forward, per pixel" and "Backward, per
// pixel"): evaluating a splat at a pixel, the front-to-back accumulation of
// colour and importance, and the back-to-front gradient step.
#pragma once

#include "config.h"

#include <string.h>  // memcpy (splat_exp on the host)

namespace dgr {

// A splat as the per-pixel loop reads it.
struct Splat {
    glm::vec2 mean;           // pixel coordinates
    glm::vec4 conic_opacity;  // (A, B, C, opacity): power = -0.5(A dx^2 + C dy^2) - B dx dy
};

// The values a splat blends into a pixel with weight alpha T: its colour,
// its importance and its inverse view depth. Every one of them is blended
// and differentiated the same way, so they are one array.
constexpr int FEATURE_IMPORTANCE = NUM_CHANNELS;
constexpr int FEATURE_INVDEPTH = NUM_CHANNELS + 1;
constexpr int NUM_FEATURES = NUM_CHANNELS + 2;

struct SplatFeatures {
    float v[NUM_FEATURES];
};

// The preprocess outputs the per-pixel loops read.
struct SplatSource {
    const float* means2D;        // [P, 2]
    const float* conic_opacity;  // [P, 4]
    const float* colors;         // [P, 3]
    const float* importances;    // [P]
    const float* depths;         // [P] view z (> near plane for drawn splats)
};

// What a splat blends as inverse depth.
RASTER_HD float inverse_depth(float view_z) { return 1.0f / view_z; }

RASTER_HD void load_splat(const SplatSource& src, int64_t g, Splat& s, SplatFeatures& f) {
    s.mean = glm::vec2(src.means2D[2 * g], src.means2D[2 * g + 1]);
    s.conic_opacity = glm::vec4(src.conic_opacity[4 * g], src.conic_opacity[4 * g + 1], src.conic_opacity[4 * g + 2],
                                src.conic_opacity[4 * g + 3]);
    for (int ch = 0; ch < NUM_CHANNELS; ++ch) f.v[ch] = src.colors[NUM_CHANNELS * g + ch];
    f.v[FEATURE_IMPORTANCE] = src.importances[g];
    f.v[FEATURE_INVDEPTH] = inverse_depth(src.depths[g]);
}

// exp() of the splat exponent. The GPU uses expf. The host uses the
// branch-free form below so that loops over pixels vectorise (a libm call
// does not): Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, Cephes'
// degree-6 polynomial for exp(r), and 2^n put into the exponent bits. Over
// every float in [-87.3, 0] it is within 0.98 ulp of the exact value (glibc's
// expf: 0.5); below -87.34 (where exp is subnormal) it returns 0, above 88 it
// saturates, NaN stays NaN. Pure float arithmetic, so it gives the same bits
// on any x86-64 (SSE2, AVX2, AVX-512) as long as no FMA contraction happens
// (setup.py builds with -ffp-contract=off).
RASTER_HD float splat_exp(float x) {
#if defined(__CUDA_ARCH__)
    return expf(x);
#else
    const float lo = -87.33654475f;  // ln(2^-126): 2^n stays a normal float
    float xc = x < lo ? lo : x;
    xc = xc > 88.0f ? 88.0f : xc;
    const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    const float t = xc * 1.44269504088896341f + shifter;
    const float n = t - shifter;  // round(x / ln2)
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t t_bits, shifter_bits;
    memcpy(&t_bits, &t, sizeof(float));
    memcpy(&shifter_bits, &shifter, sizeof(float));
    const int32_t scale_bits = (t_bits - shifter_bits + 127) << 23;  // 2^n
    float scale;
    memcpy(&scale, &scale_bits, sizeof(float));
    return x < lo ? 0.0f : p * scale;
#endif
}

// The exponent of a splat at offset (dx, dy) = mean - pixel.
RASTER_HD float splat_power(const glm::vec4& co, float dx, float dy) {
    return -0.5f * (co.x * dx * dx + co.z * dy * dy) - co.y * dx * dy;
}

// Evaluates a splat at offset (dx, dy) = mean - pixel. Returns false when
// the pixel skips it (power > 0 or alpha < 1/255); otherwise sets alpha and
// the unclamped Gaussian value G = exp(power). Branch-free (alpha and G are
// set either way; `&` rather than `&&` on the conditions), so that loops over
// pixels vectorise.
RASTER_HD bool splat_alpha(const glm::vec4& co, float dx, float dy, float& alpha, float& G) {
    const float power = splat_power(co, dx, dy);
    G = splat_exp(power);
    const float opacity_G = co.w * G;
    alpha = at_most(opacity_G, ALPHA_MAX);
    return !(power > 0.0f) & !(opacity_G < ALPHA_MIN);  // alpha >= 1/255 (also where opacity G is NaN)
}

// An upper bound of ln(x), at most ~3e-5 above it (-inf for x <= 0, +inf
// for +inf, NaN for NaN), branch-free so that loops vectorise: x = 2^e m,
// m in [1, 2), ln m = 2 atanh(s) with s = (m - 1) / (m + 1) < 1/3, whose
// series (all terms positive) is cut after s^9 (the rest is below 1.1e-6);
// 2e-5 added covers that and the float rounding (checked against libm over
// the floats in tests/test_cpu_math.py). Subnormal x are read as 2^-127 (1 +
// their fraction), which is larger: still an upper bound.
RASTER_HD float log_upper_bound(float x) {
    int32_t bits;
    memcpy(&bits, &x, sizeof(float));
    const float e = float(((bits >> 23) & 0xff) - 127);
    const int32_t m_bits = (bits & 0x007fffff) | 0x3f800000;
    float m;
    memcpy(&m, &m_bits, sizeof(float));
    const float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float series = 1.0f / 9.0f;
    series = series * s2 + 1.0f / 7.0f;
    series = series * s2 + 1.0f / 5.0f;
    series = series * s2 + 1.0f / 3.0f;
    series = series * s2 + 1.0f;
    const float ln = e * 0.693147182f + 2.0f * s * series + 2e-5f;  // (0.693147182f rounds ln 2 up)
    const float bounded = x > 0.0f ? ln : -INFINITY;
    return x == INFINITY ? INFINITY : (x != x ? x : bounded);
}

// What splat_may_touch_rect needs of a splat beyond its mean: its parts that
// do not depend on the rectangle, computed once per splat where it is
// tested against many rectangles (the CPU's blocks of pixels).
struct RectCullForm {
    float A, B, C;  // the conic: q = A dx^2 + 2 B dx dy + C dy^2 = -2 power
    float kx, ky;   // along the line dy = e (dx = e), q is smallest at dx = kx e (dy = ky e)
    float q_scale;  // 1 - a relative margin that bounds the rounding of q
    float q_limit;  // q_min q_scale above it: alpha < 0.999 / 255 (+inf: never culled)
};

// |rounding of q| <= ~50 eps q (A C / det): A dx^2 + C dy^2 + 2|B dx dy| <=
// 4 (A C / det) q; the margin is 128 eps (A C / det). Opacity exp(-q / 2) <
// 0.999 ALPHA_MIN exactly where q > 2 ln(opacity / (0.999 ALPHA_MIN)), bounded
// above (log_upper_bound), so that rounding errs towards keeping the splat;
// the 0.1% is far above the error of splat_exp. A form that is not clearly
// positive definite (or anything NaN) keeps the splat.
RASTER_HD RectCullForm rect_cull_form(const Splat& s) {
    RectCullForm f;
    f.A = s.conic_opacity.x;
    f.B = s.conic_opacity.y;
    f.C = s.conic_opacity.z;
    f.ky = -f.B / f.C;
    f.kx = -f.B / f.A;
    const float det = f.A * f.C - f.B * f.B;
    const float margin = 128.0f * 1.1920929e-7f * (f.A * f.C / det);
    const bool definite = (f.A > 0.0f) & (f.C > 0.0f) & (det > 0.0f) & (margin < 0.5f);
    f.q_scale = 1.0f - margin;
    const float limit = 2.0f * log_upper_bound(s.conic_opacity.w * (1.0f / (0.999f * ALPHA_MIN)));
    f.q_limit = definite ? limit : INFINITY;
    return f;
}

// q = A dx^2 + 2 B dx dy + C dy^2 and a clamp, for splat_may_touch_rect.
RASTER_HD float quadratic_form(const RectCullForm& f, float dx, float dy) {
    return f.A * dx * dx + 2.0f * f.B * dx * dy + f.C * dy * dy;
}
RASTER_HD float clamp_to(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Whether the splat with this mean and cull form may be blended anywhere in
// the rectangle [x0, x1] x [y0, y1] of pixel coordinates. False only when
// splat_alpha() is false at every pixel centre in it, whatever the rounding
// of its float arithmetic: the minimum of q over the rectangle (at the
// splat's centre if inside, else on an edge, at the edge's 1D minimiser
// clamped to the edge), lowered by the rounding margin, must exceed the
// form's q_limit. Drivers use it to drop splats from a tile or a block of
// pixels without changing any result.
RASTER_HD bool splat_may_touch_rect(const glm::vec2& mean, const RectCullForm& f, float x0, float y0, float x1,
                                    float y1) {
    const float dx_lo = mean.x - x1, dx_hi = mean.x - x0;  // dx = mean - pixel over the rectangle
    const float dy_lo = mean.y - y1, dy_hi = mean.y - y0;
    const float q0 = quadratic_form(f, dx_lo, clamp_to(f.ky * dx_lo, dy_lo, dy_hi));
    const float q1 = quadratic_form(f, dx_hi, clamp_to(f.ky * dx_hi, dy_lo, dy_hi));
    const float q2 = quadratic_form(f, clamp_to(f.kx * dy_lo, dx_lo, dx_hi), dy_lo);
    const float q3 = quadratic_form(f, clamp_to(f.kx * dy_hi, dx_lo, dx_hi), dy_hi);
    const float q01 = q0 < q1 ? q0 : q1, q23 = q2 < q3 ? q2 : q3;
    const bool centre_inside = (dx_lo <= 0.0f) & (dx_hi >= 0.0f) & (dy_lo <= 0.0f) & (dy_hi >= 0.0f);
    const float q_min = centre_inside ? 0.0f : (q01 < q23 ? q01 : q23);
    return !(q_min * f.q_scale > f.q_limit);
}
RASTER_HD bool splat_may_touch_rect(const Splat& s, float x0, float y0, float x1, float y1) {
    return splat_may_touch_rect(s.mean, rect_cull_form(s), x0, y0, x1, y1);
}

// Front-to-back accumulation of one pixel: colour, importance and inverse
// depth (feature[k] = sum_i f_i,k alpha_i T_i) and the transmittance T.
struct PixelAccumulator {
    float T = 1.0f;
    float feature[NUM_FEATURES] = {};
    float last_weight = 0.0f;  // alpha T of the splat blended last

    // Blends the splat where `active` (and does nothing elsewhere), branch-free
    // so that loops over pixels vectorise. Returns whether it blended; sets
    // `finished` when the pixel is done: this splat would drop T below the
    // floor, so it is not blended and the pixel stops.
    RASTER_HD bool blend_if(bool active, float alpha, const SplatFeatures& f, bool& finished) {
        const float test_T = T * (1.0f - alpha);
        const bool stop = active & (test_T < TRANSMITTANCE_MIN);
        const bool take = active & !stop;
        const float w = alpha * T;
        for (int k = 0; k < NUM_FEATURES; ++k) feature[k] = take ? feature[k] + f.v[k] * w : feature[k];
        last_weight = take ? w : last_weight;
        T = take ? test_T : T;
        finished = finished | stop;
        return take;
    }

    // Returns false (and blends nothing) when this splat would drop T below
    // the floor: the pixel is finished.
    RASTER_HD bool blend(float alpha, const SplatFeatures& f) {
        bool finished = false;
        return blend_if(true, alpha, f, finished);
    }

    // The pixel's colour: what was blended plus the background seen through T.
    RASTER_HD float final_color(int ch, const float* bg) const { return feature[ch] + T * bg[ch]; }
    RASTER_HD float importance() const { return feature[FEATURE_IMPORTANCE]; }
    RASTER_HD float invdepth() const { return feature[FEATURE_INVDEPTH]; }
    RASTER_HD float alpha() const { return 1.0f - T; }
};

// Per-Gaussian statistics for pruning (ALGORITHM.md): over the pixels where
// a Gaussian was blended, the sum of (pixel weight x alpha T), the count,
// the largest alpha T, and how often it was the pixel's top contributor.
struct SplatStats {
    float accum_weight;
    float max_weight;
    int32_t hit_count;
    int32_t top_count;
};

// What one pixel adds to a blended splat's statistics (its top_count is
// added once per pixel, through PixelTopContributor), and how two partial
// statistics of one splat combine (drivers that sum over pixels in another
// order, e.g. a tree over a vector of pixels, use these two).
RASTER_HD SplatStats pixel_stats(float weight, float pixel_weight) {
    return SplatStats{pixel_weight * weight, weight, 1, 0};
}
RASTER_HD void merge_stats(SplatStats& s, const SplatStats& other) {
    s.accum_weight += other.accum_weight;
    s.max_weight = other.max_weight > s.max_weight ? other.max_weight : s.max_weight;  // fmaxf: no NaN here
    s.hit_count += other.hit_count;
    s.top_count += other.top_count;
}
RASTER_HD void add_pixel_to_stats(SplatStats& s, float weight, float pixel_weight) {
    merge_stats(s, pixel_stats(weight, pixel_weight));
}

// The splat with the largest alpha T at a pixel; the front-most one on ties.
// Id is whatever the driver uses to name the splat (the CPU's vectorised
// loops want a 32-bit one); offer() is branch-free.
template <typename Id>
struct TopContributor {
    float weight = -1.0f;
    Id id = -1;
    RASTER_HD void offer(float w, Id splat_id) {
        const bool better = w > weight;
        weight = better ? w : weight;
        id = better ? splat_id : id;
    }
};
using PixelTopContributor = TopContributor<int64_t>;

// Gradient of the loss with respect to one splat's screen-space parameters,
// from one pixel (or summed over pixels). Plain floats so drivers can add
// them field by field (CPU sums, CUDA atomics).
struct SplatGrad {
    float mean[2];                // in NDC units (pixel gradient times 0.5 W, 0.5 H)
    float conic[3];               // d/dA, d/dB, d/dC of the conic (A, B, C)
    float opacity;                // of the opacity the pixels saw (after antialiasing)
    float feature[NUM_FEATURES];  // colour, importance, inverse depth
};
constexpr int SPLAT_GRAD_FLOATS = sizeof(SplatGrad) / sizeof(float);

// What a splat's SplatGrad is made of at one pixel, in a form that is linear
// in the pixel: with g = dL/d(opacity) at the pixel, the power's gradient
// is opacity * g (power = -0.5(A dx^2 + C dy^2) - B dx dy), so the mean's
// and the conic's gradients need only g times dx, dy, dx^2, dx dy and dy^2.
// Summed over a splat's pixels, these convert to its SplatGrad once
// (splat_grad), rather than every pixel multiplying by the conic: with
// `behind_up` below, the CPU's backward took 40 ms on garden instead of 63
// (benchmarks/RESULTS.md).
struct SplatGradSums {
    float opacity_dx, opacity_dy;                  // sum of g dx, g dy
    float opacity_dxx, opacity_dxy, opacity_dyy;   // sum of g dx^2, g dx dy, g dy^2
    float opacity;                                 // sum of g
    float feature[NUM_FEATURES];                   // as SplatGrad's
};
static_assert(sizeof(SplatGradSums) == sizeof(SplatGrad), "drivers sum either as SPLAT_GRAD_FLOATS floats");

// The SplatGrad of a splat from the SplatGradSums of its pixels.
RASTER_HD SplatGrad splat_grad(const SplatGradSums& m, const glm::vec4& conic_opacity, float half_width,
                               float half_height) {
    const float A = conic_opacity.x, B = conic_opacity.y, C = conic_opacity.z, opacity = conic_opacity.w;
    SplatGrad g;
    // d power / d mean = -(A dx + B dy, B dx + C dy) (dx = mean - pixel)
    g.mean[0] = -opacity * (A * m.opacity_dx + B * m.opacity_dy) * half_width;
    g.mean[1] = -opacity * (B * m.opacity_dx + C * m.opacity_dy) * half_height;
    g.conic[0] = -0.5f * opacity * m.opacity_dxx;
    g.conic[1] = -opacity * m.opacity_dxy;
    g.conic[2] = -0.5f * opacity * m.opacity_dyy;
    g.opacity = m.opacity;
    for (int k = 0; k < NUM_FEATURES; ++k) g.feature[k] = m.feature[k];
    return g;
}

// Upstream gradient at one pixel: colour, importance map, inverse depth
// (indexed like the features) and the alpha map.
struct PixelUpstream {
    float feature[NUM_FEATURES];
    float alpha;
};

// Back-to-front state of one pixel during the backward pass.
struct PixelBackward {
    float T;        // transmittance in front of the current splat
    float T_final;
    PixelUpstream up;
    float final_T_term;  // dL/dT_final = bg . dL/dcolor - dL/dalpha_map
    // up . (the features accumulated behind the next splat, as if T = 1
    // there): dL/dalpha needs the features behind only in this product
    float behind_up;

    RASTER_HD void init(float final_T, const PixelUpstream& upstream, const float* bg) {
        T = final_T;
        T_final = final_T;
        up = upstream;
        final_T_term = -upstream.alpha;
        for (int ch = 0; ch < NUM_CHANNELS; ++ch) final_T_term += bg[ch] * upstream.feature[ch];
        behind_up = 0.f;
    }

    // One splat that the forward pass blended, visited back to front: restores
    // T in front of it and returns its gradient contribution (splat_grad()
    // makes it a SplatGrad). No branches.
    RASTER_HD SplatGradSums step(const Splat& s, float dx, float dy, float alpha, float G, const SplatFeatures& f) {
        SplatGradSums g;
        T = T / (1.0f - alpha);
        const float w = alpha * T;
        float f_up = 0.f;  // up . f
        for (int k = 0; k < NUM_FEATURES; ++k) {
            f_up += f.v[k] * up.feature[k];
            g.feature[k] = w * up.feature[k];
        }
        float dL_dalpha = (f_up - behind_up) * T;
        // what the next splat (in front of this one) has behind it
        behind_up = alpha * f_up + (1.f - alpha) * behind_up;
        // T_final = prod(1 - alpha_j) feeds the background and the alpha map
        dL_dalpha += -T_final / (1.f - alpha) * final_T_term;

        // alpha = min(0.99, opacity G): exactly zero gradient where clamped
        const float opacity = s.conic_opacity.w;
        const bool alpha_clamped = opacity * G > ALPHA_MAX;
        g.opacity = alpha_clamped ? 0.f : G * dL_dalpha;
        g.opacity_dx = g.opacity * dx;
        g.opacity_dy = g.opacity * dy;
        g.opacity_dxx = g.opacity_dx * dx;
        g.opacity_dxy = g.opacity_dx * dy;
        g.opacity_dyy = g.opacity_dy * dy;
        return g;
    }
};

}  // namespace dgr
