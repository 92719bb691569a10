"""The joint multi-view embedded prior and multi-view SDS: the 3D self-attention processor against
plain attention, joint-view prior folders (new and old) through the real loading code, the mvsds
gradient against the hand formula, refusals, CSD's joint term, grouped data and grouped training."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from dream3d.cameras import orbit_cameras
from dream3d.errors import UserError
from dream3d.guidance.csd import CSDConfig, CSDGuidance
from dream3d.guidance.mvsds import MVSDSConfig, MVSDSGuidance
from dream3d.guidance.prompt import PromptProcessor
from dream3d.guidance.view_groups import ViewGroup, expand_cameras
from dream3d.priors.embedded import EmbeddedPrior
from dream3d.priors.embedded_model import EmbeddedDiffusionModel, EmbeddedModelConfig
from dream3d.priors.loading import load_prior
from dream3d.priors.multiview_attention import (MultiViewAttnProcessor, install_multiview_attention,
                                                multiview_processors, views)
from dream3d.types import RenderOutput

sys.path.insert(0, str(Path(__file__).parent))
from conftest import build_tiny_embedded  # noqa: E402

torch.set_num_threads(1)

TINY = EmbeddedModelConfig(resolution=16, block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
                           attention_head_dim=8, text_hidden_size=16, text_heads=2, text_layers=1)


# ---------------------------------------------------------------- helpers

def attention_layer(dim: int = 16, heads: int = 2):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads).eval()


def hand_self_attention(attn, h: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head over the tokens of h [B, L, C], then the output projection."""
    B, L, _ = h.shape
    q, k, v = (f(h).view(B, L, attn.heads, -1).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return attn.to_out[0]((w @ v).transpose(1, 2).reshape(B, L, -1))


def group_cams(azimuths: list[float], size: int = 16, n: int = 4, elevation: float = 20.0):
    """Groups of n cameras 90 degrees apart starting at each azimuth, group-major."""
    k = len(azimuths)
    full = lambda v: torch.full((k,), float(v))  # noqa: E731
    return expand_cameras(orbit_cameras(full(elevation), torch.tensor(azimuths), full(3.0), full(45.0), size, size),
                          ViewGroup(n, 90.0))


def render(images):
    B, H, W, _ = images.shape
    return RenderOutput(rgb=images, alpha=torch.ones(B, H, W, 1), depth=torch.full((B, H, W, 1), 2.0))


class FixedTimesteps:
    def __init__(self, t: list[int]):
        self.t = torch.tensor(t)

    def sample(self, batch, progress, generator=None):
        return self.t[:batch].clone()


@pytest.fixture(scope="module")
def joint_dir(tmp_path_factory):
    return build_tiny_embedded(tmp_path_factory.mktemp("joint") / "tiny-joint", joint_views=True)


@pytest.fixture(scope="module")
def joint_prior(joint_dir):
    prior = load_prior(str(joint_dir), device="cpu")
    assert isinstance(prior, EmbeddedPrior) and prior.joint_views
    return prior


# ---------------------------------------------------------------- the processor

def test_processor_with_one_view_is_plain_self_attention():
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    attn = attention_layer()
    h = torch.randn(8, 5, 16, generator=torch.Generator().manual_seed(1))
    proc = MultiViewAttnProcessor()
    with torch.no_grad():
        got = proc(attn, h)
        assert torch.equal(got, AttnProcessor2_0()(attn, h))  # the UNet's default, bit for bit
        torch.testing.assert_close(got, AttnProcessor()(attn, h), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got, hand_self_attention(attn, h), rtol=1e-5, atol=1e-6)


def test_processor_attends_across_the_views_of_each_group():
    attn = attention_layer()
    h = torch.randn(8, 5, 16, generator=torch.Generator().manual_seed(2))  # 2 groups of 4 views, 5 tokens each
    proc = MultiViewAttnProcessor()
    proc.n_views = 4
    with torch.no_grad():
        got = proc(attn, h)
        expected = hand_self_attention(attn, h.reshape(2, 20, 16)).reshape(8, 5, 16)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        moved = h.clone()
        moved[1] += 1.0  # view 1 of group 0
        delta = (proc(attn, moved) - got).abs().amax(dim=(1, 2))
        assert (delta[[0, 2, 3]] > 1e-4).all()  # the other views of its group see it
        assert (delta[4:] == 0).all()  # the other group does not
        proc.n_views = 1
        delta = (proc(attn, moved) - proc(attn, h)).abs().amax(dim=(1, 2))
        assert delta[1] > 1e-4 and (delta[[0, 2, 3, 4, 5, 6, 7]] == 0).all()


def test_processor_leaves_cross_attention_per_view():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()
    g = torch.Generator().manual_seed(3)
    h, text = torch.randn(8, 5, 16, generator=g), torch.randn(8, 3, 12, generator=g)
    proc = MultiViewAttnProcessor()
    proc.n_views = 4
    with torch.no_grad():
        assert torch.equal(proc(attn, h, text), AttnProcessor2_0()(attn, h, text))
    with pytest.raises(ValueError, match="whole groups"):
        proc(attn, h[:6])


def test_installed_on_self_attention_layers_only():
    cfg = EmbeddedModelConfig(**{**TINY.__dict__, "self_attention_levels": (False, False, False)})
    unet = EmbeddedDiffusionModel(cfg).unet  # the 8x8 level cross-attends only: its attn1 reads the text
    assert install_multiview_attention(unet) == 1  # the mid block's self-attention
    for name, proc in unet.attn_processors.items():
        assert isinstance(proc, MultiViewAttnProcessor) == (name.startswith("mid_block") and ".attn1." in name)
    model = EmbeddedDiffusionModel(EmbeddedModelConfig(**{**TINY.__dict__, "joint_views": True}))
    names = [n for n, p in model.unet.attn_processors.items() if isinstance(p, MultiViewAttnProcessor)]
    assert names and all(".attn1." in n for n in names) and len(names) == len(multiview_processors(model.unet))
    plain = EmbeddedDiffusionModel(TINY).unet
    with pytest.raises(ValueError, match="within each view"), views(plain, 4):
        pass


# ---------------------------------------------------------------- the joint prior


def test_joint_prior_with_one_view_is_the_plain_model(joint_dir, joint_prior):
    meta = json.loads((joint_dir / "prior.json").read_text())
    assert meta["model_config"]["joint_views"] is True and "joint views" in (joint_dir / "README.md").read_text()
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(joint_dir / "unet", local_files_only=True)  # the stock processors
    unet.to(memory_format=torch.channels_last)  # as the prior holds its UNet on a CPU
    plain = EmbeddedDiffusionModel(TINY, unet, joint_prior.model.text_encoder, joint_prior.model.tokenizer).eval()
    assert not multiview_processors(plain.unet) and multiview_processors(joint_prior.unet)
    g = torch.Generator().manual_seed(4)
    x, pose = torch.randn(8, 3, 16, 16, generator=g), group_cams([10.0, -100.0]).pose_features()
    t = torch.tensor([300, 800]).repeat_interleave(4)
    emb = joint_prior.embed(["a red cube"] * 4 + ["a blue chair"] * 4)
    with torch.no_grad():
        expected = plain(x, t, emb, pose)
    assert torch.equal(joint_prior.predict_eps(x, t, emb, pose), expected)  # N = 1: the plain model, bit for bit
    joint = joint_prior.predict_eps(x, t, emb, pose, n_views=4)
    assert (joint - expected).abs().max() > 1e-4  # four views at once are not four single views
    moved = x.clone()
    moved[2] += 0.5
    delta = (joint_prior.predict_eps(moved, t, emb, pose, n_views=4) - joint).abs().amax(dim=(1, 2, 3))
    assert (delta[[0, 1, 3]] > 1e-5).all() and (delta[4:] == 0).all()
    with pytest.raises(ValueError, match="whole groups"):
        joint_prior.predict_eps(x[:6], t[:6], emb[:6], pose[:6], n_views=4)
    imgs = joint_prior.sample(["a red cube"], n=4, steps=2, camera=group_cams([0.0]), n_views=4)
    assert imgs.shape == (4, 16, 16, 3)


def test_folder_without_the_flag_loads_single_view(tmp_path):
    folder = build_tiny_embedded(tmp_path / "old", joint_views=True)
    meta = json.loads((folder / "prior.json").read_text())
    del meta["model_config"]["joint_views"]  # as every folder saved before the flag existed
    (folder / "prior.json").write_text(json.dumps(meta))
    prior = load_prior(str(folder), device="cpu")
    assert prior.joint_views is False and not multiview_processors(prior.unet)
    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(ValueError, match="one view at a time"):
        prior.predict_eps(x, torch.full((4,), 500), prior.embed(["a red cube"] * 4), None, n_views=4)
    with pytest.raises(UserError, match="jointly"):
        MVSDSGuidance(prior)


def test_the_shipped_prior_has_no_joint_views_yet():
    from dream3d.priors.paths import embedded_prior_dir

    meta = json.loads((embedded_prior_dir() / "prior.json").read_text())
    assert not meta["model_config"].get("joint_views", False)


# ---------------------------------------------------------------- multi-view SDS


def test_mvsds_gradient_is_hand_formula(joint_prior, monkeypatch):
    prior, n, s = joint_prior, 4, 20.0
    cams = group_cams([30.0, -70.0])
    B = cams.batch_size
    images = torch.rand(B, 16, 16, 3, generator=torch.Generator().manual_seed(5))
    prompt = PromptProcessor(prior, "a red cube", negative_prompt="a blue ball")
    guidance = MVSDSGuidance(prior, MVSDSConfig(guidance_scale=s), timesteps=FixedTimesteps([600, 200]))
    assert guidance.view_group == ViewGroup(4, 90.0)
    x = prior.encode(images).detach().requires_grad_()
    monkeypatch.setattr(prior, "encode", lambda imgs: x)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    out = guidance(render(images), cams, prompt, 0.3, noise=noise)
    out.loss.backward()

    # by hand: one t per group, x_t = alpha x + sigma eps, separate UNet calls over whole groups
    t = torch.tensor([600, 200]).repeat_interleave(n)
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x.detach() + (1 - a).sqrt() * noise
    cond = prior.embed(["a red cube"]).expand(B, -1, -1)  # the plain prompt: the camera carries the view
    uncond = prior.embed(["a blue ball"]).expand(B, -1, -1)
    pose = cams.pose_features()
    unet = prior.unet
    with torch.no_grad(), views(unet, n):
        e_c = unet(x_t, t, encoder_hidden_states=cond, class_labels=pose).sample
        e_u = unet(x_t, t, encoder_hidden_states=uncond, class_labels=pose).sample
    g = (1 - a) * (e_u + s * (e_c - e_u) - noise)
    torch.testing.assert_close(x.grad, g / B, rtol=1e-3, atol=2e-4 * (g / B).abs().max().item())
    assert out.logs["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-3)
    with torch.no_grad():  # each view scored alone would give another gradient
        single = prior.predict_eps(x_t, t, cond, pose)
    assert ((1 - a) * (single - noise) - g).abs().max() > 1e-3 * g.abs().max()


def test_mvsds_is_refused_without_joint_views(tiny_embedded_dir, tiny_sd_prior):
    for prior in (load_prior(str(tiny_embedded_dir), device="cpu"), tiny_sd_prior):
        with pytest.raises(UserError, match="one view at a time"):
            MVSDSGuidance(prior)


def test_cli_refuses_mvsds_on_a_single_view_prior_before_training(tmp_path, tiny_embedded_dir, monkeypatch, capsys):
    from dream3d import cli

    out = tmp_path / "o"
    monkeypatch.setattr(sys, "argv", ["dream3d", "generate", "a red cube", "--model", str(tiny_embedded_dir),
                                      "--guidance", "mvsds", "--preset", "fast", "--device", "cpu", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "mvsds" in lines[0] and "--views 4" in lines[0]
    assert not list(out.rglob("metrics.jsonl"))  # nothing trained


def test_a_later_mvsds_stage_is_refused_before_the_first_trains(tmp_path, tiny_embedded_dir):
    from dream3d import config, pipeline

    cfg = config.build({"prompt": "a red cube", "model": str(tiny_embedded_dir), "device": "cpu",
                        "train": {"steps": 1, "resolution": 16, "preview_every": 0},
                        "export": {"mesh": False, "video": False},
                        "stages": [{"name": "a"}, {"name": "b", "guidance": {"name": "mvsds"}}]})
    with pytest.raises(UserError, match="mvsds"):
        pipeline.generate(cfg, tmp_path)
    assert not list(tmp_path.rglob("metrics.jsonl"))


def test_csd_uses_the_joint_prior_for_its_multiview_term(joint_prior):
    from dream3d.guidance import common

    cams = group_cams([45.0])
    images = torch.rand(4, 16, 16, 3, generator=torch.Generator().manual_seed(7))
    prompt = PromptProcessor(joint_prior, "a red cube")
    noise = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    csd = CSDGuidance(joint_prior, CSDConfig(), timesteps=FixedTimesteps([500]))
    _, g, _ = csd.multiview_loss(render(images), cams, prompt, 0.5, noise, None)
    x, t = joint_prior.encode(images).float(), torch.full((4,), 500)
    a = joint_prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x + (1 - a).sqrt() * noise
    cond, pose = prompt.cond_plain.expand(4, -1, -1), cams.pose_features()
    uncond = prompt.uncond.expand_as(cond)
    with torch.no_grad(), views(joint_prior.unet, 4):  # by hand: the group denoised jointly, CFG 7.5
        e_c = joint_prior.unet(x_t, t, encoder_hidden_states=cond, class_labels=pose).sample
        e_u = joint_prior.unet(x_t, t, encoder_hidden_states=uncond, class_labels=pose).sample
    expected = (1 - a) * (e_u + 7.5 * (e_c - e_u) - noise)
    torch.testing.assert_close(g, expected, rtol=1e-3, atol=2e-4 * expected.abs().max().item())
    with torch.no_grad():  # today's per-view term differs
        per_view = (1 - a) * (common.cfg_eps(joint_prior, x_t, t, cond, uncond, pose, 7.5) - noise)
    assert (per_view - g).abs().max() > 1e-3 * g.abs().max()
