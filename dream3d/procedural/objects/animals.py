"""Animals: duck, cat, dog, bear, panda, rabbit, penguin, fish. All face +Z.

Bodies and heads are ellipsoids and spheres in the prompt colour; eyes, noses and
beaks are fixed colours. Eyes sit on the head's surface (a unit direction times the
head radius) so they show from the front and hide from the back, which is what tells
the two apart at 32 pixels; they are drawn large for the same reason.
"""
from __future__ import annotations

import torch

from dream3d.procedural import primitives as sdf
from dream3d.procedural.parts import (CARROT, SNOW, contrast_colour, lerp, light_patch, scaled, shade, unite,
                                      unless_close, yaw)

PINK_NOSE = (0.95, 0.5, 0.6)


def _eyes(p, head_y, head_z, r, size, dx=0.42, dy=0.25):
    """A pair of eyes on a head sphere of radius r [N] centred at (0, head_y, head_z)."""
    dz = (1.0 - dx * dx - dy * dy) ** 0.5
    return sdf.sphere(sdf.translate(sdf.mirror_x(p), x=dx * r, y=head_y + dy * r, z=head_z + dz * r), size)


def duck(p, u, main):
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    rx, ry, rz = lerp(u[:, 1], 0.32, 0.37), lerp(u[:, 2], 0.24, 0.29), lerp(u[:, 3], 0.4, 0.46)
    hr = lerp(u[:, 4], 0.2, 0.24)
    bottom = -0.55
    body_y, body_z = bottom + ry, -0.06
    body = sdf.ellipsoid(sdf.translate(p, y=body_y, z=body_z), rx, ry, rz)
    tail = sdf.ellipsoid(sdf.rotate_x(sdf.translate(p, y=body_y + 0.55 * ry, z=body_z - 0.85 * rz), -35.0),
                         0.09, 0.07, 0.14)
    head_y, head_z = body_y + ry + 0.75 * hr, 0.12
    head = sdf.sphere(sdf.translate(p, y=head_y, z=head_z), hr)
    beak_len = lerp(u[:, 5], 0.11, 0.14)
    beak = sdf.ellipsoid(sdf.translate(p, y=head_y - 0.25 * hr, z=head_z + hr + 0.6 * beak_len - 0.04),
                         0.1, 0.045, beak_len)
    wings = sdf.ellipsoid(sdf.translate(sdf.mirror_x(p), x=rx - 0.03, y=body_y + 0.03, z=body_z - 0.04), 0.06, 0.12, 0.22)
    eyes = _eyes(p, head_y, head_z, hr, 0.045)
    beak_colour = unless_close(CARROT, main, contrast_colour(main))
    return [(unite(body, tail), main), (head, main), (beak, beak_colour), (wings, shade(main, 0.85)),
            (eyes, contrast_colour(main))]


