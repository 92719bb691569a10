"""Worlds: per-prior vocabularies, the shipped prior's token ids, prior folders naming their world."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dream3d.errors import UserError
from dream3d.priors import vocab
from dream3d.priors.embedded import EmbeddedPrior
from dream3d.priors.embedded_model import EmbeddedDiffusionModel, EmbeddedModelConfig, build_scheduler
from dream3d.priors.prior_folder import save_prior
from dream3d.priors.worlds import TINY_SHAPES, TOY_WORLD, WORLDS, get_world, world_of_meta
from dream3d.procedural.dataset import make_labeled_batch, shard_dir, world_root
from dream3d.procedural.shapes import COLOURS, FACING, OBJECTS

torch.set_num_threads(1)

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "priors" / "tiny-shapes"

# Token ids of these prompts as the tokenizer built them BEFORE worlds existed (computed by running
# vocab.build_tokenizer() and the shipped assets/priors/tiny-shapes/tokenizer on the old code, which
# agreed): the shipped prior's text embedding is indexed by them, so they must never change.
OLD_TINY_IDS = {
    "a red cube": [2, 4, 7, 17, 3, 0, 0, 0, 0, 0],
    "an orange torus, back view": [2, 4, 8, 21, 6, 31, 5, 3, 0, 0],
    "a brown snowman, overhead view": [2, 4, 16, 28, 6, 32, 5, 3, 0, 0],
    "a white robot, front view": [2, 4, 14, 27, 6, 29, 5, 3, 0, 0],
    "a pink chair, side view": [2, 4, 13, 26, 6, 30, 5, 3, 0, 0],
    "a black mushroom": [2, 4, 15, 23, 3, 0, 0, 0, 0, 0],
    "a purple house": [2, 4, 12, 25, 3, 0, 0, 0, 0, 0],
    "": [2, 3, 0, 0, 0, 0, 0, 0, 0, 0],
}
OLD_TINY_VOCAB_SIZE = 33

TINY = EmbeddedModelConfig(
    resolution=16, block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
    attention_head_dim=8, text_hidden_size=16, text_heads=2, text_layers=1,
)


def _ids(tokenizer, prompt: str, world=TINY_SHAPES) -> list[int]:
    return tokenizer(vocab.clean_prompt(prompt, world), padding="max_length", max_length=vocab.MAX_TOKENS)["input_ids"]


def test_tiny_shapes_token_ids_are_those_of_the_old_code():
    built = vocab.build_tokenizer()
    assert len(vocab.vocabulary()) == OLD_TINY_VOCAB_SIZE
    for prompt, ids in OLD_TINY_IDS.items():
        assert _ids(built, prompt) == ids, prompt


def test_the_shipped_prior_loads_as_tiny_shapes_with_the_old_ids():
    meta = json.loads((SHIPPED / "prior.json").read_text())
    assert "world" not in meta  # saved before worlds: read as tiny-shapes
    prior = EmbeddedPrior(SHIPPED)
    assert prior.world is TINY_SHAPES
    for prompt, ids in OLD_TINY_IDS.items():
        assert prior.model.token_ids([prompt])[0].tolist() == ids, prompt
    with pytest.raises(UserError, match="'duck'"):
        prior.check_prompt("a red duck")  # a toy-world word stays unknown to the shipped prior
    assert prior.sample(["a red cube"], n=1, steps=2).shape == (1, 32, 32, 3)


def test_toy_world_extends_tiny_shapes_token_for_token():
    tiny, toy = vocab.vocabulary(TINY_SHAPES), vocab.vocabulary(TOY_WORLD)
    assert toy[:len(tiny)] == tiny and len(set(toy)) == len(toy)
    assert TOY_WORLD.colours[:10] == TINY_SHAPES.colours and TOY_WORLD.objects[:12] == TINY_SHAPES.objects
    assert len(TOY_WORLD.objects) >= 36 and len(TOY_WORLD.colours) >= 12 and len(TOY_WORLD.fronted_objects) >= 12
    tok = vocab.build_tokenizer(TOY_WORLD)
    for prompt, ids in OLD_TINY_IDS.items():
        assert _ids(tok, prompt, TOY_WORLD) == ids, prompt
    duck = _ids(tok, "a magenta duck, back view", TOY_WORLD)
    assert [toy[i] for i in duck[1:7]] == ["a", "magenta", "duck", ",", "back", "view"]


def test_every_world_is_rendered_and_its_fronted_objects_are_the_registry_s():
    for world in WORLDS.values():
        assert set(world.objects) <= set(OBJECTS) and set(world.colours) <= set(COLOURS), world.name
        assert world.fronted_objects == tuple(o for o in world.objects if o in FACING), world.name
    assert tuple(OBJECTS)[:12] == TINY_SHAPES.objects and tuple(COLOURS)[:10] == TINY_SHAPES.colours


def test_unknown_colour_or_object_is_named():
    with pytest.raises(UserError) as err:
        vocab.check_prompt("a teal duck", world=TOY_WORLD)  # duck known, teal not
    msg = str(err.value)
    assert "does not know 'teal';" in msg and "'duck'" not in msg and "\n" not in msg
    for w in (*TOY_WORLD.colours, *TOY_WORLD.objects):
        assert w in msg
    with pytest.raises(UserError, match=r"does not know 'magenta';"):
        vocab.check_prompt("a magenta cube")  # a toy-world colour on a tiny-shapes object, tiny-shapes prior
    with pytest.raises(UserError, match=r"does not know 'spaceship';"):
        vocab.check_prompt("a cyan spaceship", world=TOY_WORLD)
    assert vocab.check_prompt("a cyan lighthouse, side view", world=TOY_WORLD) == []
    parsed = vocab.parse_prompt("A Grey Penguin, back view", TOY_WORLD)
    assert (parsed.colour, parsed.object, parsed.view) == ("grey", "penguin", "back")
    assert vocab.parse_prompt("a grey penguin").object is None  # tiny-shapes reads neither word


def test_a_prior_folder_names_its_world(tmp_path):
    torch.manual_seed(0)
    model = EmbeddedDiffusionModel(TINY, world=TOY_WORLD)
    folder = save_prior(model, build_scheduler(TINY), tmp_path / "toy")
    meta = json.loads((folder / "prior.json").read_text())
    assert meta["world"] == "toy-world" and meta["vocab"]["objects"] == list(TOY_WORLD.objects)
    assert "toy-world" in (folder / "README.md").read_text()
    prior = EmbeddedPrior(folder)
    assert prior.world is TOY_WORLD
    assert prior.check_prompt("a lime teapot, front view") == []
    assert not torch.allclose(prior.embed(["a red duck"]), prior.embed(["a red cube"]))
    with pytest.raises(UserError, match="'teal'"):
        prior.check_prompt("a teal teapot")
    # a folder without the key reads as tiny-shapes, and then its 66-word tokenizer is refused
    old = tmp_path / "no-world"
    shutil.copytree(folder, old)
    del meta["world"], meta["vocab"]
    (old / "prior.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="tokenizer"):
        EmbeddedPrior(old)


def test_a_folder_whose_words_differ_from_its_named_world_is_refused():
    meta = {"world": "toy-world", "vocab": {"objects": ["cube", "duck"]}}
    with pytest.raises(UserError, match="objects differ"):
        world_of_meta(meta, "some/prior")
    with pytest.raises(UserError, match="unknown world 'nope'; known worlds: tiny-shapes, toy-world"):
        get_world("nope")
    assert world_of_meta({}) is TINY_SHAPES


def test_dataset_draws_from_the_world_and_keeps_tiny_shapes_shards_where_they_were(tmp_path):
    b = make_labeled_batch(6, 8, seed=3, world=TOY_WORLD, objects=torch.tensor([12, 20, 40, 0, 33, 5]),
                           colours=torch.tensor([13, 10, 0, 11, 12, 3]))
    parsed = [vocab.parse_prompt(c, TOY_WORLD) for c in b.captions]
    assert [p.object for p in parsed] == ["duck", "car", "lighthouse", "cube", "umbrella", "pyramid"]
    assert [p.colour for p in parsed] == ["magenta", "grey", "red", "cyan", "lime", "green"]
    drawn = make_labeled_batch(64, 4, seed=4, world=TOY_WORLD)
    assert int(drawn.objects.max()) >= 12 and int(drawn.colours.max()) >= 10  # new words are drawn
    assert world_root(tmp_path, TINY_SHAPES) == tmp_path
    assert shard_dir(32, world_root(tmp_path, TOY_WORLD)) == tmp_path / "toy-world" / shard_dir(32, tmp_path).name


def test_prior_train_cli_trains_and_renders_the_world_asked_for(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from dream3d import cli
    from dream3d.priors import train_embedded
    from dream3d.procedural import dataset

    got, written, asked = {}, [], []
    monkeypatch.setattr(train_embedded, "train_prior", lambda cfg, out, resume=True: got.setdefault("cfg", cfg) and out)
    monkeypatch.setattr(dataset, "write_shard", lambda i, size, res, **kw: written.append((i, kw["world"].name)))
    monkeypatch.setattr(dataset, "shard_path", lambda i, res, root=None: asked.append(root) or tmp_path / "missing")
    res = CliRunner().invoke(cli.app, ["prior", "train", "--out", str(tmp_path / "o"), "--world", "toy-world",
                                       "--shards", "2", "--steps", "5"])
    assert res.exit_code == 0, res.output
    assert got["cfg"].world == "toy-world" and written == [(0, "toy-world"), (1, "toy-world")]
    assert all(str(root).endswith("toy-world") for root in asked)  # its shards, not tiny-shapes'
    res = CliRunner().invoke(cli.app, ["prior", "train", "--out", str(tmp_path / "o"), "--world", "nope"])
    assert res.exit_code != 0 and "unknown world 'nope'" in (res.output + str(res.exception))
