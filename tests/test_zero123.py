"""Zero-1-to-3 prior and guidance, on a tiny random model saved in the diffusers layout of
the public ports and opened through `load_prior` (nothing is downloaded)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dream3d.cameras.orbit import orbit_cameras
from dream3d.errors import UserError
from dream3d.guidance.zero123 import Zero123Config, Zero123Guidance, relative_pose
from dream3d.priors.loading import detect_family, load_prior
from dream3d.types import RenderOutput

CROSS = 32  # the UNet's cross-attention width = cc_projection's output
PROJ = 16  # CLIP image embedding size; cc_projection reads PROJ + 4
RES = 16  # render side the tiny prior reads (8x8 latents through a 2-level VAE)


def build_tiny_zero123(folder: Path, seed: int = 0) -> Path:
    """A folder in the Zero-1-to-3 diffusers layout with tiny random parts."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        folder.mkdir(parents=True, exist_ok=True)
        UNet2DConditionModel(  # noisy latent ++ reference latent in, noise out
            sample_size=8, in_channels=8, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=CROSS, attention_head_dim=8,
        ).save_pretrained(folder / "unet")
        AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4, sample_size=RES,
        ).save_pretrained(folder / "vae")
        CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8, projection_dim=PROJ,
        )).save_pretrained(folder / "image_encoder")
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                           image_mean=[0.48145466, 0.4578275, 0.40821073],
                           image_std=[0.26862954, 0.26130258, 0.27577711]).save_pretrained(folder / "feature_extractor")
        (folder / "cc_projection").mkdir()
        (folder / "cc_projection" / "config.json").write_text(json.dumps(
            {"_class_name": "CCProjection", "_diffusers_version": "0.42.1", "in_channel": PROJ + 4, "out_channel": CROSS}))
        linear = torch.nn.Linear(PROJ + 4, CROSS)
        save_file({"projection.weight": linear.weight.detach().contiguous(), "projection.bias": linear.bias.detach()},
                  str(folder / "cc_projection" / "diffusion_pytorch_model.safetensors"))
        DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1).save_pretrained(folder / "scheduler")
        (folder / "model_index.json").write_text(json.dumps({
            "_class_name": "Zero1to3StableDiffusionPipeline", "_diffusers_version": "0.42.1",
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "cc_projection": ["pipeline_zero1to3", "CCProjection"], "scheduler": ["diffusers", "DDIMScheduler"],
        }, indent=2))
    return folder


@pytest.fixture(scope="module")
def zero123_dir(tmp_path_factory) -> Path:
    return build_tiny_zero123(tmp_path_factory.mktemp("models") / "tiny-zero123")


@pytest.fixture(scope="module")
def prior(zero123_dir):
    return load_prior(str(zero123_dir), device="cpu", resolution=RES)


def _cams(elevation, azimuth, distance, size=RES):
    n = len(elevation)
    return orbit_cameras(torch.tensor(elevation, dtype=torch.float32), torch.tensor(azimuth, dtype=torch.float32),
                         torch.tensor(distance, dtype=torch.float32), torch.full((n,), 45.0), size, size)


