"""Pure-PyTorch reference rasterizer: the test oracle and the no-compiler fallback.

This module implements ``spec/ALGORITHM.md`` (tile-based EWA splatting of 3D
Gaussians with an extra "importance" channel) with dense tensor operations and
lets torch autograd differentiate it. It runs in any floating dtype (float32
and float64 are tested) on any device; the compiled CPU/CUDA backends follow
the same algorithm and must agree with it within float32 tolerance.

It is written to be read, not to be fast: the per-pixel stage evaluates every
visible Gaussian at every pixel of the image, so time and memory are
``O(P_visible * H * W)`` (several tensors of that size are kept for the
backward pass). That is fine for test scenes (thousands of Gaussians, images of
tens to a few hundred pixels) and hopeless for a real scene.

Conventions (identical to the compiled kernels)
----------------------------------------------
* ``viewmatrix`` / ``projmatrix`` are read in column-major order by the
  kernels (``m[4*col + row]``); with the tensors as stored that means
  ``view-space point = ([x, y, z, 1] @ viewmatrix)[:3]`` and
  ``p_hom = [x, y, z, 1] @ projmatrix``, ``ndc = p_hom[:3] / (p_hom[3] + 1e-7)``.
* ``means2D`` is added to the NDC x, y of each projected mean before the
  conversion to pixels, so its autograd gradient is the gradient with respect
  to the NDC position (pixel gradient times ``0.5 W`` / ``0.5 H``), which is
  how the compiled backends define the ``means2D`` gradient.
* A Gaussian is *invisible* (radius 0, never drawn, zero gradient) when its
  view depth is ``<= 0.2``, its dilated 2D covariance has determinant 0, its
  pixel mean / conic / radius is not finite (which a non-finite mean,
  scale, rotation or ``cov3D_precomp`` entry causes), its opacity,
  importance or colour input (the ``colors_precomp`` row, or one of the
  ``(sh_degree + 1)**2`` SH coefficients used) is not finite, or its tile
  rectangle is empty.
* A visible Gaussian is evaluated only at pixels whose 16x16 tile lies in its
  tile rectangle (as the tile-binned kernels do; the 3-sigma radius does not
  bound where ``alpha >= 1/255``).
* The clamps (``tx/tz``, ``ty/tz`` to ``+-1.3 tanfov``, ``alpha <= 0.99``, SH
  colour ``>= 0``, antialiasing ratio ``>= 0.000025``) are ``torch.clamp``,
  so their gradients are exact: zero where the clamp is active.

Float32 note: ``torch.cumprod`` on the CPU may accumulate in higher precision
than a sequential float32 product, so in float32 a pixel whose transmittance
lands within rounding of the ``1e-4`` early-stop threshold can stop one
Gaussian earlier or later than in the compiled kernels. Such pixels are
vanishingly rare; float64 has no such ambiguity.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .settings import GaussianRasterizationSettings

__all__ = [
    "ReferenceOutput",
    "rasterize_reference",
    "eval_sh",
    "quaternion_to_rotation",
    "covariance_from_scales_rotations",
    "covariance_from_upper",
    "SH_C0",
    "SH_C1",
    "SH_C2",
    "SH_C3",
    "TILE_SIZE",
    "NEAR_PLANE",
]

# Constants of ALGORITHM.md.
TILE_SIZE = 16
NEAR_PLANE = 0.2  # view depth <= this: invisible
W_EPS = 1e-7  # p_w = 1 / (p_hom.w + W_EPS)
FRUSTUM_CLAMP = 1.3  # t.x / t.z and t.y / t.z clamped to +-1.3 tanfov in the EWA Jacobian
DILATION = 0.3  # low-pass filter added to both diagonal entries of the 2D covariance
AA_MIN_RATIO = 0.000025  # antialiasing: opacity *= sqrt(max(AA_MIN_RATIO, det0 / det1))
RADIUS_CAP = 1e9
ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4  # early stop: inclusive transmittance below this stops the pixel

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


class ReferenceOutput(NamedTuple):
    """Everything :func:`rasterize_reference` computes.

    Attributes:
        color: ``[3, H, W]`` rendered image, ``C + final_T * bg``.
        importance_map: ``[H, W]``, ``sum_i o_i alpha_i T_i`` (no background term).
        radii: ``[P] int32`` screen-space radius in pixels; 0 for invisible Gaussians.
        final_T: ``[H, W]`` transmittance left after the last blended Gaussian
            (``1 - final_T`` is the alpha map).
        weights: ``[P, H, W]`` blending weight ``alpha_i T_i`` of Gaussian ``i``
            at each pixel, 0 where it was not blended; in the caller's order.
        invdepth: ``[1, H, W]``, ``sum_i (1 / z_i) alpha_i T_i`` with ``z_i`` the
            view depth (no background term).
        alpha: ``[1, H, W]``, ``1 - final_T``.
    """

    color: Tensor
    importance_map: Tensor
    radii: Tensor
    final_T: Tensor
    weights: Tensor
    invdepth: Tensor
    alpha: Tensor


# ---------------------------------------------------------------------------
# Per-Gaussian building blocks (public: handy for tests of other backends)
# ---------------------------------------------------------------------------


def eval_sh(deg: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate real spherical harmonics of degree ``deg`` (0..3).

    Args:
        deg: SH degree; the first ``(deg + 1)**2`` coefficients are used.
        sh: ``[..., M, 3]`` coefficients, ``M >= (deg + 1)**2``.
        dirs: ``[..., 3]`` unit view directions.

    Returns:
        ``[..., 3]`` colour *before* the ``+ 0.5`` offset and the clamp, with the
        constants and term order of ALGORITHM.md.
    """
    if not 0 <= deg <= 3:
        raise ValueError(f"eval_sh: deg must be in 0..3, got {deg}")
    result = SH_C0 * sh[..., 0, :]
    if deg > 0:
        x = dirs[..., 0:1]
        y = dirs[..., 1:2]
        z = dirs[..., 2:3]
        result = result - SH_C1 * y * sh[..., 1, :] + SH_C1 * z * sh[..., 2, :] - SH_C1 * x * sh[..., 3, :]
        if deg > 1:
            xx, yy, zz = x * x, y * y, z * z
            xy, yz, xz = x * y, y * z, x * z
            result = (
                result
                + SH_C2[0] * xy * sh[..., 4, :]
                + SH_C2[1] * yz * sh[..., 5, :]
                + SH_C2[2] * (2.0 * zz - xx - yy) * sh[..., 6, :]
                + SH_C2[3] * xz * sh[..., 7, :]
                + SH_C2[4] * (xx - yy) * sh[..., 8, :]
            )
            if deg > 2:
                result = (
                    result
                    + SH_C3[0] * y * (3.0 * xx - yy) * sh[..., 9, :]
                    + SH_C3[1] * xy * z * sh[..., 10, :]
                    + SH_C3[2] * y * (4.0 * zz - xx - yy) * sh[..., 11, :]
                    + SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh[..., 12, :]
                    + SH_C3[4] * x * (4.0 * zz - xx - yy) * sh[..., 13, :]
                    + SH_C3[5] * z * (xx - yy) * sh[..., 14, :]
                    + SH_C3[6] * x * (xx - 3.0 * yy) * sh[..., 15, :]
                )
    return result


