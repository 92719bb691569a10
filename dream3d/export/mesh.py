"""Mesh clean-up, decimation and GLB / OBJ / PLY files, through trimesh.

Orientation: dream3d's world is +Y up with the front facing +Z, which is glTF's
convention, so vertices are written unchanged in every format.

UV convention (that of OBJ and trimesh): u runs left to right and v bottom to
top, so `uv = (0, 1)` is texel `texture[0, 0]` (top-left) and `uv = (1, 0)` is
`texture[H-1, W-1]`; see `sample_texture`. The GLB writer flips v as glTF wants.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from trimesh.exchange.gltf import export_glb
from trimesh.exchange.obj import export_obj
from trimesh.exchange.ply import export_ply

from dream3d.atomic import write_bytes_atomic
from dream3d.types import MESH_FORMATS, Mesh

_GL_ARRAY_BUFFER = 34962
_GL_ELEMENT_ARRAY_BUFFER = 34963


# ---------------------------------------------------------------- conversions
def _np(x: torch.Tensor | np.ndarray | None, dtype) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _arrays(mesh: Mesh):
    """(vertices [V,3] f64, faces [F,3] i64, colors [V,3] | None, uv [V,2] | None, texture [H,W,3] | None)."""
    uv, tex = _np(mesh.uv, np.float64), _np(mesh.texture, np.float32)
    if (uv is None) != (tex is None):
        uv = tex = None  # a UV layout without its texture (or the reverse) carries no colour
    return _np(mesh.vertices, np.float64), _np(mesh.faces, np.int64), _np(mesh.vertex_colors, np.float32), uv, tex


def _mesh(v: np.ndarray, f: np.ndarray, colors=None, uv=None, texture=None) -> Mesh:
    t = lambda a, dt: None if a is None else torch.as_tensor(np.ascontiguousarray(a), dtype=dt)  # noqa: E731
    return Mesh(t(v, torch.float32), t(f, torch.long), t(colors, torch.float32), t(uv, torch.float32), t(texture, torch.float32))


def validate_mesh(mesh: Mesh) -> None:
    """Raise ValueError when the mesh cannot be written: empty, non-finite, bad indices or shapes."""
    v, f, c, uv, tex = _arrays(mesh)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"mesh must have vertices [V, 3] and faces [F, 3], got {v.shape} and {f.shape}")
    if len(v) == 0 or len(f) == 0:
        raise ValueError("mesh is empty (no vertices or no faces)")
    if not np.isfinite(v).all():
        raise ValueError(f"mesh has {int((~np.isfinite(v)).any(1).sum())} vertices with NaN or infinite coordinates")
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"face indices must lie in [0, {len(v)}), got [{f.min()}, {f.max()}]")
    for name, arr, cols in (("vertex_colors", c, 3), ("uv", uv, 2)):
        if arr is not None and (arr.shape != (len(v), cols) or not np.isfinite(arr).all()):
            raise ValueError(f"{name} must be finite with shape [{len(v)}, {cols}], got {arr.shape}")
    if tex is not None and (tex.ndim != 3 or tex.shape[2] != 3 or not np.isfinite(tex).all()):
        raise ValueError(f"texture must be finite with shape [H, W, 3], got {tex.shape}")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def sample_texture(uv: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """Bilinear texture look-up. uv [N, 2] (v up, see module docstring), texture [H, W, C] -> [N, C]."""
    h, w = texture.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0, w - 1)
    y = np.clip((1.0 - uv[:, 1]) * h - 0.5, 0, h - 1)  # image rows run downwards
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx
    bottom = texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


# ---------------------------------------------------------------- clean
def _face_areas(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    return 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)


def _drop_unreferenced(v, f, *per_vertex):
    used = np.zeros(len(v), dtype=bool)
    used[f.ravel()] = True
    remap = np.cumsum(used) - 1
    return (v[used], remap[f], *[None if a is None else a[used] for a in per_vertex])


def _weld_ids(v: np.ndarray, tolerance: float) -> np.ndarray:
    """[V] an id shared by vertices closer than about `tolerance` (grid rounding)."""
    _, ids = np.unique(np.round(v / tolerance).astype(np.int64), axis=0, return_inverse=True)
    return ids.ravel()


def clean(mesh: Mesh, min_component_fraction: float = 0.05, merge_tolerance: float = 1e-6) -> Mesh:
    """Merge coincident vertices, drop degenerate faces, and remove disconnected pieces
    whose surface area is below `min_component_fraction` of the largest piece's.

    Vertices are merged only where position, colour (to 1/255) and UV all agree, so
    colour and UV seams survive; connectivity ignores those seams."""
    validate_mesh(mesh)
    v, f, c, uv, tex = _arrays(mesh)
    scale = max(float(np.ptp(v, axis=0).max()), 1e-12)
    key = [np.round(v / (merge_tolerance * scale)).astype(np.int64)]
    if c is not None:
        key.append(_to_uint8(c).astype(np.int64))
    if uv is not None:
        key.append(np.round(uv * 1e6).astype(np.int64))
    _, first, inverse = np.unique(np.concatenate(key, axis=1), axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    v, f = v[first], inverse[f]
    c = None if c is None else c[first]
    uv = None if uv is None else uv[first]

    # Degenerate faces: repeated corners or no area.
    areas = _face_areas(v, f)
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2]) & (areas > 1e-14 * scale**2)
    f, areas = f[ok], areas[ok]
    if len(f) == 0:
        raise ValueError("mesh has no faces with area left after cleaning")

    # Connected pieces over position-welded vertices (a colour seam is not a cut).
    weld = _weld_ids(v, merge_tolerance * scale)
    fw = weld[f]
    n = int(weld.max()) + 1
    rows = np.concatenate([fw[:, 0], fw[:, 1], fw[:, 2]])
    cols = np.concatenate([fw[:, 1], fw[:, 2], fw[:, 0]])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    face_label = label[fw[:, 0]]
    piece_area = np.bincount(face_label, weights=areas)
    keep = piece_area[face_label] >= min_component_fraction * piece_area.max()
    v, f, c, uv = _drop_unreferenced(v, f[keep], c, uv)
    return _mesh(v, f, c, uv, tex)


# ---------------------------------------------------------------- decimate
def _quadric(v: np.ndarray, f: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    simple = trimesh.Trimesh(v, f, process=False).simplify_quadric_decimation(face_count=target_faces)
    return np.asarray(simple.vertices, np.float64), np.asarray(simple.faces, np.int64)


def _cluster_once(v, f, c, cell: float):
    origin = v.min(axis=0)
    _, ids = np.unique(np.floor((v - origin) / cell).astype(np.int64), axis=0, return_inverse=True)
    ids = ids.ravel()
    nf = ids[f]
    nf = nf[(nf[:, 0] != nf[:, 1]) & (nf[:, 1] != nf[:, 2]) & (nf[:, 0] != nf[:, 2])]
    # Several fine faces collapse onto one coarse face: keep one (either winding is the same face).
    _, unique_rows = np.unique(np.sort(nf, axis=1), axis=0, return_index=True)
    nf = nf[np.sort(unique_rows)]
    count = np.bincount(ids)[:, None]
    nv = np.stack([np.bincount(ids, weights=v[:, k]) for k in range(3)], 1) / count
    nc = None if c is None else np.stack([np.bincount(ids, weights=c[:, k]) for k in range(3)], 1) / count
    return nv, nf, nc


def _clustering(v, f, c, target_faces: int):
    """Vertex clustering on a grid, the cell size bisected until at most `target_faces` remain:
    coarser than quadric decimation, but needs only numpy."""
    diag = float(np.linalg.norm(np.ptp(v, axis=0)))
    lo, hi = diag * 1e-6, diag  # hi leaves (almost) nothing
    best = _cluster_once(v, f, c, hi)
    for _ in range(24):
        mid = np.sqrt(lo * hi)
        out = _cluster_once(v, f, c, mid)
        if len(out[1]) <= target_faces:
            hi, best = mid, out
        else:
            lo = mid
        if hi / lo < 1.01:
            break
    nv, nf, nc = best
    nv, nf, nc = _drop_unreferenced(nv, nf, nc)
    return nv, nf, nc


def quadric_available() -> bool:
    """True when trimesh's quadric decimation can run (it needs `fast_simplification`)."""
    try:
        import fast_simplification  # noqa: F401
    except ImportError:
        return False
    return True


