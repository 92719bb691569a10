"""The first twelve objects (the tiny-shapes world): primitives, mushroom, tree and four
objects with a front facing +Z (house, chair, robot, snowman).

Their geometry and colours are those the shipped tiny-shapes prior was trained on: change
them only together with a new data version and a retrained prior.
"""
from __future__ import annotations

import torch

from dream3d.procedural import primitives as sdf
from dream3d.procedural.parts import CARROT, EYE_GLOW, STEM, TRUNK, contrast_colour, fixed, lerp, shade


def cube(p, u, main):
    p = sdf.rotate_y(p, lerp(u[:, 0], 0.0, 90.0))
    h = lerp(u[:, 1], 0.38, 0.47)
    return [(sdf.box(p, h, h, h, rounding=lerp(u[:, 2], 0.01, 0.06)), main)]


def sphere(p, u, main):
    return [(sdf.sphere(p, lerp(u[:, 0], 0.5, 0.64)), main)]


def cone(p, u, main):
    p = sdf.translate(p, y=lerp(u[:, 2], -0.05, 0.0))
    half_h = lerp(u[:, 0], 0.45, 0.6)
    return [(sdf.frustum(p, half_h, lerp(u[:, 1], 0.42, 0.58), 0.0), main)]


def cylinder(p, u, main):
    return [(sdf.cylinder(p, lerp(u[:, 0], 0.3, 0.48), lerp(u[:, 1], 0.35, 0.55), lerp(u[:, 2], 0.01, 0.05)), main)]


def torus(p, u, main):
    p = sdf.rotate_x(sdf.rotate_y(p, lerp(u[:, 0], 0.0, 360.0)), lerp(u[:, 1], 35.0, 70.0))
    return [(sdf.torus(p, lerp(u[:, 2], 0.42, 0.52), lerp(u[:, 3], 0.13, 0.2)), main)]


def pyramid(p, u, main):
    height = lerp(u[:, 1], 0.85, 1.1)
    p = sdf.rotate_y(sdf.translate(p, y=-0.5 * height), lerp(u[:, 0], 0.0, 90.0))
    return [(sdf.pyramid(p, lerp(u[:, 2], 0.48, 0.58), height), main)]


def mushroom(p, u, main):
    stem_r = lerp(u[:, 0], 0.1, 0.16)
    stem_h = lerp(u[:, 1], 0.25, 0.38)  # half height
    cap_r = lerp(u[:, 2], 0.4, 0.55)
    cap_h = lerp(u[:, 3], 0.25, 0.4)
    bottom = -0.55
    stem_y = bottom + stem_h
    cap_base = bottom + 2.0 * stem_h - 0.05
    stem = sdf.frustum(sdf.translate(p, y=stem_y), stem_h, stem_r * 1.25, stem_r)
    q = sdf.translate(p, y=cap_base)
    cap = torch.maximum(sdf.ellipsoid(q, cap_r, cap_h, cap_r), -q[..., 1])
    return [(stem, fixed(STEM, main)), (cap, main)]


def tree(p, u, main):
    trunk_r = lerp(u[:, 0], 0.07, 0.11)
    trunk_top = lerp(u[:, 1], -0.3, -0.15)
    bottom = -0.65
    trunk = sdf.cylinder(sdf.translate(p, y=0.5 * (bottom + trunk_top)), trunk_r, 0.5 * (trunk_top - bottom) + 0.05)
    # Conifer: two stacked cones; broadleaf: a round crown. Chosen per scene by u[:, 2].
    w = lerp(u[:, 3], 0.42, 0.55)
    lower = sdf.frustum(sdf.translate(p, y=trunk_top + 0.25), 0.27, w, w * 0.3)
    upper = sdf.frustum(sdf.translate(p, y=trunk_top + 0.6), 0.3, w * 0.75, 0.0)
    conifer = torch.minimum(lower, upper)
    crown_r = lerp(u[:, 4], 0.38, 0.48)
    crown = sdf.ellipsoid(sdf.translate(p, y=trunk_top + crown_r * 0.9), crown_r, crown_r * 1.05, crown_r)
    leaves = torch.where(u[:, 2:3] < 0.6, conifer, crown)
    return [(trunk, fixed(TRUNK, main)), (leaves, main)]