def quaternion_to_rotation(q: Tensor) -> Tensor:
    """Rotation matrices ``[N, 3, 3]`` from quaternions ``[N, 4]`` = (w, x, y, z).

    The quaternion is used as given (not normalised), exactly as the kernels do:
    ``R = [[1-2(y²+z²), 2(xy-wz), 2(xz+wy)], [2(xy+wz), 1-2(x²+z²), 2(yz-wx)],
    [2(xz-wy), 2(yz+wx), 1-2(x²+y²)]]``.
    """
    r, x, y, z = q.unbind(-1)
    rows = [
        torch.stack([1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - r * z), 2.0 * (x * z + r * y)], -1),
        torch.stack([2.0 * (x * y + r * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - r * x)], -1),
        torch.stack([2.0 * (x * z - r * y), 2.0 * (y * z + r * x), 1.0 - 2.0 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, -2)


def covariance_from_scales_rotations(scales: Tensor, rotations: Tensor, scale_modifier: float = 1.0) -> Tensor:
    """3D covariances ``Sigma = R diag(s)^2 R^T`` ``[N, 3, 3]``, ``s = scale_modifier * scales``.

    (ALGORITHM.md writes this as ``M^T M`` with ``M = S R`` in the column-major
    glm notation of the CUDA code; with ``R`` the matrix of
    :func:`quaternion_to_rotation` it is ``R S^2 R^T``.)
    """
    R = quaternion_to_rotation(rotations)
    s = scale_modifier * scales
    return (R * (s * s).unsqueeze(-2)) @ R.transpose(-1, -2)


def covariance_from_upper(cov6: Tensor) -> Tensor:
    """Symmetric ``[N, 3, 3]`` matrices from their upper entries ``[N, 6]`` = (xx, xy, xz, yy, yz, zz)."""
    xx, xy, xz, yy, yz, zz = cov6.unbind(-1)
    return torch.stack(
        [torch.stack([xx, xy, xz], -1), torch.stack([xy, yy, yz], -1), torch.stack([xz, yz, zz], -1)], -2
    )


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


class _Camera(NamedTuple):
    H: int
    W: int
    tanfovx: float
    tanfovy: float
    focal_x: float
    focal_y: float
    view: Tensor  # [4, 4] as stored (W2C^T)
    proj: Tensor  # [4, 4] as stored (full projection, transposed)
    campos: Tensor  # [3]
    bg: Tensor  # [3]


class _Geometry(NamedTuple):
    depth: Tensor  # [N] view-space z
    pix_x: Tensor  # [N]
    pix_y: Tensor  # [N]
    a: Tensor  # [N] dilated 2D covariance entries
    b: Tensor
    c: Tensor
    det0: Tensor  # [N] determinant before dilation
    det1: Tensor  # [N] determinant after dilation


def _geometry(means3D: Tensor, means2D: Tensor, Sigma: Tensor, cam: _Camera) -> _Geometry:
    """Projection and EWA 2D covariance for N Gaussians (steps 1 and 3 of the preprocess)."""
    n = means3D.shape[0]
    p_h = torch.cat([means3D, means3D.new_ones(n, 1)], dim=1)
    t = (p_h @ cam.view)[:, :3]
    p_hom = p_h @ cam.proj
    p_w = 1.0 / (p_hom[:, 3] + W_EPS)
    ndc_x = p_hom[:, 0] * p_w + means2D[:, 0]
    ndc_y = p_hom[:, 1] * p_w + means2D[:, 1]
    pix_x = ((ndc_x + 1.0) * cam.W - 1.0) * 0.5
    pix_y = ((ndc_y + 1.0) * cam.H - 1.0) * 0.5

    tz = t[:, 2]
    limx = FRUSTUM_CLAMP * cam.tanfovx
    limy = FRUSTUM_CLAMP * cam.tanfovy
    tx = torch.clamp(t[:, 0] / tz, -limx, limx) * tz
    ty = torch.clamp(t[:, 1] / tz, -limy, limy) * tz
    zero = torch.zeros_like(tz)
    tz2 = tz * tz
    J = torch.stack(
        [
            torch.stack([cam.focal_x / tz, zero, -(cam.focal_x * tx) / tz2], -1),
            torch.stack([zero, cam.focal_y / tz, -(cam.focal_y * ty) / tz2], -1),
        ],
        -2,
    )  # [N, 2, 3]
    w2c_rot = cam.view[:3, :3].T
    T = J @ w2c_rot  # [N, 2, 3]
    cov = T @ Sigma @ T.transpose(-1, -2)  # [N, 2, 2]
    a0, b, c0 = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
    a = a0 + DILATION
    c = c0 + DILATION
    det0 = a0 * c0 - b * b
    det1 = a * c - b * b
    return _Geometry(tz, pix_x, pix_y, a, b, c, det0, det1)


def _conic(g: _Geometry):
    det_inv = 1.0 / g.det1
    return g.c * det_inv, -g.b * det_inv, g.a * det_inv


def _as_vector(x: Optional[Tensor], P: int, name: str, dtype, device) -> Optional[Tensor]:
    if x is None:
        return None
    if x.numel() != P or not (x.dim() == 1 or (x.dim() == 2 and x.shape[1] == 1)):
        raise ValueError(f"{name}: expected shape [{P}] or [{P}, 1], got {list(x.shape)}")
    return x.reshape(P).to(device=device, dtype=dtype)


def _check_rows(x: Optional[Tensor], P: int, cols, name: str) -> None:
    if x is None:
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] != P or (cols is not None and x.shape[1] != cols):
        raise ValueError(f"{name}: expected shape [{P}, {cols}], got {list(x.shape)}")


