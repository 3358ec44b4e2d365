"""Helpers shared by the reliability tests (issue 8): rendering with every
output and its backward, cameras with exact view depths, and a recorder of
the arguments the Python layer hands to the compiled kernels."""
import contextlib
from typing import Dict, List, Optional

import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer, _backend
from diff_gaussian_rasterization_ks.camera import make_settings
from diff_gaussian_rasterization_ks.scenes import requires_grad_

# The differentiable maps of `GaussianRasterizer.render` and their shapes.
MAPS = ("color", "importance_map", "invdepth", "alpha")


def map_shapes(H: int, W: int) -> Dict[str, tuple]:
    return {"color": (3, H, W), "importance_map": (H, W), "invdepth": (1, H, W), "alpha": (1, H, W)}


def identity_camera(H: int, W: int, tanfovx: float = 0.5, bg=(0.25, 0.5, 0.75), **kwargs):
    """Camera at the origin looking down +z: the view depth of a Gaussian is
    exactly its world z (0 * x == 0 for finite x), so z = 0.2 sits exactly on
    the near plane."""
    return make_settings(torch.eye(4), W, H, tanfovx, tanfovx * H / W, bg=torch.tensor(bg, dtype=torch.float32),
                         **kwargs)


def upstream_gradients(H: int, W: int, seed: int = 0, dtype=torch.float64) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(shape, generator=g, dtype=dtype) for m, shape in map_shapes(H, W).items()}


def render(settings, inputs):
    return GaussianRasterizer(settings).render(**inputs)


def render_and_backward(settings, inputs, upstream: Optional[Dict[str, torch.Tensor]] = None):
    """Renders with gradients on every floating input and back-propagates
    sum(upstream[m] * map m) over the four maps (random upstream by default).
    Returns (RenderOutput, {name: grad or None})."""
    H, W = settings.image_height, settings.image_width
    if upstream is None:
        upstream = upstream_gradients(H, W)
    x = requires_grad_(inputs)
    out = render(settings, x)
    loss = sum((getattr(out, m).double() * upstream[m].double()).sum() for m in MAPS)
    loss.backward()
    return out, {k: (v.grad if isinstance(v, torch.Tensor) else None) for k, v in x.items()}


def outputs_and_grads(out, grads) -> List[torch.Tensor]:
    """Every tensor one render + backward produces, in a fixed order."""
    tensors = [out.color, out.importance_map, out.radii, out.invdepth, out.alpha, out.n_contrib]
    return tensors + [grads[k] for k in sorted(grads) if grads[k] is not None]


@contextlib.contextmanager
def recorded_kernel_calls(device=torch.device("cpu")):
    """Records the positional and keyword arguments that the Python layer
    passes to the compiled forward and backward of `device` (whatever their
    signature is), so that a test can replay them with one argument changed,
    and what they returned (calls["forward_results"], ...)."""
    calls = {"forward": [], "backward": [], "forward_results": [], "backward_results": []}
    original = _backend.kernels_for

    def recording(dev):
        kernels = original(dev)
        if kernels is None or torch.device(dev).type != torch.device(device).type:
            return kernels

        def wrap(name, fn):
            def call(*args, **kwargs):
                calls[name].append((args, kwargs))
                result = fn(*args, **kwargs)
                calls[name + "_results"].append(result)
                return result

            return call

        return kernels._replace(forward=wrap("forward", kernels.forward), backward=wrap("backward", kernels.backward))

    _backend.kernels_for = recording
    try:
        yield calls
    finally:
        _backend.kernels_for = original


# ---------------------------------------------------------------------------
# A fixed set of scenes covering the ordinary and the degenerate paths, for
# the tests that run "the core scenario" under another build or many times.
# ---------------------------------------------------------------------------


def _gaussians_at(means, scale=0.1, opacity=0.9):
    means = torch.as_tensor(means, dtype=torch.float32).reshape(-1, 3)
    P = means.shape[0]
    return dict(means3D=means.contiguous(), means2D=torch.zeros(P, 3), opacities=torch.full((P, 1), float(opacity)),
                importances=torch.linspace(0.5, 1.5, P).reshape(P, 1), shs=None,
                colors_precomp=torch.full((P, 3), 0.8), scales=torch.full((P, 3), float(scale)),
                rotations=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(P, 1), cov3D_precomp=None)


