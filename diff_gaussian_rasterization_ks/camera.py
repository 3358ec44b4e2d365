"""Helpers that build rasterizer settings the way 3DGS training code does.

3DGS stores `world_view_transform = W2C^T` and
`full_proj_transform = (P @ W2C)^T`, with P the OpenGL-style perspective
matrix of `getProjectionMatrix` (z mapped to [0, 1], camera looks down +z).
"""
import math
from typing import Optional, Sequence

import torch

from .settings import GaussianRasterizationSettings


def perspective_matrix(tanfovx: float, tanfovy: float, znear: float = 0.01, zfar: float = 100.0) -> torch.Tensor:
    """The 3DGS projection matrix P (not transposed), float32 [4, 4]."""
    P = torch.zeros(4, 4, dtype=torch.float64)
    P[0, 0] = 1.0 / tanfovx
    P[1, 1] = 1.0 / tanfovy
    P[3, 2] = 1.0
    P[2, 2] = zfar / (zfar - znear)
    P[2, 3] = -(zfar * znear) / (zfar - znear)
    return P.float()


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, 0.0, 1.0)) -> torch.Tensor:
    """World-to-camera matrix [4, 4] (OpenCV axes: x right, y down, z forward)."""
    eye_t = torch.tensor(eye, dtype=torch.float64)
    forward = torch.tensor(target, dtype=torch.float64) - eye_t
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, torch.tensor(up, dtype=torch.float64))
    if right.norm() < 1e-9:  # looking along `up`: pick any perpendicular axis
        right = torch.linalg.cross(forward, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    R = torch.stack([right, down, forward])  # rows: camera axes in world space
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ eye_t
    return w2c.float()


def make_settings(
    world_to_camera: torch.Tensor,
    image_width: int,
    image_height: int,
    tanfovx: float,
    tanfovy: float,
    *,
    bg: Optional[torch.Tensor] = None,
    scale_modifier: float = 1.0,
    sh_degree: int = 0,
    znear: float = 0.01,
    zfar: float = 100.0,
    prefiltered: bool = False,
    debug: bool = False,
    antialiasing: bool = False,
    device: Optional[torch.device] = None,
) -> GaussianRasterizationSettings:
    """Settings for a pinhole camera given its world-to-camera matrix [4, 4]."""
    w2c = world_to_camera.detach().to(torch.float64).cpu()
    P = perspective_matrix(tanfovx, tanfovy, znear, zfar).double()
    viewmatrix = w2c.T.contiguous()
    projmatrix = (P @ w2c).T.contiguous()
    campos = torch.linalg.inv(w2c)[:3, 3]
    if bg is None:
        bg = torch.zeros(3)
    dev = device if device is not None else torch.device("cpu")
    return GaussianRasterizationSettings(
        image_height=int(image_height),
        image_width=int(image_width),
        tanfovx=float(tanfovx),
        tanfovy=float(tanfovy),
        bg=bg.to(dev, torch.float32),
        scale_modifier=float(scale_modifier),
        viewmatrix=viewmatrix.to(dev, torch.float32),
        projmatrix=projmatrix.to(dev, torch.float32),
        sh_degree=int(sh_degree),
        campos=campos.to(dev, torch.float32),
        prefiltered=prefiltered,
        debug=debug,
        antialiasing=antialiasing,
    )


def settings_from_intrinsics(
    world_to_camera: torch.Tensor, K: torch.Tensor, image_width: int, image_height: int, **kwargs
) -> GaussianRasterizationSettings:
    """Settings from a pinhole intrinsics matrix K (fx = K[0,0], fy = K[1,1]).

    The principal point is taken to be the image centre, as in 3DGS.
    """
    tanfovx = image_width / (2.0 * float(K[0, 0]))
    tanfovy = image_height / (2.0 * float(K[1, 1]))
    return make_settings(world_to_camera, image_width, image_height, tanfovx, tanfovy, **kwargs)


def fov_to_tan_half(fov_radians: float) -> float:
    return math.tan(0.5 * fov_radians)
