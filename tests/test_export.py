"""Exporters: mesh files (GLB / OBJ / PLY), clean-up, decimation, turntable videos."""
from __future__ import annotations

import contextlib
import io
import json
import struct
import subprocess
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from conftest import gltf_validator
import torch
import trimesh
from PIL import Image

from dream3d.cameras import CameraConfig
from dream3d.errors import UserError
from dream3d.export import (
    ExportIncomplete,
    clean,
    decimate,
    depth_to_rgb,
    export_representation,
    normal_to_rgb,
    quadric_available,
    sample_texture,
    side_by_side,
    write_mesh,
    write_turntable,
)
from dream3d.export import mesh as mesh_mod
from dream3d.export import video as video_mod
from dream3d.representations.base import Representation
from dream3d.types import Mesh, RenderOutput

REPO = Path(__file__).resolve().parents[1]
TOL = 1.0 / 255.0 + 1e-6
RED, GREEN, GREY = (0.9, 0.1, 0.1), (0.1, 0.8, 0.2), (0.5, 0.5, 0.5)


# ------------------------------------------------------------------ fixtures
def position_colour(v: np.ndarray) -> np.ndarray:
    return 0.5 + 0.45 * v / np.linalg.norm(v, axis=1, keepdims=True)


def icosphere(subdivisions: int = 3) -> Mesh:
    s = trimesh.creation.icosphere(subdivisions=subdivisions)
    return Mesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces), torch.tensor(position_colour(s.vertices), dtype=torch.float32))


def coloured_box() -> Mesh:
    """Unit cube with unshared corners: +Z face red (its front), +Y face green (its top), the rest grey."""
    b = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    b.unmerge_vertices()
    colours = np.tile(np.array(GREY), (len(b.vertices), 1))
    for normal, colour in (((0, 0, 1), RED), ((0, 1, 0), GREEN)):
        faces = b.faces[b.face_normals @ np.array(normal) > 0.99]
        colours[faces.ravel()] = colour
    return Mesh(torch.tensor(b.vertices, dtype=torch.float32), torch.tensor(b.faces), torch.tensor(colours, dtype=torch.float32))


