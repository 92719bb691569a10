"""Worlds: the named sets of colours and objects an embedded prior is trained on and reads.

A prior's token embedding is tied to the order of its vocabulary, so the vocabulary
belongs to the prior, not to dream3d: each prior folder names its world in prior.json
(`"world"`, next to the word lists under `"vocab"`), and a folder without the key is
`tiny-shapes`, the world of every prior saved before worlds existed (the shipped one).

A world that `extends` another keeps the other's vocabulary as its first tokens (same
ids) and appends its own new words, so a larger prior can start from a smaller one's
text encoder. Object and colour words must exist in `dream3d.procedural.shapes`,
which renders them; fronted objects (a distinct front facing +Z) are those whose
view suffix carries information.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dream3d.errors import UserError


@dataclass(frozen=True)
class World:
    name: str
    """The world's name, written into prior folders and shard directories."""
    colours: tuple[str, ...]
    """Colour words, in label order."""
    objects: tuple[str, ...]
    """Object words, in label order."""
    fronted_objects: tuple[str, ...]
    """Objects with a distinct front facing +Z, for which view suffixes carry information."""
    extends: str | None = None
    """The world whose vocabulary this one's begins with, token for token."""


TINY_SHAPES = World(
    name="tiny-shapes",
    colours=("red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black", "brown"),
    objects=("cube", "sphere", "cone", "cylinder", "torus", "pyramid", "mushroom", "tree", "house", "chair", "robot",
             "snowman"),
    fronted_objects=("house", "chair", "robot", "snowman"),
)
"""The shipped prior's world: 10 colours, 12 objects (its token ids must never change)."""

TOY_WORLD = World(
    name="toy-world",
    colours=TINY_SHAPES.colours + ("grey", "cyan", "lime", "magenta"),
    objects=TINY_SHAPES.objects + (
        "duck", "cat", "dog", "bear", "panda", "rabbit", "penguin", "fish",  # animals
        "car", "truck", "airplane", "boat", "rocket",  # vehicles
        "table", "lamp", "sofa", "bed",  # furniture
        "mug", "teapot", "bottle", "hat", "umbrella",  # household
        "cactus", "flower", "donut", "apple",  # plants and food
        "tower", "castle", "lighthouse",  # structures
    ),
    fronted_objects=TINY_SHAPES.fronted_objects + (
        "duck", "cat", "dog", "bear", "panda", "rabbit", "penguin", "fish", "car", "truck", "airplane", "boat",
        "sofa", "bed", "flower", "tower", "castle",
    ),
    extends="tiny-shapes",
)
"""The larger world for the next embedded prior: 14 colours, 41 objects, 21 of them fronted."""

WORLDS: dict[str, World] = {w.name: w for w in (TINY_SHAPES, TOY_WORLD)}
DEFAULT_WORLD = TINY_SHAPES.name
"""The world of prior folders that name none."""


def get_world(name: str) -> World:
    """The world called `name`; a one-line UserError naming the known ones otherwise."""
    if name not in WORLDS:
        raise UserError(f"unknown world {name!r}; known worlds: {', '.join(WORLDS)}")
    return WORLDS[name]


def world_of_meta(meta: dict, where: str | Path = "the prior") -> World:
    """The world a prior.json names (tiny-shapes when it names none), checked against the word lists
    stored with it: a prior trained on other words than this dream3d's world of that name is an error."""
    world = get_world(str(meta.get("world", DEFAULT_WORLD)))
    stored = meta.get("vocab") or {}
    for key in ("colours", "objects"):
        if key in stored and tuple(stored[key]) != getattr(world, key):
            raise UserError(f"{where}: its {key} differ from those of the world {world.name!r} it names; "
                            "it was trained with another version of that world")
    return world

