"""Densification as a strategy with caller-owned state: renders without side effects,
exact resume through the module's state_dict, and the strategy's rules on a hand-built scene."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from dream3d.cameras import orbit_cameras
from dream3d.representations.gaussian_strategy import STATE_KEYS, DensifyStrategy, new_state
from dream3d.representations.gaussians import PARAMS, GaussianConfig, Gaussians
from dream3d.training.checkpoint import load_checkpoint, save_checkpoint


def view(step: int, res: int = 16):
    """Two cameras that turn with the step (a deterministic stand-in for the trainer's sampler)."""
    az = torch.tensor([37.0 * step, 37.0 * step + 150.0])
    return orbit_cameras(torch.tensor([10.0, -15.0]), az, torch.full((2,), 2.8), torch.full((2,), 45.0), res, res)


def resume_config() -> GaussianConfig:
    # Growth everywhere, and every grower larger than split_scale: each pass splits (draws noise).
    return GaussianConfig(n_init=60, grad_threshold=1e-6, split_scale=1e-3, densify_every=4, densify_from=0.0,
                          densify_until=1.0, max_gaussians=1000, prune_opacity=1e-4)


def build() -> tuple[Gaussians, torch.optim.Adam]:
    torch.manual_seed(0)  # as the pipeline seeds the global RNG before building a stage
    rep = Gaussians(resume_config())
    opt = torch.optim.Adam([{"params": ps, "lr": 1e-2, "name": n} for n, ps in rep.param_groups().items()],
                           eps=1e-15)
    return rep, opt


def train(rep: Gaussians, opt: torch.optim.Adam, start: int, stop: int, total: int) -> None:
    for step in range(start, stop):
        cams = view(step)
        out = rep.render(cams, torch.full((2, 3), 0.5))
        opt.zero_grad(set_to_none=True)
        ((out.rgb - 0.2) ** 2).mean().backward()
        opt.step()
        rep.on_step(step, step / total, out, optimizer=opt)


def test_resume_from_state_dict_is_bit_identical():
    """Checkpoint mid-way between two densify passes (accumulated statistics pending),
    rebuild in a fresh model and optimiser, continue: every tensor equals an
    uninterrupted run's. Split offsets therefore cannot come from the global RNG,
    which a resumed process has not advanced the same way."""
    total, cut = 18, 10
    full, full_opt = build()
    train(full, full_opt, 0, total, total)

    first, first_opt = build()
    train(first, first_opt, 0, cut, total)
    n_cut = first.num_gaussians
    saved = copy.deepcopy(first.state_dict()), copy.deepcopy(first_opt.state_dict())
    del first, first_opt

    resumed, resumed_opt = build()  # a new process: built again, then loaded
    resumed.load_state_dict(saved[0], strict=True)
    resumed_opt.load_state_dict(saved[1])
    train(resumed, resumed_opt, cut, total, total)

    assert 60 < n_cut < full.num_gaussians  # densification ran before and after the cut
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for p, q in zip(full_opt.state.values(), resumed_opt.state.values()):
        for k in p:
            assert torch.equal(p[k], q[k]), k


# ---------------------------------------------------------------- renders
def test_render_has_no_side_effects():
    """A render changes neither the state_dict nor any attribute of the module; what
    densification needs comes back in out.info."""
    rep, _ = build()
    before = {k: v.clone() for k, v in rep.state_dict().items()}
    attrs = dict(vars(rep))
    members = {name: dict(getattr(rep, name)) for name in ("_parameters", "_buffers", "_modules")}
    out = rep.render(view(0), torch.full((2, 3), 0.5))
    assert vars(rep).keys() == attrs.keys() and all(vars(rep)[k] is v for k, v in attrs.items())
    for name, d in members.items():
        now = getattr(rep, name)
        assert now.keys() == d.keys() and all(now[k] is v for k, v in d.items()), name
    after = rep.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    info = out.info
    assert info["means2d"].shape == (2, rep.num_gaussians, 2) and info["drawn"].shape == (2, rep.num_gaussians)
    assert info["drawn"].dtype == torch.bool and (info["width"], info["height"], info["n_cameras"]) == (16, 16, 2)
    out.rgb.mean().backward()
    assert info["means2d"].grad is not None and info["means2d"].grad.abs().max() > 0


# ---------------------------------------------------------------- the strategy on a hand-built scene
def hand_built(cfg: GaussianConfig) -> dict[str, nn.Parameter]:
    """22 Gaussians in six groups, by index:
    0-3 high gradient, small (clone)       4-7 high gradient, large (split)
    8-11 low gradient, faint (prune)       12-15 low gradient, huge (prune)
    16-19 low gradient, normal (kept)      20-21 high gradient, so huge their children are still too big
    """
    size = torch.tensor([0.5 * cfg.split_scale] * 4 + [4 * cfg.split_scale] * 4 + [cfg.split_scale] * 4
                        + [2 * cfg.prune_scale] * 4 + [cfg.split_scale] * 4 + [3.2 * cfg.prune_scale] * 2)
    opacity = torch.full((22,), 0.5)
    opacity[8:12] = 0.2 * cfg.prune_opacity
    values = {"means": torch.arange(66.0).view(22, 3) / 66.0, "log_scales": size.log()[:, None].expand(22, 3),
              "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(22, 4), "opacity_logits": torch.logit(opacity),
              "sh0": torch.zeros(22, 1, 3), "sh_rest": torch.zeros(22, 0, 3)}
    return {name: nn.Parameter(values[name].clone()) for name in PARAMS}


def hand_state(cfg: GaussianConfig, seed: int = 3) -> dict[str, torch.Tensor]:
    state = new_state(22, seed)
    high = torch.zeros(22, dtype=torch.bool)
    high[:8] = high[20:] = True
    state["grad_sum"][:] = torch.where(high, 3.0, 0.5) * cfg.grad_threshold * 2
    state["grad_count"][:] = 2
    return state


def test_densify_counts_and_rows_on_a_hand_built_scene():
    cfg = GaussianConfig()
    strategy = DensifyStrategy.from_config(cfg)
    params, state = hand_built(cfg), hand_state(cfg)
    means = params["means"].detach().clone()
    rng_before = state["rng_state"].clone()
    counts = strategy.densify_and_prune(params, None, state)
    # 6 split (4-7, 20-21) and 4 cloned; pruned: 4 faint, 4 huge, and the 4 children of 20-21
    assert counts == {"cloned": 4, "split": 6, "pruned": 12, "total": 22 + 4 + 6 - 12}
    assert all(p.shape[0] == 20 for p in params.values())
    # rows: kept originals (0-3, 16-19), the clones of 0-3, then the children of 4-7 (first children, second)
    torch.testing.assert_close(params["means"][:4].detach(), means[:4])
    torch.testing.assert_close(params["means"][4:8].detach(), means[16:20])
    torch.testing.assert_close(params["means"][8:12].detach(), means[:4])
    size = params["log_scales"].detach().exp()[:, 0]
    torch.testing.assert_close(size[12:], torch.full((8,), 4 * cfg.split_scale / 1.6))
    assert state["grad_sum"].shape == state["grad_count"].shape == (20,) and state["grad_sum"].abs().max() == 0
    assert not torch.equal(state["rng_state"], rng_before)  # the split drew from the state's generator

    # The children's offsets come from the seed alone: the same seed splits alike, another differently.
    again = hand_built(cfg)
    strategy.densify_and_prune(again, None, hand_state(cfg, seed=3))
    assert torch.equal(again["means"], params["means"])
    other = hand_built(cfg)
    strategy.densify_and_prune(other, None, hand_state(cfg, seed=4))
    assert torch.equal(other["means"][:12], params["means"][:12])
    assert not torch.equal(other["means"][12:], params["means"][12:])


def test_max_gaussians_keeps_the_largest_gradients():
    cfg = GaussianConfig(max_gaussians=24)
    params, state = hand_built(cfg), hand_state(cfg)
    state["grad_sum"][:8] = torch.arange(8.0) + 10.0  # with room for two, 6 and 7 win (both split)
    counts = DensifyStrategy.from_config(cfg).densify_and_prune(params, None, state)
    # pruned: 4 faint, 4 huge, and 20-21 (too huge, and left unsplit)
    assert counts == {"cloned": 0, "split": 2, "pruned": 10, "total": 22 + 2 - 10}


def test_step_post_backward_reads_the_info_and_keeps_the_window():
    cfg = GaussianConfig(densify_every=5, densify_from=0.2, densify_until=0.5)
    strategy = DensifyStrategy.from_config(cfg)
    params, state = hand_built(cfg), new_state(22, seed=0)
    means2d = torch.zeros(2, 22, 2, requires_grad=True)
    means2d.grad = torch.zeros(2, 22, 2)
    means2d.grad[0, 0] = torch.tensor([0.1, 0.0])  # x 0.5 * width * cameras = 1.0 in NDC units
    means2d.grad[1, 1] = torch.tensor([0.0, 0.3])  # y 0.5 * height * cameras: 0.3 * 4 = 1.2, but not drawn
    drawn = torch.ones(2, 22, dtype=torch.bool)
    drawn[1, 1] = False
    info = {"means2d": means2d, "drawn": drawn, "width": 10, "height": 4, "n_cameras": 2}
    assert strategy.step_post_backward(params, None, state, 1, 0.1, info) is None  # before the window
    assert state["grad_sum"][0].item() == pytest.approx(1.0) and state["grad_sum"][1] == 0
    assert state["grad_count"][0] == 2 and state["grad_count"][1] == 1
    stale = dict(info, means2d=torch.zeros(2, 21, 2, requires_grad=True))
    stale["means2d"].grad = torch.ones(2, 21, 2)
    strategy.step_post_backward(params, None, state, 2, 0.1, stale)  # another number of Gaussians: ignored
    assert state["grad_count"][0] == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert strategy.step_post_backward(params, None, state, 5, 0.3, info) is None  # no optimiser: skipped
    assert any("optimizer" in str(w.message) for w in caught) and params["means"].shape[0] == 22
    opt = torch.optim.Adam(list(params.values()), lr=1e-3)
    counts = strategy.step_post_backward(params, opt, state, 10, 0.3, info)
    assert counts is not None and counts["total"] == params["means"].shape[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in params.values()}
    state["grad_sum"] += 1.0
    strategy.step_post_backward(params, opt, state, 11, 0.5, info)  # past the window: statistics cleared
    assert state["grad_sum"].abs().max() == 0 and state["grad_count"].abs().max() == 0


# ---------------------------------------------------------------- checkpoints
def test_strategy_state_travels_in_checkpoints(tmp_path):
    rep, opt = build()
    train(rep, opt, 0, 6, 18)  # one pass at step 4, then statistics from step 5
    assert rep.grad_count.max() > 0
    save_checkpoint(tmp_path, 6, {"representation": rep}, opt, torch.Generator())
    fresh, fresh_opt = build()
    load_checkpoint(tmp_path, {"representation": fresh}, fresh_opt, torch.Generator())
    for key in STATE_KEYS:
        assert torch.equal(getattr(fresh, key), getattr(rep, key)), key
    assert fresh.rng_state.dtype == torch.uint8

    # A state_dict saved before the strategy's state existed still loads (statistics cleared).
    old = {k: v for k, v in rep.state_dict().items() if k not in STATE_KEYS}
    legacy = Gaussians(resume_config())
    rng = legacy.rng_state.clone()
    legacy.load_state_dict(old, strict=True)
    assert legacy.num_gaussians == rep.num_gaussians and legacy.grad_sum.shape == (rep.num_gaussians,)
    assert legacy.grad_sum.abs().max() == 0 and torch.equal(legacy.rng_state, rng)


def test_seeds_follow_the_global_rng():
    torch.manual_seed(5)
    a = Gaussians(GaussianConfig(n_init=10))
    torch.manual_seed(5)
    b = Gaussians(GaussianConfig(n_init=10))
    torch.manual_seed(6)
    c = Gaussians(GaussianConfig(n_init=10))
    assert torch.equal(a.rng_state, b.rng_state) and not torch.equal(a.rng_state, c.rng_state)
