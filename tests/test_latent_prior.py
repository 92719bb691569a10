"""The latent embedded prior: its VAE (loss against torch's KL, bit-identical resume), the
camera as cross-attention tokens (no tokens = the camera-free model), its folder through the
real loading code and through `diffusers.StableDiffusionPipeline`, and a tiny latent training run."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dream3d.priors.autoencoder import AutoencoderConfig, autoencoder_loss, build_autoencoder, train_autoencoder
from dream3d.priors.codec import LatentCodec, resize_square
from dream3d.priors.embedded import EmbeddedPrior
from dream3d.priors.embedded_model import EmbeddedDiffusionModel, EmbeddedModelConfig, build_scheduler
from dream3d.priors.loading import load_prior
from dream3d.priors.prior_folder import save_prior
from dream3d.priors.train_embedded import PriorTrainConfig, train_prior

torch.set_num_threads(1)

TINY_VAE = AutoencoderConfig(resolution=16, block_out_channels=(8, 8, 8), latent_channels=4, layers_per_block=1,
                             norm_num_groups=4, steps=4, batch_size=2, log_steps=1000)
TINY_LATENT = EmbeddedModelConfig(resolution=16, block_out_channels=(8, 16, 16), attention_levels=(False, True, True),
                                  self_attention_levels=(False, True, True), layers_per_block=1, norm_num_groups=4,
                                  attention_head_dim=8, text_hidden_size=16, text_heads=2, text_layers=1,
                                  latent_channels=4, latent_factor=4, camera_tokens=1, joint_views=True)


def random_images(n: int, gen: torch.Generator, size: int = 16) -> torch.Tensor:
    return torch.rand(n, size, size, 3, generator=gen)


@pytest.fixture(scope="module")
def latent_folder(tmp_path_factory):
    torch.manual_seed(0)
    vae = build_autoencoder(TINY_VAE)
    model = EmbeddedDiffusionModel(TINY_LATENT)
    return save_prior(model, build_scheduler(TINY_LATENT), tmp_path_factory.mktemp("latent") / "prior", vae=vae)


# ---------------------------------------------------------------- the autoencoder

def test_autoencoder_loss_is_l1_plus_weighted_kl():
    torch.manual_seed(1)
    vae = build_autoencoder(TINY_VAE)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    loss, l1 = autoencoder_loss(vae, x, 0.25, torch.Generator().manual_seed(3))
    post = vae.encode(x).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(l1, (vae.decode(z).sample - x).abs().mean(), atol=1e-6)
    normal = torch.distributions.Normal(post.mean, post.std)
    kl = torch.distributions.kl_divergence(normal, torch.distributions.Normal(0.0, 1.0)).sum(dim=(1, 2, 3)).mean()
    assert torch.allclose(loss, l1 + 0.25 * kl, rtol=1e-5)


def test_foreground_mask_marks_what_differs_from_the_corner():
    from dream3d.priors.autoencoder import foreground_mask

    x = torch.full((1, 3, 6, 6), 0.4)
    x[0, 0, 2:4, 1:3] = 0.9  # red differs by 0.5
    x[0, 2, 5, 5] = 0.42  # by 0.02: below the threshold, still background
    want = torch.zeros(1, 1, 6, 6)
    want[0, 0, 2:4, 1:3] = 1
    assert torch.equal(foreground_mask(x), want)


def test_reconstruction_loss_weighs_the_object_and_its_cell_colours():
    from dream3d.priors.autoencoder import reconstruction_loss

    g = torch.Generator().manual_seed(2)
    x = torch.full((2, 3, 8, 8), -0.2)
    x[:, :, 2:6, 3:7] = torch.rand(2, 3, 4, 4, generator=g)  # far from -0.2 everywhere
    recon = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    w = torch.ones(2, 1, 8, 8)
    w[:, :, 2:6, 3:7] = 10.0
    pixels = sum(float(abs(recon[b, c, i, j] - x[b, c, i, j]) * w[b, 0, i, j])
                 for b in range(2) for c in range(3) for i in range(8) for j in range(8)) / (3 * float(w.sum()))
    cell = lambda t, b, c, i, j: t[b, c, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean()  # noqa: E731
    wc = lambda b, i, j: w[b, 0, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean()  # noqa: E731
    cells = sum(float(abs(cell(recon, b, c, i, j) - cell(x, b, c, i, j)) * wc(b, i, j))
                for b in range(2) for c in range(3) for i in range(2) for j in range(2))
    cells /= 3 * sum(float(wc(b, i, j)) for b in range(2) for i in range(2) for j in range(2))
    got = reconstruction_loss(recon, x, 10.0, 0.5, 4)
    assert abs(float(got) - (pixels + 0.5 * cells)) < 1e-5
    assert abs(float(reconstruction_loss(recon, x, 1.0, 0.0, 4)) - float((recon - x).abs().mean())) < 1e-6


def test_foreground_psnr_is_measured_on_the_object_alone():
    from dream3d.priors.autoencoder import foreground_psnr

    class Shift:  # a codec whose round trip adds 0.1 to the object pixels and 0.3 to the background
        def encode(self, images):
            return images

        def decode(self, x):
            obj = (x - x[:, :1, :1, :]).abs().amax(-1, keepdim=True) > 0.02
            return x + torch.where(obj, 0.1, 0.3)

    images = torch.full((3, 8, 8, 3), 0.5)
    images[:, 2:5, 2:5, 0] = 0.9
    assert abs(foreground_psnr(Shift(), images) - 20.0) < 1e-4  # -10 log10(0.1^2)


class StopAfter:
    """A stop flag that is raised once the loop has asked `checks` times (as Ctrl-C would be)."""

    def __init__(self, checks: int):
        self.checks = checks

    @property
    def requested(self) -> bool:
        self.checks -= 1
        return self.checks < 0


def test_autoencoder_resume_is_bit_identical(tmp_path):
    from safetensors.torch import load_file

    held = random_images(4, torch.Generator().manual_seed(9))
    straight = train_autoencoder(TINY_VAE, tmp_path / "a", random_images, held, log=lambda m: None)
    stopped = train_autoencoder(TINY_VAE, tmp_path / "b", random_images, held, log=lambda m: None,
                                stop=StopAfter(2))
    assert stopped is None and json.loads((tmp_path / "b" / "vae-checkpoint" / "state.json").read_text())["step"] == 2
    resumed = train_autoencoder(TINY_VAE, tmp_path / "b", random_images, held, resume=True, log=lambda m: None)
    a, b = (load_file(p / "diffusion_pytorch_model.safetensors") for p in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((resumed / "training.json").read_text())
    assert info["steps"] == 4 and info["held_out_psnr_db"] > 0


def test_scaling_factor_gives_unit_variance_latents(tmp_path):
    held = random_images(8, torch.Generator().manual_seed(2))
    folder = train_autoencoder(TINY_VAE, tmp_path, random_images, held, log=lambda m: None)
    from diffusers import AutoencoderKL

    codec = LatentCodec(AutoencoderKL.from_pretrained(folder), 16)
    with torch.no_grad():
        assert abs(float(codec.encode(held).std()) - 1.0) < 1e-3


# ---------------------------------------------------------------- the folder

def test_latent_folder_loads_offline_and_encodes_with_its_vae(latent_folder):
    prior = load_prior(str(latent_folder), device="cpu")
    assert isinstance(prior, EmbeddedPrior) and prior.joint_views and prior.resolution == 16
    images = torch.rand(2, 24, 24, 3, requires_grad=True)
    x = prior.encode(images)
    assert x.shape == (2, 4, 4, 4)
    vae = prior.codec.vae
    with torch.no_grad():
        hand = vae.encode(resize_square(images.permute(0, 3, 1, 2), 16) * 2 - 1).latent_dist.mean
    assert torch.allclose(x.detach(), hand * vae.config.scaling_factor, atol=1e-6)
    x.square().sum().backward()  # score distillation's gradient reaches the render through the encoder
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert prior.decode(x.detach()).shape == (2, 16, 16, 3)
    meta = json.loads((latent_folder / "prior.json").read_text())
    assert meta["kind"] == "dream3d-embedded-latent-prior" and "camera_encoder" in meta["parameters"]


def test_camera_tokens_condition_and_no_camera_is_the_text_alone(latent_folder):
    prior = load_prior(str(latent_folder), device="cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 4, 4, generator=gen)
    t = torch.full((8,), 500)
    emb = prior.embed(["a red cube"] * 8)
    pose = torch.randn(8, 16, generator=gen)
    with torch.no_grad():
        with_cam = prior.predict_eps(x, t, emb, pose)
        none = prior.predict_eps(x, t, emb, None)
        plain_unet = prior.unet(x, t, encoder_hidden_states=emb).sample  # as StableDiffusionPipeline calls it
        assert torch.allclose(none, plain_unet, atol=1e-6)
        assert (with_cam - none).abs().max() > 1e-4
        # rows with and without a camera in one batch (whole groups of 4) equal separate calls
        mixed_pose = torch.cat([pose[:4], torch.zeros(4, 16)])
        mixed = prior.predict_eps(x, t, emb, mixed_pose, n_views=4)
        first = prior.predict_eps(x[:4], t[:4], emb[:4], pose[:4], n_views=4)
        second = prior.predict_eps(x[4:], t[4:], emb[4:], None, n_views=4)
        assert torch.allclose(mixed, torch.cat([first, second]), atol=1e-6)
        with pytest.raises(ValueError, match="every view of a group"):
            prior.predict_eps(x, t, emb, torch.cat([pose[:2], torch.zeros(6, 16)]), n_views=4)


def test_stable_diffusion_pipeline_loads_the_folder_and_samples(latent_folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(latent_folder, local_files_only=True)
    prior = load_prior(str(latent_folder), device="cpu")
    ids = pipe.tokenizer(["a red cube"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(pipe.text_encoder(ids)[0], prior.embed(["a red cube"]), atol=1e-6)
    out = pipe("a red cube", num_inference_steps=2, guidance_scale=1.5, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 16, 16, 3)  # 4x4 latents, f = 4
    samples = prior.sample(["a red cube"], n=2, steps=2)
    assert samples.shape == (2, 16, 16, 3) and 0 <= float(samples.min()) and float(samples.max()) <= 1


def test_the_latent_scheduler_does_not_clip_latents():
    assert build_scheduler(TINY_LATENT).config.clip_sample is False
    assert build_scheduler(EmbeddedModelConfig()).config.clip_sample is True


# ---------------------------------------------------------------- training

def test_tiny_latent_training_run_writes_a_pipeline_folder(tmp_path):
    cfg = PriorTrainConfig(model=TINY_LATENT, latent=True, autoencoder=TINY_VAE, steps=2, batch_size=8, views=4,
                           data="render", threads=1, sample_steps=0, world="toy-world")
    folder = train_prior(cfg, tmp_path)
    for part in ("vae", "unet", "text_encoder", "tokenizer", "scheduler", "camera_encoder"):
        assert (folder / part).is_dir(), part
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    prior = load_prior(str(folder), device="cpu")
    assert prior.world.name == "toy-world" and prior.joint_views
    assert PriorTrainConfig(latent=True).model.latent_channels == AutoencoderConfig().latent_channels == 8  # --latent: the latent architecture
    # going on with decoder steps refines the decoder once, then trains on (same latents, same folder)
    more = dataclasses.replace(cfg, steps=3, decoder_steps=2)
    train_prior(more, tmp_path, resume=True)
    assert json.loads((tmp_path / "vae" / "training.json").read_text())["decoder_steps"] == 2
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 3
    from dream3d.errors import UserError

    with pytest.raises(UserError, match="latent"):
        train_prior(dataclasses.replace(cfg, latent=False), tmp_path / "x")


@pytest.mark.parametrize("guidance", ["sds", "mvsds"])
def test_generate_runs_through_the_latent_prior(tmp_path, latent_folder, guidance):
    from dream3d import config, pipeline

    cfg = config.build({"prompt": "a red cube", "model": str(latent_folder), "device": "cpu",
                        "guidance": {"name": guidance},
                        "train": {"steps": 2, "resolution": 16, "preview_every": 0},
                        "export": {"mesh": False, "video": False}})
    run = pipeline.generate(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in next((tmp_path / "run").rglob("metrics.jsonl")).read_text().splitlines()]
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows), rows
    assert run is not None


def test_a_half_precision_copy_loads_and_predicts_like_the_original(latent_folder, tmp_path):
    from dream3d.priors.prior_folder import copy_half

    half = copy_half(latent_folder, tmp_path / "half")
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*.safetensors"))  # noqa: E731
    assert size(half) < 0.6 * size(latent_folder)
    a, b = (load_prior(str(d), device="cpu") for d in (latent_folder, half))
    x, t = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(1)), torch.full((4,), 300)
    emb, pose = a.embed(["a red cube"] * 4), torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ea, eb = a.predict_eps(x, t, emb, pose, n_views=4), b.predict_eps(x, t, emb, pose, n_views=4)
    assert eb.dtype == torch.float32 and (ea - eb).abs().max() < 2e-2 * ea.abs().max()


def test_refining_the_decoder_keeps_the_latents_and_sharpens(tmp_path):
    from diffusers import AutoencoderKL

    from dream3d.priors.autoencoder import refine_decoder

    held = random_images(4, torch.Generator().manual_seed(5))
    fixed = lambda n, gen: held[:n]  # noqa: E731 - the same images every step: the decoder must fit them
    folder = train_autoencoder(TINY_VAE, tmp_path, fixed, held, log=lambda m: None)
    before = LatentCodec(AutoencoderKL.from_pretrained(folder), 16)
    with torch.no_grad():
        z_before = before.encode(held)
    refine_decoder(dataclasses.replace(TINY_VAE, lr=1e-2), tmp_path, 30, fixed, held, log=lambda m: None)
    after = LatentCodec(AutoencoderKL.from_pretrained(folder), 16)
    info = json.loads((folder / "training.json").read_text())
    with torch.no_grad():
        assert torch.equal(after.encode(held), z_before)  # the latent space is unchanged
    assert after.scaling_factor == before.scaling_factor
    assert info["decoder_steps"] == 30 and info["held_out_psnr_db"] > info["encoder_psnr_db"]
    assert refine_decoder(TINY_VAE, tmp_path, 30, fixed, held) == folder  # done already: nothing to do


def test_prior_train_cli_passes_the_latent_mode(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from dream3d import cli
    from dream3d.priors import train_embedded
    from dream3d.procedural import groups

    got = {}
    monkeypatch.setattr(train_embedded, "train_prior", lambda cfg, out, resume=True: got.setdefault("cfg", cfg) and out)
    monkeypatch.setattr(groups, "group_shard_path", lambda i, res, views, root=None: tmp_path)  # all present
    args = ["prior", "train", "--out", str(tmp_path / "o"), "--world", "toy-world", "--views", "4", "--latent",
            "--decoder-steps", "300", "--shards", "2", "--steps", "5"]
    res = CliRunner().invoke(cli.app, args)
    assert res.exit_code == 0, res.output
    cfg = got["cfg"]
    assert cfg.latent and cfg.decoder_steps == 300 and cfg.model.latent_channels == 8 and cfg.model.joint_views
    assert cfg.model.resolution == 64 and cfg.autoencoder.resolution == 64 and cfg.world == "toy-world"
    res = CliRunner().invoke(cli.app, [*args[:-2], "--steps", "5", "--decoder-steps", "-1"])
    assert res.exit_code != 0 and "--decoder-steps" in str(res.exception)
