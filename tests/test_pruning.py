"""The pruning module: scores over cameras, keep-mask rules, presets, and
pruning parameters together with their Adam state."""
import math

import pytest
import torch

from diff_gaussian_rasterization_ks import GaussianRasterizer, pruning
from diff_gaussian_rasterization_ks.camera import make_settings
from diff_gaussian_rasterization_ks.scenes import garden_scene, random_scene

from conftest import assert_close


def cameras_around(scene, n=3):
    """The scene's camera and n - 1 copies moved sideways (new viewpoints)."""
    s = scene.settings
    cams = [s]
    for k in range(1, n):
        w2c = s.viewmatrix.T.clone()
        w2c[0, 3] += 0.3 * k
        cams.append(make_settings(w2c, s.image_width, s.image_height, s.tanfovx, s.tanfovy, bg=s.bg,
                                  sh_degree=s.sh_degree))
    return cams


def test_scores_add_up_over_cameras_and_match_the_statistics():
    scene = random_scene(120, 40, 56, seed=41, sh_degree=1)
    cams = cameras_around(scene)
    per_view = [GaussianRasterizer(c).render(**scene.inputs, stats=True).stats for c in cams]
    total = pruning.compute_scores(scene.inputs, cams, "accum_weight", progress=False)
    assert_close("accum_weight", total, sum(s.accum_weight.double() for s in per_view), rtol=1e-6, atol_rel=0,
                 atol_abs=1e-6)
    maxw = pruning.compute_scores(scene.inputs, cams, "max_weight", progress=False)
    assert torch.equal(maxw, torch.stack([s.max_weight for s in per_view]).amax(0))
    hits = pruning.compute_scores(scene.inputs, cams, "hit_count", progress=False)
    assert torch.equal(hits, sum(s.hit_count for s in per_view).float())
    grad = pruning.compute_scores(scene.inputs, cams, "importance_grad", progress=False)
    assert_close("importance_grad vs accum_weight", grad, total, rtol=1e-5, atol_rel=0, atol_abs=1e-5)
    with pytest.raises(ValueError, match="score: expected one of"):
        pruning.compute_scores(scene.inputs, cams, "volume")


def test_keep_rules():
    scores = torch.tensor([5.0, 1.0, 3.0, 0.0, 1.0, 10.0])
    assert pruning.keep_by_ratio(scores, 0.5).tolist() == [True, False, True, False, False, True]
    # ties broken by index: the first 1.0 stays
    assert pruning.keep_by_ratio(scores, 4 / 6).tolist() == [True, True, True, False, False, True]
    assert pruning.keep_by_ratio(scores, 0.0).sum() == 0 and pruning.keep_by_ratio(scores, 1.0).all()
    assert pruning.keep_by_threshold(scores, 3.0).tolist() == [True, False, True, False, False, True]
    # total 20: 10 (50%), +5 (75%), +3 (90%), +1 (95%), +1 (100%)
    assert pruning.keep_by_cumulative_share(scores, 0.75).tolist() == [True, False, False, False, False, True]
    assert pruning.keep_by_cumulative_share(scores, 0.76).tolist() == [True, False, True, False, False, True]
    assert pruning.keep_by_cumulative_share(scores, 1.0).sum() == 5  # the zero-score one is never needed
    with pytest.raises(ValueError, match="keep_ratio"):
        pruning.keep_by_ratio(scores, 1.5)


def test_presets_give_masks():
    scene = random_scene(150, 40, 56, seed=42)
    cams = cameras_around(scene, 2)
    for name, preset in pruning.PRESETS.items():
        assert preset.citation
        keep = preset(scene.inputs, cams, progress=False)
        assert keep.dtype == torch.bool and keep.shape == (150,), name
        assert 0 < keep.sum() < 150, f"{name} kept {int(keep.sum())}"
    assert pruning.PRESETS["blending_weight"](scene.inputs, cams, progress=False).sum() == 75


def test_prune_gaussians_keeps_adam_training():
    torch.manual_seed(0)
    P = 50
    params = {"means": torch.nn.Parameter(torch.randn(P, 3)), "colors": torch.nn.Parameter(torch.rand(P, 3))}
    optimizer = torch.optim.Adam([{"params": [params["means"]], "lr": 0.01},
                                  {"params": [params["colors"]], "lr": 0.05}])
    target = torch.zeros(P, 3)

    def step(p):
        optimizer.zero_grad()
        loss = ((p["means"] - target[: len(p["means"])]) ** 2).sum() + p["colors"].sum()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step(params)
    old_state = {k: {n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in optimizer.state[p].items()}
                 for k, p in params.items()}
    keep = torch.rand(P) > 0.4
    new = pruning.prune_gaussians(params, keep, optimizer)
    assert all(isinstance(t, torch.nn.Parameter) for t in new.values())
    assert optimizer.param_groups[0]["params"][0] is new["means"]
    assert optimizer.param_groups[1]["params"][0] is new["colors"]
    for k, p in new.items():
        assert torch.equal(p, params[k].detach()[keep])
        state = optimizer.state[p]
        assert torch.equal(state["exp_avg"], old_state[k]["exp_avg"][keep])
        assert torch.equal(state["exp_avg_sq"], old_state[k]["exp_avg_sq"][keep])
        assert torch.equal(torch.as_tensor(state["step"]), torch.as_tensor(old_state[k]["step"]))
    assert len(optimizer.state) == 2, "the old parameters' state must be dropped"
    before = new["means"].detach().clone()
    step(new)  # training goes on with the pruned tensors
    assert not torch.equal(before, new["means"].detach())
    with pytest.raises(ValueError, match="expected 50 rows"):
        pruning.prune_gaussians({"x": torch.zeros(49, 3)}, keep)


def psnr(a, b):
    return -10 * math.log10(float(((a - b) ** 2).mean()))


def test_pruning_by_blending_weight_beats_random_pruning_on_garden(garden_path):
    """Half the garden Gaussians removed by accumulated blending weight over
    the three real cameras changes the renders far less than half removed at
    random."""
    scenes = [garden_scene(garden_path, camera=c) for c in range(3)]
    gaussians = scenes[0].inputs  # same Gaussians, three cameras
    cams = [s.settings for s in scenes]
    full = [GaussianRasterizer(c)(**gaussians)[0] for c in cams]
    scores = pruning.compute_scores(gaussians, cams, "accum_weight", progress=False)
    keep_scored = pruning.keep_by_ratio(scores, 0.5)
    keep_random = pruning.keep_by_ratio(torch.rand(len(scores), generator=torch.Generator().manual_seed(0)), 0.5)

    def mean_psnr(keep):
        pruned = {k: (v[keep].contiguous() if v is not None else None) for k, v in gaussians.items()}
        return sum(psnr(GaussianRasterizer(c)(**pruned)[0], f) for c, f in zip(cams, full)) / len(cams)

    scored, random = mean_psnr(keep_scored), mean_psnr(keep_random)
    print(f"garden, 50% pruned: by blending weight {scored:.2f} dB, at random {random:.2f} dB")
    assert scored > random + 10.0
