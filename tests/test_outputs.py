"""Inverse depth, alpha and antialiasing (issue 4), through the named-output
call `GaussianRasterizer.render`."""
import pytest
import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer, RenderOutput, rasterize_reference
from diff_gaussian_rasterization_ks import _C
from diff_gaussian_rasterization_ks.scenes import cast_inputs, random_scene, requires_grad_

from conftest import assert_close
from test_forward_parity import SCENES, opaque_scene
from test_gradients import TOLERANCES

MAPS = ("color", "importance_map", "invdepth", "alpha")


def with_antialiasing(scene, on):
    return scene._replace(settings=scene.settings._replace(antialiasing=on))


def scenes():
    for antialiasing in (False, True):
        for name, kwargs in (SCENES[0], SCENES[4], SCENES[5], SCENES[6]):
            yield pytest.param(lambda kw=kwargs, aa=antialiasing: with_antialiasing(random_scene(**kw), aa),
                               id=f"{name}-aa{int(antialiasing)}")
        yield pytest.param(lambda aa=antialiasing: with_antialiasing(opaque_scene(), aa), id=f"opaque-aa{int(antialiasing)}")


@pytest.mark.parametrize("make_scene", list(scenes()))
def test_all_four_maps_and_their_gradients_match_the_oracle(make_scene):
    scene = make_scene()
    H, W = scene.settings.image_height, scene.settings.image_width
    g = torch.Generator().manual_seed(3)
    upstream = {"color": torch.randn(3, H, W, generator=g, dtype=torch.float64),
                "importance_map": torch.randn(H, W, generator=g, dtype=torch.float64),
                "invdepth": torch.randn(1, H, W, generator=g, dtype=torch.float64),
                "alpha": torch.randn(1, H, W, generator=g, dtype=torch.float64)}

    ours = requires_grad_(scene.inputs)
    out = GaussianRasterizer(scene.settings).render(**ours)
    sum(((getattr(out, m).double() * upstream[m]).sum() for m in MAPS)).backward()
    oracle = requires_grad_(cast_inputs(scene.inputs, torch.float64))
    ref = rasterize_reference(**oracle, raster_settings=scene.settings)
    sum(((getattr(ref, m) * upstream[m]).sum() for m in MAPS)).backward()

    assert out.invdepth.shape == (1, H, W) and out.alpha.shape == (1, H, W)
    assert out.invdepth.max() > 0.1, "scene draws too little to test inverse depth"
    for m in MAPS:
        assert_close(m, getattr(out, m), getattr(ref, m), rtol=1e-5, atol_rel=0, atol_abs=2e-6)
    for name, tensor in ours.items():
        if tensor is None:
            continue
        rtol, atol_rel = TOLERANCES[name]
        assert_close(f"d/d{name}", tensor.grad, oracle[name].grad, rtol=rtol, atol_rel=atol_rel)


def test_invdepth_is_the_image_of_inverse_depth_as_colour():
    scene = random_scene(120, 45, 61, seed=13, sh_degree=None)
    means = scene.inputs["means3D"]
    homogeneous = torch.cat([means, torch.ones(len(means), 1)], 1)
    z = (homogeneous @ scene.settings.viewmatrix)[:, 2]
    inv_z = torch.where(z > 0.2, 1.0 / z, torch.zeros_like(z))  # culled ones never blend
    rasterizer = GaussianRasterizer(scene.settings)
    out = rasterizer.render(**scene.inputs)
    as_colour = rasterizer.render(**dict(scene.inputs, colors_precomp=inv_z[:, None].repeat(1, 3).contiguous()))
    assert out.invdepth.max() > 0.1
    for ch in range(3):
        # 1/z of the kernel and of this matmul differ by float32 rounding only
        assert_close(f"channel {ch}", as_colour.color[ch], out.invdepth[0], rtol=1e-5, atol_rel=0, atol_abs=1e-7)


def test_render_returns_every_output_by_name_and_forward_stays_three_tensors():
    scene = random_scene(60, 30, 45, seed=14, sh_degree=1)
    rasterizer = GaussianRasterizer(scene.settings)
    out = rasterizer.render(**scene.inputs)
    assert isinstance(out, RenderOutput)
    assert out._fields == ("color", "importance_map", "radii", "invdepth", "alpha", "n_contrib", "stats")
    three = rasterizer(**scene.inputs)
    assert len(three) == 3
    for a, b in zip(three, out[:3]):
        assert torch.equal(a, b)
    assert out.n_contrib.dtype == torch.int32 and out.n_contrib.shape == (30, 45)
    assert (out.n_contrib >= 0).all() and out.n_contrib.max() > 0
    # importances default to ones: the importance map is the alpha map
    assert_close("alpha", out.alpha[0], rasterizer.render(**dict(scene.inputs, importances=None)).importance_map,
                 rtol=0, atol_rel=0, atol_abs=1e-6)


