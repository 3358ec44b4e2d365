"""Errors of the compiled CPU kernels surface as Python exceptions, never as a
crash or a silent out-of-bounds access.

The public API validates every argument in Python (test_validation.py), so
these tests call the raw bindings (`_C.rasterize_forward_cpu`,
`_C.rasterize_backward_cpu`, `_C.mark_visible_cpu`) the way a caller that
bypasses the Python layer would: with the exact arguments the Python layer
passes (recorded, so the tests follow the kernels' signatures) and one of
them wrong. Every case must raise a RuntimeError (TORCH_CHECK), TypeError or
ValueError whose message names the wrong argument (EXPECTED).

The checks are rasterize_checks.h, shared by the CPU and the CUDA glue. Before
them, 21 of these cases read out of bounds (heap-buffer-overflow reads under
AddressSanitizer, see test_sanitizers.py; UBSan's index out of bounds for
sh_degree 4; glibc aborts for an inconsistent forward state) or returned
silently wrong results (a non-contiguous input read as if contiguous).

A wrong call may read or write out of bounds, so every case runs in a
forked child of a helper process (one `import torch` for all cases, one
thread, so no OpenMP pool is ever forked): a crash is reported as a crash,
not as the death of the test session.
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
    results[name] = dict(outcome=outcome, log=text if len(text) <= 6000 else text[:3000] + " ... " + text[-3000:])
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


def _with(t, index, value):
    """A fresh copy of t with t[index] = value."""
    t = t.clone()
    t[index] = value
    return t


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
# the CPU forward state (ForwardState): splat_records, tiles_touched, gaussian_offsets, tile_ranges,
# point_list, final_T, n_contrib
S_RECORDS, S_TILES_TOUCHED, S_OFFSETS, S_RANGES, S_POINTS, S_FINAL_T, S_N_CONTRIB = range(7)
# int32 words of a splat record: its tile rectangle min_x, min_y, max_x, max_y, and its first slot less its chunk's
W_MIN_X, W_MAX_X, W_CHUNK_SLOT = 11, 13, 15


def _record_changed(records, state, pick, change):
    """A copy of the records with change(words of Gaussian g) applied, g the
    first drawn Gaussian for which pick(its words) holds."""
    records = records.clone()
    words = records.view(torch.int32)
    drawn = [g for g in range(words.shape[0]) if state[S_TILES_TOUCHED][g] > 0 and pick(words[g])]
    assert drawn, "no drawn Gaussian to change"
    change(words[drawn[-1]])
    return records


def _first_slot_off(records, state):
    def change(w):
        w[W_CHUNK_SLOT] += 1
    return _record_changed(records, state, lambda w: True, change)


def _rectangle_moved_left(records, state):
    """The rectangle one tile to the left: still in the grid, of the same size."""
    def change(w):
        w[W_MIN_X] -= 1
        w[W_MAX_X] -= 1
    return _record_changed(records, state, lambda w: w[W_MIN_X] > 0, change)


def _misaligned(records):
    """The same values at an address 4 bytes past a 64-byte boundary."""
    out = torch.empty(records.numel() + 1)[1:].view(records.shape)
    out.copy_(records)
    return out

# .clone(): a fresh allocation (a view would keep the original's bytes behind it)
shorter = lambda t: t[:-1].contiguous().clone()  # noqa: E731  one Gaussian (row) short
empty = lambda t: torch.empty(0)  # noqa: E731  an absent optional input

CASES = {
    "forward means3D float64": _forward(MEANS3D, lambda t: t.double()),
    "forward opacities int32": _forward(OPACITIES, lambda t: t.int()),
    "forward viewmatrix not a tensor": _forward(VIEW, lambda t: t.tolist()),
    "backward state of 6 tensors": lambda C, base: (C.rasterize_backward_cpu,
                                                    _replace(base["bwd"][0], STATE, base["bwd"][0][STATE][:6]),
                                                    base["bwd"][1]),
    "backward n_contrib float32": _state(S_N_CONTRIB, lambda t, base: t.float()),
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
    # the checks' other branches: which optional inputs go together
    "forward shs and colors_precomp both given": _forward(COLORS, lambda t: torch.rand(40, 3)),
    "forward scales without rotations": _forward(ROTATIONS, empty),
    "forward neither scales+rotations nor cov3D_precomp": lambda C, base: (
        C.rasterize_forward_cpu, _replace(_replace(base["fwd"][0], SCALES, torch.empty(0)), ROTATIONS,
                                          torch.empty(0)), base["fwd"][1]),
    "mark_visible projmatrix 3x3": _mark_visible(2, lambda t: t[:3, :3].contiguous().clone()),
    # a whole consistent state (and its upstream gradients) of another scene:
    # the state's sizes against P
    "backward state and upstream gradients of another scene": lambda C, base: (
        C.rasterize_backward_cpu,
        [base["other_bwd"][0][i] if i == STATE or i >= B_DL_DCOLOR else a for i, a in enumerate(base["bwd"][0])],
        base["bwd"][1]),
    # the values of the state that index memory
    "backward point_list names Gaussian P": _state(S_POINTS, lambda t, base: _with(t, 0, 40)),
    "backward tile_ranges decreasing": _state(S_RANGES, lambda t, base: _with(t, 1, int(t[-1]) + 1)),
    "backward gaussian_offsets shifted": _state(S_OFFSETS, lambda t, base: t + 1),
    "backward splat_records first slot off by one": _state(
        S_RECORDS, lambda t, base: _first_slot_off(t, base["bwd"][0][STATE])),
    "backward splat_records rectangle moved": _state(
        S_RECORDS, lambda t, base: _rectangle_moved_left(t, base["bwd"][0][STATE])),
    "backward splat_records misaligned": _state(S_RECORDS, lambda t, base: _misaligned(t)),
    "backward n_contrib negative": _state(S_N_CONTRIB, lambda t, base: _with(t, (0, 0), -1)),
}

# What each case's error message must contain: the argument it names and
# what was expected.
EXPECTED = {
    "forward means3D float64": "means3D: expected dtype Float",
    "forward opacities int32": "opacities: expected dtype Float",
    "forward viewmatrix not a tensor": "TypeError: rasterize_forward_cpu(): incompatible function arguments",
    "backward state of 6 tensors": "state: expected the 7 forward-state tensors",
    "backward n_contrib float32": "state.n_contrib: expected dtype Int",
    "forward opacities one short": "opacities: expected shape [40] or [40, 1] (P = 40 from means3D), got [39]",
    "forward importances one short": "importances: expected shape [40] or [40, 1] (P = 40 from means3D), got [39]",
    "forward colors_precomp one short": "colors_precomp: expected shape [40, 3] (P = 40 from means3D), got [39, 3]",
    "forward scales one short": "scales: expected shape [40, 3] (P = 40 from means3D), got [39, 3]",
    "forward rotations one short": "rotations: expected shape [40, 4] (P = 40 from means3D), got [39, 4]",
    "forward shs too few coefficients": "shs: expected shape [40, M, 3] with M >= 9 coefficients",
    "forward sh_degree 4": "sh_degree: expected an int in [0, 3], got 4",
    "forward viewmatrix 3x3": "viewmatrix: expected 16 elements (a 4x4 matrix), got a tensor of shape [3, 3]",
    "forward projmatrix 3x3": "projmatrix: expected 16 elements (a 4x4 matrix), got a tensor of shape [3, 3]",
    "forward campos of 2": "campos: expected 3 elements (a 3D point), got a tensor of shape [2]",
    "forward background of 2": "background: expected 3 elements (an RGB color), got a tensor of shape [2]",
    "forward opacities non-contiguous": "opacities: expected a contiguous tensor",
    "forward pixel_weights one row short": "pixel_weights: expected shape [20, 36] (image_height, image_width), "
                                           "got [19, 36]",
    "backward importances one short": "importances: expected shape [40] or [40, 1] (P = 40 from means3D), got [39]",
    "backward dL_dcolor one column short": "dL_dcolor: expected shape [3, 20, 36] (H = 20, W = 36 from "
                                           "state.final_T), got [3, 20, 35]",
    "backward dL_dimportance one row short": "dL_dimportance: expected shape [20, 36]",
    "backward dL_dalpha one row short": "dL_dalpha: expected shape [20, 36] or [1, 20, 36]",
    "backward state of another scene": "dL_dcolor: expected shape [3, 40, 52] (H = 40, W = 52 from state.final_T), "
                                       "got [3, 20, 36]",
    "backward n_contrib of another scene": "state.n_contrib: expected per pixel a count in [0, length of its tile's "
                                           "list]",
    "backward point_list one short": "state.gaussian_offsets: expected the exclusive prefix sum of "
                                     "state.tiles_touched, from 0 to E (E = 59 from state.point_list)",
    "mark_visible means3D with 2 columns": "mark_visible_cpu: means3D: expected shape [P, 3], got [40, 2]",
    "mark_visible viewmatrix 3x3": "mark_visible_cpu: viewmatrix: expected 16 elements",
    "forward shs and colors_precomp both given": "shs / colors_precomp: expected exactly one of them",
    "forward scales without rotations": "scales / rotations: expected both or neither",
    "forward neither scales+rotations nor cov3D_precomp": "scales+rotations / cov3D_precomp: expected either",
    "mark_visible projmatrix 3x3": "mark_visible_cpu: projmatrix: expected 16 elements",
    "backward state and upstream gradients of another scene": "state.splat_records: expected shape [40, 16] (P = "
                                                              "40 from means3D), got [60, 16]",
    "backward point_list names Gaussian P": "state.point_list: expected Gaussian indices in [0, 40)",
    "backward tile_ranges decreasing": "state.tile_ranges: expected non-decreasing tile starts",
    "backward gaussian_offsets shifted": "state.gaussian_offsets: expected the exclusive prefix sum",
    "backward splat_records first slot off by one": "state.splat_records: expected the forward's records of the "
                                                    "drawn Gaussians",
    "backward splat_records rectangle moved": "state.point_list: expected each tile's list to name Gaussians whose "
                                              "records' rectangles hold the tile",
    "backward splat_records misaligned": "state.splat_records: expected 64-byte aligned data",
    "backward n_contrib negative": "state.n_contrib: expected per pixel a count in [0,",
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
    """Each case raises (no crash, no silent return), with a message that
    names the wrong argument and what was expected."""
    outcome = outcomes[name]
    detail = f"{name}: {outcome['outcome']}\n{outcome['log']}"
    assert outcome["outcome"] == "raised", detail
    assert EXPECTED[name] in outcome["log"], f"expected the message to contain {EXPECTED[name]!r}\n{detail}"


def test_every_case_has_an_expected_message():
    assert set(EXPECTED) == set(CASES)


# The state's value checks run in parts on ATen's threads (rasterize_checks.h,
# holds_in_parts: parts of 32768 Gaussians or entries, 64 pixel rows), so a
# bad value in the last part must fail them too. The scene below has more
# than one part of each; the corrupted value is the last one. A child process
# with 2 threads (the thread pool cannot be forked), one call per case: an
# undetected value would read or write out of bounds there.
LAST_PART_SERVER = r'''
import json, sys
import torch
torch.set_num_threads(2)
import reliability_support as rs
from diff_gaussian_rasterization_ks import _C
from diff_gaussian_rasterization_ks.scenes import random_scene
import test_kernel_errors as t

scene = random_scene(70000, 200, 240, seed=3)
with rs.recorded_kernel_calls() as calls:
    rs.render_and_backward(scene.settings, scene.inputs)
args, kwargs = calls["backward"][0]
state = args[t.STATE]
sizes = dict(P=state[t.S_TILES_TOUCHED].numel(), E=state[t.S_POINTS].numel(), H=state[t.S_N_CONTRIB].shape[0])
results = {}
for name, (index, make) in t.LAST_PART_CASES.items():
    bad = list(state)
    bad[index] = make(state[index], state)
    try:
        _C.rasterize_backward_cpu(*t._replace(args, t.STATE, bad), **kwargs)
        results[name] = "returned"
    except RuntimeError as error:
        results[name] = str(error)
print("RESULTS " + json.dumps(dict(sizes=sizes, results=results)))
'''


def _last(t, value):
    """A copy of t with its last element set to value."""
    t = t.clone()
    t.view(-1)[-1] = value
    return t


LAST_PART_CASES = {
    "tiles_touched": (S_TILES_TOUCHED, lambda t, state: _last(t, -1)),
    "gaussian_offsets": (S_OFFSETS, lambda t, state: torch.cat([t[:-2], t[-2:-1] + 1, t[-1:]])),
    "point_list": (S_POINTS, lambda t, state: _last(t, 70000)),
    "splat_records": (S_RECORDS, _first_slot_off),  # (of the last drawn Gaussian)
    "n_contrib": (S_N_CONTRIB, lambda t, state: _last(t, -1)),
}
LAST_PART_EXPECTED = {
    "tiles_touched": "state.tiles_touched: expected non-negative counts",
    "gaussian_offsets": "state.gaussian_offsets: expected the exclusive prefix sum",
    "point_list": "state.point_list: expected Gaussian indices in [0, 70000)",
    "splat_records": "state.splat_records: expected the forward's records of the drawn Gaussians",
    "n_contrib": "state.n_contrib: expected per pixel a count in [0,",
}


def test_state_checks_cover_their_last_part(tmp_path):
    import diff_gaussian_rasterization_ks

    package = str(Path(diff_gaussian_rasterization_ks.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package, str(HERE), os.environ.get("PYTHONPATH", "")]))
    env.pop("OMP_NUM_THREADS", None)
    script = tmp_path / "last_part.py"
    script.write_text(LAST_PART_SERVER)
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300,
                            cwd=str(tmp_path))
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    assert result.returncode == 0 and lines, f"helper failed ({result.returncode}):\n{result.stderr[-4000:]}"
    report = json.loads(lines[-1][len("RESULTS "):])
    sizes = report["sizes"]
    # more than one part of each check (else this test shows nothing)
    assert sizes["P"] > 32768 and sizes["E"] > 32768 and sizes["H"] > 64, sizes
    for name, expected in LAST_PART_EXPECTED.items():
        assert expected in report["results"][name], f"{name}: {report['results'][name]}"
