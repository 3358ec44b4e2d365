"""Read and write 3D Gaussian Splatting point clouds in the standard PLY layout.

The layout is the one the original 3DGS trainer writes and that splat viewers
and other trainers read: one ``vertex`` element, binary little-endian, every
property ``float`` (float32), in this order::

    x y z                      position
    nx ny nz                   normals (unused, written as zeros)
    f_dc_0 f_dc_1 f_dc_2       SH degree-0 coefficient per colour channel
    f_rest_0 .. f_rest_{3(M-1)-1}
                               the other M-1 SH coefficients, channel-major:
                               f_rest_{c (M-1) + k} is coefficient k+1 of
                               channel c (features_rest [P, M-1, 3] transposed
                               to [P, 3, M-1] and flattened)
    opacity                    logit of the opacity (pre-sigmoid)
    scale_0 scale_1 scale_2    log of the scales (pre-exp)
    rot_0 rot_1 rot_2 rot_3    quaternion (w, x, y, z), not necessarily unit

``M = (degree + 1)^2`` is 1, 4, 9 or 16, so a file has 0, 9, 24 or 45
``f_rest`` properties. Reading goes by property name, so files whose
properties come in another order, carry extra properties (colours, normals,
per-Gaussian extras of other trainers) or were written in ASCII or
big-endian still load; properties of another numeric type are converted to
float32.

    cloud = read_gaussian_ply("point_cloud.ply")
    image, importance_map, radii = GaussianRasterizer(settings)(**cloud.rasterizer_inputs())
    write_gaussian_ply("copy.ply", cloud)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["GaussianCloud", "read_gaussian_ply", "write_gaussian_ply", "SH_C0", "rgb_to_sh_dc", "sh_dc_to_rgb"]

#: The degree-0 real spherical-harmonics constant: colour = SH_C0 * f_dc + 0.5.
SH_C0 = 0.28209479177387814

_VALID_M = {1: 0, 4: 1, 9: 2, 16: 3}  # number of SH coefficients -> degree

PathLike = Union[str, Path]


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """Colour in [0, 1] -> the degree-0 SH coefficient that renders it."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: Tensor) -> Tensor:
    """Degree-0 SH coefficient -> the colour it renders (before the >= 0 clamp)."""
    return dc * SH_C0 + 0.5


def _logit(p: Tensor, eps: float = 1e-6) -> Tensor:
    p = p.clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)


