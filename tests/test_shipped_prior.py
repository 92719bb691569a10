"""The embedded prior that ships in assets/priors/tiny-shapes: loads offline, samples, and its
score moves an image toward what the prompt names (read by the shipped classifier)."""
from __future__ import annotations

import pytest
import torch

from dream3d.cameras import orbit_cameras
from dream3d.evaluation.classifier import load_classifier
from dream3d.guidance.prompt import PromptProcessor
from dream3d.guidance.sds import SDSConfig, SDSGuidance
from dream3d.priors.loading import load_prior
from dream3d.priors.paths import embedded_prior_dir
from dream3d.types import RenderOutput

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def prior(monkeypatch_module):
    # Any network call would fail the test: the prior must load from the repository alone.
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    return load_prior("tiny-shapes", device="cpu")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_the_shipped_folder_is_small_and_complete():
    folder = embedded_prior_dir()
    for name in ("prior.json", "README.md", "unet", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / name).exists(), name
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size <= 25 * 2**20


def test_samples_have_the_right_shape_and_range(prior):
    images = prior.sample(["a red cube", "a blue chair, back view"], n=2, steps=10, seed=0)
    assert images.shape == (4, prior.resolution, prior.resolution, 3)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.05


def test_sds_on_a_single_image_moves_the_reading_to_the_prompt(prior):
    clf = load_classifier()
    cams = orbit_cameras(torch.tensor([15.0]), torch.tensor([30.0]), torch.tensor([2.9]), torch.tensor([45.0]), 32, 32)
    logits = torch.zeros(1, 32, 32, 3, requires_grad=True)  # a flat grey image
    opt = torch.optim.Adam([logits], lr=0.05)
    sds = SDSGuidance(prior, SDSConfig(guidance_scale=20.0, t_min=0.02, t_max=0.98))
    prompt = PromptProcessor(prior, "a blue sphere")
    gen = torch.Generator().manual_seed(0)

    def reading():
        out = clf.predict(torch.sigmoid(logits.detach()))
        return clf.cfg.objects[out.object_logits.argmax()], clf.cfg.colours[out.colour_logits.argmax()]

    assert reading() != ("sphere", "blue")
    for step in range(300):
        rgb = torch.sigmoid(logits)
        out = RenderOutput(rgb=rgb, alpha=torch.ones(1, 32, 32, 1), depth=torch.ones(1, 32, 32, 1))
        opt.zero_grad()
        sds(out, cams, prompt, progress=step / 300, generator=gen).loss.backward()
        opt.step()
    assert reading() == ("sphere", "blue")
