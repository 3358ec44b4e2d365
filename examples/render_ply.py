#!/usr/bin/env python
"""Orbit a camera around a 3D Gaussian Splatting PLY and render every frame.

    python examples/render_ply.py --ply point_cloud.ply          # a trained 3DGS scene
    python examples/render_ply.py --garden                       # the built-in garden points
    python examples/render_ply.py --ply scene.ply --frames 60 --size 480x320 --elevation 30 --out out/orbit

Reads the PLY with ``diff_gaussian_rasterization_ks.ply`` (the standard 3DGS
layout: any trainer's file, SH degree 0..3), places ``--frames`` cameras on a
circle around the median of the Gaussian centres, ``--elevation`` degrees
above the horizontal plane, and renders each with the CPU backend (CUDA if
``--device cuda``). Writes to ``--out`` (default ``out/orbit``)::

    frame_000.png ...        colour
    importance_000.png ...   importance map
    orbit.gif                colour | importance side by side, animated
    metrics.json             what was rendered and how long it took

The importance map is, with ``--importance score`` (the default), the map
rendered with each Gaussian's importance set to its accumulated blending
weight over the whole orbit (the pruning score, normalised): bright where
the Gaussians that matter most are. With ``--importance alpha`` every
Gaussian has importance 1 and the map is the alpha coverage.

Where the scene's "up" is cannot be read from a PLY. ``--up auto`` takes the
axis along which the centres spread least (scenes are wider than tall) and
orients it like the usual conventions: -y when it is closer to the y axis
(COLMAP / OpenCV captures), +z otherwise (Blender, NeRF-synthetic). Give
``--up 0,-1,0`` (or any vector) to override, and ``--radius`` to place the
camera yourself (default: the 75th percentile of the centres' distances
from the centre, divided by tan(fov / 2), so that most of the scene fits).

``--garden`` converts the garden points of ``../shared/data/garden_sfm.npz``
(``scenes.garden_scene``: real SfM points with made-up scales, rotations and
opacities) into a Gaussian cloud, writes it as ``garden.ply`` in ``--out``,
reads that back and renders it with the scene's real "up".
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diff_gaussian_rasterization_ks import GaussianRasterizer  # noqa: E402
from diff_gaussian_rasterization_ks.camera import look_at, make_settings  # noqa: E402
from diff_gaussian_rasterization_ks.ply import GaussianCloud, read_gaussian_ply, write_gaussian_ply  # noqa: E402

DEFAULT_GARDEN = ROOT.parent / "shared" / "data" / "garden_sfm.npz"


def parse_size(text: str):
    """'320x240' -> (320, 240); '256' -> (256, 256)."""
    try:
        if "x" in text.lower():
            w, h = (int(v) for v in text.lower().split("x"))
        else:
            w = h = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or one integer, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return w, h


def parse_vector(text: str):
    if text == "auto":
        return None
    try:
        v = [float(x) for x in text.split(",")]
    except ValueError:
        v = []
    if len(v) != 3 or not any(v):
        raise argparse.ArgumentTypeError(f"expected 'auto' or three comma-separated numbers, got {text!r}")
    return v


def auto_up(means: torch.Tensor) -> torch.Tensor:
    """The axis of least spread of the centres, oriented as -y or +z (see the module docstring)."""
    x = means.double()
    if len(x) > 200_000:  # a subsample is plenty for a 3 x 3 covariance
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:200_000]]
    x = x - x.mean(0)
    _, vecs = torch.linalg.eigh(x.T @ x / max(len(x) - 1, 1))
    up = vecs[:, 0]
    if abs(float(up[1])) > abs(float(up[2])):
        up = up if up[1] < 0 else -up
    else:
        up = up if up[2] > 0 else -up
    return up.float()


def orbit_cameras(center: torch.Tensor, up: torch.Tensor, radius: float, elevation_deg: float, frames: int):
    """World-to-camera matrices of ``frames`` cameras on a circle around ``center``."""
    up = up / up.norm()
    helper = torch.tensor([1.0, 0.0, 0.0]) if abs(float(up[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
    e1 = torch.linalg.cross(up, helper)
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(up, e1)
    el = math.radians(elevation_deg)
    mats = []
    for k in range(frames):
        theta = 2 * math.pi * k / frames
        direction = math.cos(el) * (math.cos(theta) * e1 + math.sin(theta) * e2) + math.sin(el) * up
        eye = center + radius * direction
        mats.append(look_at(eye.tolist(), center.tolist(), up=up.tolist()))
    return mats


def garden_cloud(data: Path, out: Path):
    """The garden points as a cloud, round-tripped through a PLY; and the scene's up vector."""
    from diff_gaussian_rasterization_ks.scenes import garden_scene

    scene = garden_scene(data)
    cloud = GaussianCloud.from_rasterizer_inputs(scene.inputs)
    path = write_gaussian_ply(out / "garden.ply", cloud)
    w2c = scene.settings.viewmatrix.T  # the camera's y axis points down
    return path, -w2c[1, :3].float()


