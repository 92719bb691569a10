"""Read a mesh file (GLB / glTF, OBJ, PLY, ... through trimesh) into a `Mesh`: vertices,
faces, and its colours as the file holds them (UVs with the base-colour texture, or
vertex colours). Scenes of several meshes are merged into one in world coordinates."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh

from dream3d.errors import UserError
from dream3d.types import Mesh


def _texture_of(visual) -> np.ndarray | None:
    """[H, W, 3] float in [0, 1] of a textured visual's base-colour (or diffuse) image, if any."""
    material = getattr(visual, "material", None)
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if image is None:
        return None
    return np.asarray(image.convert("RGB"), np.float32) / 255.0


def read_mesh(path: str | Path) -> Mesh:
    """The mesh in `path`; raises UserError (one line) for a missing, unreadable or empty file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such mesh file")
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # trimesh raises many kinds for a broken file
        raise UserError(f"{path}: not a mesh trimesh can read ({type(e).__name__}: {' '.join(str(e).split())})") from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise UserError(f"{path}: the file holds no triangles")
    v = torch.tensor(np.asarray(loaded.vertices), dtype=torch.float32)
    f = torch.tensor(np.asarray(loaded.faces), dtype=torch.long)
    visual = loaded.visual
    uv = getattr(visual, "uv", None)
    texture = _texture_of(visual) if uv is not None else None
    if uv is not None and texture is not None and len(uv) == len(v):
        return Mesh(v, f, uv=torch.tensor(np.asarray(uv), dtype=torch.float32), texture=torch.from_numpy(texture))
    colours = None
    if visual.kind == "vertex":
        colours = torch.tensor(np.asarray(visual.vertex_colors)[:, :3] / 255.0, dtype=torch.float32)
    return Mesh(v, f, colours)
