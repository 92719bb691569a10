"""VSD, coupled CSD, classifier-score CSD, CFD and GSD against hand-written formulas on tiny
seeded priors (Stable Diffusion latent, DeepFloyd IF pixel, the embedded camera-aware prior)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from dream3d.cameras import orbit_cameras
from dream3d.config import from_dict, to_dict
from dream3d.errors import UserError
from dream3d.guidance.cfd import CFDConfig, CFDGuidance
from dream3d.guidance.csd import CSDConfig, CSDGuidance
from dream3d.guidance.csd_classifier import ClassifierScoreConfig, ClassifierScoreGuidance
from dream3d.guidance.gsd import GSDConfig, GSDGuidance
from dream3d.guidance.ism import ISMConfig, ISMGuidance
from dream3d.guidance.prompt import PromptProcessor
from dream3d.guidance.sds import SDSConfig
from dream3d.guidance.timesteps import DecreasingTimesteps
from dream3d.guidance.view_groups import ViewGroup, expand_cameras
from dream3d.guidance.vsd import VSDConfig, VSDGuidance
from dream3d.noise import NoiseConfig
from dream3d.priors.base import DiffusionPrior
from dream3d.types import RenderOutput

sys.path.insert(0, str(Path(__file__).parent))
from test_noise import sphere_render  # noqa: E402

torch.set_num_threads(1)


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def embedded_prior(tmp_path_factory):
    """A tiny random embedded prior (16x16, camera-conditioned), saved and reopened."""
    from dream3d.priors.embedded import EmbeddedPrior
    from dream3d.priors.embedded_model import EmbeddedDiffusionModel, EmbeddedModelConfig, build_scheduler
    from dream3d.priors.prior_folder import save_prior

    cfg = EmbeddedModelConfig(resolution=16, block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
                              attention_head_dim=8, text_hidden_size=16, text_heads=2, text_layers=1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = EmbeddedDiffusionModel(cfg)
        # a trained prior's zero-camera and camera predictions differ; make sure this random one's do too
        for p in model.unet.class_embedding.parameters():
            p.data.normal_(0, 0.5)
    return EmbeddedPrior(save_prior(model, build_scheduler(cfg), tmp_path_factory.mktemp("prior") / "tiny"))


def fresh_prior(kind: str, request):
    """Priors VSD may add adapters to: opened anew so the session-wide ones stay pristine."""
    from dream3d.priors.loading import load_prior

    if kind == "sd":
        return load_prior(str(request.getfixturevalue("tiny_sd_dir")), device="cpu", resolution=64)
    if kind == "if":
        return load_prior(str(request.getfixturevalue("tiny_if_dir")), device="cpu", resolution=16)
    from dream3d.priors.embedded import EmbeddedPrior

    return EmbeddedPrior(request.getfixturevalue("embedded_prior").path)


def shared_prior(kind: str, request):
    return {"sd": "tiny_sd_prior", "if": "tiny_if_prior", "embedded": "embedded_prior"}[kind]


PRIORS = ["sd", "if", "embedded"]


class FixedTimesteps:
    def __init__(self, t: list[int]):
        self.t = torch.tensor(t)

    def sample(self, batch, progress, generator=None):
        return self.t[:batch].clone()


def cams_at(azimuth: list[float], size: int, elevation: float = 10.0):
    n = len(azimuth)
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return orbit_cameras(full(elevation), torch.tensor(azimuth), full(3.0), full(45.0), size, size)


def render_size(prior) -> int:
    return 64 if prior.name == "stable-diffusion" else prior.resolution


def leaf_x(prior, images, monkeypatch):
    """Make `prior.encode` return one leaf tensor, so its .grad is d loss / d x directly."""
    x = prior.encode(images).detach().float().requires_grad_()
    monkeypatch.setattr(prior, "encode", lambda imgs: x)
    return x


def render(images):
    B, H, W, _ = images.shape
    return RenderOutput(rgb=images, alpha=torch.ones(B, H, W, 1), depth=torch.full((B, H, W, 1), 2.0))


def noised(prior, x, t, noise):
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    return a, a.sqrt() * x + (1 - a).sqrt() * noise


def assert_close_to(actual, expected):
    """Batched and separate UNet calls differ by float rounding, which CFG scales amplify."""
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=2e-4 * expected.abs().max().item())


class NaNPrior(DiffusionPrior):
    """A pixel prior without a UNet whose predictions are NaN (an fp16 overflow stand-in)."""

    resolution = 8
    name = "nan-prior"

    def __init__(self):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler()

    def encode(self, images):
        return images.permute(0, 3, 1, 2) * 2 - 1

    def decode(self, x):
        return (x.permute(0, 2, 3, 1) + 1) / 2

    def embed(self, prompts):
        return torch.zeros(len(prompts), 1, 1)

    def predict_eps(self, x_t, t, embeds, camera=None):
        return torch.full_like(x_t, float("nan"))


# ---------------------------------------------------------------- configs and view groups

def test_configs_parse_nested_schedules_and_noise():
    cfg = from_dict(VSDConfig, {"timesteps": {"kind": "decreasing", "milestones": [[0, 0], [1, 0.5]]},
                                "noise": {"kind": "consistent-flow", "consistent_flow": {"refresh": 0.2}}})
    assert cfg.timesteps.kind == "decreasing" and cfg.timesteps.milestones == ((0.0, 0.0), (1.0, 0.5))
    assert cfg.noise.consistent_flow.refresh == 0.2
    assert CFDConfig().timesteps.kind == "decreasing" and CFDConfig().noise.kind == "consistent-flow"
    assert GSDConfig().noise.kind == "geometry-aware"
    with pytest.raises(UserError):
        from_dict(CSDConfig, {"two_d": "lora"})
    assert from_dict(CSDConfig, {"two_d": "vsd", "vsd": {"lora_rank": 8}}).vsd.lora_rank == 8
    for config in (VSDConfig, CSDConfig, ClassifierScoreConfig, CFDConfig, GSDConfig, ISMConfig):
        assert from_dict(config, to_dict(config())) == config()  # what a run's config.yaml stores reloads


def test_expand_cameras_makes_groups_around_each_camera():
    cams = cams_at([30.0, -100.0], 8, elevation=20.0)
    group = expand_cameras(cams, ViewGroup(4, 90.0))
    assert group.batch_size == 8
    torch.testing.assert_close(group.c2w[::4], cams.c2w, atol=1e-5, rtol=0)
    assert group.azimuth[:4].tolist() == pytest.approx([30.0, 120.0, -150.0, -60.0])
    assert torch.equal(group.elevation, cams.elevation.repeat_interleave(4))
    # the views of a group are 90 degrees apart around the vertical axis
    eyes = group.c2w[:4, :3, 3]
    flat = torch.nn.functional.normalize(eyes[:, [0, 2]], dim=-1)
    assert float((flat[0] * flat[1]).sum()) == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------- VSD

def perturb_lora(guidance: VSDGuidance, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in guidance.state.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("kind", PRIORS)
def test_vsd_gradient_is_hand_formula(kind, request, monkeypatch):
    prior = fresh_prior(kind, request)
    B, size = 2, render_size(prior)
    images = torch.rand(B, size, size, 3, generator=torch.Generator().manual_seed(1))
    cams = cams_at([10.0, 160.0], size)
    word = "a red cube"
    prompt = PromptProcessor(prior, word, negative_prompt="" if kind == "embedded" else "blurry")
    t = [150, 700]
    guidance = VSDGuidance(prior, VSDConfig(guidance_scale=7.5, lora_guidance_scale=2.0), timesteps=FixedTimesteps(t))
    perturb_lora(guidance)
    x = leaf_x(prior, images, monkeypatch)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    out = guidance(render(images), cams, prompt, 0.3, noise=noise, generator=torch.Generator().manual_seed(3))
    out.loss.backward()

    tt = torch.tensor(t)
    a, x_t = noised(prior, x.detach(), tt, noise)
    cond, uncond = prompt(cams)
    pose = cams.pose_features()
    cam = pose if prior.takes_camera else None
    plain = prompt.cond_plain.expand(B, *prompt.cond_plain.shape)
    with torch.no_grad():
        eps_c, eps_u = prior.predict_eps(x_t, tt, cond, cam), prior.predict_eps(x_t, tt, uncond, cam)
        with guidance.lora(pose):
            phi_c = prior.predict_eps(x_t, tt, plain, cam)
        with guidance.lora(torch.zeros_like(pose)):
            phi_0 = prior.predict_eps(x_t, tt, plain, None if cam is None else torch.zeros_like(pose))
    eps_pre = eps_u + 7.5 * (eps_c - eps_u)
    eps_phi = phi_0 + 2.0 * (phi_c - phi_0)
    g = (1 - a) * (eps_pre - eps_phi)
    assert_close_to(x.grad, g / B)  # the LoRA loss trains on a detached x: no path into the render
    assert out.logs["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-3)
    # ... and the LoRA parameters did receive the diffusion loss's gradient
    assert all(p.grad is not None for p in guidance.state.lora.values())


def test_vsd_camera_embedding_acts_as_a_class_embedding(request):
    """The camera MLP's output joins the time embedding exactly where diffusers adds a class
    embedding: compare with the same UNet built with class_embed_type='identity'."""
    from diffusers import UNet2DConditionModel

    prior = fresh_prior("sd", request)
    guidance = VSDGuidance(prior)
    perturb_lora(guidance)  # LoRA and camera MLP both non-trivial
    reference = UNet2DConditionModel.from_config({**prior.unet.config, "class_embed_type": "identity"})
    merged = {k.replace(".base_layer", ""): v for k, v in prior.unet.state_dict().items() if "lora_" not in k}
    reference.load_state_dict(merged)
    g = torch.Generator().manual_seed(0)
    x_t, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([30, 600])
    embeds = prior.embed(["a cube", "a ball"])
    pose = cams_at([0.0, 90.0], 8).pose_features()
    with torch.no_grad():
        with guidance.lora(pose):
            prior.unet.disable_adapters()  # camera only, to compare with the adapter-free reference
            with_camera = prior.unet(x_t, t, encoder_hidden_states=embeds).sample
        expected = reference(x_t, t, encoder_hidden_states=embeds, class_labels=guidance.camera(pose)).sample
    torch.testing.assert_close(with_camera, expected, atol=1e-5, rtol=1e-4)


def test_vsd_lora_learns_and_disabling_restores_the_base_exactly(request):
    prior = fresh_prior("sd", request)
    g = torch.Generator().manual_seed(0)
    x = prior.encode(torch.rand(1, 64, 64, 3, generator=g)).detach()
    x_t, t = torch.randn(4, 4, 8, 8, generator=g), torch.tensor([50, 300, 600, 900])
    embeds = prior.embed(["a red cube"] * 4)
    with torch.no_grad():
        base = prior.predict_eps(x_t, t, embeds)

    guidance = VSDGuidance(prior)
    with torch.no_grad():
        assert torch.equal(prior.predict_eps(x_t, t, embeds), base)  # fresh adapters change nothing
    # the plain diffusion loss on one fixed image (fixed t and noise draws) falls as LoRA + camera MLP train
    pose = cams_at([20.0] * 4, 64).pose_features()
    plain = prior.embed(["a red cube"] * 4)
    fixed_t = torch.tensor([40, 300, 620, 950])
    fixed_noise = torch.randn(4, 4, 8, 8, generator=g)
    xs = x.expand(4, -1, -1, -1)

    def loss_now():
        with torch.no_grad():
            return float(guidance.lora_loss(xs, fixed_t, fixed_noise, plain, pose))

    before = loss_now()
    opt = torch.optim.Adam([p for ps in guidance.param_groups().values() for p in ps], lr=1e-2)
    for _ in range(30):
        loss = guidance.lora_loss(xs, fixed_t, fixed_noise, plain, pose)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_now()
    assert after < 0.9 * before, (before, after)
    with torch.no_grad():
        assert torch.equal(prior.predict_eps(x_t, t, embeds), base)  # adapters off: exactly the pretrained UNet
        with guidance.lora(pose[:4]):
            assert not torch.allclose(prior.predict_eps(x_t, t, embeds), base)


def test_vsd_state_checkpoints_the_lora_and_camera_mlp(request):
    a_prior, b_prior = fresh_prior("if", request), fresh_prior("if", request)
    a, b = VSDGuidance(a_prior), VSDGuidance(b_prior)
    perturb_lora(a, seed=4)
    state = a.modules()["vsd"].state_dict()
    assert any("lora_A" in k for k in state) and any(k.startswith("camera.") for k in state)
    b.modules()["vsd"].load_state_dict(state, strict=True)
    g = torch.Generator().manual_seed(0)
    x_t, t, emb = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([10, 500]), a_prior.embed(["a", "b"])
    pose = cams_at([0.0, 45.0], 16).pose_features()
    with torch.no_grad():
        torch.testing.assert_close(b.lora_eps(x_t, t, emb, pose), a.lora_eps(x_t, t, emb, pose))


def test_vsd_refuses_a_prior_without_a_unet():
    with pytest.raises(UserError, match="vsd needs"):
        VSDGuidance(NaNPrior())


# ---------------------------------------------------------------- classifier score distillation

@pytest.mark.parametrize("kind", PRIORS)
@pytest.mark.parametrize("normalize", [False, True])
def test_classifier_score_gradient_is_hand_formula(kind, normalize, request, monkeypatch):
    prior = request.getfixturevalue(shared_prior(kind, request))
    B, size = 2, render_size(prior)
    images = torch.rand(B, size, size, 3, generator=torch.Generator().manual_seed(1))
    cams = cams_at([0.0, 100.0], size)
    prompt = PromptProcessor(prior, "a red cube", negative_prompt="a blue ball")
    t = [300, 800]
    cfg = ClassifierScoreConfig(negative_weight_start=0.0, negative_weight_end=1.0, anneal_until=0.5,
                                normalize=normalize, scale=3.0)
    guidance = ClassifierScoreGuidance(prior, cfg, timesteps=FixedTimesteps(t))
    x = leaf_x(prior, images, monkeypatch)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    out = guidance(render(images), cams, prompt, progress=0.2, noise=noise)
    out.loss.backward()

    tt = torch.tensor(t)
    a, x_t = noised(prior, x.detach(), tt, noise)
    cond, negative = prompt(cams)
    null = prior.embed([""] * B)
    cam = cams.pose_features() if prior.takes_camera else None
    with torch.no_grad():
        eps_y, eps_null, eps_neg = (prior.predict_eps(x_t, tt, e, cam) for e in (cond, null, negative))
    lam = 0.2 / 0.5
    g = 3.0 * (1 - a) * ((eps_y - eps_null) - lam * (eps_neg - eps_null))
    if normalize:
        g = g / g.norm()
    assert out.logs["negative_weight"] == pytest.approx(lam)
    assert_close_to(x.grad, g / B)


# ---------------------------------------------------------------- consistent flow distillation

@pytest.mark.parametrize("kind", PRIORS)
def test_cfd_gradient_is_hand_formula_with_its_own_noise_and_schedule(kind, request, monkeypatch):
    prior = request.getfixturevalue(shared_prior(kind, request))
    B, size = 2, render_size(prior)
    cams = cams_at([0.0, 40.0], size)
    scene = sphere_render(cams)
    images = torch.rand(B, size, size, 3, generator=torch.Generator().manual_seed(1))
    out_r = RenderOutput(rgb=images, alpha=scene.alpha, depth=scene.depth, normal=scene.normal)
    prompt = PromptProcessor(prior, "a red cube")
    guidance = CFDGuidance(prior, CFDConfig(guidance_scale=7.5))
    x = leaf_x(prior, images, monkeypatch)
    progress = 0.25
    out = guidance(out_r, cams, prompt, progress, generator=torch.Generator().manual_seed(5))
    out.loss.backward()

    # the noise is the consistent-flow field (fixed with refresh 0: a second call gives it again)
    noise = guidance.noise_source(out_r, cams, tuple(x.shape), torch.Generator().manual_seed(6))
    sched = DecreasingTimesteps(0.02, 0.98, ((0.0, 0.0), (0.5, 0.6), (1.0, 0.8)), prior.num_train_timesteps)
    tt = sched.sample(B, progress)
    assert out.logs["t"] == pytest.approx(float(tt[0]))
    a, x_t = noised(prior, x.detach(), tt, noise)
    cond, uncond = prompt(cams)
    cam = cams.pose_features() if prior.takes_camera else None
    with torch.no_grad():
        eps_c, eps_u = prior.predict_eps(x_t, tt, cond, cam), prior.predict_eps(x_t, tt, uncond, cam)
    g = ((1 - a).sqrt() / a.sqrt()) * (eps_u + 7.5 * (eps_c - eps_u) - noise)
    assert_close_to(x.grad, g / B)
    # the field survives a checkpoint round trip
    state = guidance.modules()["cfd_noise"].state_dict()
    assert "texels" in state and state["texels"].shape[-1] == x.shape[1]


# ---------------------------------------------------------------- GSD

def bilinear_border(img, px, py):
    """img [C, h, w] sampled at pixel-index coordinates (px, py), edges clamped (grid_sample's border mode)."""
    C, h, w = img.shape
    px, py = px.clamp(0, w - 1), py.clamp(0, h - 1)
    x0, y0 = int(math.floor(float(px.detach()))), int(math.floor(float(py.detach())))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = px - x0, py - y0
    top = img[:, y0, x0] * (1 - fx) + img[:, y0, x1] * fx
    bottom = img[:, y1, x0] * (1 - fx) + img[:, y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def slow_consistency(g, depth, alpha, cams, size, tol, kind):
    """The gradient-consistency loss of two-view groups, pixel by pixel."""
    B, C, h, w = g.shape
    dist = depth[..., 0] / alpha[..., 0].clamp_min(1e-6)
    focal = float(cams.focal()[0])
    scale = g.norm(dim=1).mean(dim=(1, 2))
    terms = []
    for i, j in [(0, 1), (1, 0)]:
        Ri, oi, Rj, oj = cams.c2w[i, :3, :3], cams.c2w[i, :3, 3], cams.c2w[j, :3, :3], cams.c2w[j, :3, 3]
        for r in range(h):
            for c in range(w):
                if alpha[i, r, c, 0] <= 0.5:
                    continue
                d_cam = torch.tensor([(c + 0.5 - w / 2) / focal, -(r + 0.5 - h / 2) / focal, -1.0])
                d_world = Ri @ (d_cam / d_cam.norm())
                point = oi + dist[i, r, c] * d_world
                rel = point - oj
                pc = Rj.t() @ rel
                z = -pc[2]
                u, v = focal * pc[0] / z + w / 2, -focal * pc[1] / z + h / 2
                if z <= 0 or not (0 <= float(u.detach()) < w and 0 <= float(v.detach()) < h):
                    continue
                pu, pv = int(math.floor(float(u.detach()))), int(math.floor(float(v.detach())))
                surface = float(dist[j, pv, pu].detach())
                if alpha[j, pv, pu, 0] <= 0.5 or abs(float(rel.norm().detach()) - surface) > tol * surface:
                    continue
                own = g[i, :, r, c] / scale[i]
                other = bilinear_border(g[j], u - 0.5, v - 0.5) / scale[j]
                if kind == "mse":
                    terms.append(((own - other) ** 2).sum())
                else:
                    terms.append(1 - torch.dot(own, other) / (own.norm() * other.norm()))
    assert len(terms) > 20
    return torch.stack(terms).mean()


@pytest.mark.parametrize("kind,consistency", [("if", "mse"), ("embedded", "cosine")])
def test_gsd_gradient_is_hand_formula(kind, consistency, request, monkeypatch):
    prior = request.getfixturevalue(shared_prior(kind, request))
    size = prior.resolution
    cams = expand_cameras(cams_at([20.0], size), ViewGroup(2, 15.0))
    scene = sphere_render(cams)
    depth, alpha = scene.depth.clone().requires_grad_(), scene.alpha.clone().requires_grad_()
    images = torch.rand(2, size, size, 3, generator=torch.Generator().manual_seed(1))
    prompt = PromptProcessor(prior, "a red cube")
    lam = 0.7
    cfg = GSDConfig(guidance_scale=5.0, consistency_weight=lam, consistency=consistency)
    guidance = GSDGuidance(prior, cfg, timesteps=FixedTimesteps([400]))
    assert guidance.view_group == ViewGroup(2, 15.0)
    x = leaf_x(prior, images, monkeypatch)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    out = guidance(RenderOutput(images, alpha, depth, scene.normal), cams, prompt, 0.5, noise=noise)
    out.loss.backward()

    tt = torch.tensor([400, 400])  # one t per group of views
    a, x_t = noised(prior, x.detach(), tt, noise)
    cond, uncond = prompt(cams)
    cam = cams.pose_features() if prior.takes_camera else None
    with torch.no_grad():
        eps_c, eps_u = prior.predict_eps(x_t, tt, cond, cam), prior.predict_eps(x_t, tt, uncond, cam)
    g = (1 - a) * (eps_u + 5.0 * (eps_c - eps_u) - noise)
    assert_close_to(x.grad, g / 2)
    # the consistency term reaches the geometry through the reprojection
    d0, a0 = scene.depth.clone().requires_grad_(), scene.alpha.clone().requires_grad_()
    expected = lam * slow_consistency(g, d0, a0, cams, size, cfg.depth_tolerance, consistency)
    assert out.logs["consistency"] == pytest.approx(float(expected.detach()) / lam, rel=1e-3)
    gd, ga = torch.autograd.grad(expected, [d0, a0])
    assert float(gd.abs().max()) > 0
    torch.testing.assert_close(depth.grad, gd, rtol=1e-3, atol=1e-4 * float(gd.abs().max()))
    torch.testing.assert_close(alpha.grad, ga, rtol=1e-3, atol=1e-4 * float(ga.abs().max()))


def test_gsd_drops_inconsistent_pixels(tiny_if_prior, monkeypatch):
    prior, size = tiny_if_prior, 16
    cams = expand_cameras(cams_at([0.0], size), ViewGroup(2, 10.0))
    scene = sphere_render(cams)
    images = torch.rand(2, size, size, 3, generator=torch.Generator().manual_seed(1))
    guidance = GSDGuidance(prior, GSDConfig(consistency_weight=0.0, drop_below=0.2), timesteps=FixedTimesteps([500]))
    x = leaf_x(prior, images, monkeypatch)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    out = guidance(RenderOutput(images, scene.alpha, scene.depth, scene.normal), cams,
                   PromptProcessor(prior, "a red cube"), 0.5, noise=noise)
    out.loss.backward()
    zero_pixels = (x.grad == 0).all(dim=1)
    assert 0 < out.logs["dropped"] < 1
    assert float(zero_pixels.float().mean()) == pytest.approx(out.logs["dropped"])


def test_gsd_with_one_view_is_sds_with_geometry_aware_noise(tiny_if_prior):
    guidance = GSDGuidance(tiny_if_prior, GSDConfig(views=1))
    assert guidance.view_group is None
    cams = cams_at([0.0], 16)
    scene = sphere_render(cams)
    images = torch.rand(1, 16, 16, 3, requires_grad=True)
    out = guidance(RenderOutput(images, scene.alpha, scene.depth), cams, PromptProcessor(tiny_if_prior, "a cube"), 0.1,
                   generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(images.grad).all() and "consistency" not in out.logs
    assert guidance.modules()["gsd_noise"].values is not None  # the particles were made and will be checkpointed


# ---------------------------------------------------------------- coupled score distillation

def test_coupled_csd_gradient_is_hand_formula(embedded_prior, monkeypatch):
    prior, size, n = embedded_prior, 16, 4
    cams = expand_cameras(cams_at([30.0, -70.0], size), ViewGroup(n, 90.0))
    B = cams.batch_size
    images = torch.rand(B, size, size, 3, generator=torch.Generator().manual_seed(1))
    prompt = PromptProcessor(prior, "a red cube")
    lam = 0.5
    guidance = CSDGuidance(prior, CSDConfig(multiview_weight=lam, sds=SDSConfig(guidance_scale=20.0)))
    assert guidance.view_group == ViewGroup(4, 90.0)
    guidance.timesteps = FixedTimesteps([600, 200])
    guidance.two_d.timesteps = FixedTimesteps([350, 750])
    x = prior.encode(images).detach().requires_grad_()
    first = slice(0, None, n)
    # the 2D term encodes view 0 of each group, the multi-view term every view
    monkeypatch.setattr(prior, "encode", lambda imgs: x if imgs.shape[0] == B else x[first])
    g0 = torch.Generator().manual_seed(2)
    noise_mv = torch.randn(x.shape, generator=g0)
    noise_2d = torch.randn((2, *x.shape[1:]), generator=g0)
    out = guidance(render(images), cams, prompt, 0.4, noise=noise_mv, noise_2d=noise_2d)
    out.loss.backward()

    # 2D term: SDS on view 0 of each group, view-dependent prompt, the prior without its camera
    t2 = torch.tensor([350, 750])
    a2, x_t2 = noised(prior, x.detach()[first], t2, noise_2d)
    cond, uncond = prompt(cams[first])
    with torch.no_grad():
        e_c, e_u = prior.predict_eps(x_t2, t2, cond, None), prior.predict_eps(x_t2, t2, uncond, None)
    g2 = (1 - a2) * (e_u + 20.0 * (e_c - e_u) - noise_2d)
    # multi-view term: every view, one t per group, plain prompt, camera-conditioned, CFG 7.5
    tm = torch.tensor([600, 200]).repeat_interleave(n)
    am, x_tm = noised(prior, x.detach(), tm, noise_mv)
    plain = prompt.cond_plain.expand(B, *prompt.cond_plain.shape)
    neg = prompt.uncond.expand_as(plain)
    pose = cams.pose_features()
    with torch.no_grad():
        m_c, m_u = prior.predict_eps(x_tm, tm, plain, pose), prior.predict_eps(x_tm, tm, neg, pose)
    gm = (1 - am) * (m_u + 7.5 * (m_c - m_u) - noise_mv)
    expected = lam * gm / B
    expected[first] += g2 / 2
    assert_close_to(x.grad, expected)
    assert out.logs["grad_norm"] == pytest.approx(g2.norm().item(), rel=1e-3)


def test_coupled_csd_with_vsd_and_a_separate_multiview_prior(request, embedded_prior):
    """Stable Diffusion as the 2D prior (VSD), the embedded prior as the multi-view one."""
    sd = fresh_prior("sd", request)
    guidance = CSDGuidance(sd, CSDConfig(two_d="vsd"), multiview_prior=embedded_prior)
    assert set(guidance.param_groups()) == {"lora"} and "vsd" in guidance.modules()
    cams = expand_cameras(cams_at([0.0], 64), ViewGroup(4, 90.0))
    images = torch.rand(4, 64, 64, 3, requires_grad=True)
    prompt = PromptProcessor(sd, "a red cube")
    out = guidance(render(images), cams, prompt, 0.2, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(images.grad).all()
    assert images.grad[1:].abs().sum() > 0  # views 1..3 get only the multi-view term
    mv_prompt = guidance._mv_prompt(prompt)
    assert torch.equal(mv_prompt.cond_plain, embedded_prior.embed(["a red cube"])[0])


def test_coupled_csd_refuses_a_prior_without_a_camera(tiny_sd_prior):
    with pytest.raises(UserError, match="camera-conditioned"):
        CSDGuidance(tiny_sd_prior)


# ---------------------------------------------------------------- ISM

@pytest.mark.parametrize("kind", ["sd", "embedded"])
def test_ism_gradient_is_hand_formula(kind, request, monkeypatch):
    prior = request.getfixturevalue(shared_prior(kind, request))
    B, size = 2, render_size(prior)
    images = torch.rand(B, size, size, 3, generator=torch.Generator().manual_seed(1))
    cams = cams_at([0.0, 70.0], size)
    prompt = PromptProcessor(prior, "a red cube", negative_prompt="a blue ball")
    t = [700, 450]
    guidance = ISMGuidance(prior, ISMConfig(interval=0.2, inversion_steps=2), timesteps=FixedTimesteps(t))
    x = leaf_x(prior, images, monkeypatch)
    guidance(render(images), cams, prompt, 0.5).loss.backward()

    ac = prior.alphas_cumprod
    cond, uncond = prompt(cams)
    null = prior.embed([""])
    expected = []
    for b in range(B):  # one view at a time, the DDIM algebra written out
        cam = cams.pose_features()[b:b + 1] if prior.takes_camera else None
        tb, sb = t[b], t[b] - 200
        eps_at = lambda z, step, emb: prior.predict_eps(z, torch.tensor([step]), emb, cam).float()  # noqa: E731
        with torch.no_grad():
            z = x.detach()[b:b + 1]
            for lo, hi in [(0, round(sb / 2)), (round(sb / 2), sb)]:
                e = eps_at(z, lo, null)
                z = ac[hi].sqrt() * (z - (1 - ac[lo]).sqrt() * e) / ac[lo].sqrt() + (1 - ac[hi]).sqrt() * e
            e_s = eps_at(z, sb, null)
            x_t = ac[tb].sqrt() * (z - (1 - ac[sb]).sqrt() * e_s) / ac[sb].sqrt() + (1 - ac[tb]).sqrt() * e_s
            e_c, e_u = eps_at(x_t, tb, cond[b:b + 1]), eps_at(x_t, tb, uncond[b:b + 1])
        expected.append(((1 - ac[tb]) / ac[tb]).sqrt() * (e_u + 7.5 * (e_c - e_u) - e_s))
    assert_close_to(x.grad, torch.cat(expected) / B)


# ---------------------------------------------------------------- non-finite predictions

@pytest.mark.parametrize("make", [
    lambda p: CFDGuidance(p, CFDConfig(noise=NoiseConfig())),
    lambda p: ClassifierScoreGuidance(p),
    lambda p: GSDGuidance(p, GSDConfig(noise=NoiseConfig())),
    lambda p: ISMGuidance(p),
])
def test_non_finite_predictions_are_not_silently_zeroed(make):
    """The trainer skips and logs steps with a non-finite loss; these rules must not hide NaNs."""
    prior = NaNPrior()
    guidance = make(prior)
    cams = cams_at([0.0, 15.0], 8)
    images = torch.rand(2, 8, 8, 3, requires_grad=True)
    out = guidance(render(images), cams, PromptProcessor(prior, "x"), 0.5, generator=torch.Generator().manual_seed(0))
    assert not torch.isfinite(out.loss)


def test_vsd_non_finite_prediction_reaches_the_loss(request, monkeypatch):
    prior = fresh_prior("if", request)
    guidance = VSDGuidance(prior)
    monkeypatch.setattr(prior, "predict_eps", lambda x_t, t, e, camera=None: torch.full_like(x_t, float("nan")))
    out = guidance(render(torch.rand(1, 16, 16, 3)), cams_at([0.0], 16), PromptProcessor(prior, "a"), 0.0,
                   generator=torch.Generator().manual_seed(0))
    assert not torch.isfinite(out.loss)
