"""The exported-mesh renderer (turntables of explicit surfaces) against the exporter's
texture look-up, against DMTet's own render of the same surface, and end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from dream3d.cameras import CameraConfig, turntable
from dream3d.export.mesh import sample_texture as sample_texture_np
from dream3d.export import run_export as run_export_mod
from dream3d.export.run_export import export_representation
from dream3d.export.texture import bake_texture, unwrap
from dream3d.export.video import normal_to_rgb
from dream3d.render.textured_mesh import MeshAsset, render_mesh, sample_texture
from dream3d.representations.dmtet import DMTet, DMTetConfig
from dream3d.types import Mesh


def test_texture_lookup_matches_the_exporters():
    gen = torch.Generator().manual_seed(0)
    texture = torch.rand(7, 11, 3, generator=gen, dtype=torch.float64)
    uv = torch.rand(500, 2, generator=gen, dtype=torch.float64) * 1.2 - 0.1  # some outside [0, 1]: clamped
    ours = sample_texture(texture, uv).numpy()
    np.testing.assert_allclose(ours, sample_texture_np(uv.numpy(), texture.numpy()), atol=1e-12)


def _sphere(subdivisions: int = 3) -> Mesh:
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.6)
    v = torch.tensor(s.vertices, dtype=torch.float32)
    return Mesh(v, torch.tensor(s.faces), (0.5 + 0.4 * v / 0.6).clamp(0, 1))


def test_uv_seams_change_neither_shape_nor_shading():
    """A UV-unwrapped copy repeats vertices along its chart seams: alpha and normals stay the
    vertex-coloured mesh's exactly (no crease, no false outline), and the baked colours agree."""
    mesh = _sphere()
    textured = unwrap(mesh, resolution=256)
    assert len(textured.vertices) > len(mesh.vertices)  # seams were cut
    tex = bake_texture(textured, None, size=256, padding=4)
    textured = Mesh(textured.vertices, textured.faces, textured.vertex_colors, textured.uv, torch.from_numpy(tex))
    cams = turntable(CameraConfig(), 3, 48, 48)
    bg = torch.full((3, 3), 0.7)
    a, b = render_mesh(mesh, cams, bg), render_mesh(textured, cams, bg)
    torch.testing.assert_close(b.alpha, a.alpha, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.normal, a.normal, atol=1e-4, rtol=0)
    covered = a.alpha[..., 0] > 0.99
    assert covered.sum() > 500
    assert (b.rgb - a.rgb).abs()[covered].mean() < 0.01


def test_a_dmtet_surface_renders_as_dmtet_renders_it():
    # a radius off the grid's vertices: where the SDF is exactly 0 at a vertex, DMTet keeps one
    # surface vertex per crossing edge there and the welded render rightly joins them
    rep = DMTet(DMTetConfig(grid_resolution=24, init_radius=0.47, regularizers=False)).eval()
    mesh = rep.extract_mesh(0)
    cams = turntable(CameraConfig(), 2, 40, 40)
    bg = torch.full((2, 3), 0.3)
    with torch.no_grad():
        ref = rep.render(cams, bg, shading="textureless")
    ours = MeshAsset(mesh, rep.cfg.ambient, rep.cfg.diffuse).render(cams, bg, shading="textureless")
    torch.testing.assert_close(ours.alpha, ref.alpha, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.rgb, ref.rgb, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.depth, ref.depth, atol=1e-4, rtol=0)


