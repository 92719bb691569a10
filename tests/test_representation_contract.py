"""What every registered representation promises the trainer and the exporters.

A new representation passes this file by being registered: its config names a learning
rate for each parameter group and a weight for each loss term its renders report, and
it declares its optional capabilities on the base class's methods."""
from __future__ import annotations

import pytest
import torch

from dream3d import config, registry
from dream3d.cameras import orbit_cameras
from dream3d.representations.base import CAPABILITIES, Representation

SMALL = {  # options that keep each representation quick to build and render
    "hashgrid_nerf": {"samples_per_ray": 8, "log2_table_size": 12},
    "gaussians": {"n_init": 200},
    "dmtet": {"grid_resolution": 12, "log2_table_size": 12},
    "fixed_mesh": {"log2_table_size": 12},
}
EXPECTED = {"hashgrid_nerf": {"albedo", "occupancy_at"}, "gaussians": {"save_splats", "occupancy_at"},
            "dmtet": {"albedo", "occupancy_at"},
            "fixed_mesh": {"albedo", "source_mesh"}}


def build(name: str) -> Representation:
    entry = registry.lookup("representation", name)
    return registry.build("representation", name, config.from_dict(entry.config_class(), SMALL.get(name, {})))


def test_every_registered_representation_is_covered_here():
    assert set(registry.names("representation")) == set(EXPECTED) == set(SMALL)


@pytest.mark.parametrize("name", registry.names("representation"))
def test_config_owns_rates_for_every_group_and_weights_for_every_loss_term(name):
    torch.manual_seed(0)
    rep = build(name).train()
    assert isinstance(rep, Representation)
    rates, weights = config.own_table(rep.cfg, "lr"), config.own_table(rep.cfg, "loss_weights")
    assert set(rep.param_groups()) <= set(rates), "a parameter group without a learning rate"
    cams = orbit_cameras(torch.tensor([20.0, 0.0]), torch.tensor([0.0, 120.0]), torch.full((2,), 2.5),
                         torch.full((2,), 45.0), 16, 16)
    out = rep.render(cams, torch.full((2, 3), 0.5))
    assert out.rgb.shape == (2, 16, 16, 3) and out.alpha.shape == (2, 16, 16, 1)
    assert set(out.extras) <= set(weights), "a loss term its config gives no weight"


@pytest.mark.parametrize("name", registry.names("representation"))
def test_capabilities_are_declared_overrides(name):
    cls = registry.lookup("representation", name).cls()
    assert {c for c in CAPABILITIES if cls.has(c)} == EXPECTED[name]
    with pytest.raises(ValueError, match="unknown capability"):
        cls.has("query_albedo")
    if not cls.has("albedo"):
        with pytest.raises(NotImplementedError):
            build(name).albedo(torch.zeros(1, 3))


def test_trainer_refuses_a_loss_term_its_config_does_not_name(tmp_path):
    """Renaming an extras key must stop the run, not silently switch a regulariser off."""
    from dream3d import presets
    from dream3d.pipeline import build_stage, load_prior_for

    cfg = presets.resolve("fast", {"prompt": "a red cube", "device": "cpu"}, ["train.steps=1", "train.resolution=16"])
    prior, prompt = load_prior_for(cfg, torch.device("cpu"))
    trainer = build_stage(cfg, 0, prior, prompt, tmp_path, torch.device("cpu"))
    render = trainer.rep.render

    def renamed(*args, **kwargs):
        out = render(*args, **kwargs)
        out.extras["sparsity"] = out.extras.pop("opacity")
        return out

    trainer.rep.render = renamed
    with pytest.raises(KeyError, match="sparsity"):
        trainer.step(0)
