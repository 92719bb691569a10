"""Vehicles: car, truck, airplane, boat, rocket. All but the rocket have their nose on +Z.

Bodies are the prompt colour; wheels, glass and lights are fixed colours. Front and
back differ in shape (a long bonnet, the truck's cab, the boat's bow, the airplane's
cockpit and tail) and in colour (white headlights at the front, red lights behind).
"""
from __future__ import annotations

import torch

from dream3d.procedural import primitives as sdf
from dream3d.procedural.parts import (GLASS, LAMP_GLOW, METAL, SNOW, TRUNK, TYRE, fixed, lerp, scaled, shade,
                                      unite, unless_close, yaw)

TAIL_LIGHT = (0.9, 0.08, 0.08)


def _wheels(p, x, y, zs, r, half_width=0.06):
    """Wheel pairs (axles along X) at +-x, height y, one pair per z in zs."""
    m = sdf.mirror_x(p)
    return unite(*(sdf.cylinder(sdf.along_x(sdf.translate(m, x=x, y=y, z=z)), r, half_width, 0.02) for z in zs))


def car(p, u, main):
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    hw, hd = lerp(u[:, 1], 0.26, 0.3), lerp(u[:, 2], 0.5, 0.56)
    r = lerp(u[:, 3], 0.11, 0.13)
    bottom = -0.5
    body_h = lerp(u[:, 4], 0.1, 0.12)
    body_y = bottom + r + 0.03 + body_h * 0.5
    body = sdf.box(sdf.translate(p, y=body_y), hw, body_h, hd, 0.05)
    cab_h, cab_d = lerp(u[:, 5], 0.1, 0.13), 0.5 * hd
    cab_y, cab_z = body_y + body_h + cab_h - 0.02, -lerp(u[:, 6], 0.1, 0.15)  # a long bonnet in front
    cabin = sdf.box(sdf.translate(p, y=cab_y, z=cab_z), 0.86 * hw, cab_h, cab_d, 0.06)
    screens = sdf.box(sdf.translate(sdf.mirror_z(sdf.translate(p, z=cab_z)), y=cab_y, z=cab_d), 0.74 * hw, 0.7 * cab_h, 0.02)
    side_windows = sdf.box(sdf.translate(sdf.mirror_x(p), x=0.86 * hw, y=cab_y, z=cab_z), 0.02, 0.65 * cab_h, 0.8 * cab_d)
    lights_y = body_y + 0.3 * body_h
    m = sdf.mirror_x(p)
    head = sdf.sphere(sdf.translate(m, x=0.62 * hw, y=lights_y, z=hd - 0.02), 0.055)
    grille = sdf.box(sdf.translate(p, y=lights_y - 0.01, z=hd), 0.35 * hw, 0.035, 0.02, 0.01)
    tail = sdf.box(sdf.translate(m, x=0.7 * hw, y=lights_y, z=-hd), 0.05, 0.025, 0.02)
    wheels = _wheels(p, hw - 0.04, bottom + r, (0.6 * hd, -0.6 * hd), r)
    return [(body, main), (cabin, main), (unite(screens, side_windows), fixed(GLASS, main)),
            (head, fixed(LAMP_GLOW, main)), (tail, fixed(TAIL_LIGHT, main)), (wheels, fixed(TYRE, main)),
            (grille, fixed(TYRE, main))]


