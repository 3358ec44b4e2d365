#!/usr/bin/env python
"""Speed of the CPU backend on the scenes of spec/BENCHMARKS.md, and its ratio
to the pure-PyTorch reference.

    python benchmarks/bench.py                      # every scene, 5 repeats
    python benchmarks/bench.py --scenes garden dense --repeats 7 --markdown
    python benchmarks/bench.py --scenes garden --stats --scaling --no-reference
    python benchmarks/bench.py --root ../baseline   # time another built checkout
    python benchmarks/bench.py --growth --stats --repeats 15  # x3 / 2x growth, in turns
    python benchmarks/bench.py --scenes garden --phases --repeats 9  # where the time goes, 1 vs 2 threads

For each scene it reports the median (and the range) of `--repeats` timed runs
after one warm-up run of

* forward:           `GaussianRasterizer(...).render(**inputs)` with inputs
                     that require grad, as in training (it renders the colour,
                     importance, inverse-depth and alpha maps);
* forward+backward:  the forward, then `loss.backward()` with
                     `loss = (color * Wc).sum() + (importance_map * Wi).sum()
                     + (invdepth * Wd).sum() + (alpha * Wa).sum()` (fixed
                     random weights: every pixel of all four maps sends a
                     gradient back);
* with `--stats`:    the forward with the per-Gaussian statistics on
                     (`render(..., stats=True)`), and its cost over the plain
                     forward (the median over rounds of the two calls'
                     ratio, see below);
* with `--scaling`:  forward and forward+backward also with 1 thread, and the
                     speed-up of `--threads` threads over 1 (the median over
                     rounds, see below);

and

* peak memory: measured in a fresh Python process per scene and backend (in
  the timing process, memory freed by earlier runs stays resident in the
  allocators and would hide the growth). The child builds the scene, runs a
  tiny render so that code pages and thread pools are loaded, reads its
  resident set size (VmRSS), resets its peak (writing 5 to
  /proc/self/clear_refs), runs one forward+backward and reads the peak
  (VmHWM). The difference is what the rasterizer adds on top of the inputs:
  outputs, forward state, gradients and temporaries, whether torch or the
  C++ code allocated them. Where the peak cannot be reset, the growth of
  `resource.getrusage(RUSAGE_SELF).ru_maxrss` is reported instead (marked
  `*`).
* Gaussian-pixel evaluations: the number of (Gaussian, pixel) pairs the
  per-pixel loop of the forward is handed, i.e. the sum over all
  (Gaussian, tile) entries of the number of image pixels in that tile,
  computed from the returned radii and the projected means. It is an upper
  bound on the splat evaluations the forward performs (a pixel stops early
  when its transmittance runs out), it counts the backward's work not at
  all, and it is the same number on any machine; `evals/s` divides it by the
  forward time, `evals/s/core` also by the number of threads.

The timed functions of a scene take turns (forward, forward+backward, the
statistics variant, and, for `garden-ref`, the same for the reference), so
that a slow phase of a shared machine does not land on one of them only.
The 1-thread variants (`--scaling`) take their turns among themselves, in
blocks of calls of their own: switching torch's thread count between calls
slowed the 2-thread calls that followed, and more so on the larger scenes
(garden-x3's forward measured 1.98x garden's with the switches, 1.89x
without, in runs of the same build). A block of `--threads` calls and a
block of 1-thread calls alternate SCALING_ROUNDS times, each block after a
warm-up call and `--repeats` / SCALING_ROUNDS calls long (rounded up), and
the speed-up is the median of the rounds' ratios (with their range): with
all the 1-thread calls at the end of the run, a host whose speed drifts
over minutes gave speed-ups from 1.54x to 2.30x (benchmarks/RESULTS.md,
eighteenth session). The last line says how much
CPU time other processes took during the run (from /proc/stat).

The reference (`rasterize_reference`, O(P_visible x H x W) time and memory)
is timed on a scene small enough for it (`garden-ref`: a fixed random subset
of the garden Gaussians rendered at a quarter of the resolution) beside the
CPU backend on the same scene, in the same process.

`--root DIR` imports the package from another checkout with a built
extension (for example the commit before an optimisation), so that two
builds can be timed with the same script; the peak-memory children follow.

Timing is not a test: on shared machines the numbers drift from run to run;
ratios taken in one run are the figures to compare.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]


def _package_root(argv: List[str]) -> Path:
    """--root DIR (read before the package is imported), else this checkout."""
    for i, a in enumerate(argv):
        if a == "--root" and i + 1 < len(argv):
            return Path(argv[i + 1]).resolve()
        if a.startswith("--root="):
            return Path(a.split("=", 1)[1]).resolve()
    return ROOT


PACKAGE_ROOT = _package_root(sys.argv)
sys.path.insert(0, str(PACKAGE_ROOT))

from diff_gaussian_rasterization_ks import GaussianRasterizer, rasterize_reference  # noqa: E402
from diff_gaussian_rasterization_ks.scenes import Scene, garden_scene, random_scene, requires_grad_  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "garden_sfm.npz"
TILE = 16


# ---------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------


def dense_scene(seed: int = 0) -> Scene:
    """High depth complexity: 20,000 large, faint, overlapping Gaussians at 640 x 480.

    `random_scene` with per-axis scales log-uniform in [0.05, 0.5] world units
    (radii of tens to ~200 pixels), nothing behind the camera, 5% partly off
    screen, and opacities re-drawn uniform in [0.02, 0.2], so that a pixel
    blends hundreds of Gaussians before its transmittance runs out.
    """
    scene = random_scene(
        20_000, 480, 640, seed=seed, scale_range=(0.05, 0.5), offscreen_fraction=0.05, behind_fraction=0.0
    )
    gen = torch.Generator().manual_seed(seed + 1)
    P = scene.inputs["means3D"].shape[0]
    scene.inputs["opacities"] = 0.02 + 0.18 * torch.rand(P, 1, generator=gen)
    return scene


def reference_scene(data: Path, subset: int = 2_000, seed: int = 0) -> Scene:
    """`garden-ref`: `subset` Gaussians of `garden` (a fixed random choice among
    those the garden camera sees) at 162 x 105 (a quarter of each side, same
    field of view)."""
    full = garden_scene(data)
    with torch.no_grad():
        radii = GaussianRasterizer(full.settings)(**full.inputs)[2]
    visible = torch.nonzero(radii > 0).squeeze(1)
    gen = torch.Generator().manual_seed(seed)
    pick = visible[torch.randperm(visible.numel(), generator=gen)[:subset]].sort().values
    inputs = {k: (v[pick].contiguous() if isinstance(v, torch.Tensor) else v) for k, v in full.inputs.items()}
    s = full.settings
    settings = s._replace(image_width=s.image_width // 4, image_height=s.image_height // 4)
    return Scene(inputs, settings)


SCENES = ("garden", "garden-x3", "garden-2x", "dense")
# timed only when named: garden with spherical harmonics as 3DGS training
# keeps them (16 coefficients a Gaussian, degree 3 active)
EXTRA_SCENES = ("garden-sh3",)
SH_C0 = 0.28209479177387814  # the degree-0 SH basis constant


def sh_scene(scene: Scene, degree: int = 3, seed: int = 0) -> Scene:
    """`scene` with its colours_precomp replaced by spherical harmonics stored
    [P, 16, 3], `degree` active: the DC term gives the colour, the others are
    N(0, 0.1^2) from a fixed seed."""
    inputs = dict(scene.inputs)
    colors = inputs.pop("colors_precomp")
    gen = torch.Generator().manual_seed(seed)
    shs = 0.1 * torch.randn(colors.shape[0], 16, 3, generator=gen, dtype=colors.dtype)
    shs[:, 0] = (colors.detach() - 0.5) / SH_C0
    inputs["shs"], inputs["colors_precomp"] = shs, None
    return Scene(inputs, scene.settings._replace(sh_degree=degree))


def build_scene(name: str, args) -> Scene:
    if name == "garden":
        return garden_scene(args.data)
    if name == "garden-x3":
        return garden_scene(args.data, replicate=3)
    if name == "garden-2x":
        return garden_scene(args.data, resolution_scale=2)
    if name == "dense":
        return dense_scene()
    if name == "garden-sh3":
        return sh_scene(garden_scene(args.data))
    if name == "garden-ref":
        return reference_scene(args.data, subset=args.ref_subset)
    raise ValueError(f"unknown scene {name!r}")


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mib(fn: Callable[[], None]) -> str:
    """Growth of the peak resident set during fn() over the resident set before it."""
    if _reset_peak() and _status_kib("VmRSS") is not None:
        before = _status_kib("VmRSS")
        fn()
        return _mib(_status_kib("VmHWM") - before)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return _mib(after - before) + "*"


def _mib(kib: int) -> str:
    return "<1" if kib < 1024 else f"{kib / 1024:.0f}"


def _render_fn(backend: str, scene: Scene, inputs, stats: bool = False) -> Callable[[], object]:
    """One render returning an object with color, importance_map, invdepth,
    alpha and radii (RenderOutput for the CPU backend)."""
    if backend == "cpu":
        rasterizer = GaussianRasterizer(scene.settings)
        return lambda: rasterizer.render(**inputs, stats=stats)
    return lambda: rasterize_reference(**inputs, raster_settings=scene.settings)


def _forward_backward_fn(backend: str, scene: Scene, stats: bool = False) -> Callable[[], None]:
    inputs = requires_grad_(scene.inputs)
    weights = _loss_weights(scene)
    render = _render_fn(backend, scene, inputs, stats)

    def forward_backward():
        for v in inputs.values():
            if isinstance(v, torch.Tensor):
                v.grad = None
        out = render()
        maps = (out.color, out.importance_map, out.invdepth, out.alpha)
        sum((m * w).sum() for m, w in zip(maps, weights)).backward()

    return forward_backward


def peak_child(scene_name: str, backend: str, args) -> None:
    """Runs in a fresh process: prints the peak memory growth of one forward+backward."""
    warm = random_scene(50, 32, 32, seed=1)
    _forward_backward_fn(backend, warm)()
    scene = build_scene(scene_name, args)
    fn = _forward_backward_fn(backend, scene)
    print("PEAK_MIB", peak_memory_mib(fn), flush=True)


def measure_peak(scene_name: str, backend: str, args) -> str:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak-child", scene_name, backend,
           "--data", str(args.data), "--threads", str(args.threads), "--ref-subset", str(args.ref_subset),
           "--root", str(PACKAGE_ROOT)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_MIB "):
            return line.split(" ", 1)[1]
    sys.stderr.write(proc.stderr)
    return "n/a"


def timed(fns: Dict[object, Callable[[], None]], repeats: int, threads: Dict[object, int]) -> Dict[object, List[float]]:
    """Milliseconds of each function, `repeats` times after one warm-up each,
    each run with torch.set_num_threads(threads[key]) (set outside the timing).

    The functions take turns (a, b, a, b, ...) so that a slow phase of a
    shared machine hits all of them alike, which keeps their ratios sound."""
    for key, fn in fns.items():
        torch.set_num_threads(threads[key])
        fn()  # warm-up
    times: Dict[object, List[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            torch.set_num_threads(threads[key])
            t0 = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - t0) * 1e3)
    return times


def binned_pairs(scene: Scene, radii: torch.Tensor) -> int:
    """Sum over (Gaussian, tile) entries of the image pixels in the tile:
    the (Gaussian, pixel) pairs the per-pixel loop is handed."""
    s = scene.settings
    H, W = s.image_height, s.image_width
    gx, gy = (W + TILE - 1) // TILE, (H + TILE - 1) // TILE
    vis = radii > 0
    m = scene.inputs["means3D"][vis]
    r = radii[vis].float()
    p_hom = torch.cat([m, torch.ones_like(m[:, :1])], 1) @ s.projmatrix
    p_w = 1.0 / (p_hom[:, 3] + 1e-7)
    px = ((p_hom[:, 0] * p_w + 1.0) * W - 1.0) * 0.5
    py = ((p_hom[:, 1] * p_w + 1.0) * H - 1.0) * 0.5
    x0 = ((px - r) / TILE).clamp(0, gx).long()
    x1 = ((px + r + TILE - 1) / TILE).clamp(0, gx).long()
    y0 = ((py - r) / TILE).clamp(0, gy).long()
    y1 = ((py + r + TILE - 1) / TILE).clamp(0, gy).long()
    width = (x1 * TILE).clamp(max=W) - x0 * TILE
    height = (y1 * TILE).clamp(max=H) - y0 * TILE
    ok = (x1 > x0) & (y1 > y0)
    return int((width * height)[ok].sum())


def _loss_weights(scene: Scene):
    """Fixed random per-pixel weights of color, importance_map, invdepth, alpha."""
    s = scene.settings
    gen = torch.Generator().manual_seed(123)
    H, W = s.image_height, s.image_width
    return tuple(torch.rand(shape, generator=gen) for shape in ((3, H, W), (H, W), (1, H, W), (1, H, W)))


def _forward_fn(backend: str, scene: Scene, stats: bool = False) -> Callable[[], object]:
    return _render_fn(backend, scene, requires_grad_(scene.inputs), stats)


# `--scaling`: blocks of calls with `--threads` threads and with 1 thread
# alternate this many times; the speed-up is the median of the rounds' ratios
SCALING_ROUNDS = 3


def bench(name: str, scene: Scene, backends: List[str], args) -> List[dict]:
    """Times each of `backends` ("cpu", "reference") on `scene`, interleaved."""
    fns, fns_1t, threads = {}, {}, {}
    for b in backends:
        fns[(b, "fwd")] = _forward_fn(b, scene)
        fns[(b, "fwdbwd")] = _forward_backward_fn(b, scene)
        if b == "cpu" and args.stats:
            fns[(b, "fwd_stats")] = _forward_fn(b, scene, stats=True)
        if b == "cpu" and args.scaling and args.threads != 1:
            fns_1t[(b, "fwd_1t")] = _forward_fn(b, scene)
            fns_1t[(b, "fwdbwd_1t")] = _forward_backward_fn(b, scene)
    for key in list(fns) + list(fns_1t):
        threads[key] = 1 if key[1].endswith("_1t") else args.threads
    # (the thread counts in separate blocks of calls, which alternate: see
    # the module docstring)
    times: Dict[object, List[float]] = {key: [] for key in list(fns) + list(fns_1t)}
    speedups: List[tuple] = []
    rounds = SCALING_ROUNDS if fns_1t else 1
    per_round = -(-args.repeats // rounds)  # (rounded up)
    for _ in range(rounds):
        many = timed(fns, per_round, threads)
        one = timed(fns_1t, per_round, threads)
        for key, v in {**many, **one}.items():
            times[key] += v
        if fns_1t:
            speedups.append(tuple(statistics.median(one[("cpu", f"{kind}_1t")]) / statistics.median(many[("cpu", kind)])
                                  for kind in ("fwd", "fwdbwd")))
    torch.set_num_threads(args.threads)
    rows = []
    s = scene.settings
    for b in backends:
        with torch.no_grad():
            radii = fns[(b, "fwd")]().radii
        rows.append(
            dict(
                scene=name,
                backend=b,
                gaussians=scene.inputs["means3D"].shape[0],
                visible=int((radii > 0).sum()),
                image=f"{s.image_width}x{s.image_height}",
                pairs=binned_pairs(scene, radii),
                threads=args.threads,
                fwd=times[(b, "fwd")],
                fwdbwd=times[(b, "fwdbwd")],
                fwd_stats=times.get((b, "fwd_stats")),
                fwd_1t=times.get((b, "fwd_1t")),
                fwdbwd_1t=times.get((b, "fwdbwd_1t")),
                speedups=speedups if b == "cpu" else [],
                peak=measure_peak(name, b, args),
            )
        )
    return rows


GROWTH_SCENES = ("garden", "garden-x3", "garden-2x")


def growth(args) -> None:
    """`--growth`: garden, garden-x3 and garden-2x loaded together and timed
    in turns (forward, forward+backward, and with `--stats` the statistics
    variant), so that each round holds one call of each, taken within a
    second of one another. Prints, per scene, its evaluations and time over
    garden's, as the median (and range) of the rounds' own ratios: a ratio
    taken within one round cancels the drift of a shared machine that the
    ratio of two scenes timed minutes apart (the main table's) carries."""
    scenes = {name: build_scene(name, args) for name in GROWTH_SCENES}
    fns = {}
    for name, scene in scenes.items():
        fns[(name, "fwd")] = _forward_fn("cpu", scene)
        fns[(name, "fwdbwd")] = _forward_backward_fn("cpu", scene)
        if args.stats:
            fns[(name, "fwd_stats")] = _forward_fn("cpu", scene, stats=True)
    times = timed(fns, args.repeats, {key: args.threads for key in fns})
    pairs = {}
    for name, scene in scenes.items():
        with torch.no_grad():
            pairs[name] = binned_pairs(scene, fns[(name, "fwd")]().radii)

    def round_ratios(a, b) -> str:
        return _median_and_range(_round_ratios(times[a], times[b]))

    base = GROWTH_SCENES[0]
    for name in GROWTH_SCENES:
        line = f"{name:10s} fwd {_ms(times[(name, 'fwd')])} ms  fwd+bwd {_ms(times[(name, 'fwdbwd')])} ms"
        if name != base:
            line += (f"  / {base}: evaluations {pairs[name] / pairs[base]:.2f}, "
                     f"forward {round_ratios((name, 'fwd'), (base, 'fwd'))}, "
                     f"forward+backward {round_ratios((name, 'fwdbwd'), (base, 'fwdbwd'))}")
        if args.stats:
            cost = [x - 1 for x in _round_ratios(times[(name, "fwd_stats")], times[(name, "fwd")])]
            line += f"  stats cost {100 * statistics.median(cost):+.0f}% ({100 * min(cost):+.0f}% to {100 * max(cost):+.0f}%)"
        print(line, flush=True)


def phases(args) -> None:
    """`--phases`: where each scene's forward+backward time goes, from the
    CPU backend's own clock marks between its phases (`_C.cpu_phase_times`):
    per phase, the median of `--repeats` calls with `--threads` threads, then
    of as many with 1 thread (in that order, as `--scaling`), and the
    speed-up. With `--stats`, the forward computes the statistics."""
    from diff_gaussian_rasterization_ks import _C

    for name in args.scenes:
        fn = _forward_backward_fn("cpu", build_scene(name, args), stats=args.stats)
        medians = {}
        for threads in (args.threads, 1):
            torch.set_num_threads(threads)
            fn()  # warm-up
            times: Dict[str, List[float]] = {}
            for _ in range(args.repeats):
                fn()
                for part, backward in (("forward", False), ("backward", True)):
                    for phase, ms in _C.cpu_phase_times(backward):
                        times.setdefault(f"{part}: {phase}", []).append(ms)
            medians[threads] = {key: statistics.median(v) for key, v in times.items()}
        torch.set_num_threads(args.threads)
        print(f"{name}: phase medians (ms) of {args.repeats} calls, 1 thread / {args.threads} threads, speed-up")
        for key, many in medians[args.threads].items():
            one = medians[1][key]
            print(f"  {key:22s} {one:8.2f} {many:8.2f}  {one / many if many > 0 else float('nan'):5.2f}x", flush=True)


def agreement(scene: Scene) -> float:
    """Largest |difference| between the CPU backend's and the reference's image
    and importance map on `scene` (a sanity check that both render the same)."""
    with torch.no_grad():
        c, i, _ = GaussianRasterizer(scene.settings)(**scene.inputs)
        ref = rasterize_reference(**scene.inputs, raster_settings=scene.settings)
    return max(float((c - ref.color).abs().max()), float((i - ref.importance_map).abs().max()))


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def machine_info() -> Dict[str, str]:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PACKAGE_ROOT, capture_output=True,
            text=True
        ).stdout.strip()
        if dirty:
            commit += " (with uncommitted changes)"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return dict(
        date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        cpu=model,
        cores=str(os.cpu_count()),
        threads=str(torch.get_num_threads()),
        torch=torch.__version__,
        python=platform.python_version(),
        commit=commit,
    )


