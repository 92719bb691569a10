"""UV unwrapping, texture baking and textured exports."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from scipy.ndimage import distance_transform_cdt
from scipy.spatial import cKDTree

from dream3d.cameras import CameraConfig, turntable
from dream3d.errors import UserError
from dream3d.export import depth_to_rgb, export_representation, normal_to_rgb, sample_texture, write_mesh
from dream3d.export.run_export import render_views
from dream3d.export import texture as texture_mod
from dream3d.export.texture import bake_texture, dilate, extend_to_border, rasterize_uv, unwrap
from dream3d.representations.base import Representation
from dream3d.types import Mesh, RenderOutput

REPO = Path(__file__).resolve().parents[1]
SIZE = 128  # texture side in these tests: small keeps them fast


# ------------------------------------------------------------------ fixtures
def field(p: np.ndarray) -> np.ndarray:
    """A smooth colour field over space, [N, 3] -> [N, 3] in [0.1, 0.9]."""
    return 0.5 + 0.4 * np.stack([np.sin(3.0 * p[:, 0]), np.tanh(p[:, 1]), np.cos(2.0 * p[:, 2])], 1)


def field_torch(p: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(field(p.double().numpy())).float()


def sphere(subdivisions: int = 3, coloured: bool = True) -> Mesh:
    s = trimesh.creation.icosphere(subdivisions=subdivisions)
    colours = torch.tensor(field(s.vertices), dtype=torch.float32) if coloured else None
    return Mesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces), colours)


@pytest.fixture(scope="module")
def unwrapped() -> tuple[Mesh, Mesh]:
    mesh = sphere()
    return mesh, unwrap(mesh, resolution=SIZE)


def areas(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """[F] triangle areas; works for 2D (UV) or 3D corners."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    if v.shape[1] == 2:
        return 0.5 * np.abs((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0])
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def random_surface_points(mesh: Mesh, n: int, seed: int = 0):
    """n random points inside random triangles: (uv [n, 2], xyz [n, 3])."""
    rng = np.random.default_rng(seed)
    f = mesh.faces.numpy()[rng.integers(0, len(mesh.faces), n)]
    b = rng.dirichlet([1.0, 1.0, 1.0], n)[..., None]
    uv = (b * mesh.uv.double().numpy()[f]).sum(1)
    xyz = (b * mesh.vertices.double().numpy()[f]).sum(1)
    return uv, xyz


# ------------------------------------------------------------------ unwrap
def test_unwrap_keeps_geometry_and_colours(unwrapped):
    mesh, out = unwrapped
    v0, f0, c0 = mesh.vertices.numpy(), mesh.faces.numpy(), mesh.vertex_colors.numpy()
    v1, f1 = out.vertices.numpy(), out.faces.numpy()
    assert len(f1) == len(f0) and len(v1) > len(v0)  # seams split vertices
    area0, area1 = areas(v0.astype(np.float64), f0).sum(), areas(v1.astype(np.float64), f1).sum()
    np.testing.assert_allclose(area1, area0, rtol=1e-6)
    # Every new vertex is an old one (position and colour), and the faces are the old faces.
    dist, source = cKDTree(v0).query(v1)
    assert dist.max() < 1e-6
    np.testing.assert_array_equal(out.vertex_colors.numpy(), c0[source])
    old = {tuple(sorted(t)) for t in f0.tolist()}
    new = {tuple(sorted(t)) for t in source[f1].tolist()}
    assert new == old
    # Same orientation: face normals agree.
    n0 = np.cross(v0[f0[:, 1]] - v0[f0[:, 0]], v0[f0[:, 2]] - v0[f0[:, 0]])
    order = {tuple(sorted(t)): i for i, t in enumerate(f0.tolist())}
    match = np.array([order[tuple(sorted(t))] for t in source[f1].tolist()])
    n1 = np.cross(v1[f1[:, 1]] - v1[f1[:, 0]], v1[f1[:, 2]] - v1[f1[:, 0]])
    assert ((n0[match] * n1).sum(1) > 0).all()


