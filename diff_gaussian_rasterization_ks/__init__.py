"""Differentiable 3D Gaussian Splatting rasterizer with an importance channel.

    from diff_gaussian_rasterization_ks import GaussianRasterizationSettings, GaussianRasterizer
    image, importance_map, radii = GaussianRasterizer(settings)(means3D=..., means2D=..., ...)

CPU tensors run the compiled CPU backend, CUDA tensors the CUDA backend;
`rasterize_reference` is the pure-PyTorch implementation of the same
algorithm (the test oracle, and the fallback where no kernel is compiled).
"""
from .settings import GaussianRasterizationSettings
from .rasterizer import GaussianRasterizer, GaussianStats, RenderOutput, rasterize_gaussians
from .reference import ReferenceOutput, rasterize_reference
from ._backend import empty_cpu_cache
from . import camera

__all__ = [
    "GaussianRasterizationSettings",
    "GaussianRasterizer",
    "RenderOutput",
    "GaussianStats",
    "rasterize_gaussians",
    "rasterize_reference",
    "ReferenceOutput",
    "camera",
    "empty_cpu_cache",
]