def _reference(size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(1, size, size, 3, generator=g)
    mask = torch.zeros(1, size, size, 1)
    mask[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1.0
    return rgb, mask


class FixedT:
    def __init__(self, t: int):
        self.t = t

    def sample(self, batch, progress, generator=None):
        return torch.full((batch,), self.t, dtype=torch.long)


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


# ---------------------------------------------------------------- loading

def test_folder_loads_offline_frozen_through_load_prior(zero123_dir, prior):
    from dream3d.priors.zero123 import Zero123Prior

    assert detect_family(zero123_dir) == "zero123"
    assert isinstance(prior, Zero123Prior) and not prior.reads_text
    for m in (prior.unet, prior.vae, prior.image_encoder, prior.cc_projection):
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    assert prior.clip_size == 32 and prior.cc_projection.in_features == PROJ + 4
    assert prior.num_train_timesteps == 1000
    x = prior.encode(torch.rand(2, 24, 24, 3))
    assert x.shape == (2, 4, 8, 8) and prior.decode(x).shape == (2, RES, RES, 3)
    clip, latent = prior.embed_reference(torch.rand(1, 40, 40, 3))
    assert clip.shape == (1, 1, PROJ) and latent.shape == (1, 4, 8, 8)


def test_folder_without_model_index_is_still_recognised(zero123_dir, tmp_path):
    copy = tmp_path / "z"
    shutil.copytree(zero123_dir, copy)
    (copy / "model_index.json").unlink()
    assert detect_family(copy) == "zero123"


def test_missing_cc_projection_is_one_line(zero123_dir, tmp_path):
    copy = tmp_path / "z"
    shutil.copytree(zero123_dir, copy)
    shutil.rmtree(copy / "cc_projection")
    with pytest.raises(UserError) as err:
        load_prior(str(copy), device="cpu")
    assert "cc_projection/" in _one_line(err)


@pytest.mark.parametrize("broken", ["model_index.json", "cc_projection/config.json"])
def test_corrupt_json_is_one_line(zero123_dir, tmp_path, broken):
    copy = tmp_path / "z"
    shutil.copytree(zero123_dir, copy)
    (copy / broken).write_text("{not json")
    with pytest.raises(UserError) as err:
        load_prior(str(copy), device="cpu")
    assert "corrupt" in _one_line(err)


def test_parts_that_do_not_fit_are_one_line(zero123_dir, tmp_path):
    copy = tmp_path / "z"
    shutil.copytree(zero123_dir, copy)
    cfg = json.loads((copy / "cc_projection" / "config.json").read_text())
    (copy / "cc_projection" / "config.json").write_text(json.dumps({**cfg, "in_channel": PROJ + 5}))
    with pytest.raises(UserError) as err:  # the saved weights are [CROSS, PROJ + 4]
        load_prior(str(copy), device="cpu")
    assert "cc_projection" in _one_line(err)


# ---------------------------------------------------------------- relative camera

def test_relative_pose_by_hand():
    ref = _cams([0.0], [0.0], [2.9])
    views = _cams([0.0, 0.0, 0.0, 30.0, 0.0, 0.0], [0.0, 90.0, 180.0, 0.0, -90.0, 45.0], [2.9, 2.9, 2.9, 2.9, 3.2, 2.9])
    pose = relative_pose(views, ref, "zero123")
    s = math.sqrt(0.5)
    expected = torch.tensor([
        [0.0, 0.0, 1.0, 0.0],  # the reference view itself
        [0.0, 1.0, 0.0, 0.0],  # side view: 90 degrees of azimuth
        [0.0, 0.0, -1.0, 0.0],  # back view
        [-math.pi / 6, 0.0, 1.0, 0.0],  # 30 degrees higher: the polar angle from up shrinks by 30
        [0.0, -1.0, 0.0, 0.3],  # the other side, 0.3 farther
        [0.0, s, s, 0.0],
    ])
    assert torch.allclose(pose, expected, atol=1e-6)
    # dream3d's azimuth 90 puts the camera on +X: a counter-clockwise turn seen from above (+Y), as Zero123's
    assert torch.allclose(views.c2w[1, :3, 3], torch.tensor([2.9, 0.0, 0.0]), atol=1e-5)
    # Stable Zero123: the reference's own polar angle replaces the distance change
    high_ref = _cams([20.0], [30.0], [2.9])
    stable = relative_pose(views[1:2], high_ref, "stable-zero123")
    assert torch.allclose(stable, torch.tensor([[math.radians(20.0), math.sin(math.radians(60.0)),
                                                 math.cos(math.radians(60.0)), math.radians(70.0)]]), atol=1e-6)


# ---------------------------------------------------------------- guidance

def test_guidance_gradient_shape_and_finite(prior):
    guidance = Zero123Guidance(prior, Zero123Config())
    guidance.set_reference(*_reference(), _cams([0.0], [0.0], [2.9], 32))
    rgb = torch.rand(3, 24, 24, 3, requires_grad=True)
    out = RenderOutput(rgb=rgb, alpha=torch.ones(3, 24, 24, 1), depth=torch.zeros(3, 24, 24, 1))
    res = guidance(out, _cams([0.0, 10.0, 20.0], [0.0, 90.0, 200.0], [2.9, 2.9, 3.0], 24), None, 0.5,
                   generator=torch.Generator().manual_seed(0))
    res.loss.backward()
    assert rgb.grad.shape == rgb.shape and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert res.logs["grad_norm"] > 0 and math.isfinite(res.logs["grad_norm"])


def test_sds_gradient_is_the_hand_formula(prior, zero123_dir):
    from transformers import CLIPImageProcessor

    t_fixed, scale, B = 600, 3.0, 2
    guidance = Zero123Guidance(prior, Zero123Config(guidance_scale=scale), timesteps=FixedT(t_fixed))
    ref_rgb, ref_mask = _reference(32)
    ref_cam = _cams([10.0], [20.0], [2.9], 32)
    guidance.set_reference(ref_rgb, ref_mask, ref_cam)
    cams = _cams([0.0, 40.0], [110.0, -70.0], [2.9, 2.7])
    rgb = torch.rand(B, RES, RES, 3, generator=torch.Generator().manual_seed(3), requires_grad=True)
    eps = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    out = RenderOutput(rgb=rgb, alpha=torch.ones(B, RES, RES, 1), depth=torch.zeros(B, RES, RES, 1))
    guidance(out, cams, None, 0.3, noise=eps).loss.backward()

    # by hand: the reference on white, CLIP through the folder's own processor, the VAE's unscaled mean
    white = (ref_rgb * ref_mask + 1.0 - ref_mask)[0].numpy()
    processor = CLIPImageProcessor.from_pretrained(zero123_dir / "feature_extractor")
    pixels = processor(images=white, do_resize=False, do_center_crop=False, do_rescale=False,
                       input_data_format="channels_last", return_tensors="pt").pixel_values
    with torch.no_grad():
        clip = prior.image_encoder(pixel_values=pixels).image_embeds  # [1, PROJ]
        ref_x = F.interpolate(torch.from_numpy(np.ascontiguousarray(white)).permute(2, 0, 1)[None], (RES, RES),
                              mode="bilinear", antialias=True) * 2 - 1
        ref_latent = prior.vae.encode(ref_x).latent_dist.mean
        d_polar = torch.deg2rad(torch.tensor([10.0 - 0.0, 10.0 - 40.0]))
        d_az = torch.deg2rad(torch.tensor([110.0 - 20.0, -70.0 - 20.0]))
        pose = torch.stack([d_polar, d_az.sin(), d_az.cos(), torch.tensor([0.0, -0.2])], dim=-1)
        w = prior.cc_projection.weight
        token = (torch.cat([clip.expand(B, -1), pose], dim=-1) @ w.T + prior.cc_projection.bias)[:, None]
    x = prior.vae.encode(F.interpolate(rgb.permute(0, 3, 1, 2), (RES, RES)) * 2 - 1).latent_dist.mean \
        * prior.vae.config.scaling_factor
    with torch.no_grad():
        a = prior.scheduler.alphas_cumprod[t_fixed]
        x_t = a.sqrt() * x + (1 - a).sqrt() * eps
        t = torch.full((B,), t_fixed)
        eps_c = prior.unet(torch.cat([x_t, ref_latent.expand(B, -1, -1, -1)], 1), t, encoder_hidden_states=token).sample
        eps_u = prior.unet(torch.cat([x_t, torch.zeros(B, 4, 8, 8)], 1), t,
                           encoder_hidden_states=torch.zeros_like(token)).sample
        g = (1 - a) * (eps_u + scale * (eps_c - eps_u) - eps)
    (expected,) = torch.autograd.grad(x, rgb, g / B)  # d(0.5 |x - sg(x - g)|^2 / B)/d rgb
    assert g.abs().max() > 1e-3
    assert torch.allclose(rgb.grad, expected, rtol=1e-4, atol=1e-6)


def test_guidance_without_a_reference_is_refused(prior):
    guidance = Zero123Guidance(prior)
    out = RenderOutput(rgb=torch.rand(1, RES, RES, 3), alpha=torch.ones(1, RES, RES, 1),
                       depth=torch.zeros(1, RES, RES, 1))
    with pytest.raises(UserError) as err:
        guidance(out, _cams([0.0], [0.0], [2.9]), None, 0.0)
    assert "--image" in _one_line(err)
    assert Zero123Guidance.takes_reference_image


@pytest.mark.parametrize("name", ["sds", "vsd", "csd", "ism", "mvsds"])
def test_text_guidances_are_refused_on_this_prior(prior, name):
    from dream3d import registry

    entry = registry.lookup("guidance", name)
    with pytest.raises(UserError) as err:
        entry.cls().check_prior(prior, entry.config_class()())
    line = _one_line(err)
    assert name in line
    with pytest.raises(UserError) as err:  # and the prior alone will not predict noise without an image
        prior.predict_eps(torch.zeros(1, 4, 8, 8), torch.tensor([10]), prior.embed([""]))
    _one_line(err)


def test_this_guidance_is_refused_on_a_text_prior(tiny_sd_prior):
    with pytest.raises(UserError) as err:
        Zero123Guidance(tiny_sd_prior)
    assert "Zero-1-to-3" in _one_line(err)


# ---------------------------------------------------------------- through the CLI

def _photo(path: Path) -> Path:
    from PIL import Image

    img = np.zeros((48, 48, 4), np.uint8)
    img[12:36, 12:36] = [200, 30, 30, 255]  # a red square on transparency
    Image.fromarray(img, "RGBA").save(path)
    return path


CLI_FAST = ["--preset", "dreamfusion", "--steps", "2", "--resolution", "32", "--device", "cpu",
            "--set", "export.mesh=false", "--set", "export.video=false", "--set", "train.preview_every=0",
            "--set", "representation.samples_per_ray=16", "--set", f"prior_resolution={RES}"]


def test_cli_generate_with_an_image_under_zero123(zero123_dir, tmp_path):
    from typer.testing import CliRunner

    from dream3d.cli import app

    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["generate", "a red cube", "--image", str(_photo(tmp_path / "ref.png")),
                                   "--guidance", "zero123", "--model", str(zero123_dir), "--out", str(out), *CLI_FAST])
    assert res.exit_code == 0, res.output
    run = next(out.iterdir())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and not any(r["skipped"] for r in rows)
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in rows)
    assert json.loads((run / "run.json").read_text())["status"] == "done"


def test_cli_refuses_a_text_guidance_on_this_prior_in_one_line(zero123_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "o"
    res = subprocess.run([sys.executable, "-m", "dream3d.cli", "generate", "a red cube", "--image",
                          str(_photo(tmp_path / "ref.png")), "--guidance", "sds", "--model", str(zero123_dir),
                          "--out", str(out), *CLI_FAST], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip() and "Loading weights" not in line
             and "torchvision" not in line]
    assert any("guidance sds" in line and "reads no text" in line for line in lines), res.stderr
    assert "Traceback" not in res.stderr and len(lines) <= 2, res.stderr
    assert not out.exists() or not any(out.iterdir())  # refused before a run folder was made
