"""Importance-based pruning: per-Gaussian scores accumulated over cameras,
rules that turn scores into keep-masks, the published recipes as presets, and
a helper that prunes parameters together with their optimizer state.

    from diff_gaussian_rasterization_ks import pruning
    scores = pruning.compute_scores(gaussians, cameras, score="accum_weight")
    keep = pruning.keep_by_ratio(scores, 0.5)
    params = pruning.prune_gaussians(params, keep, optimizer)

`gaussians` is a dict of rasterizer keyword arguments (means3D, opacities,
shs or colors_precomp, scales and rotations or cov3D_precomp, optionally
importances and means2D); `cameras` is a sequence of
GaussianRasterizationSettings.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .rasterizer import GaussianRasterizer
from .settings import GaussianRasterizationSettings

SCORES = ("accum_weight", "hit_count", "max_weight", "top_count", "importance_grad")

PixelWeights = Union[None, torch.Tensor, Sequence[torch.Tensor], Callable[[int, GaussianRasterizationSettings], torch.Tensor]]


def _pixel_weights_for(pixel_weights: PixelWeights, index: int, camera) -> Optional[torch.Tensor]:
    if pixel_weights is None or isinstance(pixel_weights, torch.Tensor):
        return pixel_weights
    if callable(pixel_weights):
        return pixel_weights(index, camera)
    return pixel_weights[index]


def _detached_inputs(gaussians: Dict[str, Optional[torch.Tensor]]) -> Dict[str, Optional[torch.Tensor]]:
    inputs = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in gaussians.items()}
    if inputs.get("means2D") is None:
        inputs["means2D"] = torch.zeros_like(inputs["means3D"])
    return inputs


def compute_scores(
    gaussians: Dict[str, Optional[torch.Tensor]],
    cameras: Sequence[GaussianRasterizationSettings],
    score: str = "accum_weight",
    pixel_weights: PixelWeights = None,
    progress: bool = True,
) -> torch.Tensor:
    """A per-Gaussian score [P] accumulated over `cameras`.

    score:
      accum_weight     sum over views and pixels of pixel_weight * alpha T (blending weight)
      hit_count        number of pixels where the Gaussian was blended
      max_weight       largest alpha T over all pixels of all views
      top_count        pixels where the Gaussian had the largest alpha T
      importance_grad  gradient of sum(pixel_weight * importance_map) w.r.t.
                       the importances: the map is linear in each o_i, so
                       this equals accum_weight whatever the importances
                       are (the route that needs no statistics support).
    pixel_weights: None, one [H, W] map for every view, a list with one map
    per view, or a function (view index, settings) -> map.
    """
    if score not in SCORES:
        raise ValueError(f"score: expected one of {SCORES}, got {score!r}")
    inputs = _detached_inputs(gaussians)
    P = inputs["means3D"].shape[0]
    device = inputs["means3D"].device
    use_max = score == "max_weight"
    total = torch.zeros(P, dtype=torch.float64, device=device)
    for index, camera in enumerate(tqdm(cameras, desc=f"scores ({score})", disable=not progress, leave=False)):
        pw = _pixel_weights_for(pixel_weights, index, camera)
        rasterizer = GaussianRasterizer(camera)
        if score == "importance_grad":
            importances = inputs.get("importances")
            importances = (torch.ones(P, device=device) if importances is None else importances.reshape(P)).clone()
            importances.requires_grad_(True)
            out = rasterizer.render(**dict(inputs, importances=importances))
            upstream = torch.ones_like(out.importance_map) if pw is None else pw.to(out.importance_map)
            (grad,) = torch.autograd.grad(out.importance_map, importances, upstream)
            value = grad
        else:
            with torch.no_grad():
                out = rasterizer.render(**inputs, stats=True, pixel_weights=pw)
            value = getattr(out.stats, score)
        value = value.to(torch.float64)
        total = torch.maximum(total, value) if use_max else total + value
    return total.to(torch.float32)


# ---------------------------------------------------------------------------
# From scores to keep-masks
# ---------------------------------------------------------------------------


def _check_scores(scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1:
        raise ValueError(f"scores: expected a 1-D tensor, got {scores!r:.80}")


def keep_by_ratio(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Keeps the round(keep_ratio * P) highest-scoring Gaussians (ties: lower index first)."""
    _check_scores(scores)
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio: expected a number in [0, 1], got {keep_ratio}")
    k = int(round(keep_ratio * scores.numel()))
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[order[:k]] = True
    return keep


