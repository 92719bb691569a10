"""Write the files of a finished representation: mesh.{glb,obj,ply} and turntable.{mp4,gif}.

If the mesh cannot be extracted (an empty isosurface raises UserError), the video is
still written and then `ExportIncomplete` (a UserError, so the CLI shows one line)
is raised; its `written` attribute lists the files that were written.

Every file of one export is written under a temporary name first and all of them are
then moved into place in one short step (`dream3d.atomic.FileGroup`), so a failed or
killed export leaves the files of the earlier export as they were: never a new
mesh.glb beside an old mesh.obj. A full disk raises `DiskFull` (one line: the folder and
about how much space the export needed).

Before any file is written the mesh is cleaned up (`dream3d.export.cleanup`: floaters
dropped, small holes closed, Taubin smoothing, quadric decimation, outward winding), except
a mesh the user gave (`Representation.source_mesh`), written exactly as given.

With `texture_size > 0` the mesh is UV-unwrapped and its albedo baked into a texture
(GLB, OBJ + MTL + PNG); the PLY keeps vertex colours. If unwrapping or baking fails,
the untextured (vertex-coloured) mesh is written instead and a RuntimeWarning says so.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dream3d.atomic import FileGroup
from dream3d.cameras import CameraConfig, turntable
from dream3d.errors import UserError
from dream3d.export.cleanup import CleanupSettings, cleanup_mesh
from dream3d.export.mesh import clean, mesh_files, sample_texture
from dream3d.export.texture import AlbedoFn, bake_texture, unwrap
from dream3d.export import video as video_module
from dream3d.export.video import depth_to_rgb, normal_to_rgb, side_by_side, write_turntable
from dream3d.limits import check_export_values
from dream3d.render.textured_mesh import MeshAsset
from dream3d.representations.base import Representation
from dream3d.types import MESH_FORMATS, VIDEO_PANELS, Cameras, Mesh

RENDER_BATCH = 4  # views per render call: bounds memory at video resolution
COLOUR_CHECK_VIEWS = 4  # turntable views used to compare mesh colours with the renders
COLOUR_MISMATCH = 0.12  # mean-luminance gap between mesh and albedo renders that earns a warning
TEXTURE_PADDING = 8  # texels grown around every UV chart so seams do not bleed
API_NAMES = {"mesh_resolution": "the mesh resolution", "decimate_faces": "decimate_faces",
             "texture_size": "the texture size", "video_resolution": "the video resolution",
             "video_frames": "the number of turntable frames"}


class ExportIncomplete(UserError):
    """Some requested files could not be written; `written` lists the ones that were."""

    def __init__(self, message: str, written: dict[str, Path]):
        super().__init__(message)
        self.written = written


def _device(rep: Representation) -> torch.device:
    for t in list(rep.parameters()) + list(rep.buffers()):
        return t.device
    return torch.device("cpu")


def headlight(cams: Cameras) -> torch.Tensor:
    """[B, 3] unit vectors from the origin towards each camera: a light that turns with
    the camera, so every turntable frame is lit the same way."""
    eye = cams.c2w[:, :3, 3]
    return eye / eye.norm(dim=-1, keepdim=True)


@torch.no_grad()
def render_views(rep: Representation, cams: Cameras, background: float, shading: str = "diffuse"):
    """Render in batches of RENDER_BATCH; returns rgb [N, H, W, 3], alpha [N, H, W, 1],
    normal [N, H, W, 3] and depth [N, H, W, 1] (each None when the representation gives
    none), on the CPU."""
    rgb, alpha, normal, depth = [], [], [], []
    for start in range(0, cams.batch_size, RENDER_BATCH):
        batch = cams[start : start + RENDER_BATCH]
        bg = torch.full((batch.batch_size, 3), float(background), device=batch.device)
        out = rep.render(batch, bg, shading=shading, light_dir=headlight(batch))
        rgb.append(out.rgb.float().cpu())
        alpha.append(out.alpha.float().cpu())
        normal.append(None if out.normal is None else out.normal.float().cpu())
        depth.append(None if out.depth is None else out.depth.float().cpu())
    normals = None if any(n is None for n in normal) else torch.cat(normal)
    depths = None if any(d is None for d in depth) else torch.cat(depth)
    return torch.cat(rgb), torch.cat(alpha), normals, depths


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.2126, 0.7152, 0.0722])


def mesh_luminance(mesh: Mesh) -> float | None:
    """Area-weighted mean luminance of the vertex colours; None without colours."""
    if mesh.vertex_colors is None:
        return None
    v, f = mesh.vertices.double().cpu().numpy(), mesh.faces.cpu().numpy()
    areas = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    weight = np.bincount(f.ravel(), weights=np.repeat(areas / 3.0, 3), minlength=len(v))
    if weight.sum() <= 0:
        return None
    return float((_luminance(mesh.vertex_colors.double().cpu().numpy()) * weight).sum() / weight.sum())


def albedo_render_luminance(rep: Representation, camera_cfg: CameraConfig, resolution: int,
                            background: float) -> float | None:
    """Mean luminance of the unlit (albedo) turntable renders over covered pixels; None when nothing is covered."""
    cams = turntable(camera_cfg, COLOUR_CHECK_VIEWS, resolution, resolution).to(_device(rep))
    rgb, alpha, _, _ = render_views(rep, cams, background, shading="albedo")
    covered = alpha[..., 0].numpy() > 0.95
    if not covered.any():
        return None
    return float(_luminance(rgb.double().numpy()[covered]).mean())


def _albedo_source(rep: Representation, mesh: Mesh) -> tuple[AlbedoFn | None, float]:
    """The representation's albedo field (points [N, 3] -> [N, 3]) and how far inside the
    surface to sample it; (None, 0) bakes the mesh's vertex colours instead (no field)."""
    if not rep.has("albedo"):
        return None, 0.0
    v = mesh.vertices.double()
    return rep.albedo, rep.albedo_inset * float((v.max(0).values - v.min(0).values).norm())


