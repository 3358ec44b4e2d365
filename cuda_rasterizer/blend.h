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

// Front-to-back accumulation of one pixel.
struct PixelAccumulator {
    float T = 1.0f;
    float color[NUM_CHANNELS] = {0.f, 0.f, 0.f};
    float importance = 0.0f;

    // Returns false (and blends nothing) when this splat would drop T below
    // the floor: the pixel is finished.
    RASTER_HD bool blend(float alpha, const float* splat_color, float splat_importance) {
        const float test_T = T * (1.0f - alpha);
        if (test_T < TRANSMITTANCE_MIN) return false;
        const float w = alpha * T;
        for (int ch = 0; ch < NUM_CHANNELS; ++ch) color[ch] += splat_color[ch] * w;
        importance += splat_importance * w;
        T = test_T;
        return true;
    }

    // The pixel's colour: what was blended plus the background seen through T.
    RASTER_HD float final_color(int ch, const float* bg) const { return color[ch] + T * bg[ch]; }
};

// Gradient of the loss with respect to one splat's screen-space parameters,
// from one pixel (or summed over pixels). Plain floats so drivers can add
// them field by field (CPU sums, CUDA atomics).
struct SplatGrad {
    float mean[2];   // in NDC units (pixel gradient times 0.5 W, 0.5 H)
    float conic[3];  // d/dA, d/dB, d/dC of the conic (A, B, C)
    float opacity;
    float color[NUM_CHANNELS];
    float importance;
};
constexpr int SPLAT_GRAD_FLOATS = sizeof(SplatGrad) / sizeof(float);

// Back-to-front state of one pixel during the backward pass.
struct PixelBackward {
    float T;                           // transmittance in front of the current splat
    float T_final;
    float dL_dcolor[NUM_CHANNELS];     // upstream gradient of the pixel
    float dL_dimportance;
    float bg_dot_dL;                   // bg . dL/dcolor: the background term
    float color_behind[NUM_CHANNELS];  // colour accumulated behind, as if T = 1 there
    float importance_behind;
    float last_alpha;
    float last_color[NUM_CHANNELS];
    float last_importance;

    RASTER_HD void init(float final_T, const float* dL_dpix, float dL_dimp, const float* bg) {
        T = final_T;
        T_final = final_T;
        dL_dimportance = dL_dimp;
        bg_dot_dL = 0.f;
        for (int ch = 0; ch < NUM_CHANNELS; ++ch) {
            dL_dcolor[ch] = dL_dpix[ch];
            bg_dot_dL += bg[ch] * dL_dpix[ch];
            color_behind[ch] = 0.f;
            last_color[ch] = 0.f;
        }
        importance_behind = 0.f;
        last_alpha = 0.f;
        last_importance = 0.f;
    }

    // One splat that the forward pass blended, visited back to front: restores
    // T in front of it and returns its gradient contribution.
    RASTER_HD SplatGrad step(const Splat& s, float dx, float dy, float alpha, float G,
                             const float* splat_color, float splat_importance, float half_width,
                             float half_height) {
        SplatGrad g;
        T = T / (1.0f - alpha);
        const float w = alpha * T;
        float dL_dalpha = 0.f;
        for (int ch = 0; ch < NUM_CHANNELS; ++ch) {
            color_behind[ch] = last_alpha * last_color[ch] + (1.f - last_alpha) * color_behind[ch];
            last_color[ch] = splat_color[ch];
            dL_dalpha += (splat_color[ch] - color_behind[ch]) * dL_dcolor[ch];
            g.color[ch] = w * dL_dcolor[ch];
        }
        importance_behind = last_alpha * last_importance + (1.f - last_alpha) * importance_behind;
        last_importance = splat_importance;
        dL_dalpha += (splat_importance - importance_behind) * dL_dimportance;
        g.importance = w * dL_dimportance;
        dL_dalpha *= T;
        last_alpha = alpha;
        // the background shows through T_final = prod(1 - alpha_j)
        dL_dalpha += -T_final / (1.f - alpha) * bg_dot_dL;

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
