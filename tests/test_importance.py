"""Properties of the importance channel (ALGORITHM.md, "The importance channel")."""
import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer, rasterize_reference
from diff_gaussian_rasterization_ks.scenes import cast_inputs, random_scene, requires_grad_

from conftest import assert_close


def scene_with_colors(seed=11, **kwargs):
    return random_scene(90, 41, 67, seed=seed, **kwargs)


def test_importance_of_ones_is_one_minus_final_transmittance():
    scene = scene_with_colors(bg=(1.0, 1.0, 1.0))
    inputs = dict(scene.inputs, importances=None)
    # black splats on a white background: the image is the final transmittance
    inputs["colors_precomp"] = torch.zeros_like(inputs["colors_precomp"])
    color, importance, _ = GaussianRasterizer(scene.settings)(**inputs)
    assert importance.max() > 0.5, "scene covers too little of the image to test anything"
    assert_close("importance vs 1 - T_final", importance, 1.0 - color[0], rtol=0, atol_rel=0, atol_abs=1e-6)
    ref = rasterize_reference(**cast_inputs(inputs, torch.float64), raster_settings=scene.settings)
    assert_close("importance vs oracle 1 - T_final", importance, 1.0 - ref.final_T, rtol=0, atol_rel=0, atol_abs=2e-6)


def test_importance_map_is_the_image_of_importance_as_colour():
    scene = scene_with_colors()
    importances = scene.inputs["importances"].reshape(-1)
    rasterizer = GaussianRasterizer(scene.settings)
    _, importance, _ = rasterizer(**scene.inputs)
    as_colour = dict(scene.inputs, colors_precomp=importances[:, None].repeat(1, 3).contiguous())
    color, _, _ = rasterizer(**as_colour)
    for ch in range(3):
        # identical arithmetic per channel: exact
        assert torch.equal(color[ch], importance), f"channel {ch} differs"


def test_importance_gradient_is_total_blending_weight():
    scene = scene_with_colors(sh_degree=2)
    H, W = scene.settings.image_height, scene.settings.image_width
    ours = requires_grad_(scene.inputs, ["importances"])
    color, importance, _ = GaussianRasterizer(scene.settings)(**ours)
    torch.autograd.backward([color, importance], [torch.zeros(3, H, W), torch.ones(H, W)])
    # independent: the oracle's per-pixel weights alpha_i T_i, summed by hand
    ref = rasterize_reference(**cast_inputs(scene.inputs, torch.float64), raster_settings=scene.settings)
    total_weight = ref.weights.sum(dim=(1, 2))
    assert (total_weight > 0).sum() > 20
    assert_close("d importance_map.sum() / d importances", ours["importances"].grad.reshape(-1), total_weight,
                 rtol=1e-4, atol_rel=0, atol_abs=1e-5)
