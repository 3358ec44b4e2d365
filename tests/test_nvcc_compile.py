"""Compiles the CUDA backend with nvcc where no GPU is needed (the CI check).

1. The shared math headers (cuda_rasterizer/*.h) as device code: each header
   alone, and all of them in one translation unit with a kernel (and a host
   function) that call the per-Gaussian and per-pixel entry points, so nvcc
   generates device code for the whole call tree: a host-only call (an
   error here, only a warning to plain nvcc), a missing RASTER_HD or a
   non-device-safe construct in any formula fails here.
2. Every .cu file of the project with `nvcc -c`, against torch's include dirs
   and glm, for one architecture (sm_80; DGR_NVCC_ARCH overrides), with the
   nvcc flags setup.py passes (plus torch's common nvcc flags and
   -DDGR_WITH_CUDA).
3. ext.cpp with -DDGR_WITH_CUDA by the host compiler, so the Python bindings
   of the CUDA entry points are checked against their declarations.

A CPU-only torch wheel ships c10/cuda headers but not the CMake-generated
c10/cuda/impl/cuda_cmake_macros.h; it only defines a Windows DLL-export macro,
so where it is missing the compile passes -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE,
torch's own switch for skipping it. Nothing here links or runs.

The compiles run in a temporary directory on DGR_NVCC_JOBS workers (default
2); the whole module takes about 40 s on 2 idle cores (rasterize_points.cu,
the torch glue, is the long pole at ~30 s), 80 s on a busy machine. Skipped
where nvcc is absent.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADER_DIR = ROOT / "cuda_rasterizer"
# (site-packages: a virtual environment made inside the checkout, e.g. venv/,
# holds torch's own .cu templates, which are not ours and do not compile alone)
_SKIP_DIRS = {"build", "dist", "third_party", "node_modules", "__pycache__", "site-packages"}


def _find_nvcc():
    for candidate in (
        shutil.which("nvcc"),
        os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None,
        "/usr/local/bin/nvcc",
        "/usr/local/cuda/bin/nvcc",
    ):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


NVCC = _find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/bin)")

ARCH = os.environ.get("DGR_NVCC_ARCH", "sm_80")
JOBS = max(1, int(os.environ.get("DGR_NVCC_JOBS", "2")))
TIMEOUT_S = 900

# nvcc only warns when a __host__ __device__ function calls a host-only
# function (and then the formula silently is not the device one); here that is
# an error: 20011/20014 host function, 20013/20015 constexpr host function.
HD_CALL_ERRORS = ["-diag-error", "20011,20013,20014,20015"]

# The nvcc flags of setup.py's CUDAExtension (keep in sync).
SETUP_NVCC_FLAGS = ["-O3", "-std=c++17", "-Xcompiler", "-fno-gnu-unique"]
SETUP_CXX_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]


def _glm_include():
    for path in (os.environ.get("GLM_INCLUDE_DIR"), str(ROOT / "third_party" / "glm"), "/usr/include",
                 "/usr/local/include", "/opt/homebrew/include"):
        if path and os.path.isfile(os.path.join(path, "glm", "glm.hpp")):
            return path
    return None


def _torch_includes():
    from torch.utils.cpp_extension import include_paths

    return include_paths() + [sysconfig.get_paths()["include"]]


def _torch_defines(torch_dirs):
    defines = ["-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    if not any(os.path.isfile(os.path.join(d, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for d in torch_dirs):
        defines.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")  # CPU wheel: see the module docstring
    try:
        import torch

        abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
        defines.append(f"-D_GLIBCXX_USE_CXX11_ABI={abi}")
    except Exception:  # pragma: no cover - non-GNU toolchains
        pass
    return defines


def _common_nvcc_flags():
    try:
        from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

        return list(COMMON_NVCC_FLAGS)
    except ImportError:  # pragma: no cover
        return []


def cu_files():
    found = []
    for path in sorted(ROOT.rglob("*.cu")):
        rel = path.relative_to(ROOT)
        if any(part.startswith(".") or part in _SKIP_DIRS for part in rel.parts[:-1]):
            continue
        found.append(rel.as_posix())
    return found


def header_files():
    return sorted(p.name for p in HEADER_DIR.glob("*.h"))


# A kernel and a host function that call the shared entry points, so that
# nvcc emits device code for every formula they reach.
_ENTRY_POINTS = r"""
template <typename Out>
RASTER_HD void dgr_exercise(int i, const dgr::GaussianInputs& in, const dgr::Camera& cam,
                            const dgr::ProjectedGaussians& out, const dgr::GaussianGrads& grads, float* buf, Out* res) {
    dgr::preprocess_gaussian(i, in, cam, 3, 2, out);
    const dgr::SplatSource src{buf, buf + 2, buf + 6, buf + 9, buf + 10};
    dgr::Splat s;
    dgr::SplatFeatures f;
    dgr::load_splat(src, 0, s, f);
    float alpha = 0.f, G = 0.f;
    dgr::PixelAccumulator acc;
    if (dgr::splat_alpha(s.conic_opacity, buf[6], buf[7], alpha, G)) acc.blend(alpha, f);
    dgr::PixelUpstream up;
    for (int k = 0; k < dgr::NUM_FEATURES; ++k) up.feature[k] = buf[12 + k];
    up.alpha = buf[17];
    dgr::PixelBackward pb;
    pb.init(acc.T, up, buf + 18);
    const dgr::SplatGrad g = dgr::splat_grad(pb.step(s, buf[6], buf[7], alpha, G, f), s.conic_opacity, 8.f, 8.f);
    dgr::preprocess_gaussian_backward(i, in, cam, 3, 2, g, grads);
    const glm::vec3 t = dgr::transform_point_4x3(glm::vec3(buf[0], buf[1], buf[2]), cam.viewmatrix);
    res[i] = Out(acc.final_color(0, buf) + acc.importance() + acc.invdepth() + g.opacity +
                 dgr::antialias_opacity_scale(glm::vec3(buf[0], buf[1], buf[2])) + (dgr::in_front_of_near_plane(t) ? 1.f : 0.f));
}

