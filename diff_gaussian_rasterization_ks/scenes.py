"""Scenes shared by the tests, the benchmarks and the examples.

Every generator returns a :class:`Scene`: the keyword arguments for the
rasterizer (``Scene.inputs``, leaf tensors without ``requires_grad``) and the
:class:`GaussianRasterizationSettings`. Typical use::

    scene = random_scene(200, 48, 64, seed=3, sh_degree=3)
    inputs = requires_grad_(scene.inputs)
    out = rasterize_reference(**inputs, raster_settings=scene.settings)
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Iterable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .camera import look_at, make_settings, settings_from_intrinsics
from .reference import covariance_from_scales_rotations
from .settings import GaussianRasterizationSettings

__all__ = ["Scene", "INPUT_NAMES", "random_scene", "garden_scene", "requires_grad_", "cast_inputs"]

#: Keyword arguments of the rasterizer, in the stock rasterizer's order.
INPUT_NAMES = (
    "means3D",
    "means2D",
    "opacities",
    "importances",
    "shs",
    "colors_precomp",
    "scales",
    "rotations",
    "cov3D_precomp",
)

_SH_C0 = 0.28209479177387814


class Scene(NamedTuple):
    """A set of Gaussians and a camera.

    Attributes:
        inputs: keyword arguments for the rasterizer, keys :data:`INPUT_NAMES`
            (``None`` where absent).
        settings: the camera / image settings.
    """

    inputs: Dict[str, Optional[Tensor]]
    settings: GaussianRasterizationSettings


def _uniform(gen: torch.Generator, shape, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)


def _random_quaternions(gen: torch.Generator, n: int) -> Tensor:
    q = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _cov6(scales: Tensor, quats: Tensor) -> Tensor:
    """Upper entries (xx, xy, xz, yy, yz, zz) of R diag(s)^2 R^T (float64)."""
    S = covariance_from_scales_rotations(scales, quats)
    return torch.stack([S[:, 0, 0], S[:, 0, 1], S[:, 0, 2], S[:, 1, 1], S[:, 1, 2], S[:, 2, 2]], 1)


def random_scene(
    num_gaussians: int,
    height: int,
    width: int,
    *,
    seed: int = 0,
    sh_degree: Optional[int] = None,
    use_cov3D_precomp: bool = False,
    scale_modifier: float = 1.0,
    bg: Sequence[float] = (0.0, 0.0, 0.0),
    with_importances: bool = True,
    offscreen_fraction: float = 0.2,
    behind_fraction: float = 0.1,
    dtype: torch.dtype = torch.float32,
    scale_range: Sequence[float] = (0.03, 0.3),
    tanfovx: float = 0.6,
) -> Scene:
    """A random, deterministic (from ``seed``) scene seen by a pinhole camera.

    The camera sits near (0, 0, -4) looking at the origin, ``tanfovx`` = 0.6 by
    default and ``tanfovy = tanfovx * height / width`` (square pixels). Gaussians:

    * ``1 - offscreen_fraction - behind_fraction`` of them on screen, at view
      depth 2.5 .. 5.5 (a box around the origin);
    * ``offscreen_fraction`` with ``|x/z|`` or ``|y/z|`` between 0.85 and 1.8
      times the half field of view: partly or fully off screen (some beyond the
      1.3 tanfov clamp of the EWA Jacobian);
    * ``behind_fraction`` at view depth in [-3, 0.15): behind the camera or
      before the near plane (invisible).

    The three groups are shuffled together. Per-axis scales are log-uniform in
    ``scale_range`` (world units; at 64 x 48 pixels radii are a few to ~20
    pixels), quaternions are random unit quaternions times a factor in
    [0.9, 1.1] (deliberately not normalised), opacities uniform in
    [0.05, 0.95], importances uniform in [0, 2].

    Colours: with ``sh_degree=None``, ``colors_precomp`` uniform in [0, 1];
    otherwise ``shs`` ``[P, (deg+1)^2, 3]`` whose DC term gives colours in
    about [0, 1] and whose higher orders are N(0, 0.2), so that the
    ``>= 0`` clamp is active for some Gaussians but not most.

    With ``use_cov3D_precomp`` the same random scales/rotations are turned into
    ``cov3D_precomp`` (``scale_modifier`` is then not applied, as in the
    rasterizer) and ``scales``/``rotations`` are ``None``.

    ``scale_range`` and ``tanfovx`` (extra keywords) let benchmarks build
    denser scenes (larger Gaussians: higher depth complexity) or other fields
    of view.

    Returns leaf tensors of ``dtype`` without ``requires_grad`` (``means2D`` is
    zeros); the settings' tensors are float32 on the CPU, as 3DGS builds them.
    """
    if num_gaussians < 0:
        raise ValueError(f"num_gaussians must be >= 0, got {num_gaussians}")
    if sh_degree is not None and not 0 <= sh_degree <= 3:
        raise ValueError(f"sh_degree must be None or 0..3, got {sh_degree}")
    gen = torch.Generator().manual_seed(int(seed))
    P = int(num_gaussians)

    tanfovy = tanfovx * height / width
    w2c = look_at((0.5, -0.3, -4.0), (0.0, 0.0, 0.0), up=(0.0, -1.0, 0.0)).double()
    settings = make_settings(
        w2c,
        width,
        height,
        tanfovx,
        tanfovy,
        bg=torch.tensor(bg, dtype=torch.float32),
        scale_modifier=scale_modifier,
        sh_degree=0 if sh_degree is None else sh_degree,
    )

    n_behind = int(round(P * behind_fraction))
    n_off = min(int(round(P * offscreen_fraction)), P - n_behind)
    n_on = P - n_behind - n_off

    # Camera-space positions.
    z_on = _uniform(gen, n_on, 2.5, 5.5)
    x_on = _uniform(gen, n_on, -0.9, 0.9) * tanfovx * z_on
    y_on = _uniform(gen, n_on, -0.9, 0.9) * tanfovy * z_on

    z_off = _uniform(gen, n_off, 2.5, 5.5)
    ratio = _uniform(gen, n_off, 0.85, 1.8) * torch.where(torch.rand(n_off, generator=gen) < 0.5, -1.0, 1.0).double()
    other = _uniform(gen, n_off, -1.0, 1.0)
    along_x = torch.rand(n_off, generator=gen) < 0.5
    x_off = torch.where(along_x, ratio, other) * tanfovx * z_off
    y_off = torch.where(along_x, other, ratio) * tanfovy * z_off

    z_bh = _uniform(gen, n_behind, -3.0, 0.15)
    x_bh = _uniform(gen, n_behind, -1.0, 1.0)
    y_bh = _uniform(gen, n_behind, -1.0, 1.0)

    cam_pts = torch.stack(
        [torch.cat([x_on, x_off, x_bh]), torch.cat([y_on, y_off, y_bh]), torch.cat([z_on, z_off, z_bh])], 1
    )
    perm = torch.randperm(P, generator=gen)
    cam_pts = cam_pts[perm]
    R, trans = w2c[:3, :3], w2c[:3, 3]
    means3D = (cam_pts - trans) @ R  # R^T (p_cam - trans), row-wise

    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    scales = torch.exp(_uniform(gen, (P, 3), lo, hi))
    quats = _random_quaternions(gen, P) * _uniform(gen, (P, 1), 0.9, 1.1)
    opacities = _uniform(gen, (P, 1), 0.05, 0.95)
    importances = _uniform(gen, (P, 1), 0.0, 2.0)

    shs = colors = None
    if sh_degree is None:
        colors = _uniform(gen, (P, 3), 0.0, 1.0)
    else:
        K = (sh_degree + 1) ** 2
        shs = 0.2 * torch.randn(P, K, 3, generator=gen, dtype=torch.float64)
        shs[:, 0, :] = _uniform(gen, (P, 3), -0.5, 0.5) / _SH_C0

    cov6 = None
    if use_cov3D_precomp:
        cov6 = _cov6(scales, quats)
        scales = quats = None

    def out(x: Optional[Tensor]) -> Optional[Tensor]:
        return None if x is None else x.to(dtype).contiguous()

    inputs = dict(
        means3D=out(means3D),
        means2D=torch.zeros(P, 3, dtype=dtype),
        opacities=out(opacities),
        importances=out(importances) if with_importances else None,
        shs=out(shs),
        colors_precomp=out(colors),
        scales=out(scales),
        rotations=out(quats),
        cov3D_precomp=out(cov6),
    )
    return Scene(inputs, settings)


def garden_scene(
    npz_path: Union[str, Path],
    *,
    camera: int = 0,
    seed: int = 0,
    replicate: int = 1,
    resolution_scale: int = 1,
    device: Union[str, torch.device] = "cpu",
) -> Scene:
    """The ``garden`` benchmark scene of ``spec/BENCHMARKS.md``.

    Loads the structure-from-motion points of ``garden_sfm.npz``, keeps those in
    the closed box [-2, 2]^3 (111,785 points), and gives each, from a
    ``torch.Generator`` seeded with ``seed``, a scale per axis uniform in
    [1e-4, 0.02], a random unit quaternion and an opacity uniform in [0, 1]
    (drawn in that order). Colours are ``colors / 255`` as ``colors_precomp``;
    importances are ones; background black. The camera is ``viewmats[camera]``
    with ``tanfovx = W / (2 fx)``, ``tanfovy = H / (2 fy)`` from ``Ks[camera]``.

    Args:
        npz_path: path of ``garden_sfm.npz``.
        camera: which of the 3 cameras.
        seed: seed of the made-up attributes.
        replicate: ``3`` gives ``garden-x3``: the cropped scene repeated on a
            3 x 3 grid in x and y, offset by 4 (the box size), nine times the
            Gaussians (copies share their attributes). Any odd ``n`` gives an
            ``n x n`` grid centred on the original.
        resolution_scale: ``2`` gives ``garden-2x``: image and focal lengths
            multiplied by 2 (same field of view), 1296 x 840.
        device: where the tensors (inputs and settings) are put.
    """
    if replicate < 1 or replicate % 2 != 1:
        raise ValueError(f"replicate must be an odd positive integer, got {replicate}")
    if resolution_scale < 1:
        raise ValueError(f"resolution_scale must be >= 1, got {resolution_scale}")
    with np.load(str(npz_path)) as data:
        pts = torch.from_numpy(np.asarray(data["means3d"], dtype=np.float32))
        rgb = torch.from_numpy(np.asarray(data["colors"])).float() / 255.0
        viewmat = torch.from_numpy(np.asarray(data["viewmats"][camera], dtype=np.float32))
        K = torch.from_numpy(np.asarray(data["Ks"][camera], dtype=np.float32)).double()
        height = int(data["height"])
        width = int(data["width"])

    keep = (pts.abs() <= 2.0).all(dim=1)
    pts, rgb = pts[keep], rgb[keep]
    P = pts.shape[0]

    gen = torch.Generator().manual_seed(int(seed))
    scales = 1e-4 + (0.02 - 1e-4) * torch.rand(P, 3, generator=gen)
    quats = torch.randn(P, 4, generator=gen)
    quats = quats / quats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    opacities = torch.rand(P, 1, generator=gen)

    if replicate > 1:
        half = replicate // 2
        offsets = torch.tensor(
            [[4.0 * i, 4.0 * j, 0.0] for i in range(-half, half + 1) for j in range(-half, half + 1)]
        )
        pts = (pts[None] + offsets[:, None]).reshape(-1, 3)
        n = offsets.shape[0]
        rgb, scales, quats, opacities = (x.repeat(n, 1) for x in (rgb, scales, quats, opacities))
        P = pts.shape[0]

    K = K.clone()
    K[0, 0] *= resolution_scale
    K[1, 1] *= resolution_scale
    width *= resolution_scale
    height *= resolution_scale
    dev = torch.device(device)
    settings = settings_from_intrinsics(viewmat, K, width, height, sh_degree=0, device=dev)

    inputs = dict(
        means3D=pts.contiguous().to(dev),
        means2D=torch.zeros(P, 3, device=dev),
        opacities=opacities.contiguous().to(dev),
        importances=torch.ones(P, 1, device=dev),
        shs=None,
        colors_precomp=rgb.contiguous().to(dev),
        scales=scales.contiguous().to(dev),
        rotations=quats.contiguous().to(dev),
        cov3D_precomp=None,
    )
    return Scene(inputs, settings)


def requires_grad_(inputs: Dict[str, Optional[Tensor]], names: Optional[Iterable[str]] = None) -> Dict[str, Optional[Tensor]]:
    """A copy of ``inputs`` whose floating tensors are fresh leaves with ``requires_grad``.

    Args:
        inputs: rasterizer keyword arguments (e.g. ``Scene.inputs``).
        names: only these entries (default: every floating-point tensor).
            Naming an entry that is ``None`` or not floating is a ``ValueError``.

    Other entries are passed through unchanged (the same objects).
    """
    if names is not None:
        names = set(names)
        for n in names:
            v = inputs.get(n)
            if not isinstance(v, Tensor) or not v.is_floating_point():
                raise ValueError(f"requires_grad_: input {n!r} is not a floating tensor (got {type(v).__name__})")
    out = {}
    for k, v in inputs.items():
        pick = isinstance(v, Tensor) and v.is_floating_point() and (names is None or k in names)
        out[k] = v.detach().clone().requires_grad_(True) if pick else v
    return out


def cast_inputs(
    inputs: Dict[str, Optional[Tensor]], dtype: Optional[torch.dtype] = None, *, device=None
) -> Dict[str, Optional[Tensor]]:
    """A copy of ``inputs`` with every floating tensor converted to ``dtype`` (and/or moved to ``device``).

    The converted tensors are detached leaves without ``requires_grad`` (call
    :func:`requires_grad_` afterwards); ``None`` entries stay ``None``.
    """
    out = {}
    for k, v in inputs.items():
        if isinstance(v, Tensor):
            v = v.detach().to(device=device, dtype=dtype if v.is_floating_point() else None).clone()
        out[k] = v
    return out
