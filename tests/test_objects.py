"""The procedural objects beyond tiny-shapes: upright, sized, randomised, mirror-symmetric, and
fronted ones facing +Z as the cameras name their views."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dream3d.cameras import orbit_cameras, view_names
from dream3d.priors.worlds import TINY_SHAPES, TOY_WORLD
from dream3d.procedural.render import TraceConfig, trace
from dream3d.procedural.shapes import FACING, N_SHAPE_PARAMS, OBJECTS, object_distance, object_parts

torch.set_num_threads(1)

NEW_OBJECTS = [o for o in TOY_WORLD.objects if o not in TINY_SHAPES.objects]
GREY = torch.tensor([[0.5, 0.5, 0.5]])


def _grid(n: int = 56, half: float = 0.85) -> torch.Tensor:
    axis = torch.linspace(-half, half, n)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 3)  # [1, n^3, 3]


def test_the_new_world_has_the_objects_asked_for():
    assert len(NEW_OBJECTS) >= 24 and len(TOY_WORLD.fronted_objects) >= 12
    assert set(NEW_OBJECTS) <= set(OBJECTS)


@pytest.mark.parametrize("name", NEW_OBJECTS)
def test_new_objects_stand_upright_inside_the_radius_and_change_with_u(name):
    n = 4
    p = _grid().expand(n, -1, -1)
    u = torch.rand(n, N_SHAPE_PARAMS, generator=torch.Generator().manual_seed(11))
    d = object_distance(name, p, u, GREY.expand(n, 3))
    inside = d < 0
    assert (inside.sum(1) > 50).all(), "every sample has volume"
    far = 9.0
    low = torch.where(inside, p[..., 1], torch.full_like(d, far)).amin(1)  # [n] lowest occupied height
    centre = (p * inside[..., None]).sum(1) / inside.sum(1, keepdim=True)  # [n, 3]
    radius = torch.where(inside, p.norm(dim=-1), torch.zeros_like(d)).amax(1)
    assert (radius < 0.8).all(), radius
    assert ((low > -0.75) & (low < -0.35)).all(), low  # resting near the floor every object shares
    assert (centre[:, 1] > low + 0.1).all()  # the mass is above the lowest point, not beside it
    for i in range(n):  # ... and over the footprint (what touches the floor), so it would not tip over
        foot = p[i, inside[i] & (p[i, :, 1] < low[i] + 0.05)]
        lo, hi = foot.amin(0), foot.amax(0)
        # 0.08 of slack: the umbrella stands on its hook, a hook's width beside the shaft
        assert (centre[i, [0, 2]] > lo[[0, 2]] - 0.08).all() and (centre[i, [0, 2]] < hi[[0, 2]] + 0.08).all(), i
    # proportions follow u: every pair of samples differs in shape, some by several centimetres
    change = torch.stack([(d[0] - d[i]).abs().max() for i in range(1, n)])
    assert (change > 0.005).all() and change.max() > 0.03, change


@pytest.mark.parametrize("name", NEW_OBJECTS)
def test_new_objects_are_mirror_symmetric_with_their_turn_and_side_flipped(name):
    """The data set mirrors renders left-right (ShardPool), so the mirror image of every shape must be
    another shape of the same object: x -> -x with u[:, 0] (turn) and u[:, 15] (side) -> 1 - u."""
    g = torch.Generator().manual_seed(12)
    p = (torch.rand(3, 3000, 3, generator=g) * 2 - 1) * 0.9
    u = torch.rand(3, N_SHAPE_PARAMS, generator=g)
    flipped = u.clone()
    flipped[:, [0, 15]] = 1.0 - u[:, [0, 15]]
    mirrored = p * torch.tensor([-1.0, 1.0, 1.0])
    main = GREY.expand(3, 3)
    assert torch.allclose(object_distance(name, mirrored, flipped, main), object_distance(name, p, u, main), atol=1e-4)


def _pixels_of_part(name: str, part: int, azimuth: float, u: torch.Tensor, size: int = 40) -> int:
    """How many pixels of a render from `azimuth` show part `part` (the nearest part at the ray's hit)."""
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    cams = orbit_cameras(one(10.0), one(azimuth), one(2.6), one(40.0), size, size)
    o, d = (x.reshape(-1, 3) for x in cams.rays())
    m = o.shape[0]
    hit, t = trace(name, o, d, u.expand(m, -1), GREY.expand(m, 3), TraceConfig())
    pts = (o + t[:, None] * d)[hit][:, None, :]
    parts = object_parts(name, pts, u.expand(len(pts), -1), GREY.expand(len(pts), 3))
    owner = torch.stack([dist[:, 0] for dist, _ in parts]).argmin(0)
    return int((owner == part).sum())


@pytest.mark.parametrize("name", list(TOY_WORLD.fronted_objects))
def test_fronted_objects_face_plus_z_and_the_front_camera_sees_their_front(name):
    """Each fronted object names a part on one side (eyes, beak, headlights, door: +1; a sofa's back,
    a headboard: -1). That part lies on its side of the XZ plane, and the camera the views call
    'front' (azimuth 0, on +Z) sees a front part more than the 'back' one (azimuth 180) does (and the
    reverse for a back part; a backrest also shows from the front, above the seat)."""
    part, side = FACING[name]
    u = torch.full((1, N_SHAPE_PARAMS), 0.5)
    p = _grid(72, 0.8)
    inside = object_parts(name, p, u, GREY)[part][0] < 0
    assert inside.any(), "the facing part has volume"
    assert side * float(p[inside][:, 2].mean()) > 0.03
    az = torch.tensor([0.0, 180.0])
    assert view_names(torch.full((2,), 10.0), az) == ["front", "back"]
    eye = orbit_cameras(torch.zeros(2), az, torch.full((2,), 3.0), torch.full((2,), 40.0), 8, 8).c2w[:, :3, 3]
    assert eye[0, 2] > 2.9 and eye[1, 2] < -2.9  # azimuth 0 sits on +Z, where fronts face
    front, back = _pixels_of_part(name, part, 0.0, u), _pixels_of_part(name, part, 180.0, u)
    seen, unseen = (front, back) if side > 0 else (back, front)
    assert seen >= 3 and seen > 1.3 * unseen, (front, back)


def test_view_names_follow_the_azimuth():
    az = torch.tensor([0.0, 30.0, -40.0, 60.0, 90.0, -90.0, 140.0, 180.0, -175.0, 200.0, 0.0])
    el = torch.tensor([10.0] * 10 + [50.0])
    assert view_names(el, az) == ["front", "front", "front", "side", "side", "side", "back", "back", "back",
                                  "back", "overhead"]


def test_contact_sheet_has_a_labelled_tile_per_object():
    from dream3d.procedural.sheet import render_sheet

    sheet = render_sheet(["duck", "car", "flower"], ["red", "cyan"], size=16, cols=2)
    assert sheet.size == (32, 2 * (16 + 12))
    tiles = torch.from_numpy(np.asarray(sheet, dtype=np.float32))  # [56, 32, 3]
    assert (tiles[:16, :16] - tiles[0, 0]).abs().amax() > 50  # the duck drawn on its background
    assert (tiles[28:44, 16:] == 255).all()  # no fourth tile
