"""Mesh clean-up at export: floaters, holes, Taubin smoothing, slivers, winding, failures."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from dream3d import config as config_mod
from dream3d.config import ExportConfig
from dream3d.errors import UserError
from dream3d.export import cleanup as C
from dream3d.export.cleanup import CleanupSettings, cleanup_mesh
from dream3d.limits import check_export_values
from dream3d.types import Mesh


# ------------------------------------------------------------------ fixtures
def colour_of(v: np.ndarray) -> np.ndarray:
    """A smooth colour field of position, so colours can be checked wherever vertices go."""
    return (0.5 + 0.4 * v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def as_mesh(v: np.ndarray, f: np.ndarray, colours: np.ndarray | None = None) -> Mesh:
    c = colour_of(v) if colours is None else colours
    return Mesh(torch.tensor(np.array(v), dtype=torch.float32), torch.tensor(np.array(f), dtype=torch.long),
                torch.tensor(np.array(c)))


def sphere(subdivisions: int = 3, radius: float = 1.0, centre=(0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    s.apply_translation(centre)
    return s


def noisy_sphere(subdivisions: int = 4, sigma: float = 0.02, seed: int = 0) -> trimesh.Trimesh:
    s = sphere(subdivisions)
    noise = np.random.default_rng(seed).normal(0.0, sigma, len(s.vertices))
    return trimesh.Trimesh(s.vertices + noise[:, None] * s.vertex_normals, s.faces, process=False)


def roughness(v: np.ndarray, f: np.ndarray) -> float:
    """Area-weighted mean dihedral angle in degrees (as benchmarks/geometry.py)."""
    m = trimesh.Trimesh(v, f, process=False)
    areas = m.area_faces[m.face_adjacency].mean(1)
    return float(np.degrees((m.face_adjacency_angles * areas).sum() / areas.sum()))


def state(m: trimesh.Trimesh) -> C._State:
    v = np.asarray(m.vertices, np.float64)
    return C._State(v, np.asarray(m.faces, np.int64), colour_of(v))


def run(mesh: Mesh, **settings) -> tuple[Mesh, dict, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, record = cleanup_mesh(mesh, CleanupSettings(**settings))
    return out, record, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def hand_laplacian(v: np.ndarray, f: np.ndarray, steps: int, lamb: float = 0.5) -> np.ndarray:
    """Plain umbrella smoothing, by hand: every step moves each vertex towards its neighbours' mean."""
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = np.unique(np.sort(e, axis=1), axis=0)
    v = v.copy()
    for _ in range(steps):
        total = np.zeros_like(v)
        np.add.at(total, e[:, 0], v[e[:, 1]])
        np.add.at(total, e[:, 1], v[e[:, 0]])
        degree = np.bincount(e.ravel(), minlength=len(v))[:, None]
        v += lamb * (total / degree - v)
    return v


# ------------------------------------------------------------------ smoothing
def test_taubin_keeps_the_volume_while_the_roughness_drops():
    noisy = noisy_sphere()
    clean_volume = sphere(4).volume
    out, info = C.smooth(state(noisy), CleanupSettings(smooth_iterations=20))
    smoothed = trimesh.Trimesh(out.v, out.f, process=False)
    assert info == {"smooth_iterations": 20}
    assert roughness(out.v, out.f) < 0.5 * roughness(noisy.vertices, noisy.faces)
    assert abs(smoothed.volume / clean_volume - 1) < 0.02
    # A plain Laplacian as smooth shrinks the sphere: Taubin's inflate step is what keeps it.
    plain = hand_laplacian(np.asarray(noisy.vertices), noisy.faces, 40)
    assert trimesh.Trimesh(plain, noisy.faces).volume / clean_volume < 0.9
    assert np.abs(out.c - colour_of(out.v)).max() < 0.02  # colours go where their vertices go


