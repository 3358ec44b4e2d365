"""Tests of the pure-PyTorch reference rasterizer and of the scene generators.

The reference is the oracle for the compiled backends, so it is checked
against (1) torch.autograd.gradcheck for its gradients and (2) an independent
brute-force implementation written literally from spec/ALGORITHM.md (scalar
NumPy preprocessing, a per-pixel Python loop over depth-sorted Gaussians).
"""
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from diff_gaussian_rasterization_ks.camera import make_settings
from diff_gaussian_rasterization_ks.reference import ReferenceOutput, eval_sh, rasterize_reference
from diff_gaussian_rasterization_ks.scenes import (
    INPUT_NAMES,
    cast_inputs,
    garden_scene,
    random_scene,
    requires_grad_,
)
from diff_gaussian_rasterization_ks.settings import GaussianRasterizationSettings

GARDEN = Path(__file__).resolve().parents[2] / "shared/data/garden_sfm.npz"

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Every tensor here is tiny: intra-op threads only add overhead (a lot of it on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def with_antialiasing(s, on=True):
    """Settings with antialiasing on, whether or not the NamedTuple has that field yet."""
    if "antialiasing" in GaussianRasterizationSettings._fields:
        return s._replace(antialiasing=on)
    return types.SimpleNamespace(**s._asdict(), antialiasing=on)


def render(inputs, s):
    return rasterize_reference(**inputs, raster_settings=s)


# ---------------------------------------------------------------------------
# Brute force, written from ALGORITHM.md with scalars (independent of reference.py)
# ---------------------------------------------------------------------------

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = [1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396]
C3 = [-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
      -0.4570457994644658, 1.445305721320277, -0.5900435899266435]


def _np(x):
    return None if x is None else x.detach().double().cpu().numpy()


def _sh_color(deg, sh, d):
    x, y, z = d
    r = C0 * sh[0]
    if deg > 0:
        r = r - C1 * y * sh[1] + C1 * z * sh[2] - C1 * x * sh[3]
    if deg > 1:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        r = (r + C2[0] * xy * sh[4] + C2[1] * yz * sh[5] + C2[2] * (2 * zz - xx - yy) * sh[6]
             + C2[3] * xz * sh[7] + C2[4] * (xx - yy) * sh[8])
    if deg > 2:
        r = (r + C3[0] * y * (3 * xx - yy) * sh[9] + C3[1] * xy * z * sh[10]
             + C3[2] * y * (4 * zz - xx - yy) * sh[11] + C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[12]
             + C3[4] * x * (4 * zz - xx - yy) * sh[13] + C3[5] * z * (xx - yy) * sh[14]
             + C3[6] * x * (xx - 3 * yy) * sh[15])
    return r


def brute_force(inputs, s):
    """Literal float64 implementation of ALGORITHM.md. Returns (outputs dict, per-pixel alphas, counters)."""
    H, W = s.image_height, s.image_width
    view = s.viewmatrix.double().flatten().numpy()  # kernels read m[4*col + row]
    proj = s.projmatrix.double().flatten().numpy()
    campos = s.campos.double().numpy()
    bg = s.bg.double().numpy()
    aa = bool(getattr(s, "antialiasing", False))
    m3 = _np(inputs["means3D"])
    P = m3.shape[0]
    m2 = _np(inputs["means2D"]) if inputs.get("means2D") is not None else np.zeros((P, 3))
    opac = _np(inputs["opacities"]).reshape(P)
    imp = _np(inputs["importances"]).reshape(P) if inputs.get("importances") is not None else np.ones(P)
    shs, cols = _np(inputs.get("shs")), _np(inputs.get("colors_precomp"))
    scales, rots, cov6 = _np(inputs.get("scales")), _np(inputs.get("rotations")), _np(inputs.get("cov3D_precomp"))
    fx = W / (2 * s.tanfovx)
    fy = H / (2 * s.tanfovy)
    gx, gy = (W + 15) // 16, (H + 15) // 16
    counters = dict(stopped=0, rect_clipped=0, alpha_clamped=0, sh_clamped=0, tan_clamped=0)

    def mat(m, row, col):
        return m[4 * col + row]

    gauss = []  # (depth, index, px, py, conic, opacity, colour, rect)
    radii = np.zeros(P, dtype=np.int64)
    for i in range(P):
        p = m3[i]
        t = [mat(view, r, 0) * p[0] + mat(view, r, 1) * p[1] + mat(view, r, 2) * p[2] + mat(view, r, 3)
             for r in range(3)]
        if not t[2] > 0.2:
            continue
        hom = [mat(proj, r, 0) * p[0] + mat(proj, r, 1) * p[1] + mat(proj, r, 2) * p[2] + mat(proj, r, 3)
               for r in range(4)]
        pw = 1.0 / (hom[3] + 1e-7)
        ndc = [hom[0] * pw + m2[i, 0], hom[1] * pw + m2[i, 1]]
        px = ((ndc[0] + 1) * W - 1) * 0.5
        py = ((ndc[1] + 1) * H - 1) * 0.5
        if cov6 is not None:
            a6 = cov6[i]
            Sigma = np.array([[a6[0], a6[1], a6[2]], [a6[1], a6[3], a6[4]], [a6[2], a6[4], a6[5]]])
        else:
            r_, x, y, z = rots[i]
            R = np.array([
                [1 - 2 * (y * y + z * z), 2 * (x * y - r_ * z), 2 * (x * z + r_ * y)],
                [2 * (x * y + r_ * z), 1 - 2 * (x * x + z * z), 2 * (y * z - r_ * x)],
                [2 * (x * z - r_ * y), 2 * (y * z + r_ * x), 1 - 2 * (x * x + y * y)]])
            sc = s.scale_modifier * scales[i]
            Sigma = R @ np.diag(sc * sc) @ R.T
        tz = t[2]
        limx, limy = 1.3 * s.tanfovx, 1.3 * s.tanfovy
        if abs(t[0] / tz) > limx or abs(t[1] / tz) > limy:
            counters["tan_clamped"] += 1
        tx = min(limx, max(-limx, t[0] / tz)) * tz
        ty = min(limy, max(-limy, t[1] / tz)) * tz
        J = np.array([[fx / tz, 0, -fx * tx / tz ** 2], [0, fy / tz, -fy * ty / tz ** 2]])
        Wr = np.array([[mat(view, r, c) for c in range(3)] for r in range(3)])  # world-to-camera rotation
        cov = J @ Wr @ Sigma @ Wr.T @ J.T
        det0 = cov[0, 0] * cov[1, 1] - cov[0, 1] ** 2
        a, b, c = cov[0, 0] + 0.3, cov[0, 1], cov[1, 1] + 0.3
        det = a * c - b * b
        if det == 0:
            continue
        o = opac[i] * math.sqrt(max(0.000025, det0 / det)) if aa else opac[i]
        conic = (c / det, -b / det, a / det)
        mid = 0.5 * (a + c)
        lam = mid + math.sqrt(max(0.1, mid * mid - det))
        radius = min(math.ceil(3 * math.sqrt(lam)), 1e9)
        rect = (min(gx, max(0, math.floor((px - radius) / 16))), min(gy, max(0, math.floor((py - radius) / 16))),
                min(gx, max(0, math.floor((px + radius + 15) / 16))), min(gy, max(0, math.floor((py + radius + 15) / 16))))
        if (rect[2] - rect[0]) * (rect[3] - rect[1]) == 0:
            continue
        if cols is not None:
            col = cols[i]
        else:
            d = p - campos
            d = d / np.linalg.norm(d)
            col = _sh_color(s.sh_degree, shs[i], d) + 0.5
            counters["sh_clamped"] += int((col < 0).any())
            col = np.maximum(col, 0)
        radii[i] = int(radius)
        gauss.append((tz, i, px, py, conic, o, col, rect))
    gauss.sort(key=lambda g: (g[0], g[1]))

    color = np.zeros((3, H, W))
    imp_map = np.zeros((H, W))
    final_T = np.ones((H, W))
    weights = np.zeros((P, H, W))
    alphas = []  # every alpha tested against 1/255 (for the threshold margins of gradcheck)
    test_Ts = []
    for yy in range(H):
        for xx in range(W):
            T = 1.0
            C = np.zeros(3)
            O = 0.0
            for (_, i, px, py, (ca, cb, cc), o, col, rect) in gauss:
                in_rect = rect[0] <= xx // 16 < rect[2] and rect[1] <= yy // 16 < rect[3]
                dx, dy = px - xx, py - yy
                power = -0.5 * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
                if power > 0:
                    continue
                raw = o * math.exp(power)
                alpha = min(0.99, raw)
                if not in_rect:
                    counters["rect_clipped"] += int(alpha >= 1 / 255)
                    continue
                alphas.append((alpha, raw))
                if alpha < 1 / 255:
                    continue
                counters["alpha_clamped"] += int(raw > 0.99)
                test_T = T * (1 - alpha)
                test_Ts.append(test_T)
                if test_T < 0.0001:
                    counters["stopped"] += 1
                    break
                C += col * alpha * T
                O += imp[i] * alpha * T
                weights[i, yy, xx] = alpha * T
                T = test_T
            color[:, yy, xx] = C + T * bg
            imp_map[yy, xx] = O
            final_T[yy, xx] = T
    out = dict(color=color, importance_map=imp_map, radii=radii, final_T=final_T, weights=weights)
    return out, alphas, test_Ts, counters


def assert_matches_brute_force(inputs, s, atol=1e-10):
    ref = render(inputs, s)
    bf, _, _, counters = brute_force(inputs, s)
    np.testing.assert_array_equal(ref.radii.numpy(), bf["radii"])
    for name in ("color", "importance_map", "final_T", "weights"):
        np.testing.assert_allclose(getattr(ref, name).detach().numpy(), bf[name], rtol=0, atol=atol, err_msg=name)
    return counters


# ---------------------------------------------------------------------------
# Brute-force comparisons
# ---------------------------------------------------------------------------


def dense_scene(seed, sh_degree=None, use_cov=False, bg=(0.3, 0.6, 0.9), P=20, H=18, W=20, opac_lo=0.9):
    """A tiny float64 scene with big, nearly opaque Gaussians: early stops, 0.99 clamps, 2x2 tiles."""
    sc = random_scene(P, H, W, seed=seed, sh_degree=sh_degree, use_cov3D_precomp=use_cov, bg=bg,
                      dtype=F64, scale_range=(0.5, 2.0), offscreen_fraction=0.2, behind_fraction=0.1)
    g = torch.Generator().manual_seed(seed + 1000)
    inputs = dict(sc.inputs)
    # Opacities up to 1 (about 15% exactly 1), so alpha hits the 0.99 clamp.
    inputs["opacities"] = (opac_lo + (1.02 - opac_lo) * torch.rand(P, 1, generator=g, dtype=F64)).clamp(max=1.0)
    inputs["means2D"] = 0.02 * torch.randn(P, 3, generator=g, dtype=F64)  # exercises the NDC offset
    return inputs, sc.settings


@pytest.mark.parametrize("sh_degree", [None, 0, 1, 2, 3])
def test_matches_brute_force_early_stop(sh_degree):
    inputs, s = dense_scene(seed=7, sh_degree=sh_degree)
    counters = assert_matches_brute_force(inputs, s)
    # The scene really exercises early stopping and the 0.99 clamp.
    assert counters["stopped"] > 0 and counters["alpha_clamped"] > 0
    if sh_degree is not None and sh_degree > 0:
        assert counters["sh_clamped"] > 0


def test_matches_brute_force_cov_precomp_antialiasing_scale_modifier():
    inputs, s = dense_scene(seed=3, sh_degree=2, use_cov=True)
    assert_matches_brute_force(inputs, s)
    assert_matches_brute_force(inputs, with_antialiasing(s))
    inputs, s = dense_scene(seed=4, sh_degree=1)
    s = s._replace(scale_modifier=0.7)
    assert_matches_brute_force(inputs, s)
    assert_matches_brute_force(inputs, with_antialiasing(s))


def test_tile_rect_clips_alpha_beyond_radius():
    """Nearly opaque wide Gaussians have alpha >= 1/255 beyond their tile rectangle; it must be cut."""
    total = 0
    for seed in range(3):
        inputs, s = dense_scene(seed=seed, P=8, H=40, W=44)
        total += assert_matches_brute_force(inputs, s)["rect_clipped"]
    assert total > 0


@hsettings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    sh_degree=st.sampled_from([None, 0, 1, 2, 3]),
    use_cov=st.booleans(),
    aa=st.booleans(),
    size=st.sampled_from([(1, 1), (5, 3), (17, 16), (16, 33), (18, 20)]),
    P=st.integers(0, 10),
)
def test_matches_brute_force_random(seed, sh_degree, use_cov, aa, size, P):
    H, W = size
    inputs, s = dense_scene(seed=seed, sh_degree=sh_degree, use_cov=use_cov, P=P, H=H, W=W, opac_lo=0.2)
    if aa:
        s = with_antialiasing(s)
    assert_matches_brute_force(inputs, s)


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------


