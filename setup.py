"""Builds diff_gaussian_rasterization_ks._C against the installed torch.

CPU build of torch: the CPU backend only, with OpenMP.
CUDA build of torch and nvcc present: the CUDA and the CPU backends.
FORCE_CUDA=1 builds CUDA without a visible GPU; BUILD_NO_CUDA=1 skips it.
glm is looked up in GLM_INCLUDE_DIR, then third_party/glm, then the system.
"""
import glob
import os
import sys

from setuptools import setup

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def find_glm():
    candidates = []
    if os.environ.get("GLM_INCLUDE_DIR"):
        candidates.append(os.environ["GLM_INCLUDE_DIR"])
    candidates.append(os.path.join(ROOT, "third_party", "glm"))
    candidates += ["/usr/include", "/usr/local/include", "/opt/homebrew/include"]
    if os.environ.get("CONDA_PREFIX"):
        candidates.append(os.path.join(os.environ["CONDA_PREFIX"], "include"))
    for path in candidates:
        if os.path.isfile(os.path.join(path, "glm", "glm.hpp")):
            return path
    sys.exit(
        "error: glm headers not found. Install them (Debian/Ubuntu: apt-get install libglm-dev; "
        "conda: conda install -c conda-forge glm; macOS: brew install glm) or set GLM_INCLUDE_DIR "
        "to the folder that contains glm/glm.hpp."
    )


def nvcc_version():
    """(major, minor) of the nvcc that will compile the .cu files, else of torch's CUDA."""
    import re
    import subprocess

    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else "nvcc"
    try:
        out = subprocess.run([nvcc, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
        match = re.search(r"release (\d+)\.(\d+)", out)
        if match:
            return int(match.group(1)), int(match.group(2))
    except OSError:
        pass
    if torch.version.cuda:
        major, minor = torch.version.cuda.split(".")[:2]
        return int(major), int(minor)
    return (12, 0)


def default_cuda_arch_list():
    """Volta/Turing to Hopper, plus Blackwell from CUDA 12.8, PTX of the newest:
    only what the toolkit supports (CUDA 13 dropped sm_70, 11.x before 11.8
    lacks sm_89/sm_90)."""
    version = nvcc_version()
    if version >= (13, 0):
        return "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
    if version >= (12, 8):
        return "7.0;7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
    if version >= (11, 8):
        return "7.0;7.5;8.0;8.6;8.9;9.0+PTX"
    return "7.0;7.5;8.0;8.6+PTX"


def want_cuda():
    if os.environ.get("BUILD_NO_CUDA") == "1":
        return False
    if os.environ.get("FORCE_CUDA") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


glm_dir = find_glm()
# -ffp-contract=off: no FMA contraction, so that the CPU backend's float
# arithmetic (and the vectorised per-pixel loops, compiled for several ISAs,
# see cpu/rasterize_points_cpu.cpp) gives the same bits on every x86-64 and
# the backward recomputes exactly the alphas the forward blended.
# -fno-math-errno: sqrtf and friends inline (errno is never read).
# -fno-trapping-math: lets the vectoriser if-convert the per-pixel loops
# (compute both sides of a condition, then select); it changes no value, only
# the assumption that a float operation may trap (nothing here enables traps).
# -fno-wrapv undoes Python's -fwrapv (in the flags setuptools passes first):
# with wrapping ints GCC cannot prove an index like 3 * (first + j) advances
# by 3 and emulates a gather per lane (the vectorised preprocess ran ~30
# cycles per Gaussian; garden-x3 forward -1.5 ms). C++ code must not rely on
# signed overflow anyway (tests/test_sanitizers.py runs UBSan).
cxx_flags = ["-O3", "-fno-wrapv", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
sources = ["ext.cpp"] + sorted(glob.glob("cpu/*.cpp"))
include_dirs = [ROOT, glm_dir]
link_args = ["-fopenmp"]

if want_cuda():
    cuda_sources = ["rasterize_points.cu"] + sorted(glob.glob("cuda_rasterizer/*.cu"))
    if os.environ.get("TORCH_CUDA_ARCH_LIST") is None:
        os.environ["TORCH_CUDA_ARCH_LIST"] = default_cuda_arch_list()
    ext = CUDAExtension(
        "diff_gaussian_rasterization_ks._C",
        sources=sources + cuda_sources,
        include_dirs=include_dirs,
        define_macros=[("DGR_WITH_CUDA", None)],
        # -fno-gnu-unique: two extensions that both embed cub must not share
        # its unique symbols, or the second one loaded crashes at exit.
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "-Xcompiler", "-fno-gnu-unique"]},
        extra_link_args=link_args,
    )
    print("diff_gaussian_rasterization_ks: building the CUDA and CPU backends")
else:
    ext = CppExtension(
        "diff_gaussian_rasterization_ks._C",
        sources=sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_args,
    )
    print("diff_gaussian_rasterization_ks: building the CPU backend only (OpenMP)")

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension})
