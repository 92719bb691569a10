"""Shape guidance from a coarse mesh: Latent-NeRF's Sketch-Shape loss, restated for every
representation with an occupancy field.

Each step samples points in the scene (half uniformly in the cube, half near the guide's
surface) and compares the representation's occupancy o(x) there with the guide's inside
indicator, weighted so that the guide decides far from its surface and the prompt near it:

    loss = mean_i  w_i * CE(o_i, q_i)
    q_i  = clamp(inside_i, eps, 1 - eps)            (inside_i = 1 inside the guide, else 0)
    CE(o, q) = -(o log q + (1 - o) log(1 - q))     (linear in o: a bounded, steady pull)
    w_i  = 1 - exp(-d_i^2 / (2 sigma^2))            (d_i: distance from x_i to the guide's surface)

The guide is used in world coordinates as given (dream3d's scene is the cube [-1, 1]^3, +Y up,
front +Z): it is not rescaled or centred, so the user places it. Its signed distance is
computed once on a grid (inside by the winding number along axis-aligned rays, distance by a
Euclidean distance transform, so accurate to one or two cells) and read trilinearly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dream3d.errors import UserError

SCENE_BOUND = 1.0  # half side of the cube the points are drawn in (the scene's)
MAX_GUIDE_EXTENT = 1.5  # a guide reaching further than this along an axis is refused
EPS = 0.01  # clamp of the guide's indicator (Latent-NeRF's): keeps the cross-entropy finite
SAVED_NAME = "shape-guide.ply"  # the guide's copy in a run folder


@dataclass
class ShapeConfig:
    mesh: str = ""
    """Guide mesh (glb, obj, ply, ...) in world coordinates: the cube [-1, 1]^3, +Y up, front +Z; '' = none.
    A run folder's config names its own copy, relative to the folder."""
    weight: float = 50.0
    """Weight of the shape loss in the training loss (0 = off). On the default preset 1 and 5 barely
    moved the shape against SDS; 50 did, and the prompt still read (README, Shape guidance)."""
    sigma: float = 0.1
    """Falloff (world units): within about sigma of the guide's surface the prompt decides the shape."""
    points: int = 512
    """Points sampled per step (half uniform in the scene, half near the guide's surface)."""
    grid_resolution: int = 64
    """Side of the grid the guide's signed distance is precomputed on."""

    def __post_init__(self):
        for key in ("sigma", "points", "grid_resolution"):
            if not getattr(self, key) > 0:
                raise UserError(f"shape.{key} must be positive, got {getattr(self, key)}")
        if not self.weight >= 0:
            raise UserError(f"shape.weight must be zero or positive, got {self.weight}")
        if not 8 <= self.grid_resolution <= 256:
            raise UserError(f"shape.grid_resolution must be between 8 and 256, got {self.grid_resolution}")


def shape_loss(occupancy: Tensor, inside: Tensor, distance: Tensor, sigma: float) -> Tensor:
    """The weighted cross-entropy above. occupancy [N] in [0, 1], inside [N] bool, distance [N] >= 0."""
    q = inside.to(occupancy.dtype).clamp(EPS, 1.0 - EPS)
    ce = -(occupancy * q.log() + (1.0 - occupancy) * (1.0 - q).log())
    w = 1.0 - torch.exp(-distance.to(occupancy.dtype) ** 2 / (2.0 * sigma**2))
    return (w * ce).mean()


