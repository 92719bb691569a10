"""`dream3d texture MESH PROMPT`: the fixed-mesh representation, exact geometry through the
export, the CLI end to end on tiny settings, resume, and bad meshes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from typer.testing import CliRunner

from dream3d import texturing
from dream3d.cameras import CameraConfig, orbit_cameras
from dream3d.cli import app
from dream3d.errors import UserError
from dream3d.export.run_export import export_representation
from dream3d.representations.dmtet import DMTet, DMTetConfig
from dream3d.representations.fixed_mesh import FixedMesh, FixedMeshConfig
from dream3d.types import Mesh

OFFSET, SCALE = np.array([2.5, -1.25, 3.0]), 1.7  # an off-centre, scaled box: the frame must come back exactly
SMALL = {"log2_table_size": 12}


def grey_box() -> trimesh.Trimesh:
    box = trimesh.creation.box(extents=(0.6, 0.9, 0.4))
    box.apply_scale(SCALE)
    box.apply_translation(OFFSET)
    box.visual.vertex_colors = [128, 128, 128, 255]
    return box


def write_box(tmp_path, ext: str):
    path = tmp_path / f"box.{ext}"
    grey_box().export(path)
    return path


def positions(path) -> np.ndarray:
    return np.asarray(trimesh.load(path, force="mesh", process=False).vertices, np.float32)


def exact_same_positions(written: np.ndarray, given: np.ndarray) -> None:
    """Every written vertex is one of the given ones bit for bit, and every given one is written
    (a UV unwrap repeats vertices along seams, so counts may differ)."""
    a, b = np.unique(written.astype(np.float32), axis=0), np.unique(given.astype(np.float32), axis=0)
    assert a.shape == b.shape and np.abs(a - b).max() == 0


def fixed_mesh_for(tmp_path, path) -> FixedMesh:
    mesh, record, _ = texturing.prepare_mesh(path)
    npz = texturing.write_input(tmp_path, mesh, record, 0.8)
    torch.manual_seed(0)
    return FixedMesh(FixedMeshConfig(mesh=str(npz), **SMALL))


def export(rep, out, texture_size=64):
    return export_representation(rep, out, mesh=True, video=False, formats=["glb", "obj", "ply"], mesh_resolution=32,
                                 video_resolution=32, n_frames=2, background=1.0, camera_cfg=CameraConfig(),
                                 decimate_faces=None, texture_size=texture_size)


@pytest.mark.parametrize("ext", ["obj", "glb"])
def test_normalisation_round_trip_is_exact(tmp_path, ext):
    src = write_box(tmp_path, ext)
    rep = fixed_mesh_for(tmp_path, src)
    verts = rep.extract_mesh(0).vertices
    assert verts.norm(dim=-1).max() == pytest.approx(0.8, abs=1e-5) and verts.mean(0).abs().max() < 1e-5
    record = json.loads((tmp_path / "input_mesh.json").read_text())
    assert np.allclose(record["center"], OFFSET) and record["exact"] and record["faces"] == 12
    files = export(rep, tmp_path / "out")
    for fmt in ("glb", "obj", "ply"):
        exact_same_positions(positions(files[fmt]), positions(src))
    assert (tmp_path / "out" / "mesh.png").is_file() and (tmp_path / "out" / "mesh.mtl").is_file()


def test_uvs_kept_when_present(tmp_path):
    box = grey_box()
    uv = np.random.default_rng(0).uniform(0.1, 0.9, (len(box.vertices), 2))
    image = Image.fromarray(np.full((8, 8, 3), 128, np.uint8))
    box.visual = trimesh.visual.TextureVisuals(uv=uv, image=image)
    src = tmp_path / "box.glb"
    box.export(src)
    rep = fixed_mesh_for(tmp_path, src)
    files = export(rep, tmp_path / "out")
    got = trimesh.load(files["glb"], force="mesh", process=False)
    assert len(got.vertices) == len(box.vertices) and np.array_equal(np.asarray(got.faces), box.faces)
    assert np.abs(np.asarray(got.visual.uv) - uv.astype(np.float32)).max() < 1e-6
    assert np.abs(np.asarray(got.vertices, np.float32) - positions(src)).max() == 0


def test_render_matches_dmtet_on_the_same_surface():
    torch.manual_seed(0)
    dmtet = DMTet(DMTetConfig(grid_resolution=16, init_radius=0.6, regularizers=False, **SMALL))
    verts, faces = dmtet.mesh()
    rep = FixedMesh(FixedMeshConfig(**SMALL))
    rep.set_mesh(Mesh(verts.detach(), faces))
    rep.center.zero_()
    rep.scale.fill_(1.0)  # the identity frame, so both render the very same triangles
    cams = orbit_cameras(torch.tensor([20.0, -10.0]), torch.tensor([30.0, 200.0]), torch.full((2,), 2.5),
                         torch.full((2,), 45.0), 24, 24)
    bg = torch.full((2, 3), 0.5)
    a, b = dmtet.render(cams, bg), rep.render(cams, bg)
    assert a.alpha.sum() > 50
    assert torch.allclose(a.alpha, b.alpha, atol=1e-6) and torch.allclose(a.depth, b.depth, atol=1e-6)
    assert torch.allclose(a.normal, b.normal, atol=1e-5)


TINY = ["--steps", "4", "--resolution", "32", "--seed", "0", "--device", "cpu",
        "--set", "train.preview_every=2", "--set", "train.ckpt_every=2", "--set", "export.video_frames=4",
        "--set", "export.video_resolution=32", "--set", "export.texture_size=64"]


def only_run(out):
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_texture_end_to_end_then_export_from_a_moved_folder(tmp_path, tiny_embedded_dir):
    src = write_box(tmp_path, "obj")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["texture", str(src), "a red cube", "--model", str(tiny_embedded_dir),
                                   "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output + repr(res.exception)
    run = only_run(out)
    for name in ("mesh.glb", "mesh.obj", "mesh.mtl", "mesh.png", "mesh.ply", "turntable.mp4", "input_mesh.npz",
                 "input_mesh.json", "config.yaml"):
        assert (run / name).is_file(), name
    exact_same_positions(positions(run / "mesh.glb"), positions(src))
    assert json.loads((run / "run.json").read_text())["status"] == "done"
    # The folder alone: moved elsewhere and without its mesh copy, the checkpoint still holds the mesh.
    moved = tmp_path / "moved"
    shutil.move(str(run), moved)
    (moved / "input_mesh.npz").unlink()
    (moved / "mesh.glb").unlink()
    res = CliRunner().invoke(app, ["export", str(moved), "--no-video", "--format", "glb"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    exact_same_positions(positions(moved / "mesh.glb"), positions(src))
    # geometry settings cannot apply to a mesh written as given: the export says so and still writes it
    with pytest.warns(RuntimeWarning, match="--decimate, --smooth: not used, the mesh you gave is written exactly"):
        res = CliRunner().invoke(app, ["export", str(moved), "--no-video", "--format", "glb", "--decimate", "100",
                                       "--smooth", "5"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    exact_same_positions(positions(moved / "mesh.glb"), positions(src))


def test_resume_finishes_an_interrupted_run(tmp_path, tiny_embedded_dir, monkeypatch):
    from dream3d import presets
    from dream3d.training.checkpoint import read_latest

    src = write_box(tmp_path, "glb")
    cfg = presets.resolve("texture", {"prompt": "a red cube", "model": str(tiny_embedded_dir), "device": "cpu",
                                      "train.steps": 4, "train.resolution": 32},
                          ["train.ckpt_every=2", "train.preview_every=0", "export.video_frames=2",
                           "export.video_resolution=32", "export.texture_size=64"])
    seen = []

    def stop_at_two(log):
        seen.append(log)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        texturing.texture(src, cfg, tmp_path / "out", on_step=stop_at_two)
    run = only_run(tmp_path / "out")
    assert not (run / "mesh.glb").exists()
    res = CliRunner().invoke(app, ["texture", "--resume", str(run)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert read_latest(run / "ckpt" / "texture")["step"] == 4
    exact_same_positions(positions(run / "mesh.glb"), positions(src))


def obj_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "no such mesh file"),
    ("garbage", "not a mesh trimesh can read|holds no triangles"),
    ("no_faces", "holds no triangles"),
    ("nan", "NaN or infinite"),
])
def test_bad_meshes_are_one_line_and_leave_the_output_folder_alone(tmp_path, case, message):
    paths = {
        "missing": tmp_path / "nowhere.obj",
        "garbage": tmp_path / "garbage.glb",
        "no_faces": obj_file(tmp_path, "points.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n"),
        "nan": obj_file(tmp_path, "nan.obj", "v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n"),
    }
    (tmp_path / "garbage.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")
    out = tmp_path / "out"
    (out / "earlier-run").mkdir(parents=True)
    (out / "earlier-run" / "mesh.glb").write_bytes(b"keep")
    with pytest.raises(UserError, match=message) as err:
        texturing.prepare_mesh(paths[case])
    assert "\n" not in str(err.value)
    res = CliRunner().invoke(app, ["texture", str(paths[case]), "a red cube", "--out", str(out)])
    assert res.exit_code != 0 and isinstance(res.exception, UserError)
    assert sorted(p.name for p in out.iterdir()) == ["earlier-run"]
    assert (out / "earlier-run" / "mesh.glb").read_bytes() == b"keep"


def test_missing_mesh_through_the_console_entry_point(tmp_path):
    res = subprocess.run([sys.executable, "-m", "dream3d.cli", "texture", str(tmp_path / "no.obj"), "a red cube",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no such mesh file" in lines[0], res.stderr


def test_huge_mesh_is_decimated_and_says_the_geometry_changed(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3)  # 1280 faces
    path = tmp_path / "sphere.ply"
    sphere.export(path)
    mesh, record, notes = texturing.prepare_mesh(path, max_faces=300)
    assert len(mesh.faces) <= 330 and record["decimated_from"] == 1280 and not record["exact"]
    assert len(notes) == 1 and "no longer exactly the input" in notes[0]


def test_generate_with_the_texture_preset_but_no_mesh_says_what_to_run(tmp_path, tiny_embedded_dir):
    res = CliRunner().invoke(app, ["generate", "a red cube", "--preset", "texture", "--model", str(tiny_embedded_dir),
                                   "--out", str(tmp_path / "o"), "--steps", "2", "--resolution", "32", "--device", "cpu",
                                   "--set", "export.video=false", "--set", "train.preview_every=0"])
    assert res.exit_code != 0 and isinstance(res.exception, UserError)
    assert "dream3d texture MESH PROMPT" in str(res.exception)
