"""The real garden scene (BENCHMARKS.md) renders with plausible statistics."""
import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer
from diff_gaussian_rasterization_ks.scenes import garden_scene, requires_grad_


def test_garden_renders_a_plausible_image(garden_path):
    scene = garden_scene(garden_path, camera=0)
    P = scene.inputs["means3D"].shape[0]
    assert P == 111_785
    inputs = requires_grad_(scene.inputs, ["means3D", "opacities", "colors_precomp", "scales", "rotations"])
    color, importance, radii = GaussianRasterizer(scene.settings)(**inputs)
    assert color.shape == (3, 420, 648) and importance.shape == (420, 648)
    assert torch.isfinite(color).all()
    visible = (radii > 0).float().mean().item()
    assert 0.3 < visible <= 1.0, f"visible fraction {visible}"
    # importances default to ones, so the importance map is the coverage (alpha)
    assert importance.min() >= 0.0 and importance.max() <= 1.0
    assert (importance > 0.5).float().mean() > 0.5, "most of the frame should be covered by the garden points"
    mean_colour = color.mean(dim=(1, 2))
    assert ((mean_colour > 0.1) & (mean_colour < 0.8)).all(), f"implausible mean colour {mean_colour.tolist()}"
    # texture: a blank or uniformly blurred frame has neighbour differences near
    # 0; this render measures about 0.009
    assert (color[:, :, 1:] - color[:, :, :-1]).abs().mean() > 0.004
    # layout of camera 0: dark sky (no SfM points) above, lit ground below
    assert color[:, :60].mean() < 0.15 < color[:, -140:].mean()
    (color.mean() + importance.mean()).backward()
    for name in ("means3D", "opacities", "colors_precomp", "scales", "rotations"):
        g = inputs[name].grad
        assert torch.isfinite(g).all() and g.abs().max() > 0, name
