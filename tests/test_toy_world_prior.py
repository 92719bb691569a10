"""The toy-world latent prior kept in assets/priors/toy-world while it trains: small, complete, loads
offline through dream3d and through `diffusers.StableDiffusionPipeline`, denoises groups of joint
views, and its samples already take the prompt's colour far more often than chance."""
from __future__ import annotations

import json

import pytest
import torch

from dream3d.cameras import orbit_cameras
from dream3d.priors.loading import load_prior
from dream3d.priors.paths import embedded_prior_dir

torch.set_num_threads(2)
FOLDER = embedded_prior_dir("toy-world")


@pytest.fixture(scope="module")
def prior():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # any network call fails: the folder alone must do
        yield load_prior("toy-world", device="cpu")


def test_the_folder_is_complete_small_and_says_it_is_in_training():
    for name in ("model_index.json", "prior.json", "README.md", "unet", "vae", "text_encoder", "tokenizer",
                 "scheduler", "camera_encoder"):
        assert (FOLDER / name).exists(), name
    assert sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file()) <= 50 * 2**20
    meta = json.loads((FOLDER / "prior.json").read_text())
    assert meta["world"] == "toy-world" and meta["model_config"]["joint_views"] and meta["train_steps"] > 0
    assert "in training" in (FOLDER / "README.md").read_text().splitlines()[0].lower()


def test_it_loads_as_a_joint_view_latent_prior_and_samples_groups(prior):
    assert prior.world.name == "toy-world" and prior.joint_views and prior.resolution == 64
    four = lambda v: torch.full((4,), v)  # noqa: E731
    cams = orbit_cameras(four(15.0), torch.tensor([0.0, 90.0, 180.0, 270.0]), four(2.9), four(45.0), 64, 64)
    images = prior.sample(["a red duck"], n=4, steps=4, seed=0, n_views=4, camera=cams)
    assert images.shape == (4, 64, 64, 3) and 0 <= images.min() and images.max() <= 1


def test_stable_diffusion_pipeline_loads_and_samples_it():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(FOLDER, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    out = pipe("a red duck", num_inference_steps=3, height=64, width=64, guidance_scale=1.5,
               generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


def test_its_samples_take_the_prompts_colour_more_often_than_chance(prior):
    from dream3d.evaluation.classifier import load_classifier
    from dream3d.priors.vocab import caption

    # one prompt per colour (objects in turn), read by the toy-world classifier; chance is 1 in 14
    colours, objects = prior.world.colours, prior.world.objects
    prompts = [caption(c, objects[(5 * i) % len(objects)]) for i, c in enumerate(colours)]
    images = prior.sample(prompts, n=1, guidance_scale=5.0, steps=20, seed=0)
    clf = load_classifier(world=prior.world)
    read = clf.predict(images).colour_logits.argmax(-1)
    right = sum(clf.cfg.colours[int(r)] == c for r, c in zip(read, colours))
    assert right >= len(colours) // 3, f"{right} of {len(colours)} colours read"
