"""Non-finite input: NaN or +-Inf in one Gaussian's attributes, and in the
camera.

The contract: a Gaussian with a non-finite attribute (means3D, scales,
rotations, cov3D_precomp, opacity, importance, its colors_precomp row or an
SH coefficient the degree uses) is culled exactly like one behind the
camera (radius 0, every map as if it were absent, zero gradients), or the
call raises a ValueError that names the argument. Either way one bad
Gaussian never poisons the image or the other Gaussians' gradients. The
compiled CPU backend, the CUDA backend (where a GPU is present) and the
pure-PyTorch reference are all held to it. Camera matrices with NaN or Inf
are a ValueError (_validation.py).
"""
import pytest
import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer, _backend

from reliability_support import MAPS, identity_camera, render_and_backward, upstream_gradients

NAN, INF = float("nan"), float("inf")
H, W = 24, 32
VICTIM = 2


def stack_scene(sh_degree=None, cov3D=False):
    """Six Gaussians seen by an identity camera: five overlapping ones at
    depths 2.0 .. 4.0 around the image centre (the victim, index 2, has two
    in front of it and two behind), and one alone in the top-left corner,
    well away from the others."""
    means = torch.tensor([[0.05, 0.0, 2.0], [-0.1, 0.05, 2.5], [0.0, 0.0, 3.0], [0.1, -0.05, 3.5],
                          [0.0, 0.1, 4.0], [-1.05, -0.6, 3.0]])
    P = means.shape[0]
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.25, 0.2, 0.3]).repeat(P, 1)
    scales[5] = 0.05
    rotations = torch.nn.functional.normalize(torch.randn(P, 4, generator=g), dim=1)
    inputs = dict(means3D=means, means2D=torch.zeros(P, 3), opacities=torch.full((P, 1), 0.6),
                  importances=0.5 + torch.rand(P, 1, generator=g), shs=None, colors_precomp=None,
                  scales=scales, rotations=rotations, cov3D_precomp=None)
    if sh_degree is None:
        inputs["colors_precomp"] = torch.rand(P, 3, generator=g)
    else:
        shs = 0.2 * torch.randn(P, (sh_degree + 1) ** 2, 3, generator=g)
        shs[:, 0] = 1.0
        inputs["shs"] = shs
    if cov3D:
        from diff_gaussian_rasterization_ks.reference import covariance_from_scales_rotations

        S = covariance_from_scales_rotations(scales.double(), rotations.double())
        inputs["cov3D_precomp"] = torch.stack([S[:, 0, 0], S[:, 0, 1], S[:, 0, 2], S[:, 1, 1], S[:, 1, 2],
                                               S[:, 2, 2]], 1).float()
        inputs["scales"] = inputs["rotations"] = None
    inputs = {k: (v.contiguous() if v is not None else None) for k, v in inputs.items()}
    settings = identity_camera(H, W, tanfovx=0.5)._replace(sh_degree=0 if sh_degree is None else sh_degree)
    return settings, inputs


def without(inputs, i):
    keep = torch.arange(inputs["means3D"].shape[0]) != i
    return {k: (v[keep].contiguous() if v is not None else None) for k, v in inputs.items()}


def poisoned(inputs, name, index, value):
    x = dict(inputs)
    t = x[name].clone()
    t[VICTIM].view(-1)[index] = value
    x[name] = t
    return x


# (argument, flat index inside the victim's row, scene) for every Gaussian
# attribute; shs index 3 * 9 + 1 is coefficient 9 (degree 3), channel 1.
ATTRIBUTES = [
    ("means3D", 0, {}), ("means3D", 2, {}),
    ("scales", 1, {}),
    ("rotations", 0, {}), ("rotations", 2, {}),
    ("cov3D_precomp", 0, dict(cov3D=True)), ("cov3D_precomp", 1, dict(cov3D=True)),
    ("opacities", 0, {}),
    ("importances", 0, {}),
    ("colors_precomp", 0, {}),
    ("shs", 0, dict(sh_degree=3)), ("shs", 3 * 9 + 1, dict(sh_degree=3)),
]

def cases():
    for name, index, scene in ATTRIBUTES:
        for value in (NAN, INF, -INF):
            yield pytest.param(name, index, scene, value, id=f"{name}[{index}]={value}")


