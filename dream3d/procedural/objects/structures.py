"""Structures: tower, castle, lighthouse. The tower's and the castle's doors face +Z."""
from __future__ import annotations

import torch

from dream3d.procedural import primitives as sdf
from dream3d.procedural.parts import (LAMP_GLOW, METAL, SNOW, contrast_colour, fixed, lerp, scaled, shade, unite,
                                      unless_close, yaw)


def _merlons(p, ring_r, y, count, half=0.045):
    """`count` battlement blocks in a ring of radius ring_r at height y."""
    return sdf.box(sdf.translate(sdf.fold_around_y(p, count), x=ring_r, y=y), half, half, half, 0.005)


def tower(p, u, main):
    """A round crenellated stone tower with a dark door and windows at the front."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    r = lerp(u[:, 1], 0.24, 0.28)
    bottom = -0.62
    top = lerp(u[:, 2], 0.2, 0.3)
    body = sdf.frustum(sdf.translate(p, y=0.5 * (bottom + top)), 0.5 * (top - bottom), r * 1.08, r)
    crown = sdf.cylinder(sdf.translate(p, y=top + 0.03), r + 0.05, 0.05, 0.01)
    merlons = _merlons(p, r + 0.01, top + 0.12, 8)
    door_h = lerp(u[:, 3], 0.14, 0.17)
    door = sdf.box(sdf.translate(p, y=bottom + door_h, z=r * 1.07), 0.085, door_h, 0.04, 0.01)
    win_y = lerp(u[:, 4], -0.05, 0.05)
    windows = unite(sdf.box(sdf.translate(p, y=win_y, z=r * 1.02), 0.05, 0.075, 0.04, 0.01),
                    sdf.box(sdf.translate(p, y=0.5 * (win_y + top), z=r), 0.045, 0.06, 0.04, 0.01))
    dark = contrast_colour(main)
    return [(body, main), (unite(crown, merlons), shade(main, 0.85)), (door, dark), (windows, dark)]


def castle(p, u, main):
    """Walls round a courtyard, four corner turrets with conical roofs, a taller keep at the back
    and a dark gate at the front."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    hw, hd = lerp(u[:, 1], 0.33, 0.38), lerp(u[:, 2], 0.25, 0.29)
    bottom = -0.5
    wall_h = lerp(u[:, 3], 0.14, 0.18)
    walls = sdf.box(sdf.translate(p, y=bottom + wall_h), hw, wall_h, hd, 0.01)
    corners = sdf.mirror_z(sdf.mirror_x(p))
    tr = lerp(u[:, 4], 0.09, 0.11)
    turret_h = wall_h + lerp(u[:, 5], 0.06, 0.1)
    turrets = sdf.cylinder(sdf.translate(corners, x=hw, y=bottom + turret_h, z=hd), tr, turret_h, 0.01)
    roof_h = lerp(u[:, 6], 0.09, 0.12)
    roofs = sdf.frustum(sdf.translate(corners, x=hw, y=bottom + 2 * turret_h + roof_h), roof_h, tr + 0.02, 0.0)
    keep_h = lerp(u[:, 7], 0.26, 0.32)
    kq = sdf.translate(p, y=bottom, z=-0.1)
    keep = sdf.box(sdf.translate(kq, y=keep_h), 0.15, keep_h, 0.13, 0.01)
    keep_merlons = sdf.box(sdf.translate(sdf.mirror_z(sdf.mirror_x(kq)), x=0.11, y=2 * keep_h + 0.035, z=0.09),
                           0.035, 0.035, 0.035)
    gate_h = lerp(u[:, 8], 0.11, 0.13)
    gate = sdf.box(sdf.translate(p, y=bottom + gate_h, z=hd), 0.1, gate_h, 0.03, 0.01)
    dark = contrast_colour(main)
    return [(walls, main), (turrets, main), (roofs, shade(main, 0.6)), (unite(keep, keep_merlons), main),
            (gate, dark)]


def lighthouse(p, u, main):
    """A tapering tower with two white bands, a gallery, a glowing lantern and a dark dome."""
    bottom = -0.62
    base_h = 0.04
    base = sdf.cylinder(sdf.translate(p, y=bottom + base_h), lerp(u[:, 1], 0.26, 0.3), base_h, 0.01)
    rb, rt = lerp(u[:, 2], 0.2, 0.23), lerp(u[:, 3], 0.12, 0.14)
    lo, hi = bottom + 2 * base_h, lerp(u[:, 4], 0.12, 0.2)
    q = sdf.translate(p, y=0.5 * (lo + hi))
    half = 0.5 * (hi - lo)
    body = sdf.frustum(q, half, rb, rt)
    band_half = 0.3 * half / 2.0
    rings = torch.maximum(sdf.frustum(q, half, rb + 0.006, rt + 0.006),
                          torch.minimum((q[..., 1] - sdf.col(-0.3 * half, p)).abs(),
                                        (q[..., 1] - sdf.col(0.35 * half, p)).abs()) - sdf.col(band_half, p))
    gallery = sdf.cylinder(sdf.translate(p, y=hi + 0.02), rt + 0.06, 0.025, 0.01)
    lantern_h = lerp(u[:, 5], 0.07, 0.09)
    lantern = sdf.cylinder(sdf.translate(p, y=hi + 0.045 + lantern_h), rt - 0.02, lantern_h)
    dq = sdf.translate(p, y=hi + 0.045 + 2 * lantern_h)
    dome = torch.maximum(sdf.sphere(dq, rt + 0.01), -dq[..., 1])
    return [(body, main), (rings, unless_close(SNOW, main, contrast_colour(main))), (base, fixed(METAL, main)),
            (gallery, shade(main, 0.5)), (lantern, fixed(LAMP_GLOW, main)), (dome, shade(main, 0.45))]


OBJECTS = {"tower": scaled(tower, 1.1), "castle": castle, "lighthouse": scaled(lighthouse, 1.15)}
"""Name -> object; tower and lighthouse drawn larger than modelled (`parts.scaled`)."""
FACING = {"tower": (2, 1), "castle": (4, 1)}
"""Object -> (part index, +1 front): the tower's door, the castle's gate."""
