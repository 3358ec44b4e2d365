"""Non-finite input: NaN or +-Inf in one Gaussian's attributes, and in the
camera.

The contract these tests hold the CPU backend to: a Gaussian with a
non-finite attribute is culled exactly like one behind the camera (radius 0,
every map as if it were absent, zero gradients), or the call raises a
ValueError that names the argument. Either way one bad Gaussian never
poisons the image or the other Gaussians' gradients.

Today the rasterizer culls a Gaussian whose projected mean, conic or radius
is not finite, which covers means3D, scales, rotations and cov3D_precomp.
Opacities, importances, colors_precomp and shs are not checked: the cases
that break the contract are marked xfail(strict=True) with what happens
instead, so they turn into failures (to un-mark) once the fix lands. Camera
matrices with NaN or Inf are a ValueError already (_validation.py).
"""
import pytest
import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer

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

# What happens today where the contract does not hold. Each of these cases
# fails the test it is listed for (checked); every other case passes.
_TODAY = {
    ("opacities", NAN): "NaN opacity: fminf(0.99, NaN * G) is 0.99, so the splat is blended at alpha 0.99 over "
                        "its whole tile rectangle (a hard-edged opaque block, far outside its footprint), and its "
                        "own means3D/means2D/scales/rotations gradients are NaN",
    ("opacities", INF): "+Inf opacity: alpha is 0.99 over its whole tile rectangle (Inf * G, and Inf * 0 = NaN "
                        "where G underflows, both give 0.99 through fminf): a hard-edged opaque block",
    ("opacities", -INF): "-Inf opacity: never blended (alpha < 1/255) but radius > 0, so not culled",
    ("importances", NAN): "importance map NaN over the splat, and NaN gradients for the Gaussians in front of it, "
                          "even where dL/dO = 0 ((o - O_after) * 0 is NaN)",
    ("colors_precomp", NAN): "image NaN over the splat, and NaN gradients for the Gaussians in front of it",
    ("shs", NAN): "colour NaN: image NaN over the splat, and NaN gradients for the Gaussians in front of it",
}
for _name, _what in (("importances", "importance map"), ("colors_precomp", "image"), ("shs", "image")):
    for _value in (INF, -INF):
        _TODAY[(_name, _value)] = (f"{_value} {_name}: {_what} +-Inf or NaN over the splat, and NaN gradients for "
                                   "the Gaussians in front of it")
_TODAY[("shs", -INF, 0)] = ("-Inf DC coefficient: that colour channel is -Inf, clamped to 0 (its gradient masked), so "
                            "nothing goes non-finite, but the Gaussian is drawn black instead of being culled")

FIX = ("fix: cull a Gaussian whose opacity, importance or colour (colors_precomp, or each SH coefficient used) "
       "is not finite in the preprocess, as for a non-finite conic; or raise ValueError in _validation.py")


def known_failure(test, name, index, value):
    """Why `test` fails today for this case, or None."""
    why = _TODAY.get((name, value, index), _TODAY.get((name, value)))
    if why is None:
        return None
    if test == "culled":
        return why
    # "poisons": outside the bad Gaussian nothing may change or go non-finite
    if name == "opacities":
        return why if value != -INF else None
    if name == "shs" and value == -INF and index == 0:
        return None
    return why


def cases(test):
    for name, index, scene in ATTRIBUTES:
        for value in (NAN, INF, -INF):
            why = known_failure(test, name, index, value)
            marks = [pytest.mark.xfail(strict=True, reason=f"{why}; {FIX}")] if why else []
            yield pytest.param(name, index, scene, value, marks=marks, id=f"{name}[{index}]={value}")


def render_or_value_error(settings, inputs, name):
    """The render and its backward, or None when the call raised a
    ValueError naming `name` (the other acceptable answer)."""
    try:
        return render_and_backward(settings, inputs, upstream_gradients(H, W, seed=1))
    except ValueError as error:
        assert name in str(error), f"ValueError does not name {name}: {error}"
        return None


@pytest.mark.parametrize("name,index,scene,value", list(cases("culled")))
def test_gaussian_with_a_non_finite_attribute_is_culled(name, index, scene, value):
    settings, inputs = stack_scene(**scene)
    result = render_or_value_error(settings, poisoned(inputs, name, index, value), name)
    if result is None:
        return
    out, grads = result
    ref_out, ref_grads = render_and_backward(settings, without(inputs, VICTIM), upstream_gradients(H, W, seed=1))
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


@pytest.mark.parametrize("name,index,scene,value", list(cases("poisons")))
def test_gaussian_with_a_non_finite_attribute_never_poisons_the_rest(name, index, scene, value):
    """The weaker property: every map stays finite everywhere, pixels outside
    far from the bad Gaussian (beyond 3 sigma, though inside its tile
    rectangle) are bit for bit unchanged, and every other Gaussian's
    gradient is finite."""
    settings, inputs = stack_scene(**scene)
    result = render_or_value_error(settings, poisoned(inputs, name, index, value), name)
    if result is None:
        return
    out, grads = result
    clean, _ = render_and_backward(settings, inputs, upstream_gradients(H, W, seed=1))
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


def test_the_victim_overlaps_its_neighbours():
    """Guards the two tests above against being vacuous: with the victim
    removed, the Gaussians in front of it get different gradients."""
    settings, inputs = stack_scene()
    _, grads = render_and_backward(settings, inputs, upstream_gradients(H, W, seed=1))
    _, grads_without = render_and_backward(settings, without(inputs, VICTIM), upstream_gradients(H, W, seed=1))
    assert not torch.allclose(grads["opacities"][:VICTIM], grads_without["opacities"][:VICTIM], rtol=1e-3)


def test_nan_in_unused_sh_coefficients_is_ignored():
    """Only the first (sh_degree + 1)^2 coefficients are read, forward and
    backward: NaN beyond them changes nothing."""
    settings, inputs = stack_scene(sh_degree=3)
    settings = settings._replace(sh_degree=1)
    clean = render_and_backward(settings, inputs, upstream_gradients(H, W, seed=1))
    dirty = dict(inputs, shs=inputs["shs"].clone())
    dirty["shs"][:, 4:] = NAN
    out, grads = render_and_backward(settings, dirty, upstream_gradients(H, W, seed=1))
    for m in MAPS:
        assert torch.equal(getattr(out, m), getattr(clean[0], m)), m
    for k, g in grads.items():
        if g is not None:
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
