// Python bindings of diff_gaussian_rasterization_ks._C.
#include <torch/extension.h>

#include "rasterize_points.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("rasterize_forward_cpu", &rasterize_forward_cpu, "Forward pass of the CPU backend");
    m.def("rasterize_backward_cpu", &rasterize_backward_cpu, "Backward pass of the CPU backend");
    m.def("mark_visible_cpu", &mark_visible_cpu, "Near-plane test of the CPU backend");
#ifdef DGR_WITH_CUDA
    // `debug` is keyword-or-positional and defaults to False, so a caller
    // written for the CPU signature works unchanged.
    using pybind11::arg;
    m.def("rasterize_forward_cuda", &rasterize_forward_cuda, "Forward pass of the CUDA backend", arg("background"),
          arg("means3D"), arg("colors_precomp"), arg("opacities"), arg("importances"), arg("scales"),
          arg("rotations"), arg("scale_modifier"), arg("cov3D_precomp"), arg("viewmatrix"), arg("projmatrix"),
          arg("tan_fovx"), arg("tan_fovy"), arg("image_height"), arg("image_width"), arg("shs"), arg("sh_degree"),
          arg("campos"), arg("debug") = false);
    m.def("rasterize_backward_cuda", &rasterize_backward_cuda, "Backward pass of the CUDA backend",
          arg("background"), arg("means3D"), arg("colors_precomp"), arg("opacities"), arg("importances"),
          arg("scales"), arg("rotations"), arg("scale_modifier"), arg("cov3D_precomp"), arg("viewmatrix"),
          arg("projmatrix"), arg("tan_fovx"), arg("tan_fovy"), arg("shs"), arg("sh_degree"), arg("campos"),
          arg("state"), arg("dL_dcolor"), arg("dL_dimportance"), arg("debug") = false);
    m.def("mark_visible_cuda", &mark_visible_cuda, "Near-plane test of the CUDA backend");
    m.attr("has_cuda") = true;
#else
    m.attr("has_cuda") = false;
#endif
}