@pytest.fixture(params=["cpu", "cuda", "reference"])
def backend(request, monkeypatch):
    """The compiled CPU or CUDA backend, or the pure-PyTorch reference (the
    fallback where no kernel exists for the device) forced for the test."""
    if request.param == "reference":
        monkeypatch.setattr(_backend, "kernels_for", lambda device: None)
        monkeypatch.setattr(_backend, "_warned", {"cpu"})  # no fallback warning
    elif request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    elif _backend.kernels_for(torch.device(request.param)) is None:
        pytest.skip(f"the compiled extension has no {request.param} kernels")
    return request.param


def run(backend, settings, inputs):
    """render_and_backward on `backend` (fixed upstream gradients), with
    every result on the CPU."""
    upstream = upstream_gradients(H, W, seed=1)
    if backend != "cuda":
        return render_and_backward(settings, inputs, upstream)
    move = lambda t: t.cuda() if isinstance(t, torch.Tensor) else t  # noqa: E731
    settings = settings._replace(bg=move(settings.bg), viewmatrix=move(settings.viewmatrix),
                                 projmatrix=move(settings.projmatrix), campos=move(settings.campos))
    out, grads = render_and_backward(settings, {k: move(v) for k, v in inputs.items()},
                                     {k: move(v) for k, v in upstream.items()})
    out = out._replace(**{f: v.cpu() for f, v in out._asdict().items() if isinstance(v, torch.Tensor)})
    return out, {k: (g.cpu() if g is not None else None) for k, g in grads.items()}


def render_or_value_error(backend, settings, inputs, name):
    """The render and its backward, or None when the call raised a
    ValueError naming `name` (the other acceptable answer)."""
    try:
        return run(backend, settings, inputs)
    except ValueError as error:
        assert name in str(error), f"ValueError does not name {name}: {error}"
        return None


@pytest.mark.parametrize("name,index,scene,value", list(cases()))
def test_gaussian_with_a_non_finite_attribute_is_culled(backend, name, index, scene, value):
    settings, inputs = stack_scene(**scene)
    result = render_or_value_error(backend, settings, poisoned(inputs, name, index, value), name)
    if result is None:
        return
    out, grads = result
    ref_out, ref_grads = run(backend, settings, without(inputs, VICTIM))
    assert out.radii[VICTIM] == 0, f"not culled: radius {out.radii[VICTIM].item()}"
    others = torch.arange(len(out.radii)) != VICTIM
    assert torch.equal(out.radii[others], ref_out.radii)
    for m in MAPS:
        # the same splats in the same order: equal up to float32 rounding
        torch.testing.assert_close(getattr(out, m), getattr(ref_out, m), rtol=1e-6, atol=1e-6, msg=m)
    for k, g in grads.items():
        if g is None:
            continue
        assert torch.equal(g[VICTIM], torch.zeros_like(g[VICTIM])), f"d/d{k} of the culled Gaussian: {g[VICTIM]}"
        torch.testing.assert_close(g[others], ref_grads[k], rtol=1e-5, atol=1e-6, msg=f"d/d{k}")


@pytest.mark.parametrize("name,index,scene,value", list(cases()))
def test_gaussian_with_a_non_finite_attribute_never_poisons_the_rest(backend, name, index, scene, value):
    """The weaker property: every map stays finite everywhere, pixels outside
    far from the bad Gaussian (beyond 3 sigma, though inside its tile
    rectangle) are bit for bit unchanged, and every other Gaussian's
    gradient is finite."""
    settings, inputs = stack_scene(**scene)
    result = render_or_value_error(backend, settings, poisoned(inputs, name, index, value), name)
    if result is None:
        return
    out, grads = result
    clean, _ = run(backend, settings, inputs)
    for m in MAPS:
        assert torch.isfinite(getattr(out, m)).all(), f"{m}: non-finite pixels"
    # the lone Gaussian in the corner does not overlap the victim's footprint
    corner = (..., slice(0, 6), slice(0, 6))
    assert clean.color[corner].sub(settings.bg.view(3, 1, 1)).abs().amax() > 0.05, "corner splat not drawn"
    for m in MAPS:
        assert torch.equal(getattr(out, m)[corner], getattr(clean, m)[corner]), f"{m}: corner pixels changed"
    others = torch.arange(len(out.radii)) != VICTIM
    for k, g in grads.items():
        if g is not None:
            assert torch.isfinite(g[others]).all(), f"d/d{k}: another Gaussian's gradient is not finite"


def test_the_victim_overlaps_its_neighbours(backend):
    """Guards the two tests above against being vacuous: with the victim
    removed, the Gaussians in front of it get different gradients."""
    settings, inputs = stack_scene()
    _, grads = run(backend, settings, inputs)
    _, grads_without = run(backend, settings, without(inputs, VICTIM))
    assert not torch.allclose(grads["opacities"][:VICTIM], grads_without["opacities"][:VICTIM], rtol=1e-3)


