// Python bindings of diff_gaussian_rasterization_ks._C.
#include <torch/extension.h>

#include "rasterize_points.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("rasterize_forward_cpu", &rasterize_forward_cpu, "Forward pass of the CPU backend");
    m.def("rasterize_backward_cpu", &rasterize_backward_cpu, "Backward pass of the CPU backend");
    m.def("mark_visible_cpu", &mark_visible_cpu, "Near-plane test of the CPU backend");
#ifdef DGR_WITH_CUDA
    m.attr("has_cuda") = true;
#else
    m.attr("has_cuda") = false;
#endif
}