def test_colours_follow_vertices_that_smoothing_slides_along_the_surface():
    # A smooth sphere with an uneven triangulation: smoothing evens it out, sliding vertices
    # along the surface, so colours kept as they were would now sit at the wrong place.
    s = sphere(4)
    jitter = np.random.default_rng(3).normal(0.0, 0.02, s.vertices.shape)
    v = s.vertices + jitter - (jitter * s.vertices).sum(1, keepdims=True) * s.vertices
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    before = C._State(v, np.asarray(s.faces, np.int64), colour_of(v))
    out, _ = C.smooth(before, CleanupSettings(smooth_iterations=50))
    carried = np.abs(before.c - colour_of(out.v)).mean()
    assert np.abs(out.c - colour_of(out.v)).mean() < 0.3 * carried


def test_resampled_colours_are_the_surface_colours_at_the_closest_point():
    s = sphere(2)
    before = state(s)
    corners = before.v[before.f[:3]]  # points on three faces, pushed off the surface a little
    points = corners.mean(1) * 1.01
    got = C.resample_colours(before, points)
    np.testing.assert_allclose(got, before.c[before.f[:3]].mean(1), atol=2e-3)  # the faces' centres
    np.testing.assert_allclose(C.resample_colours(before, before.v), before.c, atol=1e-6)  # vertices: their own


def test_smoothing_drops_a_vertex_no_face_uses_instead_of_dividing_by_zero():
    st = state(sphere(2))
    lone = C._State(np.concatenate([st.v, [[5.0, 0.0, 0.0]]]), st.f, np.concatenate([st.c, [[1.0, 0.0, 0.0]]]))
    out, _ = C.smooth(lone, CleanupSettings(smooth_iterations=5))
    assert len(out.v) == len(st.v) and np.isfinite(out.v).all() and np.isfinite(out.c).all()


def test_smoothing_passes_are_counted_as_taubin_pairs(monkeypatch):
    seen = {}
    real = trimesh.smoothing.filter_taubin

    def spy(mesh, lamb, nu, iterations):
        seen.update(lamb=lamb, nu=nu, iterations=iterations)
        return real(mesh, lamb=lamb, nu=nu, iterations=iterations)

    monkeypatch.setattr(trimesh.smoothing, "filter_taubin", spy)
    C.smooth(state(sphere(2)), CleanupSettings(smooth_iterations=7))
    assert seen == {"lamb": 0.5, "nu": C.TAUBIN_NU, "iterations": 14}  # one shrink + one inflate per pass
    assert 0 < 1 / C.TAUBIN_LAMBDA - 1 / C.TAUBIN_NU < 0.1  # Taubin's pass band: it must not shrink


# ------------------------------------------------------------------ holes
def punch(m: trimesh.Trimesh) -> tuple[np.ndarray, int]:
    """Faces of `m` less three holes: one face (3 edges), two neighbours (4), vertex 0's one-ring (5)."""
    ring = np.flatnonzero((m.faces == 0).any(1))
    far = int(np.argmax(m.triangles_center @ np.array([0.0, 0.0, -1.0])))
    pair = m.face_adjacency[np.argmax(m.triangles_center[m.face_adjacency[:, 0]] @ np.array([1.0, 0.0, 0.0]))]
    gone = np.unique(np.concatenate([ring, [far], pair]))
    return np.delete(m.faces, gone, axis=0), 3


def test_close_holes_makes_a_punched_icosphere_watertight_and_keeps_its_vertices():
    s = sphere(3)
    faces, holes = punch(s)
    before = C._State(np.asarray(s.vertices, np.float64), faces.astype(np.int64), colour_of(s.vertices))
    assert not trimesh.Trimesh(before.v, before.f, process=False).is_watertight
    out, info = C.close_holes(before, CleanupSettings(max_hole_edges=8))
    assert info == {"holes_filled": holes, "holes_left": 0}
    filled = trimesh.Trimesh(out.v, out.f, process=False)
    assert filled.is_watertight and filled.is_winding_consistent and filled.volume > 0
    np.testing.assert_array_equal(out.v, before.v)  # no vertex added or moved
    assert len(out.f) == len(faces) + 1 + 2 + 3  # an n-edge hole takes n - 2 triangles (n = 3, 4, 5)
    assert filled.volume == pytest.approx(s.volume, rel=0.01)


def test_holes_longer_than_max_hole_edges_stay_open():
    s = sphere(3)
    faces, _ = punch(s)
    out, info = C.close_holes(state(trimesh.Trimesh(s.vertices, faces, process=False)), CleanupSettings(max_hole_edges=4))
    assert info == {"holes_filled": 2, "holes_left": 1}  # the one-ring hole has 5 edges
    assert len(C.boundary_loops(out.f)) == 1