def house(p, u, main):
    p = sdf.rotate_y(p, lerp(u[:, 0], -6.0, 6.0))
    hw, hd, hh = lerp(u[:, 1], 0.42, 0.52), lerp(u[:, 2], 0.3, 0.4), lerp(u[:, 3], 0.24, 0.32)
    roof_h = lerp(u[:, 4], 0.3, 0.42)
    bottom = -0.5 * (2.0 * hh + roof_h)
    body = sdf.box(sdf.translate(p, y=bottom + hh), hw, hh, hd, 0.01)
    roof = sdf.prism(sdf.translate(p, y=bottom + 2.0 * hh), hw + 0.05, hd + 0.07, roof_h)
    detail = contrast_colour(main)
    door_w, door_h = lerp(u[:, 5], 0.08, 0.11), lerp(u[:, 6], 0.15, 0.19)
    door_x = lerp(u[:, 7], -0.08, 0.08)
    door = sdf.box(sdf.translate(p, x=door_x, y=bottom + door_h, z=hd), door_w, door_h, 0.025)
    win_y = bottom + hh * lerp(u[:, 8], 1.05, 1.3)
    win = lerp(u[:, 9], 0.065, 0.085)
    side = hw * 0.62
    windows = torch.minimum(
        sdf.box(sdf.translate(p, x=door_x - side, y=win_y, z=hd), win, win, 0.02),
        sdf.box(sdf.translate(p, x=door_x + side, y=win_y, z=hd), win, win, 0.02),
    )
    return [(body, main), (roof, shade(main, 0.72)), (door, detail), (windows, detail)]


def chair(p, u, main):
    p = sdf.rotate_y(p, lerp(u[:, 0], -6.0, 6.0))
    hw, hd = lerp(u[:, 1], 0.3, 0.38), lerp(u[:, 2], 0.28, 0.36)
    seat_y = lerp(u[:, 3], -0.12, -0.02)
    seat_t = 0.05
    bottom = -0.62
    leg = lerp(u[:, 4], 0.035, 0.05)
    leg_half = 0.5 * (seat_y - bottom)
    legs = None
    for sx in (-1.0, 1.0):
        for sz in (-1.0, 1.0):
            d = sdf.box(sdf.translate(p, x=sx * (hw - leg), y=bottom + leg_half, z=sz * (hd - leg)), leg, leg_half, leg)
            legs = d if legs is None else torch.minimum(legs, d)
    seat = sdf.box(sdf.translate(p, y=seat_y), hw, seat_t, hd, 0.015)
    back_top = lerp(u[:, 5], 0.5, 0.65)
    back_half = 0.5 * (back_top - seat_y)
    back = sdf.box(sdf.translate(p, y=seat_y + back_half, z=-hd + 0.04), hw, back_half, 0.04, 0.015)
    return [(legs, shade(main, 0.8)), (seat, main), (back, main)]


def robot(p, u, main):
    p = sdf.rotate_y(p, lerp(u[:, 0], -6.0, 6.0))
    bw, bh, bd = lerp(u[:, 1], 0.24, 0.3), lerp(u[:, 2], 0.22, 0.27), lerp(u[:, 3], 0.16, 0.2)
    hw, hh, hd = lerp(u[:, 4], 0.17, 0.21), lerp(u[:, 5], 0.13, 0.16), lerp(u[:, 6], 0.14, 0.17)
    leg_h = 0.16
    bottom = -0.62
    body_y = bottom + 2 * leg_h + bh
    head_y = body_y + bh + 0.03 + hh
    body = sdf.box(sdf.translate(p, y=body_y), bw, bh, bd, 0.03)
    head = sdf.box(sdf.translate(p, y=head_y), hw, hh, hd, 0.03)
    legs = torch.minimum(
        sdf.box(sdf.translate(p, x=-bw * 0.5, y=bottom + leg_h), 0.07, leg_h, 0.08, 0.02),
        sdf.box(sdf.translate(p, x=bw * 0.5, y=bottom + leg_h), 0.07, leg_h, 0.08, 0.02),
    )
    arm_y = body_y + bh * 0.1
    arms = torch.minimum(
        sdf.cylinder(sdf.translate(p, x=-(bw + 0.06), y=arm_y), 0.05, bh * 0.9, 0.02),
        sdf.cylinder(sdf.translate(p, x=bw + 0.06, y=arm_y), 0.05, bh * 0.9, 0.02),
    )
    antenna = torch.minimum(
        sdf.cylinder(sdf.translate(p, y=head_y + hh + 0.05), 0.015, 0.05),
        sdf.sphere(sdf.translate(p, y=head_y + hh + 0.11), 0.035),
    )
    face = sdf.box(sdf.translate(p, y=head_y, z=hd), hw * 0.82, hh * 0.72, 0.02, 0.01)
    eye_y, eye_x = head_y + hh * 0.15, hw * 0.42
    eyes = torch.minimum(
        sdf.sphere(sdf.translate(p, x=-eye_x, y=eye_y, z=hd + 0.015), 0.045),
        sdf.sphere(sdf.translate(p, x=eye_x, y=eye_y, z=hd + 0.015), 0.045),
    )
    panel = sdf.box(sdf.translate(p, y=body_y + bh * 0.1, z=bd), bw * 0.55, bh * 0.45, 0.02, 0.01)
    dark = fixed((0.08, 0.08, 0.1), main)
    return [(body, main), (head, main), (legs, shade(main, 0.75)), (arms, shade(main, 0.85)),
            (antenna, shade(main, 0.7)), (face, dark), (eyes, fixed(EYE_GLOW, main)), (panel, dark)]