def cat(p, u, main):
    """Sitting, with pointed ears and an upright tail behind."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    bx, by, bz = lerp(u[:, 1], 0.2, 0.25), lerp(u[:, 2], 0.27, 0.32), lerp(u[:, 3], 0.22, 0.26)
    hr = lerp(u[:, 4], 0.17, 0.2)
    bottom = -0.62
    body_z = -0.05
    body = sdf.ellipsoid(sdf.translate(p, y=bottom + by, z=body_z), bx, by, bz)
    m = sdf.mirror_x(p)
    haunch = sdf.ellipsoid(sdf.translate(m, x=0.6 * bx, y=bottom + 0.13, z=body_z - 0.03), 0.11, 0.13, 0.19)
    legs = sdf.capsule(m, (0.08, bottom + 0.04, 0.13), (0.08, bottom + 1.2 * by, body_z + 0.1), 0.05)
    head_y, head_z = bottom + 2.0 * by + 0.55 * hr, 0.04
    head = sdf.sphere(sdf.translate(p, y=head_y, z=head_z), hr)
    ear_h = lerp(u[:, 5], 0.08, 0.1)
    ears = sdf.frustum(sdf.rotate_z(sdf.translate(m, x=0.55 * hr, y=head_y + 0.8 * hr + ear_h * 0.6, z=head_z - 0.02), -18.0),
                       ear_h, 0.075, 0.0)
    tail_top = bottom + lerp(u[:, 6], 0.42, 0.52)
    tail = sdf.capsule(p, (0.0, bottom + 0.08, body_z - 0.9 * bz), (0.0, tail_top, body_z - bz - 0.14), 0.04)
    eyes = _eyes(p, head_y, head_z, hr, 0.05, dx=0.4, dy=0.2)
    nose = sdf.sphere(sdf.translate(p, y=head_y - 0.2 * hr, z=head_z + 0.98 * hr), 0.035)
    bib = sdf.ellipsoid(sdf.translate(p, y=bottom + 1.2 * by, z=body_z + 0.5 * bz), 0.75 * bx, 0.7 * by, 0.55 * bz)
    return [(unite(body, haunch, legs, tail), main), (head, main), (ears, shade(main, 0.85)),
            (eyes, contrast_colour(main)), (nose, unless_close(PINK_NOSE, main, contrast_colour(main))),
            (bib, light_patch(main))]


def dog(p, u, main):
    """Standing on four legs, with a muzzle, floppy ears and a raised tail."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    leg_h = lerp(u[:, 1], 0.26, 0.32)
    bx, by, bz = lerp(u[:, 2], 0.15, 0.18), lerp(u[:, 3], 0.14, 0.17), lerp(u[:, 4], 0.3, 0.35)
    hr = lerp(u[:, 5], 0.15, 0.17)
    bottom = -0.62
    body_y, body_z = bottom + leg_h + 0.1, -0.05
    body = sdf.ellipsoid(sdf.translate(p, y=body_y, z=body_z), bx, by, bz)
    m = sdf.mirror_x(p)
    legs = unite(sdf.capsule(m, (0.09, bottom + 0.05, body_z + 0.6 * bz), (0.09, body_y, body_z + 0.6 * bz), 0.055),
                 sdf.capsule(m, (0.09, bottom + 0.05, body_z - 0.65 * bz), (0.09, body_y, body_z - 0.65 * bz), 0.055))
    head_y, head_z = body_y + lerp(u[:, 6], 0.24, 0.3), body_z + 0.85 * bz
    neck = sdf.capsule(p, (0.0, body_y + 0.05, body_z + 0.6 * bz), (0.0, head_y, head_z), 0.08)
    head = sdf.sphere(sdf.translate(p, y=head_y, z=head_z), hr)
    snout = lerp(u[:, 7], 0.1, 0.13)
    muzzle = sdf.ellipsoid(sdf.translate(p, y=head_y - 0.05, z=head_z + 0.8 * hr + 0.5 * snout), 0.08, 0.07, snout)
    nose = sdf.sphere(sdf.translate(p, y=head_y - 0.02, z=head_z + 0.8 * hr + 1.4 * snout), 0.05)
    ears = sdf.ellipsoid(sdf.rotate_z(sdf.translate(m, x=0.9 * hr, y=head_y - 0.04, z=head_z - 0.02), 12.0),
                         0.04, 0.12, 0.07)
    tail = sdf.capsule(p, (0.0, body_y + 0.04, body_z - 0.9 * bz), (0.0, body_y + 0.22, body_z - bz - 0.1), 0.035)
    chest = sdf.ellipsoid(sdf.translate(p, y=body_y + 0.02, z=body_z + 0.75 * bz), 0.85 * bx, 0.85 * by, 0.35 * bz)
    eyes = _eyes(p, head_y, head_z, hr, 0.045, dx=0.4, dy=0.3)
    dark = contrast_colour(main)
    return [(unite(body, legs, neck, tail), main), (head, main), (muzzle, light_patch(main)), (ears, shade(main, 0.6)),
            (nose, dark), (eyes, dark), (chest, light_patch(main))]


