// The machine's limit for the per-pixel forward loop: the shared blend step
// (dgr::splat_alpha + dgr::PixelAccumulator::blend_if, exactly what the CPU
// backend's forward_step runs) over a block of LANES pixels, for a list of
// splats that stays in L1, with every pixel running and blending (opacities
// too low for early termination). Nothing else: no binning, no culling, no
// loads from the scene, no stores of outputs. Built and run by
// benchmarks/peak_loop.py with setup.py's float flags, once per ISA.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda_rasterizer/blend.h"

constexpr int LANES = 32;  // an 8 x 4 block, as in cpu/rasterize_points_cpu.cpp
constexpr int NF = dgr::NUM_FEATURES;
constexpr int SPLATS = 512;

struct Lanes {
    alignas(64) float T[LANES];
    alignas(64) float feature[NF][LANES];
    alignas(64) int32_t running[LANES];
};

// One splat over the block's pixels, state in -> out (as forward_step).
static inline __attribute__((always_inline)) void step(const Lanes& in, Lanes& out, const float* px,
                                                       const float* py, const dgr::Splat& splat,
                                                       const dgr::SplatFeatures& features) {
    const dgr::Splat s = splat;  // local copies, as forward_step (loads through a reference do not vectorise)
    const dgr::SplatFeatures f = features;
#pragma omp simd
    for (int l = 0; l < LANES; ++l) {
        float alpha, G;
        const bool pass = dgr::splat_alpha(s.conic_opacity, s.mean.x - px[l], s.mean.y - py[l], alpha, G);
        dgr::PixelAccumulator acc;
        acc.T = in.T[l];
        for (int k = 0; k < NF; ++k) acc.feature[k] = in.feature[k][l];
        bool finished = false;
        acc.blend_if((in.running[l] != 0) & pass, alpha, f, finished);
        out.T[l] = acc.T;
        for (int k = 0; k < NF; ++k) out.feature[k][l] = acc.feature[k];
        out.running[l] = finished ? 0 : in.running[l];
    }
}

__attribute__((noinline)) float run(const std::vector<dgr::Splat>& splats,
                                    const std::vector<dgr::SplatFeatures>& feats, int repeats) {
    alignas(64) float px[LANES], py[LANES];
    for (int l = 0; l < LANES; ++l) {
        px[l] = float(l % 8);
        py[l] = float(l / 8);
    }
    float sink = 0.f;
    for (int r = 0; r < repeats; ++r) {
        Lanes A, B;
        for (int l = 0; l < LANES; ++l) {
            A.T[l] = 1.f;
            for (int k = 0; k < NF; ++k) A.feature[k][l] = 0.f;
            A.running[l] = 1;
        }
        for (int j = 0; j < SPLATS; j += 2) {
            step(A, B, px, py, splats[j], feats[j]);
            step(B, A, px, py, splats[j + 1], feats[j + 1]);
        }
        for (int l = 0; l < LANES; ++l) sink += A.feature[0][l] + A.T[l];
    }
    return sink;
}

int main(int argc, char** argv) {
    const int repeats = argc > 1 ? std::atoi(argv[1]) : 20000;
    std::vector<dgr::Splat> splats(SPLATS);
    std::vector<dgr::SplatFeatures> feats(SPLATS);
    std::srand(1);
    auto u = [] { return float(std::rand()) / float(RAND_MAX); };
    for (int j = 0; j < SPLATS; ++j) {
        // centred on the block, wide enough that every pixel blends it; an
        // opacity of ~0.01 keeps T far above the 1e-4 floor over 512 splats
        splats[j].mean = glm::vec2(3.5f + u(), 1.5f + u());
        splats[j].conic_opacity = glm::vec4(0.01f + 0.01f * u(), 0.002f * u(), 0.01f + 0.01f * u(), 0.008f + 0.004f * u());
        for (int k = 0; k < NF; ++k) feats[j].v[k] = u();
    }
    run(splats, feats, 100);  // warm-up
    double best = 1e30;
    float sink = 0.f;
    for (int trial = 0; trial < 5; ++trial) {
        const auto t0 = std::chrono::steady_clock::now();
        sink += run(splats, feats, repeats);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = s < best ? s : best;
    }
    const double evals = double(repeats) * SPLATS * LANES;
    std::printf("PEAK %.4f G evals/s/core  %.3f ns/eval  (sink %g)\n", evals / best / 1e9, best / evals * 1e9, sink);
    return 0;
}
