"""The CUDA backend against the CPU backend and the float64 PyTorch oracle.

Both compiled backends drive the same shared math headers, so CUDA and CPU
agree to float32 rounding (nvcc contracts a*b+c into FMAs and its expf is not
glibc's; the CUDA backward sums with atomics). Where an integer result could
legitimately flip on a rounding difference (a radius whose ceil lands on a
whole pixel, two Gaussians of one tile at equal depth), the check allows it
and says so. Tolerances against the oracle are those of the CPU tests
(test_forward_parity.py, test_gradients.py).

Skipped unless CUDA is available. DGR_CUDA_TEST_ON_CPU=1 runs the same
comparisons with CPU tensors (the CPU backend standing in for CUDA), which
checks this file's harness on a machine without a GPU.
"""
import os

import pytest
import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer, rasterize_reference
from diff_gaussian_rasterization_ks import _backend
from diff_gaussian_rasterization_ks.camera import make_settings
from diff_gaussian_rasterization_ks.scenes import cast_inputs, garden_scene, random_scene, requires_grad_

from conftest import GARDEN_NPZ, assert_close

ON_CPU = os.environ.get("DGR_CUDA_TEST_ON_CPU") == "1"
pytestmark = pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="CUDA is not available")

DEV = torch.device("cpu") if ON_CPU else torch.device("cuda")
CPU = torch.device("cpu")
F64 = torch.float64

# Same tolerances as the CPU backend's tests against the oracle.
COLOR_TOL = dict(rtol=1e-5, atol_rel=0.0, atol_abs=5e-6)
GRAD_TOL = dict(rtol=1e-3, atol_rel=1e-4)


def _has_cuda_kernels():
    return ON_CPU or (_backend._C is not None and bool(_backend._C.has_cuda))


needs_kernels = pytest.mark.skipif(not _has_cuda_kernels(), reason="the extension was built without CUDA")


def test_extension_has_cuda_kernels():
    """On a CUDA machine the extension must have been built with CUDA: otherwise
    every other test here would be skipped and nothing would be checked."""
    assert _backend._C is not None, f"extension failed to import: {_backend._IMPORT_ERROR}"
    assert _has_cuda_kernels(), "diff_gaussian_rasterization_ks._C.has_cuda is False on a machine with CUDA"
    assert _backend.kernels_for(DEV) is not None


# ---------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------

SCENES = [
    ("colors_precomp_bg", dict(num_gaussians=120, height=48, width=70, seed=21, bg=(0.2, 0.4, 0.9))),
    ("sh0", dict(num_gaussians=100, height=37, width=53, seed=22, sh_degree=0)),
    ("sh1_bg", dict(num_gaussians=100, height=50, width=41, seed=23, sh_degree=1, bg=(1.0, 0.5, 0.0))),
    ("sh2", dict(num_gaussians=100, height=33, width=65, seed=24, sh_degree=2)),
    ("sh3_bg", dict(num_gaussians=100, height=64, width=64, seed=25, sh_degree=3, bg=(0.3, 0.3, 0.3))),
    ("cov3D_precomp", dict(num_gaussians=100, height=45, width=77, seed=26, use_cov3D_precomp=True, sh_degree=2)),
    ("scale_modifier", dict(num_gaussians=100, height=47, width=61, seed=27, scale_modifier=1.6, bg=(0.5, 0.1, 0.7),
                            sh_degree=3)),
    ("large_splats", dict(num_gaussians=60, height=35, width=49, seed=28, scale_range=(0.3, 1.0), sh_degree=1)),
]


def many_layers_scene(seed=29):
    """More than 256 splats per tile with low opacity: the forward and the
    backward walk several shared-memory batches per tile."""
    scene = random_scene(700, 40, 56, seed=seed, scale_range=(0.3, 0.8), offscreen_fraction=0.1,
                         behind_fraction=0.05, sh_degree=1, bg=(0.1, 0.8, 0.3))
    g = torch.Generator().manual_seed(seed)
    scene.inputs["opacities"] = (0.005 + 0.02 * torch.rand(700, 1, generator=g)).contiguous()
    return scene