# ------------------------------------------------------------------ pieces
def test_a_tiny_floater_is_dropped_and_colours_stay_with_their_vertices():
    big, tiny = sphere(3), sphere(1, radius=0.1, centre=(2.0, 0.0, 0.0))
    both = trimesh.util.concatenate([big, tiny])
    colours = np.random.default_rng(1).random((len(both.vertices), 3)).astype(np.float32)
    out, record, said = run(as_mesh(both.vertices, both.faces, colours), smooth_iterations=0)
    assert record["components_dropped"] == 1 and record["parts"] == 1
    assert len(out.vertices) == len(big.vertices) and not said
    dist, index = cKDTree(both.vertices).query(out.vertices.numpy())  # welding reorders the vertices
    assert dist.max() < 1e-6 and (index < len(big.vertices)).all()
    np.testing.assert_array_equal(out.vertex_colors.numpy(), colours[index])


def test_several_large_parts_are_kept_and_the_export_says_so():
    a, b = sphere(2, 0.5), sphere(2, 0.4, centre=(1.5, 0.0, 0.0))
    both = trimesh.util.concatenate([a, b])
    out, record, said = run(as_mesh(both.vertices, both.faces), smooth_iterations=0)
    assert record["parts"] == 2 and record["components_dropped"] == 0
    assert len(out.faces) == len(both.faces)
    assert [m for m in said if "keeps 2 separate parts (each at least 5% of the largest one's area)" in m]


def test_winding_numbers_inside_and_outside_a_ball():
    ball = sphere(3, 0.5)
    v, f = np.asarray(ball.vertices), np.asarray(ball.faces)
    w = C.winding_numbers(v, f, np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]))
    np.testing.assert_allclose(w, [1.0, 0.0], atol=1e-9)  # a closed outward surface: 1 inside, 0 outside
    np.testing.assert_allclose(C.winding_numbers(v, f[:, ::-1], np.zeros((1, 3))), [-1.0], atol=1e-9)
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.7, 0.7, (600, 3))
    r = np.linalg.norm(points, axis=1)
    points = points[(r < 0.49) | (r > 0.51)]  # the icosphere lies within 0.5 % of the ball's radius
    np.testing.assert_array_equal(np.abs(C.winding_numbers(v, f, points)) > 0.5, np.linalg.norm(points, axis=1) < 0.5)
    # a missing face changes the number only near it: the centre still reads as inside
    assert abs(C.winding_numbers(v, f[1:], np.zeros((1, 3)))[0] - 1.0) < 0.01


def test_a_cavity_inside_the_shape_is_dropped_but_a_part_beside_it_is_kept():
    outer, cavity = sphere(3, 0.6), sphere(2, 0.3)
    cavity.invert()  # an isosurface's cavity wall faces into the hollow
    beside = sphere(2, 0.3, centre=(1.5, 0.0, 0.0))
    both = trimesh.util.concatenate([outer, cavity, beside])
    out, record, said = run(as_mesh(both.vertices, both.faces), smooth_iterations=0)
    assert record["enclosed_dropped"] == 1 and record["parts"] == 2
    assert len(out.faces) == len(outer.faces) + len(beside.faces)
    assert np.linalg.norm(out.vertices.numpy(), axis=1).min() > 0.55  # nothing of the cavity is left


def test_a_fin_on_a_non_manifold_edge_is_dropped_and_the_rest_stays_manifold():
    ball = sphere(3, 0.5)
    a, b = ball.faces[0][:2]
    tip = ball.vertices[[a, b]].mean(0) * 1.3  # a triangle standing on one of the sphere's edges
    v = np.concatenate([ball.vertices, tip[None]])
    f = np.concatenate([ball.faces, [[a, b, len(ball.vertices)]]])
    assert C.face_components(f)[0] == 2  # joined only along an edge of three faces
    out, record, _ = run(as_mesh(v, f), smooth_iterations=0)
    assert record["parts"] == 1 and len(out.faces) == len(ball.faces)
    back = trimesh.Trimesh(out.vertices.numpy(), out.faces.numpy(), process=True)
    assert back.is_watertight and len(back.split(only_watertight=False)) == 1


