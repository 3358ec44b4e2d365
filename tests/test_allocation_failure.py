"""Allocation failures surface as Python exceptions, never a crash.

Each case runs in a child process whose address space is capped at 6 GiB
(RLIMIT_AS), so that an allocation the render needs fails there whatever the
machine's memory and overcommit settings are: the outputs of a 60,000 x
60,000 image (43 GB), and the (Gaussian, tile) entry lists of huge splats
covering every tile of a 4,000 x 4,000 image (up to 2.5 billion entries:
about 9 GB for the first array of the binning). Torch's allocator raises RuntimeError, a failed std::vector growth
raises MemoryError through pybind11; either is fine, a signal is not.
"""
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(r"""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    import torch
    from diff_gaussian_rasterization_ks import GaussianRasterizer
    from diff_gaussian_rasterization_ks.scenes import random_scene

    case = sys.argv[1]
    if case == "huge_image":
        scene = random_scene(50, 64, 64, seed=0)
        settings = scene.settings._replace(image_height=60_000, image_width=60_000)
    else:  # every splat covers every tile
        scene = random_scene(40_000, 64, 64, seed=0)
        scene.inputs["scales"].fill_(100.0)
        settings = scene.settings._replace(image_height=4_000, image_width=4_000)
    try:
        GaussianRasterizer(settings)(**scene.inputs)
    except (RuntimeError, MemoryError) as e:
        print("RAISED", type(e).__name__, str(e)[:300])
    else:
        print("RETURNED")
""")


@pytest.mark.parametrize("case", ["huge_image", "too_many_tile_entries"])
def test_allocation_failure_raises(case):
    proc = subprocess.run([sys.executable, "-c", CHILD, case], capture_output=True, text=True, timeout=600)
    report = f"rc={proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0, report  # a negative code is a signal (a crash)
    assert "RAISED" in proc.stdout, report
