"""Grouped procedural data and the joint-view training of the embedded prior (tiny, from config)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from dream3d.priors.embedded_model import EmbeddedModelConfig
from dream3d.priors.loading import load_prior
from dream3d.priors.multiview_attention import multiview_processors
from dream3d.priors.train_embedded import PriorTrainConfig, train_prior
from dream3d.priors.vocab import OBJECTS
from dream3d.procedural.groups import GroupShardPool, make_group_batch, write_group_shard

torch.set_num_threads(1)

TINY = EmbeddedModelConfig(resolution=16, block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
                           attention_head_dim=8, text_hidden_size=16, text_heads=2, text_layers=1)


def assert_groups(batch, groups: int, n: int = 4):
    """One scene per group: same labels, elevation, distance and fov; azimuths 90 degrees apart."""
    cams = batch.cameras
    assert batch.images.shape[0] == cams.batch_size == groups * n
    for key in (batch.objects, batch.colours, cams.elevation, cams.distance, cams.fov_y):
        per = key.view(groups, n)
        assert (per == per[:, :1]).all()
    az = cams.azimuth.view(groups, n)
    step = (az[:, 1:] - az[:, :-1]) % 360.0
    for row in step:  # a mirrored group turns the other way round
        assert torch.allclose(row, torch.full_like(row, 90.0), atol=1e-3) or \
            torch.allclose(row, torch.full_like(row, 270.0), atol=1e-3), row
    for g in range(groups):  # captions: all plain or each with its own view suffix
        caps = batch.captions[g * n:(g + 1) * n]
        assert len({"view" in c for c in caps}) == 1
        assert len({c.split(",")[0] for c in caps}) == 1


def test_group_batch_is_one_scene_from_four_cameras():
    b = make_group_batch(3, 16, 4, seed=0, suffix_prob=0.5)
    assert_groups(b, 3)
    assert b.images.shape == (12, 16, 16, 3) and b.coverage.shape == (12, 16, 16, 1)
    # the views differ (different sides), and the same seed gives the same batch
    assert (b.images[0] - b.images[2]).abs().max() > 0.01
    assert torch.equal(b.images, make_group_batch(3, 16, 4, seed=0, suffix_prob=0.5).images)
    # the object covers about the same area from every side (it is one object, seen around)
    cov = b.coverage.mean(dim=(1, 2, 3)).view(3, 4)
    assert (cov > 0.02).all()


def test_grouped_shards_sample_whole_groups(tmp_path):
    write_group_shard(0, 4, 16, 4, root=tmp_path)
    pool = GroupShardPool(16, tmp_path, views=4)
    assert len(pool) == 16
    b = pool.sample(3, torch.Generator().manual_seed(0))
    assert_groups(b, 3)
    assert b.objects.max() < len(OBJECTS)


def test_default_training_config_is_single_view_and_grouped_mode_copies_the_model():
    assert PriorTrainConfig().views == 1 and not PriorTrainConfig().model.joint_views
    cfg = PriorTrainConfig(model=TINY, views=4)
    assert cfg.model.joint_views and not TINY.joint_views


def _grouped_cfg(steps: int, **kw) -> PriorTrainConfig:
    return PriorTrainConfig(model=TINY, steps=steps, batch_size=4, data="render", threads=1, sample_steps=0,
                            checkpoint_steps=2, warmup_steps=2, log_steps=100, views=4, single_view_fraction=0.5, **kw)


def test_grouped_training_saves_and_reloads_a_joint_prior(tmp_path, monkeypatch):
    from dream3d.priors import train_embedded

    seen, real = [], train_embedded.training_loss

    def spy(model, ac, batch, cfg, gen, n_views=1, codec=None):
        seen.append((batch.images.shape[0], n_views))
        return real(model, ac, batch, cfg, gen, n_views, codec)

    monkeypatch.setattr(train_embedded, "training_loss", spy)
    folder = train_prior(_grouped_cfg(6), tmp_path / "run")
    assert {n for _, n in seen} == {1, 4} and all(b == 4 for b, _ in seen)  # groups and single views mixed
    meta = json.loads((folder / "prior.json").read_text())
    assert meta["model_config"]["joint_views"] is True
    assert "joint views" in (folder / "README.md").read_text()
    prior = load_prior(str(folder), device="cpu")
    assert prior.joint_views and multiview_processors(prior.unet)
    x = torch.randn(4, 3, 16, 16)
    eps = prior.predict_eps(x, torch.full((4,), 400), prior.embed(["a red cube"] * 4), None, n_views=4)
    assert eps.shape == (4, 3, 16, 16) and torch.isfinite(eps).all()
    # resuming goes on in grouped mode; a single-view run cannot resume it
    train_prior(_grouped_cfg(7), tmp_path / "run", resume=True)
    from dream3d.errors import UserError

    single = PriorTrainConfig(model=TINY, steps=8, batch_size=4, data="render", threads=1, sample_steps=0)
    with pytest.raises(UserError, match="joint_views"):
        train_prior(single, tmp_path / "run", resume=True)


def test_grouped_training_from_shards(tmp_path):
    from dream3d.procedural.dataset import write_shard

    root = tmp_path / "data"
    write_shard(0, 8, 16, root)
    write_group_shard(0, 4, 16, 4, root=root)
    folder = train_prior(dataclasses.replace(_grouped_cfg(2), data="shards", data_root=str(root)), tmp_path / "run")
    assert load_prior(str(folder), device="cpu").joint_views


def test_old_checkpoints_without_the_flag_resume_single_view(tmp_path):
    cfg = PriorTrainConfig(model=TINY, steps=1, batch_size=2, data="render", threads=1, sample_steps=0)
    train_prior(cfg, tmp_path)
    state = tmp_path / "checkpoint" / "state.json"
    data = json.loads(state.read_text())
    del data["config"]["model"]["joint_views"]  # written before the flag existed
    state.write_text(json.dumps(data))
    cfg.steps = 2
    train_prior(cfg, tmp_path, resume=True)
    assert json.loads(state.read_text())["step"] == 2


def test_prior_train_cli_passes_grouped_mode(monkeypatch, tmp_path):
    from dream3d import cli
    from dream3d.priors import train_embedded
    from dream3d.procedural import dataset, groups

    got, written = {}, []

    def fake_train(cfg, out, resume=True):
        got["cfg"] = cfg
        return out

    monkeypatch.setattr(train_embedded, "train_prior", fake_train)
    monkeypatch.setattr(dataset, "write_shard", lambda i, size, res, **kw: written.append(("single", i, size)))
    monkeypatch.setattr(groups, "write_group_shard", lambda i, g, res, views, **kw: written.append(("groups", i, g)))
    monkeypatch.setattr(dataset, "shard_path", lambda i, res, root=None: tmp_path / "missing")
    monkeypatch.setattr(groups, "group_shard_path", lambda i, res, views, root=None: tmp_path / "missing")
    res = CliRunner().invoke(cli.app, ["prior", "train", "--out", str(tmp_path / "o"), "--views", "4",
                                       "--single-view-fraction", "0.25", "--shards", "2", "--steps", "5"])
    assert res.exit_code == 0, res.output
    cfg = got["cfg"]
    assert cfg.views == 4 and cfg.single_view_fraction == 0.25 and cfg.model.joint_views
    # single-view steps read single rows of the grouped shards: no single-view shards to render
    assert sorted(written) == [("groups", 0, 512), ("groups", 1, 512)]
    res = CliRunner().invoke(cli.app, ["prior", "train", "--out", str(tmp_path / "o"), "--views", "3"])
    assert res.exit_code != 0 and "--views" in str(res.exception)


def test_dataset_cli_renders_grouped_shards_and_keeps_existing_ones(tmp_path, monkeypatch):
    import sys

    from dream3d.procedural import dataset
    from dream3d.procedural.groups import GroupShardPool, group_shard_path

    argv = ["dataset", "--shards", "2", "--size", "8", "--views", "4", "--resolution", "8", "--root", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    dataset.main()
    paths = [group_shard_path(i, 8, 4, dataset.world_root(tmp_path, dataset.TINY_SHAPES)) for i in range(2)]
    stamps = [p.stat().st_mtime_ns for p in paths]
    dataset.main()  # a second run (an interrupted one continued) renders nothing again
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    pool = GroupShardPool(8, tmp_path, views=4)
    assert len(pool) == 16  # 2 shards x 2 groups x 4 views
    batch = pool.sample(2, torch.Generator().manual_seed(0))
    assert batch.images.shape == (8, 8, 8, 3)
