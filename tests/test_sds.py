"""SDS guidance, timestep schedules and view-dependent prompts, against hand computation."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dream3d.cameras import orbit_cameras
from dream3d.guidance.perp_neg import PerpNegWeights
from dream3d.guidance.prompt import PromptProcessor
from dream3d.guidance.sds import SDSConfig, SDSGuidance
from dream3d.guidance.timesteps import DecreasingTimesteps, RandomTimesteps
from dream3d.priors.base import DiffusionPrior
from dream3d.types import RenderOutput


class FixedTimesteps:
    def __init__(self, t: list[int]):
        self.t = torch.tensor(t)

    def sample(self, batch, progress, generator=None):
        return self.t[:batch].clone()


def cams_at(azimuth: list[float], elevation: list[float] | None = None, size: int = 16):
    n = len(azimuth)
    el = torch.tensor(elevation if elevation is not None else [0.0] * n)
    full = lambda v: torch.full((n,), v)  # noqa: E731
    return orbit_cameras(el, torch.tensor(azimuth), full(3.0), full(45.0), size, size)


def render(images: torch.Tensor) -> RenderOutput:
    B, H, W, _ = images.shape
    return RenderOutput(rgb=images, alpha=torch.ones(B, H, W, 1), depth=torch.ones(B, H, W, 1))


def hand_g(prior, x, t, noise, cond, uncond, scale, weighting):
    """w(t) (eps_u + s (eps_c - eps_u) - eps), with the two UNet branches run as separate calls."""
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x + (1 - a).sqrt() * noise
    with torch.no_grad():
        eps_c = prior.predict_eps(x_t, t, cond)
        eps_u = prior.predict_eps(x_t, t, uncond)
    w = {"sds": 1 - a, "uniform": torch.ones_like(a), "fantasia": a.sqrt() * (1 - a)}[weighting]
    return w * (eps_u + scale * (eps_c - eps_u) - noise)


def assert_close_to(actual, expected):
    """Batched and separate UNet calls differ by float rounding (~1e-7), which the CFG scale
    amplifies; a tolerance relative to the largest element still catches any formula error."""
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia"])
def test_pixel_prior_gradient_is_hand_formula(tiny_if_prior, weighting):
    prior, B = tiny_if_prior, 2
    images = torch.rand(B, 16, 16, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    noise = torch.randn(B, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    cams = cams_at([0.0, 170.0])
    prompt = PromptProcessor(prior, "a red cube", negative_prompt="blurry")
    t = [120, 870]
    guidance = SDSGuidance(prior, SDSConfig(guidance_scale=20.0, weighting=weighting), FixedTimesteps(t))
    out = guidance(render(images), cams, prompt, progress=0.3, noise=noise)
    out.loss.backward()

    cond, uncond = prompt(cams)
    g = hand_g(prior, images.detach().permute(0, 3, 1, 2) * 2 - 1, torch.tensor(t), noise, cond, uncond, 20.0, weighting)
    # x = 2 rgb - 1 and d loss / d x = g / B, so d loss / d rgb = 2 g / B (channel-last)
    assert_close_to(images.grad, (2 * g / B).permute(0, 2, 3, 1))
    assert out.logs["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-4)
    assert out.logs["t"] == pytest.approx(sum(t) / B)


def test_view_guidance_adds_what_the_view_suffix_and_camera_change(tiny_embedded_dir):
    from dream3d.priors.loading import load_prior

    prior, B, v = load_prior(str(tiny_embedded_dir), torch.device("cpu")), 2, 3.0
    r = prior.resolution
    images = torch.rand(B, r, r, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    noise = torch.randn(B, 3, r, r, generator=torch.Generator().manual_seed(2))
    cams = cams_at([0.0, 170.0], size=r)
    prompt = PromptProcessor(prior, "a red cube")
    t = [300, 700]
    guidance = SDSGuidance(prior, SDSConfig(guidance_scale=5.0, view_guidance_scale=v), FixedTimesteps(t))
    guidance(render(images), cams, prompt, progress=0.3, noise=noise).loss.backward()

    x = images.detach().permute(0, 3, 1, 2) * 2 - 1
    a = prior.alphas_cumprod[torch.tensor(t)].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x + (1 - a).sqrt() * noise
    cond, uncond = prompt(cams)
    pose = cams.pose_features()
    with torch.no_grad():  # three separate calls: conditional, unconditional, no view suffix and no camera
        eps_c = prior.predict_eps(x_t, torch.tensor(t), cond, pose)
        eps_u = prior.predict_eps(x_t, torch.tensor(t), uncond, pose)
        eps_p = prior.predict_eps(x_t, torch.tensor(t), prompt.cond_plain.expand_as(cond), None)
    g = (1 - a) * (eps_u + 5.0 * (eps_c - eps_u) + v * (eps_c - eps_p) - noise)
    assert_close_to(images.grad, (2 * g / B).permute(0, 2, 3, 1))
    assert not torch.allclose(eps_c, eps_p)  # the term is not vacuous


def test_latent_prior_gradient_is_hand_formula_through_encode(tiny_sd_prior, monkeypatch):
    prior, B = tiny_sd_prior, 2
    seen = {}

    def encode_and_keep(images):
        x = original_encode(images)
        x.retain_grad()
        seen["x"] = x
        return x

    original_encode = prior.encode
    monkeypatch.setattr(prior, "encode", encode_and_keep)
    images = torch.rand(B, 64, 64, 3, generator=torch.Generator().manual_seed(3)).requires_grad_()
    noise = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    cams = cams_at([90.0, -20.0], [10.0, 70.0], size=64)
    prompt = PromptProcessor(prior, "a blue sphere")
    t = [500, 40]
    guidance = SDSGuidance(prior, SDSConfig(guidance_scale=100.0), FixedTimesteps(t))
    guidance(render(images), cams, prompt, progress=0.5, noise=noise).loss.backward()

    x = original_encode(images.detach())
    g = hand_g(prior, x.detach(), torch.tensor(t), noise, *prompt(cams), 100.0, "sds")
    assert_close_to(seen["x"].grad, g / B)
    # ... and the render receives that latent gradient pulled back through the (deterministic) encoder
    leaf = images.detach().requires_grad_()
    (expected,) = torch.autograd.grad(original_encode(leaf), leaf, grad_outputs=g / B)
    assert_close_to(images.grad, expected)


class ConstantPrior(DiffusionPrior):
    """Pixel prior whose eps is 1 where the prompt embedding is 1 and 0 where it is 0,
    so the CFG convention and the guards can be checked with exact numbers."""

    resolution = 4

    def __init__(self, value: float = 1.0, takes_camera: bool = False):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler()
        self.value, self.takes_camera, self.cameras = value, takes_camera, []

    def encode(self, images):
        return images.permute(0, 3, 1, 2) * 2 - 1

    def decode(self, x):
        return (x.permute(0, 2, 3, 1) + 1) / 2

    def embed(self, prompts):
        return torch.stack([torch.full((1, 1), 0.0 if p == "" else 1.0) for p in prompts])

    def predict_eps(self, x_t, t, embeds, camera=None):
        self.cameras.append(camera)
        return self.value * embeds.view(-1, 1, 1, 1).expand_as(x_t).clone()


def test_cfg_convention_is_eps_u_plus_s_times_difference():
    prior, s, B = ConstantPrior(), 7.5, 2
    guidance = SDSGuidance(prior, SDSConfig(guidance_scale=s, weighting="uniform"))
    images = torch.rand(B, 4, 4, 3, requires_grad=True)
    cams = cams_at([0.0, 90.0], size=4)
    guidance(render(images), cams, PromptProcessor(prior, "x"), 0.0, noise=torch.zeros(B, 3, 4, 4)).loss.backward()
    # eps_c = 1, eps_u = 0, eps = 0: eps_u + s (eps_c - eps_u) = s (the other convention would give s + 1)
    torch.testing.assert_close(images.grad, torch.full_like(images, 2 * s / B))


def test_nan_predictions_and_grad_clip_are_contained():
    B, images, cams = 2, torch.rand(2, 4, 4, 3, requires_grad=True), cams_at([0.0, 90.0], size=4)
    nan_prior = ConstantPrior(value=float("nan"))
    out = SDSGuidance(nan_prior, SDSConfig())(render(images), cams, PromptProcessor(nan_prior, "x"), 0.0)
    assert not torch.isfinite(out.loss)  # left for the trainer to skip, never silently zeroed

    images.grad = None
    big = ConstantPrior(value=1e6)
    guidance = SDSGuidance(big, SDSConfig(weighting="uniform", grad_clip=0.5))
    guidance(render(images), cams, PromptProcessor(big, "x"), 0.0, noise=torch.zeros(B, 3, 4, 4)).loss.backward()
    torch.testing.assert_close(images.grad, torch.full_like(images, 2 * 0.5 / B))


def test_camera_features_go_to_both_cfg_branches():
    prior = ConstantPrior(takes_camera=True)
    cams = cams_at([0.0, 45.0, 200.0], size=4)
    SDSGuidance(prior, SDSConfig())(render(torch.rand(3, 4, 4, 3)), cams, PromptProcessor(prior, "x"), 0.0)
    feats = cams.pose_features()
    torch.testing.assert_close(prior.cameras[-1], torch.cat([feats, feats]))


def test_noise_from_generator_is_reproducible_and_shape_checked():
    prior, cams = ConstantPrior(), cams_at([0.0, 90.0], size=4)
    guidance, prompt = SDSGuidance(prior, SDSConfig(weighting="uniform")), PromptProcessor(prior, "x")

    def grad(seed):
        images = torch.full((2, 4, 4, 3), 0.5, requires_grad=True)
        guidance(render(images), cams, prompt, 0.2, generator=torch.Generator().manual_seed(seed)).loss.backward()
        return images.grad

    torch.testing.assert_close(grad(5), grad(5))
    assert not torch.allclose(grad(5), grad(6))
    with pytest.raises(ValueError, match="does not match"):
        guidance(render(torch.rand(2, 4, 4, 3)), cams, prompt, 0.0, noise=torch.zeros(2, 4, 4, 4))


def test_sds_timesteps_follow_annealing():
    prior, cams = ConstantPrior(), cams_at([0.0], size=4)
    cfg = SDSConfig(t_min=0.1, t_max=0.9, anneal_at=0.5, anneal_t_max=0.3)
    guidance, prompt = SDSGuidance(prior, cfg), PromptProcessor(prior, "x")
    gen = torch.Generator().manual_seed(0)
    ts = {p: [guidance(render(torch.rand(1, 4, 4, 3)), cams, prompt, p, generator=gen).logs["t"]
              for _ in range(200)] for p in (0.2, 0.8)}
    assert 100 <= min(ts[0.2]) and max(ts[0.2]) <= 900 and max(ts[0.2]) > 600
    assert 100 <= min(ts[0.8]) and max(ts[0.8]) <= 300


# ---------------------------------------------------------------- timestep schedules

def test_random_timesteps_cover_their_range_and_anneal():
    sched, gen = RandomTimesteps(0.02, 0.98, anneal_to=(0.5, 0.5)), torch.Generator().manual_seed(0)
    early, late = sched.sample(4000, 0.4, gen), sched.sample(4000, 0.6, gen)
    assert early.dtype == torch.long and early.shape == (4000,)
    assert early.min() == 20 and early.max() == 980  # both ends reachable, nothing outside
    assert late.min() == 20 and late.max() == 500
    a = sched.sample(8, 0.1, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, sched.sample(8, 0.1, torch.Generator().manual_seed(3)))


def test_random_timesteps_clamp_to_the_table():
    assert RandomTimesteps(0.0, 1.0, num_train_timesteps=10).bounds(0.0) == (0, 9)


def test_decreasing_timesteps_run_from_t_max_to_t_min():
    sched = DecreasingTimesteps(0.02, 0.98)
    assert sched.fraction(0.0) == pytest.approx(0.98) and sched.fraction(1.0) == pytest.approx(0.02)
    fr = [sched.fraction(p / 50) for p in range(51)]
    assert all(a >= b for a, b in zip(fr, fr[1:]))
    t = sched.sample(3, 0.25)
    assert t.tolist() == [round((0.02 + 0.96 * 0.75) * 1000)] * 3
    remapped = DecreasingTimesteps(0.02, 0.98, milestones=((0.0, 0.0), (0.5, 0.6), (1.0, 0.8)))
    assert remapped.fraction(0.25) == pytest.approx(0.02 + 0.96 * (1 - 0.3))
    assert remapped.fraction(0.75) == pytest.approx(0.02 + 0.96 * (1 - 0.7))
    assert remapped.fraction(1.0) == pytest.approx(0.02 + 0.96 * 0.2)


# ---------------------------------------------------------------- view-dependent prompts

def test_view_suffixes_follow_camera_angles(tiny_sd_prior):
    prior = tiny_sd_prior
    cams = cams_at([0.0, 90.0, 180.0, -100.0, 30.0], [0.0, 0.0, 10.0, -5.0, 70.0])
    prompt = PromptProcessor(prior, "a red cube", negative_prompt="ugly")
    views = ["front", "side", "back", "side", "overhead"]
    cond, uncond = prompt(cams)
    assert cond.shape == uncond.shape == (5, 77, 32)
    torch.testing.assert_close(cond, prior.embed([f"a red cube, {v} view" for v in views]))
    torch.testing.assert_close(uncond, prior.embed(["ugly"] * 5))
    assert not torch.allclose(cond[0], cond[1])

    plain = PromptProcessor(prior, "a red cube", view_dependent=False)
    cond, uncond = plain(cams)
    torch.testing.assert_close(cond, prior.embed(["a red cube"] * 5))
    torch.testing.assert_close(uncond, prior.embed([""] * 5))


# ---------------------------------------------------------------- shared pieces: schedule and noise source

def old_sds(prior, cfg: SDSConfig, out, cams, prompt, progress, generator):
    """SDS as `SDSGuidance.__call__` computed it before it was built on `guidance.common`: the
    reference for bit-identical results (i.i.d. noise drawn inline, weighting and loss by hand)."""
    anneal = None if cfg.anneal_at is None else (cfg.anneal_at, 0.5 if cfg.anneal_t_max is None else cfg.anneal_t_max)
    timesteps = RandomTimesteps(0.02 if cfg.t_min is None else cfg.t_min, 0.98 if cfg.t_max is None else cfg.t_max,
                                anneal, prior.num_train_timesteps)
    x = prior.encode(out.rgb).float()
    B = x.shape[0]
    t = timesteps.sample(B, progress, generator).to(x.device)
    with torch.no_grad():
        gen_device = generator.device if generator is not None else x.device
        eps = torch.randn(x.shape, generator=generator, device=gen_device).to(x.device, torch.float32)
        a_t = prior.alphas_cumprod[t].view(B, 1, 1, 1)
        x_t = a_t.sqrt() * x + (1.0 - a_t).sqrt() * eps
        cond, uncond = prompt(cams)
        embeds = [cond, uncond]
        camera = cams.pose_features().to(x.device) if prior.takes_camera else None
        cameras = None if camera is None else [camera, camera]
        if cfg.view_guidance_scale:
            embeds.append(prompt.cond_plain.expand_as(cond))
            cameras = None if cameras is None else [*cameras, torch.zeros_like(camera)]
        n = len(embeds)
        eps_pred = prior.predict_eps(torch.cat([x_t] * n), torch.cat([t] * n), torch.cat(embeds),
                                     camera=None if cameras is None else torch.cat(cameras)).float()
        eps_c, eps_u, *eps_p = eps_pred.chunk(n)
        eps_hat = eps_u + cfg.guidance_scale * (eps_c - eps_u)
        if eps_p:
            eps_hat = eps_hat + cfg.view_guidance_scale * (eps_c - eps_p[0])
        w = {"sds": 1.0 - a_t, "fantasia": a_t.sqrt() * (1.0 - a_t), "uniform": torch.ones_like(a_t)}[cfg.weighting]
        g = w * (eps_hat - eps)
        if cfg.grad_clip is not None:
            g = g.clamp(-cfg.grad_clip, cfg.grad_clip)
    target = (x - g).detach()
    loss = 0.5 * ((x - target) ** 2).sum() / B
    return loss, {"grad_norm": float(g.norm()), "t": float(t.float().mean())}


@pytest.mark.parametrize("case", [
    ("if", SDSConfig(guidance_scale=20.0)),
    ("if", SDSConfig(guidance_scale=100.0, weighting="fantasia", grad_clip=0.05, t_min=0.1, anneal_at=0.5,
                     anneal_t_max=0.3)),
    ("embedded", SDSConfig(guidance_scale=20.0)),
    ("embedded", SDSConfig(guidance_scale=5.0, view_guidance_scale=3.0, t_max=0.5)),
    ("sd", SDSConfig(guidance_scale=100.0, weighting="uniform")),
    # Perp-Neg off: its weights change nothing
    ("embedded", SDSConfig(guidance_scale=20.0, perp_neg=False, perp_neg_weights=PerpNegWeights(f_fs=(9.0, 1.0, 1.0)))),
])
def test_default_sds_is_bit_identical_to_the_old_formula(case, request):
    """Same seed, same numbers: the schedule and i.i.d. noise source draw what the old code drew."""
    from dream3d.priors.loading import load_prior

    kind, cfg = case
    if kind == "embedded":
        prior = load_prior(str(request.getfixturevalue("tiny_embedded_dir")), torch.device("cpu"))
    else:
        prior = request.getfixturevalue({"if": "tiny_if_prior", "sd": "tiny_sd_prior"}[kind])
    size = 64 if kind == "sd" else prior.resolution
    B = 2
    cams = cams_at([0.0, 170.0], [0.0, 30.0], size=size)
    prompt = PromptProcessor(prior, "a red cube", negative_prompt="blurry")
    guidance = SDSGuidance(prior, cfg)
    gen_new, gen_old = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for step, progress in enumerate((0.1, 0.45, 0.8)):  # the RNG stream stays in step across calls and annealing
        base = torch.rand(B, size, size, 3, generator=torch.Generator().manual_seed(step))
        new_images, old_images = base.clone().requires_grad_(), base.clone().requires_grad_()
        new = guidance(render(new_images), cams, prompt, progress, generator=gen_new)
        old_loss, old_logs = old_sds(prior, cfg, render(old_images), cams, prompt, progress, gen_old)
        new.loss.backward()
        old_loss.backward()
        assert torch.equal(new.loss, old_loss)
        assert torch.equal(new_images.grad, old_images.grad)
        assert new.logs == old_logs
        assert torch.equal(gen_new.get_state(), gen_old.get_state())


def test_default_preset_takes_a_noise_source_through_the_config(tiny_embedded_dir):
    """`dream3d generate "a red cube" --set guidance.noise.kind=consistent-flow` on the default preset:
    config resolution and the registry build an SDS whose eps comes from the consistent-flow field."""
    from dream3d import presets, registry
    from dream3d.noise import ConsistentFlowNoise
    from dream3d.priors.loading import load_prior

    cfg = presets.resolve(None, presets.run_flags("a red cube"),
                          ["guidance.noise.kind=consistent-flow", "guidance.noise.consistent_flow.resolution=32"])
    assert cfg.guidance.name == "sds" and cfg.guidance.options.noise.kind == "consistent-flow"
    stage = cfg.stages[0]
    assert stage.guidance.name == "sds" and stage.guidance.options.noise.consistent_flow.resolution == 32
    preset_scale = stage.guidance.options.guidance_scale

    prior = load_prior(str(tiny_embedded_dir), torch.device("cpu"))
    guidance = registry.build("guidance", stage.guidance.name, prior, stage.guidance.options)
    assert isinstance(guidance.modules()["sds_noise"], ConsistentFlowNoise)
    t = [300, 700]
    guidance.timesteps = FixedTimesteps(t)

    sys.path.insert(0, str(Path(__file__).parent))
    from test_noise import sphere_render

    B, r = 2, prior.resolution
    cams = cams_at([0.0, 40.0], [10.0, 10.0], size=r)
    scene = sphere_render(cams)
    images = torch.rand(B, r, r, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    out_r = RenderOutput(rgb=images, alpha=scene.alpha, depth=scene.depth, normal=scene.normal)
    prompt = PromptProcessor(prior, "a red cube")
    guidance(out_r, cams, prompt, 0.3, generator=torch.Generator().manual_seed(5)).loss.backward()

    # the field is fixed (refresh 0): asking the source again gives the eps the call used
    eps = guidance.noise_source(out_r, cams, (B, 3, r, r), torch.Generator().manual_seed(6))
    iid = torch.randn(B, 3, r, r, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(eps, iid, atol=0.5)
    x = images.detach().permute(0, 3, 1, 2) * 2 - 1
    a = prior.alphas_cumprod[torch.tensor(t)].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x + (1 - a).sqrt() * eps
    cond, uncond = prompt(cams)
    pose = cams.pose_features()
    with torch.no_grad():
        eps_c = prior.predict_eps(x_t, torch.tensor(t), cond, pose)
        eps_u = prior.predict_eps(x_t, torch.tensor(t), uncond, pose)
    g = (1 - a) * (eps_u + preset_scale * (eps_c - eps_u) - eps)
    assert_close_to(images.grad, (2 * g / B).permute(0, 2, 3, 1))

    # the field is the run's state: a fresh guidance restored from the checkpointed modules draws the same eps
    state = guidance.modules()["sds_noise"].state_dict()
    assert state["texels"].shape == (6, 32, 32, 3)
    restored = registry.build("guidance", stage.guidance.name, prior, stage.guidance.options)
    restored.modules()["sds_noise"].load_state_dict(state, strict=True)
    torch.testing.assert_close(restored.noise_source(out_r, cams, (B, 3, r, r), torch.Generator().manual_seed(7)), eps)


def test_flat_schedule_keys_map_into_the_timestep_config():
    from dream3d import presets
    from dream3d.config import from_dict, to_dict
    from dream3d.guidance.timesteps import TimestepConfig, build_timesteps

    assert SDSConfig().timesteps == TimestepConfig() and SDSConfig().noise.kind == "iid"
    cfg = SDSConfig(t_min=0.1, t_max=0.9, anneal_at=0.5, anneal_t_max=0.3)
    assert build_timesteps(cfg.timesteps, 1000) == RandomTimesteps(0.1, 0.9, (0.5, 0.3), 1000)
    shared = TimestepConfig(kind="decreasing")
    assert SDSConfig(t_max=0.6, timesteps=shared).timesteps == TimestepConfig(kind="decreasing", t_max=0.6)
    assert shared.t_max == 0.98  # the given schedule config is copied, not changed
    for c in (SDSConfig(), cfg):
        assert from_dict(SDSConfig, to_dict(c)) == c  # what a run's config.yaml stores reloads

    def schedules(preset, overrides=()):
        run = presets.resolve(preset, presets.run_flags("a red cube"), list(overrides))
        return {s.name: build_timesteps(s.guidance.options.timesteps, 1000) for s in run.stages}

    # the presets that set the flat keys keep their schedules
    assert list(schedules("dreamfusion-full").values()) == [RandomTimesteps(0.02, 0.98, (0.5, 0.5), 1000)]
    magic = schedules("magic3d-full")
    assert magic["coarse"] == RandomTimesteps(0.02, 0.98, None, 1000)
    assert magic["refine"] == RandomTimesteps(0.02, 0.5, None, 1000)  # the stage's own t_max: 0.5
    assert list(schedules(None).values()) == [RandomTimesteps(0.02, 0.98, None, 1000)] * 2
    # and the schedule itself is swappable from the command line
    swapped = schedules(None, ["guidance.timesteps.kind=decreasing", "guidance.timesteps.t_min=0.2"])
    assert list(swapped.values()) == [DecreasingTimesteps(0.2, 0.98, ((0.0, 0.0), (1.0, 1.0)), 1000)] * 2