def truck(p, u, main):
    """A cab at the front (+Z) and a taller cargo box behind it, on three axles."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    hw = lerp(u[:, 1], 0.26, 0.3)
    r = lerp(u[:, 2], 0.1, 0.12)
    bottom = -0.5
    floor = bottom + r + 0.04
    length = lerp(u[:, 3], 0.52, 0.56)  # half length
    cab_d, cab_h = lerp(u[:, 4], 0.13, 0.16), lerp(u[:, 5], 0.18, 0.22)
    cab_z = length - cab_d
    cab = sdf.box(sdf.translate(p, y=floor + cab_h, z=cab_z), hw, cab_h, cab_d, 0.04)
    box_h = lerp(u[:, 6], 0.24, 0.3)
    box_front = cab_z - cab_d - 0.03
    box_d = 0.5 * (box_front + length)
    cargo = sdf.box(sdf.translate(p, y=floor + box_h + 0.02, z=box_front - box_d), hw + 0.02, box_h, box_d, 0.02)
    chassis = sdf.box(sdf.translate(p, y=floor - 0.02, z=0.0), 0.8 * hw, 0.03, length - 0.02)
    screen = sdf.box(sdf.translate(p, y=floor + 1.35 * cab_h, z=length), 0.8 * hw, 0.45 * cab_h, 0.02)
    m = sdf.mirror_x(p)
    side_windows = sdf.box(sdf.translate(m, x=hw, y=floor + 1.35 * cab_h, z=cab_z + 0.2 * cab_d), 0.02, 0.4 * cab_h, 0.6 * cab_d)
    head = sdf.sphere(sdf.translate(m, x=0.7 * hw, y=floor + 0.35 * cab_h, z=length - 0.02), 0.04)
    wheels = _wheels(p, hw - 0.04, bottom + r, (cab_z, box_front - 1.2 * box_d, box_front - 1.75 * box_d), r)
    return [(cab, main), (cargo, main), (chassis, fixed(TYRE, main)), (unite(screen, side_windows), fixed(GLASS, main)),
            (head, fixed(LAMP_GLOW, main)), (wheels, fixed(TYRE, main))]


def airplane(p, u, main):
    """Fuselage along Z (nose +Z), swept wings with engines, a tail fin, landing gear."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    fr = lerp(u[:, 1], 0.09, 0.11)
    fy = -0.2
    nose, tail_z = lerp(u[:, 2], 0.48, 0.54), -0.5
    fuselage = sdf.capsule(p, (0.0, fy, tail_z), (0.0, fy, nose - fr), fr)
    span, chord = lerp(u[:, 3], 0.56, 0.64), lerp(u[:, 4], 0.11, 0.14)
    m = sdf.mirror_x(p)
    wq = sdf.rotate_y(sdf.translate(m, y=fy - 0.03, z=0.06), lerp(u[:, 5], 12.0, 22.0))
    wings = sdf.box(sdf.translate(wq, x=0.5 * span), 0.5 * span, 0.02, chord, 0.01)
    engines = sdf.capsule(m, (0.24, fy - 0.08, 0.0), (0.24, fy - 0.08, 0.14), 0.045)
    fin_h = lerp(u[:, 6], 0.13, 0.17)
    fin = sdf.box(sdf.translate(p, y=fy + fr + fin_h - 0.03, z=tail_z + 0.03), 0.015, fin_h, 0.08, 0.01)
    stabiliser = sdf.box(sdf.translate(m, x=0.11, y=fy + 0.02, z=tail_z + 0.02), 0.12, 0.015, 0.06, 0.01)
    cockpit = sdf.ellipsoid(sdf.translate(p, y=fy + 0.7 * fr, z=nose - 1.7 * fr), 0.085, 0.065, 0.1)
    gear_y = fy - fr - 0.09
    gear = unite(sdf.capsule(p, (0.0, fy, nose - 0.16), (0.0, gear_y, nose - 0.16), 0.015),
                 sdf.capsule(m, (0.08, fy, -0.02), (0.08, gear_y, -0.02), 0.015))
    tyres = unite(sdf.sphere(sdf.translate(p, y=gear_y, z=nose - 0.16), 0.035),
                  sdf.sphere(sdf.translate(m, x=0.08, y=gear_y, z=-0.02), 0.04))
    return [(fuselage, main), (wings, shade(main, 0.9)), (unite(fin, stabiliser), main), (engines, fixed(METAL, main)),
            (cockpit, fixed(GLASS, main)), (gear, fixed(METAL, main)), (tyres, fixed(TYRE, main))]


def _triangle_sail(p, z_mast, y_foot, height, length, direction):
    """A flat triangular sail in the YZ plane: its luff up the mast at z_mast, its foot along
    y_foot running `length` towards `direction` (+1: +Z, -1: -Z), its third side the hypotenuse."""
    y, z = p[..., 1], p[..., 2]
    h, l = sdf.col(height, p), sdf.col(length, p)
    along = direction * (z - sdf.col(z_mast, p))  # distance from the mast along the foot
    up = y - sdf.col(y_foot, p)
    hyp = (up / h + along / l - 1.0) / torch.sqrt(1.0 / h**2 + 1.0 / l**2)
    return torch.maximum(torch.maximum(p[..., 0].abs() - 0.012, -along), torch.maximum(-up, hyp))


