"""Shared helpers for the test suite."""
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GARDEN_NPZ = REPO.parent / "shared" / "data" / "garden_sfm.npz"

GRAD_NAMES = ("means3D", "means2D", "shs", "colors_precomp", "opacities", "importances", "scales", "rotations",
              "cov3D_precomp")


@pytest.fixture
def garden_path():
    if not GARDEN_NPZ.exists():
        pytest.skip(f"garden data not found at {GARDEN_NPZ} (it lives in ../shared/data beside the repo)")
    return GARDEN_NPZ


def assert_close(name, actual, expected, *, rtol, atol_rel, atol_abs=0.0):
    """|a - e| <= rtol |e| + atol_rel * max|e| + atol_abs, elementwise.

    atol_rel scales with the largest expected magnitude of the quantity, so
    that near-zero entries of a large gradient are judged against the
    float32 rounding of the sums they come from."""
    actual = actual.detach().double()
    expected = expected.detach().double()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    scale = expected.abs().max().item() if expected.numel() else 0.0
    bound = rtol * expected.abs() + atol_rel * scale + atol_abs
    err = (actual - expected).abs()
    bad = err > bound
    if bad.any():
        i = int(torch.argmax((err - bound).flatten()))
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{err.numel()} entries off; worst at flat index {i}: "
            f"got {actual.flatten()[i].item():.8g}, expected {expected.flatten()[i].item():.8g} "
            f"(max |expected| {scale:.3g}, max err {err.max().item():.3g})"
        )
