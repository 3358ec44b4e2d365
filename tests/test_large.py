"""Large scenes on the CPU backend.

* Entry counts are 64-bit. ALGORITHM.md: "the number of entries is a 64-bit
  quantity until proven small". A scene with more than 2^31 (Gaussian, tile)
  entries needs > 2^31 x 44 bytes (point list and the backward's per-entry
  gradients) = 94 GB, so it cannot run here (24 GB). What can be tested:
  (a) the binning as the kernels return it (forward state): offsets and tile
  ranges are int64 and consistent when every Gaussian touches every tile;
  (b) the counting arithmetic itself, with per-Gaussian
  counts near 2^31 that need no memory, through the binding
  `_C._entry_offsets(tiles_touched int32 [P]) -> int64 [P + 1]`, the
  exclusive prefix sum bin_gaussians computes (it calls that function).
* A million Gaussians render forward and backward on the CPU within memory,
  in a fresh process that reports its peak RSS (resource.getrusage).
"""
import sys

import pytest
import torch

from diff_gaussian_rasterization_ks import _backend

from reliability_support import identity_camera, recorded_kernel_calls, render_and_backward, run_child

# forward outputs: color, importance_map, radii, invdepth, alpha, then the
# CPU state (rasterize_points.h): splat_records, tiles_touched,
# gaussian_offsets, tile_ranges, point_list, final_T, n_contrib
STATE = 5
TILES_TOUCHED, OFFSETS, RANGES, POINTS = (STATE + k for k in (1, 2, 3, 4))


def test_binning_counts_are_int64_and_consistent_when_every_gaussian_touches_every_tile():
    H, W = 100, 150  # 7 x 10 = 70 tiles (partial tiles at the right and bottom)
    P = 300
    g = torch.Generator().manual_seed(0)
    means = torch.cat([0.4 * (torch.rand(P, 2, generator=g) - 0.5), 2 + 3 * torch.rand(P, 1, generator=g)], 1)
    inputs = dict(means3D=means.contiguous(), means2D=torch.zeros(P, 3), opacities=torch.full((P, 1), 0.05),
                  importances=None, shs=None, colors_precomp=torch.rand(P, 3, generator=g),
                  scales=torch.full((P, 3), 50.0), rotations=torch.tensor([[1.0, 0, 0, 0]]).repeat(P, 1),
                  cov3D_precomp=None)
    with recorded_kernel_calls() as calls:
        out, grads = render_and_backward(identity_camera(H, W), inputs)
    result = calls["forward_results"][0]
    tiles = 7 * 10
    touched, offsets, ranges = result[TILES_TOUCHED], result[OFFSETS], result[RANGES]
    points, depths = result[POINTS], means[:, 2]  # (identity_camera: the view depth is z)
    assert (out.radii > 0).all() and (touched == tiles).all(), "every Gaussian must touch every tile"
    for name, t in (("gaussian_offsets", offsets), ("tile_ranges", ranges)):
        assert t.dtype == torch.int64, f"{name}: {t.dtype}"
    E = P * tiles
    assert offsets.tolist() == [0] + torch.cumsum(touched.long(), 0).tolist()
    assert ranges.tolist() == list(range(0, E + 1, P)), "each tile holds every Gaussian"
    assert points.numel() == E
    for t in range(tiles):  # front to back within each tile
        d = depths[points[ranges[t]:ranges[t + 1]].long()]
        assert (d[1:] >= d[:-1]).all(), f"tile {t} is not sorted by depth"
    assert all(torch.isfinite(v).all() for v in grads.values() if v is not None)


def _entry_offsets():
    return getattr(_backend._C, "_entry_offsets", None) if _backend._C is not None else None


def test_entry_offsets_exceed_int32_without_overflow():
    assert _entry_offsets() is not None, "the compiled extension lacks _C._entry_offsets"
    big = 2**31 - 1  # the largest per-Gaussian count an int32 can hold
    touched = torch.tensor([big, big, 0, big, 7], dtype=torch.int32)
    offsets = _entry_offsets()(touched)
    assert offsets.dtype == torch.int64
    assert offsets.tolist() == [0, big, 2 * big, 2 * big, 3 * big, 3 * big + 7]  # 6442450948 > 2^32
    assert _entry_offsets()(torch.zeros(0, dtype=torch.int32)).tolist() == [0]
    with pytest.raises(RuntimeError, match="tiles_touched: expected a contiguous int32 CPU tensor"):
        _entry_offsets()(touched.long())


MILLION = r"""
import json, resource, sys, time
import torch
from diff_gaussian_rasterization_ks import GaussianRasterizer
from diff_gaussian_rasterization_ks.scenes import random_scene, requires_grad_

torch.set_num_threads(2)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is in KiB on Linux
t0 = time.perf_counter()
scene = random_scene(1_000_000, 240, 320, seed=0)
t1 = time.perf_counter()
x = requires_grad_(scene.inputs)
out = GaussianRasterizer(scene.settings).render(**x)
t2 = time.perf_counter()
peak_forward = peak()
(out.color.sum() + out.importance_map.sum()).backward()
t3 = time.perf_counter()
finite = all(bool(torch.isfinite(t).all()) for t in [out.color, out.importance_map] + [v.grad for v in x.values()
                                                                                         if v is not None])
print("RESULT " + json.dumps(dict(scene_s=t1 - t0, forward_s=t2 - t1, backward_s=t3 - t2, peak_forward=peak_forward,
                                   peak=peak(), visible=int((out.radii > 0).sum()), finite=finite,
                                   drawn=float((out.alpha > 0.5).float().mean()))))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units are those of Linux")
def test_a_million_gaussians_render_on_the_cpu_within_memory(tmp_path):
    """1,000,000 Gaussians (random_scene: 79% visible, 22 M (Gaussian, tile)
    entries) at 320 x 240, forward and backward, 2 threads. Measured on the
    2-core machine: 1.5 to 2.3 s forward, 2.0 to 3.2 s backward, peak RSS
    1.7 to 1.9 GiB: 0.5 GiB to build the scene, 0.7 GiB after the forward
    (inputs, outputs and a 0.3 GiB forward state), and the backward's
    per-entry gradients (22 M x 44 B = 0.98 GB) most of the rest. The bound,
    4 GiB, leaves a wide margin for O(P) and O(entries) buffers; anything
    that scales with P x tiles or P x pixels (the dense reference would need
    P x H x W x 8 B = 600 GB) breaks it at once."""
    r = run_child(tmp_path, "million", MILLION)
    print(f"1M Gaussians, 320x240, 2 threads: forward {r['forward_s']:.2f} s, backward {r['backward_s']:.2f} s, "
          f"peak RSS {r['peak'] / 2**30:.2f} GiB (after the forward {r['peak_forward'] / 2**30:.2f} GiB)")
    assert r["finite"], r
    assert r["visible"] > 700_000 and r["drawn"] > 0.9, f"the scene should cover the image: {r}"
    assert r["peak"] < 4 * 2**30, f"peak RSS {r['peak'] / 2**30:.2f} GiB: {r}"
