"""The shared field components: one hash-grid albedo field for the NeRF and DMTet, built
from one config; runs saved before it (flat state-dict keys, flat config keys) still load."""
from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from safetensors.torch import load_file, save_file

from dream3d import config, presets
from dream3d.representations.dmtet import DMTet, DMTetConfig
from dream3d.representations.fields import HashGridAlbedo, HashGridConfig
from dream3d.representations.hash_encoding import HashEncoding
from dream3d.representations.hashgrid_nerf import HashGridNeRF, NeRFConfig
from dream3d.training.checkpoint import load_checkpoint, save_checkpoint

GRID = dict(n_levels=4, n_features=2, log2_table_size=10, base_resolution=4, per_level_scale=1.5, hidden_dim=16,
            hidden_layers=2)


def points(n: int = 500) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(7)) * 1.9 - 0.95


def small(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "nerf":
        return HashGridNeRF(NeRFConfig(samples_per_ray=8, **GRID))
    return DMTet(DMTetConfig(grid_resolution=8, gradient_smoothing=0.0, **GRID))


def test_nerf_and_dmtet_albedo_fields_are_one_component_from_one_config():
    nerf, dmtet = small("nerf"), small("dmtet")
    shared = HashGridConfig(**GRID)
    assert nerf.cfg.hash_grid() == dmtet.cfg.hash_grid() == shared
    assert type(nerf.cfg.hash_grid()) is HashGridConfig
    assert type(nerf.albedo_field) is type(dmtet.albedo_field) is HashGridAlbedo
    layout = lambda m: {k: v.shape for k, v in m.albedo_field.state_dict().items()}  # noqa: E731
    assert layout(nerf) == layout(dmtet)
    # The same seed draws the same hash table first in both.
    assert torch.equal(nerf.albedo_field.encoding.table, dmtet.albedo_field.encoding.table)
    # Fields built from either representation's settings with the same seed are the same field...
    torch.manual_seed(3)
    a = HashGridAlbedo(nerf.cfg.hash_grid(), nerf.cfg.radius)
    torch.manual_seed(3)
    b = HashGridAlbedo(dmtet.cfg.hash_grid(), dmtet.cfg.radius)
    with torch.no_grad():
        for p, q in zip(a.parameters(), b.parameters()):
            p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
            q.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(q.numel()))
    x = points()
    values = a(x)
    assert values.shape == (len(x), 3) and 0 < values.min() and values.max() < 1
    assert values.std(0).min() > 0.01  # varies in space
    assert torch.equal(values, b(x))
    # ...and either representation's albedo is its field's.
    nerf.albedo_field.load_state_dict(a.state_dict())
    dmtet.init_texture_from(nerf.albedo_field)
    assert torch.equal(nerf.albedo(x), values) and torch.equal(dmtet.albedo(x), values)


def test_nerf_density_reads_the_albedo_fields_encoding():
    nerf = small("nerf")
    encodings = [m for m in nerf.modules() if isinstance(m, HashEncoding)]
    assert encodings == [nerf.albedo_field.encoding]
    x = points()
    before = nerf.query_density(x)
    with torch.no_grad():
        nerf.albedo_field.encoding.table.normal_(0.0, 1.0)
    assert not torch.allclose(nerf.query_density(x), before)
    assert nerf.param_groups()["encoding"] == [nerf.albedo_field.encoding.table]


def test_the_shared_settings_are_flat_keys_of_both_configs():
    shared = {f.name for f in dataclasses.fields(HashGridConfig)}
    for cls in (NeRFConfig, DMTetConfig):
        assert issubclass(cls, HashGridConfig) and shared <= {f.name for f in dataclasses.fields(cls)}
        assert not inspect.get_annotations(cls).keys() & shared  # declared once, in HashGridConfig
    flags = ["representation.n_levels=4", "stages.1.representation.hidden_dim=8"]
    cfg = presets.resolve("magic3d", {"prompt": "x"}, flags)
    nerf, dmtet = (s.representation.options for s in cfg.stages)
    assert isinstance(nerf, NeRFConfig) and nerf.hash_grid().n_levels == 4
    assert isinstance(dmtet, DMTetConfig) and dmtet.hash_grid().hidden_dim == 8


def legacy(key: str) -> str:
    """A state-dict key as runs saved before the shared field wrote it."""
    return key.replace("albedo_field.encoding.", "encoding.").replace("albedo_field.mlp.", "albedo_mlp.")


@pytest.mark.parametrize("kind", ["nerf", "dmtet"])
def test_a_checkpoint_with_the_old_flat_keys_still_loads(tmp_path, kind):
    rep = small(kind)
    opt = torch.optim.Adam([{"params": ps, "lr": 1e-2} for ps in rep.param_groups().values()])
    with torch.no_grad():
        rep.albedo_field.encoding.table.normal_(0.0, 1.0)
    rep.albedo(points()).sum().backward()
    opt.step()
    weights = save_checkpoint(tmp_path, 1, {"representation": rep}, opt, torch.Generator().manual_seed(0))
    old = {legacy(k): v for k, v in load_file(str(weights)).items()}
    assert "model.representation.encoding.table" in old and "model.representation.albedo_mlp.layers.0.weight" in old
    save_file(old, str(weights))

    fresh = small(kind, seed=5)
    fresh_opt = torch.optim.Adam([{"params": ps, "lr": 1e-2} for ps in fresh.param_groups().values()])
    load_checkpoint(tmp_path, {"representation": fresh}, fresh_opt, None)
    assert torch.equal(fresh.albedo(points()), rep.albedo(points()))
    for a, b in zip(fresh.state_dict().values(), rep.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(fresh_opt.state[fresh.albedo_field.encoding.table]["exp_avg"],
                       opt.state[rep.albedo_field.encoding.table]["exp_avg"])


def test_an_old_dmtet_config_dict_still_loads():
    saved = {"name": "dmtet", "grid_resolution": 16, "radius": 1.0, "n_levels": 6, "n_features": 4,
             "log2_table_size": 12, "base_resolution": 8, "per_level_scale": 1.4, "hidden_dim": 24, "hidden_layers": 2,
             "ambient": 0.4, "diffuse": 0.6, "lr": {"sdf": 1e-3, "deform": 1e-3, "encoding": 1e-2, "mlp": 1e-3}}
    cfg = config.build({"prompt": "x", "representation": saved})
    options = cfg.stages[0].representation.options
    assert isinstance(options, DMTetConfig)
    assert options.hash_grid() == HashGridConfig(6, 4, 12, 8, 1.4, 24, 2)
    rep = DMTet(options)
    assert rep.albedo_field.encoding.out_dim == 24 and len(rep.albedo_field.mlp.layers) == 3
    resolved = config.to_dict(options)  # what a resumed run saves again
    assert all(resolved[k] == v for k, v in saved.items() if k != "name")
