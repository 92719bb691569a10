"""The geometry benchmark's measures on meshes whose answers are known."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import geometry as G  # noqa: E402

QUICK = {"steps": 120, "n": 32}  # a coarser fit than the benchmark's keeps the test quick
UPRIGHT = trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0])  # trimesh's +Z axis onto +Y


def test_fitted_primitive_iou_prefers_the_right_shape():
    cube = trimesh.creation.box((0.8, 0.6, 0.8)).subdivide_to_size(0.05)
    cube.apply_transform(trimesh.transformations.rotation_matrix(np.radians(20), [0, 1, 0]))  # turned about +Y
    cube.apply_translation([0.1, -0.05, 0.0])
    assert G.fit_iou(cube, "cube", **QUICK) > 0.95
    assert G.fit_iou(cube, "sphere", **QUICK) < 0.85
    torus = trimesh.creation.torus(0.4, 0.15).apply_transform(UPRIGHT)
    assert G.fit_iou(torus, "torus", **QUICK) > 0.93
    assert G.fit_iou(torus, "cylinder", **QUICK) < 0.75  # the hole is empty


def test_genus_roughness_and_components():
    torus = trimesh.creation.torus(0.4, 0.15).apply_transform(UPRIGHT)
    sphere = trimesh.creation.icosphere(4, 0.5)
    assert (G.genus(torus), G.genus(sphere)) == (1, 0)
    assert G.roughness(sphere) < 3.0
    rng = np.random.default_rng(0)
    bumpy = sphere.copy()
    bumpy.vertices = bumpy.vertices * (1 + 0.03 * rng.standard_normal((len(bumpy.vertices), 1)))
    assert G.roughness(bumpy) > 10.0
    # a hand-computable case: two faces folded by 90 degrees, equal areas
    fold = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 1, 2], [0, 3, 1]], process=False)
    assert G.roughness(fold) == pytest.approx(90.0)
    assert G.shape_of("a Yellow torus") == "torus" and G.shape_of("a red chair") is None


def test_bars_and_summary_count_each_bar():
    good = {"prompt": "a red cube", "components": 1, "watertight": True, "roughness": 4.0, "iou": 0.9, "genus": 0,
            "hole": False, "views": 8}
    rough = {**good, "roughness": 6.5, "views": 6}
    holed = {**good, "prompt": "a blue torus", "genus": 1, "hole": True, "iou": 0.5, "components": 2}
    pinhole = {**holed, "hole": False}  # a handle somewhere in the surface is not the torus's hole
    assert not G.bars(pinhole)["IoU >= 0.85 / torus hole"]
    assert G.bars(good) == dict.fromkeys(G.bars(good), True)
    assert not G.bars(rough)["roughness <= 6"] and not G.bars(rough)["views >= 7/8"]
    assert G.bars(holed)["IoU >= 0.85 / torus hole"] and not G.bars(holed)["one watertight component"]
    lines = G.summary([good, rough, holed])
    assert lines[2] == "| a red cube | 2 | 2/2 | 1/2 | 2/2 | 1/2 |"
    assert lines[3] == "| a blue torus | 1 | 0/1 | 1/1 | 1/1 | 1/1 |"


def test_hole_through_the_centre_tells_a_torus_from_a_pinhole():
    torus = trimesh.creation.torus(0.4, 0.15).apply_transform(UPRIGHT)
    assert G.hole_through_centre(torus)
    assert not G.hole_through_centre(trimesh.creation.icosphere(3, 0.5))
    # genus 1, but its hole (radius 0.01) is narrower than a grid cell: nothing to see through
    pinhole = trimesh.creation.torus(0.3, 0.29, major_sections=64, minor_sections=32).apply_transform(UPRIGHT)
    assert G.genus(pinhole) == 1 and not G.hole_through_centre(pinhole)