def gradcheck_scene(seed, sh_degree, use_cov, opac_range, P=5, H=10, W=12, bg=(0.2, 0.4, 0.7), scale_range=(0.08, 0.3)):
    """A tiny float64 scene away from every threshold (asserted, so the test fails loudly if not)."""
    sc = random_scene(P, H, W, seed=seed, sh_degree=sh_degree, use_cov3D_precomp=use_cov, bg=bg, dtype=F64,
                      offscreen_fraction=0.0, behind_fraction=0.0, scale_range=scale_range)
    g = torch.Generator().manual_seed(seed)
    inputs = dict(sc.inputs)
    lo, hi = opac_range
    inputs["opacities"] = lo + (hi - lo) * torch.rand(P, 1, generator=g, dtype=F64)
    s = sc.settings
    # Margins: alpha away from 1/255 and (unless clearly above it) from 0.99; test_T from 1e-4;
    # no tan-fov clamp, SH colours away from 0; a single tile, so the rect cannot change.
    _, alphas, test_Ts, counters = brute_force(inputs, s)
    assert counters["tan_clamped"] == 0 and counters["rect_clipped"] == 0
    for alpha, raw in alphas:
        assert abs(alpha - 1 / 255) > 1e-5
        assert abs(raw - 0.99) > 1e-4
    for t in test_Ts:
        assert abs(t - 1e-4) > 1e-6
    if inputs["shs"] is not None:
        m = inputs["means3D"]
        d = m - s.campos.double()
        raw = eval_sh(s.sh_degree, inputs["shs"], d / d.norm(dim=1, keepdim=True)) + 0.5
        assert (raw.abs() > 1e-3).all()
    return inputs, s, counters


