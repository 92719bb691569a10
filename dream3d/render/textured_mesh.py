"""Render an exported mesh as its file holds it: its triangles, and the colours of its
baked texture (UVs) or its vertex colours, lit like the representations' renders.

A UV-unwrapped mesh repeats a vertex on each side of a chart seam. Visibility,
normals and the antialiased outline are computed on the mesh with those copies
welded by position, so a seam is neither a crease in the shading nor a silhouette;
only the texture coordinates are read per copy (the faces keep their order).

Texture convention as `dream3d.export.mesh`: u left to right, v bottom to top, texel
centres at (i + 0.5) / W, looked up bilinearly (`F.grid_sample`, align_corners=False,
edges clamped), which is `export.mesh.sample_texture`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dream3d.render import raster
from dream3d.render.mesh_ops import face_normals, vertex_normals
from dream3d.render.shading import SHADING_MODES, shade
from dream3d.types import Cameras, Mesh, RenderOutput


def weld_by_position(vertices: Tensor) -> tuple[Tensor, Tensor]:
    """(unique positions [U, 3], [V] index of each vertex's position): exact matches only,
    which is what a UV unwrap's copies are."""
    unique, inverse = torch.unique(vertices, dim=0, return_inverse=True)
    return unique, inverse


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear texture [H, W, 3] at uv [K, 2] (v up) -> [K, 3]."""
    grid = torch.stack([uv[:, 0] * 2.0 - 1.0, 1.0 - uv[:, 1] * 2.0], -1).view(1, 1, -1, 2)
    image = texture.permute(2, 0, 1)[None].to(uv.dtype)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(3, -1).t()


@torch.no_grad()
def render_mesh(mesh: Mesh, cams: Cameras, background: Tensor, shading: str = "diffuse",
                light_dir: Tensor | None = None, ambient: float = 0.4, diffuse: float = 0.6,
                antialias: bool = True) -> RenderOutput:
    """rgb [B, H, W, 3], alpha, depth (distance to the camera) and world normals of `mesh`
    seen by `cams` over solid `background` [B, 3]; light_dir [B, 3] towards the light
    (default: from each camera). A mesh with neither texture nor colours renders white."""
    if shading not in SHADING_MODES:
        raise ValueError(f"unknown shading {shading!r}; expected one of {', '.join(SHADING_MODES)}")
    device = cams.c2w.device
    B, H, W = cams.batch_size, cams.height, cams.width
    verts = mesh.vertices.to(device, torch.float32)
    faces = mesh.faces.to(device)
    positions, welded = weld_by_position(verts)
    shape_faces = welded[faces]  # the same faces over the welded positions
    rast = raster.rasterize(positions, shape_faces, cams, "auto")
    view = rast.pixels // (H * W)
    pos = raster.interpolate(positions, shape_faces, rast)
    normals = vertex_normals(positions, shape_faces, face_normals(positions, shape_faces, unit=False))
    normal = F.normalize(raster.interpolate(normals, shape_faces, rast), dim=-1)
    if shading == "textureless":
        albedo = torch.ones_like(pos)
    elif mesh.uv is not None and mesh.texture is not None:
        albedo = sample_texture(mesh.texture.to(device), raster.interpolate(mesh.uv.to(device, pos.dtype), faces, rast))
    elif mesh.vertex_colors is not None:
        albedo = raster.interpolate(mesh.vertex_colors.to(device, pos.dtype), faces, rast)
    else:
        albedo = torch.ones_like(pos)
    if light_dir is None:
        eye = cams.c2w[:, :3, 3]
        light_dir = eye / eye.norm(dim=-1, keepdim=True)
    colour = shade(albedo.clamp(0.0, 1.0), normal, light_dir.to(pos.dtype)[view], ambient, diffuse, shading)
    bg = background.to(pos.dtype)
    fill = torch.cat([bg[:, None, None, :].expand(B, H, W, 3), bg.new_zeros(B, H, W, 1)], -1)
    rgba = raster.to_image(torch.cat([colour, torch.ones_like(pos[:, :1])], -1), rast, fill)
    if antialias:
        rgba = raster.antialias(rgba, rast, shape_faces, raster.mesh_edges(shape_faces, positions.shape[0]))
    distance = (pos - cams.c2w[view, :3, 3].to(pos.dtype)).norm(dim=-1, keepdim=True)
    zeros = pos.new_zeros(B, 1)
    return RenderOutput(rgb=rgba[..., :3], alpha=rgba[..., 3:], depth=raster.to_image(distance, rast, zeros),
                        normal=raster.to_image(normal, rast, zeros.expand(B, 3)), extras={})


class MeshAsset:
    """A finished mesh with the `render` call of a representation, for turntables and
    evaluation of the exported file itself (not trainable)."""

    def __init__(self, mesh: Mesh, ambient: float = 0.4, diffuse: float = 0.6,
                 device: torch.device | str = "cpu"):
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        self.mesh = Mesh(*(move(t) for t in (mesh.vertices, mesh.faces, mesh.vertex_colors, mesh.uv, mesh.texture)))
        self.ambient, self.diffuse = ambient, diffuse
        self.training = False

    def render(self, cams: Cameras, background: Tensor, shading: str = "diffuse",
               light_dir: Tensor | None = None) -> RenderOutput:
        return render_mesh(self.mesh, cams, background, shading, light_dir, self.ambient, self.diffuse)

    def parameters(self):
        return iter(())

    def buffers(self):  # where it renders, as a representation's tensors say
        return iter((self.mesh.vertices,))

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self