def boat(p, u, main):
    """A sailing boat: a hull with a round bow at +Z and a flat transom at -Z, mainsail aft of
    the mast, jib ahead of it."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    hw, hh, hl = lerp(u[:, 1], 0.25, 0.3), lerp(u[:, 2], 0.18, 0.22), lerp(u[:, 3], 0.56, 0.62)
    bottom = -0.55
    hull_y = bottom + hh
    q = sdf.translate(p, y=hull_y, z=0.04)
    deck_y = 0.3 * hh
    uncut = torch.maximum(sdf.ellipsoid(q, hw, hh, hl), q[..., 1] - sdf.col(deck_y, p))
    transom_z = q[..., 2] + sdf.col(0.72 * hl, p)  # 0 on the flat stern
    hull = torch.maximum(uncut, -transom_z)
    stern = torch.maximum(uncut - 0.01, transom_z.abs() - 0.02)  # a wooden plate on the transom
    deck = sdf.box(sdf.translate(q, y=deck_y), 0.7 * hw, 0.012, 0.62 * hl)
    z_mast, top = 0.1, lerp(u[:, 4], 0.38, 0.45)
    mast = sdf.cylinder(sdf.translate(p, y=0.5 * (hull_y + deck_y + top), z=z_mast), 0.018, 0.5 * (top - hull_y - deck_y))
    foot = hull_y + deck_y + 0.07
    main_sail = _triangle_sail(p, z_mast - 0.03, foot, top - foot - 0.03, lerp(u[:, 5], 0.36, 0.44), -1.0)
    jib = _triangle_sail(p, z_mast + 0.03, foot, 0.8 * (top - foot), lerp(u[:, 6], 0.24, 0.3), 1.0)
    cabin = sdf.box(sdf.translate(q, y=deck_y + 0.04, z=-0.35 * hl), 0.5 * hw, 0.05, 0.14, 0.02)
    return [(hull, main), (deck, fixed(TRUNK, main)), (mast, fixed(TRUNK, main)),
            (unite(main_sail, jib), unless_close(SNOW, main, shade(main, 0.7))), (cabin, main),
            (stern, fixed(TRUNK, main))]


def rocket(p, u, main):
    """Upright on four fins; a nose cone, round windows front and back, a nozzle."""
    p = sdf.rotate_y(p, yaw(u[:, 0], 45.0))  # any turn: no front (windows on both sides)
    r = lerp(u[:, 1], 0.15, 0.18)
    bottom = -0.58
    body_lo, body_hi = bottom + 0.12, lerp(u[:, 2], 0.18, 0.26)
    body = sdf.cylinder(sdf.translate(p, y=0.5 * (body_lo + body_hi)), r, 0.5 * (body_hi - body_lo), 0.02)
    nose_h = lerp(u[:, 3], 0.26, 0.32)
    nose = sdf.frustum(sdf.translate(p, y=body_hi + 0.5 * nose_h), 0.5 * nose_h, r, 0.0)
    fold = torch.stack([torch.maximum(p[..., 0].abs(), p[..., 2].abs()), p[..., 1],
                        torch.minimum(p[..., 0].abs(), p[..., 2].abs())], dim=-1)  # four fins from one
    fin_w = lerp(u[:, 4], 0.13, 0.17)
    fins = sdf.box(sdf.translate(fold, x=r + 0.5 * fin_w - 0.02, y=bottom + 0.14), 0.5 * fin_w, 0.14, 0.018, 0.01)
    nozzle = sdf.frustum(sdf.translate(p, y=bottom + 0.08), 0.06, 0.1, 0.07)
    windows = sdf.sphere(sdf.translate(sdf.mirror_z(p), y=body_hi - 0.12, z=r), 0.055)
    accent = unless_close(SNOW, main, shade(main, 0.45))
    return [(body, main), (nose, accent), (fins, accent), (nozzle, fixed(METAL, main)), (windows, fixed(GLASS, main))]


OBJECTS = {"car": scaled(car, 1.05), "truck": truck, "airplane": scaled(airplane, 1.15), "boat": boat,
           "rocket": scaled(rocket, 1.15)}
"""Name -> object; some drawn larger than modelled (`parts.scaled`)."""
FACING = {"car": (3, 1), "truck": (4, 1), "airplane": (4, 1), "boat": (5, -1)}
"""Object -> (part index, +1 front / -1 back): headlights, cockpit; the boat's stern plate."""
