"""3D Gaussian splatting (3DGS / DreamGaussian): N anisotropic Gaussians with a
mean, log-scales, a wxyz quaternion, an opacity logit and SH colour coefficients.

Rendering goes through `dream3d.render.splat` (gsplat on CUDA, the tile rasteriser
on the CPU). Colours are shaded per Gaussian before compositing, with each
Gaussian's normal taken as its shortest axis turned towards the camera.
Densification follows 3DGS / gsplat's default strategy: Gaussians whose projected
centres receive large average gradients are cloned (small) or split in two (large),
then faint or huge ones are pruned; opacities can be reset periodically. These
change the number of Gaussians: `on_step` takes the optimiser and swaps the new
Parameters and their resized Adam moments into it (as gsplat's strategies do).
`load_state_dict` resizes the parameters in place to the checkpoint's count.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
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
from dream3d.representations import gaussian_ply
from dream3d.representations.base import Representation
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
        self._last: tuple[Tensor, Tensor, int, int] | None = None
        self._warned = False
        self.reset_stats()
        self.initialize(self.random_points(cfg.n_init))

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

    # ------------------------------------------------------------ rendering
    def albedo(self, dirs: Tensor | None = None) -> Tensor:
        """Colours in [0, 1]: [N, 3] for degree 0, else [C, N, 3] seen along dirs [C, N, 3]."""
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
            albedo = self.albedo(to_gauss if c.sh_degree > 0 else None).expand_as(normal)
        if light_dir is None:
            light_dir = eye / eye.norm(dim=-1, keepdim=True)
        colour = shade(albedo, normal, light_dir[:, None, :].to(means.dtype), c.ambient, c.diffuse, shading)
        features = torch.cat([colour, dist, normal], -1)  # [B, N, 7]
        res = splat(means, self.quats, self.log_scales.exp(), torch.sigmoid(self.opacity_logits), features, cams,
                    c.eps2d, c.near_plane, c.tile_size)
        if res.means2d.requires_grad:
            self._last = (res.means2d, res.drawn, W, H)
        alpha = res.alpha
        bg = background[:, None, None, :] if background.dim() == 2 else background
        rgb = res.image[..., :3] + (1.0 - alpha) * bg.to(alpha.dtype)
        sparsity = (alpha**2 + 0.01).sqrt().mean()
        return RenderOutput(rgb=rgb, alpha=alpha, depth=res.image[..., 3:4], normal=res.image[..., 4:7],
                            extras={"opacity": sparsity})

    # ------------------------------------------------------------ training hooks
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        colors = [self.sh0] + ([self.sh_rest] if self.cfg.sh_degree > 0 else [])
        return {"means": [self.means], "scales": [self.log_scales], "rotations": [self.quats],
                "opacities": [self.opacity_logits], "colors": colors}

    def reset_stats(self) -> None:
        n, dev = self.means.shape[0], self.means.device
        self.grad_sum = torch.zeros(n, device=dev)  # summed projected-centre gradient norms
        self.grad_count = torch.zeros(n, device=dev)  # views in which each Gaussian was drawn

    @torch.no_grad()
    def accumulate_stats(self) -> None:
        """Add the last render's projected-centre gradients (gsplat's normalisation:
        pixels -> NDC, times the number of cameras the loss averaged over)."""
        if self._last is None or self._last[0].grad is None or self._last[1].shape[1] != self.num_gaussians:
            return
        means2d, drawn, W, H = self._last
        C = means2d.shape[0]
        scale = means2d.new_tensor([0.5 * W * C, 0.5 * H * C])
        norms = (means2d.grad * scale).norm(dim=-1) * drawn  # [C, N]
        if self.grad_sum.shape[0] != self.num_gaussians or self.grad_sum.device != norms.device:
            self.reset_stats()
        self.grad_sum += norms.sum(0)
        self.grad_count += drawn.sum(0)
        self._last = None

    def on_step(self, step: int, progress: float, out: RenderOutput,
                optimizer: torch.optim.Optimizer | None = None) -> None:
        """Densify, prune and reset opacities on schedule; `optimizer` (holding these
        parameters) has its Adam moments resized along with them."""
        if not self.training:
            return
        self.accumulate_stats()
        c = self.cfg
        if not (c.densify_from <= progress < c.densify_until) or step <= 0:
            return
        if c.densify_every and step % c.densify_every == 0:
            if optimizer is None:  # the trainer's optimiser would keep the old parameters
                if not self._warned:
                    warnings.warn("Gaussians.on_step needs the optimizer to densify; densification is skipped",
                                  stacklevel=2)
                    self._warned = True
            else:
                self.densify_and_prune(optimizer)
        if c.reset_opacity_every and step % c.reset_opacity_every == 0:
            self.reset_opacity(optimizer)

    @torch.no_grad()
    def densify_and_prune(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
        """Clone small / split large Gaussians with a high average projected gradient,
        then drop faint or huge ones; returns the counts of each and the new total.
        The parameters are replaced: pass the optimiser holding them (it is updated in
        place, as gsplat's strategies do) or build a new one from `param_groups()`."""
        c = self.cfg
        grads = self.grad_sum / self.grad_count.clamp(min=1)
        size = self.log_scales.exp().max(-1).values
        grow = grads > c.grad_threshold
        room = max(0, c.max_gaussians - self.num_gaussians)  # each clone or split adds one Gaussian
        if int(grow.sum()) > room:
            top = grads.masked_fill(~grow, -1.0).topk(room).indices
            grow = torch.zeros_like(grow).index_fill_(0, top, True)
        clone, split = grow & (size <= c.split_scale), grow & (size > c.split_scale)
        n_clone, n_split = int(clone.sum()), int(split.sum())
        idx = split.nonzero().squeeze(1)
        scales = self.log_scales[idx].exp()
        noise = torch.randn(2, len(idx), 3, 1, device=scales.device)
        offsets = (_quat_to_rotmat(self.quats[idx]) @ (scales[None, :, :, None] * noise))[..., 0]  # N(0, Sigma)
        children = {name: getattr(self, name)[idx].repeat(2, *[1] * (getattr(self, name).dim() - 1)) for name in PARAMS}
        children["means"] = (self.means[idx][None] + offsets).reshape(-1, 3)
        children["log_scales"] = (scales / 1.6).log().repeat(2, 1)  # 3DGS: two children 1.6 times smaller
        clones = {name: getattr(self, name)[clone] for name in PARAMS}
        extra = {name: torch.cat([clones[name], children[name]]) for name in PARAMS}
        self._rebuild((~split).nonzero().squeeze(1), extra, optimizer)
        too_big = self.log_scales.exp().max(-1).values > c.prune_scale
        prune = (torch.sigmoid(self.opacity_logits) < c.prune_opacity) | too_big
        n_prune = int(prune.sum())
        if n_prune:
            self._rebuild((~prune).nonzero().squeeze(1), {}, optimizer)
        self.reset_stats()
        return {"cloned": n_clone, "split": n_split, "pruned": n_prune, "total": self.num_gaussians}

    @torch.no_grad()
    def reset_opacity(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Lower every opacity to at most reset_opacity_value and forget its Adam moments."""
        v = self.cfg.reset_opacity_value
        self.opacity_logits.data.clamp_(max=math.log(v / (1.0 - v)))
        state = optimizer.state.get(self.opacity_logits, {}) if optimizer is not None else {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == self.opacity_logits.shape:
                value.zero_()

    def _rebuild(self, keep: Tensor, extra: dict[str, Tensor], optimizer: torch.optim.Optimizer | None) -> None:
        """Keep the Gaussians `keep` [M] and append `extra` (per parameter). Each parameter
        becomes a new Parameter (resizing one in place would break autograd graphs still
        holding it); the optimiser's references and Adam moments follow (zeros for new rows)."""
        for name, old in self._params().items():
            add = extra.get(name, old.data[:0])
            new = nn.Parameter(torch.cat([old.data[keep], add]), requires_grad=old.requires_grad)
            if optimizer is not None:
                for group in optimizer.param_groups:
                    group["params"] = [new if q is old else q for q in group["params"]]
                state = optimizer.state.pop(old, None)
                if state is not None:
                    optimizer.state[new] = {
                        k: torch.cat([v[keep], v.new_zeros((add.shape[0],) + v.shape[1:])])
                        if torch.is_tensor(v) and v.shape == old.shape else v
                        for k, v in state.items()
                    }
            setattr(self, name, new)
        self._last = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Resize the parameters to the checkpoint's number of Gaussians first, in place so
        an optimiser built before the checkpoint is loaded still holds them."""
        for name, p in self._params().items():
            value = state_dict.get(prefix + name)
            if torch.is_tensor(value) and value.shape != p.shape and value.shape[1:] == p.shape[1:]:
                p.data = torch.empty(value.shape, dtype=p.dtype, device=p.device)
                p.grad = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.reset_stats()
        self._last = None

    # ------------------------------------------------------------ files
    def to_splat_arrays(self) -> gaussian_ply.SplatArrays:
        t = lambda x: x.detach().float().cpu().numpy()  # noqa: E731
        return gaussian_ply.SplatArrays(t(self.means), t(self.log_scales), t(F.normalize(self.quats, dim=-1)),
                                        t(self.opacity_logits), t(self.sh0[:, 0]), t(self.sh_rest))

    def save_ply(self, path: Path) -> Path:
        """Write the standard 3DGS PLY that splat viewers open."""
        return gaussian_ply.write_ply(path, self.to_splat_arrays())

    @torch.no_grad()
    def load_ply(self, path: Path) -> None:
        """Replace every Gaussian by those of a 3DGS PLY file (SH bands beyond sh_degree are dropped)."""
        s = gaussian_ply.read_ply(path)
        n_rest = self.sh_rest.shape[1]
        rest = np.zeros((len(s), n_rest, 3), np.float32)
        rest[:, : min(n_rest, s.sh_rest.shape[1])] = s.sh_rest[:, :n_rest]
        values = [s.means, s.log_scales, s.quats, s.opacity_logits, s.sh_dc[:, None, :], rest]
        for name, v in zip(PARAMS, values):
            p = getattr(self, name)
            p.data = torch.from_numpy(np.ascontiguousarray(v)).to(p.device, p.dtype)
        self.reset_stats()

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
        colour = self.albedo()
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
    def extract_mesh(self, resolution: int) -> Mesh:
        """Marching cubes on the Gaussian density; vertex colours are the density-weighted
        mean colour of the Gaussians around each vertex (trilinear from the grid)."""
        from skimage.measure import marching_cubes

        if self.num_gaussians == 0:
            raise UserError("there are no Gaussians: there is no surface to export")
        r, res = self.cfg.mesh_bound, resolution
        density, weighted = self.density_grid(res)
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