def read_glb(path: Path) -> tuple[dict, bytes]:
    """The JSON and binary chunks of a GLB, parsed by hand (independent of trimesh)."""
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON"
    gltf = json.loads(data[20 : 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<I4s", data, 20 + json_len)
    assert bin_type == b"BIN\0"
    return gltf, data[28 + json_len : 28 + json_len + bin_len]


def accessor(gltf: dict, blob: bytes, index: int) -> np.ndarray:
    acc = gltf["accessors"][index]
    view = gltf["bufferViews"][acc["bufferView"]]
    assert "byteStride" not in view
    dtype = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    arr = np.frombuffer(blob, dtype, count=acc["count"] * width, offset=start).reshape(acc["count"], width)
    return arr / np.iinfo(dtype).max if acc.get("normalized") else arr.astype(np.float64)


def load_geometry(path: Path) -> tuple[trimesh.Trimesh, np.ndarray | None]:
    """trimesh's reading of a file and its vertex colours in [0, 1]."""
    loaded = trimesh.load(path, process=False)
    if isinstance(loaded, trimesh.Scene):
        (geom,) = loaded.geometry.values()
    else:
        geom = loaded
    if hasattr(geom.visual, "vertex_attributes") and "color" in geom.visual.vertex_attributes:
        colours = geom.visual.vertex_attributes["color"]  # GLB with a material: trimesh keeps COLOR_0 here
    elif geom.visual.kind == "vertex":
        colours = geom.visual.vertex_colors
    else:
        colours = None
    return geom, None if colours is None else np.asarray(colours)[:, :3] / 255.0


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp" in p.name]


# ------------------------------------------------------------------ mesh files
@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
@pytest.mark.parametrize("make", [icosphere, coloured_box])
def test_round_trip_keeps_geometry_and_colours(tmp_path, fmt, make):
    mesh = make()
    write_mesh(mesh, tmp_path / f"mesh.{fmt}")
    geom, colours = load_geometry(tmp_path / f"mesh.{fmt}")
    assert geom.vertices.shape == tuple(mesh.vertices.shape)
    np.testing.assert_array_equal(geom.faces, mesh.faces.numpy())
    np.testing.assert_allclose(geom.vertices, mesh.vertices.numpy(), atol=1e-6)
    assert colours is not None, f"{fmt}: vertex colours were lost"
    assert np.abs(colours - mesh.vertex_colors.numpy()).max() <= TOL


def test_glb_keeps_front_on_plus_z_and_top_on_plus_y(tmp_path):
    write_mesh(coloured_box(), tmp_path / "box.glb")
    gltf, blob = read_glb(tmp_path / "box.glb")
    for node in gltf["nodes"]:
        assert not {"matrix", "rotation", "scale", "translation"} & set(node), "no transform may move the mesh"
    (prim,) = gltf["meshes"][0]["primitives"]
    pos = accessor(gltf, blob, prim["attributes"]["POSITION"])
    col = accessor(gltf, blob, prim["attributes"]["COLOR_0"])[:, :3]
    nrm = accessor(gltf, blob, prim["attributes"]["NORMAL"])
    red = np.abs(col - RED).max(1) <= TOL
    green = np.abs(col - GREEN).max(1) <= TOL
    assert red.sum() == 6 and green.sum() == 6  # two triangles each, corners unshared
    np.testing.assert_allclose(pos[red, 2], 0.5, atol=1e-6)
    np.testing.assert_allclose(nrm[red], np.tile([0, 0, 1], (6, 1)), atol=1e-5)
    np.testing.assert_allclose(pos[green, 1], 0.5, atol=1e-6)
    # Winding: the red triangles turn counter-clockwise seen from +Z (glTF front faces).
    tri = pos[accessor(gltf, blob, prim["indices"]).astype(int).reshape(-1, 3)]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    front = np.all(np.abs(tri[:, :, 2] - 0.5) < 1e-6, axis=1)
    assert front.sum() == 2 and (normals[front, 2] > 0).all()


def test_glb_untextured_material_is_matte(tmp_path):
    write_mesh(icosphere(1), tmp_path / "m.glb")
    gltf, _ = read_glb(tmp_path / "m.glb")
    (prim,) = gltf["meshes"][0]["primitives"]
    pbr = gltf["materials"][prim["material"]]["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0.0  # glTF's default material is fully metallic (dark in viewers)


def textured_quad(h: int = 4, w: int = 6) -> tuple[Mesh, np.ndarray]:
    """A quad whose vertices sit on texel centres, and its random texture [h, w, 3]."""
    rng = np.random.default_rng(0)
    texture = rng.random((h, w, 3)).astype(np.float32)
    u = np.array([0.5 / w, 1 - 0.5 / w, 1 - 0.5 / w, 0.5 / w])
    v = np.array([0.5 / h, 0.5 / h, 1 - 0.5 / h, 1 - 0.5 / h])
    verts = np.stack([u - 0.5, v - 0.5, np.zeros(4)], 1)
    uv = np.stack([u, v], 1)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    return Mesh(torch.tensor(verts, dtype=torch.float32), torch.tensor(faces), None,
                torch.tensor(uv, dtype=torch.float32), torch.tensor(texture)), texture


def test_sample_texture_convention_by_hand():
    tex = np.arange(2 * 3 * 1, dtype=np.float64).reshape(2, 3, 1)  # rows 0: 0 1 2, row 1: 3 4 5
    uv = np.array([[0.5 / 3, 1 - 0.25], [2.5 / 3, 0.25], [1.0 / 3, 0.5]])
    # v = 0.75 is the top row's centre; v = 0.25 the bottom row's; (1/3, 0.5) sits between 4 texels.
    np.testing.assert_allclose(sample_texture(uv, tex)[:, 0], [0.0, 5.0, (0 + 1 + 3 + 4) / 4])


def test_textured_glb_samples_the_same_texels(tmp_path):
    mesh, texture = textured_quad()
    write_mesh(mesh, tmp_path / "t.glb")
    gltf, blob = read_glb(tmp_path / "t.glb")
    (prim,) = gltf["meshes"][0]["primitives"]
    assert "COLOR_0" not in prim["attributes"]  # glTF would multiply it with the texture
    mat = gltf["materials"][prim["material"]]
    image = gltf["images"][gltf["textures"][mat["pbrMetallicRoughness"]["baseColorTexture"]["index"]]["source"]]
    view = gltf["bufferViews"][image["bufferView"]]
    png = blob[view.get("byteOffset", 0) : view.get("byteOffset", 0) + view["byteLength"]]
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) / 255.0
    st = accessor(gltf, blob, prim["attributes"]["TEXCOORD_0"])  # glTF: origin top-left
    h, w = img.shape[:2]
    texels = img[np.floor(st[:, 1] * h).astype(int), np.floor(st[:, 0] * w).astype(int)]
    expected = sample_texture(mesh.uv.numpy(), texture)
    assert np.abs(texels - expected).max() <= TOL


def test_textured_obj_writes_mtl_and_png(tmp_path):
    mesh, texture = textured_quad()
    written = write_mesh(mesh, tmp_path / "t.obj")
    assert [p.name for p in written] == ["t.png", "t.mtl", "t.obj"]
    assert "map_Kd t.png" in (tmp_path / "t.mtl").read_text()
    geom = trimesh.load(tmp_path / "t.obj", process=False)
    np.testing.assert_allclose(geom.visual.uv, mesh.uv.numpy(), atol=1e-6)
    image = np.asarray(geom.visual.material.image.convert("RGB")) / 255.0
    assert np.abs(image - texture).max() <= TOL
    # PLY gets the texture baked into vertex colours.
    write_mesh(mesh, tmp_path / "t.ply")
    _, colours = load_geometry(tmp_path / "t.ply")
    assert np.abs(colours - sample_texture(mesh.uv.numpy(), texture)).max() <= TOL


def test_failed_writes_keep_earlier_files(tmp_path, monkeypatch):
    good = icosphere(1)
    for fmt in ("glb", "obj", "ply"):
        write_mesh(good, tmp_path / f"mesh.{fmt}")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    bad = Mesh(good.vertices.clone(), good.faces, good.vertex_colors)
    bad.vertices[3, 1] = float("nan")
    for fmt in ("glb", "obj", "ply"):
        with pytest.raises(ValueError, match="NaN"):
            write_mesh(bad, tmp_path / f"mesh.{fmt}")

    # A failure half-way through a group of files (the PNG of a textured OBJ) keeps the old OBJ.
    def broken_png(texture):
        raise OSError("disk full")

    monkeypatch.setattr(mesh_mod, "_png", broken_png)
    with pytest.raises(OSError, match="disk full"):
        write_mesh(textured_quad()[0], tmp_path / "mesh.obj")
    # A failure inside trimesh's encoder.
    monkeypatch.setattr(mesh_mod, "export_ply", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("encoder")))
    with pytest.raises(RuntimeError, match="encoder"):
        write_mesh(good, tmp_path / "mesh.ply")

    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before
    assert no_temp_files(tmp_path)


def test_write_mesh_rejects_bad_input(tmp_path):
    good = icosphere(0)
    with pytest.raises(ValueError, match="format"):
        write_mesh(good, tmp_path / "m.stl")
    with pytest.raises(ValueError, match="indices"):
        write_mesh(Mesh(good.vertices, good.faces + 100), tmp_path / "m.ply")
    with pytest.raises(ValueError, match="empty"):
        write_mesh(Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long)), tmp_path / "m.ply")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ clean / decimate
