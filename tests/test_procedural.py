"""Procedural shapes, their renderer and the captioned dataset."""
from __future__ import annotations

import math
import re

import pytest
import torch

from dream3d.cameras import orbit_cameras
from dream3d.priors import vocab
from dream3d.procedural import primitives as sdf
from dream3d.procedural.dataset import ShardPool, make_batch, make_labeled_batch, write_shard
from dream3d.procedural.render import Lighting, TraceConfig, render_scenes
from dream3d.priors.worlds import TOY_WORLD
from dream3d.procedural.shapes import N_SHAPE_PARAMS, OBJECTS, object_distance

torch.set_num_threads(1)


def _points(n: int, scale: float = 1.2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, n, 3, generator=g) * 2 - 1) * scale


def test_primitives_against_hand_computation():
    one = torch.ones(1)
    p = torch.tensor([[[2.0, 0.0, 0.0], [2.0, 2.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    assert torch.allclose(sdf.box(p, one, one, one), torch.tensor([[1.0, math.sqrt(2.0), -0.5, -1.0]]))
    assert torch.allclose(sdf.sphere(p, one), torch.tensor([[1.0, math.sqrt(8.0) - 1.0, -0.5, -1.0]]))
    # torus (major 1, minor 0.25): on the ring's centre line the distance is -0.25
    assert torch.allclose(sdf.torus(torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]), one, 0.25 * one),
                          torch.tensor([[-0.25, 0.75]]))
    # cylinder r=1, half height 1: above the cap and beside the wall
    q = torch.tensor([[[0.0, 3.0, 0.0], [3.0, 0.0, 0.0], [2.0, 2.0, 0.0]]])
    assert torch.allclose(sdf.cylinder(q, one, one), torch.tensor([[2.0, 2.0, math.sqrt(2.0)]]))
    # cone of base radius 1 and height 2 (half height 1): apex at y=1, below the base at y=-1
    c = sdf.frustum(torch.tensor([[[0.0, 2.0, 0.0], [0.0, -1.5, 0.0]]]), one, one, 0.0 * one)
    assert torch.allclose(c, torch.tensor([[1.0, 0.5]]), atol=1e-6)
    # frustum with equal radii is the cylinder
    r = _points(500)
    assert torch.allclose(sdf.frustum(r, 0.5 * one, 0.3 * one, 0.3 * one), sdf.cylinder(r, 0.3 * one, 0.5 * one), atol=1e-5)
    # pyramid: apex height and base
    pyr = sdf.pyramid(torch.tensor([[[0.0, 0.5, 0.0], [0.0, -0.3, 0.0], [0.0, 1.5, 0.0]]]), one, one)
    assert pyr[0, 0] < 0 and torch.isclose(pyr[0, 1], torch.tensor(0.3)) and pyr[0, 2] > 0


@pytest.mark.parametrize("name", list(OBJECTS))
def test_object_sdf_is_one_lipschitz(name):
    """Sphere tracing is safe only if no SDF overestimates: |d(p) - d(q)| <= |p - q|."""
    g = torch.Generator().manual_seed(1)
    n = 4000
    u = torch.rand(1, N_SHAPE_PARAMS, generator=g).expand(1, -1)
    main = torch.tensor([[0.8, 0.1, 0.1]])
    p = _points(n, seed=2)
    q = p + 0.05 * torch.randn(p.shape, generator=g)
    dp, dq = object_distance(name, p, u, main), object_distance(name, q, u, main)
    assert ((dp - dq).abs() <= (p - q).norm(dim=-1) * 1.001 + 1e-5).all()


@pytest.mark.parametrize("name", list(OBJECTS))
def test_objects_are_centred_and_bounded(name):
    g = torch.Generator().manual_seed(3)
    p = _points(30000, scale=1.0, seed=4).expand(8, -1, -1)
    u = torch.rand(8, N_SHAPE_PARAMS, generator=g)
    d = object_distance(name, p, u, torch.full((8, 3), 0.5))
    inside = d < 0
    assert inside.any(dim=1).all(), "every sample has some volume"
    radius = p.norm(dim=-1)[inside]
    assert radius.max() < TraceConfig().bound_radius  # the tracer's bounding sphere holds it
    centre = (p * inside[..., None]).sum(1) / inside.sum(1, keepdim=True)  # [8, 3]
    # Flat objects (donut, bed, boat) rest on the floor at y ~ -0.5, so their centre sits lower.
    assert centre[:, [0, 2]].abs().max() < 0.15 and -0.4 < centre[:, 1].min() and centre[:, 1].max() < 0.3


def test_render_shape_range_and_reproducibility():
    a, caps_a, cams = make_batch(6, 16, seed=5)
    b, caps_b, _ = make_batch(6, 16, seed=5)
    c, _, _ = make_batch(6, 16, seed=6)
    assert a.shape == (6, 16, 16, 3) and cams.batch_size == 6 and cams.width == 16
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and caps_a == caps_b
    assert not torch.equal(a, c)
    pattern = re.compile(r"^an? (%s) (%s)(, (front|side|back|overhead) view)?$" % ("|".join(vocab.COLOURS), "|".join(vocab.OBJECTS)))
    assert all(pattern.match(t) for t in caps_a)


def test_labels_agree_with_captions_and_objects_sit_in_the_middle():
    b = make_labeled_batch(12, 16, seed=7, objects=torch.arange(12), colours=torch.arange(12) % 10)
    for i, text in enumerate(b.captions):
        parsed = vocab.parse_prompt(text)
        assert parsed.object == vocab.OBJECTS[i] and parsed.colour == vocab.COLOURS[i % 10]
        assert parsed.view in (None, b.views[i])
    cov = b.coverage[..., 0]  # [N, H, W]
    assert (cov.sum((1, 2)) > 5).all()
    ys, xs = torch.meshgrid(torch.arange(16.0) + 0.5, torch.arange(16.0) + 0.5, indexing="ij")
    cx = (cov * xs).sum((1, 2)) / cov.sum((1, 2))
    cy = (cov * ys).sum((1, 2)) / cov.sum((1, 2))
    assert ((cx - 8).abs() < 3).all() and ((cy - 8).abs() < 4).all()
    assert cov[:, 0, :].max() < 0.5 and cov[:, :, 0].max() < 0.5  # nothing touches the border


def _front_back_difference(name: str) -> float:
    """Mean |front render - mirrored back render| with a headlight, over 4 random shapes.
    A front-back symmetric object gives ~0 (the back view is the front view mirrored)."""
    n = 4
    g = torch.Generator().manual_seed(8)
    u = torch.rand(n, N_SHAPE_PARAMS, generator=g)
    u = u.repeat(2, 1)
    if name in TOY_WORLD.fronted_objects:
        u[:, 0] = 0.5  # no yaw jitter
    main = torch.tensor([[0.2, 0.5, 0.9]]).expand(2 * n, 3)
    az = torch.tensor([0.0] * n + [180.0] * n)
    cams = orbit_cameras(torch.full((2 * n,), 10.0), az, torch.full((2 * n,), 2.6), torch.full((2 * n,), 40.0), 24, 24)
    light = Lighting(cams.c2w[:, :3, 2], torch.full((2 * n,), 0.4), torch.full((2 * n,), 0.7))
    img, _ = render_scenes([name] * (2 * n), u, main, cams, light)
    return float((img[:n] - img[n:].flip(2)).abs().mean())


def test_fronted_objects_look_different_from_front_and_back():
    symmetric = max(_front_back_difference("sphere"), _front_back_difference("cylinder"))
    assert symmetric < 0.01
    for name in TOY_WORLD.fronted_objects:  # every world's fronted objects (tiny-shapes' four among them)
        assert _front_back_difference(name) > max(0.01, 10 * symmetric), name


def test_shards_round_trip(tmp_path):
    write_shard(0, 6, 8, root=tmp_path, chunk=4)
    pool = ShardPool(8, root=tmp_path)
    assert len(pool) == 6
    g = torch.Generator().manual_seed(0)
    b = pool.sample(5, g, mirror=False)
    assert b.images.shape == (5, 8, 8, 3) and b.cameras.batch_size == 5
    direct = make_labeled_batch(4, 8, generator=torch.Generator().manual_seed(1_000_003))
    stored = torch.from_numpy(pool.arrays["images"][:4]).float() / 255
    assert (stored - direct.images).abs().max() <= 0.5 / 255 + 1e-6  # shard 0 is reproducible from its seed
    write_shard(1, 3, 8, root=tmp_path)
    assert pool.refresh() == 9