def _teddy(p, u, main, panda: bool):
    """A sitting bear: round ears, arms, legs stretched forward, a muzzle. The panda has dark
    ears, limbs and eye patches; the bear is all main colour with a darker muzzle."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    bx, by, bz = lerp(u[:, 1], 0.25, 0.29), lerp(u[:, 2], 0.28, 0.32), lerp(u[:, 3], 0.22, 0.26)
    hr = lerp(u[:, 4], 0.2, 0.23)
    bottom = -0.62
    body = sdf.ellipsoid(sdf.translate(p, y=bottom + by, z=-0.03), bx, by, bz)
    m = sdf.mirror_x(p)
    legs = sdf.capsule(m, (0.14, bottom + 0.09, 0.0), (0.16, bottom + 0.09, lerp(u[:, 5], 0.2, 0.26)), 0.09)
    arms = sdf.capsule(m, (bx - 0.03, bottom + 1.5 * by, 0.0), (bx + 0.01, bottom + 0.9 * by, 0.12), 0.075)
    head_y, head_z = bottom + 2.0 * by + 0.7 * hr, 0.02
    head = sdf.sphere(sdf.translate(p, y=head_y, z=head_z), hr)
    ears = sdf.sphere(sdf.translate(m, x=0.68 * hr, y=head_y + 0.7 * hr, z=head_z - 0.02), 0.075)
    muzzle = sdf.ellipsoid(sdf.translate(p, y=head_y - 0.3 * hr, z=head_z + 0.82 * hr), 0.09, 0.07, 0.07)
    nose = sdf.sphere(sdf.translate(p, y=head_y - 0.18 * hr, z=head_z + 0.82 * hr + 0.065), 0.035)
    dark = contrast_colour(main)
    if not panda:
        eyes = _eyes(p, head_y, head_z, hr, 0.045, dx=0.38, dy=0.2)
        belly = sdf.ellipsoid(sdf.translate(p, y=bottom + by, z=0.08), 0.65 * bx, 0.7 * by, 0.8 * bz)
        return [(unite(body, legs, arms), main), (head, main), (ears, main), (muzzle, light_patch(main)),
                (nose, dark), (eyes, dark), (belly, light_patch(main))]
    patches = sdf.ellipsoid(sdf.translate(m, x=0.38 * hr, y=head_y + 0.12 * hr, z=head_z + 0.88 * hr), 0.07, 0.085, 0.05)
    return [(body, main), (head, main), (muzzle, main), (unite(legs, arms, ears), dark), (patches, dark), (nose, dark)]


def bear(p, u, main):
    return _teddy(p, u, main, panda=False)


def panda(p, u, main):
    return _teddy(p, u, main, panda=True)


def rabbit(p, u, main):
    """Sitting, with long upright ears and a white tail."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    bx, by, bz = lerp(u[:, 1], 0.2, 0.24), lerp(u[:, 2], 0.23, 0.27), lerp(u[:, 3], 0.24, 0.28)
    hr = lerp(u[:, 4], 0.15, 0.17)
    bottom = -0.62
    body_z = -0.04
    body = sdf.ellipsoid(sdf.translate(p, y=bottom + by, z=body_z), bx, by, bz)
    m = sdf.mirror_x(p)
    haunch = sdf.ellipsoid(sdf.translate(m, x=0.65 * bx, y=bottom + 0.12, z=body_z - 0.04), 0.1, 0.12, 0.2)
    paws = sdf.sphere(sdf.translate(m, x=0.08, y=bottom + 0.055, z=body_z + bz - 0.02), 0.06)
    head_y, head_z = bottom + 2.0 * by + 0.5 * hr, 0.1
    head = sdf.sphere(sdf.translate(p, y=head_y, z=head_z), hr)
    ear_h = lerp(u[:, 5], 0.17, 0.22)
    ears = sdf.ellipsoid(sdf.rotate_z(sdf.translate(m, x=0.42 * hr, y=head_y + 0.75 * hr + 0.8 * ear_h, z=head_z - 0.03), -8.0),
                         0.045, ear_h, 0.06)
    tail = sdf.sphere(sdf.translate(p, y=bottom + 0.16, z=body_z - bz), 0.07)
    eyes = _eyes(p, head_y, head_z, hr, 0.045, dx=0.45, dy=0.2)
    nose = sdf.sphere(sdf.translate(p, y=head_y - 0.1 * hr, z=head_z + 0.99 * hr), 0.035)
    belly = sdf.ellipsoid(sdf.translate(p, y=bottom + 0.95 * by, z=body_z + 0.4 * bz), 0.8 * bx, 0.85 * by, 0.65 * bz)
    return [(unite(body, haunch, paws), main), (head, main), (ears, main),
            (tail, light_patch(main)), (eyes, contrast_colour(main)),
            (nose, unless_close(PINK_NOSE, main, contrast_colour(main))), (belly, light_patch(main))]


