"""3D Gaussian splatting (3DGS / DreamGaussian): N anisotropic Gaussians with a
mean, log-scales, a wxyz quaternion, an opacity logit and SH colour coefficients.

Rendering goes through `dream3d.render.splat` (gsplat on CUDA, the tile rasteriser
on the CPU). Colours are shaded per Gaussian before compositing, with each
Gaussian's normal taken as its shortest axis turned towards the camera.
Rendering has no side effects: what densification needs (the projected centres,
whose gradient is retained, and which Gaussians were drawn) travels in the output's
`info`. Densification is `gaussian_strategy.DensifyStrategy` (3DGS / gsplat's default
strategy): `on_step` hands it the parameters, the optimiser (whose parameters and
Adam moments it swaps when the number of Gaussians changes), the render's info and
the strategy's state, which lives here in buffers (gradient statistics and the split
generator's state), so checkpoints carry it and a resumed run is exact.
`load_state_dict` resizes the parameters in place to the checkpoint's count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from dream3d.render.gaussian_math import (quat_scale_to_covar_preci as _quat_scale_to_covar_preci,
                                          quat_to_rotmat as _quat_to_rotmat,
                                          spherical_harmonics as _spherical_harmonics)
from torch import Tensor, nn

from dream3d.errors import UserError
from dream3d.render.shading import SHADING_MODES, shade
from dream3d.render.splat import splat
from dream3d.representations import gaussian_ply, gaussian_strategy
from dream3d.representations.base import Representation
from dream3d.representations.gaussian_strategy import STATE_KEYS, DensifyStrategy
from dream3d.types import Cameras, Mesh, RenderOutput

SH_C0 = gaussian_ply.SH_C0
PARAMS = ("means", "log_scales", "quats", "opacity_logits", "sh0", "sh_rest")


@dataclass
class GaussianConfig:
    n_init: int = 5000
    """Gaussians created at initialisation (random points in the init shape)."""
    init_shape: Literal["sphere", "box"] = "sphere"
    """Where the initial points are drawn uniformly: a ball or a cube around the origin."""
    init_radius: float = 0.5
    """Radius of the initial ball (half side of the cube)."""
    init_opacity: float = 0.1
    """Opacity of new Gaussians at initialisation."""
    init_scale: float = 0.0
    """Initial scale in world units (0 = mean distance to the 3 nearest neighbours)."""
    sh_degree: int = 0
    """Spherical-harmonics degree of the colours (0 = view-independent, up to 3)."""
    eps2d: float = 0.3
    """Variance in pixels^2 added to every projected Gaussian (anti-aliasing floor)."""
    near_plane: float = 0.01
    """Gaussians closer to the camera than this are not drawn."""
    tile_size: int = 4
    """Tile side in pixels of the CPU rasteriser."""
    ambient: float = 0.4
    """Ambient light strength (diffuse and textureless shading)."""
    diffuse: float = 0.6
    """Diffuse (Lambertian) light strength."""
    densify_from: float = 0.05
    """Fraction of the run after which densification starts."""
    densify_until: float = 0.6
    """Fraction of the run after which the number of Gaussians is frozen."""
    densify_every: int = 50
    """Steps between densify-and-prune passes (0 = never)."""
    grad_threshold: float = 0.01
    """Average norm of the projected-centre gradient (NDC units, as 3DGS) above which a Gaussian grows."""
    split_scale: float = 0.04
    """Largest axis (world units) above which a growing Gaussian is split in two, below which it is cloned."""
    prune_opacity: float = 0.01
    """Gaussians fainter than this are removed at each densify pass."""
    prune_scale: float = 0.4
    """Gaussians whose largest axis exceeds this (world units) are removed."""
    max_gaussians: int = 20000
    """Upper bound on the number of Gaussians (keeps CPU steps bounded)."""
    reset_opacity_every: int = 0
    """Steps between opacity resets inside the densify window (0 = never: short SDS runs cannot regrow them)."""
    reset_opacity_value: float = 0.01
    """Opacities are lowered to at most this at a reset."""
    mesh_bound: float = 1.0
    """Half side of the cube searched for the exported isosurface."""
    mesh_threshold: float = 0.5
    """Summed Gaussian density of the exported isosurface (lowered to half the peak when nothing reaches it)."""
    mesh_smoothing: float = 0.02
    """Std of the Gaussian blur (world units) applied to the density before its isosurface is taken (0 = none):
    splats leave lumps a few cells wide. 0.04 made the default's surfaces smooth and watertight but rounded a
    cube until it read as a cylinder; 0.02 kept it a cube (README, Geometry)."""
    mesh_closing: float = 0.06
    """Half side (world units) of the cube with which the density is closed (dilated, then eroded) before the
    blur (0 = none): fills pits and tunnels narrower than it, which splats leave between them, and leaves
    convex edges and wider holes (a torus's) as they are. 0.06 removed the spurious handles of the default's
    sphere, cube and pyramid (genus 1-9 -> 0) and kept every torus hole (README, Geometry)."""
    lr: dict[str, float] = field(default_factory=lambda: {
        "means": 1e-3, "scales": 5e-3, "rotations": 1e-3, "opacities": 5e-2, "colors": 1e-2})
    """Adam learning rate per parameter group."""
    loss_weights: dict[str, float] = field(default_factory=lambda: {"opacity": 1e-3})
    """Weight of each regulariser in extras (opacity sparsity)."""


def nearest_neighbour_scale(points: Tensor, k: int = 3) -> Tensor:
    """[P] root of the mean squared distance to the k nearest other points (3DGS's initial scale)."""
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().double().numpy()
    if len(pts) <= 1:
        return torch.full((len(pts),), 0.01)
    dist, _ = cKDTree(pts).query(pts, k=min(k, len(pts) - 1) + 1)
    return torch.from_numpy(np.sqrt((dist[:, 1:] ** 2).mean(1))).float()


class Gaussians(Representation):
    def __init__(self, cfg: GaussianConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or GaussianConfig()
        if not 0 <= cfg.sh_degree <= 3:
            raise UserError(f"sh_degree must be between 0 and 3, got {cfg.sh_degree}")
        n_rest = (cfg.sh_degree + 1) ** 2 - 1
        for name, shape in zip(PARAMS, [(0, 3), (0, 3), (0, 4), (0,), (0, 1, 3), (0, n_rest, 3)]):
            setattr(self, name, nn.Parameter(torch.zeros(shape)))
        self.strategy = DensifyStrategy.from_config(cfg)
        for key, value in gaussian_strategy.new_state(0, seed=0).items():  # grad_sum, grad_count, rng_state
            self.register_buffer(key, value)
        self.initialize(self.random_points(cfg.n_init))
        # Split offsets come from their own generator, seeded from the global RNG (which the
        # pipeline seeds per run) and saved with the module: resuming never depends on global draws.
        self.rng_state = torch.Generator().manual_seed(int(torch.randint(2**62, ()))).get_state()

    # ------------------------------------------------------------ initialisation
    def random_points(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """[n, 3] uniform in the configured ball or cube (a generic start, never a prompt's shape)."""
        r = self.cfg.init_radius
        if self.cfg.init_shape == "box":
            return (torch.rand(n, 3, generator=generator) * 2.0 - 1.0) * r
        d = F.normalize(torch.randn(n, 3, generator=generator), dim=-1)
        return d * r * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)

    @torch.no_grad()
    def initialize(self, points: Tensor, colors: Tensor | None = None, opacity: float | None = None) -> None:
        """Replace every Gaussian by one isotropic Gaussian per point [P, 3] (e.g. sampled
        from a NeRF's density or a mesh surface), coloured colors [P, 3] in [0, 1] (grey if None)."""
        c = self.cfg
        dev = self.means.device
        points = points.detach().float().to(dev)
        n = points.shape[0]
        if n == 0:
            raise UserError("cannot initialise Gaussians from an empty point set")
        scale = torch.full((n,), c.init_scale) if c.init_scale > 0 else nearest_neighbour_scale(points)
        scale = scale.clamp(1e-4, max(c.init_radius, 1e-3)).to(dev)
        rgb = torch.full((n, 3), 0.5, device=dev) if colors is None else colors.detach().float().to(dev).clamp(0, 1)
        o = c.init_opacity if opacity is None else opacity
        values = {
            "means": points,
            "log_scales": scale.log()[:, None].expand(n, 3),
            "quats": torch.tensor([1.0, 0.0, 0.0, 0.0], device=dev).expand(n, 4),
            "opacity_logits": torch.full((n,), math.log(o / (1.0 - o)), device=dev),
            "sh0": ((rgb - 0.5) / SH_C0)[:, None, :],
            "sh_rest": torch.zeros(n, self.sh_rest.shape[1], 3, device=dev),
        }
        for name in PARAMS:
            getattr(self, name).data = values[name].contiguous().clone()
        self.reset_stats()

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    def _params(self) -> dict[str, nn.Parameter]:
        return {name: getattr(self, name) for name in PARAMS}

    def _strategy_state(self) -> dict[str, Tensor]:
        return {key: getattr(self, key) for key in STATE_KEYS}

    # ------------------------------------------------------------ rendering
    def colours(self, dirs: Tensor | None = None) -> Tensor:
        """Per-Gaussian colours in [0, 1]: [N, 3] for degree 0 (or without dirs), else
        [C, N, 3] seen along dirs [C, N, 3]. (Not an albedo field: that takes world points.)"""
        if self.cfg.sh_degree == 0 or dirs is None:
            return (SH_C0 * self.sh0[:, 0] + 0.5).clamp(0.0, 1.0)
        coeffs = torch.cat([self.sh0, self.sh_rest], 1).expand(dirs.shape[0], -1, -1, -1)
        return (_spherical_harmonics(self.cfg.sh_degree, dirs, coeffs) + 0.5).clamp(0.0, 1.0)

    def render(self, cams: Cameras, background: Tensor, shading: str = "diffuse",
               light_dir: Tensor | None = None) -> RenderOutput:
        """background [B, 3] solid colours or [B, H, W, 3] images; light_dir [B, 3]
        towards the light (default: from the camera)."""
        if shading not in SHADING_MODES:
            raise ValueError(f"unknown shading {shading!r}; expected one of {', '.join(SHADING_MODES)}")
        c = self.cfg
        H, W = cams.height, cams.width
        means = self.means
        eye = cams.c2w[:, :3, 3].to(means.dtype)  # [B, 3]
        to_gauss = means[None] - eye[:, None]  # [B, N, 3]
        dist = to_gauss.norm(dim=-1, keepdim=True)
        # Normal: the shortest axis, turned towards the camera.
        axes = _quat_to_rotmat(self.quats)  # [N, 3, 3], columns are the axes
        shortest = self.log_scales.detach().argmin(-1)
        normal = axes.gather(2, shortest[:, None, None].expand(-1, 3, 1))[..., 0]  # [N, 3]
        facing = torch.where((normal[None] * to_gauss).sum(-1, keepdim=True) > 0, -1.0, 1.0)
        normal = normal[None] * facing  # [B, N, 3]
        if shading == "textureless":
            albedo = torch.ones_like(normal)
        else:
            albedo = self.colours(to_gauss if c.sh_degree > 0 else None).expand_as(normal)
        if light_dir is None:
            light_dir = eye / eye.norm(dim=-1, keepdim=True)
        colour = shade(albedo, normal, light_dir[:, None, :].to(means.dtype), c.ambient, c.diffuse, shading)
        features = torch.cat([colour, dist, normal], -1)  # [B, N, 7]
        res = splat(means, self.quats, self.log_scales.exp(), torch.sigmoid(self.opacity_logits), features, cams,
                    c.eps2d, c.near_plane, c.tile_size)
        alpha = res.alpha
        bg = background[:, None, None, :] if background.dim() == 2 else background
        rgb = res.image[..., :3] + (1.0 - alpha) * bg.to(alpha.dtype)
        sparsity = (alpha**2 + 0.01).sqrt().mean()
        return RenderOutput(rgb=rgb, alpha=alpha, depth=res.image[..., 3:4], normal=res.image[..., 4:7],
                            extras={"opacity": sparsity},
                            info=gaussian_strategy.render_info(res.means2d, res.drawn, W, H))

    # ------------------------------------------------------------ training hooks
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        colors = [self.sh0] + ([self.sh_rest] if self.cfg.sh_degree > 0 else [])
        return {"means": [self.means], "scales": [self.log_scales], "rotations": [self.quats],
                "opacities": [self.opacity_logits], "colors": colors}

    def reset_stats(self) -> None:
        """Clear the densification statistics (sized to the current Gaussians)."""
        n, dev = self.means.shape[0], self.means.device
        self.grad_sum = torch.zeros(n, device=dev)  # summed projected-centre gradient norms
        self.grad_count = torch.zeros(n, device=dev)  # views in which each Gaussian was drawn

    def _densify(self, run):
        """run(params, state) with the strategy's state from the buffers; adopts the
        parameters and state it leaves behind (new objects when the number changed)."""
        params, state = self._params(), self._strategy_state()
        result = run(params, state)
        for name, value in {**params, **state}.items():
            setattr(self, name, value)
        return result

    def on_step(self, step: int, progress: float, out: RenderOutput,
                optimizer: torch.optim.Optimizer | None = None) -> None:
        """Densify, prune and reset opacities on the strategy's schedule from the render's
        `out.info`; `optimizer` (holding these parameters) has its Adam moments resized along with them."""
        if self.training:
            self._densify(lambda p, s: self.strategy.step_post_backward(p, optimizer, s, step, progress, out.info))

    def densify_and_prune(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
        """One densify-and-prune pass now (see `DensifyStrategy.densify_and_prune`). The
        parameters are replaced: pass the optimiser holding them (updated in place) or
        build a new one from `param_groups()`."""
        return self._densify(lambda p, s: self.strategy.densify_and_prune(p, optimizer, s))

    def reset_opacity(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Lower every opacity to at most reset_opacity_value and forget its Adam moments."""
        gaussian_strategy.reset_opacity(self._params(), optimizer, self.cfg.reset_opacity_value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Resize the parameters and statistics to the checkpoint's number of Gaussians first,
        in place so an optimiser built before the checkpoint is loaded still holds them. A
        checkpoint written before the densification state was saved loads with cleared statistics."""
        means = state_dict.get(prefix + "means")
        n = means.shape[0] if torch.is_tensor(means) else self.num_gaussians
        for key, value in {**gaussian_strategy.new_state(n, seed=0), "rng_state": self.rng_state}.items():
            state_dict.setdefault(prefix + key, value)
        for name, p in {**self._params(), **self._strategy_state()}.items():
            value = state_dict.get(prefix + name)
            if torch.is_tensor(value) and value.shape != p.shape and value.shape[1:] == p.shape[1:]:
                p.data = torch.empty(value.shape, dtype=p.dtype, device=p.device)
                p.grad = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------ files
    def to_splat_arrays(self) -> gaussian_ply.SplatArrays:
        t = lambda x: x.detach().float().cpu().numpy()  # noqa: E731
        return gaussian_ply.SplatArrays(t(self.means), t(self.log_scales), t(F.normalize(self.quats, dim=-1)),
                                        t(self.opacity_logits), t(self.sh0[:, 0]), t(self.sh_rest))

    def save_splats(self, path: Path) -> Path:
        """Write the standard 3DGS PLY that splat viewers open."""
        return gaussian_ply.write_ply(path, self.to_splat_arrays())

    def occupancy_at(self, points: Tensor) -> Tensor:
        """Occupancy [N] at world points [N, 3] from the summed opacity-weighted Gaussian density
        (as `density_grid`: each Gaussian within 3 sigma of its largest axis): one half at mesh_threshold."""
        from dream3d.guidance.shape_guide import occupancy_from_density

        _, precis = _quat_scale_to_covar_preci(self.quats, self.log_scales.exp(), compute_covar=False)
        with torch.no_grad():  # only the pairs in reach: a few percent of points x Gaussians
            reach = 3.0 * self.log_scales.exp().max(-1).values
            pi, gi = (torch.cdist(points, self.means) < reach[None]).nonzero(as_tuple=True)
        d = points[pi] - self.means[gi]  # [P, 3]
        q = torch.einsum("pi,pij,pj->p", d, precis[gi], d)
        w = torch.sigmoid(self.opacity_logits)[gi] * torch.exp(-0.5 * q)
        density = points.new_zeros(len(points)).index_add(0, pi, w)
        return occupancy_from_density(density, self.cfg.mesh_threshold)

    # ------------------------------------------------------------ export
    @torch.no_grad()
    def density_grid(self, resolution: int, chunk: int = 1 << 21) -> tuple[Tensor, Tensor]:
        """Summed opacity-weighted Gaussian density [R, R, R] on the cube's grid points
        (axis order x, y, z), and the sum of density times colour there [R, R, R, 3].
        Each Gaussian is evaluated on the grid points within 3 sigma of its largest axis."""
        r = self.cfg.mesh_bound
        dev = self.means.device
        res = resolution
        cell = 2.0 * r / (res - 1)
        _, precis = _quat_scale_to_covar_preci(self.quats, self.log_scales.exp(), compute_covar=False)
        opac = torch.sigmoid(self.opacity_logits)
        colour = self.colours()
        reach = (3.0 * self.log_scales.exp().max(-1).values / cell).ceil().clamp(0, res).long()
        centre = ((self.means + r) / cell).round().long()
        density = torch.zeros(res**3, device=dev)
        weighted = torch.zeros(res**3, 3, device=dev)
        order = reach.argsort()
        i = 0
        while i < len(order):  # Gaussians of equal reach share one block of offsets
            k = int(reach[order[i]])
            if 2 * k + 1 < res:
                side = torch.arange(-k, k + 1, device=dev)
            else:  # reaching across the grid: the grid itself bounds the work
                side, k = torch.arange(res, device=dev), res
            block = torch.stack(torch.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3)
            ids = order[i: i + max(1, chunk // len(block))]
            ids = ids[reach[ids] <= k]
            i += len(ids)
            cells = block[None] if k == res else centre[ids, None, :] + block[None]  # [n or 1, K, 3]
            inside = ((cells >= 0) & (cells < res)).all(-1)
            d = cells.float() * cell - r - self.means[ids, None, :]
            q = torch.einsum("nki,nij,nkj->nk", d, precis[ids], d)
            w = opac[ids, None] * torch.exp(-0.5 * q) * inside
            flat = ((cells[..., 0] * res + cells[..., 1]) * res + cells[..., 2]).clamp(0, res**3 - 1)
            flat = flat.expand(w.shape).reshape(-1)
            density.index_add_(0, flat, w.reshape(-1))
            weighted.index_add_(0, flat, (w[..., None] * colour[ids, None, :]).reshape(-1, 3))
        return density.view(res, res, res), weighted.view(res, res, res, 3)

    @torch.no_grad()
    def surface_grid(self, resolution: int) -> tuple[Tensor, Tensor]:
        """`density_grid` closed by `mesh_closing`, then blurred by `mesh_smoothing` (density and
        density x colour alike, so colours stay weighted means): the field whose isosurface becomes a mesh."""
        from scipy.ndimage import gaussian_filter, grey_closing

        density, weighted = self.density_grid(resolution)
        cell = 2.0 * self.cfg.mesh_bound / (resolution - 1)
        numpy_op = lambda op, x, **kw: torch.from_numpy(op(x.cpu().numpy(), **kw)).to(x)  # noqa: E731
        k = round(self.cfg.mesh_closing / cell)  # half side in grid cells
        if k > 0:  # a cube footprint: scipy closes it as separable 1-D passes, ~0.1 s at 96^3
            side = 2 * k + 1
            density = numpy_op(grey_closing, density, size=(side,) * 3, mode="nearest")
            weighted = numpy_op(grey_closing, weighted, size=(side,) * 3 + (1,), mode="nearest")
        sigma = self.cfg.mesh_smoothing / cell  # in grid cells
        if sigma <= 0:
            return density, weighted
        return (numpy_op(gaussian_filter, density, sigma=sigma, mode="constant"),
                numpy_op(gaussian_filter, weighted, sigma=(sigma, sigma, sigma, 0), mode="constant"))

    @torch.no_grad()
    def extract_mesh(self, resolution: int) -> Mesh:
        """Marching cubes on the Gaussian density; vertex colours are the density-weighted
        mean colour of the Gaussians around each vertex (trilinear from the grid)."""
        from skimage.measure import marching_cubes

        if self.num_gaussians == 0:
            raise UserError("there are no Gaussians: there is no surface to export")
        r, res = self.cfg.mesh_bound, resolution
        density, weighted = self.surface_grid(res)
        peak = float(density.max())
        level = self.cfg.mesh_threshold if peak > self.cfg.mesh_threshold else 0.5 * peak
        if not peak > 1e-6 or not torch.isfinite(density).all():
            raise UserError("the Gaussians' density is empty: there is no surface to export")
        padded = F.pad(density.float().cpu(), (1, 1, 1, 1, 1, 1), value=0.0)  # closes surfaces cut by the cube
        spacing = 2.0 * r / (res - 1)
        verts, faces, _, _ = marching_cubes(padded.numpy(), level=level, spacing=(spacing,) * 3)
        if len(faces) == 0:
            raise UserError(f"the isosurface at density {level:.3g} is empty: there is no surface to export")
        verts = torch.from_numpy(verts.copy()).float() - (r + spacing)
        faces = torch.from_numpy(faces.copy().astype("int64"))[:, [0, 2, 1]]  # counter-clockwise seen from outside
        # Interpolate density-times-colour and density, then divide (empty cells must not darken).
        # grid_sample wants (x, y, z) to index (W, H, D): our grid is [x, y, z], so pass (z, y, x).
        grid = (verts / r).flip(-1).view(1, -1, 1, 1, 3).to(weighted.device)
        fields = torch.cat([weighted, density[..., None]], -1).permute(3, 0, 1, 2)[None].float()
        sampled = F.grid_sample(fields, grid, align_corners=True, padding_mode="border").view(4, -1).t().cpu()
        colours = sampled[:, :3] / sampled[:, 3:].clamp(min=1e-12)
        return Mesh(verts, faces, colours.clamp(0.0, 1.0))
