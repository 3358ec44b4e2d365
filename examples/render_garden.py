#!/usr/bin/env python
"""Render the Mip-NeRF 360 "garden" scene with the CPU backend and write
the image and the importance map as PNGs.

    python examples/render_garden.py                      # camera 0, writes out/
    python examples/render_garden.py --camera 2 --out /tmp/garden

The Gaussians are the structure-from-motion points of garden_sfm.npz with
made-up scales, rotations and opacities (spec/BENCHMARKS.md, `garden`).

Every Gaussian is given importance 1 (`importances=torch.ones(P)`), so the
importance map O = sum_i o_i alpha_i T_i is the alpha coverage 1 - T_final of
each pixel; the script checks that against the `alpha` output of
`GaussianRasterizer.render`. It then runs the
backward pass of `importance_map.sum()`: the gradient that `importances`
receives is, per Gaussian, its total blending weight sum_pixels alpha_i T_i,
the score that blending-weight pruning uses, and the script reports how the
Gaussians are spread over it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diff_gaussian_rasterization_ks import GaussianRasterizer  # noqa: E402
from diff_gaussian_rasterization_ks.scenes import garden_scene, requires_grad_  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "garden_sfm.npz"

# A dark-to-bright colour ramp (black, violet, red, orange, pale yellow):
# positions in [0, 1] and RGB in [0, 1], interpolated linearly.
_RAMP_POS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP_RGB = np.array(
    [
        [0.00, 0.00, 0.02],
        [0.30, 0.05, 0.45],
        [0.75, 0.15, 0.35],
        [0.98, 0.55, 0.10],
        [0.99, 0.98, 0.70],
    ]
)


def colormap(values: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> [H, W, 3] uint8 through the ramp above."""
    v = np.clip(values, 0.0, 1.0)
    rgb = np.stack([np.interp(v, _RAMP_POS, _RAMP_RGB[:, ch]) for ch in range(3)], axis=-1)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def to_png_rgb(image: torch.Tensor) -> Image.Image:
    """[3, H, W] float in [0, 1] -> RGB image (values outside [0, 1] clamped)."""
    arr = image.detach().clamp(0.0, 1.0).permute(1, 2, 0).numpy()
    return Image.fromarray((arr * 255.0 + 0.5).astype(np.uint8), mode="RGB")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Render the garden scene with the CPU backend; write garden_color.png and garden_importance.png.",
    )
    parser.add_argument("--camera", type=int, default=0, choices=[0, 1, 2], help="which of the 3 cameras (default 0)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default out/, created if missing)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"path of garden_sfm.npz (default {DEFAULT_DATA})")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the made-up scales, rotations and opacities")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"--data: {args.data} not found (garden_sfm.npz lives in <repo>/../shared/data/)")
    torch.set_num_threads(args.threads)

    scene = garden_scene(args.data, camera=args.camera, seed=args.seed)
    s = scene.settings
    P = scene.inputs["means3D"].shape[0]
    rasterizer = GaussianRasterizer(raster_settings=s)
    # Importance 1 for every Gaussian: the importance map is then the alpha map.
    inputs = dict(scene.inputs, importances=torch.ones(P, 1))
    print(f"garden, camera {args.camera}: {s.image_width} x {s.image_height} pixels, {P:,d} Gaussians, "
          f"{torch.get_num_threads()} threads")

    # Forward (one untimed run first: page faults and thread start-up).
    with torch.no_grad():
        rasterizer(**inputs)
        t0 = time.perf_counter()
        color, importance_map, radii = rasterizer(**inputs)
        t_fwd = time.perf_counter() - t0
    in_front = int(rasterizer.markVisible(inputs["means3D"]).sum())
    print(f"visible: {int((radii > 0).sum()):,d} Gaussians drawn (radius > 0), {in_front:,d} in front of the near plane")

    # Forward + backward, as in a training step: the loss touches the image and
    # the importance map; means2D receives the screen-space gradient.
    leaves = requires_grad_(inputs)
    t0 = time.perf_counter()
    color_g, importance_g, _ = rasterizer(**leaves)
    (color_g.mean() + importance_g.sum()).backward()
    t_fwdbwd = time.perf_counter() - t0
    print(f"time: forward {t_fwd * 1e3:.0f} ms, forward+backward {t_fwdbwd * 1e3:.0f} ms")

    mean_rgb = color.mean(dim=(1, 2)).tolist()
    print("mean colour (RGB): " + ", ".join(f"{c:.4f}" for c in mean_rgb))
    print(f"importance map: min {float(importance_map.min()):.4f}, max {float(importance_map.max()):.4f}, "
          f"mean {float(importance_map.mean()):.4f}")

    # With importances all ones, O = sum_i alpha_i T_i = 1 - T_final: check it
    # against the alpha map, which render() returns beside the other outputs.
    with torch.no_grad():
        alpha = rasterizer.render(**inputs).alpha[0]
    print(f"importances = 1, so the importance map is the alpha coverage: max |importance - alpha| = "
          f"{float((importance_map - alpha).abs().max()):.2e}")

    # d(importance_map.sum()) / d importances = total blending weight per
    # Gaussian (the colour term of the loss does not reach `importances`).
    score = leaves["importances"].grad.reshape(-1)
    drawn = radii > 0
    never = int((score[drawn] == 0).sum())
    top = torch.sort(score, descending=True).values
    k = max(1, P // 10)
    share = float(top[:k].sum() / top.sum()) if float(top.sum()) > 0 else 0.0
    print(f"pruning score (gradient of importance_map.sum() w.r.t. importances = sum of alpha*T per Gaussian): "
          f"{never:,d} of the {int(drawn.sum()):,d} drawn Gaussians were never blended (alpha < 1/255 "
          f"or behind opaque ones), the top 10% of all Gaussians carry {share * 100:.1f}% of the total weight")
    moved = int((leaves["means2D"].grad[:, :2].abs().sum(1) > 0).sum())
    print(f"means2D.grad (densification signal) is non-zero for {moved:,d} Gaussians")

    args.out.mkdir(parents=True, exist_ok=True)
    color_path = args.out / "garden_color.png"
    importance_path = args.out / "garden_importance.png"
    to_png_rgb(color).save(color_path)
    top_value = max(float(importance_map.max()), 1e-12)
    Image.fromarray(colormap(importance_map.numpy() / top_value), mode="RGB").save(importance_path)
    print(f"wrote {color_path} and {importance_path} (importance colour ramp: 0 black .. {top_value:.3f} pale yellow)")


if __name__ == "__main__":
    main()