def load_guide_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] and faces [F, 3] of the guide; one-line UserErrors for a bad file or placement."""
    from dream3d.export.read_mesh import read_mesh

    mesh = read_mesh(path)  # missing, unreadable, no triangles: one line each
    v = mesh.vertices.double().numpy()
    f = mesh.faces.numpy()
    if not np.isfinite(v).all():
        raise UserError(f"{path}: the guide mesh has non-finite vertex positions")
    reach = float(np.abs(v).max())
    if reach > MAX_GUIDE_EXTENT:
        raise UserError(f"{path}: the guide mesh reaches {reach:.3g} from the origin along an axis, outside the "
                        f"scene; it is used as given, so place it in the cube [-1, 1]^3 (+Y up, front +Z)")
    return v, f


def inside_grid(v: np.ndarray, f: np.ndarray, axis: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """[R, R, R] (x, y, z) True inside the surface (v, f) at the grid axis x axis x axis: the winding
    number along rays in +x through each (y, z) column, from signed crossings. Per-point generalised
    winding numbers (export.cleanup) took 100 s for a 1,280-face sphere at 64^3; this takes well under one."""
    res = len(axis)
    # columns nudged off the grid lines, so that no ray runs exactly through an edge of a box-like guide
    ys, zs = np.meshgrid(axis + 1.234567e-7, axis + 2.345678e-7, indexing="ij")
    cols = np.stack([ys.ravel(), zs.ravel()], -1)  # [R^2, 2]
    tri = v[f]  # [F, 3, 3]
    delta = np.zeros((res * res, res + 1))
    step = max(1, chunk // len(cols))
    for i in range(0, len(tri), step):
        t = tri[i:i + step]
        a, b, c = (t[:, k, None, 1:] for k in range(3))  # [n, 1, 2] (y, z) corners
        p = cols[None]
        cross = lambda o, q, r: (q[..., 0] - o[..., 0]) * (r[..., 1] - o[..., 1]) - (q[..., 1] - o[..., 1]) * (r[..., 0] - o[..., 0])  # noqa: E731
        wa, wb, wc = cross(b, c, p), cross(c, a, p), cross(a, b, p)  # [n, R^2]
        area = wa + wb + wc
        hit = ((wa > 0) & (wb > 0) & (wc > 0)) | ((wa < 0) & (wb < 0) & (wc < 0))
        ti, ci = np.nonzero(hit & (area != 0))
        x = (wa[ti, ci] * t[ti, 0, 0] + wb[ti, ci] * t[ti, 1, 0] + wc[ti, ci] * t[ti, 2, 0]) / area[ti, ci]
        start = np.searchsorted(axis, x)  # the grid points beyond the crossing along +x
        np.add.at(delta, (ci, start), np.sign(area[ti, ci]))
    winding = np.cumsum(delta[:, :res], axis=1).reshape(res, res, res)  # [y, z, x]
    return np.abs(winding).transpose(2, 0, 1) > 0.5


class ShapeGuide:
    """The guide's signed-distance grid and its loss on a representation's occupancy."""

    name = "shape"

    def __init__(self, cfg: ShapeConfig, path: Path):
        from scipy.ndimage import distance_transform_edt

        self.cfg, self.path = cfg, Path(path)
        self.vertices, self.faces = load_guide_mesh(self.path)
        v, f = self.vertices, self.faces
        res = cfg.grid_resolution
        axis = np.linspace(-SCENE_BOUND, SCENE_BOUND, res)
        inside = inside_grid(v, f, axis)
        if not inside.any():
            raise UserError(f"{self.path}: the guide mesh encloses no volume inside the scene (is it a closed surface?)")
        cell = 2.0 * SCENE_BOUND / (res - 1)
        # distance to the nearest grid point on the other side; the surface lies about half a cell nearer
        sd = np.where(inside, -(distance_transform_edt(inside) - 0.5), distance_transform_edt(~inside) - 0.5) * cell
        self.sdf = torch.from_numpy(sd).float()  # [R, R, R], axis order x, y, z; negative inside
        tri = torch.from_numpy(v[f]).float()  # [F, 3, 3]
        self.triangles = tri
        self.areas = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)

    @property
    def weight(self) -> float:
        return self.cfg.weight

    def save(self, run_dir: Path) -> str:
        """Write the guide's geometry into the run folder (resume needs the folder alone); its name there."""
        import trimesh

        from dream3d.atomic import write_bytes_atomic

        data = trimesh.Trimesh(self.vertices, self.faces, process=False).export(file_type="ply")
        write_bytes_atomic({Path(run_dir) / SAVED_NAME: data}, what="writing the shape guide")
        return SAVED_NAME

    def signed_distance(self, points: Tensor) -> Tensor:
        """Signed distance [N] to the guide's surface (negative inside) at world points [N, 3]."""
        grid = (points.detach().cpu().float() / SCENE_BOUND).flip(-1).view(1, -1, 1, 1, 3)  # grid_sample wants z, y, x
        sd = F.grid_sample(self.sdf[None, None], grid, align_corners=True, padding_mode="border")
        return sd.view(-1).to(points.device)

    def sample_points(self, n: int, generator: torch.Generator) -> Tensor:
        """[n, 3] points: half uniform in the scene cube, half within about sigma of the guide's surface."""
        n_near = n // 2
        uniform = (torch.rand(n - n_near, 3, generator=generator) * 2.0 - 1.0) * SCENE_BOUND
        tri = self.triangles[torch.multinomial(self.areas, n_near, replacement=True, generator=generator)]
        a, b = torch.rand(2, n_near, 1, generator=generator)
        root = a.sqrt()  # uniform over each triangle
        surface = (1 - root) * tri[:, 0] + root * (1 - b) * tri[:, 1] + root * b * tri[:, 2]
        near = surface + self.cfg.sigma * torch.randn(n_near, 3, generator=generator)
        return torch.cat([uniform, near.clamp(-SCENE_BOUND, SCENE_BOUND)])

    def __call__(self, rep, generator: torch.Generator, step: int = 0, progress: float = 0.0) -> Tensor | None:
        """The shape loss of `rep` at freshly sampled points; None when its geometry is frozen
        (the same at every step: `step` and `progress` are the trainer's regulariser arguments)."""
        device = next(iter(rep.parameters())).device
        points = self.sample_points(self.cfg.points, generator).to(device)
        occupancy = rep.occupancy_at(points)
        if not occupancy.requires_grad:  # e.g. a DMTet texture stage: nothing the guide could move
            return None
        sd = self.signed_distance(points)
        return shape_loss(occupancy, sd < 0, sd.abs(), self.cfg.sigma)


def occupancy_from_density(density: Tensor, level: float) -> Tensor:
    """1 - exp(-density * ln2 / level): occupancy one half at the density of the exported isosurface."""
    return 1.0 - torch.exp(-density * (math.log(2.0) / level))


def guide_for(cfg, run_dir: Path | None) -> ShapeGuide | None:
    """The run's guide (None without one), refused before training when a stage's representation
    has no occupancy field. `run_dir`: the folder of a resumed run, whose config names its copy."""
    from dream3d import registry

    if not cfg.shape.mesh:
        return None
    for stage in cfg.stages:
        rep_name = stage.representation.name
        if not registry.lookup("representation", rep_name).cls().has("occupancy_at"):
            raise UserError(f"--shape: stage '{stage.name}' uses the representation '{rep_name}', which has no "
                            "occupancy field a shape guide can steer")
    path = Path(cfg.shape.mesh)
    if run_dir is not None and not path.is_absolute():
        path = Path(run_dir) / path
    return ShapeGuide(cfg.shape, path)
