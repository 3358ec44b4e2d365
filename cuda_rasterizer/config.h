// Constants of the algorithm (ALGORITHM.md) and the host/device qualifier.
// Every formula in this folder is written once, in headers marked RASTER_HD,
// and compiled both by nvcc (CUDA kernels) and by the host C++ compiler (CPU
// backend), so both backends run the same math.
#pragma once

#include <cstdint>
#include <math.h>

#if defined(__CUDACC__)
#define RASTER_HD __host__ __device__ __forceinline__
#else
#define RASTER_HD inline
#endif

#include <glm/glm.hpp>

namespace dgr {

constexpr int NUM_CHANNELS = 3;    // colour channels
constexpr int TILE_X = 16;         // tile width in pixels
constexpr int TILE_Y = 16;         // tile height in pixels
constexpr int TILE_PIXELS = TILE_X * TILE_Y;

constexpr float NEAR_PLANE = 0.2f;           // view z at or below this: culled
constexpr float PROJ_W_EPS = 1e-7f;          // p_w = 1 / (w + eps)
constexpr float TANFOV_CLAMP = 1.3f;         // EWA Jacobian evaluated within 1.3 tanfov
constexpr float LOWPASS_DILATION = 0.3f;     // added to the 2D covariance diagonal
constexpr float MIN_EIGEN_DISCRIMINANT = 0.1f;
constexpr float ANTIALIAS_MIN_RATIO = 0.000025f;  // floor of det0 / det1 in the opacity compensation
constexpr float RADIUS_SIGMAS = 3.0f;
constexpr float MAX_RADIUS = 1e9f;           // keeps the int32 radius and tile maths defined
constexpr float ALPHA_MAX = 0.99f;
constexpr float ALPHA_MIN = 1.0f / 255.0f;
constexpr float TRANSMITTANCE_MIN = 0.0001f; // a pixel stops before T falls below this

// Spherical-harmonics constants (real SH, degrees 0..3).
constexpr float SH_C0 = 0.28209479177387814f;
constexpr float SH_C1 = 0.4886025119029199f;
constexpr float SH_C2_0 = 1.0925484305920792f;
constexpr float SH_C2_1 = -1.0925484305920792f;
constexpr float SH_C2_2 = 0.31539156525252005f;
constexpr float SH_C2_3 = -1.0925484305920792f;
constexpr float SH_C2_4 = 0.5462742152960396f;
constexpr float SH_C3_0 = -0.5900435899266435f;
constexpr float SH_C3_1 = 2.890611442640554f;
constexpr float SH_C3_2 = -0.4570457994644658f;
constexpr float SH_C3_3 = 0.3731763325901154f;
constexpr float SH_C3_4 = -0.4570457994644658f;
constexpr float SH_C3_5 = 1.445305721320277f;
constexpr float SH_C3_6 = -0.5900435899266435f;
constexpr int MAX_SH_DEGREE = 3;

// fmaxf(lo, v) and fminf(v, hi) for a constant bound that is not NaN, NaN v
// included (it gives the bound, as fminf/fmaxf do), written with one
// comparison: on the host GCC calls libm's fminf/fmaxf out of line, which
// cost the preprocess 14 calls per Gaussian. (Also alpha = min(0.99, opacity G),
// which must give 0.99 for a NaN product, as fminf does.)
RASTER_HD float at_least(float v, float lo) { return v > lo ? v : lo; }
RASTER_HD float at_most(float v, float hi) { return v < hi ? v : hi; }
// fminf(hi, fmaxf(lo, v)) for lo <= hi
RASTER_HD float clamp_between(float v, float lo, float hi) { return at_most(at_least(v, lo), hi); }

}  // namespace dgr