__global__ void dgr_header_kernel(int P, dgr::GaussianInputs in, dgr::Camera cam, dgr::ProjectedGaussians out,
                                  dgr::GaussianGrads grads, float* buf, float* res) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < P) dgr_exercise(i, in, cam, out, grads, buf, res);
}

void dgr_header_host(int P, const dgr::GaussianInputs& in, const dgr::Camera& cam, const dgr::ProjectedGaussians& out,
                     const dgr::GaussianGrads& grads, float* buf, double* res) {
    for (int i = 0; i < P; ++i) dgr_exercise(i, in, cam, out, grads, buf, res);
}
"""


def _jobs(tmp: Path):
    """(name, argv, expected cost) for every compile, most expensive first."""
    glm = _glm_include()
    if glm is None:
        pytest.fail("glm headers not found (set GLM_INCLUDE_DIR or install libglm-dev)")
    torch_dirs = _torch_includes()
    base = [NVCC, "-c", f"-arch={ARCH}", "-I", str(ROOT), "-I", glm]
    nvcc_flags = _common_nvcc_flags() + SETUP_NVCC_FLAGS + ["-Xcompiler", "-fPIC", "-DDGR_WITH_CUDA"] + HD_CALL_ERRORS
    torch_inc = [f"-I{d}" for d in torch_dirs] + _torch_defines(torch_dirs)
    jobs = []

    for rel in cu_files():
        out = tmp / (rel.replace("/", "__") + ".o")
        # Torch-free kernel files compile without torch's include dirs, which
        # proves they stay torch-free; the glue needs them.
        text = (ROOT / rel).read_text(errors="replace")
        needs_torch = any(f"#include <{lib}" in text for lib in ("torch/", "ATen/", "c10/")) or "rasterize_points.h" in text
        argv = base + nvcc_flags + (torch_inc if needs_torch else []) + [str(ROOT / rel), "-o", str(out)]
        jobs.append((rel, argv, 100 if needs_torch else 20))

    headers = header_files()
    all_tu = tmp / "all_headers.cu"
    all_tu.write_text("".join(f'#include "cuda_rasterizer/{h}"\n' for h in headers) + _ENTRY_POINTS)
    jobs.append(("headers: all + entry-point kernel", base + nvcc_flags + [str(all_tu), "-o", str(tmp / "all.o")], 5))
    for h in headers:
        tu = tmp / f"header_{h}.cu"
        tu.write_text(f'#include "cuda_rasterizer/{h}"\n#include "cuda_rasterizer/{h}"\n')  # self-contained, guarded
        jobs.append((f"header: {h}", base + nvcc_flags + [str(tu), "-o", str(tmp / f"header_{h}.o")], 1))

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx):
        argv = ([cxx, "-c", "-fPIC"] + SETUP_CXX_FLAGS + ["-DDGR_WITH_CUDA", "-I", str(ROOT), "-I", glm]
                + torch_inc + [str(ROOT / "ext.cpp"), "-o", str(tmp / "ext.o")])
        jobs.append(("ext.cpp (bindings, DGR_WITH_CUDA)", argv, 40))
    return sorted(jobs, key=lambda j: -j[2])


def _run(job, cwd):
    name, argv, _ = job
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=TIMEOUT_S)
        rc, output = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as e:
        rc, output = -1, f"timed out after {TIMEOUT_S} s\n{e.stdout or ''}"
    return name, rc, output, time.monotonic() - start, argv


@pytest.fixture(scope="module")
def compiled():
    """Runs every compile once, in parallel; maps job name -> (rc, output,
    seconds, argv), plus "_objects" -> {source: object file} while the module runs."""
    with tempfile.TemporaryDirectory(prefix="dgr_nvcc_") as tmp:
        jobs = _jobs(Path(tmp))
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=JOBS) as pool:
            results = list(pool.map(lambda j: _run(j, tmp), jobs))
        total = time.monotonic() - start
        sys.stderr.write(f"\n[nvcc compile] {len(jobs)} compiles on {JOBS} workers in {total:.0f} s: "
                         + ", ".join(f"{n} {s:.0f}s" for n, _, _, s, _ in results) + "\n")
        out = {name: (rc, output, secs, argv) for name, rc, output, secs, argv in results}
        out["_objects"] = {name: Path(argv[argv.index("-o") + 1]) for name, rc, _, _, argv in results
                           if rc == 0 and not name.startswith("header")}
        yield out


def _check(compiled, name):
    rc, output, _, argv = compiled[name]
    if rc != 0:
        pytest.fail(f"{name}: compile failed (exit {rc})\n$ {' '.join(argv)}\n{output}", pytrace=False)


def test_project_has_cuda_sources():
    files = cu_files()
    assert "rasterize_points.cu" in files, files
    assert any(f.startswith("cuda_rasterizer/") for f in files), files


@pytest.mark.parametrize("rel", cu_files())
def test_cu_file_compiles(compiled, rel):
    _check(compiled, rel)


def test_headers_compile_as_device_code(compiled):
    _check(compiled, "headers: all + entry-point kernel")


@pytest.mark.parametrize("header", header_files())
def test_header_is_self_contained(compiled, header):
    _check(compiled, f"header: {header}")


def test_cuda_bindings_compile(compiled):
    name = "ext.cpp (bindings, DGR_WITH_CUDA)"
    if name not in compiled:
        pytest.skip("no host C++ compiler")
    _check(compiled, name)


def test_kernel_files_are_torch_free():
    """The kernels stay independent of torch so they compile (and can be
    tested) without it; only rasterize_points.cu talks to torch."""
    for path in sorted(HEADER_DIR.glob("*.cu")) + sorted(HEADER_DIR.glob("*.cuh")):
        text = path.read_text()
        for banned in ("<torch/", "<ATen/", "<c10/"):
            assert banned not in text, f"{path.name} includes {banned}: keep torch in rasterize_points.cu"


def _symbols(obj, undefined):
    nm = shutil.which("nm")
    flags = ["-C", "-u"] if undefined else ["-C", "--defined-only"]
    out = subprocess.run([nm] + flags + [str(obj)], stdout=subprocess.PIPE, text=True, check=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split(None, 2) if not undefined else line.split(None, 1)
        if undefined and len(parts) == 2 and parts[0] == "U":
            names.add(parts[1].strip())
        elif not undefined and len(parts) == 3 and parts[1] in "TtWw":
            names.add(parts[2].strip())
    return names


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm not found")
def test_cuda_symbols_resolve(compiled):
    """What the torch glue calls in the kernel files, and what the bindings
    call in the glue, is defined with the same signature (a mismatch would
    only show when linking on a CUDA machine)."""
    objects = compiled["_objects"]
    project = [o for name, o in objects.items() if name.endswith(".cu")]
    assert "rasterize_points.cu" in objects, "rasterize_points.cu did not compile"
    defined = set().union(*(_symbols(o, undefined=False) for o in project))
    users = [objects["rasterize_points.cu"]]
    if "ext.cpp (bindings, DGR_WITH_CUDA)" in objects:
        users.append(objects["ext.cpp (bindings, DGR_WITH_CUDA)"])
    ours = ("dgr::", "rasterize_forward_cuda(", "rasterize_backward_cuda(", "mark_visible_cuda(")
    needed = {sym for o in users for sym in _symbols(o, undefined=True) if sym.startswith(ours)}
    assert any(sym.startswith("dgr::cuda::") for sym in needed), "the glue calls no launcher?"
    missing = sorted(needed - defined)
    assert not missing, "undefined in the project's objects:\n" + "\n".join(missing)
