"""The CPU backend's AVX-512 and AVX2 versions of the vectorised loops give
the same bits (README, "Determinism").

The loops are compiled per ISA (target_clones) and the loader picks the best
the CPU has. Valgrind's CPU has AVX2 but no AVX-512, so the same render run
natively on an AVX-512 machine and under valgrind exercises both versions:
every output, statistic and gradient must hash the same.
"""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import diff_gaussian_rasterization_ks

CHILD = textwrap.dedent(r"""
    import hashlib, torch
    from diff_gaussian_rasterization_ks import GaussianRasterizer
    from diff_gaussian_rasterization_ks.scenes import random_scene, requires_grad_

    torch.set_num_threads(1)
    scene = random_scene(300, 40, 56, seed=5, sh_degree=2, scale_range=(0.05, 0.5))
    x = requires_grad_(scene.inputs)
    weights = torch.rand(40, 56, generator=torch.Generator().manual_seed(1))
    out = GaussianRasterizer(scene.settings).render(**x, stats=True, pixel_weights=weights)
    (out.color.square().sum() + out.importance_map.sum() + out.invdepth.sum() + out.alpha.sum()).backward()
    digest = hashlib.sha256()
    grads = [v.grad for v in x.values() if isinstance(v, torch.Tensor) and v.grad is not None]
    for t in [out.color, out.importance_map, out.invdepth, out.alpha, out.radii, out.n_contrib, *out.stats, *grads]:
        digest.update(t.detach().contiguous().numpy().tobytes())
    print("HASH", len(grads), digest.hexdigest())
""")


def _has_avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _run(prefix, tmp_path):
    script = tmp_path / "isa_child.py"
    script.write_text(CHILD)
    root = str(Path(diff_gaussian_rasterization_ks.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(prefix + [sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=1200)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("HASH ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return lines[-1]


@pytest.mark.skipif(not _has_avx512(), reason="compares the AVX-512 version with AVX2; this CPU has no AVX-512")
def test_avx512_and_avx2_versions_give_the_same_bits(tmp_path):
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        if os.environ.get("CI"):
            pytest.fail("valgrind is missing (.ci/run installs it)")
        pytest.skip("valgrind is not installed")
    native = _run([], tmp_path)
    emulated = _run([valgrind, "-q", "--error-exitcode=0"], tmp_path)
    # the gradients of means3D, means2D, shs, opacities, importances, scales, rotations
    assert native.split()[1] == "7", native
    assert native == emulated
