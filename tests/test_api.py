"""The public API: drop-in signatures, markVisible, the reference fallback."""
import inspect
import warnings

import torch

import diff_gaussian_rasterization_ks as dgr
from diff_gaussian_rasterization_ks import (GaussianRasterizationSettings, GaussianRasterizer, rasterize_gaussians,
                                            rasterize_reference)
from diff_gaussian_rasterization_ks import _backend
from diff_gaussian_rasterization_ks.scenes import random_scene, requires_grad_

from conftest import assert_close

STOCK_FIELDS = ["image_height", "image_width", "tanfovx", "tanfovy", "bg", "scale_modifier", "viewmatrix",
                "projmatrix", "sh_degree", "campos", "prefiltered", "debug"]


def test_settings_fields_start_with_the_stock_fields_in_order():
    fields = list(GaussianRasterizationSettings._fields)
    assert fields[: len(STOCK_FIELDS)] == STOCK_FIELDS
    defaults = GaussianRasterizationSettings._field_defaults
    assert all(f in defaults for f in fields[len(STOCK_FIELDS):]), "added fields must have defaults"


def test_forward_and_functional_signatures_are_stock_compatible():
    forward = list(inspect.signature(GaussianRasterizer.forward).parameters)
    assert forward[:9] == ["self", "means3D", "means2D", "opacities", "shs", "colors_precomp", "scales", "rotations",
                           "cov3D_precomp"]
    functional = list(inspect.signature(rasterize_gaussians).parameters)
    assert functional[:9] == ["means3D", "means2D", "sh", "colors_precomp", "opacities", "scales", "rotations",
                              "cov3Ds_precomp", "raster_settings"]


def test_three_tensor_call_and_positional_functional_form():
    scene = random_scene(50, 30, 40, seed=4, sh_degree=2)
    x = scene.inputs
    out = GaussianRasterizer(raster_settings=scene.settings)(**x)
    assert isinstance(out, tuple) and len(out) == 3
    again = rasterize_gaussians(x["means3D"], x["means2D"], x["shs"], None, x["opacities"], x["scales"],
                                x["rotations"], None, scene.settings, importances=x["importances"])
    for a, b in zip(out, again):
        assert torch.equal(a, b)


def test_mark_visible_is_the_near_plane_test():
    scene = random_scene(200, 30, 40, seed=5, behind_fraction=0.3)
    means = scene.inputs["means3D"]
    visible = GaussianRasterizer(scene.settings).markVisible(means)
    assert visible.dtype == torch.bool and visible.shape == (200,)
    homogeneous = torch.cat([means.double(), torch.ones(200, 1, dtype=torch.float64)], 1)
    z = (homogeneous @ scene.settings.viewmatrix.double())[:, 2]
    assert torch.equal(visible, z > 0.2)
    assert 0 < visible.sum() < 200


def test_fallback_to_the_reference_without_compiled_kernels(monkeypatch):
    scene = random_scene(40, 24, 32, seed=6)
    monkeypatch.setattr(_backend, "kernels_for", lambda device: None)
    monkeypatch.setattr(_backend, "_warned", set())
    x = requires_grad_(scene.inputs, ["opacities"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        color, importance, radii = GaussianRasterizer(scene.settings)(**x)
    assert any("pure-PyTorch reference" in str(w.message) for w in caught)
    ref = rasterize_reference(**scene.inputs, raster_settings=scene.settings)
    assert torch.equal(color, ref.color) and torch.equal(radii, ref.radii)
    importance.sum().backward()
    assert x["opacities"].grad is not None
    visible = GaussianRasterizer(scene.settings).markVisible(scene.inputs["means3D"])
    assert visible.dtype == torch.bool


def test_importances_default_to_ones():
    scene = random_scene(50, 30, 40, seed=7)
    r = GaussianRasterizer(scene.settings)
    _, default, _ = r(**dict(scene.inputs, importances=None))
    _, ones, _ = r(**dict(scene.inputs, importances=torch.ones(50)))
    assert torch.equal(default, ones)


def test_public_names():
    for name in ("GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians", "rasterize_reference"):
        assert hasattr(dgr, name)
