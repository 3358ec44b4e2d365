"""The CPU backend's per-pixel loops must stay vectorised.

They are written so that GCC vectorises them (`#pragma omp simd` over the 32
pixels of a block), and small edits make it give up on a whole loop without a
word (a struct filled field by field inside the loop, a conditional load, a
loop nest): the results stay right and the render gets several times slower,
which no other test notices. This compiles cpu/rasterize_points_cpu.cpp with
setup.py's flags and GCC's vectorisation report, and checks every loop whose
pragma is marked `// hot: must vectorise`: GCC reports it vectorised (for the
AVX-512, AVX2 and baseline clones) and reports no failure inside it; a loop
marked `// hot: must vectorise (AVX2 and up)` (the preprocess: baseline x86-64
lacks its shuffles) must be vectorised by the AVX-512 and AVX2 clones.
"""
import ast
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "cpu" / "rasterize_points_cpu.cpp"
HOT = "// hot: must vectorise"
AVX2_UP = "(AVX2 and up)"  # marks a loop only the AVX2 and AVX-512 clones need vectorise


def setup_cxx_flags():
    """The cxx flags setup.py builds with (its `cxx_flags = [...]` literal)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "cxx_flags" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no cxx_flags = [...] literal")


def hot_loops(text):
    """(pragma line, first line, last line) of each marked loop: from the
    `for` after the pragma to its closing brace (or its one statement)."""
    lines = text.split("\n")
    loops = []
    for i, line in enumerate(lines):
        if "#pragma omp simd" not in line or HOT not in line:
            continue
        depth, j, opened = 0, i + 1, False
        while True:
            depth += lines[j].count("{") - lines[j].count("}")
            opened = opened or "{" in lines[j]
            if (opened and depth <= 0) or (not opened and lines[j].rstrip().endswith(";")):
                break
            j += 1
        loops.append((i + 1, i + 2, j + 1))
    return loops


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (the compiler setup.py builds with)")
def test_hot_per_pixel_loops_are_vectorised(tmp_path):
    import torch.utils.cpp_extension as ext

    text = SOURCE.read_text()
    loops = hot_loops(text)
    assert len(loops) >= 4, "the forward step, its statistics fold, the backward step and its fold are marked"
    includes = [f"-I{ROOT}", "-I/usr/include", f"-I{sysconfig.get_paths()['include']}"]
    includes += [f"-I{p}" for p in ext.include_paths()]
    cmd = ["g++", "-c", str(SOURCE), "-o", str(tmp_path / "cpu.o"), "-std=c++17", "-fPIC", "-DTORCH_EXTENSION_NAME=_C",
           *setup_cxx_flags(), *includes, "-fopt-info-vec-optimized", "-fopt-info-vec-missed"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = re.escape(SOURCE.name)
    done = [int(m.group(1)) for m in re.finditer(rf"{name}:(\d+):\d+: optimized: loop vectorized", proc.stderr)]
    widths = [(int(m.group(1)), int(m.group(2))) for m in
              re.finditer(rf"{name}:(\d+):\d+: optimized: loop vectorized using (\d+) byte vectors", proc.stderr)]
    lines = text.split("\n")
    # ("not vectorized: ..." lines without this one are GCC trying the
    # enclosing loop over splats, or straight-line code, and are expected)
    missed = [(int(m.group(1)), m.group(2)) for m in
              re.finditer(rf"{name}:(\d+):\d+: missed: (couldn't vectorize loop.*)", proc.stderr)]
    for pragma, first, last in loops:
        inside = [n for n in done if first <= n <= last]
        failures = [f"line {n}: {why}" for n, why in missed if first <= n <= last]
        if AVX2_UP in lines[pragma - 1]:
            # Baseline x86-64 lacks the shuffles and conversions: one failure
            # (the baseline clone) per 64-byte (AVX-512) vectorisation at most.
            wide = [n for n, width in widths if first <= n <= last and width == 64]
            avx2 = [n for n, width in widths if first <= n <= last and width == 32]
            assert wide and avx2, f"the loop of the pragma at line {pragma} is not vectorised for AVX-512 and AVX2"
            assert len(failures) <= len(wide), (f"the loop of the pragma at line {pragma} is not vectorised:\n" +
                                                "\n".join(failures))
            continue
        assert not failures, f"the loop of the pragma at line {pragma} is not vectorised:\n" + "\n".join(failures)
        # one report per vectorised copy: baseline, AVX2 and AVX-512 clones at least
        assert len(inside) >= 3, f"the loop of the pragma at line {pragma}: vectorised {len(inside)} times, expected >= 3"


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils, which the compiler comes with)")
def test_force_inlined_helpers_have_no_out_of_line_copy():
    """The helpers of the multiversioned loops (DGR_INLINE functions, and the
    lambdas in them) must be inlined into each clone: an out-of-line copy is
    compiled for baseline x86-64 only, and a render through it ran the per-pixel
    loop at SSE width, several times slower (GCC once outlined the forward's
    step lambda under `flatten`). None may appear in the built extension."""
    from diff_gaussian_rasterization_ks import _backend

    assert _backend._C is not None, "the compiled extension failed to import"
    names = re.findall(r"^DGR_INLINE [^(]*?\b(\w+)\(", SOURCE.read_text(), re.M)
    assert {"forward_step", "forward_block", "backward_step", "backward_block"} <= set(names)
    symbols = subprocess.run(["nm", "-C", _backend._C.__file__], capture_output=True, text=True, check=True).stdout
    outlined = [line for line in symbols.splitlines()
                if any(re.search(rf"::{name}[(<]", line) for name in names)]
    assert not outlined, "out-of-line copies of force-inlined helpers:\n" + "\n".join(outlined)