def test_clean_merges_vertices_and_drops_floaters():
    s = trimesh.creation.icosphere(subdivisions=3)
    small = trimesh.creation.icosphere(subdivisions=1, radius=0.1)
    small.vertices += [3.0, 0.0, 0.0]
    both = trimesh.util.concatenate([s, small])
    both.unmerge_vertices()  # every corner its own vertex, as some extractors give
    colours = position_colour(both.vertices - np.where(both.vertices[:, :1] > 2, [3.0, 0, 0], 0.0))
    mesh = Mesh(torch.tensor(both.vertices), torch.tensor(both.faces), torch.tensor(colours))
    out = clean(mesh, min_component_fraction=0.05)
    assert len(out.faces) == len(s.faces)  # the floater's area is 1% of the sphere's
    assert len(out.vertices) == len(s.vertices)  # corners merged back
    assert out.vertices[:, 0].max() < 1.01
    np.testing.assert_allclose(out.vertex_colors.numpy(), position_colour(out.vertices.numpy().astype(np.float64)), atol=1e-6)
    # Kept pieces are not dropped when above the threshold.
    assert len(clean(mesh, min_component_fraction=0.001).faces) == len(both.faces)


def test_clean_keeps_colour_seams_and_pieces_joined_by_them():
    box = coloured_box()
    out = clean(box)
    assert len(out.faces) == 12  # the six faces are one piece, though their corners differ in colour
    assert len(out.vertices) == 8 + 4 + 4  # grey corners merged; red and green faces keep their own
    centroids = out.vertices[out.faces].mean(1).numpy()
    front = out.vertex_colors[out.faces[centroids[:, 2] > 0.49]].reshape(-1, 3).numpy()
    assert np.abs(front - RED).max() < 1e-6


