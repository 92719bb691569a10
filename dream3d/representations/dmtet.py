"""DMTet: an explicit surface from a deformable tetrahedral grid, rasterised.

Each vertex of a Kuhn tetrahedral grid over [-radius, radius]^3 carries a signed
distance (negative inside) and a bounded offset (max_deform * cell * tanh(raw)).
Every render extracts the zero level by marching tetrahedra (differentiable in both),
rasterises it from each camera, interpolates positions and normals, reads the albedo
from a hash-grid texture field (`fields.HashGridAlbedo`, as the NeRF's) at the surface
points and shades it. Analytic antialiasing gives the outline gradients;
normal-consistency and Laplacian terms (`render.mesh_ops`) are returned in `extras`
for the trainer to weight.

Initialisation: a sphere (`init_sphere`), or the previous stage's density
(`init_from_density`), whose level set at `threshold` becomes the zero level; the
texture field can start as a copy of the NeRF's (`init_texture_from`). With
`freeze_geometry` (a texture stage) the surface is extracted once and reused.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream3d.errors import UserError
from dream3d.render import raster
from dream3d.render.mesh_ops import face_normals, laplacian_smoothness, normal_consistency, vertex_normals
from dream3d.render.shading import SHADING_MODES, shade
from dream3d.representations.base import Representation
from dream3d.representations.fields import CHUNK, HashGridAlbedo, HashGridConfig
from dream3d.representations.tetgrid import TetGrid, zero_crossings
from dream3d.types import Cameras, Mesh, RenderOutput

FIT_LR = 1e-2  # Adam step of the texture fit to a previous stage's colours (100 steps reach ~1/100)


@dataclass
class DMTetConfig(HashGridConfig):
    """The texture field's hash-grid and MLP settings come from HashGridConfig, shared with the
    NeRF (same defaults), so a NeRF's albedo field copies into a DMTet."""

    grid_resolution: int = 64
    """Cells per axis of the tetrahedral grid (six tetrahedra per cell)."""
    radius: float = 1.0
    """Half side of the cube [-radius, radius]^3 the grid spans."""
    max_deform: float = 0.25
    """Largest vertex offset, in cells (offset = max_deform * cell * tanh(raw))."""
    init_radius: float = 0.5
    """Radius of the initial sphere when no previous stage provides a shape."""
    ambient: float = 0.4
    """Ambient light strength (diffuse and textureless shading)."""
    diffuse: float = 0.6
    """Diffuse (Lambertian) light strength."""
    antialias: bool = True
    """Blend pixels across silhouette edges (gives the outline gradients)."""
    regularizers: bool = True
    """Compute the normal-consistency and Laplacian terms into extras (off saves time when their weights are zero)."""
    gradient_smoothing: float = 1.5
    """Blur the SDF and offset gradients over the grid with a Gaussian of this many cells
    (0 = the raw gradient): a noisy score then moves patches of surface, not single vertices
    into spikes. Measured effect: README, Presets."""
    freeze_geometry: bool = False
    """Keep the SDF and deformation fixed (a texture-only stage)."""
    freeze_texture: bool = False
    """Keep the texture field fixed (a geometry-only stage)."""
    backend: Literal["auto", "torch", "nvdiffrast"] = "auto"
    """Rasteriser: nvdiffrast on CUDA when installed ("auto"), or the pure-torch one."""
    lr: dict[str, float] = field(default_factory=lambda: {"sdf": 1e-3, "deform": 1e-3, "encoding": 1e-2, "mlp": 1e-3})
    """Adam learning rate per parameter group. SDF and offsets use 1e-3: at 1e-2 (a third of a
    grid-64 cell per step) SDS noise tore a refined NeRF cube into a frame-filling shell of
    hundreds of thousands of faces."""
    loss_weights: dict[str, float] = field(default_factory=lambda: {"normal_consistency": 1e-1, "laplacian": 1e-1})
    """Weight of each mesh-smoothness regulariser in extras."""


@functools.lru_cache(maxsize=8)
def blur_matrix(n: int, sigma: float) -> Tensor:
    """[n, n] Gaussian blur of `sigma` samples along one axis; the ends repeat their last value."""
    radius = max(1, int(3 * sigma + 0.5))
    taps = torch.arange(-radius, radius + 1)
    weights = torch.exp(-0.5 * (taps / sigma) ** 2)
    weights = weights / weights.sum()
    rows = torch.arange(n)[:, None].expand(n, len(taps))
    cols = (rows + taps).clamp(0, n - 1)
    return torch.zeros(n, n).index_put_((rows, cols), weights.expand(n, -1), accumulate=True)


