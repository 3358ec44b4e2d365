"""The public rasterizer: a drop-in for the stock 3DGS GaussianRasterizer that
also renders an importance map and differentiates it."""
from typing import NamedTuple, Optional, Tuple

import torch
from torch import nn

from . import _backend
from ._validation import check_inputs, check_settings, check_tensor
from .settings import GaussianRasterizationSettings

_EMPTY = torch.empty(0)


class GaussianStats(NamedTuple):
    """Per-Gaussian statistics of one render, for pruning (no gradient).

    Over the pixels p where Gaussian i was blended with weight alpha_i T_i:"""

    accum_weight: torch.Tensor  # [P] sum_p pixel_weight_p alpha_i T_i
    hit_count: torch.Tensor     # [P] int32, number of such pixels
    max_weight: torch.Tensor    # [P] max_p alpha_i T_i
    top_count: torch.Tensor     # [P] int32, pixels where i had the largest alpha T


class RenderOutput(NamedTuple):
    """Everything one rasterization produces (`GaussianRasterizer.render`).

    color, importance_map, invdepth and alpha are differentiable; radii and
    n_contrib are integers without gradient."""

    color: torch.Tensor           # [3, H, W], background included
    importance_map: torch.Tensor  # [H, W], sum_i o_i alpha_i T_i
    radii: torch.Tensor           # [P] int32, 0 for culled Gaussians
    invdepth: torch.Tensor        # [1, H, W], sum_i (1 / z_i) alpha_i T_i (0 where empty)
    alpha: torch.Tensor           # [1, H, W], 1 - final transmittance
    n_contrib: torch.Tensor       # [H, W] int32, tile-list position + 1 of the last blended splat
    stats: Optional[GaussianStats] = None  # render(stats=True) only