def test_pieces_touching_at_one_vertex_are_separate_pieces():
    s = sphere(2)
    # a small triangle sharing only vertex 0 with the sphere: joined at a vertex, not by an edge
    v = np.concatenate([s.vertices, s.vertices[0] + [[0.0, 0.01, 0.0], [0.01, 0.0, 0.0]]])
    f = np.concatenate([s.faces, [[0, len(s.vertices), len(s.vertices) + 1]]])
    count, _ = C.face_components(f)
    assert count == 2
    out, info = C.keep_main(C._State(v, f, colour_of(v)), CleanupSettings())
    assert info == {"components_dropped": 1, "enclosed_dropped": 0} and len(out.v) == len(s.vertices)


def test_slivers_back_to_back_are_dropped_and_duplicates_kept_once():
    s = sphere(2)
    f = np.concatenate([s.faces, s.faces[:1, ::-1], s.faces[5:6]])  # a face doubled backwards, one doubled as is
    out, info = C.drop_slivers(C._State(np.asarray(s.vertices, float), f, None), CleanupSettings())
    assert info == {"slivers_dropped": 3}
    assert len(out.f) == len(s.faces) - 1
    assert not trimesh.Trimesh(out.v, out.f, process=False).is_watertight  # the face pair left a hole...
    closed, _ = C.close_holes(out, CleanupSettings())
    assert trimesh.Trimesh(closed.v, closed.f, process=False).is_watertight  # ...which the next step closes


# ------------------------------------------------------------------ winding
def test_a_flipped_mesh_is_turned_outward():
    s = sphere(3)
    out, record, _ = run(as_mesh(s.vertices, s.faces[:, ::-1]), smooth_iterations=0)
    m = trimesh.Trimesh(out.vertices.numpy(), out.faces.numpy(), process=False)
    assert m.volume > 0 and m.is_winding_consistent
    assert record["pieces_turned_outward"] == 1


def test_partly_flipped_faces_are_made_consistent_and_outward():
    s = sphere(3)
    f = s.faces.copy()
    flip = np.random.default_rng(2).random(len(f)) < 0.3
    f[flip] = f[flip][:, ::-1]
    out, _ = C.orient(C._State(np.asarray(s.vertices, float), f, None), CleanupSettings())
    m = trimesh.Trimesh(out.v, out.f, process=False)
    assert m.is_winding_consistent and m.volume == pytest.approx(s.volume, rel=1e-6)
    np.testing.assert_array_equal(np.sort(out.f, axis=1), np.sort(s.faces, axis=1))  # the same faces


# ------------------------------------------------------------------ the whole sequence
def test_full_clean_up_of_a_noisy_punched_sphere_with_decimation():
    noisy = noisy_sphere(5, sigma=0.01)
    faces, _ = punch(noisy)
    tiny = sphere(1, radius=0.05, centre=(2.0, 0.0, 0.0))
    v = np.concatenate([noisy.vertices, tiny.vertices])
    f = np.concatenate([faces, tiny.faces + len(noisy.vertices)])
    out, record, said = run(as_mesh(v, f), decimate_faces=4000, smooth_iterations=30)
    m = trimesh.Trimesh(out.vertices.numpy(), out.faces.numpy(), process=False)
    assert not said, said
    assert m.is_watertight and m.is_winding_consistent and m.volume > 0 and m.body_count == 1
    assert len(m.faces) <= 4000 and record["faces_out"] == len(m.faces)
    assert roughness(m.vertices, m.faces) < 0.5 * roughness(noisy.vertices, noisy.faces)
    assert m.volume == pytest.approx(sphere(5).volume, rel=0.03)
    assert record["components_dropped"] >= 1 and record["holes_filled"] >= 3 and record["smooth_iterations"] == 60
    assert record["failed"] == [] and not record["kept_raw"]
    assert "decimate" in record["steps"] and record["steps"][-1] == "orient"
    # colours: re-sampled from the nearest vertex in decimation, carried by smoothing
    assert np.abs(out.vertex_colors.numpy() - colour_of(m.vertices)).max() < 0.05


