"""Hash-grid NeRF: a multiresolution hash encoding read by a density MLP and an
albedo MLP, rendered by volume rendering with Lambertian shading. The encoding and
the albedo MLP are the shared `fields.HashGridAlbedo` (the DMTet's texture field, so
a NeRF's albedo copies into a DMTet); the density MLP reads that field's features.

The scene lives in the cube [-radius, radius]^3. At initialisation a density blob
(Magic3D: bias = blob_density * (1 - |x| / blob_radius)) gives SDS something to
shape. Normals are the negative normalised density gradient: "analytic" combines
the hash encoding's spatial Jacobian with a vector-Jacobian product through the
density MLP, written as plain ops, so the gradients of the normals (shading, the
orientation loss) need no double backward; "finite_difference" uses central
differences (six more density evaluations per sample, about 4x slower).

Empty space is skipped on both devices with nerfacc's occupancy grid (updated in
`on_step`): on CUDA its own sampler marches the rays; on the CPU the rays are
sampled on a regular grid inside the box of occupied cells and only samples in
occupied cells are evaluated, then rendered with nerfacc's batched functions;
a density-only pre-pass drops samples behind opaque surfaces while that pays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import nerfacc
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream3d.errors import UserError
from dream3d.render import volume
from dream3d.render.shading import SHADING_MODES, shade
from dream3d.representations.base import Representation
from dream3d.representations.fields import CHUNK, ColumnMLP, HashGridAlbedo, HashGridConfig
from dream3d.types import Cameras, Mesh, RenderOutput

# The CPU early-stop pre-pass costs about a fifth of what a sample costs with gradients:
# "auto" keeps it while it drops more than this fraction, and re-checks every few renders.
PREPASS_MIN_DROP = 0.25
PREPASS_RECHECK = 8


@dataclass
class NeRFConfig(HashGridConfig):
    """The hash-grid and MLP settings come from HashGridConfig (shared with DMTet's texture)."""

    radius: float = 1.0
    """Half side of the cube [-radius, radius]^3 holding the object (hash grid and occupancy grid span it)."""
    samples_per_ray: int = 48
    """Samples along a ray crossing the cube's side; sets the step 2 * radius / samples_per_ray."""
    density_activation: Literal["softplus", "exp"] = "softplus"
    """Density activation: softplus, or exp with a truncated gradient."""
    blob_density: float = 10.0
    """Density logit added at the centre at initialisation (0 = no blob)."""
    blob_radius: float = 0.5
    """Radius where the blob's logit bias reaches zero."""
    normals: Literal["analytic", "finite_difference"] = "analytic"
    """Normals from the analytic density gradient or from central finite differences."""
    finite_difference_eps: float = 0.01
    """Step of the finite-difference normals (world units)."""
    ambient: float = 0.4
    """Ambient light strength (diffuse and textureless shading)."""
    diffuse: float = 0.6
    """Diffuse (Lambertian) light strength."""
    occupancy_resolution: int = 32
    """Cells per axis of the occupancy grid used to skip empty space."""
    occupancy_threshold: float = 0.01
    """A cell is occupied when density * step exceeds this (or the mean, if lower)."""
    occupancy_update_every: int = 16
    """Update the occupancy grid every N training steps."""
    occupancy_warmup_steps: int = 256
    """Steps during which every cell is re-evaluated at each update."""
    early_stop_eps: float = 1e-4
    """Drop samples whose transmittance is below this (0 = off)."""
    cpu_early_stop: Literal["auto", "on", "off"] = "auto"
    """The CPU early stop needs a density-only pre-pass: auto runs it while it drops over a quarter of the samples."""
    mesh_threshold: float = 2.0
    """Density of the exported isosurface (halfway between the field's extremes when nothing reaches it)."""
    lr: dict[str, float] = field(default_factory=lambda: {"encoding": 1e-2, "mlp": 1e-3})
    """Adam learning rate per parameter group: the hash table ('encoding') and both MLPs ('mlp')."""
    loss_weights: dict[str, float] = field(default_factory=lambda: {"orient": 1e-2, "opacity": 1e-3})
    """Weight of each regulariser in extras: normals facing away from the camera, opacity sparsity."""


class HashGridNeRF(Representation):
    albedo_inset = 0.01  # the isosurface at mesh_threshold is the fuzzy edge; its albedo reads darker there

    def __init__(self, cfg: NeRFConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or NeRFConfig()
        # One hash grid read by the density MLP and the albedo head (built in this order: a seed
        # initialises the table, the density MLP, then the albedo MLP).
        encoding = cfg.build_encoding()
        density_mlp = ColumnMLP(encoding.out_dim, cfg.hidden_dim, cfg.hidden_layers, 1)
        self.albedo_field = HashGridAlbedo(cfg.hash_grid(), cfg.radius, encoding)
        self.density_mlp = density_mlp
        r = cfg.radius
        self.occupancy = nerfacc.OccGridEstimator(
            roi_aabb=[-r, -r, -r, r, r, r], resolution=cfg.occupancy_resolution, levels=1
        )
        self.step_size = 2.0 * r / cfg.samples_per_ray
        self._update_occupancy(0, every=1)
        # CPU early-stop bookkeeping: renders so far and the fraction the last pre-pass dropped.
        # Buffers, so that a resumed run makes the same choices as an uninterrupted one.
        self.register_buffer("prepass_renders", torch.zeros((), dtype=torch.long))
        self.register_buffer("prepass_drop", torch.ones(()))

    # ------------------------------------------------------------ field
    def _blob(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Blob logit bias [K] and its gradient [3, K] at world points x [3, K]."""
        c = self.cfg
        dist = (x[0] * x[0] + x[1] * x[1] + x[2] * x[2]).sqrt()
        bias = c.blob_density * (1.0 - dist / c.blob_radius)
        grad = x * (-(c.blob_density / c.blob_radius) / dist.clamp(min=1e-6))
        return bias, grad

    def _density_logit(self, x: Tensor) -> Tensor:
        """Density logit [K] at world points [3, K]."""
        raw, _ = self.density_mlp(self.albedo_field.features(x))
        return raw[0] + self._blob(x)[0]

    def _field(self, x: Tensor, want_albedo: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """Density [K], outward unit normal [3, K] and albedo [3, K] (or None) at world points x [3, K]."""
        analytic = self.cfg.normals == "analytic"
        albedo_field = self.albedo_field
        if analytic:
            feat, jac = albedo_field.features(x, with_jacobian=True)  # [D, K], [3, D, K]
            raw, d_raw_d_feat = self.density_mlp(feat, input_grad=True)
            grad = (jac * d_raw_d_feat).sum(1) * albedo_field.scale  # chain rule to world units
        else:
            feat = albedo_field.features(x)
            raw, _ = self.density_mlp(feat)
        bias, bias_grad = self._blob(x)
        logit = raw[0] + bias
        if analytic:
            grad = grad + bias_grad
        else:
            eps = self.cfg.finite_difference_eps
            offsets = eps * torch.cat([torch.eye(3, device=x.device), -torch.eye(3, device=x.device)])  # [6, 3]
            probes = self._density_logit((x[None] + offsets[:, :, None]).transpose(0, 1).reshape(3, -1))
            probes = probes.view(2, 3, -1)
            grad = (probes[0] - probes[1]) / (2.0 * eps)
        sigma = volume.activate_density(logit, self.cfg.density_activation)
        normal = -grad / (grad[0] * grad[0] + grad[1] * grad[1] + grad[2] * grad[2]).sqrt().clamp(min=1e-12)
        albedo = albedo_field.head(feat) if want_albedo else None
        return sigma, normal, albedo

    def query_density(self, points: Tensor) -> Tensor:
        """Density [N] at world points [N, 3]."""
        act = self.cfg.density_activation
        out = [volume.activate_density(self._density_logit(p.t().contiguous()), act) for p in points.split(CHUNK)]
        return torch.cat(out) if out else points.new_zeros(0)

    def albedo(self, points: Tensor) -> Tensor:
        """Albedo [N, 3] in [0, 1] at world points [N, 3]."""
        return self.albedo_field(points)

    def occupancy_at(self, points: Tensor) -> Tensor:
        """Occupancy [N] at world points [N, 3]: 1 - exp(-sigma delta), delta chosen so that the
        exported isosurface's density (mesh_threshold) reads one half."""
        from dream3d.guidance.shape_guide import occupancy_from_density

        return occupancy_from_density(self.query_density(points), self.cfg.mesh_threshold)

    # ------------------------------------------------------------ sampling
    def _occupied_box(self) -> tuple[Tensor, Tensor]:
        """The box of occupied cells, one cell larger on every side (the whole cube if none)."""
        r = self.cfg.radius
        grid = self.occupancy.binaries[0]
        cells = grid.nonzero()
        lo = torch.full((3,), -r, device=grid.device)
        if cells.shape[0] == 0:
            return lo, -lo
        cell = 2.0 * r / torch.tensor(grid.shape, device=grid.device)
        box_min = (-r + (cells.amin(0) - 1) * cell).clamp(min=-r)
        box_max = (-r + (cells.amax(0) + 2) * cell).clamp(max=r)
        return box_min, box_max

    def _sample(self, origins: Tensor, dirs: Tensor) -> volume.RaySamples:
        """Samples [K] along rays origins, dirs [R, 3], in occupied space only."""
        n_rays = origins.shape[0]
        jitter = self.training and torch.is_grad_enabled()
        eps = self.cfg.early_stop_eps

        def density_at(samples: volume.RaySamples) -> Tensor:
            x = origins[samples.ray_indices] + samples.midpoints[:, None] * dirs[samples.ray_indices]
            return self.query_density(x)

        if origins.is_cuda:  # nerfacc's marching kernels
            def sigma_fn(t_starts, t_ends, ray_indices):
                return density_at(volume.RaySamples(ray_indices.long(), t_starts, t_ends, n_rays))

            ray_indices, t_starts, t_ends = self.occupancy.sampling(
                origins, dirs, sigma_fn=sigma_fn if eps > 0 else None, render_step_size=self.step_size,
                stratified=jitter, early_stop_eps=eps, alpha_thre=0.0,
            )
            return volume.RaySamples(ray_indices.long(), t_starts, t_ends, n_rays)

        r = self.cfg.radius
        grid = self.occupancy.binaries[0]
        cube_min = torch.full((3,), -r, device=origins.device)
        box_min, box_max = self._occupied_box()
        t_near, t_far = volume.ray_box(origins, dirs, box_min, box_max)
        rows = (t_far > t_near).nonzero().squeeze(1)
        samples = volume.grid_samples(
            origins[rows], dirs[rows], t_near[rows], t_far[rows], self.step_size, jitter,
            occupancy=(grid, cube_min, -cube_min), ray_ids=rows, n_rays=n_rays,
        )
        mode = self.cfg.cpu_early_stop
        paying = float(self.prepass_drop) > PREPASS_MIN_DROP or int(self.prepass_renders) % PREPASS_RECHECK == 0
        self.prepass_renders += 1
        if eps > 0 and len(samples) and (mode == "on" or (mode == "auto" and paying)):
            with torch.no_grad():
                keep = volume.visible(samples, density_at(samples), eps)
                self.prepass_drop.fill_(1.0 - keep.float().mean())
            samples = samples.select(keep)
        return samples

    # ------------------------------------------------------------ rendering
    def render(
        self, cams: Cameras, background: Tensor, shading: str = "diffuse", light_dir: Tensor | None = None
    ) -> RenderOutput:
        """background [B, 3] solid colours or [B, H, W, 3] images (e.g. a learned
        background); light_dir [B, 3] towards the light (default: from the camera)."""
        if shading not in SHADING_MODES:
            raise ValueError(f"unknown shading {shading!r}; expected one of {', '.join(SHADING_MODES)}")
        B, H, W = cams.batch_size, cams.height, cams.width
        origins, dirs = (t.reshape(-1, 3) for t in cams.rays())
        samples = self._sample(origins, dirs)
        ray = samples.ray_indices
        t_mid = samples.midpoints
        # Per-sample quantities are columns [C, K]: the point axis stays contiguous.
        dirs_k = dirs.t().index_select(1, ray)
        x = origins.t().index_select(1, ray) + t_mid * dirs_k
        sigma, normal, albedo = self._field(x, want_albedo=shading != "textureless")
        weights, _ = volume.render_weights(samples, sigma)

        if light_dir is None:
            eye = cams.c2w[:, :3, 3]
            light_dir = eye / eye.norm(dim=-1, keepdim=True)
        light = light_dir.to(x.dtype).t().index_select(1, torch.div(ray, H * W, rounding_mode="floor"))
        if albedo is None:
            albedo = torch.ones_like(normal)
        colour = shade(albedo, normal, light, self.cfg.ambient, self.cfg.diffuse, shading, dim=0)
        per_sample = torch.cat([colour, normal, t_mid[None], torch.ones_like(t_mid)[None]]).t()  # [K, 8]
        acc = volume.accumulate(weights, per_sample, samples)  # [R, 8]
        opacity = acc[:, 7:8]

        if background.dim() == 2:
            bg = background[:, None, :].expand(B, H * W, 3).reshape(-1, 3)
        else:
            bg = background.reshape(-1, 3)
        rgb = volume.composite(acc[:, :3], opacity, bg.to(acc.dtype))

        # DreamFusion's orientation loss: visible normals should not face away from the camera.
        facing_away = (normal * dirs_k).sum(0).clamp(min=0.0)
        n_covered = (opacity.detach() > 0).sum().clamp(min=1)
        orient = (weights.detach() * facing_away**2).sum() / n_covered
        sparsity = (opacity**2 + 0.01).sqrt().mean()

        img = lambda t: t.view(B, H, W, -1)  # noqa: E731
        return RenderOutput(
            rgb=img(rgb),
            alpha=img(opacity),
            depth=img(acc[:, 6:7]),
            normal=img(acc[:, 3:6]),
            extras={"orient": orient, "opacity": sparsity},
        )

    # ------------------------------------------------------------ training hooks
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "encoding": [self.albedo_field.encoding.table],
            "mlp": [*self.density_mlp.parameters(), *self.albedo_field.mlp.parameters()],
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        HashGridAlbedo.upgrade_state_dict(state_dict, prefix, "albedo_field")  # runs saved before the shared field
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _update_occupancy(self, step: int, every: int) -> None:
        self.occupancy.update_every_n_steps(
            step,
            lambda x: self.query_density(x) * self.step_size,
            occ_thre=self.cfg.occupancy_threshold,
            warmup_steps=self.cfg.occupancy_warmup_steps,
            n=every,
        )

    def on_step(self, step: int, progress: float, out: RenderOutput, optimizer=None) -> None:
        if self.training:
            self._update_occupancy(step, self.cfg.occupancy_update_every)

    # ------------------------------------------------------------ export
    @torch.no_grad()
    def extract_mesh(self, resolution: int) -> Mesh:
        """Marching cubes on the density at resolution^3 points over the cube. Vertex
        colours are the albedo as the renders see it: composited along a short ray
        entering the surface along the inward normal (the albedo right at a low-density
        isosurface is darker than what the renders show)."""
        from skimage.measure import marching_cubes

        r = self.cfg.radius
        device = self.albedo_field.encoding.table.device
        axis = torch.linspace(-r, r, resolution, device=device)
        pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        density = self.query_density(pts).reshape(resolution, resolution, resolution).float().cpu()
        peak, floor = float(density.max()), float(density.min())
        level = self.cfg.mesh_threshold
        if peak <= level:
            level = 0.5 * (peak + floor)
        if not peak - floor > 1e-6 or not torch.isfinite(density).all():
            raise UserError("the density field is empty or constant: there is no surface to export")
        padded = F.pad(density, (1, 1, 1, 1, 1, 1), value=min(floor, level - 1.0))  # closes surfaces cut by the cube
        spacing = 2.0 * r / (resolution - 1)
        verts, faces, normals, _ = marching_cubes(padded.numpy(), level=level, spacing=(spacing,) * 3)
        if len(faces) == 0:
            raise UserError(f"the isosurface at density {level:.3g} is empty: there is no surface to export")
        verts = torch.from_numpy(verts.copy()).float().to(device) - (r + spacing)
        faces = torch.from_numpy(faces.copy().astype("int64"))
        # skimage's normals follow the descent of the density: outwards.
        normals = F.normalize(torch.from_numpy(normals.copy()).float().to(device), dim=-1)
        # marching_cubes winds faces clockwise seen from outside here; flip to counter-clockwise.
        faces = faces[:, [0, 2, 1]]
        return Mesh(verts.cpu(), faces, self._surface_colours(verts, normals).cpu())

    def _surface_colours(self, verts: Tensor, normals: Tensor, n_steps: int = 8) -> Tensor:
        """[V, 3] albedo composited along rays from one render step outside each vertex,
        going inwards along -normal over four render steps."""
        step = 4.0 * self.step_size / n_steps
        starts = torch.arange(n_steps, device=verts.device, dtype=verts.dtype) * step - self.step_size  # [n_steps]
        colours = []
        for v, n in zip(verts.split(CHUNK // n_steps), normals.split(CHUNK // n_steps)):
            ts = starts.expand(len(v), -1)
            te = ts + step
            p = (v[:, None] - n[:, None] * (ts + 0.5 * step)[..., None]).reshape(-1, 3)
            sigma = self.query_density(p).view(-1, n_steps)
            albedo = self.albedo(p).view(-1, n_steps, 3)
            w, _, _ = nerfacc.render_weight_from_density(ts, te, sigma)
            total = w.sum(-1, keepdim=True)
            mixed = (w[..., None] * albedo).sum(1) / total.clamp(min=1e-8)
            colours.append(torch.where(total > 1e-4, mixed, albedo[:, -1]))
        return torch.cat(colours).clamp(0.0, 1.0)
