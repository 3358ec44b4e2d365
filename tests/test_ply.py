"""PLY I/O of 3DGS point clouds (diff_gaussian_rasterization_ks.ply)."""
import numpy as np
import pytest
import torch

plyfile = pytest.importorskip("plyfile")

from diff_gaussian_rasterization_ks import GaussianRasterizer  # noqa: E402
from diff_gaussian_rasterization_ks.ply import (  # noqa: E402
    SH_C0,
    GaussianCloud,
    read_gaussian_ply,
    write_gaussian_ply,
)
from diff_gaussian_rasterization_ks.scenes import random_scene  # noqa: E402

FIELDS = ("means", "sh", "opacity_logits", "log_scales", "rotations")


def random_cloud(P: int, degree: int, seed: int = 0) -> GaussianCloud:
    scene = random_scene(P, 32, 40, seed=seed, sh_degree=degree, offscreen_fraction=0.0, behind_fraction=0.0)
    return GaussianCloud.from_rasterizer_inputs(scene.inputs)


def settings_for(degree: int, seed: int = 0):
    return random_scene(1, 32, 40, seed=seed, sh_degree=degree).settings


def render(cloud: GaussianCloud, degree: int):
    with torch.no_grad():
        return GaussianRasterizer(settings_for(degree))(**cloud.rasterizer_inputs(sh_degree=degree))


def stock_3dgs_names(M: int):
    """The property list the original 3DGS trainer writes, spelled out independently of ply.py."""
    names = ["x", "y", "z", "nx", "ny", "nz"]
    names += [f"f_dc_{i}" for i in range(3)]
    names += [f"f_rest_{i}" for i in range(3 * (M - 1))]
    names += ["opacity"]
    names += [f"scale_{i}" for i in range(3)]
    names += [f"rot_{i}" for i in range(4)]
    return names


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_exact(tmp_path, degree):
    cloud = random_cloud(60, degree, seed=degree)
    path = write_gaussian_ply(tmp_path / "c.ply", cloud)
    back = read_gaussian_ply(path)
    assert back.sh_degree == degree == cloud.sh_degree
    assert len(back) == 60
    for f in FIELDS:
        a, b = getattr(cloud, f), getattr(back, f)
        assert a.dtype == b.dtype == torch.float32, f
        assert torch.equal(a, b), f


@pytest.mark.parametrize("degree", [0, 3])
def test_render_from_file_is_identical(tmp_path, degree):
    cloud = random_cloud(80, degree, seed=7)
    back = read_gaussian_ply(write_gaussian_ply(tmp_path / "c.ply", cloud))
    img_a, imp_a, radii_a = render(cloud, degree)
    img_b, imp_b, radii_b = render(back, degree)
    assert int((radii_a > 0).sum()) > 10  # the test sees something
    assert torch.equal(img_a, img_b)
    assert torch.equal(imp_a, imp_b)
    assert torch.equal(radii_a, radii_b)


def test_header_is_the_stock_3dgs_layout(tmp_path):
    """Binary little-endian, one 'vertex' element, float32 properties with the
    exact names in the exact order: byte for byte what the stock writer makes."""
    cloud = random_cloud(25, 3)
    ours = write_gaussian_ply(tmp_path / "ours.ply", cloud)
    data = plyfile.PlyData.read(str(ours))
    assert not data.text and data.byte_order == "<"
    assert [e.name for e in data.elements] == ["vertex"]
    props = data["vertex"].properties
    assert [p.name for p in props] == stock_3dgs_names(16)
    assert all(p.val_dtype in ("f4", "float32", "float") for p in props), [p.val_dtype for p in props]
    header = ours.read_bytes()[:64]
    assert header.startswith(b"ply\nformat binary_little_endian 1.0\n")

    # the same cloud written the way the original trainer does it
    P = len(cloud)
    feats_dc = cloud.sh[:, :1].transpose(1, 2).reshape(P, -1).numpy()
    feats_rest = cloud.sh[:, 1:].transpose(1, 2).reshape(P, -1).numpy()
    attrs = np.concatenate([cloud.means.numpy(), np.zeros((P, 3), np.float32), feats_dc, feats_rest,
                            cloud.opacity_logits.numpy(), cloud.log_scales.numpy(), cloud.rotations.numpy()], axis=1)
    arr = np.empty(P, dtype=[(n, "f4") for n in stock_3dgs_names(16)])
    arr[:] = list(map(tuple, attrs))
    stock = tmp_path / "stock.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(str(stock))
    assert stock.read_bytes() == ours.read_bytes()


