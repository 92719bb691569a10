"""The evaluation classifier per world: training from grouped shards, the classifier chosen by the
world of a run's prior, and the shipped toy-world classifier's vocabulary."""
import json

import pytest
import torch

from dream3d.errors import UserError
from dream3d.evaluation import classifier as clf_mod
from dream3d.evaluation import evaluate as ev
from dream3d.evaluation.classifier import VIEW_LABELS, ShapeClassifier, classifier_dir, load_classifier
from dream3d.evaluation.train_classifier import (
    TrainConfig, holdout_set, label_config, shard_pool, shard_set, train, view_labels)
from dream3d.priors.worlds import TINY_SHAPES, get_world
from dream3d.procedural.groups import write_group_shard
from dream3d.types import RenderOutput

TOY = get_world("toy-world")
RES = 16  # tiny renders: the tests check bookkeeping, not accuracy


@pytest.fixture(scope="module")
def toy_shards(tmp_path_factory):
    """Two grouped toy-world shards of 4 groups x 4 views at 16 px under a cache root of their own."""
    root = tmp_path_factory.mktemp("cache")
    torch.set_num_threads(1)
    for i in range(2):
        write_group_shard(i, 4, RES, views=4, root=root, world=TOY)
    return root


def shard_cfg(root, **kw) -> TrainConfig:
    return TrainConfig(world="toy-world", pool_source="shards", shard_root=str(root), resolution=RES, **kw)


def find_row(rows: torch.Tensor, image: torch.Tensor) -> tuple[int, bool]:
    """(row index, mirrored) of an image [H, W, 3] uint8 among shard rows [N, H, W, 3]; (-1, False) if absent."""
    for flipped, cand in ((False, image), (True, image.flip(1))):
        hit = (rows == cand).flatten(1).all(1).nonzero()
        if len(hit):
            return int(hit[0]), flipped
    return -1, False


def tiny_classifier(world=TOY) -> ShapeClassifier:
    torch.manual_seed(0)
    cfg = label_config(world)
    cfg.channels, cfg.hidden = [4, 6, 8], 8
    return ShapeClassifier(cfg).eval()


# ---------------------------------------------------------------- the shard pool


def test_shard_set_labels_follow_their_rows(toy_shards):
    cfg = shard_cfg(toy_shards)
    pool = shard_pool(cfg)
    assert len(pool) == 32
    images, lab = shard_set(48, torch.Generator().manual_seed(1), pool, label_config(TOY))
    rows = torch.from_numpy(pool.arrays["images"])
    a = {k: torch.from_numpy(v) for k, v in pool.arrays.items()}
    flips = 0
    for i in range(len(images)):
        row, flipped = find_row(rows, images[i])
        assert row >= 0, "every pool image is a shard row, or its mirror image"
        flips += flipped
        assert lab["object"][i] == a["objects"][row] and lab["colour"][i] == a["colours"][row]
        azimuth = -a["azimuth"][row].float() if flipped else a["azimuth"][row].float()
        assert lab["view"][i] == view_labels(azimuth[None])[0]
        assert bool(lab["view_mask"][i]) == (TOY.objects[int(a["objects"][row])] in TOY.fronted_objects)
    assert 0 < flips < len(images)  # mirrored about half the time


def test_holdout_is_rendered_apart_from_the_shards(toy_shards):
    cfg = shard_cfg(toy_shards, holdout_size=6)
    labels = label_config(TOY)
    hold, hold_lab = holdout_set(cfg, labels)
    rows = torch.from_numpy(shard_pool(cfg).arrays["images"])
    assert all(find_row(rows, img)[0] < 0 for img in hold)
    # the same renders whatever the pool's source: its seed is its own
    again, _ = holdout_set(TrainConfig(world="toy-world", resolution=RES, holdout_size=6), labels)
    assert torch.equal(hold, again)
    assert hold_lab["object"].max() < len(TOY.objects)


def test_train_from_shards_saves_a_toy_world_classifier(toy_shards, tmp_path):
    cfg = shard_cfg(toy_shards, steps=3, batch_size=8, pool_size=16, refresh_every=1, refresh_images=4,
                    holdout_size=4, channels="4,6,8", hidden=8)
    _, metrics = train(cfg, tmp_path / "clf", log=lambda *_: None)
    saved = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert saved["objects"] == list(TOY.objects) and saved["channels"] == [4, 6, 8]
    assert metrics["config"]["pool_source"] == "shards" and metrics["holdout_clean"]["n"] == 4


def test_missing_shards_and_unknown_source_are_one_line(tmp_path):
    with pytest.raises(UserError, match="no toy-world shards"):
        shard_pool(shard_cfg(tmp_path))
    with pytest.raises(UserError, match="unknown pool source"):
        train(TrainConfig(pool_source="photos", steps=1), log=lambda *_: None)


# ---------------------------------------------------------------- the classifier of a world


