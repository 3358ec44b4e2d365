"""Property tests (hypothesis) of the CPU backend on random, extreme but
finite scenes: 0 to 40 Gaussians, images from 1 x 1 to odd non-square, SH
degrees 0..3 or colors_precomp, scales+rotations or cov3D_precomp, scales
from 1e-6 to 1e3, opacities exactly 0 and 1, Gaussians exactly on and behind
the near plane, far off screen, and huge ones covering every tile.

Every example checks shapes, dtypes and finiteness of all outputs and of
every gradient; examples small enough (P <= 30, H x W <= 40 x 40) are also
compared with the float64 oracle `rasterize_reference`, forward and backward.

The structure of a scene (sizes, modes, the category of every Gaussian) is
drawn by hypothesis, which shrinks it; the numbers inside a category come
from a seeded torch generator, so that they are generic (hypothesis favours
"nice" floats such as 0.5, which would put pixels exactly on the
alpha >= 1/255 and T >= 1e-4 thresholds, where float32 and float64 may
legitimately decide differently). Extreme values are explicit categories.
"""
import contextlib
import math
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st  # noqa: E402

from diff_gaussian_rasterization_ks import rasterize_reference  # noqa: E402
from diff_gaussian_rasterization_ks import reference  # noqa: E402
from diff_gaussian_rasterization_ks.camera import look_at, make_settings  # noqa: E402
from diff_gaussian_rasterization_ks.scenes import cast_inputs, requires_grad_  # noqa: E402

from conftest import assert_close  # noqa: E402
from reliability_support import MAPS, identity_camera, map_shapes, render_and_backward, upstream_gradients  # noqa: E402

NEAR = 0.2
NEAR_F32 = torch.tensor(NEAR, dtype=torch.float32).item()  # 0.2f, the kernels' near plane
JUST_BEYOND_NEAR = torch.nextafter(torch.tensor(NEAR_F32), torch.tensor(1.0)).item()

POSITIONS = ["screen", "screen", "screen", "near_plane", "just_beyond_near", "behind", "offscreen", "far_offscreen"]
SCALES = ["normal", "normal", "tiny", "thin", "huge"]
OPACITIES = ["normal", "normal", "zero", "one"]
CAMERAS = ["identity", "permuted", "look_at"]