def test_an_explicit_surfaces_turntable_shows_its_exported_mesh(tmp_path, monkeypatch):
    """The video of a DMTet run is the written mesh: the decoded first frame's normal panel
    matches a render of mesh.glb as trimesh reads it back, not DMTet's raw (unsmoothed) surface."""
    rep = DMTet(DMTetConfig(grid_resolution=24, regularizers=False))
    with torch.no_grad():  # a lumpy surface, so clean-up's smoothing visibly changes it
        p = rep.grid.vertices
        rep.sdf.copy_(p.norm(dim=-1) - 0.5 - 0.08 * torch.sin(14 * p[:, 0]) * torch.sin(14 * p[:, 1]))
    cfg = CameraConfig()
    seen = []  # the frames as they go to the encoder (H.264 would blur the comparison)
    real_write = run_export_mod.write_turntable
    monkeypatch.setattr(run_export_mod, "write_turntable",
                        lambda frames, *a, **k: seen.append(frames) or real_write(frames, *a, **k))
    files = export_representation(rep, tmp_path, mesh=True, video=True, formats=["glb"], mesh_resolution=32,
                                  video_resolution=48, n_frames=2, background=0.7, camera_cfg=cfg,
                                  decimate_faces=None, texture_size=128, video_panels=("normal",))
    frame = torch.as_tensor(seen[0][0]).float()
    frame = frame / 255.0 if frame.max() > 1.5 else frame
    scene = trimesh.load(files["glb"], force="mesh", process=False)
    image = np.asarray(scene.visual.material.baseColorTexture.convert("RGB"), np.float32) / 255.0
    written = Mesh(torch.tensor(scene.vertices, dtype=torch.float32), torch.tensor(scene.faces),
                   uv=torch.tensor(scene.visual.uv, dtype=torch.float32), texture=torch.from_numpy(image))
    cams = turntable(cfg, 2, 48, 48)[0:1]
    bg = torch.full((1, 3), 0.7)
    def normal_picture(out):
        return torch.as_tensor(np.asarray(normal_to_rgb(out.normal, out.alpha, 0.7)[0])).float()

    from_file = normal_picture(MeshAsset(written).render(cams, bg))
    with torch.no_grad():
        raw = normal_picture(rep.eval().render(cams, bg))
    gap_file, gap_raw = (frame - from_file).abs().mean(), (frame - raw).abs().mean()
    assert gap_file < 2e-3
    assert gap_raw > 5 * gap_file


def test_bad_shading_is_refused():
    with pytest.raises(ValueError, match="unknown shading"):
        render_mesh(_sphere(1), turntable(CameraConfig(), 1, 8, 8), torch.full((1, 3), 0.5), shading="toon")


def test_read_mesh_gives_back_what_write_mesh_wrote(tmp_path):
    from dream3d.errors import UserError
    from dream3d.export.mesh import write_mesh
    from dream3d.export.read_mesh import read_mesh

    mesh = _sphere(2)
    textured = unwrap(mesh, resolution=64)
    tex = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0))
    textured = Mesh(textured.vertices, textured.faces, None, textured.uv, tex)
    write_mesh(textured, tmp_path / "t.glb")
    back = read_mesh(tmp_path / "t.glb")
    torch.testing.assert_close(back.vertices, textured.vertices)
    torch.testing.assert_close(back.uv, textured.uv, atol=1e-6, rtol=0)
    assert torch.equal(back.faces, textured.faces)
    assert (back.texture - tex).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit PNG
    write_mesh(mesh, tmp_path / "c.ply")
    coloured = read_mesh(tmp_path / "c.ply")
    assert coloured.uv is None and (coloured.vertex_colors - mesh.vertex_colors).abs().max() <= 0.5 / 255 + 1e-6
    (tmp_path / "bad.glb").write_bytes(b"glTF not really")
    for bad, words in ((tmp_path / "missing.glb", "no such mesh file"), (tmp_path / "bad.glb", "not a mesh")):
        with pytest.raises(UserError, match=words):
            read_mesh(bad)


def test_eval_reads_a_mesh_runs_exported_file(tmp_path, monkeypatch):
    """`load_asset` gives a DMTet run's mesh.glb (what `dream3d eval` then renders), and the
    DMTet itself when the file is missing or broken."""
    from dream3d import pipeline

    rep = DMTet(DMTetConfig(grid_resolution=16, init_radius=0.47))
    export_representation(rep, tmp_path, mesh=True, video=False, formats=["glb"], mesh_resolution=32,
                          video_resolution=24, n_frames=2, background=0.7, camera_cfg=CameraConfig(),
                          decimate_faces=None, texture_size=64)
    monkeypatch.setattr(pipeline, "load_run", lambda run_dir, device=None: ("cfg", rep))
    cfg, asset = pipeline.load_asset(tmp_path)
    assert isinstance(asset, MeshAsset) and asset.mesh.texture is not None
    assert len(asset.mesh.faces) == len(trimesh.load(tmp_path / "mesh.glb", force="mesh").faces)
    (tmp_path / "mesh.glb").write_bytes(b"broken")
    assert pipeline.load_asset(tmp_path)[1] is rep