DECIMATORS = [
    pytest.param("quadric", marks=pytest.mark.skipif(not quadric_available(), reason="fast_simplification not installed")),
    "clustering",
]


@pytest.mark.parametrize("method", DECIMATORS)
def test_decimate_reduces_faces_and_keeps_colours(method):
    mesh = icosphere(4)  # 5120 faces
    out = decimate(mesh, 500, method=method)
    assert 150 <= len(out.faces) <= 500 * 1.05
    v = out.vertices.numpy().astype(np.float64)
    assert np.abs(np.linalg.norm(v, axis=1) - 1.0).max() < 0.1  # still the sphere
    err = np.abs(out.vertex_colors.numpy() - position_colour(v)).max()
    assert err < 0.08, f"colours drifted by {err}"
    assert out.faces.max() < len(out.vertices)


def test_decimate_auto_and_guards():
    mesh = icosphere(2)
    assert decimate(mesh, 10_000) is mesh  # already small enough
    expect = contextlib.nullcontext() if quadric_available() else pytest.warns(RuntimeWarning, match="fast_simplification")
    with expect:
        assert len(decimate(mesh, 100).faces) <= 105
    textured = Mesh(mesh.vertices, mesh.faces, None, torch.rand(len(mesh.vertices), 2), torch.rand(4, 4, 3))
    with pytest.raises(ValueError, match="UV"):
        decimate(textured, 10)


# ------------------------------------------------------------------ glTF validator
@pytest.mark.parametrize("make", [icosphere, coloured_box, lambda: textured_quad()[0]])
def test_khronos_validator_finds_no_errors(tmp_path, make):
    cmd = gltf_validator()
    write_mesh(make(), tmp_path / "m.glb")
    proc = subprocess.run([*cmd, str(tmp_path / "m.glb")], capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stdout)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]
    assert report["issues"]["numWarnings"] == 0, report["issues"]["messages"]
    assert proc.returncode == 0