def opaque_scene(seed=30):
    """Opacities near 1: alpha hits the 0.99 clamp, pixels stop on the
    transmittance floor and whole tiles finish early."""
    scene = random_scene(400, 40, 56, seed=seed, scale_range=(0.2, 0.6), offscreen_fraction=0.1,
                         behind_fraction=0.05)
    g = torch.Generator().manual_seed(seed)
    scene.inputs["opacities"] = (0.97 + 0.03 * torch.rand(400, 1, generator=g)).contiguous()
    return scene


def test_scenes_exercise_the_kernel_paths():
    """Guards the comparisons below against becoming vacuous: tiles with more
    than one shared-memory batch (256 splats) that pixels blend through, and
    pixels that stop on the transmittance floor."""
    state = named_state(raw_forward(many_layers_scene(), CPU))
    ranges, n_contrib = state["tile_ranges"], state["n_contrib"]
    assert (ranges[1:] - ranges[:-1]).max() > 256 and n_contrib.max() > 256
    assert (named_state(raw_forward(opaque_scene(), CPU))["final_T"] < 1e-3).float().mean() > 0.2


def all_scenes():
    for name, kwargs in SCENES:
        yield pytest.param(lambda kwargs=kwargs: random_scene(**kwargs), id=name)
    yield pytest.param(many_layers_scene, id="many_layers")
    yield pytest.param(opaque_scene, id="opaque_early_stop")


def garden_subset(n=600, downscale=6, seed=0):
    """Real garden geometry small enough for the dense oracle: n random
    Gaussians, the same camera at 1/downscale of the resolution."""
    scene = garden_scene(GARDEN_NPZ)
    P = scene.inputs["means3D"].shape[0]
    idx = torch.randperm(P, generator=torch.Generator().manual_seed(seed))[:n]
    inputs = {k: (v[idx].contiguous() if v is not None else None) for k, v in scene.inputs.items()}
    s = scene.settings
    settings = s._replace(image_height=s.image_height // downscale, image_width=s.image_width // downscale)
    return type(scene)(inputs, settings)


def needs_garden():
    return pytest.mark.skipif(not GARDEN_NPZ.exists(), reason=f"garden data not found at {GARDEN_NPZ}")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def settings_on(s, device):
    move = lambda t: t.to(device)  # noqa: E731
    return s._replace(bg=move(s.bg), viewmatrix=move(s.viewmatrix), projmatrix=move(s.projmatrix),
                      campos=move(s.campos))


def upstream(settings, seed=0):
    H, W = settings.image_height, settings.image_width
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(3, H, W, generator=g, dtype=F64), torch.randn(H, W, generator=g, dtype=F64),
            torch.randn(1, H, W, generator=g, dtype=F64), torch.randn(1, H, W, generator=g, dtype=F64))


MAPS = ("color", "importance_map", "invdepth", "alpha")


def upstream_loss(out, up, device):
    """sum over the maps given in `up` (color, importance[, invdepth, alpha])."""
    return sum((getattr(out, m).double() * u.to(device)).sum() for m, u in zip(MAPS, up))


def run_backend(scene, device, up=None, full=False):
    """Forward (and backward with upstream `up`) through the public API on
    `device`; returns (color, importance, radii, inputs with .grad) on the CPU,
    or with full=True (RenderOutput on the CPU, grads)."""
    settings = settings_on(scene.settings, device)
    inputs = requires_grad_(cast_inputs(scene.inputs, device=device))
    out = GaussianRasterizer(settings).render(**inputs)
    if up is not None:
        upstream_loss(out, up, device).backward()
    grads = {k: v.grad.detach().to(CPU) for k, v in inputs.items() if v is not None and v.grad is not None}
    out = out._replace(**{k: v.detach().to(CPU) for k, v in out._asdict().items() if isinstance(v, torch.Tensor)})
    if full:
        return out, grads
    return out.color, out.importance_map, out.radii, grads


def run_oracle(scene, up=None):
    inputs = requires_grad_(cast_inputs(scene.inputs, F64))
    ref = rasterize_reference(**inputs, raster_settings=scene.settings)
    if up is not None:
        upstream_loss(ref, up, CPU).backward()
    grads = {k: v.grad.detach() for k, v in inputs.items() if v is not None and v.grad is not None}
    return ref, grads