def test_unwrap_gives_non_overlapping_uvs_in_the_unit_square(unwrapped):
    _, out = unwrapped
    uv, f = out.uv.double().numpy(), out.faces.numpy()
    assert uv.shape == (len(out.vertices), 2) and np.isfinite(uv).all()
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    uv_area = areas(uv, f)
    assert (uv_area > 0).all(), "every face needs UV area"
    # Overlapping charts would cover fewer texels than their summed area.
    size = 512
    face_id, _ = rasterize_uv(uv, f, size)
    covered = (face_id >= 0).sum()
    assert abs(covered - uv_area.sum() * size * size) < 0.02 * covered
    assert len(np.unique(face_id[face_id >= 0])) > 0.99 * len(f)


# ------------------------------------------------------------------ rasterise / dilate
def slow_rasterize(uv: np.ndarray, faces: np.ndarray, size: int):
    """Reference: every texel centre against every triangle, with area-ratio barycentrics."""
    def cross(a, b):
        return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]

    corners = uv[faces]  # [F, 3, 2]
    total = cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    hits = {}
    for row in range(size):
        for col in range(size):
            p = np.array([(col + 0.5) / size, 1.0 - (row + 0.5) / size])
            b0 = cross(corners[:, 1] - p, corners[:, 2] - p) / total
            b1 = cross(corners[:, 2] - p, corners[:, 0] - p) / total
            b = np.stack([b0, b1, 1.0 - b0 - b1], 1)
            inside = np.nonzero((b >= 0).all(1))[0]
            hits[row, col] = [(int(i), b[i]) for i in inside]
    return hits