def test_antialias_ratio_gradient_is_exact_at_a_pinned_point():
    """At (a, b, c) = (0.5, 0.2, 0.8) the exact d(det0/det1)/da is about 0.391;
    the stock rasterizer's formula (det0 differentiated at the dilated
    entries) gives about 0.211."""
    ratio, da, db, dc = _C._antialias_ratio_and_grad(0.5, 0.2, 0.8)
    assert ratio == pytest.approx((0.5 * 0.8 - 0.04) / (0.8 * 1.1 - 0.04), rel=1e-6)
    assert da == pytest.approx(0.3912, abs=1e-3)
    assert abs(da - 0.211) > 0.15
    # and the other two entries against float64 central differences
    def r(a, b, c):
        return (a * c - b * b) / ((a + 0.3) * (c + 0.3) - b * b)
    h = 1e-6
    assert db == pytest.approx((r(0.5, 0.2 + h, 0.8) - r(0.5, 0.2 - h, 0.8)) / (2 * h), rel=1e-4)
    assert dc == pytest.approx((r(0.5, 0.2, 0.8 + h) - r(0.5, 0.2, 0.8 - h)) / (2 * h), rel=1e-4)


# The finite-difference test below checks our float32 backward end to end
# (through cov3D_precomp or scales); the pinned-point test above shows where
# the stock formula departs from the exact derivative.
def few_splats(use_cov3D_precomp):
    """A handful of mid-sized, semi-transparent splats away from every clamp,
    so the loss is smooth in the covariance and finite differences are valid."""
    scene = random_scene(5, 24, 32, seed=17, offscreen_fraction=0.0, behind_fraction=0.0,
                         scale_range=(0.03, 0.08), use_cov3D_precomp=use_cov3D_precomp)
    scene.inputs["opacities"] = torch.full((5, 1), 0.5)
    return with_antialiasing(scene, True)


@pytest.mark.parametrize("name", ["cov3D_precomp", "scales"])
def test_antialiasing_gradient_against_float64_finite_differences(name):
    scene = few_splats(use_cov3D_precomp=name == "cov3D_precomp")
    H, W = scene.settings.image_height, scene.settings.image_width
    up = torch.randn(3, H, W, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = requires_grad_(scene.inputs, [name])
    (GaussianRasterizer(scene.settings).render(**ours).color.double() * up).sum().backward()
    analytic = ours[name].grad.double()

    base = cast_inputs(scene.inputs, torch.float64)

    def loss(x):
        return (rasterize_reference(**dict(base, **{name: x}), raster_settings=scene.settings).color * up).sum()

    x0 = base[name]
    numeric = torch.zeros_like(x0)
    h = 1e-7 * x0.abs().max().item()
    for i in range(x0.numel()):
        step = torch.zeros_like(x0).flatten()
        step[i] = h
        step = step.view_as(x0)
        numeric.view(-1)[i] = (loss(x0 + step) - loss(x0 - step)) / (2 * h)
    assert numeric.abs().max() > 0
    # float32 analytic vs float64 finite differences of the same algorithm
    assert_close(f"d/d{name} with antialiasing", analytic, numeric, rtol=1e-3, atol_rel=1e-4)


def test_returned_tensors_are_ordinary_resizable_tensors():
    """Every tensor the caller gets (maps, radii, n_contrib, statistics,
    gradients) is an ordinary tensor: on the CPU its memory comes from the
    backend's pool, through an allocator that the storage keeps, so it can be
    resized like any other (its values kept, the new tail writable)."""
    scene = random_scene(120, 24, 32, seed=41)
    x = requires_grad_(scene.inputs)
    out = GaussianRasterizer(scene.settings).render(**x, stats=True)
    (out.color.sum() + out.importance_map.sum()).backward()
    returned = [out.color, out.importance_map, out.radii, out.invdepth, out.alpha, out.n_contrib, *out.stats]
    returned += [v.grad for v in x.values() if isinstance(v, torch.Tensor) and v.grad is not None]
    for t in returned:
        before = t.detach().clone().flatten()
        grown = t.detach().resize_(t.numel() + 4096)  # (raises for a from_blob storage)
        grown[-4096:] = 1
        assert torch.equal(grown[: before.numel()], before) and bool((grown[-4096:] == 1).all())
