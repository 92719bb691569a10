"""`prior train --init-from`: a new run starts from an exported (float16) prior folder's weights, EMA,
VAE and step count, warms its fresh optimizer up again, and refuses a folder of another model or world."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from dream3d.errors import UserError
from dream3d.priors.prior_folder import copy_half, load_prior_components
from dream3d.priors.train_embedded import PriorTrainConfig, train_prior
from tests.test_latent_prior import TINY_LATENT, TINY_VAE

torch.set_num_threads(1)

CFG = PriorTrainConfig(model=TINY_LATENT, latent=True, autoencoder=TINY_VAE, steps=2, batch_size=8, views=4,
                       data="render", threads=1, sample_steps=0, world="toy-world", warmup_steps=4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 2-step run's prior, kept as the repository keeps one: float16."""
    root = tmp_path_factory.mktemp("first")
    return copy_half(train_prior(CFG, root / "run"), root / "half")


def _weights(folder):
    model, *_ = load_prior_components(folder)
    return model.state_dict()


def test_a_warm_started_run_begins_with_the_folders_weights_vae_and_steps(exported, tmp_path):
    # as many steps as the folder has: nothing to train, the export is the folder's weights as they were
    same = train_prior(dataclasses.replace(CFG, init_from=str(exported)), tmp_path / "same")
    a, b = _weights(exported), _weights(same)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((same / "prior.json").read_text())["train_steps"] == 2
    vae_a, vae_b = (load_file(d / "vae" / "diffusion_pytorch_model.safetensors") for d in (exported, tmp_path / "same"))
    assert all(torch.equal(vae_a[k], vae_b[k]) for k in vae_a)  # the run's VAE is the folder's


def test_training_goes_on_from_the_folder_and_resumes_with_its_start(exported, tmp_path):
    seen = []
    run = tmp_path / "more"
    train_prior(dataclasses.replace(CFG, init_from=str(exported), steps=3), run, on_step=lambda s, i: seen.append(s))
    assert seen == [3]  # the step count goes on from the folder's 2
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["start_step"] == 2
    moved = _weights(run / "prior")
    start = _weights(exported)
    assert any(not torch.equal(moved[k], start[k]) for k in start)  # it trained
    # a resumed run keeps its start step (the warm-up counts from it) and ignores --init-from
    train_prior(dataclasses.replace(CFG, init_from=str(tmp_path / "nowhere"), steps=4), run, resume=True,
                on_step=lambda s, i: seen.append(s))
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert seen == [3, 4] and state["step"] == 4 and state["start_step"] == 2


def test_the_warm_up_starts_again_for_the_fresh_optimizer(exported, tmp_path, monkeypatch):
    lrs = []
    real_step = torch.optim.AdamW.step

    def record(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    train_prior(dataclasses.replace(CFG, init_from=str(exported), steps=4), tmp_path / "lr")
    assert lrs == pytest.approx([CFG.lr * 1 / 4, CFG.lr * 2 / 4])


def test_a_folder_of_another_model_world_or_nothing_is_refused(exported, tmp_path):
    wider = dataclasses.replace(TINY_LATENT, block_out_channels=(8, 16, 24))
    with pytest.raises(UserError, match="block_out_channels"):
        train_prior(dataclasses.replace(CFG, model=wider, init_from=str(exported)), tmp_path / "a")
    with pytest.raises(UserError, match="toy-world world, not tiny-shapes"):
        train_prior(dataclasses.replace(CFG, world="tiny-shapes", init_from=str(exported)), tmp_path / "b")
    with pytest.raises(UserError, match="no prior.json"):
        train_prior(dataclasses.replace(CFG, init_from=str(tmp_path)), tmp_path / "c")


def test_prior_train_cli_passes_init_from_and_lr(monkeypatch, tmp_path, exported):
    from typer.testing import CliRunner

    from dream3d import cli
    from dream3d.priors import train_embedded
    from dream3d.procedural import groups

    got = {}
    monkeypatch.setattr(train_embedded, "train_prior", lambda cfg, out, resume=True: got.setdefault("cfg", cfg) and out)
    monkeypatch.setattr(groups, "group_shard_path", lambda i, res, views, root=None: tmp_path)  # all present
    args = ["prior", "train", "--out", str(tmp_path / "o"), "--world", "toy-world", "--views", "4", "--latent",
            "--shards", "1", "--steps", "5"]
    res = CliRunner().invoke(cli.app, [*args, "--init-from", str(exported), "--lr", "5e-4"])
    assert res.exit_code == 0, res.output
    assert got["cfg"].init_from == str(exported) and got["cfg"].lr == 5e-4
    res = CliRunner().invoke(cli.app, [*args, "--init-from", str(tmp_path)])
    assert res.exit_code != 0 and "no prior.json" in str(res.exception)
    res = CliRunner().invoke(cli.app, [*args, "--lr", "0"])
    assert res.exit_code != 0 and "--lr" in str(res.exception)
