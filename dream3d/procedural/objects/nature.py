"""Plants and food: cactus, flower, donut, apple. The potted flower's head faces +Z."""
from __future__ import annotations

import torch

from dream3d.procedural import primitives as sdf
from dream3d.procedural.parts import (DOUGH, LEAF, SNOW, TERRACOTTA, TRUNK, contrast_colour, fixed, lerp, scaled, shade,
                                      side, unite, unless_close, yaw)

GOLDEN = (0.98, 0.78, 0.1)


def _pot(p, bottom, r_top, half):
    return sdf.frustum(sdf.translate(p, y=bottom + half), half, 0.8 * r_top, r_top)


def cactus(p, u, main):
    """A saguaro in a pot: one arm higher than the other; which side is higher is u[:, 15]."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    bottom = -0.62
    pot_half = lerp(u[:, 1], 0.1, 0.13)
    pot = _pot(p, bottom, lerp(u[:, 2], 0.22, 0.26), pot_half)
    r = lerp(u[:, 3], 0.12, 0.15)
    top = lerp(u[:, 4], 0.32, 0.42)
    trunk = sdf.capsule(p, (0.0, bottom + 2 * pot_half, 0.0), (0.0, top, 0.0), r)
    s = side(u[:, 15])
    reach = lerp(u[:, 5], 0.24, 0.28)
    arms = []
    # (side, height, rise): the high arm on side s, the low one opposite.
    for x, y, up in ((s * reach, lerp(u[:, 6], -0.02, 0.1), lerp(u[:, 8], 0.14, 0.22)),
                     (-s * reach, lerp(u[:, 7], -0.24, -0.12), lerp(u[:, 9], 0.14, 0.22))):
        arms.append(unite(sdf.capsule(p, (0.0, y, 0.0), (x, y, 0.0), 0.075),
                          sdf.capsule(p, (x, y, 0.0), (x, y + up, 0.0), 0.075)))
    soil = sdf.cylinder(sdf.translate(p, y=bottom + 2 * pot_half), lerp(u[:, 2], 0.22, 0.26) - 0.02, 0.015)
    return [(unite(trunk, *arms), main), (pot, fixed(TERRACOTTA, main)), (soil, fixed(TRUNK, main))]


def flower(p, u, main):
    """A potted flower whose head (petals around a golden centre) looks towards +Z."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    bottom = -0.62
    pot_half = lerp(u[:, 1], 0.1, 0.12)
    pot = _pot(p, bottom, 0.2, pot_half)
    head_y = lerp(u[:, 2], 0.12, 0.2)
    stem = sdf.capsule(p, (0.0, bottom + 2 * pot_half, 0.0), (0.0, head_y, 0.0), 0.025)
    m = sdf.mirror_x(p)
    leaves = sdf.ellipsoid(sdf.rotate_z(sdf.translate(m, x=0.09, y=-0.2, z=0.0), 30.0), 0.11, 0.03, 0.05)
    h = sdf.rotate_x(sdf.translate(p, y=head_y, z=0.04), lerp(u[:, 6], -25.0, -15.0))  # looks a little up
    folded = sdf.along_z(sdf.fold_around_y(sdf.along_z(h), 6))  # petals around the Z axis
    petal_len = lerp(u[:, 3], 0.12, 0.15)
    petals = sdf.ellipsoid(sdf.translate(folded, x=0.09 + petal_len), petal_len, lerp(u[:, 4], 0.075, 0.09), 0.04)
    undersides = torch.maximum(petals, folded[..., 2])  # the back halves, darker: the head's back reads as such
    petals = torch.maximum(petals, -folded[..., 2])
    centre = sdf.cylinder(sdf.along_z(sdf.translate(h, z=0.02)), lerp(u[:, 5], 0.11, 0.13), 0.04, 0.02)
    sepal = sdf.frustum(sdf.along_z(sdf.translate(h, z=-0.06)), 0.04, 0.03, 0.14)
    green = fixed(LEAF, main)
    return [(petals, main), (pot, fixed(TERRACOTTA, main)), (unite(stem, leaves, sepal), green),
            (centre, unless_close(GOLDEN, main, fixed(TRUNK, main))), (undersides, shade(main, 0.65))]


def donut(p, u, main):
    """Lying flat: dough below, icing in the prompt colour on top, white sprinkles."""
    major, minor = lerp(u[:, 1], 0.3, 0.35), lerp(u[:, 2], 0.15, 0.18)
    y = -0.5 + minor
    q = sdf.translate(p, y=y)
    dough = sdf.torus(q, major, minor)
    icing_level = lerp(u[:, 3], -0.03, 0.03)
    icing = torch.maximum(sdf.torus(q, major, minor + 0.015), sdf.col(icing_level, p) - q[..., 1])
    # Ten sprinkles turned anywhere in their 36-degree period; an even count keeps the pattern's
    # mirror image a turn of the same pattern (the data set's mirroring needs that).
    turn = sdf.rotate_y(q, yaw(u[:, 0], 18.0))
    spr = sdf.fold_around_y(turn, 10)
    sprinkles = sdf.capsule(sdf.translate(spr, x=major + lerp(u[:, 5], -0.06, 0.06), y=minor + 0.012),
                            (0.0, 0.0, -0.03), (0.0, 0.0, 0.03), 0.014)
    return [(dough, fixed(DOUGH, main)), (icing, main), (sprinkles, unless_close(SNOW, main, contrast_colour(main)))]


def apple(p, u, main):
    """A slightly flattened sphere with a dimple, a stem and a leaf leaning to +X or -X."""
    r = lerp(u[:, 1], 0.38, 0.43)
    ry = r * lerp(u[:, 2], 0.85, 0.95)
    bottom = -0.55
    cy = bottom + ry
    body = sdf.ellipsoid(sdf.translate(p, y=cy), r, ry, r)
    dimple = sdf.sphere(sdf.translate(p, y=cy + ry + 0.04), 0.1)
    body = torch.maximum(body, -dimple)
    s = side(u[:, 15])
    top = cy + ry
    stem = sdf.capsule(p, (0.0, top - 0.08, 0.0), (s * 0.04, top + 0.12, 0.0), 0.022)
    lq = sdf.rotate_z(sdf.translate(p, x=s * 0.1, y=top + 0.06), s * 25.0)
    leaf = sdf.ellipsoid(lq, 0.11, 0.022, 0.05)
    return [(body, main), (stem, fixed(TRUNK, main)), (leaf, unless_close(LEAF, main, shade(main, 0.5)))]


OBJECTS = {"cactus": scaled(cactus, 1.2), "flower": scaled(flower, 1.2), "donut": scaled(donut, 1.15),
           "apple": scaled(apple, 1.2)}
"""Name -> object, drawn larger than modelled (`parts.scaled`)."""
FACING = {"flower": (3, 1)}
"""Object -> (part index, +1 front): the flower's golden centre."""