def run_gradcheck(inputs, s):
    names = [n for n in INPUT_NAMES if inputs.get(n) is not None]
    leaves = requires_grad_(inputs, names)

    def fn(*args):
        kw = dict(inputs)
        kw.update(zip(names, args))
        out = rasterize_reference(**kw, raster_settings=s)
        return out.color, out.importance_map

    assert torch.autograd.gradcheck(fn, tuple(leaves[n] for n in names))


def test_gradcheck_sh3_scales_rotations():
    inputs, s, _ = gradcheck_scene(seed=11, sh_degree=3, use_cov=False, opac_range=(0.1, 0.5))
    run_gradcheck(inputs, s)


def test_gradcheck_colors_cov3D_precomp_antialiasing():
    inputs, s, _ = gradcheck_scene(seed=12, sh_degree=None, use_cov=True, opac_range=(0.1, 0.5))
    run_gradcheck(inputs, s)
    run_gradcheck(inputs, with_antialiasing(s))


def test_gradcheck_with_early_stop_and_alpha_clamp():
    """Opaque Gaussians: the blended prefix ends early and some alphas sit on the 0.99 clamp."""
    inputs, s, counters = gradcheck_scene(seed=2, sh_degree=1, use_cov=False, opac_range=(0.93, 1.05), P=8,
                                          scale_range=(0.8, 2.0))
    assert counters["stopped"] > 0 and counters["alpha_clamped"] > 0
    run_gradcheck(inputs, s)


