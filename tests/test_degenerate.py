"""Degenerate input: a defined image and finite gradients, never a crash."""
import pytest
import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer, rasterize_reference
from diff_gaussian_rasterization_ks.camera import make_settings
from diff_gaussian_rasterization_ks.scenes import cast_inputs, random_scene, requires_grad_

from conftest import assert_close


def forward_backward(settings, inputs):
    x = requires_grad_(inputs)
    color, importance, radii = GaussianRasterizer(settings)(**x)
    (color.sum() + importance.sum()).backward()
    for name, t in x.items():
        if t is not None:
            assert t.grad is not None and t.grad.shape == t.shape, name
            assert torch.isfinite(t.grad).all(), f"{name}: non-finite gradient"
    assert torch.isfinite(color).all() and torch.isfinite(importance).all()
    return color, importance, radii


def identity_camera(H, W, bg=(0.25, 0.5, 0.75)):
    """Camera at the origin looking down +z: view z equals world z."""
    return make_settings(torch.eye(4), W, H, 0.5, 0.5 * H / W, bg=torch.tensor(bg))


def gaussians(means, scale=0.1, opacity=0.9):
    P = means.shape[0]
    return dict(
        means3D=means.float().contiguous(),
        means2D=torch.zeros(P, 3),
        opacities=torch.full((P, 1), opacity),
        importances=torch.ones(P, 1),
        shs=None,
        colors_precomp=torch.full((P, 3), 0.8),
        scales=torch.full((P, 3), float(scale)),
        rotations=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(P, 1),
        cov3D_precomp=None,
    )


def assert_background_only(settings, color, importance):
    bg = settings.bg.view(3, 1, 1).expand_as(color)
    assert torch.equal(color, bg)
    assert torch.equal(importance, torch.zeros_like(importance))


def test_zero_gaussians():
    settings = identity_camera(20, 30)
    color, importance, radii = forward_backward(settings, gaussians(torch.zeros(0, 3)))
    assert radii.shape == (0,)
    assert_background_only(settings, color, importance)


def test_every_gaussian_culled():
    settings = identity_camera(20, 30)
    means = torch.tensor([[0.0, 0.0, -1.0], [0.1, 0.0, 0.1], [0.0, 0.0, 0.0], [1e6, 0.0, 5.0]])
    color, importance, radii = forward_backward(settings, gaussians(means))
    assert (radii == 0).all()
    assert_background_only(settings, color, importance)


def test_one_by_one_image():
    settings = identity_camera(1, 1)
    color, importance, radii = forward_backward(settings, gaussians(torch.tensor([[0.0, 0.0, 3.0]]), scale=0.5))
    assert color.shape == (3, 1, 1) and radii[0] > 0 and importance.item() > 0.5


def test_gaussian_exactly_on_the_near_plane_is_culled():
    settings = identity_camera(24, 24)
    near = torch.tensor(0.2, dtype=torch.float32).item()
    just_beyond = torch.nextafter(torch.tensor(near), torch.tensor(1.0)).item()
    means = torch.tensor([[0.0, 0.0, near], [0.0, 0.0, just_beyond]])
    _, _, radii = forward_backward(settings, gaussians(means, scale=0.01))
    assert radii[0] == 0, "z == 0.2 must be culled (z <= 0.2)"
    assert radii[1] > 0, "just beyond the near plane must be drawn"


@pytest.mark.parametrize("scale", [1e-6, 1e3])
def test_extremely_thin_or_huge_gaussians(scale):
    settings = identity_camera(40, 40)
    means = torch.tensor([[0.0, 0.0, 2.0], [0.3, -0.2, 3.0], [-0.4, 0.1, 1.0]])
    color, importance, radii = forward_backward(settings, gaussians(means, scale=scale))
    if scale > 1:
        assert (radii > 0).all() and (importance > 0.9).all(), "huge splats cover every pixel"


def test_far_off_screen_and_huge_coordinates():
    settings = identity_camera(32, 48)
    means = torch.tensor([[1e7, 1e7, 3.0], [-1e12, 0.0, 4.0], [0.0, 3e9, 1e9], [0.0, 0.0, 3.0]])
    color, importance, radii = forward_backward(settings, gaussians(means, scale=0.2))
    assert (radii[:3] == 0).all() and radii[3] > 0


def test_matches_oracle_on_a_degenerate_mix():
    scene = random_scene(30, 1, 17, seed=3, behind_fraction=0.5, offscreen_fraction=0.3)
    color, importance, radii = GaussianRasterizer(scene.settings)(**scene.inputs)
    ref = rasterize_reference(**cast_inputs(scene.inputs, torch.float64), raster_settings=scene.settings)
    assert_close("color", color, ref.color, rtol=1e-5, atol_rel=0, atol_abs=2e-6)
    assert_close("importance", importance, ref.importance_map, rtol=1e-5, atol_rel=0, atol_abs=2e-6)
