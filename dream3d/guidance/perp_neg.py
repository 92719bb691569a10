"""Perp-Neg (Armandpour et al., arXiv 2304.04968) for view-dependent prompts.

With a camera between two canonical views, the positive prompt is the view prompt
interpolated between them by azimuth, and the front and side prompts are negatives
whose score is removed only along its component perpendicular to the positive one:

    d_pos = eps(y_pos) - eps_u,   d_k = eps(y_k) - eps_u,
    eps_hat = eps_u + s (d_pos - sum_k w_k perp(d_k, d_pos)),
    perp(a, b) = a - (<a, b> / |b|^2) b   per sample.

So "front view" pushes a back view away from showing a front, without taking away
the part of the front prompt the back view shares (the object itself).

The interpolation and the weights w_k follow threestudio's rule (its prompt
processor's `use_perp_neg`): with a the azimuth folded to [0, 180] (0 = front),
  - a < 90: r = 1 - a / 90; positive r front + (1 - r) side;
    w_front = f_fs(r), w_side = f_sf(1 - r);
  - a >= 90: r = 2 - a / 90; positive r side + (1 - r) back;
    w_front = f_fsb(r), w_side = f_sb(r);
  - overhead cameras: the overhead prompt, no negatives;
each f(r) = p0 exp(-p1 r) + p2. The back prompt is never a negative: at the back,
the front prompt is (w_front = 1.97, w_side = 0.39 with the defaults).
CFG convention as everywhere in dream3d: eps_u + s (...); threestudio's Perp-Neg
branch uses the same form, so its guidance_scale carries over unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

Decay = tuple[float, float, float]
NEGATIVE_VIEWS = ("front", "side")
"""The views whose prompts are Perp-Neg's negatives, in the order of the weights."""


@dataclass
class PerpNegWeights:
    """Negative weights f(r) = p0 exp(-p1 r) + p2 (threestudio's defaults, each near 0 at its own view)."""

    f_fs: Decay = (4.0, 0.5, -2.426)
    """Front prompt's weight from front (r = 1, about 0) to side (r = 0, 1.57)."""
    f_sf: Decay = (4.0, 0.5, -2.426)
    """Side prompt's weight from front to side, at 1 - r: 1.57 at the front, about 0 at the side."""
    f_sb: Decay = (1.0, 0.5, -0.606)
    """Side prompt's weight from side (r = 1, about 0) to back (r = 0, 0.39)."""
    f_fsb: Decay = (1.0, 0.5, 0.967)
    """Front prompt's weight from side (r = 1, 1.57) to back (r = 0, 1.97)."""


def decay(f: Decay, r: Tensor) -> Tensor:
    p0, p1, p2 = f
    return p0 * torch.exp(-p1 * r) + p2


def view_weights(azimuth: Tensor, overhead: Tensor, w: PerpNegWeights) -> tuple[Tensor, Tensor]:
    """(mix [B, 4], neg [B, 2]) for azimuth [B] degrees and overhead [B] bool: the positive
    prompt is mix @ (front, side, back, overhead), the negatives (front, side) weigh neg."""
    a = ((azimuth.double() + 180.0) % 360.0 - 180.0).abs()  # 0 at the front .. 180 at the back
    front_half = a < 90.0
    r = torch.where(front_half, 1.0 - a / 90.0, 2.0 - a / 90.0)
    zero = torch.zeros_like(r)
    mix = torch.stack([torch.where(front_half, r, zero), torch.where(front_half, 1.0 - r, r),
                       torch.where(front_half, zero, 1.0 - r), zero], dim=1)
    neg = torch.stack([torch.where(front_half, decay(w.f_fs, r), decay(w.f_fsb, r)),
                       torch.where(front_half, decay(w.f_sf, 1.0 - r), decay(w.f_sb, r))], dim=1)
    overhead = overhead.to(a.device, torch.bool).view(-1, 1)
    mix = torch.where(overhead, a.new_tensor([0.0, 0.0, 0.0, 1.0]), mix)
    neg = torch.where(overhead, torch.zeros_like(neg), neg)
    return mix.float(), neg.float()


def perp(a: Tensor, b: Tensor) -> Tensor:
    """The part of a [B, ...] perpendicular to b [B, ...], per sample: a - (<a, b> / |b|^2) b.
    |b|^2 is floored at 1e-12 so b = 0 (cond and uncond agree exactly) leaves a; NaN stays NaN."""
    dims = tuple(range(1, a.dim()))
    coef = (a * b).sum(dims, keepdim=True) / (b * b).sum(dims, keepdim=True).clamp_min(1e-12)
    return a - coef * b


def combine(eps_pos: Tensor, eps_u: Tensor, eps_neg: list[Tensor], neg: Tensor, scale: float) -> Tensor:
    """eps_u + s (d_pos - sum_k w_k perp(d_k, d_pos)); eps_* [B, C, h, w], neg [B, K] the w_k."""
    d_pos = eps_pos - eps_u
    d = d_pos
    for k, e in enumerate(eps_neg):
        d = d - neg[:, k].view(-1, *([1] * (d.dim() - 1))) * perp(e - eps_u, d_pos)
    return eps_u + scale * d


def perp_neg_eps(prior, x_t: Tensor, t: Tensor, prompt, cams, camera: Tensor | None, scale: float,
                 weights: PerpNegWeights, plain: bool = False, view_scale: float = 0.0) -> Tensor:
    """Perp-Neg's eps_hat for x_t [B, C, h, w] from one batched UNet call over
    [positive; unconditional; front; side (; view-free)], every branch with the same camera.
    With `plain`, view guidance adds v (eps_pos - eps_p) as `common.cfg_eps` does."""
    pos, uncond, negs, neg = prompt.perp_neg(cams, weights)
    embeds = [pos, uncond, *negs]
    cameras = None if camera is None else [camera] * len(embeds)
    if plain:
        embeds.append(prompt.cond_plain.expand_as(pos))
        cameras = None if cameras is None else [*cameras, torch.zeros_like(camera)]
    n = len(embeds)
    eps = prior.predict_eps(
        torch.cat([x_t] * n), torch.cat([t] * n), torch.cat(embeds),
        camera=None if cameras is None else torch.cat(cameras),
    ).float()
    eps_pos, eps_u, *rest = eps.chunk(n)
    eps_hat = combine(eps_pos, eps_u, rest[:len(negs)], neg.to(eps.device), scale)
    if plain:
        eps_hat = eps_hat + view_scale * (eps_pos - rest[len(negs)])
    return eps_hat