# ---------------------------------------------------------------------------
# The rasterizer
# ---------------------------------------------------------------------------


def rasterize_reference(
    means3D: Tensor,
    means2D: Optional[Tensor],
    opacities: Tensor,
    importances: Optional[Tensor] = None,
    shs: Optional[Tensor] = None,
    colors_precomp: Optional[Tensor] = None,
    scales: Optional[Tensor] = None,
    rotations: Optional[Tensor] = None,
    cov3D_precomp: Optional[Tensor] = None,
    *,
    raster_settings: GaussianRasterizationSettings,
) -> ReferenceOutput:
    """Render Gaussians with dense PyTorch ops, differentiable by autograd.

    The computation runs in the dtype and on the device of ``means3D``; the
    settings' matrices, ``bg`` and ``campos`` are cast to it. Cost is
    ``O(P_visible * H * W)`` in time and memory.

    Args:
        means3D: ``[P, 3]`` world-space means.
        means2D: ``[P, 3]`` (usually zeros with ``requires_grad``) added to the
            projected NDC x, y; its gradient is the NDC-space gradient used by
            densification. ``None`` means zeros.
        opacities: ``[P, 1]`` or ``[P]``.
        importances: ``[P, 1]`` or ``[P]`` per-Gaussian importance ``o_i``;
            ``None`` means all ones (the importance map is then the alpha map).
        shs: ``[P, M, 3]`` SH coefficients, ``M >= (sh_degree + 1)**2`` (only the
            first ``(sh_degree + 1)**2`` are used). Exclusive with ``colors_precomp``.
        colors_precomp: ``[P, 3]`` colours used as given (no clamp).
        scales: ``[P, 3]``, with ``rotations`` ``[P, 4]`` (w, x, y, z, used
            unnormalised). Exclusive with ``cov3D_precomp``.
        rotations: see ``scales``.
        cov3D_precomp: ``[P, 6]`` upper entries (xx, xy, xz, yy, yz, zz) of the
            3D covariance, used as given (``scale_modifier`` does not apply).
        raster_settings: camera and image settings. ``antialiasing`` (if the
            settings have that field and it is true) enables Mip-Splatting's 2D
            filter with opacity compensation; ``prefiltered`` and ``debug`` are
            ignored.

    Returns:
        A :class:`ReferenceOutput` (color, importance_map, radii, final_T, weights).

    Raises:
        ValueError: inconsistent inputs (both or neither of ``shs`` /
            ``colors_precomp``, both or neither of (``scales``, ``rotations``) /
            ``cov3D_precomp``, wrong shapes, SH degree out of range, empty image).
    """
    st = raster_settings
    if not isinstance(means3D, Tensor) or means3D.dim() != 2 or means3D.shape[1] != 3:
        shape = list(means3D.shape) if isinstance(means3D, Tensor) else type(means3D).__name__
        raise ValueError(f"means3D: expected shape [P, 3], got {shape}")
    if not means3D.is_floating_point():
        raise TypeError(f"means3D: expected a floating dtype, got {means3D.dtype}")
    P = means3D.shape[0]
    dtype, device = means3D.dtype, means3D.device
    H, W = int(st.image_height), int(st.image_width)
    if H <= 0 or W <= 0:
        raise ValueError(f"raster_settings: image size must be positive, got {H} x {W}")

    if (shs is None) == (colors_precomp is None):
        raise ValueError("exactly one of shs / colors_precomp must be given")
    have_sr = scales is not None or rotations is not None
    if have_sr == (cov3D_precomp is not None) or (have_sr and (scales is None or rotations is None)):
        raise ValueError("exactly one of (scales, rotations) / cov3D_precomp must be given")
    deg = int(st.sh_degree)
    if shs is not None:
        if not 0 <= deg <= 3:
            raise ValueError(f"raster_settings.sh_degree: expected 0..3, got {deg}")
        if shs.dim() != 3 or shs.shape[0] != P or shs.shape[2] != 3 or shs.shape[1] < (deg + 1) ** 2:
            raise ValueError(f"shs: expected shape [{P}, >= {(deg + 1) ** 2}, 3], got {list(shs.shape)}")
    _check_rows(means2D, P, 3, "means2D")
    _check_rows(colors_precomp, P, 3, "colors_precomp")
    _check_rows(scales, P, 3, "scales")
    _check_rows(rotations, P, 4, "rotations")
    _check_rows(cov3D_precomp, P, 6, "cov3D_precomp")

    cast = dict(device=device, dtype=dtype)
    opac = _as_vector(opacities, P, "opacities", dtype, device)
    imp = _as_vector(importances, P, "importances", dtype, device)
    if means2D is None:
        means2D = means3D.new_zeros(P, 3)
    means2D = means2D.to(**cast)
    antialiasing = bool(getattr(st, "antialiasing", False))
    cam = _Camera(
        H=H,
        W=W,
        tanfovx=float(st.tanfovx),
        tanfovy=float(st.tanfovy),
        focal_x=W / (2.0 * float(st.tanfovx)),
        focal_y=H / (2.0 * float(st.tanfovy)),
        view=torch.as_tensor(st.viewmatrix).to(**cast),
        proj=torch.as_tensor(st.projmatrix).to(**cast),
        campos=torch.as_tensor(st.campos).to(**cast),
        bg=torch.as_tensor(st.bg).to(**cast),
    )

    def sigma_of(idx: Optional[Tensor]) -> Tensor:
        """3D covariances of the Gaussians ``idx`` (all when None)."""
        pick = (lambda x: x) if idx is None else (lambda x: x[idx])
        if cov3D_precomp is not None:
            return covariance_from_upper(pick(cov3D_precomp.to(**cast)))
        return covariance_from_scales_rotations(
            pick(scales.to(**cast)), pick(rotations.to(**cast)), float(st.scale_modifier)
        )

    # ---- Pass 1 (no grad, all Gaussians): visibility, radius, tile rect, depth.
    # Invisible Gaussians may produce inf/NaN here; they are dropped before the
    # differentiable pass, so nothing non-finite ever enters the autograd graph.
    gx = (W + TILE_SIZE - 1) // TILE_SIZE
    gy = (H + TILE_SIZE - 1) // TILE_SIZE
    with torch.no_grad():
        g = _geometry(means3D.detach(), means2D.detach(), sigma_of(None).detach(), cam)
        conic = _conic(g)
        mid = 0.5 * (g.a + g.c)
        lam = mid + torch.sqrt(torch.clamp(mid * mid - g.det1, min=0.1))
        radius = torch.clamp(torch.ceil(3.0 * torch.sqrt(lam)), max=RADIUS_CAP)
        visible = (g.depth > NEAR_PLANE) & (g.det1 != 0)
        for v in (g.pix_x, g.pix_y, radius) + conic:
            visible &= torch.isfinite(v)
        # Non-finite attributes that reach the pixels without going through
        # the geometry: culled too, so they never enter pass 2.
        visible &= torch.isfinite(opac.detach())
        if imp is not None:
            visible &= torch.isfinite(imp.detach())
        if colors_precomp is not None:
            colour_inputs = colors_precomp.detach().to(**cast)
        else:
            colour_inputs = shs.detach().to(**cast)[:, : (deg + 1) ** 2].flatten(1)
        visible &= torch.isfinite(colour_inputs).all(dim=1)
        # Tile rectangle, computed on safe values for invisible Gaussians.
        px = torch.where(visible, g.pix_x, torch.zeros_like(g.pix_x))
        py = torch.where(visible, g.pix_y, torch.zeros_like(g.pix_y))
        r = torch.where(visible, radius, torch.zeros_like(radius))
        rect_min_x = torch.floor(torch.clamp((px - r) / TILE_SIZE, 0, gx)).long()
        rect_max_x = torch.floor(torch.clamp((px + r + (TILE_SIZE - 1)) / TILE_SIZE, 0, gx)).long()
        rect_min_y = torch.floor(torch.clamp((py - r) / TILE_SIZE, 0, gy)).long()
        rect_max_y = torch.floor(torch.clamp((py + r + (TILE_SIZE - 1)) / TILE_SIZE, 0, gy)).long()
        visible &= (rect_max_x - rect_min_x) * (rect_max_y - rect_min_y) != 0

        radii = torch.where(visible, r, torch.zeros_like(r)).to(torch.int32)
        vis_idx = torch.nonzero(visible).squeeze(1)
        # Front to back by view depth; stable, so ties keep the caller's order.
        order = vis_idx[torch.sort(g.depth[vis_idx], stable=True).indices]

    # ---- Pass 2 (differentiable, visible Gaussians in depth order).
    m3 = means3D[order]
    g = _geometry(m3, means2D[order], sigma_of(order), cam)
    con_a, con_b, con_c = _conic(g)
    opac_v = opac[order]
    if antialiasing:
        opac_v = opac_v * torch.sqrt(torch.clamp(g.det0 / g.det1, min=AA_MIN_RATIO))
    if colors_precomp is not None:
        rgb = colors_precomp.to(**cast)[order]
    else:
        d = m3 - cam.campos
        norm = torch.linalg.vector_norm(d, dim=1, keepdim=True)
        dirs = d / norm
        rgb = torch.clamp(eval_sh(deg, shs.to(**cast)[order], dirs) + 0.5, min=0.0)
    imp_v = imp[order] if imp is not None else None

    # ---- Per pixel, dense over [P_visible, H, W].
    xs = torch.arange(W, **cast)
    ys = torch.arange(H, **cast)
    dx = (g.pix_x[:, None, None] - xs[None, None, :])  # [Pv, 1, W]
    dy = (g.pix_y[:, None, None] - ys[None, :, None])  # [Pv, H, 1]
    A = con_a[:, None, None]
    B = con_b[:, None, None]
    C = con_c[:, None, None]
    power = -0.5 * (A * dx * dx + C * dy * dy) - B * dx * dy  # [Pv, H, W]

    with torch.no_grad():
        tile_x = torch.arange(W, device=device) // TILE_SIZE
        tile_y = torch.arange(H, device=device) // TILE_SIZE
        in_x = (tile_x[None, :] >= rect_min_x[order, None]) & (tile_x[None, :] < rect_max_x[order, None])
        in_y = (tile_y[None, :] >= rect_min_y[order, None]) & (tile_y[None, :] < rect_max_y[order, None])
        power_ok = power <= 0
    # exp() only of non-positive powers, so no inf can reach the backward pass.
    power_safe = torch.where(power_ok, power, torch.zeros_like(power))
    alpha = torch.clamp(opac_v[:, None, None] * torch.exp(power_safe), max=ALPHA_MAX)
    with torch.no_grad():
        valid = in_y[:, :, None] & in_x[:, None, :] & power_ok & (alpha >= ALPHA_MIN)
        # Transmittance only decreases, so the blended Gaussians of a pixel are the
        # valid ones whose inclusive product stays >= T_MIN (a prefix of the list);
        # the first one below it stops the pixel unblended.
        alpha_valid = torch.where(valid, alpha, torch.zeros_like(alpha))
        blended = valid & (torch.cumprod(1.0 - alpha_valid, dim=0) >= T_MIN)
    alpha_b = torch.where(blended, alpha, torch.zeros_like(alpha))
    T_incl = torch.cumprod(1.0 - alpha_b, dim=0)
    T_all = torch.cat([alpha_b.new_ones(1, H, W), T_incl], 0)  # T before each Gaussian, then final T
    weights_v = alpha_b * T_all[:-1]  # alpha_i T_i, [Pv, H, W]
    final_T = T_all[-1]

    color = torch.einsum("pc,phw->chw", rgb, weights_v) + final_T[None] * cam.bg[:, None, None]
    if imp_v is not None:
        importance_map = torch.einsum("p,phw->hw", imp_v, weights_v)
    else:
        importance_map = weights_v.sum(0)
    invdepth = torch.einsum("p,phw->hw", 1.0 / g.depth, weights_v)[None]
    weights = weights_v.new_zeros(P, H, W).index_copy(0, order, weights_v)
    return ReferenceOutput(color, importance_map, radii, final_T, weights, invdepth, (1.0 - final_T)[None])


def statistics_from_weights(weights: Tensor, pixel_weights: Optional[Tensor] = None):
    """Per-Gaussian statistics (ALGORITHM.md) from the blending weights
    ``weights [P, H, W]`` (``ReferenceOutput.weights``): returns
    ``(accum_weight, hit_count, max_weight, top_count)``. Ties for the top
    contributor go to the lower index (the compiled backends pick the
    front-most; ties have probability zero for real scenes)."""
    w = weights.detach()
    P = w.shape[0]
    pw = torch.ones_like(w[0]) if pixel_weights is None else pixel_weights.to(w)
    accum_weight = (w * pw).sum(dim=(1, 2))
    hit_count = (w > 0).sum(dim=(1, 2)).to(torch.int32)
    max_weight = w.amax(dim=(1, 2)) if P else w.new_zeros(0)
    top_count = torch.zeros(P, dtype=torch.int32, device=w.device)
    if P:
        best = w.argmax(dim=0)
        drawn = w.amax(dim=0) > 0
        top_count.index_add_(0, best[drawn], torch.ones_like(best[drawn], dtype=torch.int32))
    return accum_weight, hit_count, max_weight, top_count