def _cpu_seconds():
    """(busy core-seconds of the whole machine, CPU seconds of this process and
    its children, core-seconds stolen by the hypervisor), or None where
    /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    busy = sum(fields[:8]) - fields[3] - fields[4]
    steal = fields[7] if len(fields) > 7 else 0
    own = sum(
        getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )
    tick = os.sysconf("SC_CLK_TCK")
    return busy / tick, own, steal / tick


def contention(start, wall_s: float) -> str:
    """How much CPU time other processes took while the benchmark ran, and
    how much the hypervisor took from this virtual machine (steal: time its
    cores were runnable but not running, which other processes' count cannot
    show; on a shared host it is what makes a run busy)."""
    end = _cpu_seconds()
    if start is None or end is None:
        return "CPU time of other processes: unknown"
    steal = max(0.0, end[2] - start[2])
    other = max(0.0, (end[0] - start[0]) - (end[1] - start[1]) - steal)
    cores = os.cpu_count() or 1
    total = max(wall_s * cores, 1e-9)
    return (
        f"other processes used {other:.0f} of the {wall_s * cores:.0f} core-seconds of this run "
        f"({100 * other / total:.0f}%); the hypervisor took {steal:.0f} ({100 * steal / total:.0f}%)"
    )


def _ms(times: List[float]) -> str:
    """Median (min-max)."""
    d = 1 if statistics.median(times) < 100 else 0
    return f"{statistics.median(times):.{d}f} ({min(times):.{d}f}-{max(times):.{d}f})"


def _round_ratios(a: List[float], b: List[float]) -> List[float]:
    """a[k] / b[k] for each round k of `timed` (its functions take turns, so
    a round's calls ran within seconds of one another: their ratio cancels
    the drift of a shared machine that a ratio of medians keeps)."""
    return [x / y for x, y in zip(a, b)]


def _median_and_range(values, unit: str = "") -> str:
    """"1.99x (1.70-2.45)": the median of per-round ratios and their range."""
    return f"{statistics.median(values):.2f}{unit} ({min(values):.2f}-{max(values):.2f})"


def _rate(pairs: int, times: List[float], cores: int = 1) -> str:
    """Evaluations per second (per core), in 10^9."""
    return f"{pairs / (statistics.median(times) / 1e3) / 1e9 / cores:.3g}"


def _extras(r: dict) -> List[tuple]:
    """(label, value) of the optional figures: statistics cost, 1-thread times, speed-up."""
    out = []
    if r.get("fwd_stats"):
        cost = statistics.median(_round_ratios(r["fwd_stats"], r["fwd"])) - 1
        out.append(("forward ms, stats on", _ms(r["fwd_stats"])))
        out.append(("stats cost", f"{100 * cost:+.0f}%"))
    if r.get("fwd_1t"):
        out.append(("forward ms, 1 thread", _ms(r["fwd_1t"])))
        out.append(("forward+backward ms, 1 thread", _ms(r["fwdbwd_1t"])))
        fwd_up, fwdbwd_up = zip(*r["speedups"])  # per round
        out.append((f"speed-up {r['threads']} vs 1 thread (fwd / fwd+bwd)",
                    f"{_median_and_range(fwd_up, 'x')} / {_median_and_range(fwdbwd_up, 'x')}"))
    return out


def print_plain(rows: List[dict], ratio: Optional[dict], file=sys.stdout) -> None:
    for r in rows:
        print(
            f"{r['scene']:10s} {r['backend']:9s} P={r['gaussians']:>9,d} visible={r['visible']:>8,d} "
            f"{r['image']:>9s} evals={r['pairs'] / 1e6:8.1f}M  fwd {_ms(r['fwd'])} ms  "
            f"fwd+bwd {_ms(r['fwdbwd'])} ms  peak {r['peak']} MiB  {_rate(r['pairs'], r['fwd'])} G evals/s  "
            f"{_rate(r['pairs'], r['fwd'], r['threads'])} G evals/s/core"
            + "".join(f"  {label} {value}" for label, value in _extras(r)),
            file=file,
            flush=True,
        )
    if ratio:
        print(
            f"reference / CPU backend on {ratio['scene']}: forward {ratio['fwd']:.0f}x, "
            f"forward+backward {ratio['fwdbwd']:.0f}x (max |difference| of outputs {ratio['diff']:.1e})",
            file=file,
            flush=True,
        )


def print_markdown(rows: List[dict], ratio: Optional[dict]) -> None:
    extra_labels = [label for label, _ in _extras(rows[0])] if rows else []
    for r in rows:  # the widest set of optional columns
        if len(_extras(r)) > len(extra_labels):
            extra_labels = [label for label, _ in _extras(r)]
    print(
        "| scene | backend | Gaussians | visible | image | evaluations (M) | forward ms | "
        "forward+backward ms | peak MiB (growth) | G evals/s (fwd) | G evals/s/core (fwd) |"
        + "".join(f" {label} |" for label in extra_labels)
    )
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extra_labels))
    for r in rows:
        values = dict(_extras(r))
        print(
            f"| {r['scene']} | {r['backend']} | {r['gaussians']:,d} | {r['visible']:,d} | {r['image']} | "
            f"{r['pairs'] / 1e6:.1f} | {_ms(r['fwd'])} | {_ms(r['fwdbwd'])} | {r['peak']} | "
            f"{_rate(r['pairs'], r['fwd'])} | {_rate(r['pairs'], r['fwd'], r['threads'])} |"
            + "".join(f" {values.get(label, '')} |" for label in extra_labels)
        )
    if ratio:
        print()
        print(
            f"Reference / CPU backend on `{ratio['scene']}`, same process: forward **{ratio['fwd']:.0f}x**, "
            f"forward+backward **{ratio['fwdbwd']:.0f}x** slower (max |difference| of image and importance "
            f"map {ratio['diff']:.1e})."
        )


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scenes",
        nargs="+",
        default=list(SCENES),
        choices=SCENES + EXTRA_SCENES,
        help="scenes to time with the CPU backend (default: the four of spec/BENCHMARKS.md; "
        "garden-sh3 is garden with degree-3 spherical harmonics)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure after one warm-up; the median is reported (default 5)")
    parser.add_argument("--markdown", action="store_true", help="print the results as a Markdown table (as in benchmarks/RESULTS.md)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"path of garden_sfm.npz (default {DEFAULT_DATA})")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: os.cpu_count())")
    parser.add_argument("--no-reference", action="store_true", help="skip the comparison with the pure-PyTorch reference")
    parser.add_argument(
        "--ref-subset", type=int, default=2_000, help="Gaussians in the garden-ref scene used for the reference comparison"
    )
    parser.add_argument("--stats", action="store_true",
                        help="also time the forward with per-Gaussian statistics on, and report their cost")
    parser.add_argument("--scaling", action="store_true",
                        help="also time forward and forward+backward with 1 thread, and report the speed-up")
    parser.add_argument("--growth", action="store_true",
                        help="time garden, garden-x3 and garden-2x in turns in one process and report their "
                        "growth over garden as ratios within each round (instead of the table)")
    parser.add_argument("--phases", action="store_true",
                        help="report each phase's time (the CPU backend's clock marks) with 1 and --threads threads "
                        "for each scene (instead of the table)")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="import the package from this checkout (with a built extension) instead of this one")
    parser.add_argument("--peak-child", nargs=2, metavar=("SCENE", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_child:
        torch.set_num_threads(args.threads)
        peak_child(args.peak_child[0], args.peak_child[1], args)
        return
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.growth and args.phases:
        parser.error("--growth and --phases are two different reports: give one")
    if not args.data.is_file():
        parser.error(f"--data: {args.data} not found (garden_sfm.npz lives in <repo>/../shared/data/)")

    torch.set_num_threads(args.threads)
    info = machine_info()
    print(
        f"# {info['date']}  CPU: {info['cpu']} ({info['cores']} cores, {info['threads']} torch threads)  "
        f"torch {info['torch']}  python {info['python']}  commit {info['commit']}  package from {PACKAGE_ROOT}",
        flush=True,
    )
    start, t_start = _cpu_seconds(), time.perf_counter()
    if args.growth or args.phases:
        (growth if args.growth else phases)(args)
        print(f"\n({contention(start, time.perf_counter() - t_start)})")
        return

    rows = []
    for name in args.scenes:
        scene = build_scene(name, args)
        rows += bench(name, scene, ["cpu"], args)
        del scene
        print_plain(rows[-1:], None, file=sys.stderr if args.markdown else sys.stdout)

    ratio = None
    if not args.no_reference:
        scene = build_scene("garden-ref", args)
        cpu, ref = bench("garden-ref", scene, ["cpu", "reference"], args)
        rows += [cpu, ref]
        ratio = dict(
            scene="garden-ref",
            fwd=statistics.median(ref["fwd"]) / statistics.median(cpu["fwd"]),
            fwdbwd=statistics.median(ref["fwdbwd"]) / statistics.median(cpu["fwdbwd"]),
            diff=agreement(scene),
        )
        print_plain([cpu, ref], ratio, file=sys.stderr if args.markdown else sys.stdout)

    if args.markdown:
        print_markdown(rows, ratio)
    print(f"\n({contention(start, time.perf_counter() - t_start)})")


if __name__ == "__main__":
    main()