def penguin(p, u, main):
    """Upright, with a white belly (only at the front), an orange beak and feet, flippers."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    bx, by, bz = lerp(u[:, 1], 0.24, 0.27), lerp(u[:, 2], 0.36, 0.41), lerp(u[:, 3], 0.21, 0.24)
    hr = lerp(u[:, 4], 0.17, 0.19)
    bottom = -0.6
    body_y = bottom + by
    body = sdf.ellipsoid(sdf.translate(p, y=body_y), bx, by, bz)
    head_y, head_z = bottom + 2.0 * by + 0.2 * hr, 0.02
    head = sdf.sphere(sdf.translate(p, y=head_y, z=head_z), hr)
    belly = sdf.ellipsoid(sdf.translate(p, y=body_y - 0.05, z=0.1), 0.8 * bx, 0.8 * by, bz - 0.07)
    beak_q = sdf.along_z(sdf.translate(p, y=head_y - 0.2 * hr, z=head_z + hr + 0.03))
    beak = sdf.frustum(beak_q, 0.07, 0.05, 0.0)
    m = sdf.mirror_x(p)
    flippers = sdf.ellipsoid(sdf.rotate_z(sdf.translate(m, x=bx, y=body_y + 0.05, z=-0.01), 18.0), 0.04, 0.22, 0.09)
    feet = sdf.ellipsoid(sdf.translate(m, x=0.1, y=bottom + 0.03, z=0.13), 0.07, 0.03, 0.1)
    eyes = _eyes(p, head_y, head_z, hr, 0.035, dx=0.4, dy=0.25)
    orange = unless_close(CARROT, main, contrast_colour(main))
    white = unless_close(SNOW, main, shade(main, 0.55))
    return [(body, main), (head, main), (belly, white), (beak, orange), (flippers, shade(main, 0.8)),
            (feet, orange), (eyes, contrast_colour(main))]


def fish(p, u, main):
    """Upright in the water column: a deep oval body, a fan tail at -Z, flat fins, big eyes."""
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    rx, ry, rz = lerp(u[:, 1], 0.15, 0.18), lerp(u[:, 2], 0.25, 0.3), lerp(u[:, 3], 0.38, 0.44)
    cy, cz = -0.12, 0.08
    body = sdf.ellipsoid(sdf.translate(p, y=cy, z=cz), rx, ry, rz)
    tail_len = lerp(u[:, 4], 0.12, 0.16)
    tq = sdf.translate(p, y=cy, z=cz - rz - tail_len + 0.06)
    tail = torch.maximum(sdf.frustum(sdf.along_z(tq), tail_len, lerp(u[:, 5], 0.25, 0.3), 0.05), p[..., 0].abs() - 0.035)
    top = sdf.ellipsoid(sdf.translate(p, y=cy + ry, z=cz - 0.08), 0.1, lerp(u[:, 6], 0.11, 0.15), 0.17)
    low = sdf.ellipsoid(sdf.translate(p, y=cy - ry, z=cz - 0.06), 0.1, 0.11, 0.12)
    fins = torch.maximum(torch.minimum(top, low), p[..., 0].abs() - 0.02)
    eq = sdf.translate(sdf.mirror_x(p), x=0.72 * rx, y=cy + 0.28 * ry, z=cz + 0.6 * rz)
    eyes = sdf.sphere(eq, 0.065)
    pupils = sdf.sphere(sdf.translate(eq, x=0.03, z=0.035), 0.04)
    mouth = sdf.ellipsoid(sdf.translate(p, y=cy - 0.12 * ry, z=cz + rz - 0.01), 0.07, 0.04, 0.03)
    dark = contrast_colour(main)
    # Pale fins and tail: from behind the tail fan crosses the body, from the front the face hides it.
    return [(body, main), (unite(tail, fins), light_patch(main)), (unite(pupils, mouth), dark),
            (eyes, unless_close(SNOW, main, shade(main, 0.5)))]


OBJECTS = {"duck": scaled(duck, 1.2), "cat": scaled(cat, 1.15), "dog": scaled(dog, 1.1), "bear": scaled(bear, 1.1),
           "panda": scaled(panda, 1.1), "rabbit": scaled(rabbit, 1.1), "penguin": scaled(penguin, 1.2),
           "fish": scaled(fish, 1.05)}
"""Name -> object, drawn larger than modelled (`parts.scaled`): the numbers above are before scaling."""
FACING = {"duck": (2, 1), "cat": (3, 1), "dog": (4, 1), "bear": (3, 1), "panda": (4, 1), "rabbit": (4, 1),
          "penguin": (2, 1), "fish": (2, 1)}
"""Object -> (index of a part at the front (+1): beak, eyes, nose, muzzle, belly)."""
