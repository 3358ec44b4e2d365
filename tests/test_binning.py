"""The CPU binning (the forward state's tile lists) against a plain reference.

ALGORITHM.md: each tile's list holds the Gaussians whose tile rectangle
contains it, front to back (ties by index); each Gaussian's entries, in slot
order, are the tiles of its rectangle in row-major order (the CPU computes an
entry's slot from its Gaussian's splat record: its rectangle and its first
slot less that of its chunk of 4,096 Gaussians). The C++ deals the
entries to tile rows and then to tiles, in parts of the depth order that
depend on the thread count, so the lists are also compared across thread
counts, on a scene large enough to be split into several parts.
"""
import pytest
import torch

from reliability_support import identity_camera, recorded_kernel_calls, render

# forward outputs: color, importance_map, radii, invdepth, alpha, then the
# CPU state (rasterize_points.h): splat_records, tiles_touched,
# gaussian_offsets, tile_ranges, point_list, ...
STATE = 5
RECORDS, TILES_TOUCHED, OFFSETS, RANGES, POINTS = (STATE + k for k in range(5))
TILE = 16
CHUNK = 4096  # VisibleRuns::CHUNK
# a splat record's 16 words: mean x, y (floats 0-1), ..., then its tile
# rectangle min_x, min_y, max_x, max_y (int32 words 11-14) and its first slot
# less its chunk's (word 15)
MX, RECT, CHUNK_SLOT = 0, slice(11, 15), 15


def _entry_slots(state, gx):
    """Each entry's slot as the CPU computes it, from its Gaussian's record."""
    words = state[RECORDS].view(torch.int32)
    points, ranges, offsets = state[POINTS].long(), state[RANGES], state[OFFSETS]
    tile = torch.repeat_interleave(torch.arange(ranges.numel() - 1), ranges.diff())
    tx, ty = tile % gx, tile // gx
    rect = words[points][:, RECT].long()
    chunk_slot = words[points, CHUNK_SLOT].long() & 0xFFFFFFFF
    return offsets[points - points % CHUNK] + chunk_slot + (ty - rect[:, 1]) * (rect[:, 2] - rect[:, 0]) + (tx - rect[:, 0])
H, W = 150, 200  # 10 x 13 tiles, the last row and column partial


def _scene(P: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    z = 1 + 4 * torch.rand(P, 1, generator=g)
    z[: P // 10] = 2.5  # equal depths: ties go by index
    xy = (torch.rand(P, 2, generator=g) - 0.5) * 1.3 * z  # some beyond the image: clipped rectangles
    scales = torch.exp(torch.empty(P, 3).uniform_(-6.0, -2.0, generator=g))  # under a tile to several tiles
    quats = torch.nn.functional.normalize(torch.randn(P, 4, generator=g), dim=1)
    return dict(means3D=torch.cat([xy, z], 1).contiguous(), means2D=torch.zeros(P, 3),
                opacities=torch.rand(P, 1, generator=g), importances=None, shs=None,
                colors_precomp=torch.rand(P, 3, generator=g), scales=scales, rotations=quats, cov3D_precomp=None)


def _binning(inputs, threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with recorded_kernel_calls() as calls, torch.no_grad():
            out = render(identity_camera(H, W), inputs)
    finally:
        torch.set_num_threads(before)
    return out, calls["forward_results"][0]


def _reference(radii, means2D, depths, offsets, gx, gy):
    """(point_list, entry_slots, tile_ranges) from each Gaussian's tile rectangle."""
    r = radii.float()
    cx, cy = means2D[:, 0], means2D[:, 1]
    # geometry.h tile_rect, in float32 as the kernels compute it
    min_x = ((cx - r) / TILE).clamp(0, gx).int().long()
    min_y = ((cy - r) / TILE).clamp(0, gy).int().long()
    max_x = ((cx + r + TILE - 1) / TILE).clamp(0, gx).int().long()
    max_y = ((cy + r + TILE - 1) / TILE).clamp(0, gy).int().long()
    visible = (radii > 0) & (max_x > min_x) & (max_y > min_y)
    index = torch.arange(radii.numel())
    points, slots, ranges = [], [], [0]
    for ty in range(gy):
        for tx in range(gx):
            here = visible & (min_x <= tx) & (tx < max_x) & (min_y <= ty) & (ty < max_y)
            g = index[here]
            g = g[torch.sort(depths[g], stable=True).indices]  # front to back, ties in index order
            points.append(g)
            slots.append(offsets[g] + (ty - min_y[g]) * (max_x[g] - min_x[g]) + (tx - min_x[g]))
            ranges.append(ranges[-1] + g.numel())
    return torch.cat(points).int(), torch.cat(slots), torch.tensor(ranges), (max_x - min_x) * (max_y - min_y) * visible


def _check_against_the_reference(inputs, threads: int):
    """Bins `inputs` on `threads` threads, asserts the tile lists equal the
    reference's, and returns the render's output, the state and the
    reference's tiles per Gaussian."""
    out, state = _binning(inputs, threads)
    gx, gy = (W + TILE - 1) // TILE, (H + TILE - 1) // TILE
    means2D = state[RECORDS][:, MX:MX + 2]
    depths = inputs["means3D"][:, 2]  # (identity_camera: the view depth is z)
    points, slots, ranges, area = _reference(out.radii, means2D, depths, state[OFFSETS], gx, gy)
    assert torch.equal(state[RANGES], ranges), "tile_ranges"
    assert torch.equal(state[POINTS], points), "point_list: Gaussians or their order within a tile"
    assert torch.equal(_entry_slots(state, gx), slots), "the entries' slots"
    return out, state, area


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_tile_lists_match_the_reference(threads):
    out, state, area = _check_against_the_reference(_scene(30000, seed=threads), threads)
    # (bin_gaussians splits the depth order in parts of at least 4096, two per thread)
    assert (out.radii > 0).sum() > 3 * 4096, "the scene must be split into several parts"
    assert torch.equal(state[TILES_TOUCHED].long(), area.long()), "the reference's rectangles differ from the kernel's"


@pytest.mark.parametrize("depths", ["one", "wide"])
def test_tile_lists_with_tied_or_widely_spread_depths(depths):
    """The depth sort sorts by its top digit and then each bucket on its own:
    with every depth equal (no bits to sort: the index order alone) and with
    depths over six decades (~28 bits: more passes in each bucket, buckets of
    very different sizes)."""
    inputs = _scene(30000, seed=11)
    z = inputs["means3D"][:, 2:]
    if depths == "one":
        new_z = torch.full_like(z, 2.5)
    else:
        new_z = 0.3 * 10 ** (6 * torch.rand(z.shape, generator=torch.Generator().manual_seed(3)))
    # (x and y scaled with z: the same points on screen)
    inputs["means3D"] = torch.cat([inputs["means3D"][:, :2] / z * new_z, new_z], 1).contiguous()
    out, _, _ = _check_against_the_reference(inputs, 2)
    assert (out.radii > 0).sum() > 4096, "the scene must fill more than a few buckets"


def test_tile_lists_do_not_depend_on_the_thread_count():
    inputs = _scene(30000, seed=7)
    _, one = _binning(inputs, 1)
    for threads in (2, 4):
        _, many = _binning(inputs, threads)
        for k in (RANGES, POINTS):
            assert torch.equal(one[k], many[k]), f"state[{k}] differs between 1 and {threads} threads"
        gx = (W + TILE - 1) // TILE
        assert torch.equal(_entry_slots(one, gx), _entry_slots(many, gx)), f"slots differ with {threads} threads"
