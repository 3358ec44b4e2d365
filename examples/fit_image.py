#!/usr/bin/env python
"""Fit 3D Gaussians to a photograph through the differentiable rasterizer,
prune the least important half part-way, and let the rest recover.

    python examples/fit_image.py                          # Grace Hopper, writes out/fit/
    python examples/fit_image.py --image photo.jpg --width 200 --steps 800

A pinhole camera looks straight at a plane (z = 0) covered by a jittered grid
of small isotropic Gaussians (SH degree 0 colours, opacity 0.5). Adam with a
learning rate per parameter group (positions, colours, opacities, scales,
rotations) minimises 0.8 L1 + 0.2 (1 - SSIM) between the render and the
image. At ``--prune-at`` the Gaussians are scored with
``pruning.compute_scores`` (default: their accumulated blending weight
sum_pixels alpha_i T_i, which the importance channel gives in one pass) and
only the top ``--keep-ratio`` survive; ``pruning.prune_gaussians`` slices the
parameters and Adam's moment estimates, so the optimisation goes on where it
was. The steps after it are the recovery phase.

Writes to ``--out`` (default ``out/fit``): target.png, before_prune.png,
after_prune.png, final.png, importance.png (the importance map rendered with
each Gaussian's normalised pruning score as its importance), curve.png (PSNR
and Gaussian count per step) and metrics.json; prints the final PSNR, the
Gaussian count and the wall time.
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
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diff_gaussian_rasterization_ks import GaussianRasterizer  # noqa: E402
from diff_gaussian_rasterization_ks.camera import look_at, make_settings  # noqa: E402

SH_C0 = 0.28209479177387814
SCORES = ("accum_weight", "importance_grad", "hit_count", "max_weight", "top_count")


def default_image() -> Path:
    """matplotlib's sample photograph of Grace Hopper (512 x 600)."""
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def load_image(path: Path, width: int) -> torch.Tensor:
    """[3, H, W] float in [0, 1], resized to ``width`` pixels (aspect kept)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        height = max(1, round(im.height * width / im.width))
        im = im.resize((width, height), Image.LANCZOS)
        arr = np.array(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def save_rgb(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    arr = image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    Image.fromarray((arr * 255 + 0.5).astype(np.uint8)).save(path)


def save_heat(values: torch.Tensor, path: Path) -> None:
    """[H, W] values -> PNG through matplotlib's 'magma' colour map (0 .. max)."""
    import matplotlib

    from PIL import Image

    v = values.detach().cpu().numpy()
    v = v / max(float(v.max()), 1e-12)
    rgba = matplotlib.colormaps["magma"](np.clip(v, 0, 1))
    Image.fromarray((rgba[..., :3] * 255 + 0.5).astype(np.uint8)).save(path)


def psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    mse = float(((image.detach().clamp(0, 1) - target) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def init_gaussians(target: torch.Tensor, n: int, tanfovx: float, tanfovy: float, gen: torch.Generator,
                   init_colors: str) -> dict:
    """A jittered grid of about ``n`` Gaussians covering the visible part of z = 0."""
    _, H, W = target.shape
    nx = max(1, round(math.sqrt(n * W / H)))
    ny = max(1, round(n / nx))
    P = nx * ny
    half_w, half_h = tanfovx, tanfovy  # the camera is at distance 1
    sx, sy = 2 * half_w / nx, 2 * half_h / ny
    gx, gy = torch.meshgrid((torch.arange(nx) + 0.5) * sx - half_w, (torch.arange(ny) + 0.5) * sy - half_h,
                            indexing="xy")
    means = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.zeros(P)], dim=1)
    means[:, 0] += (torch.rand(P, generator=gen) - 0.5) * 0.5 * sx
    means[:, 1] += (torch.rand(P, generator=gen) - 0.5) * 0.5 * sy
    if init_colors == "image":  # the pixel under each Gaussian
        u = ((means[:, 0] + half_w) / (2 * half_w) * W).long().clamp(0, W - 1)
        v = ((means[:, 1] + half_h) / (2 * half_h) * H).long().clamp(0, H - 1)
        rgb = target[:, v, u].T
    else:  # grey with a little noise
        rgb = 0.5 + 0.05 * torch.randn(P, 3, generator=gen)
    spacing = 0.5 * (sx + sy)
    return dict(
        means=means,
        sh=((rgb - 0.5) / SH_C0).reshape(P, 1, 3),
        opacity=torch.zeros(P, 1),  # logit: opacity 0.5
        log_scales=torch.full((P, 3), math.log(0.6 * spacing)),
        rotations=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(P, 1),
    )


