"""The machine's limit for the CPU backend's per-pixel forward loop.

Compiles benchmarks/peak_loop.cpp (the shared blend step, dgr::splat_alpha +
dgr::PixelAccumulator::blend_if, over an 8 x 4 block of pixels and a list of
splats that stays in L1, every pixel blending every splat) with setup.py's
float flags for each instruction set this CPU has, runs it on one core, and
prints the evaluations per second, plus the vector instructions per block step
read from the generated assembly. Results and the reasoning: RESULTS.md.

    python benchmarks/peak_loop.py
"""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "benchmarks" / "peak_loop.cpp"
# setup.py's cxx flags that change the generated float code
FLAGS = ["-O3", "-fopenmp", "-std=c++17", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
ISAS = {"baseline x86-64 (SSE2)": [], "AVX2": ["-mavx2"], "AVX-512": ["-mavx512f"]}


def cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def main() -> int:
    have = cpu_flags()
    # glm where setup.py looks for it: GLM_INCLUDE_DIR, third_party/glm, the system
    include = ["-I" + str(ROOT)] + [f"-I{d}" for d in (os.environ.get("GLM_INCLUDE_DIR"), ROOT / "third_party" / "glm")
                                    if d and Path(d).is_dir()]
    with tempfile.TemporaryDirectory() as tmp:
        for name, isa in ISAS.items():
            if isa and isa[0][2:] not in have:  # -mavx2 -> avx2, -mavx512f -> avx512f
                print(f"{name}: not supported by this CPU")
                continue
            exe = Path(tmp) / "peak"
            cmd = ["g++", *FLAGS, "-march=x86-64", *isa, *include, str(SOURCE)]
            subprocess.run(cmd + ["-o", str(exe)], check=True)
            asm = subprocess.run(cmd + ["-S", "-o", "-"], check=True, capture_output=True, text=True).stdout
            body = asm[asm.find("_Z3run"):]
            body = body[:body.find(".cfi_endproc")]
            reg = {"AVX-512": "zmm", "AVX2": "ymm"}.get(name, "xmm")
            vector_ops = len(re.findall(rf"^\s+v?[a-z0-9]+\s.*%{reg}", body, flags=re.M))
            out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.strip()
            print(f"{name}: {out}; {vector_ops} {reg} instructions in run() (two block steps, unrolled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
