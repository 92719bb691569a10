"""Small pieces every score-distillation rule shares: noising, weighting w(t),
classifier-free guidance and the reparametrised loss.

These helpers never replace NaN / inf by zero: a non-finite gradient makes the
loss non-finite, and the trainer skips and logs that step.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from dream3d.guidance.perp_neg import PerpNegWeights, perp_neg_eps
from dream3d.priors.base import DiffusionPrior
from dream3d.types import Cameras, RenderOutput

Weighting = Literal["sds", "uniform", "fantasia", "sigma_over_alpha"]


def weight(kind: str, a_t: Tensor) -> Tensor:
    """w(t) from alpha_bar_t [B, 1, 1, 1]: 'sds' sigma^2, 'uniform' 1, 'fantasia' alpha sigma^2,
    'sigma_over_alpha' sigma / alpha (consistent flow distillation)."""
    if kind == "sds":
        return 1.0 - a_t
    if kind == "uniform":
        return torch.ones_like(a_t)
    if kind == "fantasia":
        return a_t.sqrt() * (1.0 - a_t)
    if kind == "sigma_over_alpha":
        return (1.0 - a_t).sqrt() / a_t.sqrt()
    raise ValueError(f"unknown weighting {kind!r}")


def add_noise(x: Tensor, eps: Tensor, a_t: Tensor) -> Tensor:
    """x_t = alpha_t x + sigma_t eps, with a_t = alpha_bar_t [B, 1, 1, 1]."""
    return a_t.sqrt() * x + (1.0 - a_t).sqrt() * eps


def distillation_loss(x: Tensor, g: Tensor, mask: Tensor | None = None) -> Tensor:
    """0.5 * sum(mask * (x - sg(x - g))^2) / B: its gradient in x is mask * g / B; the value means nothing."""
    target = (x - g).detach()
    sq = (x - target) ** 2
    if mask is not None:
        sq = sq * mask
    return 0.5 * sq.sum() / x.shape[0]


def camera_features(prior: DiffusionPrior, cams: Cameras, device) -> Tensor | None:
    """Pose features [B, 16] for camera-conditioned priors, None for the others."""
    return cams.pose_features().to(device) if prior.takes_camera else None


def cfg_eps(prior: DiffusionPrior, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor,
            camera: Tensor | None, scale: float, plain: Tensor | None = None, view_scale: float = 0.0) -> Tensor:
    """eps_u + s (eps_c - eps_u) (diffusers convention) from one batched UNet call; x_t [B, C, h, w].

    With `plain` (the prompt without its view suffix, [B, L, D]) the same call also predicts
    eps_p from `plain` and a zero camera ("no camera"), and view guidance adds v (eps_c - eps_p)."""
    embeds = [cond, uncond]
    cameras = None if camera is None else [camera, camera]
    if plain is not None:
        embeds.append(plain)
        cameras = None if cameras is None else [*cameras, torch.zeros_like(camera)]
    n = len(embeds)  # [conditional; unconditional; (view-free)]
    eps = prior.predict_eps(
        torch.cat([x_t] * n), torch.cat([t] * n), torch.cat(embeds),
        camera=None if cameras is None else torch.cat(cameras),
    ).float()
    eps_c, eps_u, *eps_p = eps.chunk(n)
    eps_hat = eps_u + scale * (eps_c - eps_u)
    if eps_p:
        eps_hat = eps_hat + view_scale * (eps_c - eps_p[0])
    return eps_hat


def draw_noise(noise: Tensor | None, source, out: RenderOutput, cams: Cameras, x: Tensor,
               generator: torch.Generator | None) -> Tensor:
    """The eps for x [B, C, h, w]: `noise` if given (shape-checked), else from the noise source."""
    if noise is None:
        noise = source(out, cams, tuple(x.shape), generator)
    if noise.shape != x.shape:
        raise ValueError(f"noise {tuple(noise.shape)} does not match the prior's x {tuple(x.shape)}")
    return noise.to(x.device, torch.float32)


def clip(g: Tensor, limit: float | None) -> Tensor:
    return g if limit is None else g.clamp(-limit, limit)


@torch.no_grad()
def score_gradient(prior: DiffusionPrior, x: Tensor, t: Tensor, eps: Tensor, prompt, cams: Cameras,
                   guidance_scale: float, weighting: str, grad_clip: float | None,
                   view_guidance_scale: float = 0.0, perp_neg: PerpNegWeights | None = None) -> Tensor:
    """The SDS update g = w(t) (eps_hat(x_t) - eps) with CFG, shared by SDS and the rules that
    differ from it only in their noise and timesteps (CFD, GSD). A non-zero `view_guidance_scale`
    adds view guidance (`cfg_eps` with the prompt's view-free embedding), in the same UNet call.
    With `perp_neg` (its weights) eps_hat is Perp-Neg's (`guidance.perp_neg`), also in one call."""
    a_t = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = add_noise(x, eps, a_t)
    camera = camera_features(prior, cams, x.device)
    if perp_neg is not None:
        eps_hat = perp_neg_eps(prior, x_t, t, prompt, cams, camera, guidance_scale, perp_neg,
                               bool(view_guidance_scale), view_guidance_scale)
    else:
        cond, uncond = prompt(cams)
        plain = prompt.cond_plain.expand_as(cond) if view_guidance_scale else None
        eps_hat = cfg_eps(prior, x_t, t, cond, uncond, camera, guidance_scale, plain, view_guidance_scale)
    return clip(weight(weighting, a_t) * (eps_hat - eps), grad_clip)
