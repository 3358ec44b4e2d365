"""The CPU backend's phase clock (`_C.cpu_phase_times`, used by
`benchmarks/bench.py --phases`): after a forward and a backward, each lists
its phases in order, and their times add up to no more than the call's."""
import time

import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer, _C
from diff_gaussian_rasterization_ks.scenes import random_scene, requires_grad_


def test_phase_times_cover_the_last_forward_and_backward():
    scene = random_scene(2000, 64, 80, seed=0)
    rasterizer = GaussianRasterizer(scene.settings)
    inputs = requires_grad_(scene.inputs)
    t0 = time.perf_counter()
    out = rasterizer.render(**inputs)
    forward_ms = (time.perf_counter() - t0) * 1e3
    forward = _C.cpu_phase_times(False)
    t0 = time.perf_counter()
    (out.color.sum() + out.importance_map.sum()).backward()
    backward_ms = (time.perf_counter() - t0) * 1e3
    backward = _C.cpu_phase_times(True)
    assert [p for p, _ in forward] == ["setup", "preprocess", "binning", "outputs", "tiles", "statistics"]
    assert [p for p, _ in backward] == ["checks", "tiles", "pass 2"]
    for phases, wall in ((forward, forward_ms), (backward, backward_ms)):
        assert all(ms >= 0 for _, ms in phases)
        assert 0 < sum(ms for _, ms in phases) <= wall
    # a forward replaces the forward's list only
    with torch.no_grad():
        rasterizer.render(**scene.inputs)
    assert [p for p, _ in _C.cpu_phase_times(False)] == [p for p, _ in forward]
    assert _C.cpu_phase_times(True) == backward