def test_importance_gradient_is_total_blending_weight():
    sc = random_scene(40, 24, 32, seed=5, dtype=F64)
    inputs = requires_grad_(sc.inputs, ["importances", "opacities"])
    out = render(inputs, sc.settings)
    (g,) = torch.autograd.grad(out.importance_map.sum(), inputs["importances"])
    torch.testing.assert_close(g.reshape(-1), out.weights.sum((1, 2)).detach(), rtol=0, atol=1e-12)


def test_means2D_gradient_is_ndc_gradient():
    """d/d means2D = d/d pixel-mean * (W/2, H/2); checked by moving the pixel mean via means3D's NDC."""
    sc = random_scene(20, 24, 32, seed=8, dtype=F64)
    inputs = requires_grad_(sc.inputs, ["means2D"])
    out = render(inputs, sc.settings)
    loss = (out.color * torch.linspace(0, 1, 3, dtype=F64)[:, None, None]).sum()
    (g,) = torch.autograd.grad(loss, inputs["means2D"])
    assert (g[:, 2] == 0).all()
    assert (g[out.radii == 0] == 0).all()
    # Central difference in NDC.
    eps = 1e-6
    for i in torch.nonzero(out.radii).squeeze(1)[:5].tolist():
        for k in range(2):
            fd = []
            for sgn in (1, -1):
                kw = dict(sc.inputs)
                m2 = kw["means2D"].clone()
                m2[i, k] += sgn * eps
                kw["means2D"] = m2
                o = render(kw, sc.settings)
                fd.append((o.color * torch.linspace(0, 1, 3, dtype=F64)[:, None, None]).sum())
            assert abs((fd[0] - fd[1]).item() / (2 * eps) - g[i, k].item()) < 1e-5 * max(1.0, abs(g[i, k].item()))