def _texture_mesh(rep: Representation, mesh: Mesh, texture_size: int) -> Mesh:
    """`mesh` unwrapped, with its albedo baked into a texture_size^2 texture."""
    textured = unwrap(mesh, resolution=texture_size)
    albedo_fn, inset = _albedo_source(rep, mesh)
    texture = bake_texture(textured, albedo_fn, size=texture_size, padding=TEXTURE_PADDING, inset=inset,
                           device=_device(rep))
    return Mesh(textured.vertices, textured.faces, textured.vertex_colors, textured.uv, torch.from_numpy(texture))


def _warn_colour_gap(mesh_lum: float | None, render_lum: float | None, what: str, source: str) -> None:
    if mesh_lum is None or render_lum is None:
        return
    gap = mesh_lum - render_lum
    if abs(gap) > COLOUR_MISMATCH:
        warnings.warn(
            f"{what} colours are {'brighter' if gap > 0 else 'darker'} than the renders "
            f"(mean luminance {gap:+.2f}): check the representation's {source} colours",
            RuntimeWarning, stacklevel=4,
        )


def _export_source_mesh(rep, out_dir, formats, texture_size):
    """A mesh the user gave (`rep.source_mesh`): its vertices written as given, no clean-up,
    smoothing or decimation; the albedo baked into its own UVs (xatlas ones when it has none).
    Returns the files and the written mesh mapped into the representation's frame (for the video)."""
    mesh, to_world = rep.source_mesh()
    device = _device(rep)
    albedo = lambda p: rep.albedo(to_world(p))  # noqa: E731  (the field reads the normalised frame)
    with torch.no_grad():
        colours = torch.cat([albedo(v.to(device)).clamp(0.0, 1.0).cpu() for v in mesh.vertices.split(1 << 16)])
    plain = Mesh(mesh.vertices, mesh.faces, colours)
    textured = None
    if texture_size > 0 and set(formats) & {"glb", "obj"}:
        try:
            base = mesh if mesh.uv is not None else unwrap(mesh, resolution=texture_size)
            texture = bake_texture(base, albedo, size=texture_size, padding=TEXTURE_PADDING, inset=0.0, device=device)
            textured = Mesh(base.vertices, base.faces, None, base.uv, torch.from_numpy(texture))
        except Exception as e:  # a failed bake must not cost the user the mesh itself
            warnings.warn(f"texture baking failed ({type(e).__name__}: {e}); wrote the untextured, "
                          "vertex-coloured mesh instead", RuntimeWarning, stacklevel=3)
    files: dict[Path, bytes] = {}
    for fmt in formats:
        files.update(mesh_files(textured if textured is not None and fmt != "ply" else plain, out_dir / f"mesh.{fmt}", fmt))
    shown = textured if textured is not None else plain
    with torch.no_grad():
        world = to_world(shown.vertices.to(device)).cpu()
    return files, replace(shown, vertices=world)