def colormap(values: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] uint8 (matplotlib's 'inferno')."""
    import matplotlib

    rgba = matplotlib.colormaps["inferno"](np.clip(values, 0.0, 1.0))
    return (rgba[..., :3] * 255 + 0.5).astype(np.uint8)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Render an orbit around a 3DGS PLY: frame PNGs, importance maps and a GIF.")
    p.add_argument("--ply", type=Path, default=None, help="3DGS point-cloud PLY to render")
    p.add_argument("--garden", action="store_true", help="render the built-in garden points (when no --ply is given)")
    p.add_argument("--data", type=Path, default=DEFAULT_GARDEN, help="garden_sfm.npz for --garden")
    p.add_argument("--out", type=Path, default=Path("out/orbit"), help="output folder (default out/orbit)")
    p.add_argument("--frames", type=int, default=36, help="number of frames around the circle (default 36)")
    p.add_argument("--size", type=parse_size, default=(320, 240), help="WIDTHxHEIGHT or one integer (default 320x240)")
    p.add_argument("--fov", type=float, default=60.0, help="horizontal field of view in degrees (default 60)")
    p.add_argument("--elevation", type=float, default=20.0, help="camera elevation in degrees (default 20)")
    p.add_argument("--radius", type=float, default=None, help="orbit radius (default: from the spread of the points)")
    p.add_argument("--up", type=parse_vector, default=None, help="up vector 'x,y,z' or 'auto' (default auto)")
    p.add_argument("--sh-degree", type=int, default=None, help="SH degree to render (default: what the file holds)")
    p.add_argument("--bg", choices=("black", "white"), default="black", help="background (default black)")
    p.add_argument("--importance", choices=("score", "alpha"), default="score",
                   help="importance of each Gaussian: its orbit pruning score (default) or 1 (alpha map)")
    p.add_argument("--fps", type=float, default=12.0, help="GIF frame rate (default 12)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.frames < 1:
        p.error("--frames must be >= 1")
    if not 0 < args.fov < 180:
        p.error("--fov must be in (0, 180) degrees")

    from PIL import Image
    from tqdm import tqdm

    torch.set_num_threads(max(1, args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    up = None if args.up is None else torch.tensor(args.up, dtype=torch.float32)
    if args.ply is not None:
        ply_path = args.ply
        if not ply_path.is_file():
            p.error(f"--ply: {ply_path} not found")
    elif args.garden:
        if not args.data.is_file():
            p.error(f"--data: {args.data} not found (garden_sfm.npz lives in <repo>/../shared/data/)")
        ply_path, garden_up = garden_cloud(args.data, args.out)
        up = garden_up if up is None else up
        print(f"wrote the garden points as a 3DGS PLY: {ply_path}")
    else:
        p.error("give --ply PATH, or --garden for the built-in garden points")

    t0 = time.perf_counter()
    cloud = read_gaussian_ply(ply_path)
    t_read = time.perf_counter() - t0
    P = len(cloud)
    if P == 0:
        p.error(f"{ply_path} holds no Gaussians")
    sh_degree = cloud.sh_degree if args.sh_degree is None else args.sh_degree
    if not 0 <= sh_degree <= cloud.sh_degree:
        p.error(f"--sh-degree: the file holds degree {cloud.sh_degree}, asked for {args.sh_degree}")

    center = cloud.means.median(dim=0).values
    if up is None:
        up = auto_up(cloud.means)
    tan_x = math.tan(math.radians(args.fov) / 2)
    if args.radius is None:
        spread = float(torch.quantile((cloud.means - center).norm(dim=1)[:1_000_000].double(), 0.75))
        radius = max(spread, 1e-6) / tan_x
    else:
        radius = args.radius
    W, H = args.size
    tan_y = tan_x * H / W
    device = torch.device(args.device)
    bg = torch.ones(3) if args.bg == "white" else torch.zeros(3)
    views = orbit_cameras(center, up, radius, args.elevation, args.frames)
    cameras = [make_settings(v, W, H, tan_x, tan_y, bg=bg, sh_degree=sh_degree, znear=0.01,
                             zfar=max(100.0, 10 * radius), device=device) for v in views]
    inputs = cloud.rasterizer_inputs(device=device, sh_degree=sh_degree)
    print(f"{ply_path}: {P:,d} Gaussians, SH degree {cloud.sh_degree} (rendering {sh_degree}), read in "
          f"{t_read:.2f} s; orbit: {args.frames} frames of {W} x {H}, radius {radius:.3g} around "
          f"({', '.join(f'{c:.3g}' for c in center.tolist())}), up ({', '.join(f'{c:.2f}' for c in up.tolist())})")

    importances = None
    t_score = 0.0
    if args.importance == "score":
        from diff_gaussian_rasterization_ks import pruning

        t0 = time.perf_counter()
        scores = pruning.compute_scores(inputs, cameras, score="accum_weight",
                                        progress=not args.no_progress).detach().reshape(-1).float()
        t_score = time.perf_counter() - t0
        drawn = scores > 0
        top = float(torch.quantile(scores[drawn].double(), 0.99)) if bool(drawn.any()) else 1.0
        importances = (scores / max(top, 1e-12)).clamp(max=1.0).to(device).contiguous()
        print(f"importance = accumulated blending weight over the orbit: {int(drawn.sum()):,d} of {P:,d} Gaussians "
              f"ever blended ({t_score:.1f} s)")

    colors, maps, radii_drawn = [], [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for settings in tqdm(cameras, desc="render", unit="frame", disable=args.no_progress, dynamic_ncols=True):
            image, importance_map, radii = GaussianRasterizer(settings)(**dict(inputs, importances=importances))
            colors.append(image.cpu())
            maps.append(importance_map.cpu())
            radii_drawn.append(int((radii > 0).sum()))
    t_render = time.perf_counter() - t0

    top = max(float(max(m.max() for m in maps)), 1e-12)
    gif_frames = []
    for k, (image, imap) in enumerate(zip(colors, maps)):
        rgb = to_uint8(image)
        heat = colormap(imap.numpy() / top)
        Image.fromarray(rgb).save(args.out / f"frame_{k:03d}.png")
        Image.fromarray(heat).save(args.out / f"importance_{k:03d}.png")
        gif_frames.append(Image.fromarray(np.concatenate([rgb, heat], axis=1)))
    gif_path = args.out / "orbit.gif"
    gif_frames[0].save(gif_path, save_all=True, append_images=gif_frames[1:], duration=round(1000 / args.fps),
                       loop=0, optimize=False)

    metrics = dict(ply=str(ply_path), gaussians=P, sh_degree=cloud.sh_degree, rendered_sh_degree=sh_degree,
                   frames=args.frames, width=W, height=H, fov_deg=args.fov, elevation_deg=args.elevation,
                   radius=radius, center=center.tolist(), up=up.tolist(), importance=args.importance,
                   drawn_per_frame=radii_drawn, mean_color=torch.stack(colors).mean(dim=(0, 2, 3)).tolist(),
                   time_read_s=t_read, time_score_s=t_score, time_render_s=t_render,
                   ms_per_frame=1000 * t_render / args.frames, gif=str(gif_path))
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"rendered {args.frames} frames in {t_render:.1f} s ({metrics['ms_per_frame']:.0f} ms per frame, "
          f"{int(np.mean(radii_drawn)):,d} Gaussians drawn on average)")
    print(f"wrote frame_000..{args.frames - 1:03d}.png, importance_000..{args.frames - 1:03d}.png, orbit.gif and "
          f"metrics.json to {args.out}/")
    return metrics


if __name__ == "__main__":
    main()
