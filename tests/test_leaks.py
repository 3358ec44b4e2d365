"""No leaks: 1,000 forward + backward calls on a small scene keep the resident
memory and the population of Python objects flat.

Runs in a fresh interpreter, so that the heap is not the test session's
(fragmented by hundreds of earlier tests). After 200 warm-up calls (torch's
and glibc's caches and arenas fill up), it records RSS (/proc/self/statm)
and the live Python objects, makes 1,000 more calls (full forward + backward
on all four maps, every other one with statistics, every fourth one without
grad, plus markVisible), and compares.

Tolerances. RSS: glibc's allocator settles over the first ~2,000 calls
(measured: +0.1 MB per 500 calls, flat at +0.4 MB from 1,500 on), so
growth up to 2 MB is noise, while leaking even the smallest per-call buffer
(radii, [300] int32 = 1.2 KB; the image is 27 KB) would add 1.2 MB to
27 MB, and a leaked forward state (~30 KB) 30 MB. Python objects: live
tensors compared exactly (a kept graph or a cached output shows up as
+1,000 or more), all objects within 50 (interpreter caches).
"""
import os

import pytest

from reliability_support import run_child

# The children's common start: imports, two threads, and the resident set.
PREAMBLE = r"""
import gc, json, os, sys
import torch
from diff_gaussian_rasterization_ks import GaussianRasterizer, empty_cpu_cache
from diff_gaussian_rasterization_ks.scenes import random_scene, requires_grad_

torch.set_num_threads(2)
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE
"""

CHILD = PREAMBLE + r"""

def census():
    gc.collect()
    objects = gc.get_objects()
    tensors = sum(isinstance(o, torch.Tensor) for o in objects)
    return len(objects), tensors


scene = random_scene(300, 48, 48, seed=0, sh_degree=1)
rasterizer = GaussianRasterizer(scene.settings)
stats = "stats" in rasterizer.render.__code__.co_varnames


def call(i):
    if i % 4 == 3:
        with torch.no_grad():
            rasterizer.render(**scene.inputs)
        rasterizer.markVisible(scene.inputs["means3D"])
        return
    x = requires_grad_(scene.inputs)
    out = rasterizer.render(**x, **({"stats": i % 2 == 0} if stats else {}))
    (out.color.sum() + out.importance_map.sum() + out.invdepth.sum() + out.alpha.sum()).backward()


for i in range(200):
    call(i)
objects0, tensors0 = census()
rss0 = rss()
for i in range(1000):
    call(i)
rss1 = rss()
objects1, tensors1 = census()
print("RESULT " + json.dumps(dict(rss_growth=rss1 - rss0, rss=rss1, objects=objects1 - objects0,
                                   tensors=tensors1 - tensors0)))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc/self/statm (Linux)")
def test_thousand_forward_backward_calls_do_not_leak(tmp_path):
    r = run_child(tmp_path, "leak", CHILD)
    assert r["tensors"] == 0, f"{r['tensors']} more live tensors after 1,000 calls: {r}"
    assert abs(r["objects"]) <= 50, f"Python object count changed by {r['objects']}: {r}"
    assert r["rss_growth"] < 2 * 2**20, f"RSS grew by {r['rss_growth'] / 2**20:.2f} MB over 1,000 calls: {r}"


SCRATCH_CHILD = PREAMBLE + r"""

# large splats on a 512 x 512 image: ~530,000 (Gaussian, tile) entries, so
# the pool keeps ~40 MB: statistics 8.5 MB, entry->slot map 4.3 MB, the
# backward's per-entry gradients 23 MB, the forward's internal tensors
scene = random_scene(1_200, 512, 512, seed=3, scale_range=(0.3, 0.9))
rasterizer = GaussianRasterizer(scene.settings)


def call():
    x = requires_grad_(scene.inputs)
    out = rasterizer.render(**x, stats=True)
    (out.color.sum() + out.importance_map.sum()).backward()


for _ in range(3):  # (glibc's heap settles too)
    call()
kept = rss()
for _ in range(5):
    call()
again = rss()
empty_cpu_cache()
released = rss()
print("RESULT " + json.dumps(dict(kept=kept, again=again, released=released)))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc/self/statm (Linux)")
def test_scratch_memory_is_reused_and_released_by_empty_cpu_cache(tmp_path):
    """The CPU backend keeps its per-entry scratch buffers between calls
    (ScratchPool): repeated calls reuse them instead of growing, and
    empty_cpu_cache() hands them back to the system."""
    r = run_child(tmp_path, "scratch", SCRATCH_CHILD)
    # reuse: five more calls add under 20 MB, not 5 x ~40 MB (measured 0-10 MB:
    # glibc's heap and the pool's best-fit choice of blocks shift a little)
    assert r["again"] - r["kept"] < 20 * 2**20, r
    # release: most of the ~40 MB the pool holds goes back
    assert r["again"] - r["released"] > 30 * 2**20, r
