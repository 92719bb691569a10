"""`dream3d texture MESH PROMPT`: a user's mesh as the input of a run (pipeline.generate does the rest).

The mesh is read and checked before anything is created (one UserError line for a missing,
unreadable, empty or non-finite mesh); a mesh above MAX_FACES is decimated first, and the
run says its geometry is then no longer exactly the input. The mesh as used is written into
the run folder (RUN/input_mesh.npz: float32 vertices, faces, UVs; lossless, so the run does
not depend on the original file), with RUN/input_mesh.json recording where it came from and
the centre and scale that put it into the training frame. The run's config names that file
(the fixed_mesh representation's `mesh` option), so `--resume` and `dream3d export RUN` work
from the folder alone.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dream3d.config import RunConfig
from dream3d.errors import UserError
from dream3d.types import Mesh

MAX_FACES = 200_000  # above this, rendering and baking on a CPU take too long: decimate first
REPRESENTATION = "fixed_mesh"
MESH_FILE, RECORD_FILE = "input_mesh.npz", "input_mesh.json"


def _file_uv(path: Path, n_vertices: int) -> torch.Tensor | None:
    """The UVs a file holds without a texture image (read_mesh keeps UVs only with one)."""
    import trimesh

    try:
        uv = getattr(trimesh.load(path, force="mesh", process=False).visual, "uv", None)
    except Exception:  # read_mesh already read it; UVs are a bonus
        return None
    if uv is None or len(uv) != n_vertices or not np.isfinite(uv).all():
        return None
    return torch.tensor(np.asarray(uv), dtype=torch.float32)


def prepare_mesh(path: str | Path, max_faces: int = MAX_FACES) -> tuple[Mesh, dict, list[str]]:
    """(the mesh to texture, its record, messages for the user); UserError for a bad file."""
    from dream3d.export.read_mesh import read_mesh

    path = Path(path)
    mesh = read_mesh(path)  # missing, unreadable, no triangles: one line
    v = mesh.vertices
    bad = int((~torch.isfinite(v)).any(dim=1).sum())
    if bad:
        raise UserError(f"{path}: {bad} of {len(v)} vertices have NaN or infinite coordinates")
    f = mesh.faces
    if int(f.min()) < 0 or int(f.max()) >= len(v):
        raise UserError(f"{path}: face indices outside the {len(v)} vertices")
    uv = mesh.uv if mesh.uv is not None else _file_uv(path, len(v))
    record = {"source": str(path.resolve()), "vertices": len(v), "faces": len(f), "uv": uv is not None,
              "decimated_from": None, "exact": True}
    notes = []
    if len(f) > max_faces:
        from dream3d.export.mesh import decimate

        try:
            mesh = decimate(Mesh(v, f), max_faces)
        except ValueError as e:
            raise UserError(f"{path}: {len(f)} faces is above {max_faces} and decimating failed ({e})") from None
        notes.append(f"{path.name} has {len(f)} faces: decimated to {len(mesh.faces)} first, so the textured mesh's "
                     "geometry is no longer exactly the input" + (" and its UVs are replaced" if uv is not None else ""))
        record.update(decimated_from=len(f), faces=len(mesh.faces), vertices=len(mesh.vertices), exact=False,
                      uv=False)
        uv = None
    return Mesh(mesh.vertices.float(), mesh.faces.long(), uv=uv), record, notes


def _fixed_mesh_components(cfg: RunConfig) -> list:
    comps = [s.representation for s in cfg.stages]
    wrong = sorted({c.name for c in comps if c.name != REPRESENTATION})
    if wrong:
        raise UserError(f"dream3d texture trains the {REPRESENTATION} representation, not {', '.join(wrong)}: "
                        "use the texture preset or one whose stages use it")
    return comps


def write_input(run_dir: Path, mesh: Mesh, record: dict, fit_radius: float) -> Path:
    """RUN/input_mesh.npz and RUN/input_mesh.json; returns the .npz's absolute path."""
    from dream3d.representations.fixed_mesh import normalisation

    center, scale = normalisation(mesh.vertices, fit_radius)
    path = (run_dir / MESH_FILE).resolve()
    with open(path, "wb") as fh:
        np.savez(fh, vertices=mesh.vertices.numpy(), faces=mesh.faces.numpy(),
                 uv=(mesh.uv.numpy() if mesh.uv is not None else np.zeros((0, 2), np.float32)))
    record = {**record, "file": MESH_FILE, "center": [float(c) for c in center], "scale": float(scale),
              "to_training_frame": "(vertex - center) * scale"}
    (run_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return path


def texture(mesh_path: Path, cfg: RunConfig, out_root: Path, on_start: Callable | None = None,
            on_step: Callable | None = None, on_note: Callable[[str], None] | None = None) -> Path:
    """A fresh texturing run of the mesh in `mesh_path`; returns its run folder."""
    from dream3d import pipeline
    from dream3d.run import new_run_dir

    comps = _fixed_mesh_components(cfg)
    mesh, record, notes = prepare_mesh(mesh_path)
    for note in notes:
        (on_note or print)(note)
    run_dir = new_run_dir(Path(out_root), cfg.prompt)
    try:
        path = write_input(run_dir, mesh, record, comps[0].options.fit_radius)
        for comp in comps:
            comp.options.mesh = str(path)
        return pipeline.generate(cfg, out_root, on_start=on_start, on_step=on_step, run_dir=run_dir)
    except BaseException:
        if not (run_dir / "config.yaml").exists():  # refused before the run began: leave no half folder
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
