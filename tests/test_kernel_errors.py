"""Errors of the compiled CPU kernels surface as Python exceptions, never as a
crash or a silent out-of-bounds access.

The public API validates every argument in Python (test_validation.py), so
these tests call the raw bindings (`_C.rasterize_forward_cpu`,
`_C.rasterize_backward_cpu`, `_C.mark_visible_cpu`) the way a caller that
bypasses the Python layer would: with the exact arguments the Python layer
passes (recorded, so the tests follow the kernels' signatures) and one of
them wrong. Intended behaviour: a RuntimeError (TORCH_CHECK), TypeError or
ValueError.

A wrong call may read or write out of bounds, so every case runs in a
forked child of a helper process (one `import torch` for all cases, one
thread, so no OpenMP pool is ever forked): a crash is reported as a crash,
not as the death of the test session. The cases that are not checked today
are marked xfail(strict=True) with what the kernels do instead (read with
AddressSanitizer, see test_sanitizers.py, during this audit) and the
TORCH_CHECK that would catch them.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent

SERVER = r'''
import json, os, sys, traceback
import torch
torch.set_num_threads(1)  # no OpenMP pool: forking below stays safe
if os.environ.get("DGR_SANITIZED_MODULE"):  # the audit: run the cases against the sanitized build
    import importlib.util
    spec = importlib.util.spec_from_file_location("dgr_sanitized_C", os.environ["DGR_SANITIZED_MODULE"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["diff_gaussian_rasterization_ks._C"] = module
import reliability_support as rs
from diff_gaussian_rasterization_ks import _C
from diff_gaussian_rasterization_ks.scenes import random_scene
import test_kernel_errors as cases_module

def recorded(scene, **kw):
    with rs.recorded_kernel_calls() as calls:
        rs.render_and_backward(scene.settings, scene.inputs)
    return calls["forward"][0], calls["backward"][0]

fwd, bwd = recorded(random_scene(40, 20, 36, seed=1, sh_degree=2))
other_fwd, other_bwd = recorded(random_scene(60, 40, 52, seed=2, sh_degree=2))
base = dict(fwd=fwd, bwd=bwd, other_fwd=other_fwd, other_bwd=other_bwd)

results = {}
for name in sys.argv[1].split(","):
    case = cases_module.CASES[name]
    log = os.path.join(sys.argv[2], name + ".log")
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        try:
            fn, args, kwargs = case(_C, base)
            fn(*args, **kwargs)
        except (RuntimeError, TypeError, ValueError) as error:
            sys.stderr.write(f"{type(error).__name__}: {error}")
            sys.stderr.flush()
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(4)
        os._exit(3)  # returned without an error
    _, status = os.waitpid(pid, 0)
    text = open(log, errors="replace").read()
    if os.WIFSIGNALED(status):
        outcome = f"crashed (signal {os.WTERMSIG(status)})"
    elif os.WEXITSTATUS(status) == 0:
        outcome = "raised"
    elif os.WEXITSTATUS(status) == 3:
        outcome = "returned"
    else:
        outcome = f"exit {os.WEXITSTATUS(status)}"
    results[name] = dict(outcome=outcome, log=text[-3000:])
print("RESULTS " + json.dumps(results))
'''


def _replace(args, index, value):
    args = list(args)
    args[index] = value
    return args


def _forward(position, make):
    """Case: the raw forward with positional argument `position` replaced by
    make(original argument)."""
    def case(C, base):
        args, kwargs = base["fwd"]
        return C.rasterize_forward_cpu, _replace(args, position, make(args[position])), kwargs
    return case


def _backward(position, make):
    def case(C, base):
        args, kwargs = base["bwd"]
        return C.rasterize_backward_cpu, _replace(args, position, make(args[position], base)), kwargs
    return case


def _state(index, make):
    """Case: the raw backward with forward-state tensor `index` replaced."""
    def case(C, base):
        args, kwargs = base["bwd"]
        state = list(args[STATE])
        state[index] = make(state[index], base)
        return C.rasterize_backward_cpu, _replace(args, STATE, state), kwargs
    return case


def _mark_visible(position, make):
    def case(C, base):
        args = base["fwd"][0]
        mv = [args[1], args[9], args[10]]  # means3D, viewmatrix, projmatrix
        mv[position] = make(mv[position])
        return C.mark_visible_cpu, mv, {}
    return case


# Positional arguments of the raw kernels (rasterize_points.h).
BG, MEANS3D, COLORS, OPACITIES, IMPORTANCES, SCALES, ROTATIONS, SCALE_MOD, COV3D, VIEW, PROJ = range(11)
F_TANX, F_TANY, F_H, F_W, F_SHS, F_DEG, F_CAMPOS, F_ANTIALIASING, F_STATS, F_PIXEL_WEIGHTS = range(11, 21)
B_SHS, B_DEG, B_CAMPOS, STATE = 13, 14, 15, 16
B_DL_DCOLOR, B_DL_DIMPORTANCE, B_DL_DINVDEPTH, B_DL_DALPHA = 18, 19, 20, 21
# forward state (ForwardState): means2D, depths, conic_opacity, colors, tiles_touched, gaussian_offsets,
# tile_ranges, point_list, slot_entries, final_T, n_contrib
S_TILES_TOUCHED, S_OFFSETS, S_RANGES, S_POINTS, S_SLOTS, S_FINAL_T, S_N_CONTRIB = range(4, 11)

# .clone(): a fresh allocation (a view would keep the original's bytes behind it)
shorter = lambda t: t[:-1].contiguous().clone()  # noqa: E731  one Gaussian (row) short

CASES = {
    # already raised today (TORCH_CHECK or data_ptr<float>'s dtype check, pybind's type check)
    "forward means3D float64": _forward(MEANS3D, lambda t: t.double()),
    "forward opacities int32": _forward(OPACITIES, lambda t: t.int()),
    "forward viewmatrix not a tensor": _forward(VIEW, lambda t: t.tolist()),
    "backward state of 10 tensors": lambda C, base: (C.rasterize_backward_cpu,
                                                     _replace(base["bwd"][0], STATE, base["bwd"][0][STATE][:10]),
                                                     base["bwd"][1]),
    "backward n_contrib float32": _state(S_N_CONTRIB, lambda t, base: t.float()),
    # not checked today
    "forward opacities one short": _forward(OPACITIES, shorter),
    "forward importances one short": _forward(IMPORTANCES, shorter),
    "forward colors_precomp one short": _forward(COLORS, lambda t: torch.rand(39, 3)),  # of P = 40
    "forward scales one short": _forward(SCALES, shorter),
    "forward rotations one short": _forward(ROTATIONS, shorter),
    "forward shs too few coefficients": _forward(F_SHS, lambda t: t[:, :1].contiguous().clone()),
    "forward sh_degree 4": _forward(F_DEG, lambda d: 4),
    "forward viewmatrix 3x3": _forward(VIEW, lambda t: t[:3, :3].contiguous().clone()),
    "forward projmatrix 3x3": _forward(PROJ, lambda t: t[:3, :3].contiguous().clone()),
    "forward campos of 2": _forward(F_CAMPOS, lambda t: t[:2].contiguous().clone()),
    "forward background of 2": _forward(BG, lambda t: t[:2].contiguous().clone()),
    "forward opacities non-contiguous": _forward(OPACITIES, lambda t: t.repeat_interleave(2)[::2]),
    "forward pixel_weights one row short": lambda C, base: (
        C.rasterize_forward_cpu, _replace(_replace(base["fwd"][0], F_STATS, True), F_PIXEL_WEIGHTS,
                                          torch.rand(19, 36)), base["fwd"][1]),
    "backward importances one short": _backward(IMPORTANCES, lambda t, base: shorter(t)),
    "backward dL_dcolor one column short": _backward(B_DL_DCOLOR, lambda t, base: t[:, :, :-1].contiguous().clone()),
    "backward dL_dimportance one row short": _backward(B_DL_DIMPORTANCE, lambda t, base: t[:-1].contiguous().clone()),
    "backward dL_dalpha one row short": _backward(B_DL_DALPHA, lambda t, base: t[:-1].contiguous().clone()),
    "backward state of another scene": lambda C, base: (C.rasterize_backward_cpu,
                                                        _replace(base["bwd"][0], STATE, base["other_bwd"][0][STATE]),
                                                        base["bwd"][1]),
    "backward n_contrib of another scene": _state(S_N_CONTRIB, lambda t, base: base["other_bwd"][0][STATE][
        S_N_CONTRIB][: t.shape[0], : t.shape[1]].contiguous().clone()),
    "backward point_list one short": _state(S_POINTS, lambda t, base: shorter(t)),
    "mark_visible means3D with 2 columns": _mark_visible(0, lambda t: t[:, :2].contiguous().clone()),
    "mark_visible viewmatrix 3x3": _mark_visible(1, lambda t: t[:3, :3].contiguous().clone()),
}

RAISES_TODAY = [
    "forward means3D float64", "forward opacities int32", "forward viewmatrix not a tensor",
    "backward state of 10 tensors", "backward n_contrib float32",
]

# What happens today (AddressSanitizer / UBSan reports of the sanitized build,
# or a silent return), and the check that fixes it. The checks belong in the
# CPU glue (cpu/rasterize_points_cpu.cpp), before any data_ptr is read.
NOT_CHECKED = {
    "forward opacities one short": "heap-buffer-overflow read in dgr::preprocess_gaussian (in.opacities[idx]); "
                                   "TORCH_CHECK(opacities.numel() == P)",
    "forward importances one short": "heap-buffer-overflow read in dgr::load_splat (importances[g]); "
                                     "TORCH_CHECK(importances.numel() == P)",
    "forward colors_precomp one short": "heap-buffer-overflow read of colors_precomp in dgr::preprocess_gaussian; "
                                        "TORCH_CHECK(colors_precomp.numel() == 0 || sizes() == {P, 3})",
    "forward scales one short": "heap-buffer-overflow read in dgr::load_vec3 (scales); "
                                "TORCH_CHECK(scales.numel() == 0 || sizes() == {P, 3})",
    "forward rotations one short": "heap-buffer-overflow read in dgr::load_vec4 (rotations); TORCH_CHECK(rotations "
                                   "empty or {P, 4}, cov3D_precomp empty or {P, 6}, and exactly one of "
                                   "(scales, rotations) / cov3D_precomp given when P > 0)",
    "forward shs too few coefficients": "heap-buffer-overflow read in dgr::sh_to_color (sh_degree 2 reads 9 "
                                        "coefficients of 1); TORCH_CHECK(shs.numel() == 0 || (shs.dim() == 3 && "
                                        "shs.size(0) == P && shs.size(2) == 3 && shs.size(1) >= (sh_degree + 1)^2)), "
                                        "and exactly one of shs / colors_precomp when P > 0",
    "forward sh_degree 4": "UBSan: 'index 16 out of bounds for type float [16]' in dgr::sh_to_color (ShBasis::y), "
                           "and reads of shs beyond (degree + 1)^2; TORCH_CHECK(0 <= sh_degree && sh_degree <= 3)",
    "forward viewmatrix 3x3": "heap-buffer-overflow read in dgr::transform_point_4x3; "
                              "TORCH_CHECK(viewmatrix.numel() == 16)",
    "forward projmatrix 3x3": "heap-buffer-overflow read in dgr::transform_point_4x4; "
                              "TORCH_CHECK(projmatrix.numel() == 16)",
    "forward campos of 2": "heap-buffer-overflow read in make_camera (campos[2]); TORCH_CHECK(campos.numel() == 3)",
    "forward background of 2": "heap-buffer-overflow read in dgr::PixelAccumulator::final_color (bg[2]); "
                               "TORCH_CHECK(background.numel() == 3)",
    "forward opacities non-contiguous": "returns silently, reading the strided storage as if contiguous (wrong "
                                        "opacities); TORCH_CHECK(t.is_contiguous()) for every tensor argument",
    "forward pixel_weights one row short": "heap-buffer-overflow read of pixel_weights in the per-pixel loop; "
                                           "TORCH_CHECK(pixel_weights.numel() == 0 || sizes() == {H, W})",
    "backward importances one short": "heap-buffer-overflow read in dgr::load_splat; the backward needs every "
                                      "input check of the forward too (here importances.numel() == P)",
    "backward dL_dcolor one column short": "heap-buffer-overflow read in the per-pixel loop of "
                                           "rasterize_backward_cpu; TORCH_CHECK(dL_dcolor.sizes() == {3, H, W}) "
                                           "with H, W = final_T's",
    "backward dL_dimportance one row short": "heap-buffer-overflow read in the per-pixel loop; "
                                             "TORCH_CHECK(dL_dimportance.sizes() == {H, W})",
    "backward dL_dalpha one row short": "heap-buffer-overflow read in the per-pixel loop; "
                                        "TORCH_CHECK(dL_dalpha.sizes() == {H, W}), same for dL_dinvdepth",
    "backward state of another scene": "heap-buffer-overflow read in dgr::load_splat (point_list names Gaussians "
                                       ">= P); TORCH_CHECK the state against P: means2D {P, 2}, depths {P}, "
                                       "conic_opacity {P, 4}, colors {P, 3}, tiles_touched {P}, "
                                       "gaussian_offsets {P + 1}",
    "backward n_contrib of another scene": "heap-buffer-overflow in the per-pixel loop (ts.splats[j] and "
                                           "grads[j] beyond the tile's list; glibc aborts in the normal build); "
                                           "check n_contrib[pix] <= ranges[tile + 1] - ranges[tile] per pixel "
                                           "(TORCH_CHECK, or a clamp), n_contrib {H, W} int32",
    "backward point_list one short": "heap-buffer-overflow read in TileSplats::load (glibc aborts in the normal "
                                     "build); TORCH_CHECK(point_list.numel() == slot_entries.numel() == "
                                     "gaussian_offsets[P] == tile_ranges[tiles], tile_ranges {tiles + 1} for the "
                                     "grid of final_T)",
    "mark_visible means3D with 2 columns": "heap-buffer-overflow read in mark_visible_cpu; "
                                           "TORCH_CHECK(means3D.dim() == 2 && means3D.size(1) == 3) (in the "
                                           "forward and backward too)",
    "mark_visible viewmatrix 3x3": "heap-buffer-overflow read in dgr::transform_point_4x3; "
                                   "TORCH_CHECK(viewmatrix.numel() == 16) in mark_visible_cpu",
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Runs every case once, each in its own forked child; {case: outcome}."""
    logs = tmp_path_factory.mktemp("kernel_errors")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    import diff_gaussian_rasterization_ks

    env["PYTHONPATH"] = os.pathsep.join([str(Path(diff_gaussian_rasterization_ks.__file__).resolve().parents[1]),
                                         env["PYTHONPATH"]])
    script = logs / "server.py"
    script.write_text(SERVER)
    result = subprocess.run([sys.executable, str(script), ",".join(CASES), str(logs)], env=env, capture_output=True,
                            text=True, timeout=300, cwd=str(logs))
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    assert result.returncode == 0 and lines, f"helper failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.parametrize("name", list(CASES))
def test_raw_kernel_misuse_raises(outcomes, name):
    """A case listed in NOT_CHECKED is an expected failure while it returns
    or crashes, and an error (to un-list it) once it raises; anything else,
    e.g. a broken case, fails."""
    outcome = outcomes[name]
    detail = f"{name}: {outcome['outcome']}\n{outcome['log']}"
    if name in NOT_CHECKED:
        assert outcome["outcome"] != "raised", f"{name} raises now: remove it from NOT_CHECKED"
        assert outcome["outcome"] == "returned" or outcome["outcome"].startswith("crashed"), detail
        pytest.xfail(NOT_CHECKED[name])
    assert outcome["outcome"] == "raised", detail


def test_every_case_is_classified():
    assert set(RAISES_TODAY) | set(NOT_CHECKED) == set(CASES)
    assert not set(RAISES_TODAY) & set(NOT_CHECKED)
