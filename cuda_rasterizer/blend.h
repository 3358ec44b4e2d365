// The per-pixel blend (ALGORITHM.md "Forward, per pixel" and "Backward, per
// pixel"): evaluating a splat at a pixel, the front-to-back accumulation of
// colour and importance, and the back-to-front gradient step.
#pragma once

#include "config.h"

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

RASTER_HD void load_splat(const SplatSource& src, int64_t g, Splat& s, SplatFeatures& f) {
    s.mean = glm::vec2(src.means2D[2 * g], src.means2D[2 * g + 1]);
    s.conic_opacity = glm::vec4(src.conic_opacity[4 * g], src.conic_opacity[4 * g + 1], src.conic_opacity[4 * g + 2],
                                src.conic_opacity[4 * g + 3]);
    for (int ch = 0; ch < NUM_CHANNELS; ++ch) f.v[ch] = src.colors[NUM_CHANNELS * g + ch];
    f.v[FEATURE_IMPORTANCE] = src.importances[g];
    f.v[FEATURE_INVDEPTH] = 1.0f / src.depths[g];
}

// Evaluates a splat at offset (dx, dy) = mean - pixel. Returns false when
// the pixel skips it (power > 0 or alpha < 1/255); otherwise sets alpha and
// the unclamped Gaussian value G = exp(power).
RASTER_HD bool splat_alpha(const glm::vec4& co, float dx, float dy, float& alpha, float& G) {
    const float power = -0.5f * (co.x * dx * dx + co.z * dy * dy) - co.y * dx * dy;
    if (power > 0.0f) return false;
    G = expf(power);
    alpha = fminf(ALPHA_MAX, co.w * G);
    return alpha >= ALPHA_MIN;
}

// Front-to-back accumulation of one pixel: colour, importance and inverse
// depth (feature[k] = sum_i f_i,k alpha_i T_i) and the transmittance T.
struct PixelAccumulator {
    float T = 1.0f;
    float feature[NUM_FEATURES] = {};
    float last_weight = 0.0f;  // alpha T of the splat blended last

    // Returns false (and blends nothing) when this splat would drop T below
    // the floor: the pixel is finished.
    RASTER_HD bool blend(float alpha, const SplatFeatures& f) {
        const float test_T = T * (1.0f - alpha);
        if (test_T < TRANSMITTANCE_MIN) return false;
        const float w = alpha * T;
        for (int k = 0; k < NUM_FEATURES; ++k) feature[k] += f.v[k] * w;
        last_weight = w;
        T = test_T;
        return true;
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
// added once per pixel, through PixelTopContributor).
RASTER_HD void add_pixel_to_stats(SplatStats& s, float weight, float pixel_weight) {
    s.accum_weight += pixel_weight * weight;
    s.max_weight = fmaxf(s.max_weight, weight);
    s.hit_count += 1;
}

// The splat with the largest alpha T at a pixel; the front-most one on ties.
struct PixelTopContributor {
    float weight = -1.0f;
    int64_t id = -1;  // whatever the driver uses to name the splat
    RASTER_HD void offer(float w, int64_t splat_id) {
        if (w > weight) {
            weight = w;
            id = splat_id;
        }
    }
};

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
    float final_T_term;                 // dL/dT_final = bg . dL/dcolor - dL/dalpha_map
    float behind[NUM_FEATURES];         // features accumulated behind, as if T = 1 there
    float last_alpha;
    float last[NUM_FEATURES];

    RASTER_HD void init(float final_T, const PixelUpstream& upstream, const float* bg) {
        T = final_T;
        T_final = final_T;
        up = upstream;
        final_T_term = -upstream.alpha;
        for (int ch = 0; ch < NUM_CHANNELS; ++ch) final_T_term += bg[ch] * upstream.feature[ch];
        for (int k = 0; k < NUM_FEATURES; ++k) {
            behind[k] = 0.f;
            last[k] = 0.f;
        }
        last_alpha = 0.f;
    }

    // One splat that the forward pass blended, visited back to front: restores
    // T in front of it and returns its gradient contribution.
    RASTER_HD SplatGrad step(const Splat& s, float dx, float dy, float alpha, float G, const SplatFeatures& f,
                             float half_width, float half_height) {
        SplatGrad g;
        T = T / (1.0f - alpha);
        const float w = alpha * T;
        float dL_dalpha = 0.f;
        for (int k = 0; k < NUM_FEATURES; ++k) {
            behind[k] = last_alpha * last[k] + (1.f - last_alpha) * behind[k];
            last[k] = f.v[k];
            dL_dalpha += (f.v[k] - behind[k]) * up.feature[k];
            g.feature[k] = w * up.feature[k];
        }
        dL_dalpha *= T;
        last_alpha = alpha;
        // T_final = prod(1 - alpha_j) feeds the background and the alpha map
        dL_dalpha += -T_final / (1.f - alpha) * final_T_term;

        // alpha = min(0.99, opacity G): exactly zero gradient where clamped
        const float opacity = s.conic_opacity.w;
        const bool alpha_clamped = opacity * G > ALPHA_MAX;
        const float dL_dG = alpha_clamped ? 0.f : opacity * dL_dalpha;
        g.opacity = alpha_clamped ? 0.f : G * dL_dalpha;
        const float dL_dpower = dL_dG * G;
        const glm::vec4& co = s.conic_opacity;
        g.mean[0] = dL_dpower * (-co.x * dx - co.y * dy) * half_width;
        g.mean[1] = dL_dpower * (-co.z * dy - co.y * dx) * half_height;
        g.conic[0] = dL_dpower * -0.5f * dx * dx;
        g.conic[1] = dL_dpower * -dx * dy;
        g.conic[2] = dL_dpower * -0.5f * dy * dy;
        return g;
    }
};

}  // namespace dgr
