"""The host forms of two shared formulas the CPU backend's speed rests on
(cuda_rasterizer/blend.h), checked exhaustively in C++:

* splat_exp, the branch-free exp the vectorised per-pixel loops use instead
  of libm's expf: within 1 ulp of the exact value (computed in double) on a
  dense sample of the floats in [-87.3, 0] (every 16th bit pattern, about 70
  million values, and all of [-1, 0] down to 1e-6), exact at 0, 0 below the
  subnormal range, NaN for NaN.
* log_upper_bound, the logarithm the culling test compares with: never
  below ln(x) (computed in double) and at most 4e-5 above it, on every 16th
  positive float and on all of [1, 256] (the opacities that matter, over
  0.999 / 255), subnormals included (bound only); -inf for 0 and negatives,
  +inf for +inf, NaN for NaN.
* splat_may_touch_rect, the per-tile / per-block culling test: whenever it
  says a splat cannot be blended in a rectangle, splat_alpha must be false at
  every pixel centre of that rectangle, for random splats of every shape
  (round, thin, nearly degenerate, huge), opacities around the 1/255
  threshold, and rectangles near and far, so culling can never change an
  image. The program also reports how often it culls, so that the check is
  not vacuous.

Compiled with the float flags setup.py builds the extension with (read from
its cxx_flags, as tests/test_sanitizers.py does), so the arithmetic is the
extension's. Skipped where no C++ compiler is found.
"""
import ast
import os
import shutil
import subprocess

import pytest

from conftest import REPO

