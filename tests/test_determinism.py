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