def activated(params: dict) -> dict:
    """Rasterizer keyword arguments from the raw parameters (3DGS activations)."""
    return dict(
        means3D=params["means"],
        opacities=torch.sigmoid(params["opacity"]),
        shs=params["sh"],
        scales=torch.exp(params["log_scales"]),
        rotations=F.normalize(params["rotations"], dim=1),
    )


def render(rasterizer: GaussianRasterizer, params: dict, importances=None):
    g = activated(params)
    means2D = torch.zeros_like(params["means"])
    return rasterizer(means2D=means2D, importances=importances, **g)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Fit Gaussians to a photograph through the 3D rasterizer, with "
                                            "importance-based pruning part-way.")
    p.add_argument("--image", type=Path, default=None, help="image to fit (default: matplotlib's grace_hopper.jpg)")
    p.add_argument("--out", type=Path, default=Path("out/fit"), help="output folder (default out/fit)")
    p.add_argument("--width", type=int, default=128, help="image width in pixels after resizing (default 128)")
    p.add_argument("--steps", type=int, default=500, help="optimisation steps in all (default 500)")
    p.add_argument("--num-gaussians", type=int, default=4000, help="initial number of Gaussians (default 4000)")
    p.add_argument("--prune-at", type=int, default=None,
                   help="step at which to prune (default: 60%% of --steps; a value >= --steps disables pruning)")
    p.add_argument("--keep-ratio", type=float, default=0.5, help="fraction of Gaussians kept (default 0.5)")
    p.add_argument("--score", choices=SCORES, default="accum_weight",
                   help="pruning score of pruning.compute_scores (default accum_weight)")
    p.add_argument("--init-colors", choices=("grey", "image"), default="grey",
                   help="initial colours: grey (default) or sampled from the image")
    p.add_argument("--lambda-ssim", type=float, default=0.2, help="weight of 1 - SSIM in the loss (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.steps < 1 or args.num_gaussians < 1 or args.width < 8:
        p.error("--steps and --num-gaussians must be >= 1 and --width >= 8")
    if not 0.0 < args.keep_ratio <= 1.0:
        p.error("--keep-ratio must be in (0, 1]")
    prune_at = int(0.6 * args.steps) if args.prune_at is None else args.prune_at

    from pytorch_msssim import ssim
    from tqdm import tqdm

    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    image_path = args.image if args.image is not None else default_image()
    if not Path(image_path).is_file():
        p.error(f"--image: {image_path} not found")
    target = load_image(Path(image_path), args.width)
    _, H, W = target.shape

    # Camera at (0, 0, -1) looking at the origin; image x = world x, image y = world y.
    tanfovx = 0.5
    tanfovy = tanfovx * H / W
    settings = make_settings(look_at((0.0, 0.0, -1.0), (0.0, 0.0, 0.0), up=(0.0, -1.0, 0.0)), W, H, tanfovx,
                             tanfovy, bg=torch.zeros(3), sh_degree=0)
    rasterizer = GaussianRasterizer(settings)

    init = init_gaussians(target, args.num_gaussians, tanfovx, tanfovy, gen, args.init_colors)
    params = {k: torch.nn.Parameter(v.contiguous()) for k, v in init.items()}
    lrs = dict(means=1e-3, sh=2e-2, opacity=5e-2, log_scales=1e-2, rotations=5e-3)
    optimizer = torch.optim.Adam([{"params": [params[k]], "lr": lrs[k], "name": k} for k in params], eps=1e-15)

    args.out.mkdir(parents=True, exist_ok=True)
    save_rgb(target, args.out / "target.png")
    print(f"fitting {image_path} at {W} x {H} pixels with {len(params['means']):,d} Gaussians, {args.steps} steps, "
          f"pruning to {args.keep_ratio:.0%} at step {prune_at} by {args.score}, {torch.get_num_threads()} threads")

    history = {"step": [], "psnr": [], "gaussians": []}
    metrics: dict = {"image": str(image_path), "width": W, "height": H, "steps": args.steps, "prune_at": prune_at,
                     "keep_ratio": args.keep_ratio, "score": args.score}
    t_start = time.perf_counter()
    bar = tqdm(range(args.steps), desc="fit", unit="step", disable=args.no_progress, dynamic_ncols=True)
    for step in bar:
        if step == prune_at:
            with torch.no_grad():
                before = render(rasterizer, params)[0]
            save_rgb(before, args.out / "before_prune.png")
            metrics["psnr_before_prune"] = psnr(before, target)
            metrics["gaussians_before_prune"] = len(params["means"])
            params = prune(params, optimizer, settings, args.score, args.keep_ratio)
            with torch.no_grad():
                after = render(rasterizer, params)[0]
            save_rgb(after, args.out / "after_prune.png")
            metrics["psnr_after_prune"] = psnr(after, target)
            metrics["gaussians_after_prune"] = len(params["means"])
            bar.write(f"step {step}: pruned {metrics['gaussians_before_prune']:,d} -> "
                      f"{metrics['gaussians_after_prune']:,d} Gaussians, PSNR {metrics['psnr_before_prune']:.2f} -> "
                      f"{metrics['psnr_after_prune']:.2f} dB")

        image = render(rasterizer, params)[0]
        l1 = (image - target).abs().mean()
        loss = (1 - args.lambda_ssim) * l1
        if args.lambda_ssim > 0:
            loss = loss + args.lambda_ssim * (1 - ssim(image[None], target[None], data_range=1.0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        value = psnr(image, target)
        if step == 0:
            metrics["psnr_initial"] = value
        history["step"].append(step)
        history["psnr"].append(value)
        history["gaussians"].append(len(params["means"]))
        bar.set_postfix(psnr=f"{value:.2f}", gaussians=len(params["means"]), refresh=False)
    bar.close()
    wall = time.perf_counter() - t_start

    with torch.no_grad():
        final = render(rasterizer, params)[0]
    save_rgb(final, args.out / "final.png")
    scores = compute_scores(params, settings, args.score)
    with torch.no_grad():
        importance_map = render(rasterizer, params, importances=(scores / scores.max().clamp_min(1e-12)))[1]
    save_heat(importance_map, args.out / "importance.png")
    plot_curve(history, prune_at, args.out / "curve.png")

    metrics.update(
        psnr_final=psnr(final, target),
        ssim_final=float(ssim(final.clamp(0, 1)[None], target[None], data_range=1.0)),
        gaussians_initial=history["gaussians"][0],
        gaussians_final=len(params["means"]),
        wall_time_s=wall,
        history=history,
    )
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"final PSNR {metrics['psnr_final']:.2f} dB (SSIM {metrics['ssim_final']:.3f}; initial "
          f"{metrics['psnr_initial']:.2f} dB) with {metrics['gaussians_final']:,d} Gaussians "
          f"(from {metrics['gaussians_initial']:,d}); wall time {wall:.1f} s")
    names = ("target.png", "before_prune.png", "after_prune.png", "final.png", "importance.png", "curve.png",
             "metrics.json")
    print(f"wrote {', '.join(n for n in names if (args.out / n).exists())} to {args.out}/")
    return metrics


def _pruning():
    try:
        from diff_gaussian_rasterization_ks import pruning
    except ImportError as e:  # pragma: no cover - the module ships with the package
        raise SystemExit(f"diff_gaussian_rasterization_ks.pruning is not available ({e}); "
                         "update the package or pass --prune-at beyond --steps") from e
    return pruning


def compute_scores(params: dict, settings, score: str) -> torch.Tensor:
    """Per-Gaussian pruning scores [P] over the one camera."""
    with torch.no_grad():
        gaussians = {k: v.detach().contiguous() for k, v in activated(params).items()}
    gaussians["means2D"] = torch.zeros_like(gaussians["means3D"])
    return _pruning().compute_scores(gaussians, [settings], score=score, progress=False).detach().reshape(-1)


def prune(params: dict, optimizer: torch.optim.Optimizer, settings, score: str, keep_ratio: float) -> dict:
    """Keep the top ``keep_ratio`` of the Gaussians by ``score``; the optimizer's
    parameters and Adam moments are replaced by the kept rows."""
    pruning = _pruning()
    keep = pruning.keep_by_ratio(compute_scores(params, settings, score), keep_ratio=keep_ratio)
    new_params = pruning.prune_gaussians(params, keep, optimizer=optimizer)
    # the optimizer must now hold the new tensors, with their Adam state sliced, not reset
    for group in optimizer.param_groups:
        param = group["params"][0]
        assert param is new_params[group["name"]], f"optimizer still holds the old {group['name']!r}"
        state = optimizer.state.get(param, {})
        assert "exp_avg" in state and state["exp_avg"].shape == param.shape, \
            f"Adam state of {group['name']!r} did not survive the prune"
    return new_params


def plot_curve(history: dict, prune_at: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(history["step"], history["psnr"], color="tab:blue", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("PSNR (dB)", color="tab:blue")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(history["step"], history["gaussians"], color="tab:orange", lw=1.5)
    ax2.set_ylabel("Gaussians", color="tab:orange")
    ax2.set_ylim(0, max(history["gaussians"]) * 1.1)
    if prune_at < len(history["step"]):
        ax.axvline(prune_at, color="gray", ls="--", lw=1)
        ax.text(prune_at, ax.get_ylim()[0], " prune", color="gray", va="bottom")
    ax.set_title("fit_image: PSNR and Gaussian count")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