def _export_mesh(rep, out_dir, formats, mesh_resolution, decimate_faces, camera_cfg, video_resolution, background,
                 texture_size=0, cleanup: CleanupSettings = CleanupSettings(), record: dict | None = None):
    if rep.has("source_mesh"):  # the geometry must stay exactly as the user gave it
        return _export_source_mesh(rep, out_dir, formats, texture_size)
    mesh = rep.extract_mesh(mesh_resolution)
    try:
        mesh = clean(mesh, min_component_fraction=0.0)  # which pieces stay is the clean-up's choice
    except ValueError as e:  # an empty or degenerate surface is the run's result, not a bug
        raise UserError(f"the extracted mesh is unusable ({e}); the run may not have converged") from e
    if mesh.uv is not None:
        warnings.warn("not cleaning up or decimating: the mesh is already UV-unwrapped and textured",
                      RuntimeWarning, stacklevel=3)
    else:  # pieces, holes, smoothing, decimation, winding: dream3d.export.cleanup
        mesh, done = cleanup_mesh(mesh, replace(cleanup, decimate_faces=decimate_faces or None))
        if record is not None:
            record.update(done)
    check_resolution = min(video_resolution, 128)
    mesh_lum = mesh_luminance(mesh)
    render_lum = None if mesh_lum is None else albedo_render_luminance(rep, camera_cfg, check_resolution, background)
    _warn_colour_gap(mesh_lum, render_lum, "mesh", "extract_mesh")

    # ---- texture (optional): GLB and OBJ carry it, PLY keeps the vertex colours.
    textured = None
    if texture_size > 0 and mesh.uv is None and set(formats) & {"glb", "obj"}:
        try:
            textured = _texture_mesh(rep, mesh, texture_size)
        except Exception as e:  # a failed bake must not cost the user the mesh itself
            warnings.warn(
                f"texture baking failed ({type(e).__name__}: {e}); wrote the untextured, vertex-coloured mesh instead",
                RuntimeWarning, stacklevel=3,
            )
        else:
            # The texture as seen at the vertices, checked against the renders like the vertex colours.
            seen = sample_texture(textured.uv.double().numpy(), textured.texture.numpy())
            texture_lum = mesh_luminance(Mesh(textured.vertices, textured.faces, torch.from_numpy(seen).float()))
            if render_lum is None:
                render_lum = albedo_render_luminance(rep, camera_cfg, check_resolution, background)
            _warn_colour_gap(texture_lum, render_lum, "texture", "albedo")

    files: dict[Path, bytes] = {}
    for fmt in formats:
        out_mesh = textured if textured is not None and fmt != "ply" else mesh
        files.update(mesh_files(out_mesh, out_dir / f"mesh.{fmt}", fmt))
    return files, textured if textured is not None else mesh


def _lighting(rep: Representation) -> tuple[float, float]:
    """(ambient, diffuse) of the representation's own renders, so its mesh is lit alike."""
    cfg = getattr(rep, "cfg", None)
    return float(getattr(cfg, "ambient", 0.4)), float(getattr(cfg, "diffuse", 0.6))


def _export_video(rep, out_dir, camera_cfg, n_frames, resolution, background, fps, panels=("rgb", "normal"),
                  group: FileGroup | None = None):
    cams = turntable(camera_cfg, n_frames, resolution, resolution).to(_device(rep))
    rgb, alpha, normal, depth = render_views(rep, cams, background, shading="diffuse")
    pictures = []
    for name in panels:
        if name == "rgb":
            pictures.append(rgb)
        elif name == "normal" and normal is not None:
            pictures.append(normal_to_rgb(normal, alpha, background))
        elif name == "depth" and depth is not None:
            pictures.append(depth_to_rgb(depth, alpha, background))  # one depth range for the whole video
        else:
            warnings.warn(f"the representation renders no {name}s: the video has no {name} panel",
                          RuntimeWarning, stacklevel=3)
    frames = side_by_side(pictures or [rgb])
    # The MP4 at full size; the GIF (the fallback where a browser cannot play it) scaled down.
    mp4, gif = write_turntable(frames, out_dir / "turntable.mp4", out_dir / "turntable.gif", fps, group=group,
                               gif_max_height=video_module.GIF_MAX_HEIGHT)
    return {"mp4": mp4, "gif": gif}


