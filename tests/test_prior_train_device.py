"""`prior train --device`: refused in one line where CUDA is absent; on a CUDA machine (`-m cuda`) a tiny
latent run draws the same data and noise as on the CPU, so its losses agree with the CPU run's."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from dream3d.errors import UserError
from dream3d.priors.train_embedded import train_prior
from tests.test_warm_start import CFG


def test_cuda_without_a_device_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device"):
        train_prior(dataclasses.replace(CFG, device="cuda"), tmp_path)


def test_the_cli_refuses_an_unknown_device(tmp_path):
    from typer.testing import CliRunner

    from dream3d import cli

    res = CliRunner().invoke(cli.app, ["prior", "train", "--out", str(tmp_path), "--device", "tpu"])
    assert res.exit_code != 0 and "--device" in str(res.exception)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_run_follows_the_cpu_run(tmp_path):
    losses = {}
    for device in ("cpu", "cuda"):
        seen = losses.setdefault(device, [])
        folder = train_prior(dataclasses.replace(CFG, steps=3, device=device), tmp_path / device,
                             on_step=lambda s, info: seen.append(info["loss"]))
        assert (folder / "unet").is_dir() and (tmp_path / device / "checkpoint" / "state.json").exists()
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=2e-2)