@pytest.mark.parametrize("degree", [0, 3])
def test_other_trainer_layout_loads(tmp_path, degree):
    """Another trainer's file: properties in another order, no normals, extra
    properties (uchar colours, a per-Gaussian extra), doubles, ASCII; the
    f_rest coefficients channel-major."""
    P = 7
    M = (degree + 1) ** 2
    rng = np.random.default_rng(degree)
    values = {n: rng.normal(size=P) for n in stock_3dgs_names(M) if n not in ("nx", "ny", "nz")}
    n_rest = 3 * (M - 1)
    for i in range(n_rest):  # recognisable: f_rest_i = 1000 + i
        values[f"f_rest_{i}"] = np.full(P, 1000.0 + i)
    names = list(values)[::-1]  # reversed order
    dtype = [(n, "f8") for n in names] + [("red", "u1"), ("green", "u1"), ("blue", "u1"), ("semantic", "f4")]
    arr = np.empty(P, dtype=dtype)
    for n in names:
        arr[n] = values[n]
    arr["red"] = 10
    arr["semantic"] = 3.5
    path = tmp_path / "other.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")], text=True).write(str(path))

    cloud = read_gaussian_ply(path)
    assert cloud.sh_degree == degree and cloud.sh.shape == (P, M, 3)
    f = lambda n: torch.tensor(values[n], dtype=torch.float32)  # noqa: E731
    assert torch.equal(cloud.means, torch.stack([f("x"), f("y"), f("z")], 1))
    assert torch.equal(cloud.sh[:, 0], torch.stack([f(f"f_dc_{c}") for c in range(3)], 1))
    for c in range(3):
        for k in range(M - 1):
            assert float(cloud.sh[0, 1 + k, c]) == 1000.0 + c * (M - 1) + k
    assert torch.equal(cloud.opacity_logits[:, 0], f("opacity"))
    assert torch.equal(cloud.log_scales, torch.stack([f(f"scale_{i}") for i in range(3)], 1))
    assert torch.equal(cloud.rotations, torch.stack([f(f"rot_{i}") for i in range(4)], 1))
    # and it renders
    img, _, radii = GaussianRasterizer(settings_for(degree))(**cloud.rasterizer_inputs())
    assert torch.isfinite(img).all()


def test_fewer_sh_bands_than_rendered_and_truncation(tmp_path):
    cloud = random_cloud(30, 3)
    inputs = cloud.rasterizer_inputs(sh_degree=1)
    assert inputs["shs"].shape == (30, 4, 3)
    with pytest.raises(ValueError, match="sh_degree"):
        read_gaussian_ply(write_gaussian_ply(tmp_path / "d0.ply", cloud.with_sh_degree(0))).rasterizer_inputs(
            sh_degree=2)
    padded = cloud.with_sh_degree(0).with_sh_degree(3)
    assert padded.sh_degree == 3 and torch.equal(padded.sh[:, 0], cloud.sh[:, 0]) and not padded.sh[:, 1:].any()


def test_activations_and_from_activated():
    cloud = random_cloud(40, 2)
    inputs = cloud.rasterizer_inputs()
    assert torch.allclose(inputs["opacities"], torch.sigmoid(cloud.opacity_logits))
    assert torch.allclose(inputs["scales"], torch.exp(cloud.log_scales))
    assert torch.allclose(inputs["rotations"].norm(dim=1), torch.ones(40))
    assert inputs["means2D"].shape == (40, 3) and not inputs["means2D"].any()
    assert inputs["colors_precomp"] is None and inputs["cov3D_precomp"] is None
    colors = torch.rand(40, 3)
    c = GaussianCloud.from_activated(inputs["means3D"], inputs["opacities"], inputs["scales"], inputs["rotations"],
                                     colors=colors)
    assert c.sh_degree == 0
    assert torch.allclose(c.sh[:, 0] * SH_C0 + 0.5, colors, atol=1e-6)
    assert torch.allclose(c.opacities, inputs["opacities"], atol=1e-6)
    assert torch.allclose(c.scales, inputs["scales"], rtol=1e-5)


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_gaussian_ply(tmp_path / "missing.ply")
    # a plain coloured point cloud (e.g. COLMAP's points3D.ply)
    pts = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    plain = tmp_path / "plain.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(pts, "vertex")]).write(str(plain))
    with pytest.raises(ValueError, match="point cloud"):
        read_gaussian_ply(plain)
    # a wrong number of SH coefficients
    names = stock_3dgs_names(4)[:-8] + ["f_rest_9", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1",
                                        "rot_2", "rot_3"]
    arr = np.zeros(2, dtype=[(n, "f4") for n in names])
    bad = tmp_path / "bad.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(str(bad))
    with pytest.raises(ValueError, match="f_rest"):
        read_gaussian_ply(bad)
    with pytest.raises(ValueError):
        GaussianCloud(torch.zeros(3, 3), torch.zeros(3, 2, 3), torch.zeros(3, 1), torch.zeros(3, 3),
                      torch.zeros(3, 4))


def test_empty_cloud_round_trip(tmp_path):
    cloud = random_cloud(5, 1).subset(torch.zeros(5, dtype=torch.bool))
    back = read_gaussian_ply(write_gaussian_ply(tmp_path / "empty.ply", cloud))
    assert len(back) == 0 and back.sh_degree == 1