def export_representation(
    rep: Representation,
    out_dir: Path,
    *,
    mesh: bool,
    video: bool,
    formats: list[str],
    mesh_resolution: int,
    video_resolution: int,
    n_frames: int,
    background: float,
    camera_cfg: CameraConfig,
    decimate_faces: int | None,
    fps: float = 24.0,
    texture_size: int = 0,
    video_panels: Sequence[str] = ("rgb", "normal"),
    cleanup: CleanupSettings | None = None,
    cleanup_record: dict | None = None,
) -> dict[str, Path]:
    """Write mesh.<format> for each of `formats` (obj adds mtl / png when textured) and
    turntable.mp4 / turntable.gif (`video_panels` side by side, any of rgb, normal,
    depth; lit from the camera). Returns {extension: path}. Files are replaced
    atomically, so a failure keeps earlier exports.

    texture_size: 0 writes vertex colours only; N > 0 bakes the albedo into an N x N
    texture for glb and obj (the ply keeps vertex colours); a failed bake writes the
    untextured mesh and warns (RuntimeWarning) instead of failing.

    cleanup: the mesh clean-up's knobs (`dream3d.export.cleanup`; None = its defaults);
    `cleanup_record`, when given, receives what the clean-up did. A failed clean-up step
    is skipped with a RuntimeWarning, never failing the export.

    Raises ExportIncomplete (a UserError) after writing the video if the mesh could
    not be extracted, DiskFull (a UserError) when the disk fills up; either way no file
    of the earlier export is replaced by a half-written or partial set."""
    out_dir = Path(out_dir)
    bad = [f for f in formats if f not in MESH_FORMATS]
    if bad:
        raise UserError(f"unknown mesh format '{bad[0]}'; choose from {', '.join(MESH_FORMATS)}")
    bad = [p for p in video_panels if p not in VIDEO_PANELS]
    if bad:
        raise UserError(f"unknown video panel '{bad[0]}'; choose from {', '.join(VIDEO_PANELS)}")
    if video and not video_panels:
        raise UserError(f"the turntable needs at least one panel ({', '.join(VIDEO_PANELS)})")
    check_export_values({"mesh_resolution": mesh_resolution, "decimate_faces": decimate_faces,
                         "texture_size": texture_size, "video_resolution": video_resolution, "video_frames": n_frames},
                        names=API_NAMES)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = rep.training
    rep.eval()  # no training-time randomness (jittered samples, random backgrounds) in exports
    written: dict[str, Path] = {}
    mesh_error: UserError | None = None
    exported: Mesh | None = None
    group = FileGroup(out_dir, "the export", "; the files of the earlier export were kept")
    try:
        if mesh and formats:
            try:
                files, exported = _export_mesh(rep, out_dir, formats, mesh_resolution, decimate_faces, camera_cfg,
                                     video_resolution, background, texture_size, cleanup or CleanupSettings(),
                                     cleanup_record)
            except UserError as e:
                mesh_error = e
            else:
                group.ensure(sum(len(data) for data in files.values()))
                for path, data in files.items():
                    group.write(path, data)
                    written[path.suffix.lstrip(".")] = path
        if video:
            # An explicit surface's asset is the mesh file itself (cleaned, smoothed, textured): show that.
            shown = rep
            if exported is not None and rep.is_explicit_surface:
                shown = MeshAsset(exported, *_lighting(rep), device=_device(rep))
            written.update(_export_video(shown, out_dir, camera_cfg, n_frames, video_resolution, background, fps,
                                         tuple(video_panels), group=group))
        group.commit()  # every file of this export moves into place together
    finally:
        group.discard()
        rep.train(was_training)
    if mesh_error is not None:
        done = f"; wrote {', '.join(p.name for p in written.values())}" if written else ""
        raise ExportIncomplete(f"no mesh was written: {mesh_error}{done}", written) from mesh_error
    return written
