"""Rasterizers called from several Python threads at once give the results
they give when called one at a time, forward and backward, bit for bit (the
CPU backend is deterministic, see test_determinism.py).

Four threads, four different scenes (colors_precomp, SH degree 3,
cov3D_precomp with antialiasing, statistics with pixel weights), each
rendering and back-propagating several times, released together by a
barrier; plus the same scene shared by all threads (shared input tensors and
settings).

The compiled entry points release the GIL while they run (ext.cpp), so the
threads really run at the same time: another Python thread makes progress
during a forward or backward call."""
import inspect
import threading
import time

import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer, _backend
from diff_gaussian_rasterization_ks.scenes import random_scene

from reliability_support import recorded_kernel_calls, render_and_backward, run_scenario

THREADS = 4
ROUNDS = 4


def scenes():
    has_stats = "stats" in inspect.signature(GaussianRasterizer.render).parameters
    a = random_scene(200, 40, 56, seed=11)
    b = random_scene(150, 37, 45, seed=12, sh_degree=3, bg=(0.1, 0.2, 0.3))
    c = random_scene(150, 48, 33, seed=13, sh_degree=1, use_cov3D_precomp=True)
    d = random_scene(250, 32, 64, seed=14, scale_range=(0.1, 0.6))
    stats = dict(stats=True, pixel_weights=torch.rand(32, 64, generator=torch.Generator().manual_seed(1))) \
        if has_stats else {}
    return [(a.settings, a.inputs, {}), (b.settings, b.inputs, {}),
            (c.settings._replace(antialiasing=True), c.inputs, {}), (d.settings, d.inputs, stats)]


def run_concurrently(jobs):
    """jobs[i] runs in thread i, ROUNDS times; returns results[i][round]."""
    barrier = threading.Barrier(len(jobs))
    results = [[None] * ROUNDS for _ in jobs]
    errors = []

    def worker(i):
        try:
            barrier.wait(timeout=60)
            for r in range(ROUNDS):
                settings, inputs, kwargs = jobs[i]
                results[i][r] = run_scenario(settings, inputs, kwargs, upstream_seed=i)
        except BaseException as error:  # reported below, in the test's thread
            errors.append((i, repr(error)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a rasterizer thread hangs"
    assert not errors, errors
    return results


def assert_same(expected, got, what):
    names, tensors = expected
    got_names, got_tensors = got
    assert names == got_names, what
    for n, a, b in zip(names, tensors, got_tensors):
        assert torch.equal(a, b), f"{what}: {n} differs from the one-at-a-time result"


def test_different_scenes_in_four_threads_match_one_at_a_time():
    jobs = scenes()
    assert len(jobs) == THREADS
    expected = [run_scenario(s, x, kw, upstream_seed=i) for i, (s, x, kw) in enumerate(jobs)]
    results = run_concurrently(jobs)
    for i in range(THREADS):
        for r in range(ROUNDS):
            assert_same(expected[i], results[i][r], f"thread {i}, round {r}")


def test_one_scene_shared_by_four_threads_matches_one_at_a_time():
    settings, inputs, kwargs = scenes()[1]
    expected = [run_scenario(settings, inputs, kwargs, upstream_seed=i) for i in range(THREADS)]
    results = run_concurrently([(settings, inputs, kwargs)] * THREADS)
    for i in range(THREADS):
        for r in range(ROUNDS):
            assert_same(expected[i], results[i][r], f"thread {i}, round {r}")


def test_compiled_kernels_release_the_gil():
    """While a raw forward or backward call runs in one thread, the main
    thread keeps running Python: its steps cover the call without a gap of
    half the call's length (with the GIL held, one gap spans the whole call)."""
    scene = random_scene(200_000, 240, 320, seed=15)  # calls of ~0.2 to 0.5 s
    with recorded_kernel_calls() as calls:
        render_and_backward(scene.settings, scene.inputs)
    (fwd, fwd_kw), (bwd, bwd_kw) = calls["forward"][0], calls["backward"][0]
    k = _backend.kernels_for(torch.device("cpu"))  # the raw bindings the Python layer called
    for name, call in (("forward", lambda: k.forward(*fwd, **fwd_kw)), ("backward", lambda: k.backward(*bwd, **bwd_kw))):
        span = {}

        def worker():
            span["start"] = time.perf_counter()
            call()
            span["end"] = time.perf_counter()

        thread = threading.Thread(target=worker)
        ticks = []
        thread.start()
        while thread.is_alive():
            ticks.append(time.perf_counter())
        thread.join()
        start, end = span["start"], span["end"]
        points = [start] + [t for t in ticks if start < t < end] + [end]
        gap = max(b - a for a, b in zip(points, points[1:]))
        print(f"{name}: {end - start:.3f} s call, longest stand-still of the main thread {gap:.3f} s")
        assert gap < 0.5 * (end - start), (f"{name}: the main thread stood still for {gap:.3f} s of the "
                                           f"{end - start:.3f} s call (GIL held?)")
