#!/usr/bin/env python
"""A compact 3D Gaussian Splatting trainer on this rasterizer, with
importance-based pruning.

    python examples/train.py                                   # built-in garden dataset, a few minutes on a CPU
    python examples/train.py --data nerf_synthetic/lego/transforms_train.json --width 200 --iterations 3000

The loop has the shape of the original 3DGS training loop (Kerbl et al.,
SIGGRAPH 2023), re-implemented from the paper's description:

* Gaussians with activations: exp scales, sigmoid opacities, normalised
  quaternions, spherical harmonics up to ``--sh-degree`` switched on one
  band at a time (every ``--sh-increase-every`` iterations);
* initialisation from a point cloud, each scale the root of the mean squared
  distance to the 3 nearest neighbours (scipy's cKDTree), opacity 0.1;
* Adam with a learning rate per parameter group, the position's decaying
  exponentially from ``--position-lr-init`` to ``--position-lr-final``
  (both times the scene extent);
* loss (1 - lambda) L1 + lambda (1 - SSIM);
* adaptive density control from the accumulated norm of the view-space
  (``means2D``) gradients: small Gaussians above the threshold are cloned,
  large ones split in two; Gaussians with low opacity, too large on screen or
  in the world are removed; opacities are reset every
  ``--opacity-reset-every`` iterations;
* and, new here, importance-based pruning with a preset of
  ``diff_gaussian_rasterization_ks.pruning`` (``--prune-preset``, e.g.
  ``lightgaussian``: scores from the importance channel over all training
  views) at ``--prune-at``, followed by ``--iterations - --prune-at``
  iterations of recovery. The pruning keeps Adam's state of the kept
  Gaussians (``pruning.prune_gaussians``).

Data (``--data``): a NeRF-synthetic style ``transforms_train.json``
(``camera_angle_x``, ``frames[].file_path`` and ``transform_matrix`` as
camera-to-world with OpenGL axes, RGBA images composited on ``--bg``), with
``transforms_test.json`` beside it used for testing if present; such data has
no point cloud, so training starts from ``--init-points`` random points in a
cube of half-size ``--init-extent``. Without ``--data``, a built-in dataset:
the garden scene of ``../shared/data/garden_sfm.npz`` (``scenes.garden_scene``,
111,785 Gaussians) rendered as ground truth from ``--views`` cameras on a
circle around it, every 8th view held out for testing; training starts from
``--init-points`` of its points, jittered, with perturbed colours.

Prints and writes (``--out``, default ``out/train``) the train and test PSNR
and SSIM, the Gaussian counts before and after the importance pruning and
the time (metrics.json), test renders beside their ground truth
(test_XXX.png) and the model as a standard 3DGS PLY (point_cloud.ply).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diff_gaussian_rasterization_ks import GaussianRasterizationSettings, GaussianRasterizer  # noqa: E402
from diff_gaussian_rasterization_ks.camera import look_at, make_settings  # noqa: E402
from diff_gaussian_rasterization_ks.ply import SH_C0, GaussianCloud, write_gaussian_ply  # noqa: E402

DEFAULT_GARDEN = ROOT.parent / "shared" / "data" / "garden_sfm.npz"


# ----------------------------------------------------------------------------- data
class View(NamedTuple):
    """One training or test image and its camera (settings without sh_degree fixed)."""

    name: str
    image: torch.Tensor  # [3, H, W] in [0, 1]
    world_to_camera: torch.Tensor  # [4, 4], OpenCV axes
    tanfovx: float
    tanfovy: float

    def settings(self, sh_degree: int, bg: torch.Tensor) -> GaussianRasterizationSettings:
        _, H, W = self.image.shape
        return make_settings(self.world_to_camera, W, H, self.tanfovx, self.tanfovy, bg=bg, sh_degree=sh_degree)

    @property
    def center(self) -> torch.Tensor:
        return torch.linalg.inv(self.world_to_camera.double())[:3, 3].float()


class Dataset(NamedTuple):
    train: List[View]
    test: List[View]
    points: torch.Tensor  # [N, 3] initial point cloud
    colors: torch.Tensor  # [N, 3] in [0, 1]
    description: str


def opengl_c2w_to_w2c(transform_matrix) -> torch.Tensor:
    """NeRF-synthetic camera-to-world (OpenGL axes: x right, y up, z back) ->
    world-to-camera with OpenCV / 3DGS axes (x right, y down, z forward)."""
    c2w = torch.as_tensor(np.asarray(transform_matrix, dtype=np.float64)).clone()
    c2w[:3, 1:3] *= -1.0  # flip the camera's y and z axes
    return torch.linalg.inv(c2w).float()


def load_image_rgba(path: Path, width: Optional[int], bg: torch.Tensor) -> torch.Tensor:
    """[3, H, W] in [0, 1], resized to ``width`` (aspect kept), alpha composited over ``bg``."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGBA")
        if width is not None and width != im.width:
            im = im.resize((width, max(1, round(im.height * width / im.width))), Image.LANCZOS)
        arr = torch.from_numpy(np.array(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    rgb, alpha = arr[:3], arr[3:4]
    return (rgb * alpha + bg.view(3, 1, 1) * (1 - alpha)).contiguous()


def read_transforms(path: Path, width: Optional[int], bg: torch.Tensor) -> List[View]:
    meta = json.loads(path.read_text())
    fovx = float(meta["camera_angle_x"])
    views = []
    for frame in meta["frames"]:
        rel = frame["file_path"]
        image_path = (path.parent / rel)
        if not image_path.suffix:
            image_path = image_path.with_suffix(".png")
        image = load_image_rgba(image_path, width, bg)
        _, H, W = image.shape
        tanfovx = math.tan(fovx / 2)
        tanfovy = tanfovx * H / W  # fovy from the same focal length
        views.append(View(image_path.stem, image, opengl_c2w_to_w2c(frame["transform_matrix"]), tanfovx, tanfovy))
    if not views:
        raise ValueError(f"{path}: no frames")
    return views


def load_nerf_synthetic(path: Path, width: Optional[int], bg: torch.Tensor, init_points: int, init_extent: float,
                        gen: torch.Generator) -> Dataset:
    train = read_transforms(path, width, bg)
    test_path = path.with_name(path.name.replace("train", "test"))
    test = read_transforms(test_path, width, bg) if test_path != path and test_path.is_file() else []
    # no structure-from-motion points: random ones in a cube, random colours (as 3DGS does for this data)
    points = (torch.rand(init_points, 3, generator=gen) * 2 - 1) * init_extent
    colors = torch.rand(init_points, 3, generator=gen)
    desc = f"{path} ({len(train)} train, {len(test)} test views)"
    return Dataset(train, test, points, colors, desc)


def make_garden_dataset(data: Path, views: int, width: int, init_points: int, radius: float, elevation: float,
                        gen: torch.Generator, bg: torch.Tensor) -> Dataset:
    """Ground truth: the garden Gaussians rendered from ``views`` cameras on a circle;
    every 8th view is a test view. Initial points: a jittered subset of the SfM points."""
    from diff_gaussian_rasterization_ks.scenes import garden_scene

    scene = garden_scene(data)
    gt = scene.inputs
    s0 = scene.settings
    height = max(1, round(width * s0.image_height / s0.image_width))
    tanfovx, tanfovy = s0.tanfovx, s0.tanfovx * height / width
    w2c0 = s0.viewmatrix.T.double()
    up = -w2c0[1, :3]
    up = up / up.norm()
    pts = gt["means3D"]
    center = pts.median(dim=0).values.double()
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    e1 = torch.linalg.cross(up, helper)
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(up, e1)
    el = math.radians(elevation)
    train, test = [], []
    with torch.no_grad():
        for k in range(views):
            theta = 2 * math.pi * k / views
            eye = center + radius * (math.cos(el) * (math.cos(theta) * e1 + math.sin(theta) * e2) + math.sin(el) * up)
            w2c = look_at(eye.tolist(), center.tolist(), up=up.tolist())
            settings = make_settings(w2c, width, height, tanfovx, tanfovy, bg=bg, sh_degree=0)
            image = GaussianRasterizer(settings)(**gt)[0].clamp(0, 1).contiguous()
            view = View(f"view_{k:03d}", image, w2c, tanfovx, tanfovy)
            (test if k % 8 == 0 else train).append(view)
    idx = torch.randperm(len(pts), generator=gen)[:init_points]
    points = pts[idx] + 0.01 * torch.randn(len(idx), 3, generator=gen)
    colors = (gt["colors_precomp"][idx] + 0.1 * torch.randn(len(idx), 3, generator=gen)).clamp(0, 1)
    desc = (f"built-in garden dataset: {len(pts):,d} ground-truth Gaussians rendered from {views} cameras at "
            f"{width} x {height} ({len(train)} train, {len(test)} test views)")
    return Dataset(train, test, points.contiguous(), colors.contiguous(), desc)


def scene_extent(views: List[View]) -> float:
    """3DGS's normalisation radius: 1.1 x the largest camera distance from the cameras' mean."""
    centers = torch.stack([v.center for v in views])
    radius = float((centers - centers.mean(0)).norm(dim=1).max())
    return 1.1 * max(radius, 1e-6) if len(views) > 1 else 1.0


# ----------------------------------------------------------------------------- model
def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x / (1 - x))


def exponential_lr(lr_init: float, lr_final: float, max_steps: int):
    """Log-linear interpolation from lr_init (step 0) to lr_final (max_steps)."""
    def lr(step: int) -> float:
        t = min(max(step / max(max_steps, 1), 0.0), 1.0)
        return math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)
    return lr


