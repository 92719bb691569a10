"""The embedded prior: tiny models built from config, saved, reloaded offline, trained and resumed."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from dream3d.cameras import orbit_cameras
from dream3d.errors import UserError
from dream3d.priors.embedded import EmbeddedPrior
from dream3d.priors.embedded_model import EmbeddedDiffusionModel, EmbeddedModelConfig, build_scheduler
from dream3d.priors.prior_folder import save_prior
from dream3d.priors.train_embedded import PriorTrainConfig, train_prior

torch.set_num_threads(1)

TINY = EmbeddedModelConfig(
    resolution=16, block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
    attention_head_dim=8, text_hidden_size=16, text_heads=2, text_layers=1,
)


@pytest.fixture(scope="module")
def tiny_prior_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = EmbeddedDiffusionModel(TINY)
    out = save_prior(model, build_scheduler(TINY), tmp_path_factory.mktemp("prior") / "tiny")
    return out, model


def test_saved_folder_layout(tiny_prior_dir):
    path, _ = tiny_prior_dir
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
        assert (path / sub).is_dir()
    meta = json.loads((path / "prior.json").read_text())
    assert meta["resolution"] == 16 and "snowman" in meta["vocab"]["objects"]
    assert "tiny-shapes" in (path / "README.md").read_text()


def test_reload_predicts_the_same_eps(tiny_prior_dir):
    path, model = tiny_prior_dir
    prior = EmbeddedPrior(path)
    assert prior.resolution == 16 and prior.takes_camera and prior.num_train_timesteps == 1000
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([10, 700])
    pose = orbit_cameras(torch.tensor([10.0, 40.0]), torch.tensor([0.0, 180.0]), torch.full((2,), 2.9),
                         torch.full((2,), 45.0), 16, 16).pose_features()
    emb = prior.embed(["a red cube", "a blue chair, back view"])
    assert emb.shape == (2, 10, 16)
    eps = prior.predict_eps(x, t, emb, pose)
    assert eps.shape == (2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x, t, model.embed(["a red cube", "a blue chair, back view"]), pose)
    assert torch.allclose(eps, expected, atol=1e-5)
    # the camera reaches the network, and None means the zero (no-camera) embedding
    assert not torch.allclose(prior.predict_eps(x, t, emb, None), eps)
    assert torch.allclose(prior.predict_eps(x, t, emb, None), prior.predict_eps(x, t, emb, torch.zeros(2, 16)))


def test_embed_normalises_and_caches(tiny_prior_dir):
    prior = EmbeddedPrior(tiny_prior_dir[0])
    a = prior.embed(["A  Red CUBE"])
    b = prior.embed(["a red cube"])
    assert torch.allclose(a, b)
    assert not torch.allclose(prior.embed([""]), b)
    assert "a red cube" in prior._embed_cache and prior.embed(["a red cube"]).data_ptr() != 0


def test_encode_resizes_with_antialiasing_and_keeps_gradients(tiny_prior_dir):
    prior = EmbeddedPrior(tiny_prior_dir[0])
    img = torch.rand(1, 64, 64, 3, requires_grad=True)
    x = prior.encode(img)
    assert x.shape == (1, 3, 16, 16)
    # a one-pixel checkerboard is pure aliasing: an antialiased resize averages it to grey
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2).float()
    checker = checker[None, :, :, None].expand(1, 64, 64, 3)
    assert (prior.encode(checker) - 0.0).abs().max() < 0.05  # grey 0.5 -> 0 in [-1, 1]
    # a smooth image is sampled at the output pixel centres (plus a little blur)
    coords = (torch.arange(64) + 0.5) / 64
    smooth = (0.5 + 0.3 * torch.sin(2 * torch.pi * coords))[None, :, None, None].expand(1, 64, 64, 3)
    centres = (torch.arange(16) + 0.5) / 16
    expected = 2 * (0.5 + 0.3 * torch.sin(2 * torch.pi * centres)) - 1
    assert (prior.encode(smooth)[0, 0, :, 0] - expected).abs().max() < 0.03
    x.sum().backward()
    assert torch.allclose(img.grad.sum(), torch.tensor(2.0 * 16 * 16 * 3), rtol=1e-4)  # d(2x-1)/dx per output pixel
    small = torch.rand(1, 16, 16, 3)
    assert torch.allclose(prior.decode(prior.encode(small)), small, atol=1e-6)


def test_check_prompt_and_sample(tiny_prior_dir):
    prior = EmbeddedPrior(tiny_prior_dir[0])
    with pytest.raises(UserError):
        prior.check_prompt("a red panda")
    assert prior.check_prompt("a red panda", allow_unknown_words=True) == ["panda"]
    imgs = prior.sample(["a red cube", "a green tree, side view"], n=2, steps=2, seed=3)
    assert imgs.shape == (4, 16, 16, 3) and imgs.min() >= 0 and imgs.max() <= 1
    assert torch.equal(imgs, prior.sample(["a red cube", "a green tree, side view"], n=2, steps=2, seed=3))


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="prior train"):
        EmbeddedPrior(tmp_path / "nowhere")


def _train_cfg(steps: int) -> PriorTrainConfig:
    return PriorTrainConfig(model=TINY, steps=steps, batch_size=2, data="render", threads=1, sample_steps=0,
                            checkpoint_steps=2, warmup_steps=2, log_steps=100)


def test_training_resumes_to_the_same_state(tmp_path):
    straight = train_prior(_train_cfg(3), tmp_path / "a")
    train_prior(_train_cfg(2), tmp_path / "b")
    resumed = train_prior(_train_cfg(3), tmp_path / "b", resume=True)
    state_a = json.loads((tmp_path / "a" / "checkpoint" / "state.json").read_text())
    state_b = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert state_a["step"] == state_b["step"] == 3 and state_a["rng"] == state_b["rng"]
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "a" / "checkpoint" / name)
        b = load_file(tmp_path / "b" / "checkpoint" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6), (name, k)
    # a fresh run moved away from the initial weights and exported a loadable prior
    init = EmbeddedDiffusionModel(TINY)
    assert any(not torch.allclose(v, init.state_dict()[k]) for k, v in load_file(
        tmp_path / "a" / "checkpoint" / "model.safetensors").items() if k.startswith("unet."))
    assert EmbeddedPrior(resumed).resolution == 16 and straight.name == "prior"


def test_resume_refuses_a_different_architecture(tmp_path):
    train_prior(_train_cfg(1), tmp_path)
    other = _train_cfg(2)
    other.model = EmbeddedModelConfig(**{**TINY.__dict__, "block_out_channels": (8, 16, 24)})
    with pytest.raises(UserError, match="block_out_channels"):
        train_prior(other, tmp_path, resume=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_checkpoints_the_step_reached_and_resume_goes_on(tmp_path, signum):
    def on_step(step, info):
        if step == 2:
            os.kill(os.getpid(), signum)  # Ctrl-C, or a scheduler stopping the job

    cfg = _train_cfg(5)
    cfg.checkpoint_steps = 100  # only the stop itself writes a checkpoint before the end
    with pytest.raises(KeyboardInterrupt):
        train_prior(cfg, tmp_path, on_step=on_step)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 2  # the step in flight when the signal came is kept
    assert (tmp_path / "prior" / "prior.json").is_file()
    train_prior(cfg, tmp_path, resume=True)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 5