def core_scenarios():
    """[(name, settings, inputs, render keyword arguments)]: random scenes in
    every colour / covariance mode, antialiasing, statistics, and the
    degenerate input of ALGORITHM.md (no Gaussians, all culled, 1 x 1 image,
    near plane, far off screen, huge and thin splats, opacities 0 and 1,
    non-finite attributes)."""
    import inspect

    from diff_gaussian_rasterization_ks.scenes import random_scene

    has_stats = "stats" in inspect.signature(GaussianRasterizer.render).parameters
    out = []
    for name, kwargs in [
        ("colors_precomp", dict(num_gaussians=150, height=37, width=53, seed=1, bg=(0.2, 0.4, 0.6))),
        ("sh3", dict(num_gaussians=150, height=48, width=40, seed=2, sh_degree=3)),
        ("cov3D_sh1", dict(num_gaussians=120, height=33, width=47, seed=3, sh_degree=1, use_cov3D_precomp=True)),
        ("dense", dict(num_gaussians=200, height=32, width=32, seed=4, scale_range=(0.3, 1.0), sh_degree=2)),
    ]:
        scene = random_scene(**kwargs)
        out.append((name, scene.settings, scene.inputs, {}))
    scene = random_scene(120, 40, 56, seed=9, scale_range=(0.2, 0.6))
    scene.inputs["opacities"] = torch.full((120, 1), 0.995)  # alpha clamped at 0.99, early stops
    out.append(("opaque", scene.settings, scene.inputs, {}))
    scene = random_scene(100, 30, 30, seed=5, sh_degree=2)
    out.append(("antialiasing", scene.settings._replace(antialiasing=True), scene.inputs, {}))
    if has_stats:
        scene = random_scene(100, 30, 45, seed=6)
        out.append(("stats", scene.settings, scene.inputs, dict(stats=True)))
        out.append(("stats_weighted", scene.settings, scene.inputs,
                    dict(stats=True, pixel_weights=torch.rand(30, 45, generator=torch.Generator().manual_seed(0)))))

    cam = identity_camera
    near = torch.tensor(0.2, dtype=torch.float32).item()
    out += [
        ("zero_gaussians", cam(20, 30), _gaussians_at(torch.zeros(0, 3)), {}),
        ("all_culled", cam(20, 30), _gaussians_at([[0, 0, -1.0], [0.1, 0, 0.1], [0, 0, 0], [1e6, 0, 5]]), {}),
        ("one_by_one", cam(1, 1), _gaussians_at([[0, 0, 3.0]], scale=0.5), {}),
        ("one_by_one_huge", cam(1, 1), _gaussians_at([[0, 0, 3.0], [0.1, 0, 5]], scale=1e3), {}),
        ("near_plane", cam(24, 24), _gaussians_at([[0, 0, near], [0, 0, 0.2000001], [0, 0, 0.21]], scale=0.01), {}),
        ("far_off_screen", cam(32, 48), _gaussians_at([[1e7, 1e7, 3], [-1e12, 0, 4], [0, 3e9, 1e9], [0, 0, 3]],
                                                      scale=0.2), {}),
        ("huge", cam(33, 65), _gaussians_at([[0, 0, 2], [0.3, -0.2, 3], [-0.4, 0.1, 1]], scale=1e3), {}),
        ("thin", cam(17, 33), _gaussians_at([[0, 0, 2], [0.3, -0.2, 3], [-0.4, 0.1, 1]], scale=1e-6), {}),
        ("opacity_0_and_1", cam(20, 20), dict(_gaussians_at([[0, 0, 2], [0, 0, 2.5], [0, 0, 3]], scale=0.5),
                                              opacities=torch.tensor([[0.0], [1.0], [1.0]])), {}),
    ]
    for attribute in ("means3D", "opacities", "importances", "colors_precomp", "scales", "rotations"):
        for value in (float("nan"), float("inf")):
            x = _gaussians_at([[0, 0, 2], [0.05, 0, 2.5], [0, 0.05, 3]], scale=0.3)
            x[attribute] = x[attribute].clone()
            x[attribute][1, 0] = value
            out.append((f"{attribute}={value}", cam(20, 24), x, {}))
    return out


def run_scenario(settings, inputs, render_kwargs, upstream_seed=0):
    """Forward and backward of one scenario: every output and gradient, in a
    fixed order (names, tensors)."""
    H, W = settings.image_height, settings.image_width
    upstream = upstream_gradients(H, W, seed=upstream_seed, dtype=torch.float32)
    x = requires_grad_(inputs)
    out = GaussianRasterizer(settings).render(**x, **render_kwargs)
    sum((getattr(out, m) * upstream[m]).sum() for m in MAPS).backward()
    names, tensors = [], []
    for field in out._fields:
        value = getattr(out, field)
        if isinstance(value, torch.Tensor):
            names.append(field)
            tensors.append(value.detach())
        elif value is not None:  # statistics
            for sub in value._fields:
                names.append(f"{field}.{sub}")
                tensors.append(getattr(value, sub).detach())
    for k in sorted(x):
        if isinstance(x[k], torch.Tensor) and x[k].grad is not None:
            names.append(f"d/d{k}")
            tensors.append(x[k].grad)
    return names, tensors


def run_child(tmp_path, name, source, timeout=600):
    """Runs the Python `source` in a fresh interpreter that imports this
    checkout's package, and returns the JSON object it printed on its last
    line starting with "RESULT " (the test fails if there is none)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import diff_gaussian_rasterization_ks

    root = str(Path(diff_gaussian_rasterization_ks.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    script = tmp_path / f"{name}.py"
    script.write_text(source)
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])
