"""The CPU backend drops, per tile and per block of pixels, the splats that
cannot be blended there (dgr::splat_may_touch_rect: the largest alpha over
the rectangle is below 1/255, with margins for float rounding), and its
preprocess decides which Gaussians are culled in a vectorised pass. That must
change nothing: with culling off (DGR_CPU_CULL=0, read at every call: no tile
culling, the scalar preprocess and the scalar pass 2 of the backward) every
output, statistic and gradient is the same bit for bit.

The scenes put many splats near the 1/255 threshold (faint, thin, large and
tiny ones, antialiasing on) so that the culling decisions are close calls.
tests/test_cpu_math.py checks the bound itself on a million random cases.
"""
import pytest
import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer
from diff_gaussian_rasterization_ks.scenes import garden_scene, random_scene, requires_grad_


def faint_scene(seed):
    """Opacities log-uniform in [0.5/255, 8/255]: alpha crosses 1/255 inside most splats."""
    scene = random_scene(300, 70, 90, seed=seed, scale_range=(0.01, 0.6), offscreen_fraction=0.1,
                         behind_fraction=0.05)
    gen = torch.Generator().manual_seed(seed + 100)
    P = scene.inputs["means3D"].shape[0]
    scene.inputs["opacities"] = (0.5 / 255) * 16 ** torch.rand(P, 1, generator=gen)
    return scene


def thin_scene(seed):
    """Needle-like splats: one axis 100 to 1000 times shorter than the others."""
    scene = random_scene(250, 64, 80, seed=seed, scale_range=(0.05, 0.5))
    gen = torch.Generator().manual_seed(seed + 200)
    P = scene.inputs["means3D"].shape[0]
    axis = torch.randint(0, 3, (P,), generator=gen)
    squash = 10 ** (-2 - torch.rand(P, generator=gen))
    scene.inputs["scales"][torch.arange(P), axis] *= squash
    return scene


def border_scene(seed):
    """Most splats just off screen or behind the camera, sizes up to large
    ones that overlap the border: the preprocess's cull decisions (made by a
    vectorised pass unless DGR_CPU_CULL=0) are close calls at the image edge."""
    return random_scene(1500, 48, 72, seed=seed, sh_degree=1, scale_range=(0.005, 1.5), offscreen_fraction=0.6,
                        behind_fraction=0.25)


def nearest_first(scene):
    """The scene's Gaussians in order of view depth: the ones behind the
    camera come first, whole 256-Gaussian blocks of them, which the vectorised
    preprocess skips without projecting them."""
    m = scene.inputs["means3D"]
    z = (torch.cat([m, torch.ones(m.shape[0], 1)], 1) @ scene.settings.viewmatrix)[:, 2]
    order = torch.argsort(z)
    assert (z[order[:256]] <= 0.2).all(), "a whole block is behind the near plane"
    inputs = {k: (v[order].contiguous() if isinstance(v, torch.Tensor) else v) for k, v in scene.inputs.items()}
    return scene._replace(inputs=inputs)


def active_degree(scene, degree):
    return scene._replace(settings=scene.settings._replace(sh_degree=degree))


def antialiased(scene):
    return scene._replace(settings=scene.settings._replace(antialiasing=True))