def raw_forward(scene, device, **kwargs):
    """The compiled forward called directly, as rasterizer.py calls it: all
    outputs (color, importance, radii, invdepth, alpha, the forward state, then
    the four statistics, empty unless compute_stats)."""
    kernels = _backend.kernels_for(device)
    s = settings_on(scene.settings, device)
    x = cast_inputs(scene.inputs, device=device)
    P = x["means3D"].shape[0]
    empty = torch.empty(0, device=device)
    opt = lambda k: x[k] if x.get(k) is not None else empty  # noqa: E731
    importances = x["importances"].reshape(P) if x.get("importances") is not None else torch.ones(P, device=device)
    f = lambda t: t.to(torch.float32).contiguous()  # noqa: E731
    return kernels.forward(
        f(s.bg), x["means3D"], opt("colors_precomp"), x["opacities"].reshape(P), importances, opt("scales"),
        opt("rotations"), float(s.scale_modifier), opt("cov3D_precomp"), f(s.viewmatrix), f(s.projmatrix),
        float(s.tanfovx), float(s.tanfovy), s.image_height, s.image_width, opt("shs"), s.sh_degree, f(s.campos),
        bool(s.antialiasing), kwargs.pop("compute_stats", False), kwargs.pop("pixel_weights", empty), **kwargs,
    )


def assert_radii_match(name, actual, expected, max_flips):
    """Integer radii of two float32 computations: equal except where the ceil
    of 3 sqrt(lambda) rounds across an integer (at most max_flips, by 1)."""
    off = (actual.long() - expected.long()).abs()
    if off.numel() == 0:
        return
    assert off.max().item() <= 1, f"{name}: radii differ by {off.max().item()}"
    assert int((off > 0).sum()) <= max_flips, f"{name}: {int((off > 0).sum())} radii differ: {off.nonzero().flatten()[:20]}"