def blur_grid(values: Tensor, n: int, sigma: float) -> Tensor:
    """Values [n^3] or [n^3, C] on the grid's vertices (x-major), blurred by a separable
    Gaussian of `sigma` cells, one matrix product per axis (BLAS is far faster than conv3d here)."""
    k = blur_matrix(n, sigma).to(values)
    cube = values.reshape(n, n, n, -1)
    cube = torch.einsum("ia,ajkc->ijkc", k, cube)
    cube = torch.einsum("ja,iakc->ijkc", k, cube)
    cube = torch.einsum("ka,ijac->ijkc", k, cube)
    return cube.reshape(values.shape)


class DMTet(Representation):
    is_explicit_surface = True

    def __init__(self, cfg: DMTetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DMTetConfig()
        self.grid = TetGrid(cfg.grid_resolution, cfg.radius)
        self.sdf = nn.Parameter(torch.zeros(self.grid.n_vertices))
        self.deform = nn.Parameter(torch.zeros(self.grid.n_vertices, 3))
        self.albedo_field = HashGridAlbedo(cfg.hash_grid(), cfg.radius)  # the texture
        self.init_sphere(cfg.init_radius)
        for p in (self.sdf, self.deform):
            p.requires_grad_(not cfg.freeze_geometry)
            if cfg.gradient_smoothing > 0 and not cfg.freeze_geometry:
                p.register_hook(lambda g: blur_grid(g, cfg.grid_resolution + 1, cfg.gradient_smoothing))
        for p in self._texture_params():
            p.requires_grad_(not cfg.freeze_texture)
        self._frozen_surface: tuple | None = None
        self._topology_cache: tuple | None = None

    # ------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_sphere(self, radius: float) -> None:
        """The zero level becomes a sphere of `radius` at the origin; offsets are reset."""
        self.sdf.copy_(self.grid.vertices.to(self.sdf).norm(dim=-1) - radius)
        self.deform.zero_()

    @torch.no_grad()
    def init_from_density(self, fn: Callable[[Tensor], Tensor], threshold: float) -> None:
        """The zero level becomes the level set {fn = threshold} of a density fn(points
        [N, 3]) -> [N] (e.g. the previous NeRF stage's `query_density`); offsets are reset.
        The field is divided by its median gradient norm next to the surface, so that
        near the surface it is close to a signed distance (learning rates mean the same)."""
        points = self.grid.vertices.to(self.sdf)
        density = torch.cat([fn(p).reshape(-1).to(points) for p in points.split(CHUNK)])
        field = threshold - density
        if not torch.isfinite(field).all():
            raise UserError("the density to initialise the mesh from is not finite everywhere")
        n = self.cfg.grid_resolution + 1
        cube = field.view(n, n, n)
        near = torch.zeros_like(cube, dtype=torch.bool)  # grid points with a neighbour across the level set
        for axis in range(3):
            a, b = cube.narrow(axis, 0, n - 1), cube.narrow(axis, 1, n - 1)
            cross = (a < 0) != (b < 0)
            near.narrow(axis, 0, n - 1).logical_or_(cross)
            near.narrow(axis, 1, n - 1).logical_or_(cross)
        if not near.any():
            inside = int((field < 0).sum())
            raise UserError(f"the density never crosses the threshold {threshold:g} inside the grid "
                            f"({inside} of {field.numel()} grid points are inside): there is no surface to start from")
        gradient = torch.stack(torch.gradient(cube, spacing=self.grid.cell_size), dim=-1)  # [n, n, n, 3]
        slope = gradient[near].norm(dim=-1).median()
        self.sdf.copy_(field / slope.clamp(min=1e-12))
        self.deform.zero_()

    @torch.no_grad()
    def init_texture_from(self, albedo_field: HashGridAlbedo) -> None:
        """Start the texture field as a copy of another one with the same layout, e.g. the
        previous NeRF stage's `albedo_field` (same hash-grid and MLP settings; with the same
        radius both read [-radius, radius]^3 the same way)."""
        try:
            self.albedo_field.load_state_dict(albedo_field.state_dict())
        except RuntimeError as err:
            raise UserError("cannot copy the texture field: its hash-grid or MLP settings differ from this DMTet's "
                            f"({str(err).splitlines()[0]})") from None

    def init_texture_from_colours(self, fn: Callable[[Tensor], Tensor], steps: int = 100, points: int = 4096,
                                  seed: int = 0) -> float:
        """Fit the texture field to a colour field fn(points [N, 3]) -> [N, 3] in [0, 1] (e.g. the
        previous Gaussian stage's colours) on points spread over the current surface, by Adam
        (an L1 regression, so faster than training's rates); returns the final mean absolute error."""
        verts, faces = self.mesh()
        verts = verts.detach()
        if faces.shape[0] == 0:
            return float("nan")
        gen = torch.Generator().manual_seed(seed)
        tri = verts[faces]  # [F, 3, 3]
        area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1).cpu()
        params = self._texture_params()
        frozen = [not p.requires_grad for p in params]
        for p in params:  # a stage that keeps its texture fixed (freeze_texture) still starts from these colours
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=FIT_LR)
        error = float("nan")
        for _ in range(steps):
            pick = torch.multinomial(area + 1e-12, points, replacement=True, generator=gen).to(verts.device)
            u, v = torch.rand(2, points, 1, generator=gen).to(verts)
            flip = (u + v) > 1  # fold the unit square onto the triangle: uniform barycentrics
            u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
            p = tri[pick, 0] + u * (tri[pick, 1] - tri[pick, 0]) + v * (tri[pick, 2] - tri[pick, 0])
            with torch.no_grad():
                target = fn(p).to(p)
            loss = (self.albedo(p) - target).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            error = float(loss.detach())
        for p, keep in zip(params, frozen):
            p.requires_grad_(not keep)
        return error

    # ------------------------------------------------------------ geometry
    def _texture_params(self) -> list[nn.Parameter]:
        return list(self.albedo_field.parameters())  # encoding.table, then the MLP's

    def _topology(self) -> tuple[Tensor, Tensor, raster.MeshEdges]:
        """Faces [F, 3], crossed grid edges [M, 2] and the faces' edges: they depend on the signs of
        the SDF only, so they are kept until it is written to. A step renders twice with the same SDF
        (its cameras, then `--image`'s reference view), and marching the tets is a third of a render."""
        key = (self.sdf._version, self.sdf.data_ptr(), self.sdf.device)
        if self._topology_cache is not None and self._topology_cache[0] == key:
            return self._topology_cache[1]
        if self.grid.vertices.device != self.sdf.device:
            self.grid.to(self.sdf.device)
        with torch.no_grad():
            faces, edges = self.grid.surface(self.sdf)
            topology = (faces, edges, raster.mesh_edges(faces, edges.shape[0]))
        self._topology_cache = (key, topology)
        return topology

    def mesh(self) -> tuple[Tensor, Tensor]:
        """The current surface: vertices [M, 3] (differentiable in sdf and deform) and faces [F, 3]."""
        faces, edges, _ = self._topology()
        ends = edges.t().reshape(-1)  # both endpoints: [2 M]
        scale = self.cfg.max_deform * self.grid.cell_size
        offset = scale * torch.tanh(self.deform.index_select(0, ends))
        pos = self.grid.vertices.index_select(0, ends).to(offset.dtype) + offset
        sdf = self.sdf.index_select(0, ends)
        m = edges.shape[0]
        verts, _ = zero_crossings(pos[:m], pos[m:], sdf[:m], sdf[m:])
        return verts, faces

    def _surface(self) -> tuple[Tensor, Tensor, raster.MeshEdges, Tensor]:
        """Vertices, faces, edges and area-weighted face normals [F, 3]; kept between
        renders while the geometry is frozen (until the parameters are written to)."""
        key = (self.sdf._version, self.deform._version, self.sdf.device, self.sdf.dtype)
        if self.cfg.freeze_geometry and self._frozen_surface is not None and self._frozen_surface[0] == key:
            return self._frozen_surface[1]
        verts, faces = self.mesh()
        surface = (verts, faces, self._topology()[2], face_normals(verts, faces, unit=False))
        if self.cfg.freeze_geometry:
            self._frozen_surface = (key, surface)
        return surface

    def albedo(self, points: Tensor) -> Tensor:
        """Albedo [N, 3] in [0, 1] at world points [N, 3]."""
        return self.albedo_field(points)

    def occupancy_at(self, points: Tensor) -> Tensor:
        """Occupancy [N] at world points [N, 3]: sigmoid(-sdf / cell), the SDF read trilinearly from
        the grid's vertices (the deformation offsets are ignored: at most a fraction of a cell)."""
        n = self.cfg.grid_resolution + 1
        # vertices are ordered x, y, z (meshgrid "ij"); grid_sample wants (x, y, z) to index (W, H, D)
        grid = (points / self.cfg.radius).flip(-1).view(1, -1, 1, 1, 3).to(self.sdf.dtype)
        sdf = F.grid_sample(self.sdf.view(1, 1, n, n, n), grid, align_corners=True, padding_mode="border")
        return torch.sigmoid(-sdf.view(-1) / self.grid.cell_size)

    # ------------------------------------------------------------ rendering
    def render(self, cams: Cameras, background: Tensor, shading: str = "diffuse", light_dir: Tensor | None = None) -> RenderOutput:
        """background [B, 3] solid colours or [B, H, W, 3] images; light_dir [B, 3]
        towards the light (default: from the camera)."""
        if shading not in SHADING_MODES:
            raise ValueError(f"unknown shading {shading!r}; expected one of {', '.join(SHADING_MODES)}")
        B, H, W = cams.batch_size, cams.height, cams.width
        verts, faces, edges, area_normals = self._surface()
        dtype = verts.dtype
        bg = background.to(dtype)
        if faces.shape[0] == 0:
            return self._empty(cams, bg)
        rast = raster.rasterize(verts, faces, cams, self.cfg.backend)
        view = rast.pixels // (H * W)
        pos = raster.interpolate(verts, faces, rast)  # [K, 3]
        normal = F.normalize(raster.interpolate(vertex_normals(verts, faces, area_normals), faces, rast), dim=-1)
        if light_dir is None:
            eye = cams.c2w[:, :3, 3]
            light_dir = eye / eye.norm(dim=-1, keepdim=True)
        light = light_dir.to(dtype)[view]
        albedo = torch.ones_like(pos) if shading == "textureless" else self.albedo(pos)
        colour = shade(albedo, normal, light, self.cfg.ambient, self.cfg.diffuse, shading)
        ones = torch.ones_like(pos[:, :1])
        rgba = raster.to_image(torch.cat([colour, ones], dim=-1), rast, self._fill(bg, B, H, W))
        if self.cfg.antialias:
            rgba = raster.antialias(rgba, rast, faces, edges)
        distance = (pos - cams.c2w[view, :3, 3].to(dtype)).norm(dim=-1, keepdim=True)
        zeros = pos.new_zeros(B, 1)
        if self.cfg.regularizers and not self.cfg.freeze_geometry:
            extras = {
                "normal_consistency": normal_consistency(verts, faces, edges, F.normalize(area_normals, dim=-1, eps=1e-20)),
                "laplacian": laplacian_smoothness(verts, faces, edges),
            }
        else:
            extras = {"normal_consistency": pos.new_zeros(()), "laplacian": pos.new_zeros(())}
        return RenderOutput(
            rgb=rgba[..., :3],
            alpha=rgba[..., 3:],
            depth=raster.to_image(distance, rast, zeros),
            normal=raster.to_image(normal, rast, zeros.expand(B, 3)),
            extras=extras,
        )

    @staticmethod
    def _fill(bg: Tensor, B: int, H: int, W: int) -> Tensor:
        """[B, H, W, 4] background with zero alpha."""
        image = bg[:, None, None, :].expand(B, H, W, 3) if bg.dim() == 2 else bg
        return torch.cat([image, image.new_zeros(B, H, W, 1)], dim=-1)

    def _empty(self, cams: Cameras, bg: Tensor) -> RenderOutput:
        """Background only. The zero term keeps the outputs in the autograd graph so a
        training step still runs (with zero gradients) instead of failing."""
        B, H, W = cams.batch_size, cams.height, cams.width
        trainable = [p.view(-1)[:1] for p in self.parameters() if p.requires_grad]
        zero = torch.cat(trainable).sum() * 0.0 if trainable else self.sdf.new_zeros(())
        rgba = self._fill(bg, B, H, W) + zero
        blank = rgba.new_zeros(B, H, W, 3)
        return RenderOutput(rgb=rgba[..., :3], alpha=rgba[..., 3:], depth=blank[..., :1], normal=blank,
                            extras={"normal_consistency": zero, "laplacian": zero})

    # ------------------------------------------------------------ training hooks
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {}
        if not self.cfg.freeze_geometry:
            groups.update(sdf=[self.sdf], deform=[self.deform])
        if not self.cfg.freeze_texture:
            groups.update(encoding=[self.albedo_field.encoding.table], mlp=list(self.albedo_field.mlp.parameters()))
        return groups

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        HashGridAlbedo.upgrade_state_dict(state_dict, prefix, "albedo_field")  # runs saved before the shared field
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------ export
    @torch.no_grad()
    def extract_mesh(self, resolution: int) -> Mesh:
        """The surface itself (`resolution` is unused: the mesh is explicit) with the
        albedo at its vertices as colours."""
        verts, faces = self.mesh()
        if faces.shape[0] == 0:
            raise UserError("the DMTet surface is empty (the signed distance has no zero crossing): there is no mesh to export")
        colours = torch.cat([self.albedo(v) for v in verts.split(CHUNK)])
        return Mesh(verts.cpu(), faces.clone().cpu(), colours.clamp(0.0, 1.0).cpu())  # faces: not the cached topology
