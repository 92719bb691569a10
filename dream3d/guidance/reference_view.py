"""Reference-view losses for image-to-3D (DreamGaussian / Magic123 style).

From the reference camera the render must reproduce the input photo: its
colour inside the object's mask and its silhouette everywhere. Random views
are left to score distillation. Everything here is stateless so a training
loop can add these terms next to any guidance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dream3d.cameras.orbit import orbit_cameras
from dream3d.types import Cameras


@dataclass
class ReferenceViewConfig:
    rgb_weight: float = 10000.0
    """Weight of the masked colour MSE at the reference view (DreamGaussian's lambda_rgb)."""
    mask_weight: float = 1000.0
    """Weight of the silhouette MSE between rendered alpha and the mask (DreamGaussian's lambda_mask)."""
    ramp_start: float = 0.0
    """Training progress (0..1) at which the reference terms start ramping in."""
    ramp_end: float = 0.0
    """Progress at which they reach full weight; equal to ramp_start means full weight from the start."""
    elevation: float = 0.0
    """Elevation of the reference camera in degrees (the photo is assumed taken level)."""
    azimuth: float = 0.0
    """Azimuth of the reference camera in degrees; 0 is the front (camera on +Z)."""
    distance: float = 2.9
    """Distance of the reference camera from the origin."""
    fov: float = 45.0
    """Vertical field of view of the reference camera in degrees."""


def reference_camera(cfg: ReferenceViewConfig, width: int, height: int) -> Cameras:
    """The single camera [B=1] the input photo is assumed to be taken from."""
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    return orbit_cameras(one(cfg.elevation), one(cfg.azimuth), one(cfg.distance), one(cfg.fov), width, height)


def ramp(progress: float, start: float, end: float) -> float:
    """Linear ramp-in: 0 before `start`, 1 from `end`, linear between.
    With end <= start it is a step at `start`."""
    if progress < start:
        return 0.0
    if end <= start or progress >= end:
        return 1.0
    return (progress - start) / (end - start)


def _batched(ref: Tensor, like: Tensor) -> Tensor:
    """Broadcast an unbatched reference [H, W, C] (or [H, W]) to the render's [B, H, W, C]."""
    if ref.dim() == like.dim() - 2:  # [H, W] mask
        ref = ref[..., None]
    if ref.dim() == like.dim() - 1:
        ref = ref[None]
    return ref.to(like).expand_as(like)


def reference_losses(render_rgb: Tensor, render_alpha: Tensor, ref_rgb: Tensor, ref_mask: Tensor) -> dict[str, Tensor]:
    """Unweighted reference-view losses.

    render_rgb [B, H, W, 3], render_alpha [B, H, W, 1]; ref_rgb [H, W, 3] or
    [B, H, W, 3], ref_mask [H, W], [H, W, 1] or [B, H, W, 1], all in [0, 1].
    rgb: MSE over mask pixels (mask-weighted, averaged over channels), so the
    background colour of the photo never leaks into the object; mask: plain
    MSE between rendered alpha and the mask over the whole image.
    """
    mask = _batched(ref_mask, render_alpha)
    target = _batched(ref_rgb, render_rgb)
    sq = (render_rgb - target).pow(2).mean(dim=-1, keepdim=True)
    rgb = (sq * mask).sum() / mask.sum().clamp_min(1e-8)
    return {"rgb": rgb, "mask": (render_alpha - mask).pow(2).mean()}


def weighted_reference_loss(losses: dict[str, Tensor], cfg: ReferenceViewConfig, progress: float) -> Tensor:
    """The reference terms' total, ramped in with training progress."""
    w = ramp(progress, cfg.ramp_start, cfg.ramp_end)
    return w * (cfg.rgb_weight * losses["rgb"] + cfg.mask_weight * losses["mask"])


@torch.no_grad()
def masked_psnr(render_rgb: Tensor, ref_rgb: Tensor, mask: Tensor) -> float:
    """PSNR in dB (peak 1) over the mask's pixels; inf for a perfect match."""
    m = _batched(mask, render_rgb[..., :1])
    sq = (render_rgb - _batched(ref_rgb, render_rgb)).pow(2).mean(dim=-1, keepdim=True)
    mse = float((sq * m).sum() / m.sum().clamp_min(1e-8))
    return math.inf if mse <= 0.0 else -10.0 * math.log10(mse)