def keep_by_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keeps the Gaussians whose score is at least `threshold`."""
    _check_scores(scores)
    return scores >= threshold


def keep_by_cumulative_share(scores: torch.Tensor, share: float) -> torch.Tensor:
    """Keeps the smallest set of Gaussians whose scores add up to at least
    `share` of the total (highest scores first)."""
    _check_scores(scores)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share: expected a number in [0, 1], got {share}")
    keep = torch.zeros_like(scores, dtype=torch.bool)
    total = scores.double().clamp_min(0).sum()
    if scores.numel() == 0 or total <= 0 or share == 0.0:
        return keep
    order = torch.sort(scores, descending=True, stable=True).indices
    cumulative = torch.cumsum(scores[order].double().clamp_min(0), 0) / total
    count = int(torch.searchsorted(cumulative, torch.tensor(share, dtype=torch.float64), right=False)) + 1
    keep[order[: min(count, scores.numel())]] = True
    return keep


# ---------------------------------------------------------------------------
# Published recipes
# ---------------------------------------------------------------------------


def volume_weight(scales: torch.Tensor, beta: float = 0.1, percentile: float = 0.9) -> torch.Tensor:
    """LightGaussian's volume factor: (V / V_percentile)^beta with V the
    product of the (activated) scales, normalised by the 90th-percentile
    volume and clamped at 1 before the power."""
    volume = scales.detach().double().prod(dim=1)
    reference = torch.quantile(volume, percentile) if volume.numel() else volume.new_ones(())
    return torch.clamp(volume / reference.clamp_min(1e-30), max=1.0).pow(beta).float()


@dataclass(frozen=True)
class Preset:
    """A published pruning recipe: a score and the rule that turns it into a keep-mask."""

    name: str
    citation: str
    score: str
    rule: str  # "ratio", "threshold" or "nonzero"
    default: float
    volume_weighted: bool = False

    def scores(self, gaussians, cameras, pixel_weights: PixelWeights = None, progress: bool = True) -> torch.Tensor:
        scores = compute_scores(gaussians, cameras, self.score, pixel_weights, progress)
        if self.volume_weighted:
            if gaussians.get("scales") is None:
                raise ValueError(f"{self.name}: needs `scales` in gaussians for its volume weighting")
            scores = scores * volume_weight(gaussians["scales"]).to(scores.device)
        return scores

    def __call__(self, gaussians, cameras, value: Optional[float] = None, pixel_weights: PixelWeights = None,
                 progress: bool = True) -> torch.Tensor:
        """The keep-mask [P] bool; `value` overrides the preset's ratio/threshold."""
        scores = self.scores(gaussians, cameras, pixel_weights, progress)
        value = self.default if value is None else value
        if self.rule == "ratio":
            return keep_by_ratio(scores, value)
        if self.rule == "threshold":
            return keep_by_threshold(scores, value)
        return scores > 0


PRESETS: Dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("blending_weight",
               "Blending-weight importance sum_pixels alpha T over training views (as in Mini-Splatting's "
               "simplification and Taming 3DGS's scores); keep the top 50%.",
               "accum_weight", "ratio", 0.5),
        Preset("lightgaussian",
               "LightGaussian (Fan et al., 2023): global significance = blending weight x (volume / V90)^0.1; "
               "prune the lowest 66%.",
               "accum_weight", "ratio", 0.34, volume_weighted=True),
        Preset("radsplat",
               "RadSplat (Niemeyer et al., 2024): keep a Gaussian if its max alpha T over all training rays "
               "reaches 0.01.",
               "max_weight", "threshold", 0.01),
        Preset("minisplatting",
               "Mini-Splatting (Fang & Wang, 2024): keep the Gaussians that are some pixel's top "
               "contributor (largest alpha T), the ray-intersection set.",
               "top_count", "nonzero", 0.0),
    )
}


# ---------------------------------------------------------------------------
# Applying a keep-mask to parameters and their optimizer state
# ---------------------------------------------------------------------------


def prune_gaussians(
    params: Dict[str, torch.Tensor],
    keep: torch.Tensor,
    optimizer: Optional[torch.optim.Optimizer] = None,
) -> Dict[str, torch.Tensor]:
    """Returns new tensors holding params[name][keep] for every entry, and
    (if given) rewrites `optimizer` so that it optimises the new tensors with
    their per-Gaussian state (Adam's exp_avg, exp_avg_sq, ...) sliced the
    same way; scalar state (step) is kept. Parameters that require grad are
    returned as new nn.Parameters. Every tensor must have P rows."""
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or keep.dim() != 1:
        raise ValueError(f"keep: expected a 1-D bool tensor, got {keep!r:.80}")
    P = keep.numel()
    for name, t in params.items():
        if t.shape[:1] != (P,):
            raise ValueError(f"params[{name!r}]: expected {P} rows (the length of keep), got shape {tuple(t.shape)}")
    replaced = {}
    new_params = {}
    for name, old in params.items():
        data = old.detach()[keep.to(old.device)].clone()
        new = torch.nn.Parameter(data, requires_grad=old.requires_grad) if old.requires_grad else data
        new_params[name] = new
        replaced[id(old)] = new
    if optimizer is not None:
        for group in optimizer.param_groups:
            for i, p in enumerate(group["params"]):
                new = replaced.get(id(p))
                if new is None:
                    continue
                state = optimizer.state.pop(p, None)
                if state is not None:
                    optimizer.state[new] = {
                        k: (v[keep.to(v.device)].clone() if isinstance(v, torch.Tensor) and v.dim() > 0
                            and v.shape[0] == P else v)
                        for k, v in state.items()
                    }
                group["params"][i] = new
    return new_params