def assert_grads(prefix, actual, expected, names=None):
    names = names or [k for k in expected]
    checked = []
    for name in names:
        assert name in actual, f"{prefix}: no gradient for {name}"
        assert actual[name].shape == expected[name].shape, f"{prefix} d/d{name}: shape mismatch"
        assert_close(f"{prefix} d/d{name}", actual[name], expected[name], **GRAD_TOL)
        checked.append(name)
    return checked


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("make_scene", list(all_scenes()))
def test_forward_matches_cpu_and_oracle(make_scene):
    scene = make_scene()
    color, importance, radii, _ = run_backend(scene, DEV)
    c_color, c_importance, c_radii, _ = run_backend(scene, CPU)
    ref, _ = run_oracle(scene)
    H, W = scene.settings.image_height, scene.settings.image_width
    assert color.shape == (3, H, W) and importance.shape == (H, W) and radii.dtype == torch.int32
    assert (radii > 0).sum() > 0, "scene draws nothing: the test would be vacuous"

    assert_radii_match("cuda vs cpu", radii, c_radii, max_flips=1)
    assert_radii_match("cuda vs oracle", radii, ref.radii, max_flips=max(1, radii.numel() // 20))
    assert int(((radii > 0) != (c_radii > 0)).sum()) == 0, "visibility differs from the CPU backend"
    assert_close("color cuda vs cpu", color, c_color, **COLOR_TOL)
    assert_close("importance cuda vs cpu", importance, c_importance, **COLOR_TOL)
    assert_close("color cuda vs oracle", color, ref.color, **COLOR_TOL)
    assert_close("importance cuda vs oracle", importance, ref.importance_map, **COLOR_TOL)


def named_state(outputs):
    """The forward state of either backend (rasterize_points.h), by name: the
    CPU's splat records read as the CUDA backend's per-Gaussian arrays (the
    record holds 1 / depth), and the tensors both have."""
    state = outputs[5:-4]
    if len(state) == 7:  # the CPU's: splat_records, then the common ones
        records = state[0]
        named = dict(means2D=records[:, 0:2], conic_opacity=records[:, 2:6], colors=records[:, 6:9],
                     inverse_depths=records[:, 10])
        common = state[1:]
    else:  # the CUDA's: means2D, depths, conic_opacity, colors, ..., entry_slots (empty), ...
        assert len(state) == 11, len(state)
        assert state[8].numel() == 0 and state[8].dtype == torch.int64, "entry_slots: empty int64"
        named = dict(means2D=state[0], conic_opacity=state[2], colors=state[3], inverse_depths=1.0 / state[1])
        common = state[4:8] + state[9:]
    names = ["tiles_touched", "gaussian_offsets", "tile_ranges", "point_list", "final_T", "n_contrib"]
    named.update(zip(names, common))
    return named


@needs_kernels
@pytest.mark.parametrize("make_scene", list(all_scenes()))
def test_forward_state_matches_cpu(make_scene):
    """The outputs have the CPU's order, shapes and dtypes, and the forward
    state the same values where both backends keep them (each keeps its own
    layout of the per-Gaussian values: rasterize_points.h)."""
    scene = make_scene()
    ours = [t.to(CPU) for t in raw_forward(scene, DEV)]
    cpu = raw_forward(scene, CPU)
    names = ["color", "importance_map", "radii", "invdepth", "alpha"]
    stat_names = ["accum_weight", "hit_count", "max_weight", "top_count"]
    for name, a, b in zip(names + stat_names, ours[:5] + ours[-4:], cpu[:5] + cpu[-4:]):
        assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} vs CPU {b.dtype}"
        assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} vs CPU {tuple(b.shape)}"
    o, c = named_state(ours), named_state(cpu)
    for name in o:
        assert o[name].dtype == c[name].dtype, f"{name}: dtype {o[name].dtype} vs CPU {c[name].dtype}"
    visible = cpu[2] > 0
    # per-Gaussian floats: a few ulp apart, more for the conic of a thin
    # splat (its determinant cancels); the images and gradients are checked
    # tightly elsewhere
    for name in ("means2D", "inverse_depths", "conic_opacity", "colors"):
        assert_close(name, o[name][visible], c[name][visible], rtol=1e-4, atol_rel=1e-5)
    for name in ("tiles_touched", "gaussian_offsets", "tile_ranges"):
        assert torch.equal(o[name], c[name]), name
    assert torch.equal(o["point_list"], c["point_list"]), "depth order within tiles differs from the CPU backend"
    assert_close("final_T", o["final_T"], c["final_T"], rtol=1e-5, atol_rel=0.0, atol_abs=5e-6)
    n_contrib = o["n_contrib"]
    assert int((n_contrib != c["n_contrib"]).sum()) <= max(1, n_contrib.numel() // 1000), "n_contrib differs"


# ---------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("make_scene", list(all_scenes()))
def test_gradients_match_cpu_and_oracle(make_scene):
    scene = make_scene()
    up = upstream(scene.settings)
    _, _, _, grads = run_backend(scene, DEV, up)
    _, _, _, c_grads = run_backend(scene, CPU, up)
    _, ref_grads = run_oracle(scene, up)
    expected_names = [k for k, v in scene.inputs.items() if v is not None]
    assert sorted(grads) == sorted(expected_names), f"gradients returned for {sorted(grads)}"
    for name in expected_names:
        assert torch.isfinite(grads[name]).all(), f"d/d{name}: non-finite"
        assert ref_grads[name].abs().max() > 0, f"{name}: oracle gradient all zero, the check would be vacuous"
    assert_grads("cuda vs cpu", grads, c_grads, expected_names)
    checked = assert_grads("cuda vs oracle", grads, ref_grads, expected_names)
    assert {"means3D", "means2D", "opacities", "importances"} <= set(checked)


@needs_kernels
@pytest.mark.parametrize("antialiasing", [False, True])
@pytest.mark.parametrize("make_scene", [p for p in all_scenes() if p.id in ("sh3", "cov3D_precomp", "opaque_early_stop")])
def test_invdepth_alpha_and_antialiasing_match_cpu_and_oracle(make_scene, antialiasing):
    """The issue-4 outputs on the GPU: all four maps and every gradient, with
    upstream gradients on all four, with and without antialiasing."""
    scene = make_scene()
    scene = scene._replace(settings=scene.settings._replace(antialiasing=antialiasing))
    up = upstream(scene.settings, seed=21)
    out, grads = run_backend(scene, DEV, up, full=True)
    c_out, c_grads = run_backend(scene, CPU, up, full=True)
    ref, ref_grads = run_oracle(scene, up)
    assert out.invdepth.max() > 0.1
    for m in MAPS:
        assert_close(f"{m} cuda vs cpu", getattr(out, m), getattr(c_out, m), **COLOR_TOL)
        assert_close(f"{m} cuda vs oracle", getattr(out, m), getattr(ref, m), **COLOR_TOL)
    names = [k for k, v in scene.inputs.items() if v is not None]
    assert_grads("cuda vs cpu", grads, c_grads, names)
    assert_grads("cuda vs oracle", grads, ref_grads, names)


@needs_kernels
@pytest.mark.parametrize("make_scene", [p for p in all_scenes() if p.id in ("sh3", "many_layers", "opaque_early_stop")])
def test_statistics_match_cpu(make_scene):
    """Atomic per-Gaussian statistics on the GPU against the CPU's (whose
    brute-force check is tests/test_stats.py), with a pixel weight map."""
    scene = make_scene()
    H, W = scene.settings.image_height, scene.settings.image_width
    pw = torch.rand(H, W, generator=torch.Generator().manual_seed(2))
    results = []
    for device in (DEV, CPU):
        s = settings_on(scene.settings, device)
        x = cast_inputs(scene.inputs, device=device)
        results.append(GaussianRasterizer(s).render(**x, stats=True, pixel_weights=pw.to(device)).stats)
    gpu, cpu = ([t.to(CPU) for t in r] for r in results)
    assert cpu[1].sum() > 100
    assert_close("accum_weight", gpu[0], cpu[0], rtol=1e-5, atol_rel=0.0, atol_abs=1e-5)
    assert_close("max_weight", gpu[2], cpu[2], rtol=1e-5, atol_rel=0.0, atol_abs=1e-6)
    # integer counts: equal but for a pixel whose alpha or top contributor
    # flips on float rounding between the two backends
    for i in (1, 3):
        assert (gpu[i] - cpu[i]).abs().sum() <= max(2, int(cpu[i].sum()) // 5000)


@needs_kernels
def test_importance_gradient_is_total_blending_weight():
    """With dL/dimportance_map = 1 (and no colour loss), dL/do_i is Gaussian
    i's total blending weight sum_p alpha_i T_i: the oracle's weights."""
    scene = random_scene(150, 41, 67, seed=31, sh_degree=2, bg=(0.4, 0.4, 0.4))
    settings = settings_on(scene.settings, DEV)
    inputs = requires_grad_(cast_inputs(scene.inputs, device=DEV), ["importances"])
    color, importance, _ = GaussianRasterizer(settings)(**inputs)
    torch.autograd.backward([color, importance], [torch.zeros_like(color), torch.ones_like(importance)])
    ref = rasterize_reference(**cast_inputs(scene.inputs, F64), raster_settings=scene.settings)
    total_weight = ref.weights.sum(dim=(1, 2))
    assert (total_weight > 0).sum() > 20
    assert_close("d importance_map.sum() / d importances", inputs["importances"].grad.reshape(-1).to(CPU),
                 total_weight, rtol=1e-4, atol_rel=0, atol_abs=1e-5)


@needs_kernels
def test_backward_is_reproducible_to_rounding():
    """Atomic sums make CUDA gradients order-dependent: two runs agree to
    float32 rounding, not necessarily bit for bit."""
    scene = many_layers_scene()
    up = upstream(scene.settings, seed=3)
    _, _, _, a = run_backend(scene, DEV, up)
    _, _, _, b = run_backend(scene, DEV, up)
    for name in a:
        assert_close(f"run 1 vs run 2 d/d{name}", a[name], b[name], rtol=1e-4, atol_rel=1e-5)


# ---------------------------------------------------------------------------
# Garden
# ---------------------------------------------------------------------------


@needs_kernels
@needs_garden()
def test_garden_matches_cpu():
    """The full garden scene (111,785 Gaussians, 648 x 420): forward, binning
    and every gradient, CUDA against CPU (the oracle cannot hold this scene)."""
    scene = garden_scene(GARDEN_NPZ)
    P = scene.inputs["means3D"].shape[0]
    up = upstream(scene.settings, seed=5)
    color, importance, radii, grads = run_backend(scene, DEV, up)
    c_color, c_importance, c_radii, c_grads = run_backend(scene, CPU, up)
    assert_radii_match("garden radii", radii, c_radii, max_flips=max(3, P // 10000))
    assert int(((radii > 0) != (c_radii > 0)).sum()) <= max(3, P // 10000)
    # a rare pixel may stop one splat earlier or later (T or alpha on a
    # threshold after different rounding): allow a handful of pixels
    for name, a, b in (("color", color, c_color), ("importance", importance, c_importance)):
        err = (a - b).abs()
        bad = err > 5e-6 + 1e-5 * b.abs()
        assert int(bad.sum()) <= max(5, err.numel() // 20000), f"garden {name}: {int(bad.sum())} entries off"
        assert err.max() < 0.05, f"garden {name}: max error {err.max().item()}"
    assert_grads("garden cuda vs cpu", grads, c_grads)

    ours = [t.to(CPU) for t in raw_forward(scene, DEV)]
    cpu = raw_forward(scene, CPU)
    if torch.equal(ours[7], cpu[7]):  # same tiles_touched: the sorted lists hold the same entries per tile
        assert torch.equal(ours[9], cpu[9]), "tile_ranges differ"
        ranges = cpu[9]
        for t in torch.randperm(ranges.numel() - 1, generator=torch.Generator().manual_seed(0))[:200].tolist():
            lo, hi = int(ranges[t]), int(ranges[t + 1])
            # the same Gaussians; the order may differ only between (near-)equal depths
            assert torch.equal(ours[10][lo:hi].sort().values, cpu[10][lo:hi].sort().values), f"tile {t}"


@needs_kernels
@needs_garden()
def test_garden_subset_matches_oracle():
    scene = garden_subset()
    up = upstream(scene.settings, seed=7)
    color, importance, radii, grads = run_backend(scene, DEV, up)
    ref, ref_grads = run_oracle(scene, up)
    assert (radii > 0).sum() > 50, "too few visible Gaussians for a meaningful check"
    assert_radii_match("garden subset vs oracle", radii, ref.radii, max_flips=max(1, radii.numel() // 20))
    assert_close("color", color, ref.color, **COLOR_TOL)
    assert_close("importance", importance, ref.importance_map, **COLOR_TOL)
    assert_grads("garden subset cuda vs oracle", grads, ref_grads)


@needs_kernels
@needs_garden()
def test_garden_importance_gradient_is_total_blending_weight():
    scene = garden_subset(n=800, downscale=4, seed=1)
    settings = settings_on(scene.settings, DEV)
    inputs = requires_grad_(cast_inputs(scene.inputs, device=DEV), ["importances"])
    color, importance, _ = GaussianRasterizer(settings)(**inputs)
    torch.autograd.backward([color, importance], [torch.zeros_like(color), torch.ones_like(importance)])
    ref = rasterize_reference(**cast_inputs(scene.inputs, F64), raster_settings=scene.settings)
    total_weight = ref.weights.sum(dim=(1, 2))
    assert (total_weight > 0).sum() > 50
    assert_close("garden d importance_map.sum() / d importances", inputs["importances"].grad.reshape(-1).to(CPU),
                 total_weight, rtol=1e-4, atol_rel=0, atol_abs=1e-5)


# ---------------------------------------------------------------------------
# Degenerate input, markVisible, debug mode
# ---------------------------------------------------------------------------


from test_degenerate import gaussians as _gaussians, identity_camera as _identity_camera  # noqa: E402


def _degenerate_cases():
    from diff_gaussian_rasterization_ks.scenes import Scene

    near = torch.tensor([[0.0, 0.0, 0.2], [0.0, 0.0, 0.2000001], [0.05, 0.0, 0.25], [0.0, 0.0, -1.0]])
    yield "zero_gaussians", Scene(_gaussians(torch.zeros(0, 3)), _identity_camera(20, 30))
    yield "all_culled", Scene(_gaussians(torch.tensor([[0.0, 0.0, -1.0], [0.1, 0.0, 0.1], [1e6, 0.0, 5.0]])),
                              _identity_camera(20, 30))
    yield "near_plane", Scene(_gaussians(near, scale=0.02), _identity_camera(17, 19))
    yield "one_pixel", Scene(_gaussians(torch.tensor([[0.0, 0.0, 2.0], [0.01, 0.0, 3.0]])), _identity_camera(1, 1))
    yield "huge", Scene(_gaussians(torch.tensor([[0.0, 0.0, 3.0], [0.5, 0.2, 4.0]]), scale=50.0), _identity_camera(33, 18))
    yield "thin", Scene(dict(_gaussians(torch.tensor([[0.0, 0.0, 3.0], [0.1, 0.1, 3.5]])),
                             scales=torch.tensor([[1e-7, 0.3, 1e-7], [0.5, 1e-8, 1e-8]])), _identity_camera(31, 29))
    yield "far_offscreen", Scene(_gaussians(torch.tensor([[1e4, 1e4, 3.0], [-1e5, 0.0, 2.0], [0.0, 0.0, 3.0]])),
                                 _identity_camera(16, 16))


@needs_kernels
@pytest.mark.parametrize("case", list(_degenerate_cases()), ids=lambda c: c[0])
def test_degenerate_input_matches_cpu(case):
    _, scene = case
    up = upstream(scene.settings, seed=11)
    color, importance, radii, grads = run_backend(scene, DEV, up)
    c_color, c_importance, c_radii, c_grads = run_backend(scene, CPU, up)
    assert torch.isfinite(color).all() and torch.isfinite(importance).all()
    assert torch.equal(radii > 0, c_radii > 0)
    assert_close("color", color, c_color, **COLOR_TOL)
    assert_close("importance", importance, c_importance, **COLOR_TOL)
    for name, g in grads.items():
        assert torch.isfinite(g).all(), f"d/d{name}: non-finite"
    assert_grads("cuda vs cpu", grads, c_grads)


@needs_kernels
def test_mark_visible_matches_cpu():
    scene = random_scene(300, 30, 40, seed=12, behind_fraction=0.3)
    expected = GaussianRasterizer(scene.settings).markVisible(scene.inputs["means3D"])
    settings = settings_on(scene.settings, DEV)
    got = GaussianRasterizer(settings).markVisible(scene.inputs["means3D"].to(DEV))
    assert got.device.type == DEV.type and got.dtype == torch.bool
    assert torch.equal(got.to(CPU), expected)
    assert 0 < int(expected.sum()) < 300


@needs_kernels
def test_debug_mode_gives_the_same_result():
    """debug=True synchronises after every stage (and names a failing one);
    the results are those of the normal mode."""
    if DEV.type != "cuda":
        pytest.skip("the debug flag belongs to the CUDA entry points")
    scene = random_scene(100, 30, 45, seed=13, sh_degree=1)
    plain = raw_forward(scene, DEV)
    debug = raw_forward(scene, DEV, debug=True)
    for a, b in zip(plain, debug):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(plain[0], debug[0]) and torch.equal(plain[2], debug[2])


@needs_kernels
def test_mismatched_devices_raise():
    """Every tensor must be on the device of means3D: a CPU tensor mixed into
    a CUDA call is an error, not an illegal memory access."""
    if DEV.type != "cuda":
        pytest.skip("needs two devices")
    scene = random_scene(20, 16, 16, seed=14)
    kernels = _backend.kernels_for(DEV)
    x = cast_inputs(scene.inputs, device=DEV)
    s = scene.settings
    empty = torch.empty(0, device=DEV)
    with pytest.raises(RuntimeError, match="same CUDA device"):
        kernels.forward(s.bg.to(DEV), x["means3D"], x["colors_precomp"], x["opacities"].reshape(-1),
                        torch.ones(20),  # importances left on the CPU
                        x["scales"], x["rotations"], 1.0, empty, s.viewmatrix.to(DEV), s.projmatrix.to(DEV),
                        float(s.tanfovx), float(s.tanfovy), 16, 16, empty, 0, s.campos.to(DEV), False, False, empty)