def test_a_failing_step_is_skipped_named_and_leaves_the_mesh_as_it_was(monkeypatch):
    noisy = noisy_sphere(3)
    mesh = as_mesh(noisy.vertices, noisy.faces)
    without, _, _ = run(mesh, smooth_iterations=0)

    def broken(s, cfg):
        raise FloatingPointError("overflow in\nthe Laplacian")

    monkeypatch.setattr(C, "smooth", broken)
    out, record, said = run(mesh, smooth_iterations=10)
    assert [m for m in said if "'smooth' step failed (FloatingPointError: overflow in the Laplacian)" in m]
    assert all("\n" not in m for m in said)  # the CLI prints each warning as one line
    assert record["failed"] == ["smooth"] and "smooth" not in record["steps"] and "orient" in record["steps"]
    np.testing.assert_array_equal(out.vertices.numpy(), without.vertices.numpy())  # as if no smoothing
    np.testing.assert_array_equal(out.faces.numpy(), without.faces.numpy())


@pytest.mark.parametrize("how", ["no faces", "non-finite"])
def test_a_clean_up_that_would_empty_the_mesh_keeps_it_as_extracted(monkeypatch, how):
    s = noisy_sphere(3)
    mesh = as_mesh(s.vertices, s.faces)

    def emptying(st, cfg):
        if how == "no faces":
            return C._State(st.v, st.f[:0], st.c), {}
        return C._State(np.full_like(st.v, np.nan), st.f, st.c), {}

    monkeypatch.setattr(C, "smooth", emptying)
    out, record, said = run(mesh, decimate_faces=500)
    assert [m for m in said if "would leave no usable mesh (the 'smooth' step left" in m and "kept the mesh as extracted" in m]
    assert record["kept_raw"] and record["steps"] == ["decimate"]
    assert len(out.faces) <= 500  # still decimated, so unwrapping stays quick
    out, record, _ = run(mesh)  # without decimation: the very mesh that came in
    np.testing.assert_array_equal(out.vertices.numpy(), mesh.vertices.numpy())
    np.testing.assert_array_equal(out.faces.numpy(), mesh.faces.numpy())
    np.testing.assert_array_equal(out.vertex_colors.numpy(), mesh.vertex_colors.numpy())


def test_a_textured_mesh_is_refused():
    s = sphere(1)
    mesh = as_mesh(s.vertices, s.faces)
    textured = dataclasses.replace(mesh, uv=torch.zeros(len(s.vertices), 2), texture=torch.zeros(4, 4, 3))
    with pytest.raises(ValueError, match="textured"):
        cleanup_mesh(textured)


# ------------------------------------------------------------------ config
def test_export_config_defaults_are_the_clean_up_defaults():
    ex, cl = ExportConfig(), CleanupSettings()
    for name in ("smooth_iterations", "min_component_fraction", "max_hole_edges"):
        assert getattr(ex, name) == getattr(cl, name), name


def test_a_run_config_without_the_clean_up_keys_still_loads(tmp_path):
    cfg = config_mod.build({"prompt": "a red cube"})
    data = config_mod.run_config_to_dict(cfg)
    for name in ("smooth_iterations", "min_component_fraction", "max_hole_edges"):
        del data["export"][name]
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    loaded = config_mod.load(tmp_path / "config.yaml")
    assert loaded.export.smooth_iterations == 100 and loaded.export.max_hole_edges == 64
    assert loaded.export.min_component_fraction == 0.05


@pytest.mark.parametrize("key, value, message", [
    ("smooth_iterations", -1, "export.smooth_iterations must be 0 (no smoothing) or between 1 and 100000, got -1"),
    ("max_hole_edges", 2, "export.max_hole_edges must be 0 (leave holes open) or between 3 and"),
    ("min_component_fraction", 1.5, "export.min_component_fraction must be a number between 0 and 1, got 1.5"),
    ("min_component_fraction", float("nan"), "export.min_component_fraction must be a number between 0 and 1"),
])
def test_out_of_range_clean_up_settings_are_refused(key, value, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_export_values({key: value})
    with pytest.raises(UserError, match=key):
        config_mod.build({"prompt": "a red cube", "export": {key: value}})