# ---------------------------------------------------------------------------
# Properties and degenerate input
# ---------------------------------------------------------------------------


def test_importance_ones_is_alpha():
    sc = random_scene(60, 30, 40, seed=2, dtype=F64)
    inputs = dict(sc.inputs)
    inputs["importances"] = torch.ones(60, 1, dtype=F64)
    out = render(inputs, sc.settings)
    torch.testing.assert_close(out.importance_map, 1 - out.final_T, rtol=0, atol=1e-12)
    inputs["importances"] = None
    out_none = render(inputs, sc.settings)
    torch.testing.assert_close(out_none.importance_map, out.importance_map, rtol=0, atol=1e-14)
    torch.testing.assert_close(out_none.color, out.color, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_weights_reconstruct_outputs(dtype):
    sc = random_scene(80, 33, 47, seed=9, dtype=dtype, bg=(0.1, 0.2, 0.3), sh_degree=None)
    out = render(sc.inputs, sc.settings)
    assert out.color.dtype == dtype and out.weights.dtype == dtype and out.radii.dtype == torch.int32
    recon = torch.einsum("pc,phw->chw", sc.inputs["colors_precomp"], out.weights)
    recon = recon + out.final_T * sc.settings.bg.to(dtype)[:, None, None]
    tol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(out.color, recon, rtol=0, atol=tol)
    assert (out.weights[out.radii == 0] == 0).all()
    assert (out.final_T > 0).all() and (out.final_T <= 1).all()


def test_float32_matches_float64():
    sc = random_scene(150, 48, 64, seed=21, sh_degree=3)
    o32 = render(sc.inputs, sc.settings)
    o64 = render(cast_inputs(sc.inputs, F64), sc.settings)
    assert torch.equal(o32.radii, o64.radii)
    torch.testing.assert_close(o32.color.double(), o64.color, rtol=0, atol=1e-5)
    torch.testing.assert_close(o32.importance_map.double(), o64.importance_map, rtol=0, atol=1e-5)


def _check_finite_grads(inputs, out, expect_zero=False):
    loss = out.color.sum() + out.importance_map.sum() + out.final_T.sum() + out.weights.sum()
    leaves = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    if loss.requires_grad:
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    else:
        grads = [None] * len(leaves)
    for leaf, gr in zip(leaves, grads):
        if gr is not None:
            assert gr.shape == leaf.shape
            assert torch.isfinite(gr).all()
            if expect_zero:
                assert (gr == 0).all()
    return grads


@pytest.mark.parametrize("sh", [True, False])
def test_zero_gaussians(sh):
    sc = random_scene(0, 20, 24, seed=0, sh_degree=2 if sh else None, bg=(0.1, 0.5, 0.9), use_cov3D_precomp=not sh)
    inputs = requires_grad_(sc.inputs)
    out = render(inputs, sc.settings)
    assert out.color.shape == (3, 20, 24) and out.radii.shape == (0,) and out.weights.shape == (0, 20, 24)
    torch.testing.assert_close(out.color, sc.settings.bg[:, None, None].expand(3, 20, 24))
    assert (out.importance_map == 0).all() and (out.final_T == 1).all()
    _check_finite_grads(inputs, out)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_all_behind_camera_or_on_near_plane(dtype):
    # Camera at the origin looking down +z: view z == world z, exactly.
    s = make_settings(torch.eye(4), 24, 20, 0.6, 0.5, bg=torch.tensor([0.2, 0.3, 0.4]), sh_degree=1)
    z = torch.tensor([0.2, 0.2, 0.0, 1e-8, -1e-8, -1.0, 0.1, -5.0, 0.19999], dtype=dtype)
    P = z.numel()
    means = torch.stack([torch.zeros(P, dtype=dtype), 0.1 * torch.ones(P, dtype=dtype), z], 1)
    means[2, 1] = 0.0  # exactly at the camera centre
    inputs = dict(
        means3D=means, means2D=torch.zeros(P, 3, dtype=dtype), opacities=torch.full((P, 1), 0.9, dtype=dtype),
        importances=torch.ones(P, 1, dtype=dtype), shs=0.3 * torch.ones(P, 4, 3, dtype=dtype), colors_precomp=None,
        scales=torch.full((P, 3), 0.1, dtype=dtype), rotations=torch.tensor([[1.0, 0, 0, 0]] * P, dtype=dtype),
        cov3D_precomp=None)
    inputs = requires_grad_(inputs)
    out = render(inputs, s)
    assert (out.radii == 0).all()
    torch.testing.assert_close(out.color, s.bg.to(dtype)[:, None, None].expand(3, 20, 24))
    assert (out.importance_map == 0).all() and (out.final_T == 1).all()
    _check_finite_grads(inputs, out, expect_zero=True)
    # Just in front of the near plane: visible, finite.
    inputs2 = requires_grad_({**{k: (v.detach() if v is not None else None) for k, v in inputs.items()}})
    with torch.no_grad():
        inputs2["means3D"][:, 2] = 0.2 + 1e-3
    out2 = render(inputs2, s)
    assert (out2.radii > 0).all()
    assert torch.isfinite(out2.color).all()
    _check_finite_grads(inputs2, out2)


def test_one_by_one_image():
    sc = random_scene(30, 1, 1, seed=4, sh_degree=3, bg=(1.0, 0.0, 0.5))
    inputs = requires_grad_(sc.inputs)
    out = render(inputs, sc.settings)
    assert out.color.shape == (3, 1, 1) and torch.isfinite(out.color).all()
    _check_finite_grads(inputs, out)
    assert_matches_brute_force(cast_inputs(sc.inputs, F64), sc.settings)


def test_extreme_gaussians_float32():
    """Thin, huge, far off-screen, near-plane and non-finite Gaussians next to ordinary ones."""
    sc = random_scene(30, 40, 50, seed=6, sh_degree=3)
    base = cast_inputs(sc.inputs, torch.float32)
    base_out = render(base, sc.settings)
    P = 30
    extra_means = torch.tensor([
        [0.0, 0.0, 0.0],        # huge
        [0.1, 0.1, 0.0],        # extremely thin
        [1e6, 0.0, 0.0],        # far off-screen
        [0.0, 1e30, 0.0],       # absurdly far off-screen
        [float("nan"), 0.0, 0.0],
        [0.0, float("inf"), 0.0],
        [0.0, 0.0, 0.0],        # NaN scale
        [0.0, 0.0, 0.0],        # inf rotation
    ])
    E = extra_means.shape[0]
    # The camera looks at the origin from (0.5, -0.3, -4), so the origin is at view depth ~4.
    extra = dict(
        means3D=extra_means,
        means2D=torch.zeros(E, 3),
        opacities=torch.full((E, 1), 0.5),
        importances=torch.ones(E, 1),
        shs=torch.zeros(E, 16, 3),
        scales=torch.tensor([[1e3, 1e3, 1e3], [1e-8, 1e-8, 1e-8]] + [[0.1, 0.1, 0.1]] * 4
                            + [[float("nan"), 0.1, 0.1], [0.1, 0.1, 0.1]]),
        rotations=torch.tensor([[1.0, 0, 0, 0]] * 7 + [[float("inf"), 0, 0, 0]]),
    )
    inputs = {k: (torch.cat([base[k], extra[k]]) if base[k] is not None else None) for k in base}
    inputs = requires_grad_(inputs)
    out = render(inputs, sc.settings)
    for name in ("color", "importance_map", "final_T", "weights"):
        assert torch.isfinite(getattr(out, name)).all(), name
    assert out.radii[P + 4:].eq(0).all()  # non-finite ones are invisible
    assert out.radii[P + 2:P + 4].eq(0).all()  # far off-screen
    assert out.radii[P] > 0 and out.radii[P + 1] > 0  # huge and thin are visible
    grads = _check_finite_grads(inputs, out)
    gm = dict(zip([k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad], grads))
    assert (gm["means3D"][P + 2:] == 0).all() and (gm["scales"][P + 2:] == 0).all()
    # The invisible extras change nothing: base + them renders exactly like the base.
    keep = list(range(P)) + list(range(P + 2, P + E))
    sub = {k: (v.detach()[keep] if v is not None else None) for k, v in inputs.items()}
    out_sub = render(sub, sc.settings)
    assert torch.equal(out_sub.color, base_out.color)
    assert torch.equal(out_sub.importance_map, base_out.importance_map)


def test_indefinite_covariance_power_positive():
    """An indefinite cov3D_precomp gives power > 0 at some pixels: skipped, and no inf reaches the backward."""
    s = make_settings(torch.eye(4), 40, 40, 0.5, 0.5, bg=torch.tensor([0.1, 0.2, 0.3]))
    # cov2D ~ (40/3)^2 * cov3D: a ~ 9.2, c ~ -0.01 -> conic.C ~ -100, power ~ +1000 a few pixels off the mean.
    cov = torch.tensor([[0.05, 0.0, 0.0, -0.31 / (40 / 3) ** 2, 0.0, 0.05], [0.01, 0.0, 0.0, 0.01, 0.0, 0.01]])
    for dtype in (torch.float32, F64):
        inputs = dict(means3D=torch.tensor([[0.1, 0.05, 3.0], [0.0, 0.0, 4.0]], dtype=dtype),
                      means2D=torch.zeros(2, 3, dtype=dtype), opacities=torch.tensor([0.8, 0.6], dtype=dtype),
                      importances=None, shs=None, colors_precomp=torch.tensor([[1.0, 0.5, 0], [0, 0.5, 1]], dtype=dtype),
                      scales=None, rotations=None, cov3D_precomp=cov.to(dtype))
        _, _, _, counters = brute_force(inputs, s)
        inputs = requires_grad_(inputs)
        out = render(inputs, s)
        assert (out.radii > 0).all()
        for name in ("color", "importance_map", "final_T"):
            assert torch.isfinite(getattr(out, name)).all()
        grads = _check_finite_grads(inputs, out)
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
        if dtype == F64:
            assert_matches_brute_force({k: (v.detach() if v is not None else None) for k, v in inputs.items()}, s)


def test_stable_depth_order_ties_by_index():
    """Two Gaussians at the same depth: the lower caller index is in front."""
    s = make_settings(torch.eye(4), 16, 16, 0.5, 0.5)
    means = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 3.0]], dtype=F64)
    common = dict(means3D=means, means2D=torch.zeros(2, 3, dtype=F64), opacities=torch.tensor([0.5, 0.5], dtype=F64),
                  importances=None, shs=None, scales=torch.full((2, 3), 0.2, dtype=F64),
                  rotations=torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=F64), cov3D_precomp=None)
    red_green = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=F64)
    out = render(dict(common, colors_precomp=red_green), s)
    c = out.color[:, 7, 7]
    assert c[0] > c[1]  # red (index 0) in front
    out = render(dict(common, colors_precomp=red_green.flip(0)), s)
    c = out.color[:, 7, 7]
    assert c[1] > c[0]


