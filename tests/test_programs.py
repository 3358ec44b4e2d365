"""The example programs run end to end, with tiny settings, as a user runs them
(a subprocess each), write their files, and fitting improves the PSNR."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import GARDEN_NPZ, REPO

pytest.importorskip("plyfile")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")
pytest.importorskip("pytorch_msssim")

EXAMPLES = REPO / "examples"


def run(script, *args, timeout=300):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(EXAMPLES / script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_image(tmp_path):
    from PIL import Image

    # a small synthetic photograph: smooth gradients and a few discs
    H, W = 40, 48
    y, x = np.mgrid[0:H, 0:W] / np.array([H, W])[:, None, None]
    img = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x + 3 * y)], -1)
    for cx, cy, r in ((0.3, 0.3, 0.15), (0.7, 0.6, 0.2)):
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = (0.9, 0.2, 0.1)
    src = tmp_path / "photo.png"
    Image.fromarray((img * 255).astype(np.uint8)).save(src)
    out = tmp_path / "fit"
    stdout = run("fit_image.py", "--image", src, "--width", 48, "--steps", 60, "--num-gaussians", 400,
                 "--prune-at", 40, "--keep-ratio", 0.5, "--out", out, "--no-progress", "--threads", 2)
    for name in ("target.png", "final.png", "importance.png", "before_prune.png", "after_prune.png", "curve.png",
                 "metrics.json"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m["psnr_final"] > m["psnr_initial"] + 5.0, m
    assert m["gaussians_after_prune"] == m["gaussians_final"] < m["gaussians_before_prune"] == m["gaussians_initial"]
    assert abs(m["gaussians_final"] - 0.5 * m["gaussians_initial"]) <= 2
    assert len(m["history"]["psnr"]) == 60
    assert "final PSNR" in stdout and f"{m['psnr_final']:.2f}" in stdout
    with Image.open(out / "final.png") as im:
        assert im.size == (48, 40)


def test_train_builtin_garden(tmp_path):
    if not GARDEN_NPZ.exists():
        pytest.skip("garden data not found")
    from diff_gaussian_rasterization_ks.ply import read_gaussian_ply

    out = tmp_path / "train"
    stdout = run("train.py", "--views", 9, "--width", 48, "--iterations", 60, "--init-points", 400,
                 "--sh-degree", 1, "--sh-increase-every", 20, "--densify-from", 10, "--densify-every", 10,
                 "--densify-until", 40, "--opacity-reset-every", 0, "--prune-at", 45, "--out", out,
                 "--no-progress", "--threads", 2)
    m = json.loads((out / "metrics.json").read_text())
    assert m["train_psnr"] > m["initial_train_psnr"] + 2.0, m
    assert m["test_psnr"] > m["after_prune"]["test_psnr"], m  # recovery after the pruning
    assert m["before_prune"]["gaussians"] > m["after_prune"]["gaussians"] > 0
    assert m["gaussians_final"] == m["after_prune"]["gaussians"]  # no densification after the prune
    cloud = read_gaussian_ply(out / "point_cloud.ply")
    assert len(cloud) == m["gaussians_final"] and cloud.sh_degree == 1
    assert (out / "test_000.png").is_file()
    assert "test PSNR" in stdout


def _fake_nerf_synthetic(root, n_views=4, size=24):
    """A NeRF-synthetic style folder: RGBA renders of random Gaussians from
    cameras given as OpenGL camera-to-world matrices."""
    from PIL import Image

    from diff_gaussian_rasterization_ks.camera import look_at, make_settings
    from diff_gaussian_rasterization_ks.scenes import random_scene

    scene = random_scene(150, size, size, seed=1, sh_degree=None, offscreen_fraction=0, behind_fraction=0)
    inputs = dict(scene.inputs)
    center = inputs["means3D"].mean(0)
    inputs["means3D"] = (inputs["means3D"] - center).contiguous()  # object around the origin
    angle_x = 0.9
    for split, count in (("train", n_views), ("test", 2)):
        (root / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for k in range(count):
            theta = 2 * math.pi * (k + (0.5 if split == "test" else 0)) / count
            eye = (5 * math.cos(theta), 5 * math.sin(theta), 1.5)
            w2c = look_at(eye, (0, 0, 0), up=(0, 0, 1))
            s = make_settings(w2c, size, size, math.tan(angle_x / 2), math.tan(angle_x / 2))
            from diff_gaussian_rasterization_ks import GaussianRasterizer

            with torch.no_grad():
                color, alpha_map, _ = GaussianRasterizer(s)(**inputs)  # importances None: the alpha map
            alpha = alpha_map.clamp(1e-3, 1)
            rgba = torch.cat([(color / alpha).clamp(0, 1), alpha[None]], 0).permute(1, 2, 0).numpy()
            Image.fromarray((rgba * 255 + 0.5).astype(np.uint8), "RGBA").save(root / split / f"r_{k}.png")
            c2w = torch.linalg.inv(w2c.double())
            c2w[:3, 1:3] *= -1  # OpenCV -> OpenGL camera axes
            frames.append({"file_path": f"./{split}/r_{k}", "transform_matrix": c2w.tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle_x, "frames": frames}))
    return root / "transforms_train.json"


def test_train_nerf_synthetic_loader(tmp_path):
    transforms = _fake_nerf_synthetic(tmp_path / "scene")
    train = load_example("train")
    # the loader turns OpenGL camera-to-world back into the OpenCV world-to-camera we rendered with
    views = train.read_transforms(transforms, None, torch.zeros(3))
    from diff_gaussian_rasterization_ks.camera import look_at

    expect = look_at((5.0, 0.0, 1.5), (0, 0, 0), up=(0, 0, 1))
    assert torch.allclose(views[0].world_to_camera, expect, atol=1e-5)
    assert views[0].image.shape == (3, 24, 24)
    assert views[0].tanfovx == pytest.approx(math.tan(0.45))

    out = tmp_path / "out"
    run("train.py", "--data", transforms, "--width", 24, "--iterations", 30, "--init-points", 300,
        "--init-extent", 1.0, "--sh-degree", 0, "--densify-from", 10, "--densify-every", 10, "--densify-until", 20,
        "--prune-preset", "none", "--out", out, "--no-progress", "--threads", 2)
    m = json.loads((out / "metrics.json").read_text())
    assert "2 test" in m["data"] and m["prune_preset"] is None
    assert math.isfinite(m["test_psnr"]) and m["train_psnr"] > m["initial_train_psnr"]
    assert (out / "point_cloud.ply").is_file()


def test_render_ply(tmp_path):
    from diff_gaussian_rasterization_ks.ply import GaussianCloud, write_gaussian_ply
    from diff_gaussian_rasterization_ks.scenes import random_scene

    scene = random_scene(300, 16, 16, seed=2, sh_degree=3, offscreen_fraction=0, behind_fraction=0)
    ply = write_gaussian_ply(tmp_path / "in.ply", GaussianCloud.from_rasterizer_inputs(scene.inputs))
    out = tmp_path / "orbit"
    stdout = run("render_ply.py", "--ply", ply, "--frames", 3, "--size", "40x30", "--out", out, "--no-progress",
                 "--threads", 2)
    for k in range(3):
        assert (out / f"frame_{k:03d}.png").is_file() and (out / f"importance_{k:03d}.png").is_file()
    from PIL import Image

    with Image.open(out / "orbit.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (80, 30)
    m = json.loads((out / "metrics.json").read_text())
    assert m["gaussians"] == 300 and m["sh_degree"] == 3 and min(m["drawn_per_frame"]) > 100
    assert max(m["mean_color"]) > 0.02  # the Gaussians are in view
    assert "rendered 3 frames" in stdout


def test_render_ply_garden(tmp_path):
    if not GARDEN_NPZ.exists():
        pytest.skip("garden data not found")
    out = tmp_path / "orbit"
    run("render_ply.py", "--garden", "--frames", 2, "--size", 48, "--importance", "alpha", "--out", out,
        "--no-progress", "--threads", 2)
    assert (out / "garden.ply").is_file() and (out / "orbit.gif").is_file()
    m = json.loads((out / "metrics.json").read_text())
    assert m["gaussians"] == 111785 and min(m["drawn_per_frame"]) > 10000


def test_render_garden(tmp_path):
    if not GARDEN_NPZ.exists():
        pytest.skip("garden data not found")
    out = tmp_path / "garden"
    stdout = run("render_garden.py", "--out", out, "--threads", 2)
    assert (out / "garden_color.png").is_file() and (out / "garden_importance.png").is_file()
    assert "648 x 420" in stdout