def grid_triangles(n: int, seed: int):
    """A jittered n x n grid over [0.05, 0.95]^2 cut into triangles, some wound clockwise."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.05, 0.95, n + 1)
    uv = np.stack(np.meshgrid(t, t, indexing="xy"), -1).reshape(-1, 2)
    inner = (uv > 0.06).all(1) & (uv < 0.94).all(1)
    uv[inner] += rng.uniform(-0.3, 0.3, (inner.sum(), 2)) * (0.9 / n)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    flip = rng.random(len(faces)) < 0.3
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return uv, faces


def test_rasterize_matches_slow_reference(monkeypatch):
    uv, faces = grid_triangles(5, seed=1)
    size = 24
    hits = slow_rasterize(uv, faces, size)
    for budget in (1 << 21, 37):  # one chunk, and many chunks
        monkeypatch.setattr(texture_mod, "RASTER_BUDGET", budget)
        face_id, bary = rasterize_uv(uv, faces, size)
        for (row, col), found in hits.items():
            if not found:
                assert face_id[row, col] == -1
                continue
            assert face_id[row, col] in [i for i, _ in found]
            ref = dict(found)[int(face_id[row, col])]
            np.testing.assert_allclose(bary[row, col], ref, atol=1e-9)
        covered = face_id >= 0
        assert covered.sum() == sum(1 for f in hits.values() if f)
        # Barycentrics put the texel centre back where it is.
        rows, cols = np.nonzero(covered)
        centre = (bary[covered][..., None] * uv[faces[face_id[covered]]]).sum(1)
        np.testing.assert_allclose(centre, np.stack([(cols + 0.5) / size, 1 - (rows + 0.5) / size], 1), atol=1e-9)


def test_extend_to_border_extrapolates_the_neighbouring_triangle():
    uv = np.array([[0.2, 0.2], [0.8, 0.2], [0.2, 0.8]])
    faces = np.array([[0, 1, 2]])
    size = 16
    face_id, bary = rasterize_uv(uv, faces, size)
    ext_id, ext_bary = extend_to_border(uv, faces, face_id, bary)
    ring = (ext_id >= 0) & (face_id < 0)
    dist = distance_transform_cdt(face_id < 0, metric="chessboard")
    assert ring.any() and (dist[ring] == 1).all()
    assert ((dist == 1) == ring).all()  # a single triangle: every ring texel is reachable
    # Unclamped barycentrics still reconstruct the texel centre (outside the triangle).
    rows, cols = np.nonzero(ring)
    centre = (ext_bary[ring][..., None] * uv[faces[ext_id[ring]]]).sum(1)
    np.testing.assert_allclose(centre, np.stack([(cols + 0.5) / size, 1 - (rows + 0.5) / size], 1), atol=1e-9)
    assert (ext_bary[ring].min(1) < 0).all()
    np.testing.assert_array_equal(ext_id[face_id >= 0], face_id[face_id >= 0])


def test_dilate_by_hand():
    tex = np.zeros((5, 5, 3), np.float32)
    filled = np.zeros((5, 5), bool)
    a, b = np.array([0.2, 0.4, 0.6]), np.array([1.0, 0.0, 0.5])
    tex[2, 0], tex[2, 4] = a, b
    filled[2, 0] = filled[2, 4] = True
    tex[0, 0] = 7.0  # an unfilled texel's value must be ignored
    one, mask1 = dilate(tex, filled, 1)
    assert mask1.sum() == 2 + 5 + 5 and not mask1[:, 2].any()
    np.testing.assert_allclose(one[1:4, 1], np.tile(a, (3, 1)), rtol=1e-6)
    np.testing.assert_allclose(one[1:4, 3], np.tile(b, (3, 1)), rtol=1e-6)
    assert (one[0, 0] == 0).all() and (one[:, 2] == 0).all()
    two, mask2 = dilate(tex, filled, 2)
    # (2, 2) sees three texels of each colour; (0, 2) sees one of each ((1, 1) and (1, 3)).
    np.testing.assert_allclose(two[2, 2], (a + b) / 2, rtol=1e-6)
    np.testing.assert_allclose(two[0, 2], (a + b) / 2, rtol=1e-6)
    np.testing.assert_allclose(two[0, 0], a, rtol=1e-6)  # from (1, 0) and (1, 1), both a
    assert mask2.all()
    assert not filled[0, 1] and tex[0, 0, 0] == 7.0  # inputs untouched


# ------------------------------------------------------------------ bake
def test_bake_reproduces_an_analytic_field(unwrapped):
    _, mesh = unwrapped
    tex = bake_texture(mesh, field_torch, size=SIZE, padding=4)
    assert tex.shape == (SIZE, SIZE, 3) and tex.dtype == np.float32
    uv = mesh.uv.double().numpy()
    at_vertices = sample_texture(uv, tex)
    err = np.abs(at_vertices - field(mesh.vertices.double().numpy()))
    assert err.max() < 0.03, f"vertex colours off by {err.max():.3f} (seams bleed?)"
    assert err.mean() < 0.003
    uv_in, xyz_in = random_surface_points(mesh, 4000)
    err_in = np.abs(sample_texture(uv_in, tex) - field(xyz_in))
    assert err_in.max() < 0.02 and err_in.mean() < 0.002


def test_bake_without_field_interpolates_vertex_colours(unwrapped):
    _, mesh = unwrapped
    tex = bake_texture(mesh, None, size=SIZE)
    uv_in, _ = random_surface_points(mesh, 4000, seed=1)
    # What a viewer shows for vertex colours: their barycentric interpolation.
    rng = np.random.default_rng(1)
    f = mesh.faces.numpy()[rng.integers(0, len(mesh.faces), 4000)]
    b = rng.dirichlet([1.0, 1.0, 1.0], 4000)[..., None]
    want = (b * mesh.vertex_colors.double().numpy()[f]).sum(1)
    assert np.abs(sample_texture(uv_in, tex) - want).max() < 0.02
    with pytest.raises(ValueError, match="nothing to bake"):
        bake_texture(Mesh(mesh.vertices, mesh.faces, None, mesh.uv), None, size=SIZE)


def test_bake_samples_inside_along_the_normal(unwrapped):
    _, mesh = unwrapped
    seen = {}

    def recorder(key):
        def fn(p):
            seen[key] = p.clone()
            return torch.full_like(p, 0.5)
        return fn

    bake_texture(mesh, recorder(0.0), size=32, padding=0)
    bake_texture(mesh, recorder(0.05), size=32, padding=0, inset=0.05)
    r0, r1 = seen[0.0].norm(dim=1), seen[0.05].norm(dim=1)
    assert len(r0) == len(r1) > 0
    np.testing.assert_allclose((r0 - r1).numpy(), 0.05, atol=2e-3)  # on a sphere the normal is radial


def test_padding_fills_around_charts_and_nothing_further(unwrapped):
    _, mesh = unwrapped
    padding = 3
    tex = bake_texture(mesh, field_torch, size=SIZE, padding=padding)  # the field is never black
    face_id, _ = rasterize_uv(mesh.uv.double().numpy(), mesh.faces.numpy(), SIZE)
    dist = distance_transform_cdt(face_id < 0, metric="chessboard")  # texels from the nearest covered one
    black = (tex == 0).all(-1)
    assert not black[dist <= padding].any(), "texels in or near the charts stayed black"
    assert black[dist > padding + 1].all(), "colour spread further than the padding"
    assert (tex[dist <= padding] >= 0.05).all()


def test_bad_albedo_fn_is_reported(unwrapped):
    _, mesh = unwrapped
    with pytest.raises(ValueError, match="non-finite"):
        bake_texture(mesh, lambda p: torch.full_like(p, float("nan")), size=32)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        bake_texture(mesh, lambda p: p[:, :2], size=32)
    with pytest.raises(ValueError, match="unwrap"):
        bake_texture(sphere(1), field_torch, size=32)


# ------------------------------------------------------------------ files
def _validator() -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (REPO / "tools" / "node" / "node_modules" / "gltf-validator").exists():
        pytest.skip("gltf-validator missing: npm install --prefix tools/node gltf-validator")
    return [node, str(REPO / "tools" / "validate_gltf.mjs")]


def _textured_geometry(path: Path) -> trimesh.Trimesh:
    loaded = trimesh.load(path, process=False)
    if isinstance(loaded, trimesh.Scene):
        (loaded,) = loaded.geometry.values()
    return loaded


def _texture_image(geom: trimesh.Trimesh) -> np.ndarray:
    material = geom.visual.material
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    assert image is not None, "no texture image was read back"
    return np.asarray(image.convert("RGB"), np.float64) / 255.0


@pytest.fixture(scope="module")
def baked(unwrapped) -> Mesh:
    _, mesh = unwrapped
    tex = bake_texture(mesh, field_torch, size=SIZE)
    return Mesh(mesh.vertices, mesh.faces, mesh.vertex_colors, mesh.uv, torch.from_numpy(tex))


def test_textured_glb_passes_the_validator(tmp_path, baked):
    cmd = _validator()
    write_mesh(baked, tmp_path / "mesh.glb")
    proc = subprocess.run([*cmd, str(tmp_path / "mesh.glb")], capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stdout)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]
    assert proc.returncode == 0
    info = report["info"]
    assert info.get("hasTextures", True) and info.get("resources")
    images = [r for r in info["resources"] if r.get("pointer", "").startswith("/images/")]
    assert images and images[0]["image"]["width"] == SIZE and images[0]["image"]["height"] == SIZE


@pytest.mark.parametrize("fmt", ["glb", "obj"])
def test_textured_mesh_reloads_with_its_texture(tmp_path, baked, fmt):
    written = write_mesh(baked, tmp_path / f"mesh.{fmt}")
    if fmt == "obj":
        assert {p.name for p in written} == {"mesh.obj", "mesh.mtl", "mesh.png"}
    geom = _textured_geometry(tmp_path / f"mesh.{fmt}")
    image = _texture_image(geom)
    assert image.shape == (SIZE, SIZE, 3)
    # Colours read back through the file's own UVs (v flipped in glTF) still match the field.
    colours = sample_texture(np.asarray(geom.visual.uv, np.float64), image)
    err = np.abs(colours - field(np.asarray(geom.vertices, np.float64)))
    assert err.max() < 0.04 and err.mean() < 0.006


# ------------------------------------------------------------------ export_representation
class AnalyticSphere(Representation):
    """A ray-traced sphere coloured by `field`, with an icosphere mesh and an albedo field."""

    def __init__(self, radius: float = 0.6, fail_albedo: bool = False):
        super().__init__()
        self.register_buffer("radius", torch.tensor(radius))
        self.fail_albedo = fail_albedo

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        if self.fail_albedo:
            raise RuntimeError("albedo network exploded")
        return field_torch(points)

    def render(self, cams, background, shading="diffuse", light_dir=None):
        o, d = cams.rays()  # [B, H, W, 3]
        b = (o * d).sum(-1)
        disc = b**2 - ((o * o).sum(-1) - self.radius**2)
        hit = disc > 0
        t = torch.where(hit, -b - disc.clamp_min(0).sqrt(), torch.zeros_like(b))
        x = o + t[..., None] * d
        normal = torch.where(hit[..., None], x / self.radius, torch.zeros_like(o))
        colour = field_torch(x.reshape(-1, 3)).reshape(x.shape)
        if shading == "diffuse":
            colour = colour * (0.3 + 0.7 * (normal * light_dir[:, None, None, :]).sum(-1, keepdim=True).clamp_min(0))
        alpha = hit[..., None].float()
        rgb = colour * alpha + background[:, None, None, :] * (1 - alpha)
        return RenderOutput(rgb=rgb, alpha=alpha, depth=t[..., None] * alpha, normal=normal)

    def extract_mesh(self, resolution):
        s = trimesh.creation.icosphere(subdivisions=3, radius=float(self.radius))
        return Mesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces),
                    torch.tensor(field(s.vertices), dtype=torch.float32))


def run_export(rep, out_dir, **overrides):
    kw = dict(mesh=True, video=False, formats=["glb", "obj", "ply"], mesh_resolution=32, video_resolution=24,
              n_frames=4, background=0.7, camera_cfg=CameraConfig(), decimate_faces=None, texture_size=64)
    kw.update(overrides)
    return export_representation(rep, out_dir, **kw)


def test_export_writes_textured_glb_obj_and_vertex_coloured_ply(tmp_path, recwarn):
    files = run_export(AnalyticSphere(), tmp_path)
    assert set(files) == {"glb", "obj", "mtl", "png", "ply"}
    assert not [w for w in recwarn if "colours" in str(w.message) or "texture" in str(w.message)]
    assert Image.open(files["png"]).size == (64, 64)
    geom = _textured_geometry(files["glb"])
    assert _texture_image(geom).shape == (64, 64, 3)
    # The texture (baked through the albedo field, slightly inside the surface) shows the field.
    colours = sample_texture(np.asarray(geom.visual.uv, np.float64), _texture_image(geom))
    unit = np.asarray(geom.vertices) / np.linalg.norm(geom.vertices, axis=1, keepdims=True)
    assert np.abs(colours - field(0.6 * unit)).mean() < 0.02
    ply = trimesh.load(files["ply"], process=False)
    assert ply.visual.kind == "vertex"
    ply_colours = ply.visual.vertex_colors[:, :3] / 255.0
    # smoothing moved the vertices; their colours are read off the extracted surface, exact up to
    # the field's bend across one face of this coarse sphere
    np.testing.assert_allclose(ply_colours, field(np.asarray(ply.vertices)), atol=0.01)


def test_failed_bake_writes_the_untextured_mesh_and_says_so(tmp_path):
    (tmp_path / "mesh.png").write_bytes(b"stale")  # an earlier textured export is left alone, not referenced
    with pytest.warns(RuntimeWarning, match="texture baking failed.*albedo network exploded.*untextured"):
        files = run_export(AnalyticSphere(fail_albedo=True), tmp_path)
    assert set(files) == {"glb", "obj", "ply"}
    geom = _textured_geometry(files["glb"])
    assert not hasattr(geom.visual, "uv") or geom.visual.uv is None
    assert "mtllib" not in files["obj"].read_text()
    ply = trimesh.load(files["ply"], process=False)
    assert ply.visual.kind == "vertex"


def test_texture_size_zero_keeps_vertex_colours_and_bad_sizes_are_refused(tmp_path):
    files = run_export(AnalyticSphere(), tmp_path, texture_size=0)
    assert set(files) == {"glb", "obj", "ply"}
    with pytest.raises(UserError, match="texture size"):
        run_export(AnalyticSphere(), tmp_path, texture_size=8)


@pytest.mark.parametrize("panels", [["rgb", "normal", "depth"], ["depth"]])
def test_video_panels_side_by_side(tmp_path, panels):
    rep, cfg = AnalyticSphere(), CameraConfig()
    files = run_export(rep, tmp_path, mesh=False, video=True, video_panels=panels, camera_cfg=cfg)
    reader = imageio.get_reader(files["mp4"], format="FFMPEG")
    video = np.stack(list(reader.iter_data())) / 255.0
    reader.close()
    assert video.shape == (4, 24, 24 * len(panels), 3)
    # Each panel is the matching picture of the representation's own renders.
    rgb, alpha, normal, depth = render_views(rep, turntable(cfg, 4, 24, 24), 0.7)
    want = {"rgb": rgb.numpy(), "normal": normal_to_rgb(normal, alpha, 0.7), "depth": depth_to_rgb(depth, alpha, 0.7)}
    for k, name in enumerate(panels):
        got = video[:, :, 24 * k : 24 * (k + 1)]
        assert np.abs(got - want[name]).mean() < 0.03, name
    grey = want["depth"][0, 12, :, 0]
    assert grey[12] > grey[9] + 0.03 and grey[0] == pytest.approx(0.7)  # nearer is brighter; background
    with pytest.raises(UserError, match="video panel"):
        run_export(AnalyticSphere(), tmp_path, video=True, video_panels=["rgb", "albedo"])


def test_slivers_left_by_decimation_are_dropped_and_several_parts_are_reported(tmp_path, monkeypatch):
    import dream3d.export.cleanup as cleanup_module

    real = cleanup_module.decimate

    def decimate_with_sliver(mesh, target):
        out = real(mesh, target)
        n = out.vertices.shape[0]
        sliver_v = torch.tensor([[0.9, 0.9, 0.9], [0.91, 0.9, 0.9], [0.9, 0.91, 0.9]])
        sliver_f = torch.tensor([[n, n + 1, n + 2], [n, n + 2, n + 1]])  # two faces back to back, apart
        colours = torch.cat([out.vertex_colors, torch.full((3, 3), 0.5)])
        return Mesh(torch.cat([out.vertices, sliver_v]), torch.cat([out.faces, sliver_f]), colours)

    monkeypatch.setattr(cleanup_module, "decimate", decimate_with_sliver)
    files = run_export(AnalyticSphere(), tmp_path, formats=["ply"], decimate_faces=1000, texture_size=0)
    ply = trimesh.load(files["ply"], process=True)
    assert ply.body_count == 1 and ply.is_watertight

    class TwoSpheres(AnalyticSphere):
        def extract_mesh(self, resolution):
            a, b = trimesh.creation.icosphere(2, 0.3), trimesh.creation.icosphere(2, 0.3)
            b.apply_translation([0.7, 0, 0])
            both = trimesh.util.concatenate([a, b])
            v = torch.tensor(both.vertices, dtype=torch.float32)
            return Mesh(v, torch.tensor(both.faces), torch.full_like(v, 0.5))

    with pytest.warns(RuntimeWarning, match="keeps 2 separate parts"):
        run_export(TwoSpheres(), tmp_path / "two", formats=["ply"], texture_size=0)
