"""Picks the compiled kernels for a device: CPU tensors run the CPU backend,
CUDA tensors the CUDA backend. Where no compiled kernel exists, the caller
falls back to the pure-PyTorch reference."""
import warnings
from typing import NamedTuple, Optional

import torch

try:
    from . import _C
except ImportError as error:  # not built: the reference implementation still works
    _C = None
    _IMPORT_ERROR: Optional[ImportError] = error
else:
    _IMPORT_ERROR = None


class Kernels(NamedTuple):
    forward: object
    backward: object
    mark_visible: object


def kernels_for(device: torch.device) -> Optional[Kernels]:
    """The compiled kernels for `device`, or None if this build has none."""
    if _C is None:
        return None
    if device.type == "cpu":
        return Kernels(_C.rasterize_forward_cpu, _C.rasterize_backward_cpu, _C.mark_visible_cpu)
    if device.type == "cuda" and _C.has_cuda:
        return Kernels(_C.rasterize_forward_cuda, _C.rasterize_backward_cuda, _C.mark_visible_cuda)
    return None


def empty_cpu_cache() -> None:
    """Frees the scratch memory the CPU backend keeps between calls.

    The CPU backend keeps the memory of its freed scratch buffers and
    returned tensors (maps, forward state, gradients: at most 1 GiB in all)
    for the next call, which saves the page faults of fresh memory (up to a
    fifth of a large render).
    Call this to hand that memory back, e.g. after rendering a huge scene once.
    """
    if _C is not None:
        _C.release_scratch_cpu()


_warned = set()


def warn_fallback(device: torch.device) -> None:
    if device.type in _warned:
        return
    _warned.add(device.type)
    why = f"the compiled extension failed to import ({_IMPORT_ERROR})" if _C is None else "this build has no kernels for it"
    warnings.warn(
        f"diff_gaussian_rasterization_ks: no compiled backend for {device.type} tensors ({why}); "
        "using the pure-PyTorch reference implementation, which is slow and memory-hungry",
        RuntimeWarning,
        stacklevel=3,
    )