SCENES = [
    pytest.param(lambda: faint_scene(1), id="faint"),
    pytest.param(lambda: thin_scene(2), id="thin"),
    pytest.param(lambda: antialiased(faint_scene(3)), id="faint_antialiased"),
    pytest.param(lambda: random_scene(200, 50, 70, seed=4, sh_degree=2, scale_range=(0.002, 0.05)), id="tiny_sh"),
    pytest.param(lambda: random_scene(60, 40, 56, seed=5, scale_range=(0.3, 1.5), use_cov3D_precomp=True),
                 id="large_cov3D"),
    pytest.param(lambda: border_scene(6), id="border"),
    pytest.param(lambda: antialiased(border_scene(7)), id="border_antialiased"),
    pytest.param(lambda: nearest_first(border_scene(8)), id="border_nearest_first"),
    # colors_precomp and antialiasing: the backward's vectorised pass 2, which
    # skips the blocks with no Gaussian on screen
    pytest.param(lambda: antialiased(nearest_first(random_scene(1500, 48, 72, seed=9, scale_range=(0.005, 1.5),
                                                                offscreen_fraction=0.6, behind_fraction=0.25))),
                 id="border_precomp_antialiased_nearest_first"),
    # spherical harmonics with 16 coefficients (vectorised pass 2): degree 3,
    # and degree 1 of 16 stored (training's active degree before it reaches 3)
    pytest.param(lambda: antialiased(random_scene(400, 50, 70, seed=10, sh_degree=3, offscreen_fraction=0.4)),
                 id="sh3_antialiased"),
    pytest.param(lambda: active_degree(random_scene(400, 50, 70, seed=11, sh_degree=3), 1), id="sh16_degree1"),
    # (the vectorised SH colours of the forward and backward at the other degrees)
    pytest.param(lambda: active_degree(random_scene(300, 50, 70, seed=12, sh_degree=3), 0), id="sh16_degree0"),
    pytest.param(lambda: active_degree(random_scene(300, 50, 70, seed=13, sh_degree=3), 2), id="sh16_degree2"),
]


def render_everything(scene):
    """Forward outputs, statistics (pixel-weighted) and every input gradient
    of a loss that touches all four maps."""
    x = requires_grad_(scene.inputs)
    s = scene.settings
    gen = torch.Generator().manual_seed(7)
    pixel_weights = torch.rand(s.image_height, s.image_width, generator=gen)
    out = GaussianRasterizer(s).render(**x, stats=True, pixel_weights=pixel_weights)
    w = [torch.rand(t.shape, generator=gen) for t in (out.color, out.importance_map, out.invdepth, out.alpha)]
    loss = sum((t * wt).sum() for t, wt in zip((out.color, out.importance_map, out.invdepth, out.alpha), w))
    loss.backward()
    results = {name: getattr(out, name) for name in ("color", "importance_map", "radii", "invdepth", "alpha",
                                                      "n_contrib")}
    results.update({f"stats.{k}": v for k, v in out.stats._asdict().items()})
    results.update({f"grad.{k}": v.grad for k, v in x.items() if isinstance(v, torch.Tensor) and v.grad is not None})
    return results


def assert_same_with_and_without_culling(make_scene, monkeypatch):
    monkeypatch.setenv("DGR_CPU_CULL", "0")
    plain = render_everything(make_scene())
    monkeypatch.delenv("DGR_CPU_CULL")
    culled = render_everything(make_scene())
    assert plain.keys() == culled.keys()
    assert (plain["n_contrib"] > 0).any() and plain["stats.hit_count"].sum() > 100, "scene too empty to mean anything"
    for name in plain:
        assert torch.equal(plain[name], culled[name]), f"{name} differs with culling"


@pytest.mark.parametrize("make_scene", SCENES)
def test_culling_changes_nothing(make_scene, monkeypatch):
    assert_same_with_and_without_culling(make_scene, monkeypatch)


def test_culling_changes_nothing_on_a_garden_crop(garden_path, monkeypatch):
    """Real splats (20,000 of garden's, at a quarter of its resolution)."""
    def make():
        full = garden_scene(garden_path)
        keep = torch.randperm(full.inputs["means3D"].shape[0], generator=torch.Generator().manual_seed(0))[:20_000]
        inputs = {k: (v[keep].contiguous() if isinstance(v, torch.Tensor) else v) for k, v in full.inputs.items()}
        s = full.settings
        return full._replace(inputs=inputs, settings=s._replace(image_width=s.image_width // 4,
                                                                image_height=s.image_height // 4))
    assert_same_with_and_without_culling(make, monkeypatch)