PROGRAM = r"""
#include "cuda_rasterizer/blend.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

static float from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
static uint32_t to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// |got - exact| in units of the float spacing at the exact value
static double ulp_error(float got, double exact) {
    const float nearest = float(exact);
    const double ulp = double(std::nextafter(std::fabs(nearest), INFINITY)) - std::fabs(nearest);
    return std::fabs(double(got) - exact) / ulp;
}

static int check_exp() {
    double worst = 0.0;
    float worst_x = 0.f;
    long n = 0;
    auto check = [&](float x) {
        const double e = ulp_error(dgr::splat_exp(x), std::exp(double(x)));
        if (e > worst) { worst = e; worst_x = x; }
        ++n;
    };
    const uint32_t lo = to_bits(-87.3f);  // negative floats: larger bit pattern, larger magnitude
    for (uint32_t u = 0x80000000u; u <= lo; u += 16) check(from_bits(u));
    for (uint32_t u = to_bits(-1e-6f); u <= to_bits(-1.0f); ++u) check(from_bits(u));
    std::printf("exp: %ld values, max error %.3f ulp at %.9g\n", n, worst, worst_x);
    int bad = 0;
    if (!(worst <= 1.0)) { std::printf("FAIL exp error above 1 ulp\n"); ++bad; }
    if (dgr::splat_exp(0.0f) != 1.0f || dgr::splat_exp(-0.0f) != 1.0f) { std::printf("FAIL exp(0) != 1\n"); ++bad; }
    if (dgr::splat_exp(-100.0f) != 0.0f || dgr::splat_exp(-INFINITY) != 0.0f) { std::printf("FAIL exp(-100)\n"); ++bad; }
    if (!std::isnan(dgr::splat_exp(NAN))) { std::printf("FAIL exp(NaN)\n"); ++bad; }
    return bad;
}

static int check_log_bound() {
    double worst = 0.0;  // largest excess over ln(x) (normal floats)
    float worst_x = 0.f;
    long n = 0, below = 0;
    auto check = [&](float x) {
        const double exact = std::log(double(x)), got = dgr::log_upper_bound(x);
        if (got < exact && below++ < 5) std::printf("FAIL log_upper_bound(%.9g) = %.9g < ln = %.9g\n", x, got, exact);
        if (std::isnormal(x) && got - exact > worst) { worst = got - exact; worst_x = x; }
        ++n;
    };
    for (uint32_t u = 1; u < to_bits(INFINITY); u += 16) check(from_bits(u));
    for (uint32_t u = to_bits(1.0f); u <= to_bits(256.0f); ++u) check(from_bits(u));
    std::printf("log bound: %ld values, at most %.3g above ln (at %.9g)\n", n, worst, worst_x);
    int bad = below > 0;
    if (!(worst <= 4e-5)) { std::printf("FAIL log bound more than 4e-5 above ln\n"); ++bad; }
    if (dgr::log_upper_bound(0.0f) != -INFINITY || dgr::log_upper_bound(-1.0f) != -INFINITY ||
        dgr::log_upper_bound(INFINITY) != INFINITY || !std::isnan(dgr::log_upper_bound(NAN))) {
        std::printf("FAIL log bound at 0, -1, inf or NaN\n");
        ++bad;
    }
    return bad;
}

static int check_culling() {
    std::mt19937 rng(12345);
    std::uniform_real_distribution<float> u01(0.f, 1.f);
    auto logu = [&](float lo, float hi) { return lo * std::pow(hi / lo, u01(rng)); };
    long cases = 0, culled = 0, culled_near = 0, pixels = 0;
    int bad = 0;
    for (int it = 0; it < 1000000 && bad < 5; ++it) {
        // a 2D covariance of any shape: axis lengths over 6 decades, any angle
        // (the dilated covariance of the preprocess has eigenvalues >= 0.3;
        // thinner ones test the rounding margin)
        const float l1 = logu(0.01f, 1e4f), l2 = l1 * logu(1e-4f, 1.f);
        const float th = 6.2831853f * u01(rng), c = std::cos(th), s = std::sin(th);
        const double a = c * c * l1 + s * s * l2, b = c * s * (l1 - l2), d = s * s * l1 + c * c * l2;
        const double det = a * d - b * b;
        dgr::Splat sp;
        sp.conic_opacity = glm::vec4(float(d / det), float(-b / det), float(a / det), 0.f);
        // opacity around the threshold (alpha >= 1/255 only near the centre), or anything up to 1
        const int kind = it % 4;
        sp.conic_opacity.w = kind == 0 ? u01(rng) : kind == 3 ? logu(1e-3f, 1e3f) : dgr::ALPHA_MIN * logu(0.5f, 4.f);
        // a rectangle of 1 to 16 pixels a side: every other case with a corner
        // on the alpha = 1/255 contour (within -20%..+30% of its q), the
        // others anywhere up to ~4 sigma plus 40 px from the centre
        const int w = 1 + int(16 * u01(rng)), h = 1 + int(16 * u01(rng));
        sp.mean = glm::vec2(u01(rng), u01(rng));  // sub-pixel offset of the centre
        int x0, y0;
        const double q_cut = 2.0 * std::log(255.0 * sp.conic_opacity.w);
        if (it % 2 == 0 && q_cut > 0.0) {
            const double phi = 6.283185307 * u01(rng), ux = std::cos(phi), uy = std::sin(phi);
            const double q_unit = d / det * ux * ux - 2.0 * b / det * ux * uy + a / det * uy * uy;
            const double r = std::sqrt(q_cut * (0.8 + 0.5 * u01(rng)) / q_unit);
            const double cx = sp.mean.x - r * ux, cy = sp.mean.y - r * uy;  // pixel at offset r u from the centre
            x0 = int(std::lround(cx)) - (ux < 0 ? w - 1 : 0);  // the rectangle extends away from the centre
            y0 = int(std::lround(cy)) - (uy < 0 ? h - 1 : 0);
        } else {
            const float reach = 4.f * std::sqrt(l1) + 40.f;
            x0 = int(std::floor((u01(rng) * 2.f - 1.f) * reach));
            y0 = int(std::floor((u01(rng) * 2.f - 1.f) * reach));
        }
        ++cases;
        if (dgr::splat_may_touch_rect(sp, float(x0), float(y0), float(x0 + w - 1), float(y0 + h - 1))) continue;
        ++culled;
        bool near = false;
        for (int y = y0; y < y0 + h; ++y)
            for (int x = x0; x < x0 + w; ++x) {
                float alpha, G;
                ++pixels;
                const float dx = sp.mean.x - float(x), dy = sp.mean.y - float(y);
                if (dgr::splat_alpha(sp.conic_opacity, dx, dy, alpha, G)) {
                    if (bad++ < 5)
                        std::printf("FAIL culled but blended: conic (%.9g, %.9g, %.9g) opacity %.9g mean (%.9g, %.9g) "
                                    "rect [%d, %d] x [%d, %d], pixel (%d, %d), alpha %.9g\n",
                                    sp.conic_opacity.x, sp.conic_opacity.y, sp.conic_opacity.z, sp.conic_opacity.w,
                                    sp.mean.x, sp.mean.y, x0, x0 + w - 1, y0, y0 + h - 1, x, y, alpha);
                }
                if (sp.conic_opacity.w * G >= 0.5f * dgr::ALPHA_MIN) near = true;
            }
        if (near) ++culled_near;
    }
    std::printf("culling: %ld cases, %ld culled (%ld within a factor 2 of the threshold), %ld pixels checked\n",
                cases, culled, culled_near, pixels);
    if (culled < cases / 10 || culled_near < 10000) { std::printf("FAIL the check is too weak\n"); ++bad; }
    return bad;
}

int main() {
    const int bad = check_exp() + check_log_bound() + check_culling();
    std::printf(bad ? "FAILED\n" : "ALL OK\n");
    return bad ? 1 : 0;
}
"""


def _cxx_flags_of_setup_py():
    """setup.py's cxx_flags without optimisation levels or OpenMP."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "cxx_flags" for t in node.targets):
            flags = ast.literal_eval(node.value)
            return [f for f in flags if not f.startswith("-O") and "openmp" not in f]
    raise AssertionError("cxx_flags not found in setup.py")


def _glm_dir():
    for path in (os.environ.get("GLM_INCLUDE_DIR"), str(REPO / "third_party" / "glm"), "/usr/include",
                 "/usr/local/include", "/opt/homebrew/include",
                 os.path.join(os.environ["CONDA_PREFIX"], "include") if os.environ.get("CONDA_PREFIX") else None):
        if path and os.path.isfile(os.path.join(path, "glm", "glm.hpp")):
            return path
    return None


CXX = shutil.which(os.environ.get("CXX", "c++"))


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_host_exp_and_culling_bound(tmp_path):
    glm = _glm_dir()
    if glm is None:
        pytest.skip("glm headers not found")
    src = tmp_path / "cpu_math.cpp"
    src.write_text(PROGRAM)
    exe = tmp_path / "cpu_math"
    cmd = [CXX, "-std=c++17", "-O2", *_cxx_flags_of_setup_py(), "-I", str(REPO), "-I", glm, str(src), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    print(run.stdout)
    assert run.returncode == 0 and "ALL OK" in run.stdout, run.stdout + run.stderr