def test_khronos_validator_reports_a_broken_file(tmp_path):
    cmd = gltf_validator()
    write_mesh(icosphere(0), tmp_path / "m.glb")
    data = bytearray((tmp_path / "m.glb").read_bytes())
    data[-40:] = b"\xff" * 40  # corrupt the index / normal data
    (tmp_path / "m.glb").write_bytes(bytes(data))
    proc = subprocess.run([*cmd, str(tmp_path / "m.glb")], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


# ------------------------------------------------------------------ video
def solid_frames(n: int, h: int, w: int) -> np.ndarray:
    """Frames of distinct solid colours, [n, h, w, 3] float."""
    colours = np.stack([np.linspace(0.1, 0.9, n), np.linspace(0.9, 0.2, n), np.full(n, 0.5)], 1)
    return np.broadcast_to(colours[:, None, None, :], (n, h, w, 3)).astype(np.float32).copy()


def test_mp4_and_gif_decode_with_right_frames_and_size(tmp_path):
    frames = solid_frames(9, 31, 45)  # odd sizes: H.264 / yuv420p wants even ones
    write_turntable(frames, tmp_path / "t.mp4", tmp_path / "t.gif", fps=10)
    reader = imageio.get_reader(tmp_path / "t.mp4", format="FFMPEG")
    meta = reader.get_meta_data()
    decoded = np.stack(list(reader.iter_data()))
    reader.close()
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert decoded.shape == (9, 32, 46, 3)  # padded by one row and column
    assert np.abs(decoded[:, :31, :45].mean((1, 2)) / 255.0 - frames[:, 0, 0]).max() < 0.03
    gif = np.stack(imageio.mimread(tmp_path / "t.gif"))
    assert gif.shape[:3] == (9, 31, 45)
    assert np.abs(gif[..., :3].mean((1, 2)) / 255.0 - frames[:, 0, 0]).max() < 0.03
    info = Image.open(tmp_path / "t.gif").info
    assert info["loop"] == 0 and info["duration"] == 100  # loops forever, 1/10 s per frame


def test_uint8_frames_pass_through_unchanged(tmp_path):
    frames = (solid_frames(3, 8, 8) * 255).round().astype(np.uint8)
    write_turntable(torch.from_numpy(frames), None, tmp_path / "t.gif", fps=5)
    np.testing.assert_array_equal(np.stack(imageio.mimread(tmp_path / "t.gif"))[..., :3], frames)


def test_failed_video_write_keeps_earlier_file(tmp_path, monkeypatch):
    write_turntable(solid_frames(4, 16, 16), tmp_path / "t.mp4", tmp_path / "t.gif", fps=5)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    bad = solid_frames(4, 16, 16)
    bad[2, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_turntable(bad, tmp_path / "t.mp4", tmp_path / "t.gif")

    real = video_mod._FFmpeg

    class FailsOnThirdFrame(real):
        count = 0

        def append(self, frame):
            self.count += 1
            if self.count == 3:
                raise OSError("encoder died")
            super().append(frame)

    monkeypatch.setattr(video_mod, "_FFmpeg", FailsOnThirdFrame)
    with pytest.raises(OSError, match="encoder died"):
        write_turntable(solid_frames(6, 16, 16), tmp_path / "t.mp4", None)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_frames_become_uint8_like_numpys_clip_and_round(dtype):
    from dream3d.export.video import to_uint8_frames

    rng = np.random.default_rng(0)
    x = rng.uniform(-0.2, 1.2, (3, 5, 7, 1)).astype(dtype)
    x[0, 0, :4, 0] = np.array([0.5, 1.5, 2.5, 254.5]) / 255.0  # halves round to even, as np.round does
    ref = np.repeat(np.round(np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8), 3, axis=-1)
    before = x.copy()
    np.testing.assert_array_equal(to_uint8_frames(x), ref)
    np.testing.assert_array_equal(to_uint8_frames(torch.from_numpy(x)), ref)
    np.testing.assert_array_equal(x, before)  # the caller's frames are left as they were
    x[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        to_uint8_frames(x)


def test_side_by_side_and_frame_checks():
    a, b = solid_frames(2, 4, 5), np.zeros((2, 4, 3, 3), np.float32)
    out = side_by_side([a, torch.from_numpy(b)])
    assert out.shape == (2, 4, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, :5], np.round(a * 255).astype(np.uint8))
    assert (out[:, :, 5:] == 0).all()
    with pytest.raises(ValueError, match="height"):
        side_by_side([a, np.zeros((2, 5, 5, 3))])
    with pytest.raises(ValueError):
        write_turntable(np.zeros((4, 4, 3)), None, None)


def test_normal_and_depth_pictures_by_hand():
    n = np.array([[[0.0, 0.0, 1.0], [0.0, -0.5, 0.0], [0.3, 0.0, 0.0]]])  # [1, 3, 3]
    alpha = np.array([[[1.0], [0.5], [0.0]]])
    rgb = normal_to_rgb(n, alpha, background=0.2)
    np.testing.assert_allclose(rgb[0, 0], [0.5, 0.5, 1.0])
    # Opacity-weighted normal (length 0.5) is re-normalised to (0, -1, 0) -> (0.5, 0, 0.5), then composited.
    np.testing.assert_allclose(rgb[0, 1], 0.5 * np.array([0.5, 0.0, 0.5]) + 0.5 * 0.2)
    np.testing.assert_allclose(rgb[0, 2], [0.2, 0.2, 0.2])

    depth = np.array([[[2.0], [3.0], [4.0], [0.0]]])  # [1, 4, 1]
    a = np.array([[[1.0], [1.0], [1.0], [0.0]]])
    grey = depth_to_rgb(depth, a, background=0.0, near_far=(2.0, 4.0))
    np.testing.assert_allclose(grey[0, :, 0], [1.0, 0.6, 0.2, 0.0])
    auto = depth_to_rgb(depth, a, background=0.0)
    assert auto[0, 0, 0] > auto[0, 1, 0] > auto[0, 2, 0] > 0  # near is brighter


def test_gif_is_scaled_down_and_the_mp4_kept_full_size(tmp_path):
    left = solid_frames(5, 32, 32)
    frames = np.concatenate([left, 1.0 - left], axis=2)  # two panels side by side, as a turntable's rgb | normal
    write_turntable(frames, tmp_path / "t.mp4", tmp_path / "t.gif", fps=10, gif_max_height=16)
    reader = imageio.get_reader(tmp_path / "t.mp4", format="FFMPEG")
    assert reader.get_meta_data()["size"] == (64, 32) and reader.count_frames() == 5
    reader.close()
    gif = np.stack(imageio.mimread(tmp_path / "t.gif"))[..., :3] / 255.0
    assert gif.shape == (5, 16, 32, 3)
    # An even factor averages pixels of one panel only: the panels stay apart, no blended seam.
    np.testing.assert_allclose(gif[:, :, :16], left[:, :16, :16], atol=TOL)
    np.testing.assert_allclose(gif[:, :, 16:], 1.0 - left[:, :16, :16], atol=TOL)
    # By default a GIF taller than video_mod.GIF_MAX_HEIGHT rows is scaled down to it.
    assert video_mod.GIF_MAX_HEIGHT == 256
    tall = (solid_frames(2, 260, 520) * 255).round().astype(np.uint8)
    write_turntable(tall, None, tmp_path / "tall.gif")
    assert np.stack(imageio.mimread(tmp_path / "tall.gif")).shape[:3] == (2, 256, 512)


def test_default_turntable_is_512_per_panel_rgb_and_normal():
    from dream3d import presets
    from dream3d.config import ExportConfig
    from dream3d.limits import check_memory, export_memory

    default = ExportConfig()
    assert default.video_resolution == 512 and default.video_panels == ["rgb", "normal"] and default.video_frames == 60
    cfg = presets.resolve(None, {"prompt": "a red cube"}, [])  # what `dream3d generate "..."` runs
    assert cfg.stages[-1].representation.name == "dmtet"  # a mesh: its turntable renders fast
    ex = cfg.export
    assert (ex.video_resolution, ex.video_panels, ex.video_frames, ex.texture_size) == (512, ["rgb", "normal"], 60, 1024)
    need = export_memory(ex)
    assert need["video_resolution"][0] < 3 << 30  # 60 frames of two 512^2 panels and one render batch
    check_memory(ex, available=4 << 30)  # a machine with 4 GiB to spare exports the default
    # Presets that end in a mesh get the same turntable; the CPU presets ending in a NeRF keep 128
    # (volume rendering 512^2 frames on CPU takes minutes: see their yaml).
    for name in presets.preset_names():
        c = presets.resolve(name, {"prompt": "a red cube"}, [])
        if c.stages[-1].representation.name in ("dmtet", "fixed_mesh"):
            assert c.export.video_resolution >= 512, name
        elif not name.endswith("-full"):
            assert c.export.video_resolution == 128, name


# ------------------------------------------------------------------ export_representation
class FakeSphere(Representation):
    """An analytic sphere: ray-traced renders and an icosphere mesh, coloured by its normal."""

    def __init__(self, radius: float = 0.6, mesh_gain: float = 1.0, fail_mesh: bool = False):
        super().__init__()
        self.register_buffer("radius", torch.tensor(radius))
        self.mesh_gain, self.fail_mesh = mesh_gain, fail_mesh
        self.calls: list[int] = []

    @staticmethod
    def albedo(normal: torch.Tensor) -> torch.Tensor:
        return 0.5 + 0.4 * normal

    def render(self, cams, background, shading="diffuse", light_dir=None):
        self.calls.append(cams.batch_size)
        o, d = cams.rays()  # [B, H, W, 3]
        b = (o * d).sum(-1)
        disc = b**2 - ((o * o).sum(-1) - self.radius**2)
        hit = disc > 0
        t = torch.where(hit, -b - disc.clamp_min(0).sqrt(), torch.zeros_like(b))
        normal = torch.where(hit[..., None], (o + t[..., None] * d) / self.radius, torch.zeros_like(o))
        colour = self.albedo(normal)
        if shading == "diffuse":
            lambert = (normal * light_dir[:, None, None, :]).sum(-1, keepdim=True).clamp_min(0)
            colour = colour * (0.3 + 0.7 * lambert)
        alpha = hit[..., None].float()
        rgb = colour * alpha + background[:, None, None, :] * (1 - alpha)
        return RenderOutput(rgb=rgb, alpha=alpha, depth=t[..., None] * alpha, normal=normal)

    def extract_mesh(self, resolution):
        if self.fail_mesh:
            raise UserError("the isosurface is empty")
        s = trimesh.creation.icosphere(subdivisions=3, radius=float(self.radius))
        n = torch.tensor(s.vertex_normals, dtype=torch.float32)
        return Mesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces), self.albedo(n) * self.mesh_gain)


