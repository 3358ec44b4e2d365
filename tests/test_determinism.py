"""The CPU backend is bit-identical across runs and thread counts."""
import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer
from diff_gaussian_rasterization_ks.scenes import random_scene, requires_grad_


def run(scene, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = requires_grad_(scene.inputs)
        color, importance, radii = GaussianRasterizer(scene.settings)(**x)
        (color.square().sum() + importance.sum()).backward()
        return [color, importance, radii] + [t.grad for t in x.values() if t is not None]
    finally:
        torch.set_num_threads(old)


def test_bit_identical_across_runs_and_thread_counts():
    scene = random_scene(400, 70, 90, seed=21, sh_degree=3, scale_range=(0.05, 0.5))
    one = run(scene, 1)
    for threads in (1, 2, 3):
        other = run(scene, threads)
        for a, b in zip(one, other):
            assert torch.equal(a, b), f"differs with {threads} threads"


def test_every_output_and_gradient_bit_identical_across_thread_counts():
    """All six maps and every gradient, with upstream gradients on all four
    differentiable maps (so the inverse-depth and alpha terms of the backward
    are exercised), in the modes the test above does not cover (cov3D_precomp
    with antialiasing, colors_precomp with a background), for thread counts
    up to more than the machine's cores (uneven tile hand-out)."""
    from reliability_support import run_scenario

    scenes = [random_scene(300, 61, 83, seed=22, sh_degree=1, use_cov3D_precomp=True),
              random_scene(300, 45, 77, seed=23, bg=(0.3, 0.6, 0.9), scale_range=(0.05, 0.6))]
    settings = [scenes[0].settings._replace(antialiasing=True), scenes[1].settings]
    old = torch.get_num_threads()
    try:
        for scene, s in zip(scenes, settings):
            results = []
            for threads in (1, 2, 4, 7):
                torch.set_num_threads(threads)
                results.append(run_scenario(s, scene.inputs, {}, upstream_seed=5))
            names, first = results[0]
            for threads, (_, other) in zip((2, 4, 7), results[1:]):
                for n, a, b in zip(names, first, other):
                    assert torch.equal(a, b), f"{n} differs with {threads} threads"
    finally:
        torch.set_num_threads(old)


def test_large_scene_bit_identical_across_thread_counts():
    """Enough visible Gaussians that the binning splits its work into a
    number of chunks that grows with the threads (at least 4,096 Gaussians
    each), with exact depth ties across the chunks (copies of Gaussians with
    other colours): the order, hence every output and statistic, is the same
    for any number of chunks."""
    scene = random_scene(40000, 48, 64, seed=24, scale_range=(0.01, 0.05))
    x = dict(scene.inputs)
    half = 20000  # Gaussian i + 20000 copies the position of Gaussian i: the two lie in different chunks
    x["means3D"] = torch.cat([x["means3D"][:half], x["means3D"][:half]])
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with torch.no_grad():
                out = GaussianRasterizer(scene.settings).render(**x, stats=True)
            results.append([out.color, out.importance_map, out.radii, out.n_contrib, *out.stats])
    finally:
        torch.set_num_threads(old)
    assert int((results[0][2] > 0).sum()) > 20000, "most Gaussians are visible"
    for threads, other in zip((2, 3), results[1:]):
        for a, b in zip(results[0], other):
            assert torch.equal(a, b), f"differs with {threads} threads"