# A rotation of the axes (view x = world y + 0.5, view y = 1 - world z,
# view z = world x): view depths stay exact.
PERMUTED_W2C = torch.tensor([[0.0, 1.0, 0.0, 0.5], [0.0, 0.0, -1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])

# CI: 40 deterministic examples per test. DGR_PROPERTY_EXAMPLES=2000
# DGR_PROPERTY_RANDOM=1 searches harder (how the regression tests below were found).
PROFILE = dict(max_examples=int(os.environ.get("DGR_PROPERTY_EXAMPLES", "40")), deadline=None,
               derandomize=os.environ.get("DGR_PROPERTY_RANDOM") != "1", database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def scenes(draw, max_gaussians=40, max_side=48):
    P = draw(st.integers(0, max_gaussians))
    H = draw(st.integers(1, max_side))
    W = draw(st.integers(1, max_side))
    return dict(
        P=P, H=H, W=W,
        color_mode=draw(st.sampled_from(["precomp", 0, 1, 2, 3])),
        extra_sh=draw(st.integers(0, 2)),
        cov_mode=draw(st.sampled_from(["scales", "cov3D"])),
        camera=draw(st.sampled_from(CAMERAS)),
        tanfovx=draw(st.sampled_from([0.3, 0.6, 1.2])),
        scale_modifier=draw(st.sampled_from([1.0, 1.0, 0.5, 2.0])),
        importances=draw(st.booleans()),
        positions=draw(st.lists(st.sampled_from(POSITIONS), min_size=P, max_size=P)),
        scales=draw(st.lists(st.sampled_from(SCALES), min_size=P, max_size=P)),
        opacities=draw(st.lists(st.sampled_from(OPACITIES), min_size=P, max_size=P)),
        seed=draw(st.integers(0, 2**16)),
    )


def build(spec):
    """(settings, inputs, exactly_on_near_plane [P] bool) from a drawn spec."""
    P, H, W = spec["P"], spec["H"], spec["W"]
    gen = torch.Generator().manual_seed(spec["seed"])
    u = lambda *shape: torch.rand(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    tanfovx = spec["tanfovx"]
    tanfovy = tanfovx * H / W
    bg = u(3).float()
    sh_degree = 0 if spec["color_mode"] == "precomp" else spec["color_mode"]
    common = dict(bg=bg, scale_modifier=spec["scale_modifier"], sh_degree=sh_degree)
    camera = spec["camera"]
    if camera == "identity":
        w2c = torch.eye(4)
    elif camera == "permuted":
        w2c = PERMUTED_W2C
    else:
        eye = (u(3) * 4 - 2).tolist()
        eye[2] -= 5.0
        w2c = look_at(eye, (u(3) - 0.5).tolist(), up=(0.0, -1.0, 0.0))
    settings = make_settings(w2c, W, H, tanfovx, tanfovy, **common)

    # camera-space positions per category
    cam = torch.zeros(P, 3, dtype=torch.float64)
    exact_near = torch.zeros(P, dtype=torch.bool)
    exact = camera != "look_at"  # depths survive the transform exactly
    for i, kind in enumerate(spec["positions"]):
        if kind in ("near_plane", "just_beyond_near") and not exact:
            kind = "behind"
        if kind == "screen":
            z = 0.5 + 7.5 * u(1).item()
            x, y = (2.2 * u(1).item() - 1.1) * tanfovx * z, (2.2 * u(1).item() - 1.1) * tanfovy * z
        elif kind in ("near_plane", "just_beyond_near"):
            z = NEAR_F32 if kind == "near_plane" else JUST_BEYOND_NEAR
            x, y = (u(1).item() - 0.5) * 0.1, (u(1).item() - 0.5) * 0.1
            exact_near[i] = kind == "near_plane"
        elif kind == "behind":
            z = [0.0, -1.0, -3.0 + 3.15 * u(1).item()][int(3 * u(1).item())]
            x, y = u(1).item() - 0.5, u(1).item() - 0.5
        elif kind == "offscreen":  # partly or wholly off screen, beyond the 1.3 tanfov clamp
            z = 0.5 + 7.5 * u(1).item()
            sign = 1.0 if u(1).item() < 0.5 else -1.0
            x, y = sign * (1.05 + 30 * u(1).item()) * tanfovx * z, (u(1).item() - 0.5) * tanfovy * z
            if u(1).item() < 0.5:
                x, y = y / tanfovy * tanfovx, x / tanfovx * tanfovy
        else:  # far_offscreen
            z = 1.0 + 5 * u(1).item()
            x, y = 1e7 * (1 if u(1).item() < 0.5 else -1), (u(1).item() - 0.5) * 1e7
        cam[i] = torch.tensor([x, y, z], dtype=torch.float64)
    w2c64 = w2c.double()
    means3D = (cam - w2c64[:3, 3]) @ w2c64[:3, :3]  # R^T (p - t): exact for the exact cameras

    scales = torch.exp(math.log(0.01) + (math.log(0.5) - math.log(0.01)) * u(P, 3))
    for i, kind in enumerate(spec["scales"]):
        if kind == "tiny":
            scales[i] = 1e-6
        elif kind == "thin":
            scales[i, int(3 * u(1).item()) % 3] = 1e-6
        elif kind == "huge":
            scales[i] = 1e3
    quats = torch.randn(P, 4, generator=gen, dtype=torch.float64)
    quats = quats / quats.norm(dim=1, keepdim=True).clamp_min(1e-12) * (0.5 + 1.5 * u(P, 1))
    if P:
        quats[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # exact identity rotation for one of them
    opacities = 0.05 + 0.9 * u(P, 1)
    for i, kind in enumerate(spec["opacities"]):
        if kind != "normal":
            opacities[i] = 0.0 if kind == "zero" else 1.0

    inputs = dict(means3D=means3D, means2D=torch.zeros(P, 3, dtype=torch.float64), opacities=opacities,
                  importances=2 * u(P, 1) if spec["importances"] else None, shs=None, colors_precomp=None,
                  scales=None, rotations=None, cov3D_precomp=None)
    if spec["color_mode"] == "precomp":
        inputs["colors_precomp"] = u(P, 3)
    else:
        M = (sh_degree + 1) ** 2 + spec["extra_sh"]
        shs = 0.3 * torch.randn(P, M, 3, generator=gen, dtype=torch.float64)
        shs[:, 0] = (u(P, 3) - 0.5) / 0.28209479177387814
        inputs["shs"] = shs
    if spec["cov_mode"] == "scales":
        inputs["scales"], inputs["rotations"] = scales, quats
    else:
        from diff_gaussian_rasterization_ks.reference import covariance_from_scales_rotations

        S = covariance_from_scales_rotations(scales, quats)
        inputs["cov3D_precomp"] = torch.stack([S[:, 0, 0], S[:, 0, 1], S[:, 0, 2], S[:, 1, 1], S[:, 1, 2],
                                               S[:, 2, 2]], 1)
    inputs = {k: (v.float().contiguous() if v is not None else None) for k, v in inputs.items()}
    return settings, inputs, exact_near


def check_outputs(spec, settings, inputs, out, grads):
    P, H, W = spec["P"], spec["H"], spec["W"]
    for m, shape in map_shapes(H, W).items():
        t = getattr(out, m)
        assert t.shape == shape and t.dtype == torch.float32, f"{m}: {t.dtype} {tuple(t.shape)}"
        assert torch.isfinite(t).all(), f"{m}: non-finite values"
    assert out.radii.shape == (P,) and out.radii.dtype == torch.int32 and (out.radii >= 0).all()
    assert out.n_contrib.shape == (H, W) and out.n_contrib.dtype == torch.int32 and (out.n_contrib >= 0).all()
    assert (out.alpha >= 0).all() and (out.alpha <= 1).all()
    for name, g in grads.items():
        if g is not None:
            assert g.shape == inputs[name].shape, f"d/d{name}: shape {tuple(g.shape)}"
            assert torch.isfinite(g).all(), f"d/d{name}: non-finite gradient"
    # what must be culled is culled, with zero gradients
    culled = torch.tensor([k in ("near_plane", "behind", "far_offscreen") for k in spec["positions"]], dtype=torch.bool)
    culled &= torch.tensor([k != "near_plane" or spec["camera"] != "look_at" for k in spec["positions"]],
                           dtype=torch.bool)
    assert (out.radii[culled] == 0).all(), f"culled categories drawn: {out.radii.tolist()}"
    for name, g in grads.items():
        if g is not None and P:
            assert (g[culled] == 0).all(), f"d/d{name}: non-zero gradient for a culled Gaussian"


@contextlib.contextmanager
def oracle_with_float32_constants():
    """The oracle's thresholds as the kernels hold them: 0.2f, 0.99f, 1/255f
    and 1e-4f. With the exact decimal constants, float64 decides differently
    from float32 on inputs that sit exactly on a threshold, which the
    extreme categories produce on purpose: z = 0.2f is 0.2000000030 > 0.2 in
    float64 (drawn) but <= 0.2f in the kernels (culled); two splats of
    opacity 1 both clamp to alpha = 0.99 and leave T = (1 - 0.99)^2 = 1e-4,
    not below the 1e-4 floor in float64 (the second one is blended), while in
    float32 1 - 0.99f < 0.01 and the pixel stops before it."""
    names = ("NEAR_PLANE", "ALPHA_MAX", "ALPHA_MIN", "T_MIN")
    saved = {n: getattr(reference, n) for n in names}
    try:
        for n in names:
            setattr(reference, n, torch.tensor(saved[n], dtype=torch.float32).item())
        yield
    finally:
        for n, v in saved.items():
            setattr(reference, n, v)


def compare_with_oracle(spec, settings, inputs, out, grads, exact_near, upstream):
    """CPU float32 against the float64 oracle (with float32 constants)."""
    assert (out.radii[exact_near] == 0).all(), "a Gaussian exactly on the near plane (z = 0.2f) was drawn"
    oracle = requires_grad_(cast_inputs(inputs, torch.float64))
    with oracle_with_float32_constants():
        ref = rasterize_reference(**oracle, raster_settings=settings)
    sum((getattr(ref, m) * upstream[m]).sum() for m in MAPS).backward()

    # radius = ceil(3 sqrt(lambda)) may round across an integer in float32;
    # for the splats of radius 1e4..1e6 px that huge and near-plane
    # categories make, float32's lambda is good to ~1e-4 only (measured:
    # 55627 vs 55633); such a splat covers the whole grid anyway
    if spec["P"]:
        allowed = torch.clamp(1e-3 * ref.radii.double(), min=1.0)
        assert ((out.radii - ref.radii).abs() <= allowed).all(), f"radii {out.radii.tolist()} vs {ref.radii.tolist()}"
    assert torch.equal(out.radii > 0, ref.radii > 0), "visibility differs from the oracle"

    if not ill_conditioned(spec):
        # as test_forward_parity / test_gradients (float32 rounding of sums
        # of at most 30 splats); measured worst over 130 such examples:
        # forward 2.1e-6 absolute, gradients 1e-4 of the largest entry
        fwd, grad = dict(rtol=1e-5, atol_rel=0, atol_abs=4e-6), dict(rtol=1e-3, atol_rel=3e-4)
    else:
        # 1e-6-thin splats seen edge-on (det = ac - b^2 of the 2D covariance
        # cancels: up to 4 of float32's 7 digits lost), splats just beyond
        # the near plane (Jacobian entries ~ f / 0.2) and splats of radius
        # 1e5 px; opacity-1 splats put pixels on the kink of min(0.99, o G).
        # Measured worst over ~6,000 such examples: forward 6.5e-5 absolute,
        # gradients 2.7e-2 of the largest entry (means3D of a thin splat at
        # the near plane; float32 autograd through the oracle is off by as
        # much on other examples). A real bug (a missing term, a wrong
        # blending order, a wrong clamp) is off by O(1).
        fwd, grad = dict(rtol=1e-4, atol_rel=0, atol_abs=2e-4), dict(rtol=1e-2, atol_rel=5e-2, atol_abs=1e-6)
    for m in MAPS:
        assert_close(m, getattr(out, m), getattr(ref, m), **fwd)
    for name, g in grads.items():
        if g is not None:
            assert_close(f"d/d{name}", g, oracle[name].grad, **grad)


def ill_conditioned(spec):
    return any(p == "just_beyond_near" for p in spec["positions"]) or any(k in ("thin", "huge") for k in spec["scales"])


def example_spec(P, H, W, positions, scales, opacities, **kw):
    spec = dict(P=P, H=H, W=W, color_mode="precomp", extra_sh=0, cov_mode="scales", camera="identity", tanfovx=0.6,
                scale_modifier=1.0, importances=True, positions=positions, scales=scales, opacities=opacities, seed=7)
    spec.update(kw)
    return spec


@settings(**PROFILE)
@given(spec=scenes())
# always tried, besides the drawn ones: no Gaussian, a single one on a 1 x 1
# image, a single huge one over every tile of an odd image, one just beyond
# the near plane seen by a rotated camera
@example(spec=example_spec(0, 1, 1, [], [], []))
@example(spec=example_spec(1, 1, 1, ["screen"], ["normal"], ["one"], color_mode=3, extra_sh=1))
@example(spec=example_spec(1, 33, 47, ["screen"], ["huge"], ["normal"], cov_mode="cov3D", color_mode=1))
@example(spec=example_spec(2, 17, 9, ["just_beyond_near", "near_plane"], ["thin", "normal"], ["normal", "one"],
                           camera="permuted", color_mode=2))
def test_random_extreme_scenes(spec):
    settings_, inputs, exact_near = build(spec)
    upstream = upstream_gradients(spec["H"], spec["W"], seed=spec["seed"])
    out, grads = render_and_backward(settings_, inputs, upstream)
    check_outputs(spec, settings_, inputs, out, grads)
    if spec["P"] <= 30 and spec["H"] * spec["W"] <= 40 * 40:
        compare_with_oracle(spec, settings_, inputs, out, grads, exact_near, upstream)


@settings(**PROFILE)
@given(spec=scenes(max_gaussians=60, max_side=40), perm_seed=st.integers(0, 2**16))
def test_input_order_does_not_matter(spec, perm_seed):
    """Blending is by depth (ties by index), and per-Gaussian gradients are
    summed in an order that does not depend on the other Gaussians: so
    permuting the input permutes radii and gradients and leaves the maps
    bit for bit identical. Exact depth ties (the just_beyond_near category)
    keep their input order, so only the first such Gaussian stays there."""
    positions = list(spec["positions"])
    for i in [i for i, p in enumerate(positions) if p == "just_beyond_near"][1:]:
        positions[i] = "screen"
    spec = dict(spec, positions=positions)
    settings_, inputs, _ = build(spec)
    perm = torch.randperm(spec["P"], generator=torch.Generator().manual_seed(perm_seed))
    upstream = upstream_gradients(spec["H"], spec["W"], seed=spec["seed"])
    out, grads = render_and_backward(settings_, inputs, upstream)
    permuted = {k: (v[perm].contiguous() if v is not None else None) for k, v in inputs.items()}
    out_p, grads_p = render_and_backward(settings_, permuted, upstream)
    for m in MAPS:
        assert torch.equal(getattr(out, m), getattr(out_p, m)), m
    assert torch.equal(out.radii[perm], out_p.radii)
    for name, g in grads.items():
        if g is not None:
            assert torch.equal(g[perm], grads_p[name]), f"d/d{name}"


# ---------------------------------------------------------------------------
# Failures the search found, shrunk to regular tests
# ---------------------------------------------------------------------------


def _one_colour_scene(P, **changes):
    inputs = dict(means3D=torch.tensor([[0.0, 0.0, 2.0]]).repeat(P, 1), means2D=torch.zeros(P, 3),
                  opacities=torch.full((P, 1), 0.8), importances=None, shs=None,
                  colors_precomp=torch.full((P, 3), 0.5), scales=torch.full((P, 3), 0.3),
                  rotations=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(P, 1), cov3D_precomp=None)
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize("sh_degree,M", [(1, 4), (0, 2), (3, 16)])
def test_zero_gaussians_with_sh_coefficients(sh_degree, M):
    settings_ = identity_camera(5, 7)._replace(sh_degree=sh_degree)
    inputs = _one_colour_scene(0, colors_precomp=None, shs=torch.zeros(0, M, 3))
    out, grads = render_and_backward(settings_, inputs)
    assert out.color.shape == (3, 5, 7) and grads["shs"].shape == (0, M, 3)


def test_zero_gaussians_with_one_sh_coefficient():
    """M = 1, the case that worked before the fix above."""
    settings_ = identity_camera(5, 7)
    out, grads = render_and_backward(settings_, _one_colour_scene(0, colors_precomp=None, shs=torch.zeros(0, 1, 3)))
    assert grads["shs"].shape == (0, 1, 3)


def test_float32_thresholds_match_the_oracle_with_float32_constants():
    """The two threshold cases the search hit, which are float32 facts, not
    bugs: a Gaussian at z = 0.2f is culled (z <= 0.2f), and two opacity-1
    splats stacked on a pixel leave T = (1 - 0.99f)^2 < 1e-4f, so the pixel
    stops before the second one. The float64 oracle with decimal constants
    decides both the other way; with the kernels' float32 constants it agrees."""
    settings_ = identity_camera(8, 8)
    on_near = _one_colour_scene(1, means3D=torch.tensor([[0.0, 0.0, NEAR_F32]]), scales=torch.full((1, 3), 0.01))
    out, _ = render_and_backward(settings_, on_near)
    assert out.radii.tolist() == [0]
    assert rasterize_reference(**cast_inputs(on_near, torch.float64), raster_settings=settings_).radii.item() > 0

    stacked = _one_colour_scene(3, means3D=torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 2.5], [0.0, 0.0, 3.0]]),
                                opacities=torch.ones(3, 1), colors_precomp=torch.eye(3), scales=torch.full((3, 3), 3.0))
    out, _ = render_and_backward(settings_, stacked)
    centre = (slice(None), 3, 3)  # pixel (3, 3) is next to the image centre (3.5, 3.5): G > 0.99 for all three
    assert out.n_contrib[3, 3].item() == 1, "float32 stops at the second saturated splat"
    decimal = rasterize_reference(**cast_inputs(stacked, torch.float64), raster_settings=settings_)
    assert decimal.weights[1, 3, 3].item() == pytest.approx(0.99 * 0.01), "float64: T = 1e-4 is not below 1e-4"
    with oracle_with_float32_constants():
        f32 = rasterize_reference(**cast_inputs(stacked, torch.float64), raster_settings=settings_)
    assert f32.weights[1, 3, 3].item() == 0.0
    assert_close("color", out.color[centre], f32.color[centre], rtol=1e-5, atol_rel=0, atol_abs=2e-6)


@pytest.mark.parametrize("antialiasing", [False, True], ids=["plain", "antialiasing"])
def test_huge_splat_covariance_gradient_is_not_flushed_to_zero(antialiasing):
    """A splat of radius > 2e5 px: the determinant of its 2D covariance is
    above 1.8e19, so det^2 overflows float32. Its scale and rotation
    gradients match the float64 oracle, through the conic (once
    (...) / det^2, which made them exactly 0) and, with antialiasing, through
    the ratio det0 / det1 too (its derivative, once a difference of two
    terms ~1e9 det over det^2, lost all digits to cancellation already at
    radius 8e4 px: 0.17% of the gradient missing)."""
    settings_ = identity_camera(32, 32)._replace(antialiasing=antialiasing)
    inputs = _one_colour_scene(1, means3D=torch.tensor([[0.05, -0.03, 0.5]]), opacities=torch.tensor([[0.7]]),
                               colors_precomp=torch.tensor([[0.9, 0.2, 0.4]]),
                               scales=torch.tensor([[1000.0, 500.0, 2000.0]]),
                               rotations=torch.tensor([[0.9, 0.3, -0.2, 0.1]]))
    upstream = upstream_gradients(32, 32, seed=1)
    out, grads = render_and_backward(settings_, inputs, upstream)
    assert out.radii.item() > 2e5
    oracle = requires_grad_(cast_inputs(inputs, torch.float64))
    ref = rasterize_reference(**oracle, raster_settings=settings_)
    sum((getattr(ref, m) * upstream[m]).sum() for m in MAPS).backward()
    # at a scale of 300 (radius 8e4 px) the CPU matches to 1e-6 relative
    for name in ("scales", "rotations"):
        assert_close(f"d/d{name}", grads[name], oracle[name].grad, rtol=1e-3, atol_rel=1e-4)
