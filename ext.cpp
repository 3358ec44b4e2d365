// Python bindings of diff_gaussian_rasterization_ks._C.
#include <torch/extension.h>

#include "rasterize_points.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    // The heavy entry points release the GIL while they run (the arguments
    // are converted before, the results after, with the GIL held), so that
    // rasterizers called from several Python threads run concurrently. They
    // touch no Python object in between.
    using release_gil = pybind11::call_guard<pybind11::gil_scoped_release>;
    m.def("rasterize_forward_cpu", &rasterize_forward_cpu, "Forward pass of the CPU backend", release_gil());
    m.def("rasterize_backward_cpu", &rasterize_backward_cpu, "Backward pass of the CPU backend", release_gil());
    m.def("mark_visible_cpu", &mark_visible_cpu, "Near-plane test of the CPU backend", release_gil());
    m.def("cpu_phase_times", &cpu_phase_times, pybind11::arg("backward") = false,
          "Wall time (ms) of each phase of this thread's last CPU forward (or backward): [(phase, ms)]");
    m.def("release_scratch_cpu", &release_scratch_cpu,
          "Frees the scratch memory the CPU backend keeps between calls");
    // For tests: the binning's int64 prefix sum of the per-Gaussian entry
    // counts (the forward's gaussian_offsets), int32 [P] -> int64 [P + 1].
    m.def("_entry_offsets", &entry_offsets_cpu, pybind11::arg("tiles_touched"));
    // For tests: the shared header's antialiasing ratio det0/det1 and its
    // exact gradient at an undilated 2D covariance (a, b, c).
    m.def("_antialias_ratio_and_grad", [](float a, float b, float c) {
        const glm::vec3 cov(a, b, c);
        const glm::vec3 g = dgr::antialias_ratio_backward(cov);
        return std::make_tuple(dgr::antialias_ratio(cov), g.x, g.y, g.z);
    });
#ifdef DGR_WITH_CUDA
    // `debug` is keyword-or-positional and defaults to False, so a caller
    // written for the CPU signature works unchanged.
    using pybind11::arg;
    m.def("rasterize_forward_cuda", &rasterize_forward_cuda, "Forward pass of the CUDA backend", arg("background"),
          arg("means3D"), arg("colors_precomp"), arg("opacities"), arg("importances"), arg("scales"),
          arg("rotations"), arg("scale_modifier"), arg("cov3D_precomp"), arg("viewmatrix"), arg("projmatrix"),
          arg("tan_fovx"), arg("tan_fovy"), arg("image_height"), arg("image_width"), arg("shs"), arg("sh_degree"),
          arg("campos"), arg("antialiasing"), arg("compute_stats"), arg("pixel_weights"), arg("debug") = false,
          release_gil());
    m.def("rasterize_backward_cuda", &rasterize_backward_cuda, "Backward pass of the CUDA backend",
          arg("background"), arg("means3D"), arg("colors_precomp"), arg("opacities"), arg("importances"),
          arg("scales"), arg("rotations"), arg("scale_modifier"), arg("cov3D_precomp"), arg("viewmatrix"),
          arg("projmatrix"), arg("tan_fovx"), arg("tan_fovy"), arg("shs"), arg("sh_degree"), arg("campos"),
          arg("state"), arg("antialiasing"), arg("dL_dcolor"), arg("dL_dimportance"), arg("dL_dinvdepth"),
          arg("dL_dalpha"), arg("debug") = false, release_gil());
    m.def("mark_visible_cuda", &mark_visible_cuda, "Near-plane test of the CUDA backend", release_gil());
    m.attr("has_cuda") = true;
#else
    m.attr("has_cuda") = false;
#endif
}