def decimate(mesh: Mesh, target_faces: int, method: str = "auto") -> Mesh:
    """Reduce the mesh to at most about `target_faces` faces.

    method: "quadric" (trimesh + fast_simplification), "clustering" (numpy only) or
    "auto" (quadric when installed, else clustering with a warning). Vertex colours are
    re-sampled from the nearest original vertex (quadric) or averaged per cell (clustering).
    A textured mesh is refused: its UV layout would not survive; decimate before unwrapping."""
    validate_mesh(mesh)
    if target_faces < 4:
        raise ValueError(f"target_faces must be at least 4, got {target_faces}")
    v, f, c, uv, _ = _arrays(mesh)
    if uv is not None:
        raise ValueError("cannot decimate a textured mesh (the UV layout would break): decimate before UV unwrapping")
    if len(f) <= target_faces:
        return mesh
    if method == "auto":
        method = "quadric" if quadric_available() else "clustering"
        if method == "clustering":
            warnings.warn(
                "fast_simplification is not installed, so quadric decimation is unavailable; "
                "using coarser vertex clustering (pip install fast-simplification)",
                RuntimeWarning,
                stacklevel=2,
            )
    if method == "quadric":
        nv, nf = _quadric(v, f, target_faces)
        nc = None
        if c is not None:
            _, nearest = cKDTree(v).query(nv)
            nc = c[nearest]
    elif method == "clustering":
        nv, nf, nc = _clustering(v, f, c, target_faces)
    else:
        raise ValueError(f"unknown decimation method {method!r} (quadric, clustering, auto)")
    if len(nf) == 0:
        raise ValueError(f"decimation to {target_faces} faces left no faces")
    return _mesh(nv, nf, nc)


