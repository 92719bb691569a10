"""Geometry-aware score distillation (arXiv 2406.16695): SDS with 3D-consistent
noising and gradient consistency between nearby views.

  - Noise: every view is noised from the same noise-carrying 3D particles
    (`dream3d.noise.GeometryAwareNoise`, with its occlusion test), so nearby views
    of a surface point get the same noise; the views of a group share one t.
  - Gradient consistency: the trainer renders groups of nearby views (`view_group`).
    Each view's SDS gradient g_j is reprojected into its neighbours i through the
    rendered depth (a pixel of view i goes to its surface point, into view j, and
    counts only where the depths agree). The loss
        lambda * mean_valid d(g_i / |g_i|, warp_j->i(g_j) / |g_j|)
    (d = squared distance or 1 - cosine, |g| the view's mean pixel norm) flows into the
    geometry through the reprojection (depth and opacity): geometry is pulled towards
    the shape under which the prior's gradients agree across views. Optionally pixels
    whose gradient disagrees with a neighbour's (cosine below `drop_below`) are left out
    of the SDS term.
No official code was published; this follows the paper's description.

CFG convention: eps_u + s (eps_c - eps_u) (diffusers; s = 100 is DreamFusion's 99).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dream3d.guidance.base import Guidance
from dream3d.guidance import common
from dream3d.guidance.perp_neg import PerpNegWeights
from dream3d.guidance.prompt import PromptProcessor
from dream3d.guidance.timesteps import TimestepConfig, build_timesteps
from dream3d.guidance.view_groups import ViewGroup, check_groups
from dream3d.noise import NoiseConfig, build_noise_source
from dream3d.noise.geometry import at_resolution, pixel_index, project, surface_distance, surface_points
from dream3d.priors.base import DiffusionPrior
from dream3d.types import Cameras, GuidanceOutput, RenderOutput


@dataclass
class GSDConfig:
    guidance_scale: float = 100.0
    """CFG scale s in eps_u + s (eps_c - eps_u)."""
    weighting: common.Weighting = "sds"
    """w(t): 'sds' sigma^2, 'uniform', 'fantasia' alpha sigma^2, 'sigma_over_alpha'."""
    grad_clip: float | None = None
    """Clamp every element of g to [-grad_clip, grad_clip] (None: no clamp)."""
    views: int = 2
    """Nearby views rendered per sampled camera (1: no gradient consistency)."""
    azimuth_step: float = 15.0
    """Azimuth between the nearby views of a group, degrees."""
    consistency_weight: float = 0.1
    """lambda of the gradient-consistency loss."""
    consistency: Literal["mse", "cosine"] = "mse"
    """Disagreement measure between normalised gradients: squared distance or 1 - cosine."""
    drop_below: float | None = None
    """Leave out of the SDS term pixels whose gradient has cosine below this with a neighbour's (None: keep all)."""
    depth_tolerance: float = 0.05
    """Reprojection counts where |distance - surface distance| is below this fraction of the distance."""
    alpha_threshold: float = 0.5
    """Opacity above which a pixel has a surface to reproject."""
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    """The t schedule (one t per group of views)."""
    noise: NoiseConfig = field(default_factory=lambda: NoiseConfig(kind="geometry-aware"))
    """The noise source: geometry-aware particles by default."""
    perp_neg: bool = False
    """Perp-Neg as in SDS: the front and side prompts as negatives, only across the view prompt."""
    perp_neg_weights: PerpNegWeights = field(default_factory=PerpNegWeights)
    """Perp-Neg's negative weights by azimuth, f(r) = p0 exp(-p1 r) + p2 (threestudio's defaults)."""


def view_pairs(groups: int, size: int, device=None) -> tuple[Tensor, Tensor]:
    """Every ordered pair (i, j), i != j, of views within each group of a group-major batch."""
    a, b = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    keep = a != b
    base = (torch.arange(groups) * size).view(-1, 1)
    return (base + a[keep]).reshape(-1).to(device), (base + b[keep]).reshape(-1).to(device)