def snowman(p, u, main):
    p = sdf.rotate_y(p, lerp(u[:, 0], -6.0, 6.0))
    r0, r1, r2 = lerp(u[:, 1], 0.3, 0.35), lerp(u[:, 2], 0.22, 0.26), lerp(u[:, 3], 0.16, 0.19)
    y0 = -0.65 + r0
    y1 = y0 + r0 + r1 * 0.75
    y2 = y1 + r1 + r2 * 0.75
    body = torch.minimum(torch.minimum(sdf.sphere(sdf.translate(p, y=y0), r0), sdf.sphere(sdf.translate(p, y=y1), r1)),
                         sdf.sphere(sdf.translate(p, y=y2), r2))
    detail = contrast_colour(main)
    eye_y, eye_x = y2 + r2 * 0.3, r2 * 0.42
    eye_z = (r2**2 - eye_x**2 - (r2 * 0.3) ** 2).sqrt()
    # Face and buttons are drawn large: at 32x32 pixels they are what tells the front from the back.
    eyes = torch.minimum(sdf.sphere(sdf.translate(p, x=-eye_x, y=eye_y, z=eye_z), 0.065),
                         sdf.sphere(sdf.translate(p, x=eye_x, y=eye_y, z=eye_z), 0.065))
    nose_len = lerp(u[:, 4], 0.2, 0.26)
    # The carrot points along +Z: swap Y and Z so the vertical frustum lies along Z.
    q = sdf.translate(p, y=y2 - r2 * 0.05, z=r2 + 0.5 * nose_len - 0.04)
    q = torch.stack([q[..., 0], -q[..., 2], q[..., 1]], dim=-1)
    nose = sdf.frustum(q, 0.5 * nose_len, 0.07, 0.0)
    buttons = None
    for y_c, r_c, fy in ((y1, r1, 0.45), (y1, r1, -0.05), (y0, r0, 0.35)):
        by = y_c + r_c * fy
        bz = (r_c**2 - (r_c * fy) ** 2).sqrt()
        d = sdf.sphere(sdf.translate(p, y=by, z=bz), 0.06)
        buttons = d if buttons is None else torch.minimum(buttons, d)
    carrot = fixed(CARROT, main)
    nose_colour = torch.where(((main - carrot).norm(dim=-1) < 0.35)[:, None], detail, carrot)
    return [(body, main), (eyes, detail), (nose, nose_colour), (buttons, detail)]


OBJECTS = {
    "cube": cube, "sphere": sphere, "cone": cone, "cylinder": cylinder, "torus": torus, "pyramid": pyramid,
    "mushroom": mushroom, "tree": tree, "house": house, "chair": chair, "robot": robot, "snowman": snowman,
}
FACING = {"house": (2, 1), "chair": (2, -1), "robot": (5, 1), "snowman": (2, 1)}
"""Fronted object -> (index of a part on one side, +1 if that part is at the front (+Z), -1 at the back)."""