# ---------------------------------------------------------------- writing
def _trimesh(v, f, colors=None, uv=None, texture=None, name: str = "material") -> trimesh.Trimesh:
    if uv is not None:
        material = trimesh.visual.material.PBRMaterial(
            name=name, baseColorTexture=Image.fromarray(_to_uint8(texture)), metallicFactor=0.0, roughnessFactor=1.0
        )
        visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
        return trimesh.Trimesh(v, f, visual=visual, process=False)
    rgba = None if colors is None else np.concatenate([_to_uint8(colors), np.full((len(v), 1), 255, np.uint8)], 1)
    return trimesh.Trimesh(v, f, vertex_colors=rgba, process=False)


def _gltf_tidy(tree: dict) -> None:
    """Give untextured primitives a matte material (glTF's default one is fully metallic,
    which most viewers show nearly black) and tag vertex / index buffer views."""
    materials = tree.setdefault("materials", [])
    for mesh in tree.get("meshes", []):
        for prim in mesh["primitives"]:
            if "material" not in prim:
                materials.append({"name": "vertex_color", "pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 1.0}})
                prim["material"] = len(materials) - 1
            views = tree.get("bufferViews", [])
            for acc in prim["attributes"].values():
                views[tree["accessors"][acc]["bufferView"]]["target"] = _GL_ARRAY_BUFFER
            views[tree["accessors"][prim["indices"]]["bufferView"]]["target"] = _GL_ELEMENT_ARRAY_BUFFER
    if not materials:
        del tree["materials"]


def _png(texture: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(texture)).save(buf, format="PNG")
    return buf.getvalue()


def _obj_files(path: Path, v, f, c, uv, tex) -> dict[Path, bytes]:
    """mesh.obj with vertex colours as `v x y z r g b`; a textured mesh adds mesh.mtl
    (`map_Kd`, white Kd so viewers that multiply Kd by the texture keep its colour) and
    mesh.png. A vertex-coloured OBJ has no material on purpose: readers such as
    trimesh replace vertex colours by a referenced material."""
    name = path.stem
    text = export_obj(_trimesh(v, f, c, uv, tex, name=name), include_normals=True, include_texture=uv is not None,
                      mtl_name=f"{name}.mtl", header=None)
    files: dict[Path, bytes] = {}
    if uv is not None:
        png = path.with_suffix(".png")
        files[png] = _png(tex)
        mtl = [f"newmtl {name}", "Ka 0 0 0", "Kd 1 1 1", "Ks 0 0 0", "Ns 1", "illum 1", f"map_Kd {png.name}"]
        files[path.with_suffix(".mtl")] = ("\n".join(mtl) + "\n").encode()
    files[path] = (text + "\n").encode()  # last: the .obj references the others
    return files


def write_mesh(mesh: Mesh, path: str | Path, format: str | None = None) -> list[Path]:
    """Write `mesh` as glb, obj (+ mtl, + png when textured) or ply; the format comes from
    the suffix unless given. Files are replaced atomically: if anything fails, earlier
    files stay as they were. Returns the written paths (the main file last)."""
    return write_bytes_atomic(mesh_files(mesh, path, format), what=f"writing {Path(path).name}")


def mesh_files(mesh: Mesh, path: str | Path, format: str | None = None) -> dict[Path, bytes]:
    """The files `write_mesh` writes, {path: contents} in the order to move them into place
    (the main file last), without writing anything."""
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in MESH_FORMATS:
        raise ValueError(f"unknown mesh format {fmt!r}; choose one of {', '.join(MESH_FORMATS)}")
    validate_mesh(mesh)
    v, f, c, uv, tex = _arrays(mesh)
    if fmt == "glb":
        # glTF multiplies COLOR_0 by the base-colour texture, so a textured mesh carries the texture only.
        tm = _trimesh(v, f, None if uv is not None else c, uv, tex, name=path.stem)
        files = {path: export_glb(tm, include_normals=True, tree_postprocessor=_gltf_tidy)}
    elif fmt == "obj":
        files = _obj_files(path, v, f, c, uv, tex)
    else:
        # PLY viewers read vertex colours, not textures: sample the texture at the vertices.
        if c is None and uv is not None:
            c = sample_texture(uv, tex)
        files = {path: export_ply(_trimesh(v, f, c), encoding="binary", vertex_normal=True)}
    return files
