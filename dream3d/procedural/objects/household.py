"""Household objects: mug, teapot, bottle, hat, umbrella. The teapot's spout points to +Z and its
handle to -Z, but it is not listed as fronted: seen from the front or the back at 32 pixels both read
as a round body with a short stub (measured: its front and mirrored back renders differ by 0.001,
against 0.013-0.018 for house, chair, robot and snowman). The mug's handle and the umbrella's hook
go to either side."""
from __future__ import annotations

import torch

from dream3d.procedural import primitives as sdf
from dream3d.procedural.parts import (METAL, SNOW, TRUNK, contrast_colour, fixed, lerp, scaled, shade, side, unite,
                                      unless_close, yaw)

COFFEE = (0.22, 0.12, 0.06)


def mug(p, u, main):
    """A hollow cylinder with coffee inside and a ring handle on +X or -X."""
    r, hh = lerp(u[:, 1], 0.27, 0.32), lerp(u[:, 2], 0.28, 0.34)
    bottom = -0.55
    q = sdf.translate(p, y=bottom + hh)
    outer = sdf.cylinder(q, r, hh, 0.03)
    inner = sdf.cylinder(sdf.translate(q, y=0.07), r - 0.045, hh, 0.02)
    cup = torch.maximum(outer, -inner)
    coffee = sdf.cylinder(sdf.translate(q, y=hh * lerp(u[:, 3], 0.25, 0.55)), r - 0.04, 0.02)
    s = side(u[:, 15])
    hq = sdf.along_z(sdf.translate(p, x=s * (r + 0.02), y=bottom + hh * lerp(u[:, 4], 0.9, 1.1)))
    handle = torch.maximum(sdf.torus(hq, lerp(u[:, 5], 0.13, 0.16), 0.035), -outer)
    return [(cup, main), (handle, main), (coffee, fixed(COFFEE, main))]


def teapot(p, u, main):
    p = sdf.rotate_y(p, yaw(u[:, 0]))
    r, ry = lerp(u[:, 1], 0.33, 0.37), lerp(u[:, 2], 0.25, 0.29)
    bottom = -0.55
    by = bottom + ry + 0.03
    body = sdf.ellipsoid(sdf.translate(p, y=by), r, ry, r)
    foot = sdf.cylinder(sdf.translate(p, y=bottom + 0.03), 0.6 * r, 0.03, 0.01)
    lid = sdf.ellipsoid(sdf.translate(p, y=by + ry - 0.01), 0.55 * r, 0.07, 0.55 * r)
    knob = sdf.sphere(sdf.translate(p, y=by + ry + 0.08), 0.045)
    tip_y = by + lerp(u[:, 3], 0.7, 0.95) * ry
    spout = sdf.capsule(p, (0.0, by - 0.2 * ry, 0.7 * r), (0.0, tip_y, r + lerp(u[:, 4], 0.18, 0.24)), 0.055)
    hq = sdf.along_x(sdf.translate(p, y=by + 0.05, z=-r - 0.02))
    handle = torch.maximum(sdf.torus(hq, lerp(u[:, 5], 0.13, 0.16), 0.04), -sdf.ellipsoid(sdf.translate(p, y=by), r, ry, r))
    return [(unite(body, foot), main), (lid, shade(main, 0.8)), (knob, shade(main, 0.8)), (spout, main), (handle, main)]


def bottle(p, u, main):
    """A body, a rounded shoulder, a narrow neck with a cap, and a white label."""
    r, hh = lerp(u[:, 1], 0.16, 0.2), lerp(u[:, 2], 0.27, 0.32)
    bottom = -0.6
    body = sdf.cylinder(sdf.translate(p, y=bottom + hh), r, hh, 0.04)
    neck_r = lerp(u[:, 3], 0.055, 0.07)
    shoulder_h = lerp(u[:, 4], 0.08, 0.12)
    top_of_body = bottom + 2 * hh
    shoulder = sdf.frustum(sdf.translate(p, y=top_of_body + shoulder_h - 0.02), shoulder_h, r, neck_r)
    neck_h = lerp(u[:, 5], 0.12, 0.16)
    neck_lo = top_of_body + 2 * shoulder_h - 0.04
    neck = sdf.cylinder(sdf.translate(p, y=neck_lo + neck_h), neck_r, neck_h)
    cap = sdf.cylinder(sdf.translate(p, y=neck_lo + 2 * neck_h + 0.03), neck_r + 0.012, 0.035, 0.01)
    label = sdf.cylinder(sdf.translate(p, y=bottom + hh * lerp(u[:, 6], 0.9, 1.1)), r + 0.006, 0.4 * hh)
    return [(unite(body, shoulder, neck), main), (cap, fixed(METAL, main)),
            (label, unless_close(SNOW, main, shade(main, 0.5)))]


def hat(p, u, main):
    """A top hat: a wide brim, a tall crown and a dark band."""
    bottom = -0.5
    brim_r = lerp(u[:, 1], 0.44, 0.52)
    brim = sdf.cylinder(sdf.translate(p, y=bottom + 0.02), brim_r, 0.02, 0.01)
    crown_h = lerp(u[:, 2], 0.28, 0.34)  # half height
    cr = lerp(u[:, 3], 0.25, 0.29)
    crown = sdf.frustum(sdf.translate(p, y=bottom + 0.03 + crown_h), crown_h, cr, cr * lerp(u[:, 4], 1.0, 1.12))
    band = sdf.cylinder(sdf.translate(p, y=bottom + 0.1), cr + 0.01, 0.055)
    return [(brim, main), (crown, main), (band, contrast_colour(main))]


def umbrella(p, u, main):
    """Open, standing on its hooked handle (the hook curls to +X or -X)."""
    R = lerp(u[:, 1], 0.56, 0.62)
    depth = lerp(u[:, 2], 0.26, 0.32)
    top = lerp(u[:, 3], 0.32, 0.38)
    centre = sdf.translate(p, y=top - R)
    shell = (sdf.sphere(centre, R).abs() - 0.015)
    rim = sdf.col(top - depth, p) - p[..., 1]  # < 0 above the canopy's rim
    canopy = torch.maximum(shell, rim)
    ribs_q = sdf.fold_around_y(centre, 8)
    ribs = torch.maximum(torch.maximum(sdf.sphere(centre, R + 0.012).abs() - 0.012, ribs_q[..., 2].abs() - 0.012), rim)
    hook_y = -0.5
    shaft = sdf.cylinder(sdf.translate(p, y=0.5 * (hook_y + top + 0.06)), 0.018, 0.5 * (top + 0.06 - hook_y))
    s = side(u[:, 15])
    hook_r = lerp(u[:, 4], 0.065, 0.08)
    hq = sdf.along_z(sdf.translate(p, x=s * hook_r, y=hook_y))
    hook = torch.maximum(sdf.torus(hq, hook_r, 0.025), hq[..., 2])  # lower half of the ring (hq z is world y)
    grip = sdf.capsule(p, (0.0, hook_y, 0.0), (0.0, hook_y + 0.12, 0.0), 0.028)
    return [(canopy, main), (ribs, shade(main, 0.7)), (shaft, fixed(METAL, main)), (unite(hook, grip), fixed(TRUNK, main))]


OBJECTS = {"mug": scaled(mug, 1.2), "teapot": scaled(teapot, 1.2), "bottle": scaled(bottle, 1.2),
           "hat": scaled(hat, 1.05), "umbrella": scaled(umbrella, 1.2)}
"""Name -> object, drawn larger than modelled (`parts.scaled`)."""
FACING: dict[str, tuple[int, int]] = {}
"""No household object has a front that reads from the front and back views."""