def _or_empty(t: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return t if t is not None else _EMPTY.to(like.device)


def _debug_kwargs(settings, device: torch.device) -> dict:
    """The CUDA kernels take `debug` (synchronise and name the failing kernel);
    on the CPU every error is already raised where it happens."""
    return {"debug": bool(settings.debug)} if device.type == "cuda" else {}


def _camera_args(s: GaussianRasterizationSettings):
    """Settings tensors as the kernels read them: float32, contiguous."""
    f = lambda t: t.detach().to(torch.float32).contiguous()  # noqa: E731
    return f(s.bg), f(s.viewmatrix), f(s.projmatrix), f(s.campos)


class _RasterizeGaussians(torch.autograd.Function):
    """Autograd glue around the compiled forward and backward kernels.
    Absent optional inputs arrive as None, reach the kernels as empty tensors
    and get no gradient."""

    @staticmethod
    def forward(ctx, means3D, means2D, shs, colors_precomp, opacities, importances, scales, rotations,
                cov3D_precomp, settings, kernels, compute_stats, pixel_weights):
        ctx.given = tuple(t is not None for t in (shs, colors_precomp, scales, rotations, cov3D_precomp))
        shs, colors_precomp, scales, rotations, cov3D_precomp = (
            _or_empty(t, means3D) for t in (shs, colors_precomp, scales, rotations, cov3D_precomp))
        bg, view, proj, campos = _camera_args(settings)
        outputs = kernels.forward(
            bg, means3D, colors_precomp, opacities, importances, scales, rotations, float(settings.scale_modifier),
            cov3D_precomp, view, proj, float(settings.tanfovx), float(settings.tanfovy), settings.image_height,
            settings.image_width, shs, settings.sh_degree, campos, bool(settings.antialiasing), compute_stats,
            _or_empty(pixel_weights, means3D), **_debug_kwargs(settings, means3D.device),
        )
        color, importance_map, radii, invdepth, alpha = outputs[:5]
        # the backend's forward state (its own layout: rasterize_points.h),
        # then the four statistics
        state, stats = outputs[5:-4], outputs[-4:]
        ctx.settings = settings
        ctx.kernels = kernels
        ctx.means2D_columns = means2D.shape[1]
        ctx.save_for_backward(means3D, shs, colors_precomp, opacities, importances, scales, rotations,
                              cov3D_precomp, *state)
        n_contrib = state[-1]
        ctx.mark_non_differentiable(radii, n_contrib, *stats)
        return (color, importance_map, radii, invdepth, alpha, n_contrib, *stats)

    @staticmethod
    def backward(ctx, grad_color, grad_importance_map, _grad_radii, grad_invdepth, grad_alpha, *_no_grad):
        (means3D, shs, colors_precomp, opacities, importances, scales, rotations, cov3D_precomp,
         *state) = ctx.saved_tensors
        s = ctx.settings
        bg, view, proj, campos = _camera_args(s)
        (g_means3D, g_means2D, g_opacities, g_importances, g_colors, g_shs, g_cov3D, g_scales,
         g_rotations) = ctx.kernels.backward(
            bg, means3D, colors_precomp, opacities, importances, scales, rotations, float(s.scale_modifier),
            cov3D_precomp, view, proj, float(s.tanfovx), float(s.tanfovy), shs, s.sh_degree, campos, state,
            bool(s.antialiasing), grad_color.contiguous(), grad_importance_map.contiguous(),
            grad_invdepth.reshape(grad_importance_map.shape).contiguous(),
            grad_alpha.reshape(grad_importance_map.shape).contiguous(), **_debug_kwargs(s, means3D.device),
        )
        g_shs, g_colors, g_scales, g_rotations, g_cov3D = (
            g if given else None for g, given in zip((g_shs, g_colors, g_scales, g_rotations, g_cov3D), ctx.given))
        return (g_means3D, g_means2D[:, : ctx.means2D_columns], g_shs, g_colors, g_opacities, g_importances,
                g_scales, g_rotations, g_cov3D, None, None, None, None)


def _render(means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp, raster_settings,
            importances, stats=False, pixel_weights=None) -> RenderOutput:
    """Validates, picks the backend for the device of means3D, and renders."""
    kernels = _backend.kernels_for(means3D.device) if isinstance(means3D, torch.Tensor) else None
    dtype = torch.float32 if kernels is not None else None
    check_inputs(raster_settings, means3D, means2D, opacities, importances, sh, colors_precomp, scales, rotations,
                 cov3Ds_precomp, dtype=dtype)
    if pixel_weights is not None:
        if not stats:
            raise ValueError("pixel_weights: only used by the statistics; pass stats=True with it")
        check_tensor("pixel_weights", pixel_weights,
                     [(raster_settings.image_height, raster_settings.image_width)], means3D.device,
                     dtype or means3D.dtype)
    if kernels is None:
        _backend.warn_fallback(means3D.device)
        from .reference import rasterize_reference

        ref = rasterize_reference(means3D, means2D, opacities, importances, sh, colors_precomp, scales, rotations,
                                  cov3Ds_precomp, raster_settings=raster_settings)
        # the reference has no tile lists: n_contrib is left at -1 ("unknown")
        n_contrib = torch.full_like(ref.importance_map, -1, dtype=torch.int32)
        gaussian_stats = None
        if stats:
            from .reference import statistics_from_weights

            gaussian_stats = GaussianStats(*statistics_from_weights(ref.weights.detach(), pixel_weights))
        return RenderOutput(ref.color, ref.importance_map, ref.radii, ref.invdepth, ref.alpha, n_contrib,
                            gaussian_stats)
    P = means3D.shape[0]
    if importances is None:
        importances = torch.ones(P, dtype=means3D.dtype, device=means3D.device)
    outputs = _RasterizeGaussians.apply(
        means3D, means2D, sh, colors_precomp, opacities.reshape(P), importances.reshape(P), scales, rotations,
        cov3Ds_precomp, raster_settings, kernels, bool(stats), pixel_weights,
    )
    return RenderOutput(*outputs[:6], GaussianStats(*outputs[6:]) if stats else None)


def rasterize_gaussians(
    means3D: torch.Tensor,
    means2D: torch.Tensor,
    sh: Optional[torch.Tensor],
    colors_precomp: Optional[torch.Tensor],
    opacities: torch.Tensor,
    scales: Optional[torch.Tensor],
    rotations: Optional[torch.Tensor],
    cov3Ds_precomp: Optional[torch.Tensor],
    raster_settings: GaussianRasterizationSettings,
    importances: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Functional form (argument order of the stock `rasterize_gaussians`, with
    `importances` appended). Returns (image [3,H,W], importance_map [H,W],
    radii [P] int32)."""
    out = _render(means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp,
                  raster_settings, importances)
    return out.color, out.importance_map, out.radii


class GaussianRasterizer(nn.Module):
    """Drop-in for the stock `GaussianRasterizer`: `forward` returns
    (rendered_image [3,H,W], importance_map [H,W], radii [P] int32)."""

    def __init__(self, raster_settings: GaussianRasterizationSettings):
        super().__init__()
        self.raster_settings = raster_settings

    def markVisible(self, positions: torch.Tensor) -> torch.Tensor:
        """[P] bool: which Gaussians lie in front of the near plane."""
        s = self.raster_settings
        if not isinstance(positions, torch.Tensor):
            raise TypeError(f"positions: expected a torch.Tensor, got {type(positions).__name__}")
        check_settings(s, positions.device)
        kernels = _backend.kernels_for(positions.device)
        if kernels is None:  # view-space z of [x, y, z, 1] @ viewmatrix, as the kernels test it
            z = positions @ s.viewmatrix[:3, 2].to(positions) + s.viewmatrix[3, 2].to(positions)
            return z > 0.2
        check_tensor("positions", positions, [(None, 3)], positions.device)
        with torch.no_grad():
            _, view, proj, _ = _camera_args(s)
            return kernels.mark_visible(positions, view, proj)

    def forward(
        self,
        means3D: torch.Tensor,
        means2D: torch.Tensor,
        opacities: torch.Tensor,
        shs: Optional[torch.Tensor] = None,
        colors_precomp: Optional[torch.Tensor] = None,
        scales: Optional[torch.Tensor] = None,
        rotations: Optional[torch.Tensor] = None,
        cov3D_precomp: Optional[torch.Tensor] = None,
        importances: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.render(means3D, means2D, opacities, shs, colors_precomp, scales, rotations, cov3D_precomp,
                          importances)
        return out.color, out.importance_map, out.radii

    def render(
        self,
        means3D: torch.Tensor,
        means2D: torch.Tensor,
        opacities: torch.Tensor,
        shs: Optional[torch.Tensor] = None,
        colors_precomp: Optional[torch.Tensor] = None,
        scales: Optional[torch.Tensor] = None,
        rotations: Optional[torch.Tensor] = None,
        cov3D_precomp: Optional[torch.Tensor] = None,
        importances: Optional[torch.Tensor] = None,
        *,
        stats: bool = False,
        pixel_weights: Optional[torch.Tensor] = None,
    ) -> RenderOutput:
        """Same arguments as `forward`; returns every output by name
        (color, importance_map, radii, invdepth, alpha, n_contrib, stats).

        stats=True also computes the per-Gaussian statistics (GaussianStats)
        during the forward pass; pixel_weights [H, W] weighs accum_weight
        (for example a mask, or an error map as in Taming 3DGS)."""
        return _render(means3D, means2D, shs, colors_precomp, opacities, scales, rotations, cov3D_precomp,
                       self.raster_settings, importances, stats, pixel_weights)
