"""The registry of procedural objects and colours every world draws from.

Each object is a function `(p [N, P, 3], u [N, K], main [N, 3]) -> list of
(distance [N, P], colour [N, 3])` parts. `u` holds K uniform random numbers per
scene that set its proportions, so one function describes a distribution of
shapes, not one instance. Objects stand upright (+Y up) inside a radius of about
0.75 around the origin; objects with a front face +Z. The prompt colour `main`
covers most of the surface; small parts (eyes, doors, wheels) keep fixed colours,
switched to a readable shade when the main colour would hide them.

Every object's distribution is symmetric under x -> -x (the data set mirrors renders
left-right): new objects take their small random turn from u[:, 0] and the side of
any off-centre part from u[:, 15] (`parts.yaw`, `parts.side`).

Which objects and colours a prior knows is its world (`dream3d.priors.worlds`); the
families live in `procedural/objects/`, one module each.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from dream3d.procedural import primitives as sdf
from dream3d.procedural.objects import animals, basic, furniture, household, nature, structures, vehicles

N_SHAPE_PARAMS = 16
"""Number of uniform random numbers that set one object's proportions (fixed: the tiny-shapes
data set's random draws depend on it)."""

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "orange": (0.96, 0.50, 0.08),
    "yellow": (0.95, 0.85, 0.12),
    "green": (0.15, 0.62, 0.18),
    "blue": (0.12, 0.28, 0.88),
    "purple": (0.50, 0.18, 0.72),
    "pink": (0.97, 0.52, 0.72),
    "white": (0.94, 0.94, 0.94),
    "black": (0.07, 0.07, 0.07),
    "brown": (0.45, 0.26, 0.11),
    # Added for the larger world; each at least 39 CIELAB units from every other colour
    # (the first ten are at least 27 apart: blue and purple).
    "grey": (0.45, 0.45, 0.45),
    "cyan": (0.10, 0.80, 0.85),
    "lime": (0.62, 0.92, 0.15),
    "magenta": (0.88, 0.10, 0.68),
}
"""Linear-ish RGB albedo of each colour word before per-sample jitter."""

ObjectFn = Callable[[Tensor, Tensor, Tensor], list[tuple[Tensor, Tensor]]]

_FAMILIES = (basic, animals, vehicles, furniture, household, nature, structures)
OBJECTS: dict[str, ObjectFn] = {name: fn for family in _FAMILIES for name, fn in family.OBJECTS.items()}
"""Object name -> SDF composition (the tiny-shapes twelve first)."""
FACING: dict[str, tuple[int, int]] = {name: f for family in _FAMILIES for name, f in family.FACING.items()}
"""Objects with a front -> (index of a part on one side of it, +1: that part is at the front (+Z),
-1: at the back). Tests check the part's side; worlds list exactly these as fronted."""


def jitter_colour(names: list[str], gen: torch.Generator | None = None) -> Tensor:
    """[N, 3] albedo for each colour name with a slight random brightness and tint jitter."""
    base = torch.tensor([COLOURS[c] for c in names])
    brightness = 0.88 + 0.2 * torch.rand(len(names), 1, generator=gen)
    tint = 0.05 * (torch.rand(len(names), 3, generator=gen) - 0.5)
    return (base * brightness + tint).clamp(0.02, 0.98)


def object_parts(name: str, p: Tensor, u: Tensor, main: Tensor) -> list[tuple[Tensor, Tensor]]:
    """The parts (distance [N, P], colour [N, 3]) of object `name` for points p [N, P, 3]."""
    return OBJECTS[name](p, u, main)


def object_sdf(name: str, p: Tensor, u: Tensor, main: Tensor) -> tuple[Tensor, Tensor]:
    """Distance [N, P] and surface colour [N, P, 3] of object `name` for points p [N, P, 3],
    shape parameters u [N, K] and main colours [N, 3]."""
    return sdf.union(OBJECTS[name](p, u, main))


def object_distance(name: str, p: Tensor, u: Tensor, main: Tensor) -> Tensor:
    """Distance only [N, P] (cheaper: no colour lookup)."""
    parts = OBJECTS[name](p, u, main)
    d = parts[0][0]
    for other, _ in parts[1:]:
        d = torch.minimum(d, other)
    return d