def reproject(values: Tensor, out: RenderOutput, cams: Cameras, i: Tensor, j: Tensor, alpha_threshold: float,
              depth_tolerance: float) -> tuple[Tensor, Tensor]:
    """Bring per-pixel values [B, C, h, w] of views j into views i through the rendered depth.

    Returns warped [P, C, h, w] (bilinear in view j at the projection of view i's surface
    point; differentiable in out.depth / out.alpha) and valid [P, h, w]: view i has a surface
    there, it projects in front of and inside view j, and agrees with view j's depth."""
    B, C, h, w = values.shape
    dist, hit = surface_distance(out, h, w, alpha_threshold)
    points = surface_points(cams, dist)  # [B, h, w, 3]
    focal = at_resolution(cams, w, h).focal()
    cols, rows, d, in_front = project(cams.c2w[j], focal[j], w, h, points[i].reshape(len(i), -1, 3))
    pixel, inside = pixel_index(cols.detach(), rows.detach(), w, h)
    dist_j = dist.detach().reshape(B, -1)[j].gather(1, pixel)
    hit_j = hit.reshape(B, -1)[j].gather(1, pixel)
    agree = (d.detach() - dist_j).abs() <= depth_tolerance * dist_j
    valid = hit.reshape(B, -1)[i] & in_front & inside & hit_j & agree
    grid = torch.stack([2.0 * cols / w - 1.0, 2.0 * rows / h - 1.0], dim=-1).view(len(i), h, w, 2)
    warped = F.grid_sample(values[j], grid.to(values.dtype), mode="bilinear", padding_mode="border",
                           align_corners=False)
    return warped, valid.view(len(i), h, w)


class GSDGuidance(Guidance):
    def __init__(self, prior: DiffusionPrior, cfg: GSDConfig | None = None, timesteps=None, noise_source=None):
        self.prior, self.cfg = prior, cfg or GSDConfig()
        if self.cfg.views < 1:
            raise ValueError("gsd needs views >= 1")
        self.view_group = ViewGroup(self.cfg.views, self.cfg.azimuth_step) if self.cfg.views > 1 else None
        self.timesteps = timesteps or build_timesteps(self.cfg.timesteps, prior.num_train_timesteps)
        self.noise_source = noise_source or build_noise_source(self.cfg.noise)
        self.alphas_cumprod = prior.alphas_cumprod

    def modules(self) -> dict:
        return {"gsd_noise": self.noise_source}

    def consistency(self, g: Tensor, out: RenderOutput, cams: Cameras) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, valid [P, h, w], cosine [P, h, w]) between each view's gradient g [B, C, h, w]
        and its neighbours' reprojected gradients."""
        c, n = self.cfg, self.cfg.views
        i, j = view_pairs(g.shape[0] // n, n, g.device)
        warped, valid = reproject(g, out, cams, i, j, c.alpha_threshold, c.depth_tolerance)
        scale = g.norm(dim=1).mean(dim=(1, 2)).clamp_min(1e-12)  # [B] mean pixel norm of each view's g
        own, other = g[i] / scale[i].view(-1, 1, 1, 1), warped / scale[j].view(-1, 1, 1, 1)
        cosine = F.cosine_similarity(own, other, dim=1, eps=1e-12)
        per_pixel = ((own - other) ** 2).sum(1) if c.consistency == "mse" else 1.0 - cosine
        loss = (per_pixel * valid).sum() / valid.sum().clamp_min(1)
        return loss, valid, cosine.detach()

    def __call__(self, out: RenderOutput, cams: Cameras, prompt: PromptProcessor, progress: float,
                 noise: Tensor | None = None, generator: torch.Generator | None = None) -> GuidanceOutput:
        c, prior, n = self.cfg, self.prior, self.cfg.views
        groups = check_groups(cams, n, "gsd")
        x = prior.encode(out.rgb).float()
        B, device = x.shape[0], x.device
        t = self.timesteps.sample(groups, progress, generator).repeat_interleave(n).to(device)
        eps = common.draw_noise(noise, self.noise_source, out, cams, x, generator)
        g = common.score_gradient(prior, x, t, eps, prompt, cams, c.guidance_scale, c.weighting, c.grad_clip,
                                  perp_neg=c.perp_neg_weights if c.perp_neg else None)
        logs = {"grad_norm": float(g.norm()), "t": float(t.float().mean())}
        mask, loss_consistency = None, x.new_zeros(())
        if n > 1 and (c.consistency_weight > 0 or c.drop_below is not None):
            loss_consistency, valid, cosine = self.consistency(g, out, cams)
            logs["consistency"] = float(loss_consistency.detach())
            if c.drop_below is not None:
                i, _ = view_pairs(groups, n, device)
                bad = (valid & (cosine < c.drop_below)).float()
                dropped = torch.zeros(B, *bad.shape[1:], device=device).index_add_(0, i, bad) > 0
                mask = (~dropped).unsqueeze(1).float()
                logs["dropped"] = float(dropped.float().mean())
        loss = common.distillation_loss(x, g, mask) + c.consistency_weight * loss_consistency
        return GuidanceOutput(loss, logs)