class GaussianModel:
    """The Gaussians' raw parameters (one Adam group each), their activations and
    the adaptive density control."""

    NAMES = ("xyz", "f_dc", "f_rest", "opacity", "scaling", "rotation")

    def __init__(self, max_sh_degree: int):
        self.max_sh_degree = max_sh_degree
        self.active_sh_degree = 0
        self.params: Dict[str, torch.nn.Parameter] = {}
        self.optimizer: Optional[torch.optim.Adam] = None
        self.percent_dense = 0.01
        self.spatial_lr_scale = 1.0

    # activations
    @property
    def num(self) -> int:
        return int(self.params["xyz"].shape[0])

    @property
    def xyz(self) -> torch.Tensor:
        return self.params["xyz"]

    @property
    def features(self) -> torch.Tensor:
        return torch.cat([self.params["f_dc"], self.params["f_rest"]], dim=1)

    @property
    def opacity(self) -> torch.Tensor:
        return torch.sigmoid(self.params["opacity"])

    @property
    def scaling(self) -> torch.Tensor:
        return torch.exp(self.params["scaling"])

    @property
    def rotation(self) -> torch.Tensor:
        return F.normalize(self.params["rotation"], dim=1)

    def rasterizer_inputs(self) -> dict:
        return dict(means3D=self.xyz, shs=self.features, opacities=self.opacity, scales=self.scaling,
                    rotations=self.rotation)

    def one_up_sh_degree(self) -> None:
        self.active_sh_degree = min(self.active_sh_degree + 1, self.max_sh_degree)

    def create_from_points(self, points: torch.Tensor, colors: torch.Tensor, spatial_lr_scale: float) -> None:
        from scipy.spatial import cKDTree

        self.spatial_lr_scale = spatial_lr_scale
        P = points.shape[0]
        pts = points.detach().double().numpy()
        k = min(4, P)  # the point itself and its 3 nearest neighbours
        dist, _ = cKDTree(pts).query(pts, k=k)
        dist = np.asarray(dist).reshape(P, k)[:, 1:]
        mean_sq = (dist ** 2).mean(axis=1) if k > 1 else np.ones(P)
        mean_sq = np.maximum(mean_sq, 1e-7)
        M = (self.max_sh_degree + 1) ** 2
        init = dict(
            xyz=points.float(),
            f_dc=((colors.float() - 0.5) / SH_C0).reshape(P, 1, 3),
            f_rest=torch.zeros(P, M - 1, 3),
            opacity=inverse_sigmoid(torch.full((P, 1), 0.1)),
            scaling=torch.from_numpy(np.log(np.sqrt(mean_sq))).float()[:, None].repeat(1, 3),
            rotation=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(P, 1),
        )
        self.params = {n: torch.nn.Parameter(init[n].contiguous()) for n in self.NAMES}
        self.reset_stats()

    def reset_stats(self) -> None:
        self.grad_accum = torch.zeros(self.num)
        self.denom = torch.zeros(self.num)
        self.max_radii2D = torch.zeros(self.num)

    def training_setup(self, a: argparse.Namespace) -> None:
        lrs = dict(xyz=a.position_lr_init * self.spatial_lr_scale, f_dc=a.feature_lr, f_rest=a.feature_lr / 20.0,
                   opacity=a.opacity_lr, scaling=a.scaling_lr, rotation=a.rotation_lr)
        self.optimizer = torch.optim.Adam([{"params": [self.params[n]], "lr": lrs[n], "name": n}
                                           for n in self.NAMES], lr=0.0, eps=1e-15)
        self.xyz_lr = exponential_lr(a.position_lr_init * self.spatial_lr_scale,
                                     a.position_lr_final * self.spatial_lr_scale, a.iterations)

    def update_learning_rate(self, iteration: int) -> None:
        for group in self.optimizer.param_groups:
            if group["name"] == "xyz":
                group["lr"] = self.xyz_lr(iteration)

    # optimizer surgery
    def _sync_from_optimizer(self) -> None:
        for group in self.optimizer.param_groups:
            self.params[group["name"]] = group["params"][0]

    def _extend(self, new: Dict[str, torch.Tensor]) -> None:
        """Append rows to every parameter; Adam's moments of the new rows start at 0."""
        for group in self.optimizer.param_groups:
            old = group["params"][0]
            ext = new[group["name"]]
            param = torch.nn.Parameter(torch.cat([old.detach(), ext], dim=0).contiguous())
            state = self.optimizer.state.pop(old, None)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    state[key] = torch.cat([state[key], torch.zeros_like(ext)], dim=0).contiguous()
                self.optimizer.state[param] = state
            group["params"][0] = param
        self._sync_from_optimizer()
        n = next(iter(new.values())).shape[0]
        self.grad_accum = torch.cat([self.grad_accum, torch.zeros(n)])
        self.denom = torch.cat([self.denom, torch.zeros(n)])
        self.max_radii2D = torch.cat([self.max_radii2D, torch.zeros(n)])

    def keep_only(self, keep: torch.Tensor) -> None:
        """Remove the Gaussians where ``keep`` is False, slicing Adam's state (pruning.prune_gaussians)."""
        from diff_gaussian_rasterization_ks import pruning

        keep = keep.to(torch.bool).reshape(-1)
        new = pruning.prune_gaussians(self.params, keep, optimizer=self.optimizer)
        self.params = {n: new[n] for n in self.NAMES}
        for group in self.optimizer.param_groups:  # prune_gaussians updates the optimizer in place
            assert group["params"][0] is self.params[group["name"]], "optimizer out of sync after pruning"
        self.grad_accum = self.grad_accum[keep]
        self.denom = self.denom[keep]
        self.max_radii2D = self.max_radii2D[keep]

    def reset_opacity(self) -> None:
        """Opacities down to at most 0.01, with fresh Adam moments for them."""
        for group in self.optimizer.param_groups:
            if group["name"] != "opacity":
                continue
            old = group["params"][0]
            value = inverse_sigmoid(torch.clamp(torch.sigmoid(old.detach()), max=0.01))
            param = torch.nn.Parameter(value.contiguous())
            state = self.optimizer.state.pop(old, None)
            if state:
                state["exp_avg"] = torch.zeros_like(value)
                state["exp_avg_sq"] = torch.zeros_like(value)
                self.optimizer.state[param] = state
            group["params"][0] = param
        self._sync_from_optimizer()

    # densification
    def add_densification_stats(self, means2D_grad: torch.Tensor, visible: torch.Tensor, radii: torch.Tensor) -> None:
        self.grad_accum[visible] += means2D_grad[visible, :2].norm(dim=-1)
        self.denom[visible] += 1
        self.max_radii2D[visible] = torch.maximum(self.max_radii2D[visible], radii[visible].float())

    def _clone(self, grads: torch.Tensor, threshold: float, extent: float) -> int:
        select = (grads >= threshold) & (self.scaling.max(dim=1).values <= self.percent_dense * extent)
        if not bool(select.any()):
            return 0
        self._extend({n: self.params[n].detach()[select] for n in self.NAMES})
        return int(select.sum())

    def _split(self, grads: torch.Tensor, threshold: float, extent: float, n_split: int = 2) -> int:
        P = self.num
        padded = torch.zeros(P)
        padded[: grads.shape[0]] = grads
        select = (padded >= threshold) & (self.scaling.max(dim=1).values > self.percent_dense * extent)
        if not bool(select.any()):
            return 0
        stds = self.scaling[select].detach().repeat(n_split, 1)
        samples = torch.normal(torch.zeros_like(stds), stds)
        R = quaternion_to_matrix(self.rotation[select].detach()).repeat(n_split, 1, 1)
        new = {n: self.params[n].detach()[select].repeat(n_split, *([1] * (self.params[n].dim() - 1)))
               for n in self.NAMES}
        new["xyz"] = (R @ samples[..., None]).squeeze(-1) + new["xyz"]
        new["scaling"] = torch.log(self.scaling[select].detach().repeat(n_split, 1) / (0.8 * n_split))
        self._extend(new)
        keep = torch.cat([~select, torch.ones(n_split * int(select.sum()), dtype=torch.bool)])
        self.keep_only(keep)
        return int(select.sum())

    def densify_and_prune(self, grad_threshold: float, min_opacity: float, extent: float,
                          max_screen_size: Optional[float], max_gaussians: int) -> Dict[str, int]:
        grads = self.grad_accum / self.denom.clamp_min(1)
        grads[self.denom == 0] = 0.0
        room = max_gaussians - self.num
        if room <= 0:  # at the cap: no growth, only pruning
            grads = torch.zeros_like(grads)
        elif room < 2 * int((grads >= grad_threshold).sum()):  # keep only the largest gradients
            k = max(room // 2, 1)
            cutoff = torch.topk(grads, k).values[-1]
            grads = torch.where(grads >= cutoff, grads, torch.zeros_like(grads))
        cloned = self._clone(grads, grad_threshold, extent)
        split = self._split(grads, grad_threshold, extent)
        prune = (self.opacity < min_opacity).squeeze(1)
        if max_screen_size:
            prune |= (self.max_radii2D > max_screen_size) | (self.scaling.max(dim=1).values > 0.1 * extent)
        removed = int(prune.sum())
        if removed and removed < self.num:
            self.keep_only(~prune)
        self.reset_stats()
        return dict(cloned=cloned, split=split, removed=removed)

    def to_cloud(self) -> GaussianCloud:
        return GaussianCloud(means=self.xyz.detach().clone(), sh=self.features.detach().clone(),
                             opacity_logits=self.params["opacity"].detach().clone(),
                             log_scales=self.params["scaling"].detach().clone(),
                             rotations=self.params["rotation"].detach().clone())


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """[N, 4] unit quaternions (w, x, y, z) -> [N, 3, 3] rotation matrices."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)


# ----------------------------------------------------------------------------- training
def render(model: GaussianModel, view: View, bg: torch.Tensor, *, with_means2D: bool = False):
    """(image [3,H,W], means2D leaf with retained grad or None, radii [P])."""
    settings = view.settings(model.active_sh_degree, bg)
    means2D = torch.zeros(model.num, 3, requires_grad=with_means2D)
    image, _importance, radii = GaussianRasterizer(settings)(means2D=means2D, **model.rasterizer_inputs())
    return image, (means2D if with_means2D else None), radii


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def evaluate(model: GaussianModel, views: List[View], bg: torch.Tensor) -> Dict[str, float]:
    from pytorch_msssim import ssim

    if not views:
        return {"psnr": None, "ssim": None}
    ps, ss = [], []
    with torch.no_grad():
        for v in views:
            image = render(model, v, bg)[0].clamp(0, 1)
            ps.append(psnr(image, v.image))
            ss.append(float(ssim(image[None], v.image[None], data_range=1.0)))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss))}


def importance_prune(model: GaussianModel, views: List[View], bg: torch.Tensor, preset: str,
                     value: Optional[float], progress: bool) -> None:
    """Keep what ``pruning.PRESETS[preset]`` keeps, scored over the training views
    (``value``: the preset's keep ratio or threshold, None for its published default)."""
    from diff_gaussian_rasterization_ks import pruning

    with torch.no_grad():
        gaussians = {k: v.detach().contiguous() for k, v in model.rasterizer_inputs().items()}
    gaussians["means2D"] = torch.zeros_like(gaussians["means3D"])
    cameras = [v.settings(model.active_sh_degree, bg) for v in views]
    keep = pruning.PRESETS[preset](gaussians, cameras, value=value, progress=progress)
    model.keep_only(torch.as_tensor(keep, dtype=torch.bool).reshape(-1))


def save_comparisons(model: GaussianModel, views: List[View], bg: torch.Tensor, out: Path, limit: int = 4) -> List[str]:
    from PIL import Image

    names = []
    with torch.no_grad():
        for k, v in enumerate(views[:limit]):
            image = render(model, v, bg)[0].clamp(0, 1)
            both = torch.cat([v.image, image], dim=2)
            arr = (both.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            name = f"test_{k:03d}.png"
            Image.fromarray(arr).save(out / name)
            names.append(name)
    return names


def _preset_names():
    from diff_gaussian_rasterization_ks import pruning

    return tuple(pruning.PRESETS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train 3D Gaussians (3DGS-style loop) with importance-based pruning.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, default=None,
                   help="NeRF-synthetic transforms_train.json (default: the built-in garden dataset)")
    g.add_argument("--garden-data", type=Path, default=DEFAULT_GARDEN, help="garden_sfm.npz for the built-in dataset")
    g.add_argument("--width", type=int, default=160, help="image width (images are resized, aspect kept)")
    g.add_argument("--views", type=int, default=24, help="built-in dataset: number of cameras (every 8th is a test view)")
    g.add_argument("--orbit-radius", type=float, default=1.6, help="built-in dataset: camera circle radius")
    g.add_argument("--orbit-elevation", type=float, default=25.0, help="built-in dataset: camera elevation (degrees)")
    g.add_argument("--bg", choices=("black", "white"), default="black", help="background colour")
    g.add_argument("--init-points", type=int, default=3000, help="number of initial points")
    g.add_argument("--init-extent", type=float, default=1.3, help="NeRF data: half-size of the random initial cube")
    g = p.add_argument_group("optimisation")
    g.add_argument("--iterations", type=int, default=600)
    g.add_argument("--sh-degree", type=int, default=3, choices=range(4), help="largest SH degree")
    g.add_argument("--sh-increase-every", type=int, default=100, help="iterations between SH band increases")
    g.add_argument("--position-lr-init", type=float, default=1.6e-3, help="times the scene extent")
    g.add_argument("--position-lr-final", type=float, default=1.6e-5, help="times the scene extent")
    g.add_argument("--feature-lr", type=float, default=0.01, help="SH DC lr (the other bands: / 20)")
    g.add_argument("--opacity-lr", type=float, default=0.05)
    g.add_argument("--scaling-lr", type=float, default=0.01)
    g.add_argument("--rotation-lr", type=float, default=0.002)
    g.add_argument("--lambda-dssim", type=float, default=0.2, help="weight of 1 - SSIM in the loss")
    g = p.add_argument_group("densification")
    g.add_argument("--densify-from", type=int, default=50)
    g.add_argument("--densify-until", type=int, default=350)
    g.add_argument("--densify-every", type=int, default=50)
    g.add_argument("--densify-grad-threshold", type=float, default=2e-4)
    g.add_argument("--opacity-reset-every", type=int, default=250, help="0 disables opacity resets")
    g.add_argument("--min-opacity", type=float, default=0.005)
    g.add_argument("--max-screen-size", type=float, default=20.0, help="pixels; applied after the first opacity reset")
    g.add_argument("--max-gaussians", type=int, default=15000, help="densification stops growing past this")
    g = p.add_argument_group("importance pruning")
    g.add_argument("--prune-preset", default="lightgaussian", choices=(*_preset_names(), "none"),
                   help="a preset of diff_gaussian_rasterization_ks.pruning.PRESETS, or none")
    g.add_argument("--prune-at", type=int, default=None,
                   help="iteration of the pruning (None: 70%% of --iterations)")
    g.add_argument("--prune-value", type=float, default=None,
                   help="the preset's keep ratio (blending_weight, lightgaussian) or threshold (radsplat); "
                        "None: the preset's published value")
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, default=Path("out/train"))
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=os.cpu_count())
    g.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> dict:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.iterations < 1:
        parser.error("--iterations must be >= 1")
    prune_at = int(0.7 * a.iterations) if a.prune_at is None else a.prune_at
    do_prune = a.prune_preset.lower() != "none" and 0 < prune_at <= a.iterations

    from pytorch_msssim import ssim
    from tqdm import tqdm

    torch.set_num_threads(max(1, a.threads))
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    bg = torch.ones(3) if a.bg == "white" else torch.zeros(3)

    t_start = time.perf_counter()
    if a.data is not None:
        if not a.data.is_file():
            parser.error(f"--data: {a.data} not found")
        data = load_nerf_synthetic(a.data, a.width, bg, a.init_points, a.init_extent, gen)
    else:
        if not a.garden_data.is_file():
            parser.error(f"--garden-data: {a.garden_data} not found (it lives in <repo>/../shared/data/)")
        data = make_garden_dataset(a.garden_data, a.views, a.width, a.init_points, a.orbit_radius,
                                   a.orbit_elevation, gen, bg)
    t_data = time.perf_counter() - t_start
    extent = scene_extent(data.train)
    print(f"{data.description}; scene extent {extent:.3g}; prepared in {t_data:.1f} s")

    model = GaussianModel(a.sh_degree)
    model.create_from_points(data.points, data.colors, extent)
    model.training_setup(a)
    initial_train, initial_test = evaluate(model, data.train, bg), evaluate(model, data.test, bg)
    metrics: dict = {"data": data.description, "iterations": a.iterations, "gaussians_initial": model.num,
                     "prune_preset": a.prune_preset if do_prune else None, "prune_at": prune_at if do_prune else None,
                     "initial_train_psnr": initial_train["psnr"], "initial_test_psnr": initial_test["psnr"]}
    print(f"training {model.num:,d} Gaussians for {a.iterations} iterations (SH up to degree {a.sh_degree}, "
          f"{torch.get_num_threads()} threads)"
          + (f", importance pruning '{a.prune_preset}' at {prune_at}" if do_prune else ""))

    order: List[int] = []
    t_train = time.perf_counter()
    bar = tqdm(range(1, a.iterations + 1), desc="train", unit="it", disable=a.no_progress, dynamic_ncols=True)
    ema_psnr = None
    for it in bar:
        model.update_learning_rate(it)
        if a.sh_increase_every > 0 and it % a.sh_increase_every == 0:
            model.one_up_sh_degree()
        if not order:
            order = torch.randperm(len(data.train), generator=gen).tolist()
        view = data.train[order.pop()]

        image, means2D, radii = render(model, view, bg, with_means2D=True)
        l1 = (image - view.image).abs().mean()
        loss = (1 - a.lambda_dssim) * l1 + a.lambda_dssim * (1 - ssim(image[None], view.image[None], data_range=1.0))
        model.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.optimizer.step()

        with torch.no_grad():
            value = psnr(image.detach().clamp(0, 1), view.image)
            ema_psnr = value if ema_psnr is None else 0.9 * ema_psnr + 0.1 * value
            if it <= a.densify_until:
                model.add_densification_stats(means2D.grad, radii > 0, radii)
                if it >= a.densify_from and it % a.densify_every == 0:
                    after_reset = a.opacity_reset_every > 0 and it > a.opacity_reset_every
                    model.densify_and_prune(a.densify_grad_threshold, a.min_opacity, extent,
                                            a.max_screen_size if after_reset else None, a.max_gaussians)
                if a.opacity_reset_every > 0 and it % a.opacity_reset_every == 0:
                    model.reset_opacity()
        if do_prune and it == prune_at:  # outside no_grad: a score may come from a backward pass
            metrics["before_prune"] = {"gaussians": model.num, **{f"test_{k}": v for k, v in
                                                                 evaluate(model, data.test, bg).items()}}
            importance_prune(model, data.train, bg, a.prune_preset, a.prune_value, not a.no_progress)
            metrics["after_prune"] = {"gaussians": model.num, **{f"test_{k}": v for k, v in
                                                                evaluate(model, data.test, bg).items()}}
            b, c = metrics["before_prune"], metrics["after_prune"]
            change = (f", test PSNR {b['test_psnr']:.2f} -> {c['test_psnr']:.2f} dB" if data.test else "")
            bar.write(f"iteration {it}: importance pruning '{a.prune_preset}' {b['gaussians']:,d} -> "
                      f"{c['gaussians']:,d} Gaussians{change}")
        bar.set_postfix(psnr=f"{ema_psnr:.2f}", gaussians=model.num, sh=model.active_sh_degree, refresh=False)
    bar.close()
    t_train = time.perf_counter() - t_train

    train_m = evaluate(model, data.train, bg)
    test_m = evaluate(model, data.test, bg)
    a.out.mkdir(parents=True, exist_ok=True)
    ply_path = write_gaussian_ply(a.out / "point_cloud.ply", model.to_cloud())
    comparisons = save_comparisons(model, data.test or data.train, bg, a.out)
    metrics.update(
        train_psnr=train_m["psnr"], train_ssim=train_m["ssim"], test_psnr=test_m["psnr"], test_ssim=test_m["ssim"],
        gaussians_final=model.num, sh_degree=model.active_sh_degree, time_data_s=t_data, time_train_s=t_train,
        seconds_per_iteration=t_train / a.iterations, ply=str(ply_path), comparisons=comparisons,
    )
    (a.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if data.test:
        print(f"train PSNR {train_m['psnr']:.2f} dB, SSIM {train_m['ssim']:.3f} | test PSNR {test_m['psnr']:.2f} dB, "
              f"SSIM {test_m['ssim']:.3f} ({len(data.test)} views); before training: train PSNR "
              f"{initial_train['psnr']:.2f} dB, test PSNR {initial_test['psnr']:.2f} dB")
    else:
        print(f"train PSNR {train_m['psnr']:.2f} dB, SSIM {train_m['ssim']:.3f} (before training: "
              f"{initial_train['psnr']:.2f} dB); no test views")
    if "before_prune" in metrics:
        print(f"Gaussians: {metrics['gaussians_initial']:,d} initial, {metrics['before_prune']['gaussians']:,d} before "
              f"and {metrics['after_prune']['gaussians']:,d} after the importance pruning, {model.num:,d} final")
    else:
        print(f"Gaussians: {metrics['gaussians_initial']:,d} initial, {model.num:,d} final (no importance pruning)")
    print(f"time: {t_train:.1f} s training ({1000 * t_train / a.iterations:.0f} ms per iteration), "
          f"{t_data:.1f} s data; wrote {ply_path}, {', '.join(comparisons)} (ground truth | render) and metrics.json "
          f"to {a.out}/")
    return metrics


if __name__ == "__main__":
    main()
