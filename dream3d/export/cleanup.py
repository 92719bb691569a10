"""Mesh clean-up at export: a sequence of named steps on an extracted, vertex-coloured mesh.

    weld -> keep main component -> close holes -> smooth -> decimate -> drop slivers
         -> keep main component / close holes / smooth again (after decimation) -> orient

The order was chosen by measuring the default preset's meshes (README, "Clean-up at
export"): smoothing the extracted surface before decimation lets quadric decimation
place its fewer vertices on a smooth surface; decimation then leaves new facets and
two-face slivers (faces back to back on one edge), so the pieces, holes and smoothing
are done again after it. Every step keeps vertex colours with their vertices; decimation
re-samples them from the nearest original vertex and smoothing from the surface as it was.

Failure is never fatal: a step that raises is skipped (the mesh stays as it was before
that step) and a RuntimeWarning names it; a step that would leave no usable mesh (no
faces, non-finite values) makes the clean-up keep the mesh as extracted (only decimated)
and say so. `cleanup_mesh` returns the mesh and a short record of what was done.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from dream3d.export.mesh import _arrays, _mesh, decimate
from dream3d.types import Mesh

TAUBIN_LAMBDA = 0.5
# Taubin's inflate factor: pass band k = 1/lambda - 1/nu = 0.04. At 0.53 (k = 0.11) the
# default preset's torus and pyramid stayed at 6.5-7 degrees however long it ran; at 0.51
# they reach 5.5 with the volume still within 0.5% (README, "Clean-up at export").
TAUBIN_NU = 0.51
WELD_TOLERANCE = 1e-6  # of the mesh's largest side, as `mesh.clean`


@dataclass(frozen=True)
class CleanupSettings:
    """The knobs of the clean-up (ExportConfig's fields of the same names; docs there)."""

    smooth_iterations: int = 100  # Taubin passes (shrink + inflate) before and again after decimation; 0 = none
    min_component_fraction: float = 0.05  # pieces below this share of the largest one's area are dropped
    max_hole_edges: int = 64  # boundary loops of at most this many edges are closed; 0 = none
    decimate_faces: int | None = None  # quadric decimation target; None = keep all faces


class _State(NamedTuple):
    v: np.ndarray  # [V, 3] float64
    f: np.ndarray  # [F, 3] int64
    c: np.ndarray | None  # [V, 3] float32 vertex colours


StepFn = Callable[[_State, CleanupSettings], tuple[_State, dict]]


# ---------------------------------------------------------------- helpers
def _drop_unreferenced(s: _State) -> _State:
    used = np.zeros(len(s.v), bool)
    used[s.f.ravel()] = True
    remap = np.cumsum(used) - 1
    return _State(s.v[used], remap[s.f], None if s.c is None else s.c[used])


def _edge_keys(f: np.ndarray) -> np.ndarray:
    """[3F] one int64 per undirected edge of each face (1-D keys sort far faster than rows)."""
    e = np.sort(f[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    return e[:, 0] * (int(f.max()) + 1) + e[:, 1]


def face_components(f: np.ndarray) -> tuple[int, np.ndarray]:
    """(count, [F] labels) of pieces whose faces share manifold edges (edges of exactly two
    faces): touching at a vertex, or only along an edge of three or more faces (a fin that
    decimation or a noisy isosurface leaves), is not joined, so such pieces can be dropped
    and the rest stays manifold."""
    _, edge_id, count = np.unique(_edge_keys(f), return_inverse=True, return_counts=True)
    edge_id = edge_id.ravel()
    n_f, n_e = len(f), int(edge_id.max()) + 1
    face_id = np.repeat(np.arange(n_f), 3)
    joins = count[edge_id] == 2
    graph = coo_matrix((np.ones(int(joins.sum())), (face_id[joins], n_f + edge_id[joins])), shape=(n_f + n_e,) * 2)
    _, label = connected_components(graph, directed=False)
    _, label = np.unique(label[:n_f], return_inverse=True)
    return int(label.max()) + 1, label.ravel()


def _areas(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    return 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)


def boundary_loops(f: np.ndarray) -> list[np.ndarray]:
    """Vertex loops along half-edges that have no twin, in the faces' winding; loops through a
    vertex where two boundaries meet are left out (which way to walk there is ambiguous)."""
    he = f[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    _, edge_id, count = np.unique(_edge_keys(f), return_inverse=True, return_counts=True)
    b = he[count[edge_id.ravel()] == 1]  # an edge of one face only
    if not len(b):
        return []
    starts, counts = np.unique(b[:, 0], return_counts=True)
    ambiguous = set(starts[counts > 1].tolist())
    nxt = dict(zip(b[:, 0].tolist(), b[:, 1].tolist()))
    loops, seen = [], set()
    for start in b[:, 0].tolist():
        if start in seen:
            continue
        loop, cur, ok = [start], nxt[start], start not in ambiguous
        seen.add(start)
        while ok and cur != start:
            if cur in seen or cur in ambiguous or cur not in nxt:
                ok = False
                break
            loop.append(cur)
            seen.add(cur)
            cur = nxt[cur]
        if ok and len(loop) >= 3:
            loops.append(np.array(loop))
    return loops


def _ear_fill(loop: list[int], v: np.ndarray, edges: set[int], n: int) -> list[tuple[int, int, int]] | None:
    """Triangles closing one boundary loop without new vertices: clip the ear with the
    shortest new edge, never one the mesh already has (that would make it non-manifold)."""
    loop, faces = list(loop), []
    while len(loop) > 3:
        ids = np.array(loop)
        prev, nxt = np.roll(ids, 1), np.roll(ids, -1)
        for i in np.argsort(np.linalg.norm(v[prev] - v[nxt], axis=1)):
            a, c = int(prev[i]), int(nxt[i])
            if min(a, c) * n + max(a, c) not in edges:
                break
        else:
            return None
        faces.append((c, loop[i], a))  # reversed: the new face's edges are the boundary's twins
        edges.add(min(a, c) * n + max(a, c))
        del loop[i]
    faces.append((loop[2], loop[1], loop[0]))
    return faces


# ---------------------------------------------------------------- steps
def weld(s: _State, _: CleanupSettings) -> tuple[_State, dict]:
    """Merge vertices at the same position (whatever their colours) and drop faces with a repeated corner."""
    scale = max(float(np.ptp(s.v, axis=0).max()), 1e-12)
    _, first, inverse = np.unique(np.round(s.v / (WELD_TOLERANCE * scale)).astype(np.int64), axis=0,
                                  return_index=True, return_inverse=True)
    f = inverse.ravel()[s.f]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    out = _drop_unreferenced(_State(s.v[first], f, None if s.c is None else s.c[first]))
    return out, {"vertices_merged": len(s.v) - len(first)}


def winding_numbers(v: np.ndarray, f: np.ndarray, points: np.ndarray, chunk: int = 1 << 21) -> np.ndarray:
    """[P] generalised winding number of the surface (v, f) at each point: the triangles' solid
    angles (Van Oosterom and Strackee) over 4 pi; about +-1 inside a closed surface, 0 outside,
    and still meaningful where the surface has small holes."""
    out = np.zeros(len(points))
    step = max(1, chunk // max(len(f), 1))
    for i in range(0, len(points), step):
        rel = v[f][None] - points[i:i + step, None, None, :]  # [p, F, 3 corners, 3]
        a, b, c = rel[:, :, 0], rel[:, :, 1], rel[:, :, 2]
        la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
        det = np.einsum("pfk,pfk->pf", a, np.cross(b, c))
        dot = lambda x, y: np.einsum("pfk,pfk->pf", x, y)  # noqa: E731
        div = la * lb * lc + dot(a, b) * lc + dot(a, c) * lb + dot(b, c) * la
        out[i:i + step] = 2.0 * np.arctan2(det, div).sum(1) / (4.0 * np.pi)
    return out


def keep_main(s: _State, cfg: CleanupSettings, probes: int = 16) -> tuple[_State, dict]:
    """Drop pieces whose area is below `min_component_fraction` of the largest piece's, and
    pieces enclosed by the largest one (the walls of a cavity inside the shape, which a
    density's isosurface leaves where the inside is hollow: never seen, not a part)."""
    count, label = face_components(s.f)
    area = np.bincount(label, weights=_areas(s.v, s.f), minlength=count)
    keep = area >= cfg.min_component_fraction * area.max()
    main = int(np.argmax(area))
    enclosed = 0
    for piece in np.flatnonzero(keep):
        if piece == main:
            continue
        corners = np.unique(s.f[label == piece].ravel())
        sample = s.v[corners[np.linspace(0, len(corners) - 1, min(probes, len(corners))).astype(int)]]
        if np.median(np.abs(winding_numbers(s.v, s.f[label == main], sample))) > 0.5:
            keep[piece] = False
            enclosed += 1
    out = _drop_unreferenced(_State(s.v, s.f[keep[label]], s.c))
    return out, {"components_dropped": int(count - keep.sum()), "enclosed_dropped": enclosed}


def close_holes(s: _State, cfg: CleanupSettings) -> tuple[_State, dict]:
    """Close boundary loops of at most `max_hole_edges` edges (larger openings are the shape's)."""
    loops = boundary_loops(s.f)
    small = [loop for loop in loops if len(loop) <= cfg.max_hole_edges]
    if not small:
        return s, {"holes_filled": 0, "holes_left": len(loops)}
    n = int(s.f.max()) + 1  # the key base `_edge_keys` uses
    edges = set(_edge_keys(s.f).tolist())
    new, filled = [], 0
    for loop in small:
        faces = _ear_fill(loop.tolist(), s.v, edges, n)
        if faces is not None:
            new.extend(faces)
            filled += 1
    f = np.concatenate([s.f, np.array(new, np.int64).reshape(-1, 3)])
    return _State(s.v, f, s.c), {"holes_filled": filled, "holes_left": len(loops) - filled}


def resample_colours(before: _State, points: np.ndarray, candidates: int = 8) -> np.ndarray:
    """[N, 3] colours of `before`'s surface at its closest points to `points`, interpolated
    across the face found (among the `candidates` faces with the nearest centres)."""
    tri = before.v[before.f]  # [F, 3, 3]
    k = min(candidates, len(tri))
    _, cand = cKDTree(tri.mean(1)).query(points, k=k)
    cand = cand.reshape(len(points), k)
    pts = np.repeat(points, k, axis=0)
    closest = trimesh.triangles.closest_point(tri[cand.ravel()], pts).reshape(len(points), k, 3)
    best = np.argmin(np.linalg.norm(closest - points[:, None], axis=2), axis=1)
    rows = np.arange(len(points))
    face = cand[rows, best]
    bary = trimesh.triangles.points_to_barycentric(tri[face], closest[rows, best]).clip(0.0, 1.0)
    bary /= np.maximum(bary.sum(1, keepdims=True), 1e-12)
    return np.einsum("nk,nkc->nc", bary, before.c[before.f[face]]).astype(np.float32)


def smooth(s: _State, cfg: CleanupSettings) -> tuple[_State, dict]:
    """Taubin smoothing: each pass shrinks by lambda and inflates by nu, so the volume stays.
    Vertices also slide along the surface (a third of an edge on average at 100 passes), so
    their colours are re-read from the surface as it was, where they now are."""
    s = _drop_unreferenced(s)  # a vertex without neighbours would divide by zero in the Laplacian
    mesh = trimesh.Trimesh(s.v, s.f, process=False)
    # trimesh alternates shrink and inflate per iteration: two of its iterations are one pass
    trimesh.smoothing.filter_taubin(mesh, lamb=TAUBIN_LAMBDA, nu=TAUBIN_NU, iterations=2 * cfg.smooth_iterations)
    v = np.asarray(mesh.vertices, np.float64)
    c = None if s.c is None else resample_colours(s, v)
    return _State(v, s.f, c), {"smooth_iterations": cfg.smooth_iterations}


def decimate_step(s: _State, cfg: CleanupSettings) -> tuple[_State, dict]:
    """Quadric decimation to `decimate_faces` (it keeps the silhouette); colours from the nearest vertex."""
    m = decimate(_mesh(s.v, s.f, s.c), cfg.decimate_faces)
    v, f, c, _, _ = _arrays(m)
    return _State(v, f, c), {"decimated_from": len(s.f)}


def drop_slivers(s: _State, _: CleanupSettings) -> tuple[_State, dict]:
    """Drop faces that share all three corners with another face: a pair back to back encloses
    nothing and makes its edges non-manifold; of exact duplicates one is kept."""
    f = s.f[(s.f[:, 0] != s.f[:, 1]) & (s.f[:, 1] != s.f[:, 2]) & (s.f[:, 0] != s.f[:, 2])]
    rolled = np.stack([np.roll(f, -k, axis=1) for k in range(3)])  # [3, F, 3]: rotations of each face
    canon = rolled[np.argmin(rolled[:, :, 0], axis=0), np.arange(len(f))]  # smallest corner first
    flipped = canon[:, 1] > canon[:, 2]
    _, group, count = np.unique(np.sort(f, axis=1), axis=0, return_inverse=True, return_counts=True)
    group = group.ravel()
    mixed = np.bincount(group, weights=flipped, minlength=len(count))
    both_ways = (mixed > 0) & (mixed < count)
    _, first = np.unique(group, return_index=True)
    keep = np.zeros(len(f), bool)
    keep[first] = True
    keep &= ~both_ways[group]
    out = _drop_unreferenced(_State(s.v, f[keep], s.c))
    return out, {"slivers_dropped": int(len(s.f) - keep.sum())}


def orient(s: _State, _: CleanupSettings) -> tuple[_State, dict]:
    """Consistent winding (trimesh's fix_winding), then each piece turned outward: its signed
    volume about its own centre must be positive (also meaningful for nearly closed pieces)."""
    mesh = trimesh.Trimesh(s.v, s.f, process=False)
    if not mesh.is_winding_consistent:  # fix_winding walks every face: seconds at 30k faces
        trimesh.repair.fix_winding(mesh)
    f = np.asarray(mesh.faces, np.int64).copy()
    count, label = face_components(f)
    flipped = 0
    for piece in range(count):
        idx = label == piece
        tri = s.v[f[idx]]
        tri = tri - tri.reshape(-1, 3).mean(0)
        if np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() < 0:
            f[idx] = f[idx][:, ::-1]
            flipped += 1
    return _State(s.v, f, s.c), {"pieces_turned_outward": flipped}


# ---------------------------------------------------------------- running
def _steps(cfg: CleanupSettings, n_faces: int) -> list[tuple[str, StepFn]]:
    tidy = [("keep main component", keep_main)]
    if cfg.max_hole_edges > 0:
        tidy.append(("close holes", close_holes))
    if cfg.smooth_iterations > 0:
        tidy.append(("smooth", smooth))
    steps = [("weld", weld), *tidy]
    if cfg.decimate_faces and n_faces > cfg.decimate_faces:
        steps += [("decimate", decimate_step), ("drop slivers", drop_slivers)]
        steps += [(f"{name} after decimation", fn) for name, fn in tidy]
    return steps + [("orient", orient)]


def _unusable(s: _State) -> str | None:
    """Why `s` cannot be written, or None."""
    if len(s.f) == 0 or len(s.v) == 0:
        return "no faces"
    if s.f.min() < 0 or s.f.max() >= len(s.v):
        return "face indices out of range"
    if not np.isfinite(s.v).all() or (s.c is not None and not np.isfinite(s.c).all()):
        return "non-finite values"
    return None


def _run(state: _State, steps, cfg: CleanupSettings, record: dict) -> tuple[_State, str | None]:
    """Apply `steps`; a step that raises is skipped. Returns the state and, when a step would
    leave no usable mesh, that step's name and why (the state is then the last usable one)."""
    for name, fn in steps:
        try:
            out, info = fn(state, cfg)
        except Exception as e:  # noqa: BLE001 -- a clean-up step must not cost the user the mesh
            reason = " ".join(str(e).split())  # one line: the CLI prints each warning as one
            warnings.warn(f"mesh clean-up: the '{name}' step failed ({type(e).__name__}: {reason}); "
                          f"continued without it", RuntimeWarning, stacklevel=4)
            record["failed"].append(name)
            continue
        why = _unusable(out)
        if why is not None:
            return state, f"the '{name}' step left {why}"
        for key, value in info.items():
            record[key] = record.get(key, 0) + value if isinstance(value, int) else value
        record["steps"].append(name)
        state = out
    return state, None


def cleanup_mesh(mesh: Mesh, cfg: CleanupSettings = CleanupSettings()) -> tuple[Mesh, dict]:
    """Clean up `mesh` (vertex colours allowed, no UVs); returns the mesh and a record of the
    steps done, pieces dropped, holes filled, passes smoothed and parts kept.

    Warns (RuntimeWarning) when a step fails (it is skipped), when the clean-up would leave
    no usable mesh (the mesh as extracted is kept, decimated only), and when several parts
    remain (each at least `min_component_fraction` of the largest one's area)."""
    t0 = time.perf_counter()
    v, f, c, uv, _ = _arrays(mesh)
    if uv is not None:
        raise ValueError("cannot clean up a textured mesh (the UV layout would break): clean up before unwrapping")
    raw = _State(v, f, c)
    record: dict = {"steps": [], "failed": [], "kept_raw": False, "faces_in": len(f)}
    state, empty = _run(raw, _steps(cfg, len(f)), cfg, record)
    if empty is not None:
        warnings.warn(f"mesh clean-up would leave no usable mesh ({empty}): kept the mesh as extracted",
                      RuntimeWarning, stacklevel=2)
        record = {"steps": [], "failed": record["failed"], "kept_raw": True, "faces_in": len(f)}
        state, _ = _run(raw, [s for s in _steps(cfg, len(f)) if s[0] == "decimate"], cfg, record)
    parts, _ = face_components(state.f)
    record.update(parts=parts, faces_out=len(state.f), seconds=round(time.perf_counter() - t0, 2))
    if parts > 1:
        warnings.warn(f"the mesh keeps {parts} separate parts (each at least {cfg.min_component_fraction:.0%} "
                      f"of the largest one's area)", RuntimeWarning, stacklevel=2)
    return _mesh(state.v, state.f, state.c), record
