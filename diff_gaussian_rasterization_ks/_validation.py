"""Argument checks run before any kernel: every message names the argument,
what was expected and what was received."""
import math
from typing import Optional, Sequence

import torch

from .settings import GaussianRasterizationSettings

MAX_SH_DEGREE = 3


def _describe(t: torch.Tensor) -> str:
    return f"{t.dtype} tensor of shape {tuple(t.shape)} on {t.device}"


def check_tensor(
    name: str,
    t,
    shapes: Sequence[Sequence[Optional[int]]],
    device: torch.device,
    dtype: Optional[torch.dtype] = torch.float32,
) -> torch.Tensor:
    """`shapes` lists accepted shapes; None in a shape matches any size."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    wanted = " or ".join("[" + ", ".join("*" if s is None else str(s) for s in shape) + "]" for shape in shapes)
    if not any(t.dim() == len(s) and all(e is None or e == n for e, n in zip(s, t.shape)) for s in shapes):
        raise ValueError(f"{name}: expected shape {wanted}, got {_describe(t)}")
    if dtype is not None and t.dtype != dtype:
        hint = " (the pure-PyTorch reference, rasterize_reference, accepts float64)" if dtype == torch.float32 else ""
        raise TypeError(f"{name}: expected dtype {dtype}, got {_describe(t)}{hint}")
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of means3D), got {_describe(t)}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor, got a non-contiguous {_describe(t)}; call .contiguous()")
    return t


def check_settings(s, device: torch.device) -> None:
    if not isinstance(s, GaussianRasterizationSettings):
        raise TypeError(f"raster_settings: expected GaussianRasterizationSettings, got {type(s).__name__}")
    for name in ("image_height", "image_width"):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"raster_settings.{name}: expected a positive int, got {v!r}")
    for name in ("tanfovx", "tanfovy"):
        v = getattr(s, name)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"raster_settings.{name}: expected a finite positive number, got {v!r}")
    if not isinstance(s.scale_modifier, (int, float)) or not math.isfinite(s.scale_modifier):
        raise ValueError(f"raster_settings.scale_modifier: expected a finite number, got {s.scale_modifier!r}")
    if isinstance(s.sh_degree, bool) or not isinstance(s.sh_degree, int) or not 0 <= s.sh_degree <= MAX_SH_DEGREE:
        raise ValueError(f"raster_settings.sh_degree: expected an int in [0, {MAX_SH_DEGREE}], got {s.sh_degree!r}")
    for name, shape in (("bg", (3,)), ("viewmatrix", (4, 4)), ("projmatrix", (4, 4)), ("campos", (3,))):
        t = getattr(s, name)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"raster_settings.{name}: expected a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"raster_settings.{name}: expected shape {list(shape)}, got {_describe(t)}")
        if not t.is_floating_point():
            raise TypeError(f"raster_settings.{name}: expected a floating-point tensor, got {_describe(t)}")
        if t.device != device:
            raise ValueError(f"raster_settings.{name}: expected a tensor on {device} (the device of means3D), got {_describe(t)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"raster_settings.{name}: expected finite values, got {t.detach().cpu().tolist()}")


def check_inputs(
    settings,
    means3D,
    means2D,
    opacities,
    importances,
    shs,
    colors_precomp,
    scales,
    rotations,
    cov3D_precomp,
    dtype: Optional[torch.dtype] = torch.float32,
) -> None:
    """Validates a full rasterizer call. `dtype=None` accepts any floating dtype
    shared by all inputs (the reference implementation)."""
    if not isinstance(means3D, torch.Tensor):
        raise TypeError(f"means3D: expected a torch.Tensor, got {type(means3D).__name__}")
    device = means3D.device
    if dtype is None:
        if not means3D.is_floating_point():
            raise TypeError(f"means3D: expected a floating-point tensor, got {_describe(means3D)}")
        dtype = means3D.dtype
    check_settings(settings, device)
    check_tensor("means3D", means3D, [(None, 3)], device, dtype)
    P = means3D.shape[0]
    check_tensor("means2D", means2D, [(P, 3), (P, 2)], device, dtype)
    check_tensor("opacities", opacities, [(P, 1), (P,)], device, dtype)
    if importances is not None:
        check_tensor("importances", importances, [(P, 1), (P,)], device, dtype)

    if (shs is None) == (colors_precomp is None):
        raise ValueError(
            "shs / colors_precomp: expected exactly one of them, got "
            + ("both" if shs is not None else "neither")
        )
    if shs is not None:
        check_tensor("shs", shs, [(P, None, 3)], device, dtype)
        needed = (settings.sh_degree + 1) ** 2
        if shs.shape[1] < needed:
            raise ValueError(
                f"shs: sh_degree {settings.sh_degree} needs at least {needed} coefficients per Gaussian, "
                f"got {_describe(shs)}"
            )
    else:
        check_tensor("colors_precomp", colors_precomp, [(P, 3)], device, dtype)

    has_pair = scales is not None or rotations is not None
    if has_pair == (cov3D_precomp is not None):
        raise ValueError(
            "scales+rotations / cov3D_precomp: expected either scales and rotations or cov3D_precomp, got "
            + ("both" if has_pair else "neither")
        )
    if has_pair:
        if scales is None or rotations is None:
            missing = "scales" if scales is None else "rotations"
            raise ValueError(f"{missing}: expected a tensor (scales and rotations go together), got None")
        check_tensor("scales", scales, [(P, 3)], device, dtype)
        check_tensor("rotations", rotations, [(P, 4)], device, dtype)
    else:
        check_tensor("cov3D_precomp", cov3D_precomp, [(P, 6)], device, dtype)
