"""Camera/raster settings, field-for-field compatible with the stock 3DGS rasterizer."""
from typing import NamedTuple

import torch


class GaussianRasterizationSettings(NamedTuple):
    """Everything about the camera and the image that is not a per-Gaussian tensor.

    The first twelve fields and their order are those of the stock rasterizer,
    so 3DGS training code builds this tuple unchanged. Fields added by this
    project come after them and always have defaults.
    """

    image_height: int
    image_width: int
    tanfovx: float
    tanfovy: float
    bg: torch.Tensor  # [3] background colour
    scale_modifier: float
    viewmatrix: torch.Tensor  # [4, 4] world-to-camera, transposed (3DGS convention)
    projmatrix: torch.Tensor  # [4, 4] full projection (view x proj), transposed
    sh_degree: int
    campos: torch.Tensor  # [3] camera centre in world space
    prefiltered: bool
    debug: bool
    # Added by this project (always defaulted):
    antialiasing: bool = False  # Mip-Splatting 2D filter: opacity *= sqrt(max(2.5e-5, det0 / det1))
