"""Per-Gaussian statistics (ALGORITHM.md, "Per-Gaussian statistics") against a
brute-force computation from the oracle's per-pixel blending weights."""
import pytest
import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer, rasterize_reference
from diff_gaussian_rasterization_ks.scenes import cast_inputs, random_scene, requires_grad_

from conftest import assert_close
from test_forward_parity import opaque_scene


def brute_force(weights, pixel_weights=None):
    """Straight from the definitions, pixel by pixel over the [P, H, W] weights."""
    P, H, W = weights.shape
    accum = torch.zeros(P, dtype=torch.float64)
    hits = torch.zeros(P, dtype=torch.int64)
    maxw = torch.zeros(P, dtype=torch.float64)
    tops = torch.zeros(P, dtype=torch.int64)
    for y in range(H):
        for x in range(W):
            w = weights[:, y, x]
            blended = (w > 0).nonzero().flatten()
            if len(blended) == 0:
                continue
            pw = 1.0 if pixel_weights is None else float(pixel_weights[y, x])
            accum[blended] += pw * w[blended]
            hits[blended] += 1
            maxw[blended] = torch.maximum(maxw[blended], w[blended])
            tops[blended[torch.argmax(w[blended])]] += 1
    return accum, hits, maxw, tops


SCENES = [
    pytest.param(lambda: random_scene(80, 40, 56, seed=31, sh_degree=2), id="random"),
    pytest.param(lambda: random_scene(60, 33, 47, seed=32, scale_range=(0.2, 0.8)), id="large_splats"),
    pytest.param(opaque_scene, id="opaque_early_stop"),
]


def render_stats(scene, pixel_weights=None):
    return GaussianRasterizer(scene.settings).render(**scene.inputs, stats=True, pixel_weights=pixel_weights).stats


@pytest.mark.parametrize("make_scene", SCENES)
def test_statistics_match_brute_force(make_scene):
    scene = make_scene()
    ref = rasterize_reference(**cast_inputs(scene.inputs, torch.float64), raster_settings=scene.settings)
    accum, hits, maxw, tops = brute_force(ref.weights)
    stats = render_stats(scene)
    assert stats.hit_count.dtype == torch.int32 and stats.top_count.dtype == torch.int32
    assert hits.sum() > 100 and (tops > 0).sum() > 5, "scene too sparse for the test to mean anything"
    # float32 sums over a few hundred pixels
    assert_close("accum_weight", stats.accum_weight, accum, rtol=1e-5, atol_rel=0, atol_abs=1e-5)
    assert_close("max_weight", stats.max_weight, maxw, rtol=1e-5, atol_rel=0, atol_abs=1e-6)
    assert torch.equal(stats.hit_count.long(), hits)
    assert torch.equal(stats.top_count.long(), tops)
    # every pixel with something blended has exactly one top contributor
    assert stats.top_count.sum() == int((ref.weights.amax(0) > 0).sum())


def test_pixel_weights_of_ones_and_masks():
    scene = random_scene(80, 40, 56, seed=33, sh_degree=1)
    plain = render_stats(scene)
    ones = render_stats(scene, torch.ones(40, 56))
    assert torch.equal(plain.accum_weight, ones.accum_weight)
    mask = torch.zeros(40, 56)
    mask[10:30, 5:40] = 1.0
    masked = render_stats(scene, mask)
    ref = rasterize_reference(**cast_inputs(scene.inputs, torch.float64), raster_settings=scene.settings)
    inside = ref.weights[:, 10:30, 5:40].sum(dim=(1, 2))
    assert_close("masked accum_weight", masked.accum_weight, inside, rtol=1e-5, atol_rel=0, atol_abs=1e-5)
    # only accum_weight is weighted
    for name in ("hit_count", "max_weight", "top_count"):
        assert torch.equal(getattr(masked, name), getattr(plain, name)), name
    # a real-valued weight map scales the sum pixel by pixel
    ramp = torch.linspace(0, 2, 56).expand(40, 56).contiguous()
    weighted = render_stats(scene, ramp)
    expected = (ref.weights * ramp.double()).sum(dim=(1, 2))
    assert_close("weighted accum_weight", weighted.accum_weight, expected, rtol=1e-5, atol_rel=0, atol_abs=1e-5)


def test_statistics_are_identical_for_any_thread_count():
    scene = random_scene(400, 70, 90, seed=34, scale_range=(0.05, 0.5))
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(render_stats(scene, torch.rand(70, 90, generator=torch.Generator().manual_seed(0))))
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_statistics_are_off_by_default_and_leave_the_image_unchanged():
    scene = random_scene(80, 40, 56, seed=35)
    r = GaussianRasterizer(scene.settings)
    off = r.render(**scene.inputs)
    on = r.render(**scene.inputs, stats=True)
    assert off.stats is None and on.stats is not None
    for name in ("color", "importance_map", "invdepth", "alpha", "radii", "n_contrib"):
        assert torch.equal(getattr(off, name), getattr(on, name)), name
    with pytest.raises(ValueError, match="pixel_weights: only used by the statistics"):
        r.render(**scene.inputs, pixel_weights=torch.ones(40, 56))
    with pytest.raises(ValueError, match=r"pixel_weights: expected shape \[40, 56\]"):
        r.render(**scene.inputs, stats=True, pixel_weights=torch.ones(56, 40))


def test_accum_weight_equals_the_importance_gradient():
    """Two routes to the blending-weight score: the statistic, and the
    importance gradient with dL/dO = 1."""
    scene = random_scene(80, 40, 56, seed=36, sh_degree=3)
    x = requires_grad_(scene.inputs, ["importances"])
    out = GaussianRasterizer(scene.settings).render(**x, stats=True)
    out.importance_map.sum().backward()
    assert_close("accum_weight vs d importance_map.sum() / d importances", out.stats.accum_weight,
                 x["importances"].grad.reshape(-1), rtol=1e-5, atol_rel=0, atol_abs=1e-5)