def test_invalid_arguments():
    sc = random_scene(5, 8, 8, seed=0, sh_degree=1)
    kw = dict(sc.inputs)
    with pytest.raises(ValueError, match="shs / colors_precomp"):
        render(dict(kw, colors_precomp=torch.rand(5, 3)), sc.settings)
    with pytest.raises(ValueError, match="cov3D_precomp"):
        render(dict(kw, cov3D_precomp=torch.rand(5, 6)), sc.settings)
    with pytest.raises(ValueError, match="shs"):
        render(kw, sc.settings._replace(sh_degree=2))
    with pytest.raises(ValueError, match="opacities"):
        render(dict(kw, opacities=torch.rand(4, 1)), sc.settings)
    with pytest.raises(ValueError, match="image size"):
        render(kw, sc.settings._replace(image_width=0))


# ---------------------------------------------------------------------------
# Scene generators
# ---------------------------------------------------------------------------


def test_random_scene_properties():
    a = random_scene(100, 48, 64, seed=1, sh_degree=3)
    b = random_scene(100, 48, 64, seed=1, sh_degree=3)
    c = random_scene(100, 48, 64, seed=2, sh_degree=3)
    assert set(a.inputs) == set(INPUT_NAMES)
    for k, v in a.inputs.items():
        if v is None:
            assert b.inputs[k] is None
            continue
        assert v.is_leaf and not v.requires_grad and v.dtype == torch.float32
        assert torch.equal(v, b.inputs[k])
    assert not torch.equal(a.inputs["means3D"], c.inputs["means3D"])
    assert a.inputs["shs"].shape == (100, 16, 3) and a.settings.sh_degree == 3
    assert a.inputs["colors_precomp"] is None and a.inputs["cov3D_precomp"] is None
    out = render(a.inputs, a.settings)
    vis = out.radii > 0
    assert 0.5 < vis.float().mean() < 0.95  # behind / off-screen ones are culled
    assert out.radii[vis].min() >= 2 and out.radii.max() <= 40

    d = random_scene(50, 48, 64, seed=1, use_cov3D_precomp=True, dtype=F64)
    assert d.inputs["scales"] is None and d.inputs["rotations"] is None
    assert d.inputs["colors_precomp"].min() >= 0 and d.inputs["colors_precomp"].max() <= 1
    cov = d.inputs["cov3D_precomp"]
    from diff_gaussian_rasterization_ks.reference import covariance_from_upper
    assert (torch.linalg.eigvalsh(covariance_from_upper(cov)) > 0).all()
    e = random_scene(50, 48, 64, seed=1, with_importances=False)
    assert e.inputs["importances"] is None