@dataclass
class GaussianCloud:
    """A set of 3D Gaussians as 3DGS stores them (parameters before activation).

    Attributes:
        means: [P, 3] positions.
        sh: [P, M, 3] spherical-harmonics coefficients, the DC term first,
            ``M = (sh_degree + 1)^2``.
        opacity_logits: [P, 1] opacity before the sigmoid.
        log_scales: [P, 3] scales before the exp.
        rotations: [P, 4] quaternions (w, x, y, z), as stored (not normalised).

    All float32 CPU tensors after :func:`read_gaussian_ply`.
    """

    means: Tensor
    sh: Tensor
    opacity_logits: Tensor
    log_scales: Tensor
    rotations: Tensor

    def __post_init__(self) -> None:
        P = self.means.shape[0] if self.means.dim() == 2 else -1
        expect = {
            "means": (self.means, (P, 3)),
            "opacity_logits": (self.opacity_logits, (P, 1)),
            "log_scales": (self.log_scales, (P, 3)),
            "rotations": (self.rotations, (P, 4)),
        }
        for name, (t, shape) in expect.items():
            if not isinstance(t, Tensor):
                raise TypeError(f"GaussianCloud.{name}: expected a torch.Tensor, got {type(t).__name__}")
            if tuple(t.shape) != shape or P < 0:
                raise ValueError(f"GaussianCloud.{name}: expected shape {list(shape)}, got {list(t.shape)}")
        if not isinstance(self.sh, Tensor):
            raise TypeError(f"GaussianCloud.sh: expected a torch.Tensor, got {type(self.sh).__name__}")
        if self.sh.dim() != 3 or self.sh.shape[0] != P or self.sh.shape[2] != 3 or self.sh.shape[1] not in _VALID_M:
            raise ValueError(f"GaussianCloud.sh: expected shape [{P}, M, 3] with M in 1, 4, 9, 16, "
                             f"got {list(self.sh.shape)}")

    # ------------------------------------------------------------------ info
    @property
    def sh_degree(self) -> int:
        """The SH degree the coefficients hold (0..3)."""
        return _VALID_M[self.sh.shape[1]]

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    def __len__(self) -> int:
        return self.num_gaussians

    # ------------------------------------------------------------ activated
    @property
    def opacities(self) -> Tensor:
        """[P, 1] sigmoid(opacity_logits)."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def scales(self) -> Tensor:
        """[P, 3] exp(log_scales)."""
        return torch.exp(self.log_scales)

    @property
    def unit_rotations(self) -> Tensor:
        """[P, 4] normalised quaternions."""
        return self.rotations / self.rotations.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @property
    def colors(self) -> Tensor:
        """[P, 3] the view-independent (degree-0) colour, clamped to [0, 1]."""
        return sh_dc_to_rgb(self.sh[:, 0, :]).clamp(0.0, 1.0)

    def rasterizer_inputs(self, device: Optional[Union[str, torch.device]] = None,
                          sh_degree: Optional[int] = None) -> Dict[str, Optional[Tensor]]:
        """Keyword arguments for :class:`GaussianRasterizer`, activated as 3DGS does.

        ``opacities = sigmoid``, ``scales = exp``, ``rotations`` normalised,
        ``shs`` the coefficients (set ``settings.sh_degree`` to at most
        :attr:`sh_degree`; ``sh_degree=`` here keeps only that many bands),
        ``means2D`` zeros, ``importances`` ``None`` (all ones). Float32,
        contiguous, detached, on ``device`` (default: where the cloud is).
        """
        shs = self.sh
        if sh_degree is not None:
            if not 0 <= sh_degree <= self.sh_degree:
                raise ValueError(f"sh_degree: expected 0..{self.sh_degree} (what the cloud holds), got {sh_degree}")
            shs = shs[:, : (sh_degree + 1) ** 2]

        def f(t: Tensor) -> Tensor:
            return t.detach().to(device=device, dtype=torch.float32).contiguous()

        means = f(self.means)
        return dict(
            means3D=means,
            means2D=torch.zeros_like(means),
            opacities=f(self.opacities),
            importances=None,
            shs=f(shs),
            colors_precomp=None,
            scales=f(self.scales),
            rotations=f(self.unit_rotations),
            cov3D_precomp=None,
        )

    # --------------------------------------------------------- constructors
    @classmethod
    def from_activated(cls, means: Tensor, opacities: Tensor, scales: Tensor, rotations: Tensor,
                       shs: Optional[Tensor] = None, colors: Optional[Tensor] = None,
                       sh_degree: Optional[int] = None) -> "GaussianCloud":
        """A cloud from activated values (opacities in (0, 1), positive scales).

        Give ``shs`` [P, M, 3] or ``colors`` [P, 3] in [0, 1] (stored as the DC
        term). ``sh_degree`` pads with zero coefficients (or truncates) to that
        degree. Opacities are clamped to [1e-6, 1 - 1e-6] and scales to at
        least 1e-12 before the logit / log.
        """
        if (shs is None) == (colors is None):
            raise ValueError("from_activated: give exactly one of shs and colors")
        P = means.shape[0]
        if shs is None:
            shs = rgb_to_sh_dc(colors.reshape(P, 3).float()).reshape(P, 1, 3)
        cloud = cls(
            means=means.detach().float().reshape(P, 3).clone(),
            sh=shs.detach().float().clone(),
            opacity_logits=_logit(opacities.detach().double().reshape(P, 1)).float(),
            log_scales=torch.log(scales.detach().double().reshape(P, 3).clamp_min(1e-12)).float(),
            rotations=rotations.detach().float().reshape(P, 4).clone(),
        )
        return cloud if sh_degree is None else cloud.with_sh_degree(sh_degree)

    @classmethod
    def from_rasterizer_inputs(cls, inputs: Mapping[str, Optional[Tensor]],
                               sh_degree: Optional[int] = None) -> "GaussianCloud":
        """A cloud from rasterizer keyword arguments (e.g. ``Scene.inputs``).

        Needs ``scales`` and ``rotations`` (not ``cov3D_precomp``) and one of
        ``shs`` / ``colors_precomp``.
        """
        if inputs.get("scales") is None or inputs.get("rotations") is None:
            raise ValueError("from_rasterizer_inputs: needs scales and rotations (cov3D_precomp cannot be stored)")
        return cls.from_activated(inputs["means3D"], inputs["opacities"], inputs["scales"], inputs["rotations"],
                                  shs=inputs.get("shs"), colors=inputs.get("colors_precomp"), sh_degree=sh_degree)

    # ------------------------------------------------------------- editing
    def with_sh_degree(self, degree: int) -> "GaussianCloud":
        """A copy holding exactly ``(degree + 1)^2`` coefficients: zero-padded or truncated."""
        if not 0 <= degree <= 3:
            raise ValueError(f"degree: expected 0..3, got {degree}")
        M = (degree + 1) ** 2
        sh = self.sh[:, :M]
        if sh.shape[1] < M:
            pad = sh.new_zeros(sh.shape[0], M - sh.shape[1], 3)
            sh = torch.cat([sh, pad], dim=1)
        return GaussianCloud(self.means.clone(), sh.clone(), self.opacity_logits.clone(), self.log_scales.clone(),
                             self.rotations.clone())

    def subset(self, index: Tensor) -> "GaussianCloud":
        """The Gaussians selected by a [P] bool mask or an index tensor."""
        return GaussianCloud(self.means[index], self.sh[index], self.opacity_logits[index], self.log_scales[index],
                             self.rotations[index])

    def to(self, device: Union[str, torch.device]) -> "GaussianCloud":
        return GaussianCloud(*(t.to(device) for t in (self.means, self.sh, self.opacity_logits, self.log_scales,
                                                      self.rotations)))


# ---------------------------------------------------------------------- I/O
def _property_names(sh_coeffs: int):
    rest = 3 * (sh_coeffs - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_gaussian_ply(path: PathLike, cloud: GaussianCloud) -> Path:
    """Write ``cloud`` as a binary little-endian 3DGS PLY (float32 properties).

    The parent folder is created if missing. Returns the path.
    """
    import plyfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    P = cloud.num_gaussians
    M = cloud.sh.shape[1]
    f32 = lambda t: t.detach().cpu().to(torch.float32).numpy()  # noqa: E731
    sh = f32(cloud.sh)  # [P, M, 3]
    columns = np.concatenate(
        [
            f32(cloud.means),
            np.zeros((P, 3), dtype=np.float32),
            sh[:, 0, :],
            sh[:, 1:, :].transpose(0, 2, 1).reshape(P, 3 * (M - 1)),  # channel-major, as 3DGS writes
            f32(cloud.opacity_logits),
            f32(cloud.log_scales),
            f32(cloud.rotations),
        ],
        axis=1,
    )
    names = _property_names(M)
    assert columns.shape == (P, len(names))
    vertices = np.empty(P, dtype=[(n, "<f4") for n in names])
    for i, n in enumerate(names):
        vertices[n] = columns[:, i]
    element = plyfile.PlyElement.describe(vertices, "vertex")
    plyfile.PlyData([element], text=False, byte_order="<").write(str(path))
    return path


def read_gaussian_ply(path: PathLike) -> GaussianCloud:
    """Read a 3DGS PLY (ours or another trainer's) into a :class:`GaussianCloud`.

    Properties are found by name; the SH degree follows from the number of
    ``f_rest_*`` properties (0, 9, 24 or 45). Raises ``FileNotFoundError`` for
    a missing file and ``ValueError`` naming what is missing or malformed
    otherwise (a plain point cloud, a compressed splat file, a wrong number
    of SH coefficients).
    """
    import plyfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    ply = plyfile.PlyData.read(str(path))
    elements = {e.name: e for e in ply.elements}
    if "vertex" not in elements:
        raise ValueError(f"{path}: no 'vertex' element (elements: {sorted(elements)})")
    if "chunk" in elements:
        raise ValueError(f"{path}: this is a compressed splat PLY (it has a 'chunk' element); "
                         "decompress it to the standard 3DGS layout first")
    data = elements["vertex"].data
    names = set(data.dtype.names or ())

    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [n for n in required if n not in names]
    if missing:
        hint = ""
        if {"red", "green", "blue"} <= names and "opacity" not in names:
            hint = " (this looks like a plain coloured point cloud, not trained Gaussians)"
        raise ValueError(f"{path}: not a 3DGS Gaussian PLY, missing properties {missing}{hint}")

    rest_idx = []
    for n in names:
        m = re.fullmatch(r"f_rest_(\d+)", n)
        if m:
            rest_idx.append(int(m.group(1)))
    rest_idx.sort()
    n_rest = len(rest_idx)
    if rest_idx != list(range(n_rest)):
        raise ValueError(f"{path}: f_rest_* properties are not numbered 0..{n_rest - 1}")
    if n_rest % 3 != 0 or n_rest // 3 + 1 not in _VALID_M:
        raise ValueError(f"{path}: {n_rest} f_rest_* properties; expected 0, 9, 24 or 45 (SH degree 0..3)")
    M = n_rest // 3 + 1

    P = len(data)

    def cols(keys) -> np.ndarray:
        if not keys:
            return np.zeros((P, 0), dtype=np.float32)
        return np.stack([np.asarray(data[k], dtype=np.float32) for k in keys], axis=1)

    dc = cols(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(P, 1, 3)
    rest = cols([f"f_rest_{i}" for i in range(n_rest)]).reshape(P, 3, M - 1).transpose(0, 2, 1)
    sh = np.concatenate([dc, rest], axis=1)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return GaussianCloud(
        means=t(cols(["x", "y", "z"])),
        sh=t(sh),
        opacity_logits=t(cols(["opacity"])),
        log_scales=t(cols(["scale_0", "scale_1", "scale_2"])),
        rotations=t(cols(["rot_0", "rot_1", "rot_2", "rot_3"])),
    )