def test_load_classifier_picks_the_world_and_refuses_without_one(tmp_path, monkeypatch):
    monkeypatch.setattr(clf_mod, "classifier_dir", lambda world="tiny-shapes": tmp_path / f"classifier-{world}")
    with pytest.raises(UserError, match="no evaluation classifier for the toy-world world") as e:
        load_classifier(world=TOY)
    assert "\n" not in str(e.value) and "--world toy-world" in str(e.value)
    tiny_classifier().save_pretrained(tmp_path / "classifier-toy-world")
    assert load_classifier(world=TOY).cfg.objects == list(TOY.objects)
    # a classifier that lacks the world's words is refused too
    tiny_classifier(TINY_SHAPES).save_pretrained(tmp_path / "other")
    with pytest.raises(UserError, match="does not know duck"):
        load_classifier(tmp_path / "other", world=TOY)


def test_real_classifier_dirs():
    assert classifier_dir("tiny-shapes").name == "classifier"
    assert classifier_dir("toy-world").name == "classifier-toy-world"


def test_prior_world_from_prior_json(tmp_path):
    for name, meta in (("toy", {"world": "toy-world"}), ("old", {})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "prior.json").write_text(json.dumps(meta))
    assert ev.prior_world(str(tmp_path / "toy")) is TOY
    assert ev.prior_world(str(tmp_path / "old")) is TINY_SHAPES  # no "world" key: tiny-shapes
    assert ev.prior_world("tiny-shapes") is TINY_SHAPES  # the shipped prior
    (tmp_path / "sd").mkdir()
    assert ev.prior_world(str(tmp_path / "sd")) is None  # a checkpoint without prior.json
    assert ev.prior_world(str(tmp_path / "gone")) is None


class FlatRep(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.colour = torch.nn.Parameter(torch.tensor([0.8, 0.1, 0.1]))
        self.calls = 0

    def render(self, cams, background, shading="diffuse", light_dir=None):
        self.calls += 1
        B, H, W = cams.batch_size, cams.height, cams.width
        return RenderOutput(self.colour.expand(B, H, W, 3), torch.ones(B, H, W, 1), torch.ones(B, H, W, 1))


def test_evaluate_run_reads_with_the_classifier_of_the_prior_world(tmp_path, monkeypatch):
    from dream3d import pipeline
    from dream3d.config import RunConfig

    prior = tmp_path / "toy-prior"
    prior.mkdir()
    (prior / "prior.json").write_text(json.dumps({"world": "toy-world"}))
    rep, run = FlatRep(), tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(pipeline, "load_asset", lambda run_dir, device=None: (RunConfig(prompt="a red duck",
                                                                                       model=str(prior)), rep))
    monkeypatch.setattr(clf_mod, "classifier_dir", lambda world="tiny-shapes": tmp_path / f"classifier-{world}")
    with pytest.raises(UserError, match="no evaluation classifier for the toy-world world"):
        ev.evaluate_run(run, n_views=4)
    assert rep.calls == 0 and not (run / "eval.json").exists()  # refused before rendering
    tiny_classifier().save_pretrained(tmp_path / "classifier-toy-world")
    res = ev.evaluate_run(run, n_views=4)
    assert res["object"] == "duck" and res["fronted"] == ("duck" in TOY.fronted_objects)
    assert res["n_captions"] == len(TOY.objects) * len(TOY.colours)


def test_prior_eval_reads_with_the_classifier_of_the_prior_world(tmp_path, monkeypatch):
    from dream3d.evaluation.prior_quality import measure_prior

    class ToyPrior:  # refused before any sample is drawn
        world = TOY

    monkeypatch.setattr(clf_mod, "classifier_dir", lambda world="tiny-shapes": tmp_path / f"classifier-{world}")
    with pytest.raises(UserError, match="no evaluation classifier for the toy-world world"):
        measure_prior(ToyPrior())


# ---------------------------------------------------------------- the shipped toy-world classifier


def test_shipped_toy_world_classifier_knows_the_world():
    folder = classifier_dir("toy-world")
    if not (folder / "model.safetensors").is_file():
        pytest.skip("assets/classifier-toy-world is absent")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["objects"] == list(TOY.objects) and cfg["colours"] == list(TOY.colours)
    assert cfg["fronted_objects"] == list(TOY.fronted_objects) and cfg["views"] == list(VIEW_LABELS)
    assert (folder / "model.safetensors").stat().st_size <= 5 * 1024 * 1024
    training = json.loads((folder / "training.json").read_text())
    assert training["config"]["world"] == "toy-world"
    for k in ("object", "colour", "view"):
        assert 0.0 <= training["holdout_clean"][k] <= 1.0
    assert ShapeClassifier.from_pretrained(folder).predict(torch.rand(2, 64, 64, 3)).object_logits.shape == (
        2, len(TOY.objects))