def test_requires_grad_and_cast_inputs():
    sc = random_scene(10, 8, 8, seed=0)
    g = requires_grad_(sc.inputs, ["means3D", "opacities"])
    assert g["means3D"].requires_grad and g["means3D"].is_leaf and g["opacities"].requires_grad
    assert not g["scales"].requires_grad and g["scales"] is sc.inputs["scales"]
    assert not sc.inputs["means3D"].requires_grad
    with pytest.raises(ValueError):
        requires_grad_(sc.inputs, ["shs"])
    all_g = requires_grad_(sc.inputs)
    assert all(v.requires_grad for v in all_g.values() if v is not None)
    c = cast_inputs(all_g, F64)
    assert all(v.dtype == F64 and not v.requires_grad for v in c.values() if v is not None)


@pytest.mark.skipif(not GARDEN.exists(), reason="shared/data/garden_sfm.npz not found")
def test_garden_scene():
    sc = garden_scene(GARDEN)
    m = sc.inputs["means3D"]
    assert m.shape == (111_785, 3)
    assert sc.settings.image_width == 648 and sc.settings.image_height == 420
    s = sc.inputs["scales"]
    assert s.min() >= 1e-4 and s.max() <= 0.02
    torch.testing.assert_close(sc.inputs["rotations"].norm(dim=1), torch.ones(111_785))
    o = sc.inputs["opacities"]
    assert o.shape == (111_785, 1) and o.min() >= 0 and o.max() <= 1
    assert sc.inputs["colors_precomp"].max() <= 1 and sc.inputs["shs"] is None
    assert (sc.settings.bg == 0).all()
    # Most points are in front of the real camera and on screen.
    ph = torch.cat([m, torch.ones(len(m), 1)], 1)
    z = (ph @ sc.settings.viewmatrix)[:, 2]
    hom = ph @ sc.settings.projmatrix
    ndc = hom[:, :2] / (hom[:, 3:] + 1e-7)
    assert ((z > 0.2) & (ndc.abs() < 1).all(1)).float().mean() > 0.5
    assert torch.equal(garden_scene(GARDEN).inputs["scales"], s)  # deterministic

    x3 = garden_scene(GARDEN, replicate=3)
    assert x3.inputs["means3D"].shape == (9 * 111_785, 3)
    assert (x3.inputs["means3D"][:, 0].max() - x3.inputs["means3D"][:, 0].min()) > 10
    hi = garden_scene(GARDEN, resolution_scale=2)
    assert hi.settings.image_width == 1296 and hi.settings.image_height == 840
    assert hi.settings.tanfovx == pytest.approx(sc.settings.tanfovx)
