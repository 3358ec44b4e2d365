"""Bad input: a ValueError/TypeError naming the argument, before any kernel runs."""
import re

import pytest
import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer, rasterize_gaussians
from diff_gaussian_rasterization_ks.scenes import random_scene


@pytest.fixture
def scene():
    return random_scene(10, 16, 16, seed=0, sh_degree=1)


def call(scene, settings=None, **changes):
    inputs = dict(scene.inputs, **changes)
    return GaussianRasterizer(settings or scene.settings)(**inputs)


CASES = [
    ("means3D", dict(means3D=torch.zeros(10, 4)), ValueError, r"means3D: expected shape \[\*, 3\]"),
    ("means3D", dict(means3D=torch.zeros(10, 3, dtype=torch.float64)), TypeError, "means3D: expected dtype torch.float32"),
    ("means3D", dict(means3D=[[0.0, 0.0, 0.0]]), TypeError, "means3D: expected a torch.Tensor"),
    ("means2D", dict(means2D=torch.zeros(9, 3)), ValueError, r"means2D: expected shape \[10, 3\] or \[10, 2\]"),
    ("opacities", dict(opacities=torch.zeros(11, 1)), ValueError, "opacities: expected shape"),
    ("opacities", dict(opacities=torch.zeros(10, 1, dtype=torch.float16)), TypeError, "opacities: expected dtype"),
    ("opacities", dict(opacities=torch.zeros(10, 1, device="meta")), ValueError, "opacities: expected a tensor on cpu"),
    ("importances", dict(importances=torch.zeros(10, 2)), ValueError, "importances: expected shape"),
    ("shs+colors", dict(colors_precomp=torch.zeros(10, 3)), ValueError, "exactly one of them, got both"),
    ("shs+colors", dict(shs=None), ValueError, "exactly one of them, got neither"),
    ("shs", dict(shs=torch.zeros(10, 3, 3)), ValueError, "shs: sh_degree 1 needs at least 4 coefficients"),
    ("scales", dict(scales=None), ValueError, "scales: expected a tensor"),
    ("rotations", dict(rotations=None), ValueError, "rotations: expected a tensor"),
    ("cov3D", dict(cov3D_precomp=torch.zeros(10, 6)), ValueError, "got both"),
    ("cov3D", dict(scales=None, rotations=None), ValueError, "got neither"),
    ("cov3D", dict(scales=None, rotations=None, cov3D_precomp=torch.zeros(10, 5)), ValueError, "cov3D_precomp: expected shape"),
    ("rotations", dict(rotations=torch.zeros(4, 10).t()), ValueError, "rotations: expected a contiguous tensor"),
]


@pytest.mark.parametrize("name,changes,error,message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_tensor_arguments(scene, name, changes, error, message):
    with pytest.raises(error, match=message):
        call(scene, **changes)


SETTINGS_CASES = [
    (dict(sh_degree=4), ValueError, r"sh_degree: expected an int in \[0, 3\], got 4"),
    (dict(image_height=0), ValueError, "image_height: expected a positive int, got 0"),
    (dict(image_width=-3), ValueError, "image_width: expected a positive int"),
    (dict(tanfovx=float("nan")), ValueError, "tanfovx: expected a finite positive number"),
    (dict(viewmatrix=torch.full((4, 4), float("inf"))), ValueError, "viewmatrix: expected finite values"),
    (dict(projmatrix=torch.eye(3)), ValueError, r"projmatrix: expected shape \[4, 4\]"),
    (dict(bg=torch.zeros(4)), ValueError, r"bg: expected shape \[3\]"),
    (dict(campos=torch.tensor([0.0, float("nan"), 0.0])), ValueError, "campos: expected finite values"),
]


@pytest.mark.parametrize("changes,error,message", SETTINGS_CASES)
def test_bad_settings(scene, changes, error, message):
    with pytest.raises(error, match=message):
        call(scene, settings=scene.settings._replace(**changes))


def test_sh_degree_above_what_shs_holds(scene):
    with pytest.raises(ValueError, match=re.escape("shs: sh_degree 3 needs at least 16 coefficients")):
        call(scene, settings=scene.settings._replace(sh_degree=3))


def test_settings_of_the_wrong_type(scene):
    with pytest.raises(TypeError, match="raster_settings: expected GaussianRasterizationSettings"):
        rasterize_gaussians(scene.inputs["means3D"], scene.inputs["means2D"], scene.inputs["shs"], None,
                            scene.inputs["opacities"], scene.inputs["scales"], scene.inputs["rotations"], None,
                            raster_settings=dict(scene.settings._asdict()))


def test_valid_call_still_works(scene):
    color, importance, radii = call(scene)
    assert color.shape == (3, 16, 16)
