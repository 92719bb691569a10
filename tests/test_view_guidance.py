"""The embedded prior's sampler: CFG plus view guidance, checked against one DDIM step by hand."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from dream3d.cameras import orbit_cameras
from dream3d.priors.embedded_model import EmbeddedDiffusionModel, EmbeddedModelConfig, build_scheduler, ddim_sample
from dream3d.priors.vocab import without_view

torch.set_num_threads(1)

TINY = EmbeddedModelConfig(
    resolution=8, block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
    attention_head_dim=8, text_hidden_size=16, text_heads=2, text_layers=1,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = EmbeddedDiffusionModel(TINY).eval()
    # A random-init UNet zeroes its output layer; perturb it so eps depends on text and camera.
    with torch.no_grad():
        for p in m.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m, build_scheduler(TINY)


def test_without_view_drops_only_the_suffix():
    assert without_view("An  Orange CHAIR ,back view") == "a orange chair"
    assert without_view("a red cube") == "a red cube"
    assert without_view("a blue tree, overhead view") == "a blue tree"


def test_one_step_matches_the_formula(model):
    m, sched = model
    prompts = ["a red chair, back view", "a green robot"]
    pose = orbit_cameras(torch.tensor([10.0, 20.0]), torch.tensor([180.0, 30.0]), torch.tensor([3.0, 3.0]),
                         torch.tensor([40.0, 40.0]), 8, 8).pose_features()
    s, w = 1.5, 5.0
    got = ddim_sample(m, sched, prompts, pose, s, steps=1, generator=torch.Generator().manual_seed(7),
                      view_guidance_scale=w)

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    ddim = DDIMScheduler.from_config(sched.config)
    ddim.set_timesteps(1)
    t = int(ddim.timesteps[0])
    tt = torch.full((2,), t)
    with torch.no_grad():
        eps_u = m(x, tt, m.embed(["", ""]), pose)
        eps_c = m(x, tt, m.embed(prompts), pose)
        eps_p = m(x, tt, m.embed(["a red chair", "a green robot"]), torch.zeros_like(pose))
    eps = eps_u + s * (eps_c - eps_u) + w * (eps_c - eps_p)
    want = ((ddim.step(eps, t, x).prev_sample.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    assert torch.allclose(got, want, atol=1e-5)
    assert (eps_c - eps_p).abs().max() > 1e-4  # the view term is not trivially zero here


def test_view_guidance_changes_only_rows_with_a_view(model):
    m, sched = model
    prompts = ["a red chair, back view", "a green robot"]
    run = lambda w: ddim_sample(m, sched, prompts, None, 1.5, steps=3,  # noqa: E731
                                generator=torch.Generator().manual_seed(1), view_guidance_scale=w)
    plain, guided = run(0.0), run(5.0)
    assert torch.allclose(plain[1], guided[1], atol=1e-5)  # no suffix and no camera: eps_p = eps_c
    assert not torch.allclose(plain[0], guided[0], atol=1e-3)