def run_export(rep, out_dir, **overrides):
    kw = dict(mesh=True, video=True, formats=["glb", "obj", "ply"], mesh_resolution=32, video_resolution=24,
              n_frames=6, background=0.7, camera_cfg=CameraConfig(), decimate_faces=None)
    kw.update(overrides)
    return export_representation(rep, out_dir, **kw)


def test_export_representation_writes_everything(tmp_path, recwarn):
    rep = FakeSphere()
    rep.train()
    files = run_export(rep, tmp_path, decimate_faces=400)
    assert set(files) == {"glb", "obj", "ply", "mp4", "gif"}
    assert {p.name for p in tmp_path.iterdir()} == {"mesh.glb", "mesh.obj", "mesh.ply", "turntable.mp4", "turntable.gif"}
    assert rep.training  # restored after the export
    assert max(rep.calls) <= 4  # rendered in small batches
    assert not [w for w in recwarn if "colours" in str(w.message)]
    geom, colours = load_geometry(files["glb"])
    assert len(geom.faces) <= 420
    np.testing.assert_allclose(np.linalg.norm(geom.vertices, axis=1), 0.6, atol=0.05)
    unit = geom.vertices / np.linalg.norm(geom.vertices, axis=1, keepdims=True)
    assert np.abs(colours - (0.5 + 0.4 * unit)).max() < 0.08

    reader = imageio.get_reader(files["mp4"], format="FFMPEG")
    video = np.stack(list(reader.iter_data())) / 255.0
    reader.close()
    assert video.shape == (6, 24, 48, 3)  # RGB | normal
    gif = np.stack(imageio.mimread(files["gif"]))[..., :3] / 255.0
    assert gif.shape == (6, 24, 48, 3)
    # Frame 0 looks at the front: the centre pixel sees the normal pointing at the camera,
    # lit head-on, so it shows the albedo there; the normal panel shows n * 0.5 + 0.5.
    el = np.radians(CameraConfig().eval_elevation)
    n = np.array([0.0, np.sin(el), np.cos(el)])
    for frames in (video, gif):
        np.testing.assert_allclose(frames[0, 11:13, 11:13].mean((0, 1)), 0.5 + 0.4 * n, atol=0.05)
        np.testing.assert_allclose(frames[0, 11:13, 35:37].mean((0, 1)), 0.5 * n + 0.5, atol=0.05)
        np.testing.assert_allclose(frames[0, 0, 0], 0.7, atol=0.03)  # background


