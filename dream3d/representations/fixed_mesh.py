"""A user's mesh, kept exactly as given, with a hash-grid albedo field to train (texturing).

The mesh (vertices as the file holds them in float32, faces, UVs when it has them) lives
in buffers, so a checkpoint carries it and a run folder that moved still loads. For
training it is centred on its bounding box and scaled so that its farthest vertex lies
`fit_radius` from the origin (`normalisation`); renders rasterise that normalised copy
as `DMTet.render` does, minus SDF and deformation. The albedo field (`HashGridAlbedo`, as
DMTet's texture) reads normalised points.

`extract_mesh` gives the normalised mesh (what the renders show); `source_mesh` gives it
as the user gave it, with the map into the normalised frame, so the export writes the
original coordinates bit for bit and bakes the texture into the mesh's own UVs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream3d.errors import UserError
from dream3d.render import raster
from dream3d.render.mesh_ops import face_normals, vertex_normals
from dream3d.render.shading import SHADING_MODES, shade
from dream3d.representations.base import Representation
from dream3d.representations.fields import CHUNK, HashGridAlbedo, HashGridConfig
from dream3d.types import Cameras, Mesh, RenderOutput

BUFFERS = ("source_vertices", "faces", "uv", "center", "scale")


@dataclass
class FixedMeshConfig(HashGridConfig):
    """The texture field's hash-grid and MLP settings come from HashGridConfig (as DMTet's)."""

    mesh: str = ""
    """The mesh file to texture (.npz with vertices / faces / uv as `dream3d texture` writes it,
    or any file `read_mesh` reads); empty = no mesh (renders the background only)."""
    fit_radius: float = 0.8
    """Distance from the origin of the mesh's farthest vertex once normalised for training
    (the embedded prior's objects lie within a radius of about 0.8)."""
    ambient: float = 0.4
    """Ambient light strength (diffuse and textureless shading)."""
    diffuse: float = 0.6
    """Diffuse (Lambertian) light strength."""
    antialias: bool = True
    """Blend pixels across silhouette edges."""
    backend: Literal["auto", "torch", "nvdiffrast"] = "auto"
    """Rasteriser: nvdiffrast on CUDA when installed ("auto"), or the pure-torch one."""
    lr: dict[str, float] = field(default_factory=lambda: {"encoding": 1e-2, "mlp": 1e-3})
    """Adam learning rate per parameter group (the texture field's, as DMTet's)."""
    loss_weights: dict[str, float] = field(default_factory=dict)
    """No regularisers: the geometry does not train."""


def normalisation(vertices: Tensor, fit_radius: float) -> tuple[Tensor, Tensor]:
    """(centre [3], scale []) so that (v - centre) * scale puts the bounding-box centre at the
    origin and the farthest vertex at `fit_radius`; computed in float64, returned as float32."""
    v = vertices.double()
    center = 0.5 * (v.min(0).values + v.max(0).values)
    reach = float((v - center).norm(dim=-1).max())
    scale = fit_radius / reach if reach > 0 else 1.0
    return center.float(), torch.tensor(scale, dtype=torch.float32)


def load_mesh_arrays(path: str | Path) -> Mesh:
    """The mesh of `path`: an .npz of vertices, faces and (optionally) uv, or any mesh file."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as data:
            uv = data["uv"] if "uv" in data and len(data["uv"]) else None
            return Mesh(torch.from_numpy(data["vertices"].astype(np.float32)),
                        torch.from_numpy(data["faces"].astype(np.int64)),
                        uv=None if uv is None else torch.from_numpy(uv.astype(np.float32)))
    from dream3d.export.read_mesh import read_mesh

    return read_mesh(path)


class FixedMesh(Representation):
    is_explicit_surface = True

    def __init__(self, cfg: FixedMeshConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or FixedMeshConfig()
        self.albedo_field = HashGridAlbedo(cfg.hash_grid(), 1.0)
        mesh = None
        # A missing file is not an error yet: a checkpoint may bring the mesh (a run folder that moved).
        if cfg.mesh and Path(cfg.mesh).is_file():
            mesh = load_mesh_arrays(cfg.mesh)
        self.set_mesh(mesh)
        self._cache: tuple | None = None

    @torch.no_grad()
    def set_mesh(self, mesh: Mesh | None) -> None:
        """Hold `mesh` (vertices in its own coordinates) and its normalisation; None = empty."""
        if mesh is None:
            v, f, uv = torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 2)
            center, scale = torch.zeros(3), torch.tensor(1.0)
        else:
            v, f = mesh.vertices.float(), mesh.faces.long()
            uv = mesh.uv.float() if mesh.uv is not None else torch.zeros(0, 2)
            center, scale = normalisation(v, self.cfg.fit_radius)
        for name, value in zip(BUFFERS, (v, f, uv, center, scale)):
            self.register_buffer(name, value.contiguous().clone())
        self._cache = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The mesh's size is only known from the checkpoint: take its buffers' shapes first.
        for name in BUFFERS:
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                self.register_buffer(name, torch.empty_like(saved, device=getattr(self, name).device))
        self._cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------ geometry
    def to_world(self, points: Tensor) -> Tensor:
        """Points [N, 3] in the mesh's own coordinates -> the normalised training frame."""
        return (points.to(self.center) - self.center) * self.scale

    def _surface(self) -> tuple[Tensor, Tensor, raster.MeshEdges, Tensor]:
        """Normalised vertices, faces, edges and area-weighted vertex normals, computed once per device."""
        key = (self.source_vertices.device, self.source_vertices.data_ptr(), self.faces.shape[0])
        if self._cache is None or self._cache[0] != key:
            verts = self.to_world(self.source_vertices)
            faces = self.faces
            edges = raster.mesh_edges(faces, verts.shape[0])
            normals = vertex_normals(verts, faces, face_normals(verts, faces, unit=False))
            self._cache = (key, (verts, faces, edges, normals))
        return self._cache[1]

    def _check_mesh(self) -> None:
        if self.faces.shape[0] == 0 and self.cfg.mesh:
            raise UserError(f"{self.cfg.mesh}: no such mesh file, and no checkpoint holds the mesh")

    def albedo(self, points: Tensor) -> Tensor:
        """Albedo [N, 3] in [0, 1] at points [N, 3] of the normalised frame."""
        return self.albedo_field(points)

    # ------------------------------------------------------------ rendering
    def render(self, cams: Cameras, background: Tensor, shading: str = "diffuse",
               light_dir: Tensor | None = None) -> RenderOutput:
        """background [B, 3] solid colours or [B, H, W, 3] images; light_dir [B, 3] towards
        the light (default: from the camera). As DMTet.render, on the fixed surface."""
        if shading not in SHADING_MODES:
            raise ValueError(f"unknown shading {shading!r}; expected one of {', '.join(SHADING_MODES)}")
        self._check_mesh()
        B, H, W = cams.batch_size, cams.height, cams.width
        verts, faces, edges, vnormals = self._surface()
        bg = background.to(verts.dtype)
        image = bg[:, None, None, :].expand(B, H, W, 3) if bg.dim() == 2 else bg
        fill = torch.cat([image, image.new_zeros(B, H, W, 1)], dim=-1)  # [B, H, W, 4], zero alpha
        if faces.shape[0] == 0:  # no mesh: the background, still in the graph of the texture field
            zero = sum(p.view(-1)[0] for p in self.albedo_field.parameters()) * 0.0
            rgba, blank = fill + zero, fill.new_zeros(B, H, W, 3)
            return RenderOutput(rgb=rgba[..., :3], alpha=rgba[..., 3:], depth=blank[..., :1], normal=blank)
        rast = raster.rasterize(verts, faces, cams, self.cfg.backend)
        view = rast.pixels // (H * W)
        pos = raster.interpolate(verts, faces, rast)  # [K, 3]
        normal = F.normalize(raster.interpolate(vnormals, faces, rast), dim=-1)
        if light_dir is None:
            eye = cams.c2w[:, :3, 3]
            light_dir = eye / eye.norm(dim=-1, keepdim=True)
        light = light_dir.to(verts.dtype)[view]
        albedo = torch.ones_like(pos) if shading == "textureless" else self.albedo(pos)
        colour = shade(albedo, normal, light, self.cfg.ambient, self.cfg.diffuse, shading)
        rgba = raster.to_image(torch.cat([colour, torch.ones_like(pos[:, :1])], dim=-1), rast, fill)
        if self.cfg.antialias:
            rgba = raster.antialias(rgba, rast, faces, edges)
        distance = (pos - cams.c2w[view, :3, 3].to(verts.dtype)).norm(dim=-1, keepdim=True)
        zeros = pos.new_zeros(B, 1)
        return RenderOutput(rgb=rgba[..., :3], alpha=rgba[..., 3:], depth=raster.to_image(distance, rast, zeros),
                            normal=raster.to_image(normal, rast, zeros.expand(B, 3)))

    # ------------------------------------------------------------ training hooks
    def on_step(self, step: int, progress: float, out: RenderOutput, optimizer=None) -> None:
        # Renders of no mesh are background only (the contract's empty build); training them is a mistake.
        if self.faces.shape[0] == 0:
            raise UserError("the fixed_mesh representation holds no mesh to texture: "
                            "use dream3d texture MESH PROMPT (or set representation.mesh)")

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"encoding": [self.albedo_field.encoding.table], "mlp": list(self.albedo_field.mlp.parameters())}

    # ------------------------------------------------------------ export
    @torch.no_grad()
    def extract_mesh(self, resolution: int) -> Mesh:
        """The normalised mesh (`resolution` is unused) with the albedo at its vertices as colours."""
        self._check_mesh()
        if self.faces.shape[0] == 0:
            raise UserError("there is no mesh to export (the fixed-mesh representation holds none)")
        verts, faces, _, _ = self._surface()
        colours = torch.cat([self.albedo(v) for v in verts.split(CHUNK)])
        return Mesh(verts.cpu(), faces.cpu(), colours.clamp(0.0, 1.0).cpu(), self._uv())

    def _uv(self) -> Tensor | None:
        return self.uv.cpu() if self.uv.shape[0] else None

    @torch.no_grad()
    def source_mesh(self) -> tuple[Mesh, Callable[[Tensor], Tensor]]:
        """The mesh as given (its own coordinates, float32, its UVs if any) and the map of its
        points into the frame `albedo` and `render` use."""
        self._check_mesh()
        if self.faces.shape[0] == 0:
            raise UserError("there is no mesh to export (the fixed-mesh representation holds none)")
        return Mesh(self.source_vertices.cpu(), self.faces.cpu(), uv=self._uv()), self.to_world