def test_nan_in_unused_sh_coefficients_is_ignored(backend):
    """Only the first (sh_degree + 1)^2 coefficients are read, forward and
    backward: NaN beyond them changes nothing."""
    settings, inputs = stack_scene(sh_degree=3)
    settings = settings._replace(sh_degree=1)
    clean = run(backend, settings, inputs)
    dirty = dict(inputs, shs=inputs["shs"].clone())
    dirty["shs"][:, 4:] = NAN
    out, grads = run(backend, settings, dirty)
    for m in MAPS:
        assert torch.equal(getattr(out, m), getattr(clean[0], m)), m
    for k, g in grads.items():
        if g is None:
            continue
        if backend == "cuda":  # sums by atomics: equal up to float32 rounding only
            torch.testing.assert_close(g, clean[1][k], rtol=1e-5, atol=1e-6, msg=f"d/d{k}")
        else:
            assert torch.equal(g, clean[1][k]), f"d/d{k}"


def test_means2D_values_are_ignored_by_the_compiled_backend():
    """means2D is a gradient sink (as in the stock rasterizer): the CPU
    backend never reads its values, so NaN there changes nothing."""
    settings, inputs = stack_scene()
    clean, _ = render_and_backward(settings, inputs, upstream_gradients(H, W, seed=1))
    out, grads = render_and_backward(settings, dict(inputs, means2D=torch.full_like(inputs["means2D"], NAN)),
                                     upstream_gradients(H, W, seed=1))
    for m in MAPS:
        assert torch.equal(getattr(out, m), getattr(clean, m)), m
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)


# ---------------------------------------------------------------------------
# The camera: ValueError before any kernel runs
# ---------------------------------------------------------------------------

def _with_element(t, value, index=0):
    t = t.clone()
    t.view(-1)[index] = value
    return t


CAMERA_CASES = []
for _field, _index in (("viewmatrix", 0), ("viewmatrix", 14), ("projmatrix", 5), ("projmatrix", 15), ("campos", 2),
                       ("bg", 1)):
    for _value in (NAN, INF, -INF):
        CAMERA_CASES.append(pytest.param(_field, _index, _value, id=f"{_field}[{_index}]={_value}"))


@pytest.mark.parametrize("field,index,value", CAMERA_CASES)
def test_non_finite_camera_tensor_raises_value_error(field, index, value):
    settings, inputs = stack_scene()
    bad = settings._replace(**{field: _with_element(getattr(settings, field), value, index)})
    with pytest.raises(ValueError, match=rf"raster_settings\.{field}: expected finite values"):
        GaussianRasterizer(bad)(**inputs)
    with pytest.raises(ValueError, match=rf"raster_settings\.{field}"):
        GaussianRasterizer(bad).markVisible(inputs["means3D"])


@pytest.mark.parametrize("field", ["tanfovx", "tanfovy", "scale_modifier"])
@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_non_finite_camera_number_raises_value_error(field, value):
    settings, inputs = stack_scene()
    with pytest.raises(ValueError, match=rf"raster_settings\.{field}: expected a finite"):
        GaussianRasterizer(settings._replace(**{field: value}))(**inputs)


def test_backward_gives_zeros_to_a_gaussian_that_became_non_finite_after_the_forward():
    """The raw backward re-runs the preprocess; if a Gaussian the forward drew
    is culled there (its opacity went NaN in between, e.g. a caller replaying
    the binding), its gradients are zeros, not whatever the output buffers
    held. Every other Gaussian's gradients are finite."""
    import reliability_support as rs

    settings, inputs = stack_scene(sh_degree=2)
    with rs.recorded_kernel_calls() as calls:
        render_and_backward(settings, inputs, upstream_gradients(H, W, seed=1))
    (args, kwargs), = calls["backward"]
    radii = calls["forward_results"][0][2]
    assert radii[VICTIM] > 0, "the victim was drawn in the forward"
    OPACITIES = 3  # the backward's positional arguments start like the forward's
    args = list(args)
    opacities = args[OPACITIES].clone()
    opacities.view(-1)[VICTIM] = NAN
    args[OPACITIES] = opacities
    from diff_gaussian_rasterization_ks import _C

    for _ in range(3):  # fresh output buffers each time; garbage would show in one of them
        for g in _C.rasterize_backward_cpu(*args, **kwargs):
            if g.numel() == 0:
                continue
            assert torch.isfinite(g).all()
            assert (g.reshape(g.shape[0], -1)[VICTIM] == 0).all()