def test_export_writes_a_full_size_mp4_and_a_smaller_gif(tmp_path, monkeypatch):
    monkeypatch.setattr(video_mod, "GIF_MAX_HEIGHT", 12)  # the default 256 at a size a test renders quickly
    files = run_export(FakeSphere(), tmp_path, mesh=False, video_resolution=24, n_frames=6)
    reader = imageio.get_reader(files["mp4"], format="FFMPEG")
    meta, count = reader.get_meta_data(), reader.count_frames()  # count_frames decodes the whole stream
    reader.close()
    assert meta["size"] == (48, 24) and count == 6 and meta["codec"] == "h264"  # rgb | normal, full size
    gif = np.stack(imageio.mimread(files["gif"]))[..., :3] / 255.0
    assert gif.shape == (6, 12, 24, 3)
    el = np.radians(CameraConfig().eval_elevation)
    n = np.array([0.0, np.sin(el), np.cos(el)])  # frame 0's centre: the normal facing the camera
    np.testing.assert_allclose(gif[0, 5:7, 5:7].mean((0, 1)), 0.5 + 0.4 * n, atol=0.05)  # rgb panel
    np.testing.assert_allclose(gif[0, 5:7, 17:19].mean((0, 1)), 0.5 * n + 0.5, atol=0.05)  # normal panel


def test_export_representation_warns_when_mesh_colours_are_darker(tmp_path):
    with pytest.warns(RuntimeWarning, match="darker"):
        run_export(FakeSphere(mesh_gain=0.5), tmp_path, video=False, formats=["ply"])
    assert {p.name for p in tmp_path.iterdir()} == {"mesh.ply"}


def test_empty_isosurface_still_writes_video(tmp_path):
    write_mesh(icosphere(0), tmp_path / "mesh.glb")  # an earlier export
    earlier = (tmp_path / "mesh.glb").read_bytes()
    with pytest.raises(ExportIncomplete, match="isosurface is empty") as info:
        run_export(FakeSphere(fail_mesh=True), tmp_path)
    assert isinstance(info.value, UserError)
    assert set(info.value.written) == {"mp4", "gif"}
    assert (tmp_path / "turntable.mp4").stat().st_size > 0
    assert (tmp_path / "mesh.glb").read_bytes() == earlier
    with pytest.raises(UserError, match="unknown mesh format"):
        run_export(FakeSphere(), tmp_path, formats=["fbx"])
