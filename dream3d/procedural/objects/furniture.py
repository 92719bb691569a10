"""Furniture: table, lamp, sofa, bed. The sofa's back and the bed's headboard stand at -Z,
so both face +Z like the chair."""
from __future__ import annotations

import torch

from dream3d.procedural import primitives as sdf
from dream3d.procedural.parts import LAMP_GLOW, METAL, SNOW, TRUNK, fixed, lerp, scaled, shade, unite, unless_close, yaw


def _legs(p, x, z, bottom, top, half):
    """Four square legs at (+-x, +-z) from `bottom` to `top`."""
    q = sdf.mirror_z(sdf.mirror_x(p))
    h = 0.5 * (top - bottom)
    return sdf.box(sdf.translate(q, x=x, y=bottom + h, z=z), half, h, half)


def table(p, u, main):
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    hw, hd = lerp(u[:, 1], 0.42, 0.5), lerp(u[:, 2], 0.27, 0.34)
    top_y = lerp(u[:, 3], -0.02, 0.08)
    t = lerp(u[:, 4], 0.03, 0.045)
    bottom = -0.5
    top = sdf.box(sdf.translate(p, y=top_y), hw, t, hd, 0.015)
    leg = lerp(u[:, 5], 0.03, 0.045)
    legs = _legs(p, hw - leg - 0.03, hd - leg - 0.03, bottom, top_y, leg)
    apron = sdf.box(sdf.translate(p, y=top_y - t - 0.03), hw - 0.05, 0.03, hd - 0.05)
    return [(top, main), (unite(legs, apron), shade(main, 0.75))]


def lamp(p, u, main):
    """A table lamp: round base, thin pole, a hollow conical shade lit from inside."""
    bottom = -0.6
    base_r = lerp(u[:, 1], 0.17, 0.22)
    base = sdf.cylinder(sdf.translate(p, y=bottom + 0.035), base_r, 0.035, 0.015)
    shade_half = lerp(u[:, 2], 0.16, 0.2)
    shade_y = lerp(u[:, 3], 0.12, 0.22)
    rb, rt = lerp(u[:, 4], 0.3, 0.36), lerp(u[:, 5], 0.15, 0.2)
    q = sdf.translate(p, y=shade_y)
    outer = sdf.frustum(q, shade_half, rb, rt)
    inner = sdf.frustum(q, shade_half + 0.03, rb - 0.01, rt - 0.035)  # open at both ends, ~2 cm thick
    lampshade = torch.maximum(outer, -inner)
    pole = sdf.cylinder(sdf.translate(p, y=0.5 * (bottom + shade_y)), 0.022, 0.5 * (shade_y - bottom))
    bulb = sdf.sphere(sdf.translate(p, y=shade_y - 0.3 * shade_half), 0.075)
    return [(lampshade, main), (base, shade(main, 0.8)), (pole, fixed(METAL, main)), (bulb, fixed(LAMP_GLOW, main))]


def sofa(p, u, main):
    """Seat cushions facing +Z, the back at -Z, arms at both ends, short dark feet."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    hw, hd = lerp(u[:, 1], 0.48, 0.55), lerp(u[:, 2], 0.26, 0.3)
    bottom = -0.55
    seat_y = bottom + lerp(u[:, 3], 0.2, 0.24)
    base = sdf.box(sdf.translate(p, y=seat_y - 0.06), hw, 0.09, hd, 0.03)
    back_h = lerp(u[:, 4], 0.17, 0.22)
    back = sdf.box(sdf.translate(p, y=seat_y + back_h, z=-hd + 0.08), hw, back_h + 0.05, 0.08, 0.05)
    m = sdf.mirror_x(p)
    arm_h = lerp(u[:, 5], 0.08, 0.11)
    arms = sdf.box(sdf.translate(m, x=hw - 0.06, y=seat_y + arm_h, z=0.0), 0.07, arm_h + 0.06, hd, 0.04)
    cushion_w = 0.5 * (hw - 0.13) - 0.01
    cushions = sdf.box(sdf.translate(m, x=cushion_w + 0.01, y=seat_y + 0.06, z=0.05), cushion_w, 0.05, hd - 0.06, 0.04)
    feet = _legs(p, hw - 0.06, hd - 0.06, bottom, seat_y - 0.13, 0.03)
    return [(base, shade(main, 0.85)), (back, main), (arms, main), (cushions, main), (feet, fixed(TRUNK, main))]


def bed(p, u, main):
    """A blanket in the prompt colour over a wooden frame, a white pillow and a tall headboard
    at -Z, a low footboard at +Z."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    hw, hd = lerp(u[:, 1], 0.3, 0.35), lerp(u[:, 2], 0.44, 0.48)
    bottom = -0.45  # higher than most: the long corners must stay inside the 0.8 radius
    frame_y = bottom + lerp(u[:, 3], 0.13, 0.16)
    frame = sdf.box(sdf.translate(p, y=frame_y), hw, 0.06, hd, 0.02)
    mattress_y = frame_y + 0.11
    blanket = sdf.box(sdf.translate(p, y=mattress_y, z=0.12), hw + 0.015, 0.065, hd - 0.1, 0.04)
    sheet = sdf.box(sdf.translate(p, y=mattress_y - 0.005, z=-0.02), hw - 0.01, 0.06, hd - 0.03, 0.03)
    pillow = sdf.ellipsoid(sdf.translate(p, y=mattress_y + 0.075, z=-hd + 0.16), 0.75 * hw, 0.05, 0.1)
    head_h = lerp(u[:, 4], 0.25, 0.3)
    headboard = sdf.box(sdf.translate(p, y=bottom + head_h, z=-hd), hw + 0.02, head_h, 0.035, 0.02)
    footboard = sdf.box(sdf.translate(p, y=bottom + 0.5 * head_h, z=hd), hw + 0.02, 0.5 * head_h, 0.03, 0.02)
    wood = fixed(TRUNK, main)
    white = unless_close(SNOW, main, shade(main, 0.6))
    return [(blanket, main), (sheet, white), (pillow, white), (unite(frame, footboard), wood), (headboard, wood)]


OBJECTS = {"table": table, "lamp": scaled(lamp, 1.2), "sofa": sofa, "bed": bed}
"""Name -> object; the lamp drawn larger than modelled (`parts.scaled`)."""
FACING = {"sofa": (1, -1), "bed": (4, -1)}
"""Object -> (part index, -1: at the back): the sofa's back, the bed's headboard."""
